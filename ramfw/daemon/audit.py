"""Refused-attempt events: what RAM never tells an administrator.

Every packet the refuse chains see is copied to NFLOG (group plan.AUDIT_LOG_GROUP). The prefix
names the scope and the verdict: "ramfw-block-*" was refused, "ramfw-audit-*" was let through
by audit mode and only *would* have been refused. The controller reads them here, attributes the
destination to the host names DNS recently gave for it, appends one JSON line per attempt to
events.jsonl in the namespace's state directory (rotated by size; "action" says refused or
would_refuse), and logs each destination once a minute at most, so a client retrying in a loop
does not flood the journal.

One source cannot drown the others: each (scope, source address, uid) has a token bucket of
events; what it drops is counted (status, metrics) and summarised in the log once a minute. A
torn line (a crash mid-write, a full disk) costs only itself when the file is read back.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import selectors
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from ramfw.kernel import netns
from ramfw.daemon import state as state_file
from ramfw.common.logs import fields
from ramfw.kernel.nflog import NfLog
from ramfw.kernel.packet import destination_port, parse_ip

log = logging.getLogger(__name__)

EVENTS_FILE = "events.jsonl"
MAX_BYTES = 5 << 20  # rotate to events.jsonl.1 beyond this
LOG_EVERY = 60.0  # seconds between log lines for one destination
PROTOS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
REFUSED, WOULD_REFUSE = "refused", "would_refuse"
SNI_MISMATCH = "sni_mismatch"  # recorded by the sni thread (daemon/sni.py), with "sni" and "reason"
# NFLOG prefix -> (scope, action); the prefixes are plan.AUDIT_PREFIX and plan.WOULD_REFUSE_PREFIX
PREFIXES = {
    "ramfw-block-out": ("output", REFUSED),
    "ramfw-block-fwd": ("forward", REFUSED),
    "ramfw-audit-out": ("output", WOULD_REFUSE),
    "ramfw-audit-fwd": ("forward", WOULD_REFUSE),
}
FILE_MODE = 0o640  # events name hosts and uids: not for every local user, whatever the umask
# Per source: a burst of BURST events, then RATE a second. A client retrying in a loop stays
# visible; a flood from one source cannot rotate everybody else's events away.
BURST = 50
RATE = 5.0
MAX_SOURCES = 4096  # buckets kept (least recently used dropped beyond)


def parse_header(data: bytes) -> dict | None:
    """src, dst, proto, dport of a raw IP packet (enough for an event); None if unreadable.
    IPv6 extension headers, the fragment header included, are walked to the real protocol."""
    head = parse_ip(data)
    if head is None:
        return None
    return {"src": str(head.src), "dst": str(head.dst), "proto": PROTOS.get(head.proto, str(head.proto)),
            "dport": destination_port(data, head)}


def events_path(netns_name: str | None) -> str:
    return os.path.join(state_file.state_dir(netns_name), EVENTS_FILE)


class SourceLimiter:
    """Token buckets per source key; allow() says whether one more event may be recorded."""

    def __init__(self, burst: int = BURST, rate: float = RATE, clock: Callable[[], float] = time.monotonic, max_sources: int = MAX_SOURCES):
        self.burst, self.rate, self.clock, self.max_sources = burst, rate, clock, max_sources
        self.buckets: OrderedDict[tuple, list[float]] = OrderedDict()  # key -> [tokens, last refill]
        self.dropped = 0
        self.dropped_by: dict[tuple, int] = {}  # since the last summary

    def allow(self, key: tuple) -> bool:
        now = self.clock()
        bucket = self.buckets.pop(key, None) or [float(self.burst), now]
        bucket[0] = min(float(self.burst), bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        self.buckets[key] = bucket
        if len(self.buckets) > self.max_sources:
            self.buckets.popitem(last=False)
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return True
        self.dropped += 1
        if key in self.dropped_by or len(self.dropped_by) < 1000:
            self.dropped_by[key] = self.dropped_by.get(key, 0) + 1
        return False

    def take_summary(self) -> dict[tuple, int]:
        out, self.dropped_by = self.dropped_by, {}
        return out


class AuditLog:
    def __init__(self, netns_name: str | None, group: int, names_for: Callable[[str], list[str]], policy_digest: Callable[[], str],
                 limiter: SourceLimiter | None = None):
        self.netns_name = netns_name
        self.group = group
        self.names_for = names_for
        self.policy_digest = policy_digest
        self.path = events_path(netns_name)
        self.count = 0
        self.counts = {REFUSED: 0, WOULD_REFUSE: 0}
        self.unreadable = 0
        self.limiter = limiter or SourceLimiter()
        # (action, host name or "unknown") -> attempts, for metrics
        self.by_host: dict[tuple[str, str], int] = {}
        self._last_logged: dict[tuple, float] = {}
        self._last_summary = time.monotonic()
        self.sock: NfLog | None = None
        self.beat: Callable[[], None] = lambda: None  # the supervising Worker's heartbeat
        self._lock = threading.Lock()  # record() is called by the audit and the sni threads

    @property
    def dropped(self) -> int:
        return self.limiter.dropped

    def open(self) -> None:
        with netns.entered(self.netns_name):
            self.sock = NfLog(self.group)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def event(self, prefix: str, payload: bytes, uid: int | None, when: float) -> dict | None:
        head = parse_header(payload)
        if head is None:
            self.unreadable += 1
            return None
        scope, action = PREFIXES.get(prefix.strip(), (prefix.strip(), REFUSED))
        names = self.names_for(head["dst"])
        return {
            "time": datetime.datetime.fromtimestamp(when, datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "action": action,
            "scope": scope,
            "uid": uid,
            **head,
            "hostname": names[0] if names else None,
            "names": names,
            "policy": self.policy_digest(),
        }

    def admit(self, events: list[dict]) -> list[dict]:
        """The events the per-source limit lets through (the rest are counted as dropped)."""
        return [ev for ev in events if self.limiter.allow((ev["scope"], ev["src"], ev.get("uid")))]

    def record(self, events: list[dict]) -> None:
        with self._lock:
            self._record(events)

    def _record(self, events: list[dict]) -> None:
        events = self.admit(events)
        self._summarise_drops()
        if not events:
            return
        try:
            if os.path.getsize(self.path) > MAX_BYTES:
                os.replace(self.path, self.path + ".1")
        except OSError:
            pass
        text = "".join(json.dumps(ev, separators=(",", ":")) + "\n" for ev in events)
        # O_APPEND and one write: concurrent readers see whole lines; the mode caps the
        # permissions whatever the umask of whoever started ramfw (it can only narrow them)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            end = os.fstat(fd).st_size
            if end and os.pread(fd, 1, end - 1) != b"\n":
                text = "\n" + text  # a torn last line (crash, full disk) must not swallow the next one
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        self.count += len(events)
        for ev in events:
            self.counts[ev["action"]] = self.counts.get(ev["action"], 0) + 1
            key = (ev["action"], ev.get("hostname") or "unknown")
            if key in self.by_host or len(self.by_host) < 1000:  # bounded label set
                self.by_host[key] = self.by_host.get(key, 0) + 1
        now = time.monotonic()
        for ev in events:
            key = (ev["action"], ev["scope"], ev["dst"], ev["dport"])
            if now - self._last_logged.get(key, -LOG_EVERY) >= LOG_EVERY:
                self._last_logged[key] = now
                log.warning("%s", describe(ev), extra=fields(
                    event={REFUSED: "blocked", SNI_MISMATCH: SNI_MISMATCH}.get(ev["action"], "would_refuse"), host=ev.get("hostname"), dst=ev["dst"],
                    dport=ev.get("dport"), proto=ev["proto"], scope=ev["scope"], uid=ev.get("uid"), policy=ev.get("policy")))
        if len(self._last_logged) > 10000:
            self._last_logged = {k: v for k, v in self._last_logged.items() if now - v < LOG_EVERY}

    def _summarise_drops(self) -> None:
        """One log line a minute for the events the per-source limit dropped."""
        now = time.monotonic()
        if now - self._last_summary < LOG_EVERY or not self.limiter.dropped_by:
            return
        self._last_summary = now
        drops = self.limiter.take_summary()
        worst = sorted(drops.items(), key=lambda kv: -kv[1])[:3]
        who = ", ".join(f"{src} ({scope}{f', uid {uid}' if uid is not None else ''}): {n}" for (scope, src, uid), n in worst)
        log.warning("dropped %d refused-attempt events from %d sources over the per-source limit (%d a second after a burst of %d); "
                    "most from %s", sum(drops.values()), len(drops), RATE, BURST, who,
                    extra=fields(event="events_dropped", dropped=sum(drops.values()), total=self.limiter.dropped))

    def run(self, stop: threading.Event) -> None:
        assert self.sock is not None
        sel = selectors.DefaultSelector()
        sel.register(self.sock.fileno(), selectors.EVENT_READ)
        try:
            while not stop.is_set():
                self.beat()
                if not sel.select(timeout=0.25):
                    continue
                batch = []
                for p in self.sock.receive(timeout=0):
                    ev = self.event(p.prefix, p.payload, p.uid, p.timestamp or time.time())
                    if ev is not None:
                        batch.append(ev)
                try:
                    self.record(batch)
                except OSError as exc:
                    log.error("cannot record refused attempts in %s: %s", self.path, exc.strerror)
        finally:
            sel.close()


def describe(ev: dict) -> str:
    """One line, worded like Docker's RAM so users recognise it."""
    where = f"{ev['dst']}:{ev['dport']}" if ev.get("dport") is not None else ev["dst"]
    host = ev.get("hostname") or "an address no allowed name resolved to"
    who = f"{ev['scope']}" + (f", uid {ev['uid']}" if ev.get("uid") is not None else "")
    if ev.get("action") == SNI_MISMATCH:
        names = ", ".join(ev.get("names") or []) or "no remembered name"
        what = "reset" if ev.get("refused") else "let through (SNI binding in audit)"
        return (f"sni mismatch: {ev.get('sni') or 'no server name'} to {where} ({who}), an address given for {names}: "
                f"{ev.get('reason')}; {what} by policy {ev.get('policy', '?')}")
    if ev.get("action") == WOULD_REFUSE:
        return (
            f"audit: registry access to {host} ({where} {ev['proto']}, {who}) would be refused by policy "
            f"{ev.get('policy', '?')}; let through (audit mode); 'ramfw learn' suggests the allow entries"
        )
    return (
        f"blocked: registry access to {host} ({where} {ev['proto']}, {who}) is not allowed by policy "
        f"{ev.get('policy', '?')}; to allow it, add it to the policy's allow list"
    )


