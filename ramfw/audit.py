"""Blocked-attempt events: what RAM never tells an administrator.

Every packet the refuse chains turn away is copied to NFLOG (group plan.AUDIT_LOG_GROUP, prefix
naming the scope). The controller reads them here, attributes the destination to the host names
DNS recently gave for it, appends one JSON line per attempt to events.jsonl in the namespace's
state directory (rotated by size), and logs each destination once a minute at most, so a client
retrying in a loop does not flood the journal.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import selectors
import struct
import threading
import time
from typing import Callable

from . import netns, state as state_file
from .logs import fields
from .nfnetlink import NfLog

log = logging.getLogger(__name__)

EVENTS_FILE = "events.jsonl"
MAX_BYTES = 5 << 20  # rotate to events.jsonl.1 beyond this
LOG_EVERY = 60.0  # seconds between log lines for one destination
PROTOS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
SCOPES = {"ramfw-block-out": "output", "ramfw-block-fwd": "forward"}


def parse_header(data: bytes) -> dict | None:
    """src, dst, proto, dport of a raw IP packet (enough for an event); None if unreadable."""
    try:
        version = data[0] >> 4
        if version == 4:
            ihl = (data[0] & 0x0F) * 4
            proto = data[9]
            src, dst = ipaddress.ip_address(data[12:16]), ipaddress.ip_address(data[16:20])
            l4 = ihl
        elif version == 6:
            proto = data[6]
            src, dst = ipaddress.ip_address(data[8:24]), ipaddress.ip_address(data[24:40])
            l4 = 40
            while proto in (0, 43, 60) and len(data) >= l4 + 2:  # skip extension headers
                proto, l4 = data[l4], l4 + (data[l4 + 1] + 1) * 8
        else:
            return None
        dport = struct.unpack_from("!H", data, l4 + 2)[0] if proto in (6, 17, 132) and len(data) >= l4 + 4 else None
        return {"src": str(src), "dst": str(dst), "proto": PROTOS.get(proto, str(proto)), "dport": dport}
    except (IndexError, ValueError, struct.error):
        return None


def events_path(netns_name: str | None) -> str:
    return os.path.join(state_file.state_dir(netns_name), EVENTS_FILE)


class AuditLog:
    def __init__(self, netns_name: str | None, group: int, names_for: Callable[[str], list[str]], policy_digest: Callable[[], str]):
        self.netns_name = netns_name
        self.group = group
        self.names_for = names_for
        self.policy_digest = policy_digest
        self.path = events_path(netns_name)
        self.count = 0
        self.unreadable = 0
        self.by_host: dict[str, int] = {}  # host name (or "unknown") -> attempts, for metrics
        self._last_logged: dict[tuple, float] = {}
        self.sock: NfLog | None = None
        self.beat: Callable[[], None] = lambda: None  # the supervising Worker's heartbeat

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
        names = self.names_for(head["dst"])
        return {
            "time": datetime.datetime.fromtimestamp(when, datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "scope": SCOPES.get(prefix.strip(), prefix.strip()),
            "uid": uid,
            **head,
            "hostname": names[0] if names else None,
            "names": names,
            "policy": self.policy_digest(),
        }

    def record(self, events: list[dict]) -> None:
        if not events:
            return
        try:
            if os.path.getsize(self.path) > MAX_BYTES:
                os.replace(self.path, self.path + ".1")
        except OSError:
            pass
        with open(self.path, "a") as fh:
            for ev in events:
                fh.write(json.dumps(ev, separators=(",", ":")) + "\n")
        self.count += len(events)
        for ev in events:
            host = ev.get("hostname") or "unknown"
            if host in self.by_host or len(self.by_host) < 1000:  # bounded label set
                self.by_host[host] = self.by_host.get(host, 0) + 1
        now = time.monotonic()
        for ev in events:
            key = (ev["scope"], ev["dst"], ev["dport"])
            if now - self._last_logged.get(key, -LOG_EVERY) >= LOG_EVERY:
                self._last_logged[key] = now
                log.warning("%s", describe(ev), extra=fields(
                    event="blocked", host=ev.get("hostname"), dst=ev["dst"], dport=ev.get("dport"), proto=ev["proto"],
                    scope=ev["scope"], uid=ev.get("uid"), policy=ev.get("policy")))
        if len(self._last_logged) > 10000:
            self._last_logged = {k: v for k, v in self._last_logged.items() if now - v < LOG_EVERY}

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
                    log.error("cannot record blocked attempts in %s: %s", self.path, exc.strerror)
        finally:
            sel.close()


def describe(ev: dict) -> str:
    """One line, worded like Docker's RAM so users recognise it."""
    where = f"{ev['dst']}:{ev['dport']}" if ev.get("dport") is not None else ev["dst"]
    host = ev.get("hostname") or "an address no allowed name resolved to"
    who = f"{ev['scope']}" + (f", uid {ev['uid']}" if ev.get("uid") is not None else "")
    return (
        f"blocked: registry access to {host} ({where} {ev['proto']}, {who}) is not allowed by policy "
        f"{ev.get('policy', '?')}; to allow it, add it to the policy's allow list"
    )


def read_events(netns_name: str | None) -> list[dict]:
    path = events_path(netns_name)
    out = []
    for p in (path + ".1", path):
        try:
            with open(p) as fh:
                out += [json.loads(line) for line in fh if line.strip()]
        except (OSError, ValueError):
            continue
    return out


def follow_events(netns_name: str | None, poll: float = 0.25):
    """Yield events as they are appended (survives rotation); runs until interrupted."""
    path = events_path(netns_name)
    fh = None
    inode = None
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
            try:
                yield json.loads(line)
            except ValueError:
                pass
            continue
        try:
            if os.stat(path).st_ino != inode:
                fh.close()
                fh = None
                continue
        except OSError:
            pass
        time.sleep(poll)
