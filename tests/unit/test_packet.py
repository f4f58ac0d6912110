"""ramfw.kernel.packet, the one packet-header parser (snooper and audit): IPv4 with options,
IPv6 through extension headers and the fragment header, UDP and TCP; hostile or truncated input
gives None, never an exception."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipbuild import DST4, DST6, SRC4, SRC6, ext_header, frag_header, ipv4, ipv6, tcp, udp
from ramfw.kernel.packet import destination_port, ip_text, parse_ip, parse_packet

FAST = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- parse_packet: what the snooper trusts --------------------------------------------------


def test_ipv4_udp():
    p = parse_packet(ipv4(17, udp(53, 40000, b"dns!")) + b"\x00" * 6)  # link padding ignored
    assert (p.version, p.src, p.dst, p.proto, p.sport, p.dport) == (4, SRC4, DST4, 17, 53, 40000)
    assert p.payload == b"dns!" and (p.tcp_seq, p.tcp_flags) == (0, 0)


def test_ipv4_options_and_udp_length_honoured():
    options = b"\x01\x01\x01\x00" + b"\x94\x04\x00\x00"  # NOPs, EOL, router alert
    packet = ipv4(17, udp(53, 1234, b"abcdef", length=8 + 3), options=options)
    p = parse_packet(memoryview(packet))
    assert p.payload == b"abc"
    assert (p.sport, p.dport) == (53, 1234)


def test_ipv4_tcp_with_options():
    mss_nops_eol = b"\x02\x04\x05\xb4\x01\x01\x01\x00"
    seg = tcp(53, 5555, 0xFFFFFFF0, 0x18, b"\x00\x02hi", options=mss_nops_eol)
    p = parse_packet(ipv4(6, seg, frag=0x4000))  # DF is not a fragment
    assert (p.proto, p.sport, p.dport, p.tcp_seq, p.tcp_flags) == (6, 53, 5555, 0xFFFFFFF0, 0x18)
    assert p.payload == b"\x00\x02hi"


@pytest.mark.parametrize("frag", [0x2000, 0x0001, 0x2010, 0x6000])
def test_ipv4_fragments_refused(frag):
    assert parse_packet(ipv4(17, udp(53, 1, b"x"), frag=frag)) is None


def test_ipv6_udp_through_extension_headers():
    body = ext_header(60) + ext_header(43, units=1) + ext_header(17) + udp(53, 999, b"answer")
    p = parse_packet(ipv6(0, body))
    assert (p.version, p.src, p.dst, p.proto, p.sport, p.dport) == (6, SRC6, DST6, 17, 53, 999)
    assert p.payload == b"answer"


def test_ipv6_atomic_fragment_accepted_real_fragments_refused():
    atomic = parse_packet(ipv6(44, frag_header(6, 0, False) + tcp(53, 7, 99, 0x11, b"z")))
    assert (atomic.proto, atomic.tcp_seq, atomic.tcp_flags, atomic.payload) == (6, 99, 0x11, b"z")
    for offset, more in ((0, True), (5, False), (5, True)):
        assert parse_packet(ipv6(44, frag_header(17, offset, more) + udp(53, 7, b"z"))) is None


@pytest.mark.parametrize(
    "packet",
    [
        ipv4(1, b"\x08\x00" + b"\x00" * 6),  # ICMP
        ipv6(58, b"\x80\x00" + b"\x00" * 6),  # ICMPv6
        ipv6(59, b"\x00" * 8),  # no next header
        ipv6(0, ext_header(50) + b"\x00" * 8),  # ESP behind hop-by-hop
    ],
)
def test_not_udp_tcp(packet):
    assert parse_packet(packet) is None
    assert parse_ip(packet) is not None  # but the IP header is readable (audit events)


GOOD_PACKETS = [
    ipv4(17, udp(53, 1, b"payload"), options=b"\x01" * 4),
    ipv4(6, tcp(53, 1, 5, 0x10, b"payload")),
    ipv6(0, ext_header(17) + udp(53, 1, b"payload")),
    ipv6(6, tcp(53, 1, 5, 0x10, b"payload", options=b"\x01" * 4)),
    ipv6(44, frag_header(17, 0, False) + udp(53, 1, b"payload")),
]


@pytest.mark.parametrize("packet", GOOD_PACKETS)
def test_every_truncation_is_refused(packet):
    assert parse_packet(packet).payload == b"payload"
    for cut in range(len(packet)):  # shorter than the length fields claim
        assert parse_packet(packet[:cut]) is None


@pytest.mark.parametrize(
    "packet",
    [
        b"\x55" + b"\x00" * 40,  # IP version 5
        b"\x44" + ipv4(17, udp(53, 1, b"x"))[1:],  # IHL 4: below 20
        ipv4(17, udp(53, 1, b"x"), total=19),  # total length below the header
        ipv4(17, udp(53, 1, b"x"), total=500),  # total length beyond the data
        ipv4(17, udp(53, 1, b"xyz", length=7)),  # UDP length below its header
        ipv4(17, udp(53, 1, b"xyz", length=12)),  # UDP length beyond the packet
        ipv4(6, tcp(53, 1, 1, 0, b"")[:12] + b"\x40" + tcp(53, 1, 1, 0, b"")[13:]),  # TCP data offset 16
        ipv4(6, tcp(53, 1, 1, 0, b"")[:12] + b"\xf0" + tcp(53, 1, 1, 0, b"")[13:]),  # TCP data offset 60
        ipv6(17, b"")[:4] + b"\x00\x00" + ipv6(17, b"")[6:] + udp(1, 2, b""),  # payload length 0 (jumbogram)
        ipv6(0, ext_header(17, units=3)[:16]),  # extension header cut off
    ],
)
def test_bad_headers_are_refused(packet):
    assert parse_packet(packet) is None


# --- parse_ip + destination_port: what audit events say -------------------------------------


def test_ipv6_fragment_header_is_walked_to_the_real_protocol():
    first = ipv6(44, frag_header(6, 0, True) + tcp(40000, 443, 1, 0x02, b"x" * 32))
    head = parse_ip(first)
    assert (head.version, head.src, head.dst, head.proto, head.l4) == (6, SRC6, DST6, 6, 48)
    assert head.fragmented and head.fragment_offset == 0 and head.more_fragments
    assert destination_port(first, head) == 443
    later = ipv6(44, frag_header(17, 4, False) + b"\x01\xbb\x00\x35" + b"y" * 28)
    head = parse_ip(later)
    assert (head.proto, head.fragment_offset, head.more_fragments) == (17, 32, False)
    assert destination_port(later, head) is None  # those bytes are data, not a UDP header


def test_ipv6_hop_by_hop_then_fragment_then_udp():
    packet = ipv6(0, ext_header(44) + frag_header(17, 0, False) + udp(5353, 53, b"q"))
    head = parse_ip(packet)
    assert (head.proto, head.l4, head.fragmented) == (17, 56, False)
    assert destination_port(packet, head) == 53
    assert parse_packet(packet).dport == 53


def test_ipv4_later_fragment_has_no_port_first_fragment_has():
    first = ipv4(6, tcp(1, 8443, 0, 0x02, b""), frag=0x2000)
    later = ipv4(6, tcp(1, 8443, 0, 0x02, b""), frag=0x0003)
    assert destination_port(first, parse_ip(first)) == 8443
    head = parse_ip(later)
    assert head.fragment_offset == 24 and destination_port(later, head) is None


def test_a_copy_cut_short_keeps_its_addresses():
    packet = ipv4(17, udp(1, 53, b"x" * 100))[:40]  # NFLOG copy_range smaller than the packet
    head = parse_ip(packet)
    assert (head.src, head.dst, head.proto, head.whole) == (SRC4, DST4, 17, False)
    assert destination_port(packet, head) == 53
    assert destination_port(packet[:22], parse_ip(packet[:22])) is None
    assert parse_packet(packet) is None


def test_icmp_and_sctp():
    icmp = ipv4(1, b"\x08\x00" + b"\x00" * 6)
    assert destination_port(icmp, parse_ip(icmp)) is None
    sctp = ipv6(132, b"\x13\x88\x0b\xb8" + b"\x00" * 8)
    assert destination_port(sctp, parse_ip(sctp)) == 3000


@FAST
@given(st.binary(max_size=120))
def test_random_bytes_never_raise(data):
    for candidate in (data, b"\x45" + data, b"\x60" + data, b"\x60\0\0\0\0\x50\x2c\x40" + bytes(32) + data):
        head = parse_ip(candidate)
        if head is not None:
            assert head.l4 <= head.end <= len(candidate)
            destination_port(candidate, head)
        p = parse_packet(bytearray(candidate))
        if p is not None:
            assert p.proto in (6, 17) and len(p.payload) < len(candidate)


@FAST
@given(st.lists(st.tuples(st.sampled_from([0, 43, 60, 44]), st.integers(0, 3)), max_size=6), st.binary(max_size=40))
def test_hostile_extension_header_chains_never_raise(chain, tail):
    body = b""
    for i, (kind, units) in enumerate(chain):
        nxt = chain[i + 1][0] if i + 1 < len(chain) else 17
        body += frag_header(nxt, units, bool(units & 1)) if kind == 44 else ext_header(nxt, units)
    packet = ipv6(chain[0][0] if chain else 17, body + tail)
    for cut in (len(packet), len(packet) - 1, 41, 47):
        head = parse_ip(packet[:cut])
        if head is not None:
            destination_port(packet[:cut], head)
        parse_packet(packet[:cut])


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**128 - 1), st.integers(min_value=0, max_value=2**32 - 1))
def test_ip_text_matches_ipaddress(v6, v4):
    for ip in (ipaddress.IPv6Address(v6), ipaddress.IPv4Address(v4), ipaddress.IPv6Address(0xFFFF00000000 | v4)):
        assert ip_text(ip) == str(ip)
