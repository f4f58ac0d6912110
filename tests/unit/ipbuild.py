"""Raw IPv4/IPv6/UDP/TCP packets built by hand for the parsers' unit tests (documentation
addresses only)."""

from __future__ import annotations

import ipaddress
import struct

SRC4, DST4 = ipaddress.IPv4Address("192.0.2.1"), ipaddress.IPv4Address("198.51.100.53")
SRC6, DST6 = ipaddress.IPv6Address("2001:db8::1"), ipaddress.IPv6Address("2001:db8::53")


def udp(sport: int, dport: int, payload: bytes, length: int | None = None) -> bytes:
    size = 8 + len(payload) if length is None else length
    return struct.pack("!HHHH", sport, dport, size, 0) + payload


def tcp(sport, dport, seq, flags, payload, options=b"") -> bytes:
    offset = ((20 + len(options)) // 4) << 4
    head = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, offset, flags, 65535, 0, 0)
    return head + options + payload


def ipv4(proto: int, l4: bytes, options=b"", frag=0, total=None, src=SRC4, dst=DST4) -> bytes:
    ihl = (20 + len(options)) // 4
    size = 20 + len(options) + len(l4) if total is None else total
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, size, 1, frag, 64, proto, 0, src.packed, dst.packed)
    return head + options + l4


def ipv6(next_header: int, body: bytes, src=SRC6, dst=DST6) -> bytes:
    head = struct.pack("!IHBB16s16s", 6 << 28, len(body), next_header, 64, src.packed, dst.packed)
    return head + body


def ext_header(next_header: int, units: int = 0) -> bytes:
    """Hop-by-hop / routing / destination options header of (units + 1) * 8 bytes, padded."""
    pad = 4 + units * 8  # one PadN option fills the rest
    return bytes([next_header, units, 1, pad]) + b"\x00" * pad


def frag_header(next_header: int, offset: int, more: bool) -> bytes:
    """offset in 8-byte units."""
    return struct.pack("!BBHI", next_header, 0, (offset << 3) | int(more), 0xABCD)