@dataclass
class EventsRead:
    events: list[dict]
    torn: int = 0  # lines that were not a whole JSON object (skipped)


def load_events(netns_name: str | None) -> EventsRead:
    """Every recorded event, oldest first; a torn or garbled line is skipped and counted."""
    path = events_path(netns_name)
    out = EventsRead([])
    for p in (path + ".1", path):
        try:
            with open(p, "rb") as fh:
                lines = fh.read().split(b"\n")
        except OSError:
            continue
        for line in lines:
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                out.torn += 1
                # a torn line glued to a whole one (written before writers ended torn lines):
                # keep the whole one
                start = line.rfind(b'{"time"')
                try:
                    ev = json.loads(line[start:]) if start > 0 else None
                except ValueError:
                    ev = None
                if ev is None:
                    continue
            if isinstance(ev, dict):
                ev.setdefault("action", REFUSED)  # written before events carried an action
                out.events.append(ev)
            else:
                out.torn += 1
    return out


def read_events(netns_name: str | None) -> list[dict]:
    return load_events(netns_name).events


def follow_events(netns_name: str | None, poll: float = 0.25):
    """Yield events as they are appended (survives rotation); runs until interrupted."""
    path = events_path(netns_name)
    fh = None
    inode = None
    partial = ""
    first = True  # only the file as found at start is skipped to its end; a rotated-in one is read whole
    while True:
        if fh is None:
            try:
                fh = open(path)
                inode = os.fstat(fh.fileno()).st_ino
                if first:
                    fh.seek(0, os.SEEK_END)
                first = False
            except OSError:
                first = False
                time.sleep(poll)
                continue
        line = fh.readline()
        if line:
            partial += line
            if not partial.endswith("\n"):
                continue  # the writer is mid-line: wait for the rest
            whole, partial = partial, ""
            try:
                ev = json.loads(whole)
            except ValueError:
                continue  # a torn line loses only itself
            if isinstance(ev, dict):
                ev.setdefault("action", REFUSED)
                yield ev
            continue
        try:
            if os.stat(path).st_ino != inode:
                fh.close()
                fh = None
                partial = ""
                continue
        except OSError:
            pass
        time.sleep(poll)
