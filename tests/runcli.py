"""Run the real ramfw CLI in a subprocess, as scripts and administrators do."""

import json

from harness import ControllerProcess, cli
from wait import poll


def run_ramfw(*args, timeout=60, check=None):
    """The real CLI in a subprocess, as scripts use it. check=0/1/2/3 asserts the exit code."""
    proc = cli(*args, timeout=timeout)
    if check is not None:
        assert proc.returncode == check, f"ramfw {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def events(ns):
    """`ramfw events --json` for a namespace, parsed."""
    return json.loads(run_ramfw("events", "--netns", ns, "--json", check=0).stdout)


def wait_for(fn, timeout=5.0):
    """Poll fn() until it returns something true or `timeout` passes; its last value (the
    caller asserts on it). tests/wait.py's wait_for fails by itself, naming what it waited for."""
    return poll(fn, timeout)


class Controller(ControllerProcess):
    """`ramfw run` as a background process (tests/harness.py), started at once; stop() returns
    its exit status."""

    def __init__(self, netns_name, policy_path, *extra, log_path=None):
        super().__init__(netns_name, policy_path, *extra, log_path=log_path)
        self.start()

    def wait_ready(self, timeout=15):
        return super().wait_ready(timeout)

    def stop(self, timeout=10):
        """SIGTERM, then SIGKILL by pid; returns the exit code (the rules stay: no `down`)."""
        rc = self.terminate(timeout)
        self.finish(down=False)
        return rc
