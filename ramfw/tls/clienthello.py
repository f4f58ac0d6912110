"""Read the server name out of the first bytes a TLS client sends (its ClientHello). PURE.

`parse(data)` looks at the bytes of a TCP stream from its start and answers with a `Hello`:

    incomplete  more bytes are needed (the caller keeps buffering, within its own bounds)
    complete    the whole ClientHello is here; `sni` is its host_name, or None when it has none
    not_tls     the stream does not start with a TLS handshake record
    malformed   it looks like TLS but breaks the rules (lengths, duplicates, a bad name)

It never raises on input and its work is linear in len(data) with a hard ceiling
(MAX_HELLO bytes of handshake): hostile bytes get a verdict, not an exception.

What is read (RFC 8446 4.1.2, RFC 5246 7.4.1.2, RFC 6066 3):

    TLSPlaintext  u8 type (22 = handshake), u16 legacy_version (0x03xx), u16 length <= 2^14,
                  fragment; a ClientHello may span several records (Go's post-quantum key
                  share makes Docker's larger than one MTU, and record splitting is legal)
    Handshake     u8 msg_type (1 = client_hello), u24 length, body
    ClientHello   u16 legacy_version, 32 random, <0..32> session_id, <2..2^16-2> cipher_suites,
                  <1..2^8-1> compression_methods, <0..2^16-1> extensions
    Extension     u16 type, <0..2^16-1> data; each type at most once
    server_name   (type 0) <1..2^16-1> list of (u8 name_type, <1..2^16-1> name); at most one
                  host_name (name_type 0)

Encrypted Client Hello (type 0xfe0d, and the older draft ESNI 0xffce) is reported in `ech`:
the outer server name is then only the ECH provider's public name, not where the session goes.
GREASE values (RFC 8701: 0x?a?a) are ignored like any unknown extension.
"""

from __future__ import annotations

from dataclasses import dataclass

CONTENT_HANDSHAKE = 22
HANDSHAKE_CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ECH = 0xFE0D
EXT_ESNI_DRAFT = 0xFFCE
NAME_TYPE_HOST = 0
MAX_RECORD = 16384 + 2048  # TLSCiphertext bound; a plaintext record over 2^14 is already wrong
MAX_HELLO = 16384  # handshake bytes we are willing to wait for (real ones: 200 B … ~2 KB)


@dataclass(frozen=True, slots=True)
class Hello:
    status: str  # "incomplete" | "complete" | "not_tls" | "malformed"
    sni: str | None = None
    ech: bool = False
    reason: str = ""  # why not_tls / malformed / incomplete (one short phrase)
    needed: int = 0  # for incomplete: stream bytes needed to make progress (0: unknown)


def _incomplete(reason: str, needed: int = 0) -> Hello:
    return Hello("incomplete", reason=reason, needed=needed)


def _malformed(reason: str) -> Hello:
    return Hello("malformed", reason=reason)


def _handshake_bytes(data: bytes) -> tuple[bytes, Hello | None]:
    """Concatenate the fragments of the leading handshake records. Returns (bytes, None) when
    the bytes so far are consistent, or (b"", verdict) when the stream is not, or not yet, one."""
    out = bytearray()
    pos = 0
    n = len(data)
    want = None  # total handshake bytes needed, once the handshake header is in
    while True:
        if want is not None and len(out) >= want:
            return bytes(out), None
        if pos + 5 > n:
            if pos == 0 and n >= 1 and data[0] != CONTENT_HANDSHAKE:
                return b"", Hello("not_tls", reason=f"first byte {data[0]:#04x} is not a TLS handshake record")
            if pos == 0 and n >= 2 and data[1] != 3:
                return b"", Hello("not_tls", reason="record version is not 3.x")
            return bytes(out), None  # wait for the next record header
        ctype, major, length = data[pos], data[pos + 1], int.from_bytes(data[pos + 3:pos + 5], "big")  # minor version: any
        if ctype != CONTENT_HANDSHAKE:
            if pos == 0:
                return b"", Hello("not_tls", reason=f"first byte {ctype:#04x} is not a TLS handshake record")
            # RFC 8446 5.1: handshake messages must not be interleaved with other record types
            return b"", _malformed("a non-handshake record inside the ClientHello")
        if major != 3:
            return b"", (Hello("not_tls", reason="record version is not 3.x") if pos == 0 else _malformed("record version is not 3.x"))
        if length == 0:
            return b"", _malformed("empty handshake record")  # RFC 8446 5.1 forbids them
        if length > MAX_RECORD:
            return b"", _malformed(f"record length {length} exceeds the TLS limit")
        body = data[pos + 5:pos + 5 + length]
        out += body
        if want is None and len(out) >= 4:
            if out[0] != HANDSHAKE_CLIENT_HELLO:
                return b"", _malformed(f"first handshake message is type {out[0]}, not ClientHello")
            hs_len = int.from_bytes(out[1:4], "big")
            if hs_len > MAX_HELLO:
                return b"", _malformed(f"ClientHello of {hs_len} bytes exceeds the {MAX_HELLO}-byte limit")
            want = 4 + hs_len
        if len(body) < length:
            return bytes(out), None  # this record is still arriving
        pos += 5 + length


