"""A DNS flood client for load tests and benchmarks: distinct names, each answered (by the
testbed's dnsmasq) with its own IPv6 address, sent as fast as the machine allows with a bounded
number of queries in flight; records which answers arrived and what they said.

    names = flood_names(110_000)           # {"n0.flood.test": ["2001:db8:100::1:0:0"], ...}
    tb.set_names(names, ttl=300)
    result = flood(tb.client, DNS4, list(names), seconds=10)
    result.received                       # {name: address} for every answer that arrived
"""

from __future__ import annotations

import ipaddress
import selectors
import socket
import struct
import time
from dataclasses import dataclass, field

from ramfw.kernel import netns

BASE6 = int(ipaddress.IPv6Address("2001:db8:100::1:0:0"))


def flood_names(count: int, suffix: str = "flood.test") -> dict[str, list[str]]:
    return {f"n{i}.{suffix}": [str(ipaddress.IPv6Address(BASE6 + i))] for i in range(count)}


def query_bytes(qid: int, name: str, qtype: int = 28) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, 1)


def _answer(data: bytes) -> tuple[str, str | None] | None:
    """(question name, first AAAA address or None) of a response, parsed just enough."""
    if len(data) < 12:
        return None
    ancount = struct.unpack_from("!H", data, 6)[0]
    pos, labels = 12, []
    while pos < len(data) and data[pos]:
        ln = data[pos]
        labels.append(data[pos + 1 : pos + 1 + ln].decode("ascii", "replace"))
        pos += 1 + ln
    pos += 5  # root label, qtype, qclass
    addr = None
    for _ in range(ancount):
        if pos >= len(data):
            break
        if data[pos] & 0xC0 == 0xC0:
            pos += 2
        else:
            while pos < len(data) and data[pos]:
                pos += 1 + data[pos]
            pos += 1
        if pos + 10 > len(data):
            break
        rtype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", data, pos)
        pos += 10
        if rtype == 28 and rdlen == 16 and addr is None:
            addr = str(ipaddress.IPv6Address(data[pos : pos + 16]))
        pos += rdlen
    return ".".join(labels), addr


@dataclass
class FloodResult:
    sent: int = 0
    seconds: float = 0.0
    received: dict[str, str | None] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def flood(ns: str, server: str, names: list[str], seconds: float, in_flight: int = 512, sockets: int = 8,
          drain: float = 2.0) -> FloodResult:
    """Send one AAAA query per name, in order, for at most `seconds`, keeping at most
    `in_flight` unanswered (an unanswered query is given up after a second); then wait `drain`
    seconds for late answers."""
    with netns.entered(ns):
        socks = [socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET, socket.SOCK_DGRAM)
                 for _ in range(sockets)]
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sel.register(s, selectors.EVENT_READ)
    result = FloodResult()
    outstanding: dict[str, float] = {}
    start = time.monotonic()
    i = 0

    def receive(timeout: float) -> None:
        for key, _ in sel.select(timeout):
            while True:
                try:
                    data = key.fileobj.recv(4096)
                except BlockingIOError:
                    break
                got = _answer(data)
                if got is not None:
                    outstanding.pop(got[0], None)
                    result.received[got[0]] = got[1]

    try:
        while i < len(names) and time.monotonic() - start < seconds:
            if len(outstanding) >= in_flight:
                receive(0.01)
                now = time.monotonic()
                for name in [n for n, t in outstanding.items() if now - t > 1.0]:
                    del outstanding[name]
                continue
            name = names[i]
            try:
                socks[i % sockets].sendto(query_bytes(i & 0xFFFF, name), (server, 53))
            except BlockingIOError:
                receive(0.001)
                continue
            outstanding[name] = time.monotonic()
            i += 1
            if i % 64 == 0:
                receive(0)
        result.sent = i
        result.seconds = time.monotonic() - start
        end = time.monotonic() + drain
        while outstanding and time.monotonic() < end:
            receive(0.05)
    finally:
        sel.close()
        for s in socks:
            s.close()
    return result
