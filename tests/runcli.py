"""Run the real ramfw CLI in a subprocess, as scripts and administrators do."""

import subprocess
import sys


def run_ramfw(*args, timeout=60, check=None):
    """The real CLI in a subprocess, as scripts use it. check=0/1/2/3 asserts the exit code."""
    proc = subprocess.run([sys.executable, "-m", "ramfw.cli", *args], capture_output=True, text=True, timeout=timeout)
    if check is not None:
        assert proc.returncode == check, f"ramfw {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc
