"""Run the real ramfw CLI in a subprocess, as scripts and administrators do."""

import subprocess
import sys


def run_ramfw(*args, timeout=60, check=None):
    """The real CLI in a subprocess, as scripts use it. check=0/1/2/3 asserts the exit code."""
    proc = subprocess.run([sys.executable, "-m", "ramfw.cli", *args], capture_output=True, text=True, timeout=timeout)
    if check is not None:
        assert proc.returncode == check, f"ramfw {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def events(ns):
    """`ramfw events --json` for a namespace, parsed."""
    import json

    return json.loads(run_ramfw("events", "--netns", ns, "--json", check=0).stdout)


def wait_for(fn, timeout=5.0):
    """Poll fn() every 50 ms until it returns something true or `timeout` passes; its last value."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


class Controller:
    """`ramfw run` as a background process, as systemd would run it; stderr kept for asserts."""

    def __init__(self, netns_name, policy_path, *extra, log_path=None):
        import tempfile

        self.netns = netns_name
        self.log_path = log_path or tempfile.mktemp(prefix="ramfw-run-", suffix=".log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ramfw.cli", "run", "--netns", netns_name, "--policy", policy_path, *extra],
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout=15):
        import json
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"ramfw run exited {self.proc.returncode}:\n{self.output()}")
            r = run_ramfw("status", "--netns", self.netns, "--json")
            if r.returncode == 0:
                data = json.loads(r.stdout)
                if data["enforcing"] and data["controller"]["running"]:
                    return data
            time.sleep(0.1)
        raise AssertionError(f"ramfw run not ready after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self._log.flush()
        with open(self.log_path) as fh:
            return fh.read()

    def stop(self, timeout=10):
        """SIGTERM, then SIGKILL by pid; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
