"""ramfw.dns.wire: checked against dnspython, fuzzed, and pinned with hand-built packets."""

import ipaddress
import random
import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipbuild import ipv6, tcp
from ramfw.dns.stream import TcpDnsReassembler
from ramfw.dns.wire import Message, MalformedPacket, Question, parse_message, resolve_chain
from ramfw.kernel.packet import parse_packet

IN = dns.rdataclass.IN
CH = dns.rdataclass.CH
A, AAAA, CNAME, TXT, MX, NS = (
    dns.rdatatype.A,
    dns.rdatatype.AAAA,
    dns.rdatatype.CNAME,
    dns.rdatatype.TXT,
    dns.rdatatype.MX,
    dns.rdatatype.NS,
)
V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address

# No example database: unit tests must not leave files behind, and runs stay reproducible.
FAST = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---------------------------------------------------------------------------------------------
# dnspython as the reference


def ref_text(name: dns.name.Name) -> str:
    """The text our Question.name promises: dnspython's, lowercased, root as ""."""
    return "" if name == dns.name.root else name.to_text(omit_final_dot=True).lower()


def ref_summary(m: dns.message.Message) -> dict:
    """What parse_message must report for a message dnspython parsed (one RR per RRset)."""
    answers = []
    for rrset in m.sections[1]:
        if rrset.rdclass != IN or rrset.rdtype not in (A, AAAA, CNAME):
            continue
        if getattr(rrset, "deleting", None) is not None:  # UPDATE deletions: not data
            continue
        for rd in rrset:
            if rrset.rdtype == A:
                value = V4(rd.address)
            elif rrset.rdtype == AAAA:
                value = V6(rd.address)
            else:
                value = ref_text(rd.target)
            answers.append((ref_text(rrset.name), int(rrset.rdtype), rrset.ttl, value))
    q = m.question[0] if m.question else None
    return {
        "id": m.id,
        "is_response": bool(m.flags & dns.flags.QR),
        "opcode": int(m.opcode()),
        "rcode": int(m.rcode()),
        "truncated": bool(m.flags & dns.flags.TC),
        "question": None if q is None else Question(ref_text(q.name), q.rdtype, q.rdclass),
        "qdcount": len(m.question),
        "answers": answers,
    }


def our_summary(m: Message) -> dict:
    return {
        "id": m.id,
        "is_response": m.is_response,
        "opcode": m.opcode,
        "rcode": m.rcode,
        "truncated": m.truncated,
        "question": m.question,
        "qdcount": m.qdcount,
        "answers": m.answers,
    }


def check_against_dnspython(wire: bytes) -> Message | None:
    """Parse with both. Ours may only raise MalformedPacket; whatever dnspython accepts we must
    accept with the same values. (We may accept more: we skip rdata of other types.)"""
    try:
        ours = parse_message(wire)
    except MalformedPacket as e:
        assert str(e) and "\n" not in str(e)
        ours = None
    try:
        theirs = dns.message.from_wire(wire, one_rr_per_rrset=True)
    except Exception:
        theirs = None
    if theirs is not None:
        assert ours is not None, "dnspython parses what we reject"
        assert our_summary(ours) == ref_summary(theirs)
    return ours


# ---------------------------------------------------------------------------------------------
# Hypothesis strategies building messages with dnspython

ODD = b'.\\ @$"();\x00\x7f\xff\xc0ABCxyz-_*'
labels = st.one_of(
    st.sampled_from([b"www", b"CDN", b"example", b"com", b"io", b"Registry-1", b"xn--bcher-kva"]),
    st.binary(min_size=1, max_size=63),
    st.lists(st.sampled_from(list(ODD)), min_size=1, max_size=12).map(bytes),
    st.integers(50, 63).map(lambda n: b"L" * n),  # long labels push names towards 255 bytes
)


