"""The ClientHello parser: real hellos (from this Python's OpenSSL), hand-built ones for every
branch, every split of the stream, and hostile bytes: always a verdict, never an exception."""

import random
import ssl
import struct

import pytest

from ramfw.tls.clienthello import EXT_ECH, MAX_HELLO, parse


def real_hello(name: str | None = "reg.example.test") -> bytes:
    ctx = ssl.create_default_context()
    if name is None:
        ctx.check_hostname = False
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def ext(ext_type: int, data: bytes) -> bytes:
    return struct.pack("!HH", ext_type, len(data)) + data


def sni_ext(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(struct.pack("!BH", name_type, len(n)) + n for n in names)
    return ext(0, struct.pack("!H", len(entries)) + entries)


def hello(*exts: bytes, body_tail: bytes | None = None, session: bytes = b"", suites: bytes = b"\x13\x01") -> bytes:
    """A ClientHello handshake message (type, u24 length, body)."""
    body = b"\x03\x03" + bytes(32) + bytes([len(session)]) + session
    body += struct.pack("!H", len(suites)) + suites + b"\x01\x00"
    if body_tail is not None:
        body += body_tail
    else:
        all_exts = b"".join(exts)
        body += struct.pack("!H", len(all_exts)) + all_exts
    return b"\x01" + len(body).to_bytes(3, "big") + body


def records(handshake: bytes, size: int = 16384) -> bytes:
    out = b""
    for i in range(0, len(handshake), size):
        frag = handshake[i:i + size]
        out += b"\x16\x03\x01" + struct.pack("!H", len(frag)) + frag
    return out


def test_a_real_hello_names_its_server():
    h = parse(real_hello("reg.example.test"))
    assert h.status == "complete" and h.sni == "reg.example.test" and not h.ech


def test_a_real_hello_without_a_name_is_complete_without_sni():
    h = parse(real_hello(None))
    assert h.status == "complete" and h.sni is None


def test_every_split_of_a_real_hello_is_incomplete_until_the_last_byte():
    data = real_hello("registry-1.docker.io")
    for cut in range(len(data)):
        assert parse(data[:cut]).status == "incomplete", cut
    assert parse(data).sni == "registry-1.docker.io"


def test_a_hello_over_several_records_and_any_record_size():
    hs = hello(sni_ext(b"a.example.test"), ext(0x1234, bytes(3000)))
    for size in (1, 7, 100, 1000, 2999):
        data = records(hs, size)
        assert parse(data).sni == "a.example.test", size
        for cut in range(0, len(data), 97):
            assert parse(data[:cut]).status == "incomplete", (size, cut)


def test_bytes_after_the_hello_do_not_matter():
    data = records(hello(sni_ext(b"a.example.test"))) + b"\x17\x03\x03\x00\x05hello"
    assert parse(data).sni == "a.example.test"


def test_ech_and_the_draft_esni_are_flagged():
    for ext_type in (EXT_ECH, 0xFFCE):
        h = parse(records(hello(sni_ext(b"public.example.test"), ext(ext_type, b"\x00\x01\x02"))))
        assert h.status == "complete" and h.ech and h.sni == "public.example.test"


def test_grease_and_unknown_extensions_are_ignored():
    exts = [ext(0x0A0A, b""), sni_ext(b"Reg.Example.Test"), ext(0xFAFA, b"\x00"), ext(0x002B, b"\x02\x03\x04")]
    h = parse(records(hello(*exts)))
    assert h.sni == "reg.example.test"  # lower-cased


def test_no_extensions_at_all_is_a_complete_hello_without_a_name():
    h = parse(records(hello(body_tail=b"")))
    assert h.status == "complete" and h.sni is None


@pytest.mark.parametrize("data, why", [
    (b"GET / HTTP/1.1\r\n", "not_tls"),
    (b"\x00", "not_tls"),
    (b"\x16\x02\x00\x00\x10", "not_tls"),
    (b"\x17\x03\x03\x00\x05hello", "not_tls"),
])
def test_not_tls(data, why):
    assert parse(data).status == why


@pytest.mark.parametrize("handshake_or_data, reason", [
    (hello(sni_ext(b"a.test"), sni_ext(b"b.test")), "twice"),
    (hello(sni_ext(b"a.example.test", b"b.example.test")), "more than one host_name"),
    (hello(sni_ext(b"192.0.2.1")), "not a valid DNS host name"),
    (hello(sni_ext(b"bad_name!.test")), "not a valid DNS host name"),
    (hello(sni_ext(b"a" * 64 + b".test")), "not a valid DNS host name"),
    (hello(sni_ext(b"trailing.dot.")), "not a valid DNS host name"),
    (hello(ext(0, b"\x00\x00")), "empty server_name list"),
    (hello(ext(0, b"\x00\x05\x00\x00\x09ab")), "server_name"),
    (hello(session=bytes(33)), "session id"),
    (hello(suites=b"\x13"), "cipher suite"),
    (hello(body_tail=b"\x00\x09\x00"), "extensions block"),
    (hello(body_tail=b"\x00\x00junk"), "bytes after"),
    (b"\x02\x00\x00\x04abcd", "not ClientHello"),
])
def test_malformed_hellos_get_a_clear_verdict(handshake_or_data, reason):
    h = parse(records(handshake_or_data))
    assert h.status == "malformed" and reason in h.reason, h


def test_records_that_break_the_rules():
    hs = hello(sni_ext(b"a.test"))
    assert parse(b"\x16\x03\x01\x00\x00").status == "malformed"  # empty handshake record
    assert parse(b"\x16\x03\x01\x50\x00").status == "malformed"  # longer than TLS allows
    mixed = records(hs[:10]) + b"\x17\x03\x03\x00\x01x" + records(hs[10:])
    assert parse(mixed).status == "malformed"
    too_big = b"\x01" + (MAX_HELLO + 1).to_bytes(3, "big")
    assert parse(records(too_big)).status == "malformed"


def test_hostile_bytes_never_raise():
    rng = random.Random(15)
    base = real_hello("reg.example.test")
    for _ in range(3000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data[:rng.randint(0, len(data))])
        h = parse(data)
        assert h.status in ("incomplete", "complete", "not_tls", "malformed")
        if h.sni is not None:
            assert h.sni == h.sni.lower() and len(h.sni) <= 253
    for _ in range(500):
        h = parse(b"\x16\x03" + bytes(rng.randrange(256) for _ in range(rng.randint(0, 300))))
        assert h.status in ("incomplete", "complete", "not_tls", "malformed")
