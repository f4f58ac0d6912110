"""Audit events read the packet's headers with ramfw.kernel.packet: an IPv6 packet behind a
fragment or hop-by-hop header is attributed to its real protocol and port (audit's own parser
used to stop at the fragment header: proto "44", no port)."""

from __future__ import annotations

import ipaddress

from ipbuild import ext_header, frag_header, ipv6, tcp, udp
from ramfw.daemon.audit import AuditLog, parse_header

SRC, DST = ipaddress.IPv6Address("2001:db8:113::2"), ipaddress.IPv6Address("2001:db8:100::20")


def _event(payload: bytes) -> dict:
    audit = AuditLog(None, 3, names_for=lambda ip: ["reg.blocked.test"] if ip == str(DST) else [],
                     policy_digest=lambda: "abc")
    return audit.event("ramfw-block-out", payload, 1000, 0.0)


def test_first_fragment_is_attributed_to_its_tcp_port():
    ev = _event(ipv6(44, frag_header(6, 0, True) + tcp(40000, 443, 1, 0x02, b"x" * 24), src=SRC, dst=DST))
    assert (ev["src"], ev["dst"], ev["proto"], ev["dport"]) == (str(SRC), str(DST), "tcp", 443)
    assert ev["hostname"] == "reg.blocked.test" and ev["action"] == "refused" and ev["scope"] == "output"


def test_atomic_fragment_behind_hop_by_hop_is_attributed_to_udp():
    ev = _event(ipv6(0, ext_header(44) + frag_header(17, 0, False) + udp(5000, 5001, b"hi"), src=SRC, dst=DST))
    assert (ev["proto"], ev["dport"]) == ("udp", 5001)


def test_later_fragment_names_the_protocol_but_no_port():
    head = parse_header(ipv6(44, frag_header(6, 3, False) + b"\x01\xbb" * 8, src=SRC, dst=DST))
    assert head == {"src": str(SRC), "dst": str(DST), "proto": "tcp", "dport": None}


def test_unreadable_packets_are_counted_not_raised():
    audit = AuditLog(None, 3, names_for=lambda ip: [], policy_digest=lambda: "abc")
    assert audit.event("ramfw-block-out", b"\x60" + b"\0" * 10, None, 0.0) is None
    assert audit.event("ramfw-block-out", ipv6(0, ext_header(6, units=4)[:12]), None, 0.0) is None
    assert audit.unreadable == 2
