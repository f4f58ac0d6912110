"""One way for the root tiers to run the controller: `ramfw run` as a background process, the
way systemd runs it, in a namespace the test created.

    ctl = ControllerProcess(ns, policy_path, "--check-interval", "1", backend="nft",
                            state_dir=tmp / "state", log_path=tmp / "ctl.log").start()
    try:
        ctl.wait_ready()                 # the ruleset is enforced and the heartbeat is fresh
        ...
        ctl.wait_heartbeat()             # status now carries counters from after this point
    finally:
        ctl.finish()                     # SIGTERM, then SIGKILL, by pid; then `ramfw down`

Its output goes to a log file; every wait that gives up says what it waited for and shows the
log's tail, and a test that fails while a controller it started is running gets that log's tail
in its report (tests/conftest.py). `netns_exec=True` runs it under `ip netns exec NS` (even a
controller that ignored --netns could then touch only that namespace); `wrap` puts a command in
front (e.g. `prlimit --nofile=1024:1024`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wait import poll, wait_for

# controllers started by the current test (tests/conftest.py adds their logs to a failure's report)
started_in_this_test: list["ControllerProcess"] = []


def cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, as scripts use it."""
    return subprocess.run([sys.executable, "-m", "ramfw.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


class ControllerProcess:
    error = AssertionError  # what a failed wait raises (a harness may prefer its own)

    def __init__(self, netns_name: str, policy_path, *extra: str, backend: str | None = None,
                 state_dir=None, log_path=None, netns_exec: bool = False, wrap: tuple = (), env: dict | None = None):
        self.netns = netns_name
        # a file (a Path, for tests that edit it) or an https URL (kept as text: Path would eat a slash)
        self.policy_spec = str(policy_path) if policy_path is not None else None
        self.policy_path = Path(policy_path) if policy_path is not None and "://" not in str(policy_path) else None
        self.extra = tuple(extra)
        self.backend = backend
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.log_path = Path(log_path or tempfile.mktemp(prefix="ramfw-run-", suffix=".log"))
        self.netns_exec = netns_exec
        self.wrap = tuple(wrap)
        self.env = dict(env if env is not None else os.environ)
        if self.state_dir is not None:
            self.env["RAMFW_STATE_DIR"] = str(self.state_dir)
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.started_at = 0.0
        self.ready_at = 0.0

    # ---- lifecycle --------------------------------------------------------------------------

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "ramfw.cli", "run", "--netns", self.netns]
        if self.policy_spec is not None:
            argv += ["--policy", self.policy_spec]
        if self.backend:
            argv += ["--backend", self.backend]
        argv = [*self.wrap, *argv, *self.extra]
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns_exec else argv

    def start(self) -> "ControllerProcess":
        self._log = open(self.log_path, "ab")
        self.started_at = time.monotonic()
        # its own session: a signal meant for the test runner never reaches it, and it is
        # stopped only by its pid
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env, start_new_session=True)  # fmt: skip
        started_in_this_test.append(self)
        return self

    def wait_ready(self, timeout: float = 20.0) -> dict:
        """Until `status` says the ruleset is enforced and the controller's heartbeat is fresh
        (it is written after the first apply, as READY is sent); the status is returned."""
        def ready():
            self.assert_alive("before it was ready")
            r = self.cli("status", "--netns", self.netns, "--json")
            st = json.loads(r.stdout) if r.returncode == 0 else None
            return st if st and st["enforcing"] and st["controller"]["running"] else None

        try:
            # each look is a `ramfw status` process (~0.2 s of CPU): poll gently
            st = wait_for(ready, timeout, f"ramfw run in {self.netns} to be enforcing", interval=0.1, detail=self.log_tail)
        except AssertionError as exc:
            if self.error is AssertionError or isinstance(exc, self.error):
                raise
            raise self.error(str(exc)) from None
        self.ready_at = time.monotonic()
        return st

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL, by pid; the exit status (negative: the signal that ended it)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def finish(self, down: bool = True, timeout: float = 5.0) -> list[str]:
        """Always, in a finally: stop it by pid, close its log, and (down) remove its rules
        with `ramfw down` if the namespace still exists. Returns problems, in words."""
        problems = []
        try:
            self.terminate(timeout)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
            if down and os.path.exists(f"/var/run/netns/{self.netns}"):
                r = self.cli("down", "--netns", self.netns, timeout=30)
                if r.returncode != 0:
                    problems.append(f"ramfw down exited {r.returncode}: {r.stderr.strip()}")
        return problems

    # ---- looking at it ----------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """A ramfw command with this controller's state directory."""
        return cli(*args, env=self.env, timeout=timeout)

    def status(self) -> dict:
        r = self.cli("status", "--netns", self.netns, "--json")
        if r.returncode != 0:
            raise self.error(f"ramfw status exited {r.returncode}: {r.stderr.strip()}\n{self.log_tail()}")
        return json.loads(r.stdout)

    def counters(self) -> dict:
        st = self.status()
        if not st["controller"]["running"]:
            raise self.error(f"controller not running: {st}\n{self.log_tail()}")
        return st["controller_counters"]

    def wait_counter(self, name: str, at_least: int, timeout: float = 6.0) -> int:
        """Until the controller counter `name` reaches `at_least` (counters reach status with the
        heartbeat, every 2 s); returns the last value seen, reached or not, for the caller's
        own assertion."""
        last = [0]

        def reached() -> bool:
            last[0] = self.counters().get(name, 0)
            return last[0] >= at_least

        poll(reached, timeout, interval=0.25)
        return last[0]

    def wait_heartbeat(self, after: float | None = None, timeout: float = 6.0) -> dict:
        """Until a heartbeat written after `after` (time.time(); default: now) is in status, so
        its counters include everything that happened before; returns that status."""
        after = time.time() if after is None else after

        def fresh():
            st = self.status()
            ctl = st["controller"]
            if ctl["running"] and ctl["heartbeat_age"] is not None and time.time() - ctl["heartbeat_age"] - 0.05 > after:
                return st
            return None

        return wait_for(fresh, timeout, "a controller heartbeat", interval=0.25, detail=self.log_tail)

    def wait_applied(self, after: float, timeout: float = 10.0) -> dict:
        """Until a ruleset transaction that began after `after` (time.time()) has finished,
        including the connection cuts that follow it (state.json is written last)."""
        def applied():
            st = self.status()
            return st if (st.get("applied_at") or 0) > after else None

        return wait_for(applied, timeout, "an apply (start, reload or repair) to finish", interval=0.25,
                        detail=self.log_tail)

    def output(self) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 3000) -> str:
        return f"--- ramfw run log, {self.netns} (tail) ---\n" + self.output()[-n:]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self, when: str = "") -> None:
        if self.proc is None:
            raise self.error("ramfw run was never started")
        rc = self.proc.poll()
        if rc is not None:
            how = f"killed by signal {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
            raise self.error(f"ramfw run died {when} ({how})\n{self.log_tail()}".replace("  ", " "))