class _Reader:
    """Bounds-checked big-endian reads over one buffer; `ok` turns False on the first overrun."""

    __slots__ = ("buf", "pos", "end", "ok")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None):
        self.buf, self.pos = buf, pos
        self.end = len(buf) if end is None else end
        self.ok = True

    def take(self, n: int) -> bytes:
        if not self.ok or self.pos + n > self.end:
            self.ok = False
            return b""
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        raw = self.take(n)
        return int.from_bytes(raw, "big") if self.ok else 0

    def vector(self, len_bytes: int) -> "_Reader":
        length = self.uint(len_bytes)
        start = self.pos
        self.take(length)
        sub = _Reader(self.buf, start, start + length if self.ok else start)
        sub.ok = self.ok
        return sub

    @property
    def left(self) -> int:
        return self.end - self.pos


def parse(data: bytes | bytearray | memoryview) -> Hello:
    """The verdict on the first bytes of a client's TCP stream. Never raises."""
    try:
        return _parse(bytes(data))
    except Exception as exc:  # a bug here must still give a verdict: the caller decides on it
        return _malformed(f"parser error: {type(exc).__name__}")


def _parse(data: bytes) -> Hello:
    if not data:
        return _incomplete("no bytes yet", 1)
    hs, verdict = _handshake_bytes(data)
    if verdict is not None:
        return verdict
    if len(hs) < 4:
        return _incomplete("handshake header not complete")
    hs_len = int.from_bytes(hs[1:4], "big")
    if len(hs) < 4 + hs_len:
        return _incomplete("ClientHello not complete", 4 + hs_len - len(hs))
    return _client_hello(hs[4:4 + hs_len])


def _client_hello(body: bytes) -> Hello:
    r = _Reader(body)
    version = r.uint(2)
    if r.ok and version >> 8 != 3:
        return _malformed("ClientHello version is not 3.x")
    r.take(32)  # random
    session = r.vector(1)
    if session.ok and session.left > 32:
        return _malformed("session id longer than 32 bytes")
    suites = r.vector(2)
    if suites.ok and (suites.left < 2 or suites.left % 2):
        return _malformed("cipher suite list has a bad length")
    compression = r.vector(1)
    if compression.ok and compression.left < 1:
        return _malformed("no compression methods")
    if not r.ok:
        return _malformed("ClientHello cut short")
    if r.left == 0:
        return Hello("complete", None, reason="no extensions")  # TLS 1.0-style hello
    exts = r.vector(2)
    if not exts.ok:
        return _malformed("extensions block cut short")
    if r.left:
        return _malformed("bytes after the extensions block")
    seen: set[int] = set()
    sni: str | None = None
    ech = False
    while exts.left:
        ext_type = exts.uint(2)
        ext = exts.vector(2)
        if not exts.ok:
            return _malformed("extension cut short")
        if ext_type in seen:
            return _malformed(f"extension {ext_type:#06x} appears twice")
        seen.add(ext_type)
        if ext_type in (EXT_ECH, EXT_ESNI_DRAFT):
            ech = True
        elif ext_type == EXT_SERVER_NAME:
            found = _server_name(ext)
            if isinstance(found, Hello):
                return found
            sni = found
    reason = "" if sni else "no server_name extension"
    return Hello("complete", sni, ech, reason=reason)


def _server_name(ext: _Reader) -> str | Hello | None:
    names = ext.vector(2)
    if not names.ok or ext.left:
        return _malformed("server_name extension has a bad length")
    if names.left == 0:
        return _malformed("empty server_name list")
    host = None
    while names.left:
        name_type = names.uint(1)
        name = names.vector(2)
        if not names.ok:
            return _malformed("server_name entry cut short")
        raw = name.take(name.left)
        if name_type != NAME_TYPE_HOST:
            continue  # unknown name types are skipped (RFC 6066 leaves room for them)
        if host is not None:
            return _malformed("more than one host_name")  # RFC 6066 3
        host = _host_name(raw)
        if host is None:
            return _malformed("server name is not a valid DNS host name")
    return host


_LDH = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_")


def _host_name(raw: bytes) -> str | None:
    """A host name as DNS carries it, lower-cased; None when it is not one (RFC 6066: ASCII,
    no trailing dot; IP literals are not allowed either)."""
    if not 1 <= len(raw) <= 253:
        return None
    name = raw.lower()
    labels = name.split(b".")
    for label in labels:
        if not 1 <= len(label) <= 63 or not all(c in _LDH for c in label):
            return None
        if label[0] == 0x2D or label[-1] == 0x2D:  # '-'
            return None
    if all(c in b"0123456789" for c in labels[-1]):
        return None  # an IPv4 literal (or a numeric TLD, which does not exist)
    return name.decode("ascii")
