"""Supervised threads: nothing dies silently, and a stuck thread is seen.

Every long-running thread of the controller runs its loop through a `Worker`. The loop calls
`beat()` once per iteration (each loop wakes at least every quarter second), which records
progress. The main loop asks `problems()` before feeding systemd's watchdog: a thread that
died (its exception is logged with its traceback and counted) or has not beaten for
`stall_limit` seconds ends the process non-zero. systemd restarts it, and the rules stay in
the kernel meanwhile (fail closed).

Fault injection for the tests that prove this: RAMFW_FAULT="<thread>:raise" makes that
thread's next beat raise, "<thread>:hang" makes it stop beating forever.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    pass


def _fault_for(name: str) -> str | None:
    spec = os.environ.get("RAMFW_FAULT", "")
    for item in spec.split(","):
        thread, _, kind = item.partition(":")
        if thread.strip() == name:
            return kind.strip() or "raise"
    return None


class Worker:
    def __init__(self, name: str, target: Callable[..., None], *args, clock=time.monotonic):
        self.name = name
        self._target = target
        self._args = args
        self.clock = clock
        self.last_beat = clock()
        self.error: BaseException | None = None
        self.finished = False
        self.expected_exit = threading.Event()  # set by whoever stops it on purpose
        self._fault = _fault_for(name)
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)

    def beat(self) -> None:
        self.last_beat = self.clock()
        if self._fault == "raise":
            raise InjectedFault(f"fault injected into the {self.name} thread (RAMFW_FAULT)")
        if self._fault == "hang":
            threading.Event().wait()

    def start(self) -> None:
        self.last_beat = self.clock()
        self.thread.start()

    def _main(self) -> None:
        try:
            self._target(*self._args)
        except BaseException as exc:  # noqa: BLE001 - the whole point: see every failure
            self.error = exc
            log.critical("the %s thread failed: %s: %s", self.name, type(exc).__name__, exc, exc_info=True)
        finally:
            self.finished = True

    def stop(self, timeout: float = 5.0) -> None:
        self.expected_exit.set()
        self.thread.join(timeout)

    def problem(self, stall_limit: float) -> str | None:
        """None while the thread is alive and making progress; else one line saying what is wrong."""
        if self.expected_exit.is_set():
            return None
        if self.finished or not self.thread.is_alive():
            why = f"{type(self.error).__name__}: {self.error}" if self.error else "its loop returned"
            return f"the {self.name} thread stopped ({why})"
        idle = self.clock() - self.last_beat
        if idle > stall_limit:
            return f"the {self.name} thread made no progress for {idle:.0f} s"
        return None


class LoopThread:
    """One supervised thread around a loop object with open(), run(stop), close() and a `beat`
    attribute it calls each turn: the snooper, the audit reader and the sni inspector. Opens the
    loop (so a failure to bind its socket is the caller's, at start), runs it under a Worker,
    and on stop closes it only once its thread has returned."""

    def __init__(self, name: str, loop):
        self.name = name
        self.loop = loop
        self.worker: Worker | None = None
        self._stop = threading.Event()

    def start(self) -> "LoopThread":
        self.loop.open()
        self._stop = threading.Event()
        self.worker = Worker(self.name, self.loop.run, self._stop)
        self.loop.beat = self.worker.beat
        self.worker.start()
        return self

    def stop(self) -> None:
        if self.worker is not None:
            self._stop.set()
            self.worker.stop()
            self.worker = None
        self.loop.close()


class StallGuard:
    """Ends the process when the main loop itself stops making progress: nobody else would
    notice outside systemd (under systemd the watchdog does it too)."""

    def __init__(self, limit: float, on_stall: Callable[[float], None], clock=time.monotonic):
        self.limit = limit
        self.clock = clock
        self.on_stall = on_stall
        self.last_beat = clock()
        self._stop = threading.Event()
        self._fault = _fault_for("main")
        self.thread = threading.Thread(target=self._watch, name="stall-guard", daemon=True)

    def beat(self) -> None:
        self.last_beat = self.clock()
        if self._fault == "raise":
            raise InjectedFault("fault injected into the main loop (RAMFW_FAULT)")
        if self._fault == "hang":
            threading.Event().wait()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.limit / 4)):
            idle = self.clock() - self.last_beat
            if idle > self.limit:
                self.on_stall(idle)
                return