def make_name(parts: list[bytes]) -> dns.name.Name:
    """Name from labels, dropping trailing labels that would exceed 255 bytes on the wire."""
    kept, size = [], 1
    for part in parts:
        if size + len(part) + 1 > 255:
            break
        kept.append(part)
        size += len(part) + 1
    return dns.name.Name(kept + [b""])


names = st.lists(labels, min_size=0, max_size=6).map(make_name)


@st.composite
def related_names(draw, pool):
    """A pool name, or a new label in front of one: shared suffixes exercise compression."""
    name = draw(st.sampled_from(pool))
    if draw(st.booleans()):
        name = make_name([draw(labels), *name.labels[:-1]])
    return name


@st.composite
def rdatas(draw, pool):
    kind = draw(st.sampled_from(["A", "AAAA", "CNAME", "TXT", "MX", "CNAME-CH", "TXT-CH"]))
    if kind == "A":
        return dns.rdtypes.IN.A.A(IN, A, str(V4(draw(st.integers(0, 2**32 - 1)))))
    if kind == "AAAA":
        return dns.rdtypes.IN.AAAA.AAAA(IN, AAAA, str(V6(draw(st.integers(0, 2**128 - 1)))))
    if kind.startswith("CNAME"):
        target = draw(related_names(pool))
        return dns.rdtypes.ANY.CNAME.CNAME(CH if kind.endswith("CH") else IN, CNAME, target)
    if kind.startswith("TXT"):
        strings = draw(st.lists(st.binary(max_size=40), min_size=1, max_size=3))
        return dns.rdtypes.ANY.TXT.TXT(CH if kind.endswith("CH") else IN, TXT, strings)
    return dns.rdtypes.ANY.MX.MX(IN, MX, draw(st.integers(0, 65535)), draw(related_names(pool)))


edns_options = st.lists(
    st.builds(dns.edns.GenericOption, st.integers(65001, 65534), st.binary(max_size=20)),
    max_size=2,
)


@st.composite
def dns_messages(draw) -> dns.message.Message:
    pool = draw(st.lists(names, min_size=1, max_size=4))
    m = dns.message.Message(id=draw(st.integers(0, 0xFFFF)))
    flags = 0
    for flag in (dns.flags.QR, dns.flags.AA, dns.flags.TC, dns.flags.RD, dns.flags.RA):
        if draw(st.booleans()):
            flags |= flag
    m.flags = dns.flags.Flag(flags)
    m.set_opcode(draw(st.sampled_from([dns.opcode.QUERY, dns.opcode.STATUS, dns.opcode.NOTIFY])))
    edns = draw(st.booleans())
    if edns:
        m.use_edns(0, payload=draw(st.integers(512, 4096)), options=draw(edns_options))
    extended = [dns.rcode.BADVERS, 23] if edns else []
    m.set_rcode(draw(st.sampled_from([0, 1, 2, 3, 5, *extended])))
    for _ in range(draw(st.integers(0, 2))):
        qname = draw(related_names(pool))
        m.question.append(dns.rrset.RRset(qname, IN, draw(st.sampled_from([A, AAAA, 255]))))
    # One rdata per RRset, so every record keeps its own TTL and order on the wire.
    for section, size in ((m.answer, 8), (m.authority, 2), (m.additional, 3)):
        for _ in range(draw(st.integers(0, size))):
            ttl = draw(st.one_of(st.integers(0, 86400), st.integers(0, 2**32 - 1)))
            rd = draw(rdatas(pool)) if section is not m.authority else draw(
                st.builds(lambda n: dns.rdtypes.ANY.NS.NS(IN, NS, n), related_names(pool))
            )
            section.append(dns.rrset.from_rdata(draw(related_names(pool)), ttl, rd))
    return m


def render(m: dns.message.Message) -> bytes:
    # Compressed; EDNS payload size must not cap it; rdata order as built, not shuffled.
    return m.to_wire(max_size=65535, want_shuffle=False)


# ---------------------------------------------------------------------------------------------
# Differential tests


