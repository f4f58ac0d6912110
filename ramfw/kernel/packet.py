"""The one packet-header parser: raw IPv4/IPv6 packets as NFQUEUE and NFLOG deliver them.

Two readers use it: the DNS snooper (parse_packet: a whole UDP or TCP packet, fragments and
anything cut short refused, since a DNS message cannot be trusted piecewise) and the audit
events (parse_ip + destination_port: who tried to reach what, also for fragments, ICMP or a
packet whose copy was cut short).

IPv6 extension headers are walked (hop-by-hop, routing, destination options, fragment), so the
protocol is the one after them. Hostile or truncated input gives None, never an exception.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_inet_ntop, _AF_INET, _AF_INET6 = socket.inet_ntop, socket.AF_INET, socket.AF_INET6
_V4, _V6 = ipaddress.IPv4Address, ipaddress.IPv6Address

PROTO_TCP = 6
PROTO_UDP = 17
PROTO_SCTP = 132

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

_IPV6_EXT_HEADERS = (0, 43, 60)  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT = 44
_PORTED = (PROTO_TCP, PROTO_UDP, PROTO_SCTP)  # transports whose header starts with the two ports

_IPV4_HEAD = struct.Struct("!BBHHHBBH4s4s")
_IPV6_HEAD = struct.Struct("!IHBB16s16s")
_UDP_HEAD = struct.Struct("!HHHH")
_TCP_HEAD = struct.Struct("!HHIIBB")
_PORTS = struct.Struct("!HH")


@dataclass(slots=True)
class IpHeader:
    version: int  # 4 or 6
    src: IPAddress
    dst: IPAddress
    proto: int  # the transport protocol, after any IPv6 extension headers
    l4: int  # offset of the transport header
    end: int  # end of the IP packet: its length field, never past the data
    whole: bool  # the length field agrees with the data (nothing cut off, no jumbogram)
    fragment_offset: int  # bytes; not 0: no transport header in this packet
    more_fragments: bool

    @property
    def fragmented(self) -> bool:
        return bool(self.fragment_offset or self.more_fragments)


@dataclass(slots=True)
class Packet:
    version: int  # 4 or 6
    src: IPAddress
    dst: IPAddress
    proto: int  # 17 UDP, 6 TCP
    sport: int
    dport: int
    payload: bytes  # L4 payload
    tcp_seq: int = 0
    tcp_flags: int = 0  # the 8 flag bits CWR..FIN (see TCP_* constants)


def _ipv4(buf: bytes):
    if len(buf) < 20:
        return None
    vihl, _tos, total, _ident, frag, _ttl, proto, _csum, src, dst = _IPV4_HEAD.unpack_from(buf)
    header_len = (vihl & 0x0F) * 4
    if header_len < 20 or header_len > len(buf):
        return None
    whole = header_len <= total <= len(buf)
    return (4, _V4(src), _V4(dst), proto, header_len, total if whole else len(buf), whole,
            (frag & 0x1FFF) * 8, bool(frag & 0x2000))


def _ipv6(buf: bytes):
    if len(buf) < 40:
        return None
    _vtcfl, payload_len, next_header, _hops, src, dst = _IPV6_HEAD.unpack_from(buf)
    end = 40 + payload_len
    whole = payload_len != 0 and end <= len(buf)  # 0 would be a jumbogram: not for us
    if not whole:
        end = len(buf)
    pos, offset, more = 40, 0, False
    # Each extension header is at least 8 bytes, so this loop ends within the packet.
    while next_header in _IPV6_EXT_HEADERS or next_header == _IPV6_FRAGMENT:
        if pos + 8 > end:
            return None
        if next_header == _IPV6_FRAGMENT:
            offset_flags = (buf[pos + 2] << 8) | buf[pos + 3]
            offset, more = offset_flags & 0xFFF8, bool(offset_flags & 1)  # atomic: both 0
            length = 8
        else:
            length = (buf[pos + 1] + 1) * 8
        next_header = buf[pos]
        pos += length
        if pos > end:
            return None
        if offset:
            break  # a later fragment: what follows is not a header
    return 6, _V6(src), _V6(dst), next_header, pos, end, whole, offset, more


def _ip(data):
    buf = data if isinstance(data, bytes) else bytes(data)
    if not buf:
        return None, buf
    version = buf[0] >> 4
    if version == 4:
        return _ipv4(buf), buf
    if version == 6:
        return _ipv6(buf), buf
    return None, buf


def parse_ip(data: bytes | bytearray | memoryview) -> IpHeader | None:
    """The IP header of a packet (addresses, transport protocol and where its header starts,
    fragment position); None if the IP header itself is unreadable."""
    fields, _buf = _ip(data)
    return IpHeader(*fields) if fields is not None else None


def destination_port(data: bytes | bytearray | memoryview, header: IpHeader) -> int | None:
    """The TCP, UDP or SCTP destination port of a packet parse_ip() read; None for other
    protocols, a later fragment, or a copy cut before the port."""
    if header.proto not in _PORTED or header.fragment_offset or header.l4 + 4 > header.end:
        return None
    return _PORTS.unpack_from(data, header.l4)[1]


def parse_packet(data: bytes | bytearray | memoryview) -> Packet | None:
    """A whole UDP or TCP packet, as the snooper needs it; None for anything else: another
    protocol, a fragment (a DNS message split over fragments cannot be trusted piecewise, and
    the kernel reassembles before the hooks we use anyway), lengths that disagree with the data."""
    fields, buf = _ip(data)
    if fields is None:
        return None
    version, src, dst, proto, pos, end, whole, offset, more = fields
    if not whole or offset or more:
        return None
    if proto == PROTO_UDP:
        if pos + 8 > end:
            return None
        sport, dport, length, _csum = _UDP_HEAD.unpack_from(buf, pos)
        if length < 8 or pos + length > end:
            return None
        return Packet(version, src, dst, PROTO_UDP, sport, dport, buf[pos + 8 : pos + length])
    if proto == PROTO_TCP:
        if pos + 20 > end:
            return None
        sport, dport, seq, _ack, data_offset, flags = _TCP_HEAD.unpack_from(buf, pos)
        header_len = (data_offset >> 4) * 4
        if header_len < 20 or pos + header_len > end:
            return None
        return Packet(version, src, dst, PROTO_TCP, sport, dport, buf[pos + header_len : end], seq, flags)
    return None


def ip_text(ip: IPAddress) -> str:
    """The address as str(ip) gives it, at C speed: ipaddress's own formatting is Python code
    and, on the packet path, cost a fifth of the snooper's time."""
    if ip.version == 4:
        return _inet_ntop(_AF_INET, ip.packed)
    text = _inet_ntop(_AF_INET6, ip.packed)
    return str(ip) if "." in text else text  # IPv4-mapped forms differ: keep ipaddress's
