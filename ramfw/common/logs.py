"""Log lines for people and for journald: one line per event, key=value fields at the end.

    log.warning("blocked registry access", extra=fields(host="quay.io", dst="198.51.100.20"))
    -> ramfw: warning: blocked registry access host=quay.io dst=198.51.100.20

Under systemd (JOURNAL_STREAM set) each line starts with its syslog priority (<4>) instead of
the "ramfw: level:" prefix, so journald records the level and `journalctl -p warning` works.
"""

from __future__ import annotations

import logging
import os
import sys

PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def fields(**kv) -> dict:
    """`extra=` for a log call: the fields are appended as key=value."""
    return {"kv": kv}


def _value(v) -> str:
    text = str(v)
    if not text or any(ch.isspace() or ch in '"=' for ch in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


class KeyValueFormatter(logging.Formatter):
    def __init__(self, journald: bool):
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage().replace("\n", " | ")
        kv = getattr(record, "kv", None)
        if kv:
            text += " " + " ".join(f"{k}={_value(v)}" for k, v in kv.items() if v is not None)
        if record.exc_info:
            text += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        if self.journald:
            return f"<{PRIORITY.get(record.levelno, 6)}>{text}"
        return f"ramfw: {record.levelname.lower()}: {text}"


def configure(level: int | str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter(journald=bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class RepeatedLog:
    """A failure that repeats is summarised, not repeated: the first occurrence of each key is
    logged; later ones within `every` seconds are counted and reported in one line when the
    interval is over ("… (12 more times in the last 60 s)")."""

    def __init__(self, logger: logging.Logger, every: float = 60.0, clock=None):
        import threading
        import time

        self.logger = logger
        self.every = every
        self.clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, int]] = {}  # key -> (last logged at, suppressed since)

    def _should_log(self, key: str) -> tuple[bool, int]:
        now = self.clock()
        with self._lock:
            last, suppressed = self._seen.get(key, (None, 0))
            if last is None or now - last >= self.every:
                self._seen[key] = (now, 0)
                if len(self._seen) > 1000:  # keys are few by design; never let them grow
                    self._seen = {key: (now, 0)}
                return True, suppressed
            self._seen[key] = (last, suppressed + 1)
            return False, 0

    def _emit(self, level: int, key: str, msg: str, args, exc_info) -> None:
        ok, suppressed = self._should_log(key)
        if not ok:
            return
        if suppressed:
            msg += f" ({suppressed} more time(s) in the last {self.every:.0f} s)"
        self.logger.log(level, msg, *args, exc_info=exc_info)

    def error(self, key: str, msg: str, *args) -> None:
        self._emit(logging.ERROR, key, msg, args, None)

    def exception(self, key: str, msg: str, *args) -> None:
        self._emit(logging.ERROR, key, msg, args, True)