@FAST
@given(dns_messages())
def test_matches_dnspython_on_generated_messages(m):
    wire = render(m)
    ours = parse_message(wire)
    reference = ref_summary(dns.message.from_wire(wire, one_rr_per_rrset=True))
    assert our_summary(ours) == reference
    # and the reference really is what was generated, not an echo of a shared bug
    assert ours.id == m.id
    assert ours.rcode == m.rcode()
    assert ours.qdcount == len(m.question)
    assert len(ours.answers) == sum(
        1 for r in m.answer if r.rdclass == IN and r.rdtype in (A, AAAA, CNAME)
    )


@FAST
@given(names)
def test_name_text_matches_dnspython(name):
    m = dns.message.make_query(name, A)
    assert parse_message(m.to_wire()).question.name == ref_text(name)


@pytest.mark.parametrize(
    "label, text",
    [
        (b"WwW", "www"),
        (b"a.b", "a\\.b"),
        (b"sp ace", "sp\\032ace"),
        (b"\x00\xff", "\\000\\255"),
        (b'q"(x);@$\\', 'q\\"\\(x\\)\\;\\@\\$\\\\'),
        (b"\x7fDEL", "\\127del"),
        (b"Ab-_*9", "ab-_*9"),
    ],
)
def test_name_escaping(label, text):
    name = dns.name.Name([label, b"Example", b""])
    m = dns.message.make_query(name, A)
    assert parse_message(m.to_wire()).question.name == text + ".example"
    assert ref_text(name) == text + ".example"  # the promise is dnspython's text


def test_query_parses():
    q = dns.message.make_query("Registry-1.Docker.IO", "AAAA", use_edns=0)
    q.id = 4242
    m = parse_message(q.to_wire())
    assert m == Message(4242, False, 0, 0, False, Question("registry-1.docker.io", 28, 1), 1, [])


def test_root_question_is_empty_string():
    m = parse_message(dns.message.make_query(".", "NS").to_wire())
    assert m.question == Question("", 2, 1)


def test_hand_built_response():
    # id 0x1234, QR RD RA, 1 question, 2 answers; owners are pointers to the question name.
    wire = (
        bytes.fromhex("1234 8180 0001 0002 0000 0000")
        + b"\x03Foo\x07Example\x03com\x00" + struct.pack("!HH", 1, 1)
        + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + bytes([192, 0, 2, 7])
        + b"\xc0\x0c" + struct.pack("!HHIH", 28, 1, 0x80000000, 16) + V6("2001:db8::9").packed
    )
    m = parse_message(wire)
    assert (m.id, m.is_response, m.opcode, m.rcode, m.truncated) == (0x1234, True, 0, 0, False)
    assert m.question == Question("foo.example.com", 1, 1)
    assert m.answers == [
        ("foo.example.com", 1, 300, V4("192.0.2.7")),
        ("foo.example.com", 28, 0, V6("2001:db8::9")),  # TTL with top bit set counts as 0
    ]
    assert parse_message(memoryview(wire)) == m
    assert parse_message(bytearray(wire)) == m


def test_other_classes_and_types_are_skipped():
    m = dns.message.make_response(dns.message.make_query("a.example", "A"))
    m.answer.append(dns.rrset.from_text("a.example.", 5, "CH", "TXT", '"x"'))
    m.answer.append(dns.rrset.from_text("a.example.", 5, "IN", "MX", "10 mx.example."))
    m.answer.append(dns.rrset.from_text("a.example.", 5, "IN", "A", "10.0.0.1"))
    assert parse_message(m.to_wire()).answers == [("a.example", 1, 5, V4("10.0.0.1"))]


def test_extended_rcode_from_opt():
    m = dns.message.make_response(dns.message.make_query("a.example", "A", use_edns=0))
    m.set_rcode(dns.rcode.BADVERS)
    assert parse_message(m.to_wire()).rcode == 16


