"""Fast DNS answer extraction for the packet path.

The snooper sees every DNS answer from the trusted servers, so this module trades generality for
speed: it decodes only what crediting needs (header, first question, A/AAAA/CNAME answers of class
IN) and walks over everything else just far enough to prove the message is well formed. It is
stdlib only and is checked against dnspython by tests/unit/test_dnswire.py: whatever dnspython
parses, this parses to the same values; whatever is out of bounds or inconsistent raises
MalformedPacket, never another exception.

The IP/UDP/TCP headers around a message are read by ramfw.kernel.packet; messages carried over
TCP are reassembled by ramfw.dns.stream.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

TYPE_A = 1
TYPE_CNAME = 5
TYPE_AAAA = 28
TYPE_OPT = 41
CLASS_IN = 1

_HEADER = struct.Struct("!6H")
_QTAIL = struct.Struct("!HH")
_RRTAIL = struct.Struct("!HHIH")

# Same limits as dnspython, so both accept and reject the same names.
_MAX_NAME_WIRE = 255
_MAX_POINTERS = 16

# Bytes dnspython prints as themselves inside a label; every other byte is escaped.
_SPECIAL = b'"().;\\@$'
_PLAIN = bytes(c for c in range(0x21, 0x7F) if c not in _SPECIAL)
# Text of each byte inside a label, already lowercased (escapes contain only digits).
_LABEL_TEXT = tuple(
    chr(c).lower()
    if c in _PLAIN
    else "\\" + chr(c)
    if c in _SPECIAL
    else f"\\{c:03d}"
    for c in range(256)
)


class MalformedPacket(ValueError):
    """The bytes are not a packet/message we can trust; str() is a one-line reason."""


class _Short(MalformedPacket):
    """Ran off the end of the message; tolerated after the question when TC is set."""


@dataclass(slots=True, frozen=True)
class Question:
    name: str  # lowercase, no trailing dot, root is ""; escaped like dnspython's to_text()
    qtype: int
    qclass: int


@dataclass(slots=True)
class Message:
    id: int
    is_response: bool
    opcode: int
    rcode: int  # including the EDNS extended bits, as dnspython's Message.rcode()
    truncated: bool
    question: Question | None  # the first question; None when qdcount == 0
    qdcount: int
    # (owner, rrtype, ttl, value) for class-IN A/AAAA (ip address) and CNAME (target name).
    answers: list[tuple[str, int, int, object]]


# ---------------------------------------------------------------------------------------------
# Names


def _read_name(buf: bytes, pos: int, end: int) -> tuple[list[bytes], int, int]:
    """Read a possibly compressed name at pos; return (labels, offset just after the name,
    number of pointers followed).

    Mirrors dnspython's rules so both agree on what is valid: a pointer must point strictly
    before the start of the piece of name it occurs in (this alone forbids loops), the target
    must not overlap what was read so far, at most 16 pointers, at most 255 bytes on the wire.
    """
    labels: list[bytes] = []
    wire_len = 1  # the terminating root label
    piece_start = pos
    limit = end
    after = -1  # where the caller resumes: just after the first pointer, if any
    pointers = 0
    while True:
        if pos >= limit:
            raise _short_or_bad(limit, len(buf), "name runs past its end")
        n = buf[pos]
        if n == 0:
            pos += 1
            break
        if n < 64:
            pos += 1
            stop = pos + n
            if stop > limit:
                raise _short_or_bad(limit, len(buf), "label runs past its end")
            labels.append(buf[pos:stop])
            wire_len += n + 1
            if wire_len > _MAX_NAME_WIRE:
                raise MalformedPacket("name longer than 255 bytes")
            pos = stop
        elif n >= 0xC0:
            if pos + 1 >= limit:
                raise _short_or_bad(limit, len(buf), "compression pointer cut off")
            target = ((n & 0x3F) << 8) | buf[pos + 1]
            if target >= piece_start:
                raise MalformedPacket("compression pointer does not point backwards")
            pointers += 1
            if pointers > _MAX_POINTERS:
                raise MalformedPacket("compression pointer chain too long")
            if after < 0:
                after = pos + 2
            # The target must end before the piece that points to it begins.
            limit = piece_start
            pos = piece_start = target
        else:
            raise MalformedPacket(f"bad label type 0x{n:02x}")
    return labels, (pos if after < 0 else after), pointers


def _name_at(buf: bytes, pos: int, end: int, memo: dict) -> tuple[str, int]:
    """Like _read_name but returns the text, and remembers it (memo: one dict per message).

    Most owner names are a bare pointer to a name decoded earlier in the same message; those
    are answered from memo when following the pointer would be valid: the target lies before
    this name, its first piece ends before this name (the non-overlap rule), and one more
    pointer stays within the limit.
    """
    if pos + 1 < end and buf[pos] >= 0xC0:
        target = ((buf[pos] & 0x3F) << 8) | buf[pos + 1]
        hit = memo.get(target)
        if hit is not None and hit[1] <= pos and hit[2] < _MAX_POINTERS:
            return hit[0], pos + 2
    labels, after, pointers = _read_name(buf, pos, end)
    text = _name_text(labels)
    memo[pos] = (text, after, pointers)
    return text, after


def _short_or_bad(limit: int, buflen: int, reason: str) -> MalformedPacket:
    # Running into the end of the data may be truncation; running into any other limit
    # (end of rdata, start of a pointer's piece) is an inconsistency.
    return _Short(reason) if limit == buflen else MalformedPacket(reason)


def _name_text(labels: list[bytes]) -> str:
    """Text as dnspython's to_text(omit_final_dot=True).lower(); the root is ""."""
    # Fast path: nothing needs escaping, which is every real hostname.
    if not b"".join(labels).translate(None, _PLAIN):
        return b".".join(labels).lower().decode("ascii")
    return ".".join("".join(map(_LABEL_TEXT.__getitem__, label)) for label in labels)


