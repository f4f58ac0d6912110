"""Wait on a condition, never on a guess: `wait_for(predicate, timeout, what)` polls until the
predicate returns something true and returns it, or fails the test naming what it waited for
(and, when `detail` is given, what the system looked like at that moment, e.g. a log tail).

A sleep that IS the scenario (a TTL must run out, a flood must run for a while) stays a sleep,
with a comment saying so; a sleep that stands for "until X happened" becomes wait_for(X).
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition never held: an assertion failure, so pytest shows it as one."""


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05,
             detail: Callable[[], str] | None = None) -> T:
    """Poll `predicate` every `interval` seconds until it returns a true value (returned), or
    raise WaitTimeout after `timeout` seconds: "timed out after 5 s waiting for <what>"."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            message = f"timed out after {timeout:g} s waiting for {what} (last value: {value!r})"
            if detail is not None:
                message += "\n" + detail()
            raise WaitTimeout(message)
        time.sleep(min(interval, left))


def poll(predicate: Callable[[], T], timeout: float, interval: float = 0.05) -> T:
    """Like wait_for, but return the last value instead of failing: for callers that assert on
    the value themselves with a better message."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def time_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> float | None:
    """Seconds until `predicate` held (checked every `interval`), or None if it did not within
    `timeout`: for tests that report how long a repair or a reload took."""
    t0 = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(interval)
