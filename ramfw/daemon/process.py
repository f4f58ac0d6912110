"""Process-wide settings the long-running controller needs and a one-shot command does not."""

from __future__ import annotations

import sys


def tune_for_snooping() -> None:
    """The snooper holds DNS answers while it works: when another thread runs Python (a state
    write, a reload), let the snooper back on the GIL within 0.5 ms, not 5 ms; and keep the
    memory of many threads from scattering over malloc arenas."""
    sys.setswitchinterval(0.0005)
    _limit_malloc_arenas()


def _limit_malloc_arenas() -> None:
    """glibc gives each thread that allocates its own malloc arena; freed memory scattered over
    them is not given back, and under a DNS flood that doubled the controller's RSS. Two arenas
    (mallopt M_ARENA_MAX) are plenty for threads that mostly wait."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(-8, 2)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune
