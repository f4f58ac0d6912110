"""What ramfw itself put into each set, so that an element somebody else added stands out.

The backend that applied records the planned elements and every later add/remove; its check()
then reports any kernel element outside that record (a foreign element in an allow set opens
the allowlist). Elements leave the kernel by their own timeouts; an owned entry the kernel no
longer holds is forgotten after a grace period, so the record stays as small as the sets.
A backend that never applied (a CLI `check` in another process) knows nothing and reports nothing.
"""

from __future__ import annotations

import threading
import time

FORGET_AFTER = 60.0  # seconds an owned element may be missing from the kernel before it is forgotten


class OwnedElements:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._sets: dict[str, dict[str, float]] = {}  # set -> ip -> when it was last put there
        self.known = False

    def reset(self, sets: dict[str, list[str]]) -> None:
        now = self.clock()
        with self._lock:
            self._sets = {name: dict.fromkeys(ips, now) for name, ips in sets.items()}
            self.known = True

    def add(self, set_name: str, ips) -> None:
        now = self.clock()
        with self._lock:
            owned = self._sets.setdefault(set_name, {})
            for ip in ips:
                owned[ip] = now

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
