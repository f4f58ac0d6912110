"""Counters shared between threads: every update takes one small lock, so no increment is lost
(a bare `d[k] += 1` from two threads can lose one: it is a read, an add and a write)."""

from __future__ import annotations

import threading


class Counters:
    def __init__(self, *names: str):
        self._lock = threading.Lock()
        self._values: dict[str, int] = dict.fromkeys(names, 0)

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def set(self, name: str, value: int) -> None:
        with self._lock:
            self._values[name] = value

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0)

    def get(self, name: str, default: int = 0) -> int:
        with self._lock:
            return self._values.get(name, default)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

    def __iter__(self):
        return iter(self.snapshot())

    def keys(self):
        return self.snapshot().keys()

    def items(self):
        return self.snapshot().items()