# ---------------------------------------------------------------------------------------------
# Messages


def parse_message(data: bytes | bytearray | memoryview) -> Message:
    """Parse one DNS message (a UDP payload, or a TCP message without its length prefix).

    Walks every section so a message is accepted only if it is well formed throughout (as
    dnspython would), except that a message with TC set may end early after the question: it is
    returned with the records that were complete. Raises MalformedPacket, never anything else,
    for any bytes-like input.
    """
    buf = data if isinstance(data, bytes) else bytes(data)
    end = len(buf)
    if end < 12:
        raise MalformedPacket("shorter than a DNS header")
    msg_id, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(buf, 0)
    truncated = bool(flags & 0x0200)
    memo: dict[int, tuple[str, int, int]] = {}
    question, pos = _read_questions(buf, 12, end, qdcount, memo)
    msg = Message(
        msg_id,
        bool(flags & 0x8000),
        (flags >> 11) & 0xF,
        flags & 0xF,
        truncated,
        question,
        qdcount,
        [],
    )
    try:
        pos = _read_answers(buf, pos, end, ancount, msg.answers, memo)
        pos = _skip_records(buf, pos, end, nscount, None)
        pos = _skip_records(buf, pos, end, arcount, msg)
    except _Short:
        if not truncated:
            raise
        return msg
    if pos != end:
        raise MalformedPacket(f"{end - pos} bytes of trailing junk")
    return msg


def parse_query(data: bytes | bytearray | memoryview) -> tuple[int, Question] | None:
    """The (id, question) of a query, reading only the header and the first question: bounded
    work whatever follows (a 60 KB crafted query costs what a 40-byte one does). None for a
    response, or a query that does not ask exactly one question (no answer to it would be
    credited anyway). Raises MalformedPacket when the header or question does not parse."""
    buf = data if isinstance(data, bytes) else bytes(data[:12 + 260])
    if len(buf) < 12:
        raise MalformedPacket("shorter than a DNS header")
    msg_id, flags, qdcount = _HEADER.unpack_from(buf, 0)[:3]
    if flags & 0x8000 or qdcount != 1:
        return None
    name, pos = _name_at(buf, 12, len(buf), {})
    if pos + 4 > len(buf):
        raise MalformedPacket("question cut off")
    qtype, qclass = _QTAIL.unpack_from(buf, pos)
    return msg_id, Question(name, qtype, qclass)


def _read_questions(
    buf: bytes, pos: int, end: int, count: int, memo: dict
) -> tuple[Question | None, int]:
    first = None
    for i in range(count):
        name, pos = _name_at(buf, pos, end, memo)
        if pos + 4 > end:
            raise MalformedPacket("question cut off")
        if i == 0:
            qtype, qclass = _QTAIL.unpack_from(buf, pos)
            first = Question(name, qtype, qclass)
        pos += 4
    return first, pos


def _rr_fixed(buf: bytes, pos: int, end: int) -> tuple[int, int, int, int, int]:
    """Read the fields after a record's owner; return (type, class, ttl, rdata start, rdata
    end) after checking the rdata lies within the message."""
    if pos + 10 > end:
        raise _Short("record header cut off")
    rtype, rclass, ttl, rdlen = _RRTAIL.unpack_from(buf, pos)
    pos += 10
    if pos + rdlen > end:
        raise _Short("rdata runs past the end")
    return rtype, rclass, ttl, pos, pos + rdlen


def _read_answers(buf: bytes, pos: int, end: int, count: int, out: list, memo: dict) -> int:
    for _ in range(count):
        owner, pos = _name_at(buf, pos, end, memo)
        rtype, rclass, ttl, rd, pos = _rr_fixed(buf, pos, end)
        if rtype == TYPE_OPT:
            raise MalformedPacket("OPT record outside the additional section")
        if rclass != CLASS_IN:
            continue  # CH/HS records say nothing about where hosts live
        if rtype == TYPE_A:
            if pos - rd != 4:
                raise MalformedPacket(f"A record with rdlength {pos - rd}")
            value: object = ipaddress.IPv4Address(buf[rd:pos])
        elif rtype == TYPE_AAAA:
            if pos - rd != 16:
                raise MalformedPacket(f"AAAA record with rdlength {pos - rd}")
            value = ipaddress.IPv6Address(buf[rd:pos])
        elif rtype == TYPE_CNAME:
            value, after = _name_at(buf, rd, pos, memo)
            if after != pos:
                raise MalformedPacket("CNAME rdata longer than its name")
        else:
            continue
        # RFC 2181 section 8: a TTL with the top bit set means zero (dnspython agrees).
        out.append((owner, rtype, ttl if ttl <= 0x7FFFFFFF else 0, value))
    return pos


def _skip_records(buf: bytes, pos: int, end: int, count: int, additional: Message | None) -> int:
    """Walk authority (additional=None) or additional records, checking bounds only, except
    the EDNS OPT record whose TTL field carries the upper bits of the rcode."""
    seen_opt = False
    for _ in range(count):
        owner, pos, _pointers = _read_name(buf, pos, end)
        rtype, _cls, ttl, _rd, pos = _rr_fixed(buf, pos, end)
        if rtype != TYPE_OPT:
            continue
        if additional is None:
            raise MalformedPacket("OPT record outside the additional section")
        if seen_opt or owner:
            raise MalformedPacket("second OPT record or OPT not owned by the root")
        seen_opt = True
        additional.rcode |= (ttl >> 20) & 0xFF0
    return pos


def resolve_chain(msg: Message) -> tuple[list[str], list[tuple[IPAddress, int]]]:
    """Follow CNAMEs within the answer section from the question name.

    Returns (chain, addresses): the names in order, question name first, and (ip, ttl) of every
    A/AAAA record owned by a name in the chain, whatever the qtype (the caller decides). Records
    owned by names outside the chain are ignored: a server may not vouch for unrelated names.
    Owner comparison is case-insensitive. At most 16 hops; a loop just ends the chain. If an
    owner has several CNAMEs (invalid), the first one wins.
    """
    if msg.question is None:
        return [], []
    cnames: dict[str, str] = {}
    for owner, rtype, _ttl, value in msg.answers:
        if rtype == TYPE_CNAME:
            cnames.setdefault(owner.lower(), str(value).lower())
    chain = [msg.question.name.lower()]
    seen = set(chain)
    for _ in range(16):
        target = cnames.get(chain[-1])
        if target is None or target in seen:
            break
        chain.append(target)
        seen.add(target)
    addresses = [
        (value, ttl)
        for owner, rtype, ttl, value in msg.answers
        if (rtype == TYPE_A or rtype == TYPE_AAAA) and owner.lower() in seen
    ]
    return chain, addresses  # type: ignore[return-value]
