"""When to look each name up again, and how to say that lookups keep failing.

A name is looked up again before its answer expires (80% of its TTL). A failed lookup is
retried with exponential backoff (5 s, 10 s, 20 s … at most 5 minutes): offline, a machine
with a dozen policy names must not spend its life resolving, nor fill the journal. The first
failure of a name is one warning; after that the failing names are summarised in one line at
most every `summary_every` seconds, and a name that recovers says so once.

Thread safety: one lock guards the schedule; the snooper's TCP fallback calls soon() from its
thread, the main loop does everything else. Bounded: at most `limit` names are scheduled (the
policy's concrete names always fit; fallbacks past the limit are dropped and counted).
"""

from __future__ import annotations

import logging
import threading
import time

from ramfw.common.logs import fields

log = logging.getLogger(__name__)

RETRY_FIRST = 5.0
RETRY_MAX = 300.0


class RefreshSchedule:
    def __init__(self, clock=time.monotonic, limit: int = 10000, summary_every: float = 300.0):
        self.clock = clock
        self.limit = limit
        self.summary_every = summary_every
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}
        self._failures: dict[str, tuple[int, str]] = {}  # name -> (consecutive failures, last error)
        self._last_summary = clock()
        self.dropped = 0
        self.failed_lookups = 0

    def reset(self) -> None:
        with self._lock:
            self._next = {}

    def due(self) -> list[str]:
        now = self.clock()
        with self._lock:
            return [n for n, t in self._next.items() if t <= now]

    def soon(self, name: str) -> None:
        """Look `name` up at the next pass (the snooper could not read its answer)."""
        with self._lock:
            if name not in self._next and len(self._next) >= self.limit:
                self.dropped += 1
                return
            self._next[name] = 0.0

    def record(self, results, min_ttl: int, announce: bool = True) -> None:
        """Schedule the next lookup of each name from its result; report failures (announce=False:
        the caller already said, e.g. the start-up resolution)."""
        now = self.clock()
        recovered, first_failures = [], []
        with self._lock:
            for res in results:
                if res.answers:
                    ttl = max(min(t for _, t in res.answers), min_ttl, 1)
                    self._next[res.name] = now + ttl * 0.8
                    if self._failures.pop(res.name, None) is not None:
                        recovered.append(res.name)
                    continue
                if not res.error:  # the name exists but has no address: look again later
                    self._next[res.name] = now + RETRY_MAX
                    continue
                self.failed_lookups += 1
                count, _ = self._failures.get(res.name, (0, ""))
                self._failures[res.name] = (count + 1, str(res.error))
                self._next[res.name] = now + min(RETRY_MAX, RETRY_FIRST * 2 ** count)
                if count == 0 and announce:
                    first_failures.append((res.name, str(res.error)))
        for name, error in first_failures:
            log.warning("cannot refresh %s (%s); keeping the last good answer, retrying with backoff", name,
                        short_error(error), extra=fields(event="resolve_failed", name=name))
        for name in recovered:
            log.info("resolving %s works again", name, extra=fields(event="resolve_recovered", name=name))
        self._maybe_summarise(now)

    def _maybe_summarise(self, now: float) -> None:
        with self._lock:
            if now - self._last_summary < self.summary_every or not self._failures:
                return
            self._last_summary = now
            failing = sorted(self._failures.items())
        names = ", ".join(n for n, _ in failing[:5]) + (f" and {len(failing) - 5} more" if len(failing) > 5 else "")
        attempts = sum(c for _, (c, _) in failing)
        log.warning("still cannot resolve %d name(s) (%s): %d failed lookups so far, last error: %s",
                    len(failing), names, attempts, short_error(failing[-1][1][1]),
                    extra=fields(event="resolve_failing", names=len(failing)))

    def failing(self) -> int:
        with self._lock:
            return len(self._failures)

    def forget_except(self, keep) -> None:
        """Drop the schedule of names a new policy no longer lists."""
        with self._lock:
            self._next = {n: t for n, t in self._next.items() if keep(n)}
            self._failures = {n: f for n, f in self._failures.items() if keep(n)}


def short_error(error: str, limit: int = 160) -> str:
    """dnspython's errors can run to hundreds of characters (one clause per server tried)."""
    error = " ".join(error.split())
    return error if len(error) <= limit else error[: limit - 1] + "…"
