"""The ctnetlink messages ramfw builds and parses (no root: bytes only; the netns tier cuts real
connections through them). A dump reply reaches parse_connection without its nfgenmsg header
(the netlink core strips it), hence the offset 4 below."""

import socket
import struct

from ramfw.kernel import conntrack as ct
from ramfw.kernel.netlink import NLA_F_NESTED, iter_nlattrs, nla_pack


def _nest(attr_type: int, body: bytes) -> bytes:
    return nla_pack(attr_type | NLA_F_NESTED, body)


def _dump_message(family: int, src: str, dst: str, proto: int = 6, sport: int = 40000, dport: int = 443) -> bytes:
    if family == socket.AF_INET:
        ip = nla_pack(ct.CTA_IP_V4_SRC, socket.inet_pton(family, src)) + nla_pack(ct.CTA_IP_V4_DST, socket.inet_pton(family, dst))
    else:
        ip = nla_pack(ct.CTA_IP_V6_SRC, socket.inet_pton(family, src)) + nla_pack(ct.CTA_IP_V6_DST, socket.inet_pton(family, dst))
    ports = nla_pack(ct.CTA_PROTO_NUM, bytes([proto])) + nla_pack(ct.CTA_PROTO_SRC_PORT, struct.pack("!H", sport)) \
        + nla_pack(ct.CTA_PROTO_DST_PORT, struct.pack("!H", dport))
    tuple_orig = _nest(ct.CTA_TUPLE_ORIG, _nest(ct.CTA_TUPLE_IP, ip) + _nest(ct.CTA_TUPLE_PROTO, ports))
    return bytes([family, 0, 0, 0]) + tuple_orig + nla_pack(ct.CTA_ID, struct.pack("!I", 0xDEADBEEF)) \
        + nla_pack(ct.CTA_ZONE, struct.pack("!H", 7))


def test_a_dumped_v4_connection_is_read_back():
    msg = _dump_message(socket.AF_INET, "198.51.100.7", "203.0.113.10")
    conn = ct.parse_connection(msg, 4, len(msg))
    assert (conn.family, conn.proto, conn.src, conn.dst, conn.sport, conn.dport) == (
        socket.AF_INET, 6, "198.51.100.7", "203.0.113.10", 40000, 443)
    assert conn.ident == struct.pack("!I", 0xDEADBEEF) and conn.zone == struct.pack("!H", 7)


def test_a_dumped_v6_connection_is_read_back():
    msg = _dump_message(socket.AF_INET6, "2001:db8:100::7", "2001:db8:113::10", proto=17, dport=53)
    conn = ct.parse_connection(msg, 4, len(msg))
    assert (conn.src, conn.dst, conn.proto, conn.dport) == ("2001:db8:100::7", "2001:db8:113::10", 17, 53)


def test_the_delete_names_the_connection_by_its_original_tuple_id_and_zone():
    msg = _dump_message(socket.AF_INET, "198.51.100.7", "203.0.113.10")
    conn = ct.parse_connection(msg, 4, len(msg))
    req = ct.delete_attrs(conn)
    attrs = {t: bytes(req[s:e]) for t, s, e in iter_nlattrs(req, 0, len(req))}
    assert attrs[ct.CTA_ID] == conn.ident and attrs[ct.CTA_ZONE] == conn.zone
    # the tuple goes back as the kernel sent it: parsing the request finds the same connection
    again = ct.parse_connection(req)
    assert (again.family, again.src, again.dst, again.sport, again.dport) == (conn.family, conn.src, conn.dst, conn.sport, conn.dport)


def test_short_odd_or_hostile_messages_are_skipped_not_raised():
    msg = _dump_message(socket.AF_INET, "198.51.100.7", "203.0.113.10")
    for cut in range(len(msg)):
        ct.parse_connection(msg[:cut], 4, cut)  # never raises
    v6_attrs = msg.replace(struct.pack("=HH", 8, ct.CTA_IP_V4_SRC), struct.pack("=HH", 8, ct.CTA_IP_V6_SRC)) \
        .replace(struct.pack("=HH", 8, ct.CTA_IP_V4_DST), struct.pack("=HH", 8, ct.CTA_IP_V6_DST))
    assert v6_attrs != msg and ct.parse_connection(v6_attrs, 4, len(v6_attrs)) is None  # 4-byte addresses where 16 are due
    assert ct.parse_connection(b"\x02\x00\x00\x00", 4, 4) is None  # no tuple
