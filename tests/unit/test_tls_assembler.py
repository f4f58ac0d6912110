"""Holding a connection's first payload: in order, out of order, retransmitted, and within the
bounds (bytes, time, packets, connections)."""

import ssl

import pytest

from ramfw.tls.assembler import Assembler

KEY = ("203.0.113.2", 40000, "198.51.100.60", 443)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def hello_bytes(name="reg.example.test") -> bytes:
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ssl.create_default_context().wrap_bio(inc, out, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def feed_all(asm, data, seq=1000, size=None, order=None, key=KEY):
    size = size or len(data)
    pieces = [(seq + i, data[i:i + size]) for i in range(0, len(data), size)]
    ready = []
    for n, (s, chunk) in enumerate(order(pieces) if order else pieces):
        ready += asm.feed(key, s, chunk, n)
    return ready


def test_one_segment_is_ready_at_once():
    (r,) = feed_all(Assembler(), hello_bytes())
    assert r.hello.sni == "reg.example.test" and r.held == (0,) and r.bound == ""


def test_held_until_the_last_piece_and_released_together():
    data = hello_bytes()
    asm = Assembler()
    ready = feed_all(asm, data, size=100)
    assert len(ready) == 1 and ready[0].held == tuple(range(-(-len(data) // 100)))
    assert len(asm) == 0


def test_sequence_numbers_wrap():
    (r,) = feed_all(Assembler(), hello_bytes(), seq=2**32 - 50, size=64)
    assert r.hello.sni == "reg.example.test"


def test_out_of_order_and_retransmitted_pieces():
    data = hello_bytes()
    asm = Assembler()
    asm.note_syn(KEY, 999)  # the stream starts at 1000
    pieces = [(1000 + i, data[i:i + 200]) for i in range(0, len(data), 200)]
    order = [pieces[1], pieces[0], pieces[0], pieces[2]] + pieces[3:]
    ready = []
    for n, (s, chunk) in enumerate(order):
        ready += asm.feed(KEY, s, chunk, n)
    assert len(ready) == 1 and ready[0].hello.sni == "reg.example.test"
    assert len(ready[0].held) == len(order)  # every copy gets the verdict


def test_time_bound_decides_on_what_was_sent():
    clock = Clock()
    asm = Assembler(clock=clock)
    assert asm.feed(KEY, 1, hello_bytes()[:50], "p") == []
    assert asm.expire() == []
    clock.now += 2.0
    (r,) = asm.expire()
    assert r.hello.status == "incomplete" and r.bound == "time" and r.held == ("p",)


def test_byte_and_packet_bounds():
    asm = Assembler(max_bytes=100)
    # a handshake record that claims 5000 bytes and never ends
    (r,) = asm.feed(KEY, 1, b"\x16\x03\x01\x13\x88\x01\x00\x13\x84" + bytes(200), "p")
    assert r.bound == "bytes"
    asm = Assembler(max_held=3)
    start = b"\x16\x03\x01\x13\x88\x01\x00\x13\x84"
    assert asm.feed(KEY, 1, start, 0) == [] and asm.feed(KEY, 1 + len(start), b"x", 1) == []
    (r,) = asm.feed(KEY, 1, start, 2)  # a retransmit: no new byte, one more held packet
    assert r.bound == "packets" and r.held == (0, 1, 2)


def test_connection_bound_evicts_the_oldest():
    asm = Assembler(max_flows=2)
    for port in (1, 2):
        assert asm.feed(("a", port, "b", 443), 1, b"\x16\x03", port) == []
    (r,) = asm.feed(("a", 3, "b", 443), 1, b"\x16\x03", 3)
    assert r.key == ("a", 1, "b", 443) and r.bound == "flows"


def test_non_tls_is_ready_on_the_first_byte():
    (r,) = Assembler().feed(KEY, 1, b"GET / HTTP/1.1\r\n", "p")
    assert r.hello.status == "not_tls"


def test_verdicts_are_remembered_for_late_packets():
    clock = Clock()
    asm = Assembler(clock=clock)
    asm.remember(KEY, 7)
    assert asm.decided(KEY) == 7
    clock.now += 31
    assert asm.decided(KEY) is None



def test_inspector_holds_pieces_and_releases_them_with_one_verdict():
    """The sni thread's packet handling without a kernel: SYN, ACK, a hello in three
    segments (the middle one first), then a late retransmit."""
    import struct

    from ramfw.daemon.sni import SniInspector
    from ramfw.plan import SNI_LOOKED, SNI_MASK, SNI_PASS, SNI_REFUSE
    from ramfw.tls.binding import Decision

    def tcp(seq, flags, payload=b""):
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 0, 0, 64, 6, 0, bytes([203, 0, 113, 2]), bytes([198, 51, 100, 60]))
        return ip + struct.pack("!HHIIBBHHH", 40000, 443, seq, 0, 5 << 4, flags, 65535, 0, 0) + payload

    seen = []

    def decide(hello, dst, bound):
        seen.append((hello.sni, dst))
        return Decision("mismatch", hello.sni, "test")

    events = []
    insp = SniInspector(None, 1, decide, lambda: "enforce", events.extend)
    data = hello_bytes("blocked.example.test")
    other_bits = 0x00000042
    insp.on_packet(1, tcp(999, 0x02), other_bits, 3)  # SYN
    insp.on_packet(2, tcp(1000, 0x10), 0, 3)  # the handshake's ACK
    insp.on_packet(3, tcp(1000 + 100, 0x18, data[100:200]), 0, 3)
    insp.on_packet(4, tcp(1000, 0x18, data[:100]), 0, 3)
    out, _ = insp.take()
    assert out == [(1, other_bits | SNI_LOOKED), (2, SNI_LOOKED)]  # nothing of the hello yet
    insp.on_packet(5, tcp(1000 + 200, 0x18, data[200:]), 0, 3)
    out, evs = insp.take()
    assert out == [(3, SNI_REFUSE), (4, SNI_REFUSE), (5, SNI_REFUSE)]
    assert seen == [("blocked.example.test", "198.51.100.60")]
    assert evs[0]["action"] == "sni_mismatch" and evs[0]["sni"] == "blocked.example.test" and evs[0]["refused"]
    insp.on_packet(6, tcp(1000, 0x18, data[:100]), 0, 3)  # queued before the kernel knew
    assert insp.take()[0] == [(6, SNI_REFUSE)]
    assert insp.counters["refused"] == 1 and insp.counters["late"] == 1
    assert SNI_PASS & SNI_MASK and other_bits & SNI_MASK == 0


def test_inspector_lets_a_malformed_packet_go_and_counts_it():
    from ramfw.daemon.sni import SniInspector
    from ramfw.plan import SNI_LOOKED

    insp = SniInspector(None, 1, lambda *a: None, lambda: "enforce", lambda evs: None)
    for pid, junk in enumerate((b"", b"\x45\x00", b"\x60" + bytes(10), bytes(range(60)))):
        insp.on_packet(pid, junk, 0x5, 3)
    out, events = insp.take()
    assert out == [(pid, 0x5 | SNI_LOOKED) for pid in range(4)] and events == []
    assert insp.counters["malformed"] == 4 and insp.counters["connections"] == 0
