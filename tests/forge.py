"""Forge UDP packets with raw sockets (any source address and port), for snooping tests.

    with Forger(tb.inet) as f:
        f.udp("198.51.100.55", 53, "203.0.113.2", 40000, payload)

The raw socket is created inside the given network namespace (normally the testbed's "internet"
namespace) and carries a complete IP header written here (IPv4: IP_HDRINCL; IPv6: IPPROTO_RAW,
which implies the header is included on Linux), so the source address need not be local.
Checksums are computed (UDP over IPv6 requires one). Only ever aim it at testbed addresses.
"""

from __future__ import annotations

import ipaddress
import itertools
import socket
import struct

from ramfw.kernel import netns

_ident = itertools.count(1)


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_packet(src: str, sport: int, dst: str, dport: int, payload: bytes, ttl: int = 64) -> bytes:
    """A complete IPv4 or IPv6 packet carrying one UDP datagram."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version != d.version:
        raise ValueError("source and destination must be the same family")
    length = 8 + len(payload)
    if s.version == 4:
        pseudo = s.packed + d.packed + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
    else:
        pseudo = s.packed + d.packed + struct.pack("!I3xB", length, socket.IPPROTO_UDP)
    udp = struct.pack("!HHHH", sport, dport, length, 0) + payload
    csum = checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    if s.version == 4:
        head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, next(_ident) & 0xFFFF, 0x4000, ttl,
                           socket.IPPROTO_UDP, 0, s.packed, d.packed)  # fmt: skip
        head = head[:10] + struct.pack("!H", checksum(head)) + head[12:]
        return head + udp
    head = struct.pack("!IHBB16s16s", 6 << 28, length, socket.IPPROTO_UDP, ttl, s.packed, d.packed)
    return head + udp


def tcp_packet(src: str, sport: int, dst: str, dport: int, seq: int, payload: bytes, flags: int = 0x18,
               ttl: int = 64) -> bytes:
    """A complete IPv4 or IPv6 packet carrying one TCP segment (default flags PSH|ACK), as
    NFQUEUE/NFLOG hand it over: for feeding the snooper in unit tests, not for sending."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version != d.version:
        raise ValueError("source and destination must be the same family")
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, 0, 5 << 4, flags, 65535, 0, 0) + payload
    if s.version == 4:
        pseudo = s.packed + d.packed + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    else:
        pseudo = s.packed + d.packed + struct.pack("!I3xB", len(tcp), socket.IPPROTO_TCP)
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    if s.version == 4:
        head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), next(_ident) & 0xFFFF, 0x4000, ttl,
                           socket.IPPROTO_TCP, 0, s.packed, d.packed)  # fmt: skip
        head = head[:10] + struct.pack("!H", checksum(head)) + head[12:]
        return head + tcp
    return struct.pack("!IHBB16s16s", 6 << 28, len(tcp), socket.IPPROTO_TCP, ttl, s.packed, d.packed) + tcp


class Forger:
    def __init__(self, ns: str | None):
        self.ns = ns
        self._socks: dict[int, socket.socket] = {}

    def __enter__(self) -> "Forger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _sock(self, version: int) -> socket.socket:
        s = self._socks.get(version)
        if s is None:
            with netns.entered(self.ns):
                if version == 4:
                    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
                    s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
                else:
                    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            self._socks[version] = s
        return s

    def udp(self, src: str, sport: int, dst: str, dport: int, payload: bytes) -> None:
        version = ipaddress.ip_address(dst).version
        pkt = udp_packet(src, sport, dst, dport, payload)
        self._sock(version).sendto(pkt, (dst, 0))

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()