# ---------------------------------------------------------------------------------------------
# Malformed messages, built by hand so each one fails for exactly one reason

HEADER = struct.Struct("!6H")


def header(qd=1, an=0, ns=0, ar=0, flags=0x8180, ident=7):
    return HEADER.pack(ident, flags, qd, an, ns, ar)


Q_EXAMPLE = b"\x07example\x00" + struct.pack("!HH", 1, 1)  # at offset 12


def rr(owner: bytes, rtype: int, rdata: bytes, rdlen: int | None = None, rclass=1) -> bytes:
    size = len(rdata) if rdlen is None else rdlen
    return owner + struct.pack("!HHIH", rtype, rclass, 60, size) + rdata


@pytest.mark.parametrize(
    "wire, reason",
    [
        (b"\x00" * 11, "header"),
        (header(qd=2) + Q_EXAMPLE, "past"),  # qdcount lies
        (header(an=1) + Q_EXAMPLE, "past"),  # ancount lies
        (header() + b"\xc0\x0c" + b"\x00\x01\x00\x01", "backwards"),  # pointer to itself
        (header() + b"\xc0\x10\x00\x00\x01\x00\x01", "backwards"),  # forward pointer
        (header() + b"\x01a\xc0\x0c\x00\x01\x00\x01", "backwards"),  # loop through own start
        (header() + b"\x41" + b"x" * 65 + b"\x00\x00\x01\x00\x01", "label type"),
        (header() + b"\x81" + b"\x00\x00\x01\x00\x01", "label type"),
        (header() + b"\x3f" + b"x" * 63 + b"\x3f" + b"x" * 63 + b"\x3f" + b"x" * 63
         + b"\x3f" + b"x" * 63 + b"\x00\x00\x01\x00\x01", "255"),
        (header(an=1) + Q_EXAMPLE + rr(b"\xc0\x0c", 1, b"\x01\x02\x03"), "rdlength 3"),
        (header(an=1) + Q_EXAMPLE + rr(b"\xc0\x0c", 1, b"\x01\x02\x03\x04\x05"), "rdlength 5"),
        (header(an=1) + Q_EXAMPLE + rr(b"\xc0\x0c", 28, b"\x00" * 4), "rdlength 4"),
        (header(an=1) + Q_EXAMPLE + rr(b"\xc0\x0c", 1, b"\x01\x02\x03\x04", rdlen=40), "past"),
        (header(an=1) + Q_EXAMPLE + rr(b"\xc0\x0c", 5, b"\xc0\x0c\x00"), "longer than"),
        (header(an=1) + Q_EXAMPLE + rr(b"\xc0\x0c", 5, b"\x03abc\x00", rdlen=3), "past its end"),
        (header() + Q_EXAMPLE + b"\x00", "trailing"),
        (header(an=1) + Q_EXAMPLE + rr(b"\x00", 41, b""), "OPT"),
        (header(ar=2) + Q_EXAMPLE + rr(b"\x00", 41, b"") * 2, "OPT"),
        (header(ar=1) + Q_EXAMPLE + rr(b"\xc0\x0c", 41, b""), "OPT"),
    ],
)
def test_malformed_messages(wire, reason):
    with pytest.raises(MalformedPacket, match=reason):
        parse_message(wire)
    with pytest.raises(Exception):  # dnspython agrees each one is bad
        dns.message.from_wire(wire)


@pytest.mark.parametrize("last_label, ok", [(61, True), (62, False)])
def test_name_length_limit_is_255_wire_bytes(last_label, ok):
    # 3 * (1 + 63) + (1 + last_label) + 1 root byte: 255 is fine, 256 is not.
    qname = b"".join(b"\x3f" + b"x" * 63 for _ in range(3))
    qname += bytes([last_label]) + b"y" * last_label
    wire = header() + qname + b"\x00" + struct.pack("!HH", 1, 1)
    if ok:
        assert len(parse_message(wire).question.name) == 3 * 64 + last_label
    else:
        with pytest.raises(MalformedPacket, match="255"):
            parse_message(wire)
    assert (check_against_dnspython(wire) is not None) == ok


def pointer_chain_questions(count: int) -> bytes:
    """count questions; the first is 'a', each later one is a bare pointer to the previous
    question's name, so question k needs k-1 pointers."""
    body, starts = b"", []
    for i in range(count):
        starts.append(12 + len(body))
        name = b"\x01a\x00" if i == 0 else struct.pack("!H", 0xC000 | starts[i - 1])
        body += name + struct.pack("!HH", 1, 1)
    return header(qd=count) + body


def test_pointer_chain_limit_is_dnspythons():
    ok = pointer_chain_questions(17)  # the last name follows 16 pointers
    assert parse_message(ok).qdcount == 17
    assert check_against_dnspython(ok) is not None
    too_long = pointer_chain_questions(18)
    with pytest.raises(MalformedPacket, match="chain too long"):
        parse_message(too_long)
    assert check_against_dnspython(too_long) is None


def test_truncated_response_keeps_complete_records():
    first = rr(b"\xc0\x0c", 1, bytes([10, 0, 0, 1]))
    second = rr(b"\xc0\x0c", 1, bytes([10, 0, 0, 2]))
    cut = Q_EXAMPLE + first + second[:7]
    m = parse_message(header(an=2, flags=0x8380) + cut)  # TC set
    assert m.truncated
    assert m.answers == [("example", 1, 60, V4("10.0.0.1"))]
    with pytest.raises(MalformedPacket):  # the same bytes without TC are just broken
        parse_message(header(an=2, flags=0x8180) + cut)
    with pytest.raises(MalformedPacket):  # TC does not excuse a broken question
        parse_message(header(qd=2, flags=0x8380) + Q_EXAMPLE)
    # nor a name overrunning its rdata: that is inconsistent, not cut off
    overrun = rr(b"\xc0\x0c", 5, b"\x03abc\x00", rdlen=3) + first
    with pytest.raises(MalformedPacket, match="past its end"):
        parse_message(header(an=2, flags=0x8380) + Q_EXAMPLE + overrun)


# ---------------------------------------------------------------------------------------------
# Fuzzing: random bytes and mutations of valid messages


@FAST
@given(st.binary(max_size=600))
def test_random_bytes_never_crash(data):
    check_against_dnspython(data)


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_after_plausible_header(body):
    # A header with small counts gets the parser past the first check far more often.
    for counts in ((1, 1, 0, 0), (1, 2, 1, 1), (0, 0, 0, 1)):
        check_against_dnspython(HEADER.pack(1, 0x8180, *counts) + body)


def mutate(wire: bytes, rng: random.Random) -> bytes:
    """One random corruption of the kinds a hostile or broken sender produces."""
    b = bytearray(wire)
    n = len(b)
    kind = rng.randrange(8)
    if kind == 0 and n:  # bit flip
        b[rng.randrange(n)] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncation
        del b[rng.randrange(n + 1) :]
    elif kind == 2 and n >= 2:  # compression pointer, often a loop or forward reference
        i = rng.randrange(n - 1)
        target = rng.choice([i, i + 2, rng.randrange(n + 4), 12])
        b[i : i + 2] = struct.pack("!H", 0xC000 | (target & 0x3FFF))
    elif kind == 3 and n >= 2:  # a 16-bit field lies (rdlength, counts, types)
        i = rng.randrange(n - 1)
        b[i : i + 2] = struct.pack("!H", rng.choice([0, 1, 3, 4, 5, 16, 17, 255, 0xFFFF]))
    elif kind == 4 and n >= 12:  # header counts lie
        b[4 + 2 * rng.randrange(4) + 1] = rng.randrange(6)
    elif kind == 5:  # insertion
        i = rng.randrange(n + 1)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
    elif kind == 6 and n:  # deletion
        i = rng.randrange(n)
        del b[i : i + rng.randrange(1, 4)]
    elif n:  # byte set to a label-type or length boundary
        b[rng.randrange(n)] = rng.choice([0, 1, 63, 64, 0x80, 0xC0, 0xFF])
    return bytes(b)


@FAST
@given(dns_messages(), st.randoms(use_true_random=False))
def test_mutated_messages(m, rng):
    wire = render(m)
    for _ in range(5):
        wire = mutate(wire, rng)
        check_against_dnspython(wire)


def base_messages() -> list[bytes]:
    """A few realistic messages, byte-identical on every run (fixed ids, no shuffling)."""
    r = dns.message.make_response(dns.message.make_query("www.Example.com", "A", use_edns=0))
    r.answer.append(dns.rrset.from_text("www.example.com.", 30, "IN", "CNAME", "edge.cdn.net."))
    r.answer.append(dns.rrset.from_text("edge.cdn.net.", 20, "IN", "A", "192.0.2.1", "192.0.2.2"))
    r.answer.append(dns.rrset.from_text("edge.cdn.net.", 20, "IN", "AAAA", "2001:db8::1"))
    r.authority.append(dns.rrset.from_text("cdn.net.", 99, "IN", "NS", "ns1.cdn.net."))
    r.additional.append(dns.rrset.from_text("ns1.cdn.net.", 99, "IN", "A", "192.0.2.53"))
    txt = dns.message.make_response(dns.message.make_query("x.example", "TXT"))
    txt.answer.append(dns.rrset.from_text("x.example.", 5, "IN", "TXT", '"a b" "c"'))
    txt.answer.append(dns.rrset.from_text("x.example.", 5, "IN", "MX", "5 mail.x.example."))
    query = dns.message.make_query("registry-1.docker.io", "AAAA", use_edns=0)
    messages = [r, txt, query]
    for ident, m in enumerate(messages, start=100):
        m.id = ident
    return [render(m) for m in messages]


def test_deterministic_mutation_loop():
    rng = random.Random(20240607)
    bases = base_messages()
    outcomes = {"parsed": 0, "malformed": 0}
    for _ in range(20_000):
        wire = rng.choice(bases)
        for _ in range(rng.randrange(1, 4)):
            wire = mutate(wire, rng)
        outcomes["parsed" if check_against_dnspython(wire) else "malformed"] += 1
    # The corpus must exercise both outcomes, or the loop proves little.
    assert outcomes["parsed"] > 1000 and outcomes["malformed"] > 1000, outcomes


# ---------------------------------------------------------------------------------------------
# resolve_chain


def response(qname: str, records: list[tuple[str, str, str]], qtype="A") -> Message:
    r = dns.message.make_response(dns.message.make_query(qname, qtype))
    for ttl, (owner, rtype, value) in enumerate(records, start=100):
        r.answer.append(dns.rrset.from_text(owner, ttl, "IN", rtype, value))
    return parse_message(render(r))


def test_chain_across_cnames_case_insensitive():
    m = response(
        "WWW.Example.com",
        [
            ("Www.EXAMPLE.com.", "CNAME", "A.Cdn.net."),
            ("evil.example.", "A", "6.6.6.6"),  # not in the chain
            ("a.cdn.NET.", "CNAME", "b.cdn.net."),
            ("B.CDN.net.", "A", "192.0.2.10"),
            ("b.cdn.net.", "AAAA", "2001:db8::10"),
            ("c.cdn.net.", "A", "192.0.2.66"),  # not in the chain either
        ],
    )
    chain, addrs = resolve_chain(m)
    assert chain == ["www.example.com", "a.cdn.net", "b.cdn.net"]
    assert addrs == [(V4("192.0.2.10"), 103), (V6("2001:db8::10"), 104)]


