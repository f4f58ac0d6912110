"""What ramfw itself put into each set, so that an element somebody else added stands out.

The backend that applied records the planned elements and every later add/remove; its check()
then reports any kernel element outside that record (a foreign element in an allow set opens
the allowlist). Elements leave the kernel by their own timeouts; an owned entry the kernel no
longer holds is forgotten after a grace period, so the record stays as small as the sets.
A backend that never applied (a CLI `check` in another process) knows nothing and reports nothing.

Bounded: past LIMIT owned elements (a flood of distinct names fills the sets far beyond what
the DNS cache remembers) the record is dropped and the foreign-element comparison pauses until
the next whole apply, which plans the sets from the cache again. Keeping and comparing every
element of a 300,000-element set cost the controller over 50 MB and a full element dump every
check interval; the rules and the chains are still compared by content meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

FORGET_AFTER = 60.0  # seconds an owned element may be missing from the kernel before it is forgotten
LIMIT = 50000  # owned elements recorded at most; past it the comparison pauses (see above)


class OwnedElements:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._sets: dict[str, dict[str, float]] = {}  # set -> ip -> when it was last put there
        self.known = False

    def reset(self, sets: dict[str, list[str]]) -> None:
        now = self.clock()
        with self._lock:
            if sum(len(ips) for ips in sets.values()) > LIMIT:
                self._give_up()
                return
            self._sets = {name: dict.fromkeys(ips, now) for name, ips in sets.items()}
            self.known = True

    def _give_up(self) -> None:
        if self.known:
            log.info("more than %d addresses in ramfw's sets: the check for elements ramfw did not add pauses "
                     "until the next full apply", LIMIT)
        self._sets = {}
        self.known = False

    def add(self, set_name: str, ips) -> None:
        now = self.clock()
        with self._lock:
            if not self.known:
                return
            owned = self._sets.setdefault(set_name, {})
            for ip in ips:
                owned[ip] = now
            if sum(len(o) for o in self._sets.values()) > LIMIT:
                self._give_up()

    def remove(self, set_name: str, ips) -> None:
        with self._lock:
            owned = self._sets.get(set_name, {})
            for ip in ips:
                owned.pop(ip, None)

    def foreign(self, set_name: str, in_kernel) -> list[str]:
        """Kernel elements ramfw did not put there (sorted); forgets long-gone owned ones."""
        if not self.known:
            return []
        in_kernel = set(in_kernel)
        now = self.clock()
        with self._lock:
            owned = self._sets.setdefault(set_name, {})
            gone = [ip for ip, t in owned.items() if ip not in in_kernel and now - t > FORGET_AFTER]
            for ip in gone:
                del owned[ip]
            return sorted(ip for ip in in_kernel if ip not in owned)