def test_chain_without_cname_and_both_families_whatever_qtype():
    m = response(
        "host.example", [("host.example.", "AAAA", "::1"), ("host.example.", "A", "10.1.1.1")]
    )
    assert resolve_chain(m) == (["host.example"], [(V6("::1"), 100), (V4("10.1.1.1"), 101)])


def test_chain_loop_stops():
    m = response(
        "a.example",
        [
            ("a.example.", "CNAME", "b.example."),
            ("b.example.", "CNAME", "a.example."),
            ("b.example.", "A", "10.0.0.2"),
        ],
    )
    assert resolve_chain(m) == (["a.example", "b.example"], [(V4("10.0.0.2"), 102)])
    self_loop = response("s.example", [("s.example.", "CNAME", "s.example.")])
    assert resolve_chain(self_loop) == (["s.example"], [])


def test_chain_hops_are_bounded():
    records = [(f"n{i}.example.", "CNAME", f"n{i + 1}.example.") for i in range(30)]
    records.append(("n30.example.", "A", "10.3.0.0"))
    records.append(("n16.example.", "A", "10.1.6.0"))
    chain, addrs = resolve_chain(response("n0.example", records))
    assert chain == [f"n{i}.example" for i in range(17)]  # question + 16 hops
    assert addrs == [(V4("10.1.6.0"), 131)]  # n30 is beyond the bound


def test_chain_ignores_cname_into_chain_from_outside():
    m = response(
        "q.example",
        [("other.example.", "CNAME", "q.example."), ("other.example.", "A", "10.9.9.9")],
    )
    assert resolve_chain(m) == (["q.example"], [])


def test_chain_of_hand_built_message_and_no_question():
    m = Message(1, True, 0, 0, False, Question("Q.Example", 1, 1), 1, [
        ("q.EXAMPLE", 5, 10, "T.example"),
        ("t.example", 1, 20, V4("10.0.0.7")),
    ])
    assert resolve_chain(m) == (["q.example", "t.example"], [(V4("10.0.0.7"), 20)])
    m.question = None
    assert resolve_chain(m) == ([], [])


# ---------------------------------------------------------------------------------------------
# TcpDnsReassembler


def framed(*messages: bytes) -> bytes:
    return b"".join(struct.pack("!H", len(m)) + m for m in messages)


MSG1 = base_messages()[0]
MSG2 = base_messages()[1]
FLOW = ("198.51.100.53", 53, "192.0.2.1", 40000)


def test_message_split_over_three_segments():
    r = TcpDnsReassembler()
    stream = framed(MSG1)
    a, b = 1, len(MSG1) // 2
    assert r.feed(FLOW, 1000, stream[:a]) == []  # half of the length prefix
    assert r.feed(FLOW, 1000 + a, stream[a:b]) == []
    assert r.feed(FLOW, 1000 + b, stream[b:]) == [MSG1]
    assert parse_message(MSG1).answers  # and it is the real answer


def test_two_messages_in_one_segment_and_a_third_spanning():
    r = TcpDnsReassembler()
    stream = framed(MSG1, MSG2, MSG1)
    cut = len(framed(MSG1, MSG2)) + 5
    assert r.feed(FLOW, 7, stream[:cut]) == [MSG1, MSG2]
    assert r.feed(FLOW, 7 + cut, stream[cut:]) == [MSG1]


def test_sequence_wraps():
    r = TcpDnsReassembler()
    stream = framed(MSG2)
    start = 2**32 - 3
    assert r.feed(FLOW, start, stream[:10]) == []
    assert r.feed(FLOW, (start + 10) % 2**32, stream[10:]) == [MSG2]


def test_gap_drops_flow_until_close():
    r = TcpDnsReassembler()
    stream = framed(MSG1, MSG2)
    assert r.feed(FLOW, 0, stream[:20]) == []
    assert r.feed(FLOW, 30, stream[30:]) == []  # bytes 20..29 never arrived
    assert r.gaps == 1
    assert r.feed(FLOW, 20, stream[20:]) == []  # too late: framing is lost for this flow
    far = ("far", 1)
    assert r.feed(far, 0, stream[:20]) == []
    assert r.feed(far, 2**30, stream[20:]) == []  # far ahead is a gap, not an old segment
    assert r.gaps == 2
    assert r.feed(far, 20, stream[20:]) == []
    r.close(FLOW)
    assert r.feed(FLOW, 500, framed(MSG2)) == [MSG2]  # a new connection on the same tuple


def test_retransmits_are_trimmed():
    r = TcpDnsReassembler()
    stream = framed(MSG1)
    assert r.feed(FLOW, 0, stream[:40]) == []
    assert r.feed(FLOW, 0, stream[:40]) == []  # exact retransmit
    assert r.feed(FLOW, 10, stream[10:30]) == []  # retransmit of a middle part
    assert r.retransmits == 2
    assert r.feed(FLOW, 20, stream[20:]) == [MSG1]  # overlaps 20 old bytes; rest completes
    assert r.feed(FLOW, 0, stream) == []  # the whole message again: not delivered twice
    assert r.gaps == 0


def test_flow_bytes_bound():
    r = TcpDnsReassembler(max_flow_bytes=100)
    assert r.feed(FLOW, 0, framed(b"x" * 500)[:50]) == []  # announces 502 bytes > 100
    assert r.overflows == 1
    assert r.feed(FLOW, 50, framed(b"x" * 500)[50:]) == []
    other = ("o", 1)
    assert r.feed(other, 0, framed(b"y" * 90)) == [b"y" * 90]  # small messages still fine
    assert r.overflows == 1


def test_largest_message_fits_default_bound():
    r = TcpDnsReassembler()
    big = bytes(range(256)) * 255 + b"end" * 85  # 65535 bytes
    stream = framed(big, MSG2)
    out = []
    for pos in range(0, len(stream), 1448):
        out += r.feed(FLOW, pos, stream[pos : pos + 1448])
    assert out == [big, MSG2] and r.overflows == 0


def test_max_flows_evicts_least_recently_used():
    r = TcpDnsReassembler(max_flows=2)
    stream = framed(MSG2)
    assert r.feed("a", 0, stream[:10]) == []
    assert r.feed("b", 0, stream[:10]) == []
    assert r.feed("a", 10, stream[10:20]) == []  # a is now more recent than b
    assert r.feed("c", 0, stream[:10]) == []
    assert (r.evicted, len(r)) == (1, 2)
    assert r.feed("a", 20, stream[20:]) == [MSG2]  # a survived
    assert r.feed("b", 10, stream[10:]) != [MSG2]  # b was evicted; its state is gone
    assert r.evicted == 2


def test_empty_segments_zero_length_and_close():
    r = TcpDnsReassembler()
    assert r.feed(FLOW, 123, b"") == [] and len(r) == 0  # pure ACK creates no state
    assert r.feed(FLOW, 0, b"\x00\x00" + framed(b"q")) == [b"", b"q"]
    r.close(FLOW)
    r.close(FLOW)  # closing twice or closing an unknown flow is fine
    assert len(r) == 0


def test_tcp_packet_to_answer_end_to_end():
    stream = framed(MSG1)
    r = TcpDnsReassembler()
    messages = []
    for i, pos in enumerate(range(0, len(stream), 50)):
        packet = parse_packet(ipv6(6, tcp(53, 40000, 9000 + pos, 0x18, stream[pos : pos + 50])))
        key = (packet.src, packet.sport, packet.dst, packet.dport)
        messages += r.feed(key, packet.tcp_seq, packet.payload)
    assert len(messages) == 1
    chain, addrs = resolve_chain(parse_message(messages[0]))
    assert chain == ["www.example.com", "edge.cdn.net"]
    assert [ip for ip, _ in addrs] == [V4("192.0.2.1"), V4("192.0.2.2"), V6("2001:db8::1")]
