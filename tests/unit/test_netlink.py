"""The netlink core (ramfw.kernel.netlink) without root: framing and decoding, and the socket's
request/ack, dump, batch, error and timeout handling against a fake kernel, the other end of a
socketpair(AF_UNIX, SOCK_DGRAM) speaking netlink framing. The same socket talks to the real
kernel in tests/netns (test_nfnetlink.py, the backends' tests)."""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ramfw.backends.iptables.ipset import (
    A_ADT,
    A_DATA,
    D_ELEMENTS,
    D_IP,
    D_REFERENCES,
    D_TIMEOUT,
    IpsetError,
    IpsetSocket,
    _IpsetNetlink,
)
from ramfw.kernel.netlink import (
    NFNL_MSG_BATCH_BEGIN,
    NFNL_MSG_BATCH_END,
    NLA_F_NESTED,
    NLA_F_NET_BYTEORDER,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NetlinkError,
    NetlinkSocket,
    attr_be32,
    attr_str,
    attr_table,
    iter_nlattrs,
    iter_nlmsgs,
    nfnl_msg_pack,
    nla_be32,
    nla_nested,
    nla_pack,
    nla_str,
)
from ramfw.kernel.nflog import NFNL_SUBSYS_ULOG, NFULA_PACKET_HDR, NFULA_PAYLOAD, NFULA_PREFIX, NFULA_UID, parse_log_packet
from ramfw.kernel.nfqueue import (
    NFNL_SUBSYS_QUEUE,
    NFQA_PACKET_HDR,
    NFQA_PAYLOAD,
    NFQNL_MSG_PACKET,
    parse_queue_packet,
)

QUEUE, GROUP = 7, 5
SUBSYS = 10  # nf_tables, for the requests below (any subsystem frames the same)
_HDR = struct.Struct("=IHHII")


# --- the fake kernel ------------------------------------------------------------------------


def nlmsg(msg_type: int, seq: int, payload: bytes = b"", flags: int = 0) -> bytes:
    length = _HDR.size + len(payload)
    return _HDR.pack(length, msg_type, flags, seq, 0) + payload + b"\0" * ((-length) % 4)


def ack(seq: int, err: int = 0) -> bytes:
    """NLMSG_ERROR: the negative errno (0: acknowledgement), then the request's header."""
    return nlmsg(NLMSG_ERROR, seq, struct.pack("=i", -err) + _HDR.pack(16, 0, 0, seq, 0))


def reply(seq: int, attrs: bytes, msg_type: int = (SUBSYS << 8) | 1) -> bytes:
    return nlmsg(msg_type, seq, struct.pack("!BBH", 1, 0, 0) + attrs)


def done(seq: int, err: int = 0) -> bytes:
    return nlmsg(NLMSG_DONE, seq, struct.pack("=i", -err))


class FakeKernel:
    """The kernel's end: reads what the socket sent, answers what the test says."""

    def __init__(self, peer: socket.socket):
        self.peer = peer
        self.peer.settimeout(2)

    def read(self) -> list[tuple[int, int, int, bytes]]:
        """(type, flags, seq, payload) of each message in the next datagram sent to us."""
        data = self.peer.recv(1 << 16)
        return [(t, f, q, data[s:e]) for t, f, q, s, e in iter_nlmsgs(data, len(data))]

    def send(self, *datagrams: bytes) -> None:
        for d in datagrams:
            self.peer.send(d)


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    sockets = []

    def make(cls=NetlinkSocket, **kw):
        kw.setdefault("timeout", 0.2)
        s = cls(sock=a, **kw)
        sockets.append(s)
        return s, FakeKernel(b)

    yield make
    for s in sockets:
        s.close()
    a.close()
    b.close()


def ask(sock: NetlinkSocket, kernel: FakeKernel, answer, **kw):
    """Send a request, let the fake kernel answer (answer(seq) -> datagrams), return the result."""
    # The request is sent before the socket waits, so the answer can be queued in between by
    # answering from a wrapper around send().
    real_send = sock.send

    def send_then_answer(data, action):
        real_send(data, action)
        [(_t, _f, seq, _p)] = kernel.read()[:1]
        kernel.send(*answer(seq))

    sock.send = send_then_answer
    try:
        return sock.request(SUBSYS, 1, socket.AF_INET, nla_str(1, "ramfw"), "read", **kw)
    finally:
        del sock.send


# --- request / ack / dump / errors / timeout ------------------------------------------------


def test_request_returns_the_reply_and_waits_for_the_ack(pair):
    sock, kernel = pair()
    got = ask(sock, kernel, lambda seq: [reply(seq, nla_str(1, "t1")) + ack(seq)])
    assert [attr_str(r, attr_table(r), 1) for r in got] == ["t1"]


def test_request_framing_asks_for_an_ack_and_a_dump_does_not(pair):
    sock, kernel = pair()
    sock.send(b"", "x")  # the socketpair is sane
    kernel.read()
    sent = []
    real_send = sock.send

    def capture(data, action):
        real_send(data, action)
        sent.extend(kernel.read())
        t, f, seq, _ = sent[-1]
        kernel.send(ack(seq) if not f & NLM_F_DUMP == NLM_F_DUMP else done(seq))

    sock.send = capture
    sock.request(SUBSYS, 4, socket.AF_INET6, b"", "ack")
    sock.request(SUBSYS, 4, socket.AF_INET6, b"", "dump", dump=True)
    (t1, f1, q1, p1), (t2, f2, q2, _p2) = sent
    assert t1 == (SUBSYS << 8) | 4 and f1 == NLM_F_REQUEST | NLM_F_ACK
    assert f2 == NLM_F_REQUEST | NLM_F_DUMP and q2 == q1 + 1
    assert p1[:4] == struct.pack("!BBH", socket.AF_INET6, 0, 0)  # nfgenmsg


def test_reply_and_ack_in_separate_datagrams_and_stale_answers_ignored(pair):
    sock, kernel = pair()
    got = ask(sock, kernel, lambda seq: [ack(seq - 1, errno.EPERM),  # a late answer to an earlier request
                                         reply(seq - 1, nla_str(1, "old")),
                                         reply(seq, nla_str(1, "new")),
                                         ack(seq)])
    assert [attr_str(r, attr_table(r), 1) for r in got] == ["new"]
    assert sock.errors == 1 and sock.last_error == errno.EPERM  # seen, counted, not raised


def test_dump_collects_every_datagram_until_done(pair):
    sock, kernel = pair()
    got = ask(sock, kernel, lambda seq: [reply(seq, nla_be32(2, i)) + reply(seq, nla_be32(2, i + 100)) for i in range(5)]
              + [done(seq)], dump=True)
    assert sorted(attr_be32(r, attr_table(r), 2) for r in got) == sorted(list(range(5)) + list(range(100, 105)))


def test_an_error_is_one_line_naming_the_socket_and_the_operation(pair):
    sock, kernel = pair(what="nf_tables")
    with pytest.raises(NetlinkError) as info:
        ask(sock, kernel, lambda seq: [ack(seq, errno.ENOENT)])
    assert info.value.errno == errno.ENOENT
    assert str(info.value) == "nf_tables: read failed: No such file or directory"


def test_a_dump_that_ends_in_error_raises(pair):
    sock, kernel = pair()
    with pytest.raises(NetlinkError) as info:
        ask(sock, kernel, lambda seq: [reply(seq, b""), done(seq, errno.EINTR)], dump=True)
    assert info.value.errno == errno.EINTR


def test_an_error_too_short_to_carry_an_errno_is_a_protocol_error(pair):
    sock, kernel = pair()
    with pytest.raises(NetlinkError) as info:
        ask(sock, kernel, lambda seq: [nlmsg(NLMSG_ERROR, seq, b"\x01")])
    assert info.value.errno == errno.EPROTO


def test_silence_is_a_timeout_naming_the_operation(pair):
    sock, kernel = pair(what="ipset", timeout=0.05)
    with pytest.raises(NetlinkError) as info:
        sock.request(6, 12, socket.AF_INET, b"", "header ramfw-allow4")
    assert info.value.errno == errno.ETIMEDOUT
    assert str(info.value) == "ipset: header ramfw-allow4: no answer from the kernel in 0.05 s"
    kernel.read()  # the request did go out
    # a request after a timeout ignores the late answer to the one that timed out
    got = ask(sock, kernel, lambda seq: [ack(seq - 1, errno.EPERM), reply(seq, b""), ack(seq)])
    assert got == [b""]


def test_garbage_around_the_answer_is_ignored(pair):
    sock, kernel = pair()
    got = ask(sock, kernel, lambda seq: [b"\xff" * 3, _HDR.pack(9999, 1, 0, seq, 0), reply(seq, b"") + ack(seq)])
    assert got == [b""]


def test_an_answer_larger_than_the_buffer_fails_at_once(pair):
    sock, kernel = pair(bufsize=256)
    with pytest.raises(NetlinkError, match="does not fit") as info:
        ask(sock, kernel, lambda seq: [reply(seq, nla_pack(1, b"x" * 400)) + ack(seq)])
    assert info.value.errno == errno.EMSGSIZE and sock.truncated == 1


def test_send_failure_is_a_netlink_error(pair):
    sock, kernel = pair()
    kernel.peer.close()
    with pytest.raises(NetlinkError, match="read: netlink send failed"):
        sock.request(SUBSYS, 1, 0, b"", "read")


# --- batches ----------------------------------------------------------------------------------


def test_transaction_frames_a_batch_and_waits_for_every_ack(pair):
    sock, kernel = pair()
    real_send = sock.send
    seen = []

    def answer(data, action):
        real_send(data, action)
        msgs = kernel.read()
        seen.extend(msgs)
        kernel.send(*(ack(seq) for _t, _f, seq, _p in msgs[1:-1]))

    sock.send = answer
    sock.transaction(SUBSYS, socket.AF_INET, [(12, 0x400, nla_str(1, "a")), (14, 0, nla_str(1, "b"))], "element change")
    begin, first, second, end = seen
    assert begin[0] == NFNL_MSG_BATCH_BEGIN and end[0] == NFNL_MSG_BATCH_END
    assert begin[3][2:4] == struct.pack("!H", SUBSYS)  # res_id names the subsystem
    assert first[0] == (SUBSYS << 8) | 12 and first[1] == NLM_F_REQUEST | NLM_F_ACK | 0x400
    assert second[1] == NLM_F_REQUEST | NLM_F_ACK
    assert [m[2] for m in seen] == list(range(seen[0][2], seen[0][2] + 4))


def test_transaction_raises_the_first_error_without_waiting_for_the_rest(pair):
    sock, kernel = pair(timeout=5)
    real_send = sock.send

    def refuse(data, action):
        real_send(data, action)
        msgs = kernel.read()
        kernel.send(ack(msgs[1][2], errno.ENOENT))  # the kernel aborts: no answer to the second

    sock.send = refuse
    with pytest.raises(NetlinkError) as info:
        sock.transaction(SUBSYS, socket.AF_INET, [(12, 0, b""), (12, 0, b"")], "element change")
    assert info.value.errno == errno.ENOENT


# --- subscriptions: messages nobody asked for ------------------------------------------------


class Packets(NetlinkSocket):
    message_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET

    def decode(self, buf, start, end):
        return parse_queue_packet(buf, start, end)


def queued(packet_id: int) -> bytes:
    return nfnl_msg_pack(NFNL_SUBSYS_QUEUE, NFQNL_MSG_PACKET, socket.AF_INET, QUEUE,
                         nla_pack(NFQA_PACKET_HDR, struct.pack("!IHB", packet_id, 0x800, 3)))


def test_packets_arriving_during_a_request_are_kept_for_receive(pair):
    sock, kernel = pair(cls=Packets, lossy=True)
    ask(sock, kernel, lambda seq: [queued(1), queued(2) + ack(seq)])
    kernel.send(queued(3) + queued(4))
    assert [p.packet_id for p in sock.receive(timeout=0, max_msgs=3)] == [1, 2, 3]
    assert [p.packet_id for p in sock.receive(timeout=0)] == [4]
    assert sock.receive(timeout=0) == []


def test_receive_counts_malformed_packets_and_async_errors(pair):
    sock, kernel = pair(cls=Packets, lossy=True)
    kernel.send(nfnl_msg_pack(NFNL_SUBSYS_QUEUE, NFQNL_MSG_PACKET, 0, QUEUE, nla_pack(NFQA_PAYLOAD, b"x"))
                + ack(0, errno.ENOENT) + queued(9))
    assert [p.packet_id for p in sock.receive(timeout=1)] == [9]
    assert (sock.malformed, sock.errors, sock.last_error) == (1, 1, errno.ENOENT)


def test_a_lossy_socket_counts_what_does_not_fit(pair):
    sock, kernel = pair(cls=Packets, lossy=True, bufsize=64)
    kernel.send(queued(1) + nla_pack(0, b"x" * 100), queued(2))
    assert [p.packet_id for p in sock.receive(timeout=1)] == [2]
    assert sock.truncated == 1


def test_close_releases_then_closes_and_receive_after_close_is_an_error(pair):
    released = []

    class Releasing(NetlinkSocket):
        def _release(self):
            released.append(True)
            raise NetlinkError("unbind failed")  # closing goes on anyway

    sock, _kernel = pair(cls=Releasing)
    sock.close()
    sock.close()
    assert released == [True]
    with pytest.raises(NetlinkError, match="closed"):
        sock.receive(timeout=0)


# --- ipset over the core ------------------------------------------------------------------------


def test_ipset_refusal_is_worded_by_ipset_and_list_decodes_header_and_elements(pair):
    sock, kernel = pair(cls=_IpsetNetlink)
    ipset = IpsetSocket.__new__(IpsetSocket)
    ipset.sock, ipset._proto, ipset._revision = sock, b"", {}

    real_send = sock.send

    def answer_with(*datagrams):
        def send(data, action):
            real_send(data, action)
            seq = kernel.read()[0][2]
            kernel.send(*(d(seq) for d in datagrams))

        sock.send = send

    answer_with(lambda seq: ack(seq, 4108))
    with pytest.raises(IpsetError, match="^ipset refused destroy ramfw-allow4: set is referenced by a rule$") as info:
        ipset.destroy("ramfw-allow4")
    assert info.value.code == 4108

    be = NLA_F_NET_BYTEORDER
    header = nla_nested(A_DATA, nla_pack(D_REFERENCES | be, struct.pack("!I", 2)) + nla_pack(D_ELEMENTS | be, struct.pack("!I", 3)))

    def elem(addr: bytes, timeout: int | None) -> bytes:
        inner = nla_nested(D_IP, nla_pack((1 if len(addr) == 4 else 2) | be, addr))
        if timeout is not None:
            inner += nla_pack(D_TIMEOUT | be, struct.pack("!I", timeout))
        return nla_nested(A_DATA, inner)

    elements = nla_nested(A_ADT, elem(socket.inet_pton(socket.AF_INET, "198.51.100.7"), 30)
                          + elem(socket.inet_pton(socket.AF_INET6, "2001:db8:100::7"), None)
                          + elem(b"\x01\x02\x03", 5))  # an address of no family: skipped
    answer_with(lambda seq: reply(seq, header), lambda seq: reply(seq, elements) + done(seq))
    assert ipset.list("ramfw-allow4") == ({"references": 2, "elements": 3},
                                          {"198.51.100.7": 30, "2001:db8:100::7": 0})
    answer_with(lambda seq: reply(seq, header) + done(seq))
    assert ipset.count("ramfw-allow4") == 3


# --- decoding (moved from the root tier) --------------------------------------------------------


def _queue_msg(attrs: bytes, res_id: int = QUEUE) -> bytes:
    return nfnl_msg_pack(NFNL_SUBSYS_QUEUE, NFQNL_MSG_PACKET, socket.AF_INET, res_id, attrs)


def _payload_span(msg: bytes):
    [(msg_type, _flags, _seq, s, e)] = list(iter_nlmsgs(msg, len(msg)))
    assert msg_type == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET or msg_type >> 8 == NFNL_SUBSYS_ULOG
    return s, e
def test_parse_queue_packet_masks_flags_and_skips_unknown_attrs():
    attrs = (nla_pack(999, b"\x01\x02\x03")  # unknown, odd length (padding)
             + nla_pack(NFQA_PACKET_HDR | NLA_F_NET_BYTEORDER, struct.pack("!IHB", 0x01020304, 0x86DD, 3))
             + nla_pack(NLA_F_NESTED | 77, nla_pack(1, b"abcd"))
             + nla_pack(NFQA_PAYLOAD, b"\x60" + b"p" * 40))
    msg = _queue_msg(attrs)
    s, e = _payload_span(msg)
    pkt = parse_queue_packet(msg, s, e)
    assert (pkt.packet_id, pkt.hw_protocol, pkt.hook) == (0x01020304, 0x86DD, 3)
    assert pkt.payload == b"\x60" + b"p" * 40


def test_parse_queue_packet_without_header_or_truncated_is_none():
    msg = _queue_msg(nla_pack(NFQA_PAYLOAD, b"x"))
    assert parse_queue_packet(msg, *_payload_span(msg)) is None
    msg = _queue_msg(nla_pack(NFQA_PACKET_HDR, b"\x00\x00\x00"))  # header too short
    assert parse_queue_packet(msg, *_payload_span(msg)) is None
    assert parse_queue_packet(b"\x00\x00", 0, 2) is None


def test_several_messages_per_datagram_and_truncated_tail():
    one = _queue_msg(nla_pack(NFQA_PACKET_HDR, struct.pack("!IHB", 1, 0x800, 3)))
    two = _queue_msg(nla_pack(NFQA_PACKET_HDR, struct.pack("!IHB", 2, 0x800, 3)))
    datagram = one + two + two[:10]
    ids = [parse_queue_packet(datagram, s, e).packet_id for _t, _f, _q, s, e in iter_nlmsgs(datagram, len(datagram))]
    assert ids == [1, 2]


def test_parse_log_packet():
    attrs = (nla_pack(NFULA_PACKET_HDR, struct.pack("!HBx", 0x800, 3))
             + nla_pack(NFULA_PREFIX, b"ramfw-test\0")
             + nla_pack(NFULA_UID, struct.pack("!I", 1000))
             + nla_pack(NFULA_PAYLOAD, b"E" + b"\0" * 27))
    msg = nfnl_msg_pack(NFNL_SUBSYS_ULOG, 0, socket.AF_INET, GROUP, attrs)
    pkt = parse_log_packet(msg, *_payload_span(msg))
    assert (pkt.prefix, pkt.hw_protocol, pkt.hook, pkt.uid, pkt.gid, pkt.timestamp) == \
        ("ramfw-test", 0x800, 3, 1000, None, None)
    assert parse_log_packet(msg, *_payload_span(msg), with_uid=False).uid is None


def test_attribute_length_overrunning_the_message_stops_the_walk():
    bad = struct.pack("=HH", 200, NFQA_PAYLOAD) + b"xx"
    assert list(iter_nlattrs(bad, 0, len(bad))) == []
    zero = struct.pack("=HH", 0, 1) + b"\0" * 8
    assert list(iter_nlattrs(zero, 0, len(zero))) == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parsers_never_raise_on_garbage(data):
    for _t, _f, _q, s, e in iter_nlmsgs(data, len(data)):
        parse_queue_packet(data, s, e)
        parse_log_packet(data, s, e)
    parse_queue_packet(data, 0, len(data))
    parse_log_packet(data, 0, len(data))
    # garbage inside a well-formed envelope
    msg = _queue_msg(data)
    parse_queue_packet(msg, *_payload_span(msg))



# --- conntrack over the core ------------------------------------------------------------------


def test_conntrack_dump_reads_every_reply_and_skips_what_it_cannot_name(pair):
    from ramfw.kernel.conntrack import CTA_ID, CTA_TUPLE_ORIG, CTA_ZONE, _dump, delete_attrs

    sock, kernel = pair(timeout=1)

    def entry(dst: bytes, attr: int, extra: bytes = b"") -> bytes:
        tuple_ip = nla_nested(1, nla_pack(attr - 1, bytes(len(dst))) + nla_pack(attr, dst))
        proto = nla_nested(2, nla_pack(1, b"\x06") + nla_pack(3, struct.pack("!H", 443)))
        return nla_nested(CTA_TUPLE_ORIG, tuple_ip + proto) + extra

    v4 = entry(socket.inet_pton(socket.AF_INET, "198.51.100.10"), 2, nla_be32(CTA_ID, 77) + nla_pack(CTA_ZONE, b"\0\x05"))
    v6 = entry(socket.inet_pton(socket.AF_INET6, "2001:db8:100::10"), 4)
    odd = entry(b"\x01\x02\x03", 2)  # an address of no family: skipped
    real_send = sock.send

    def send(data, action):
        real_send(data, action)
        [(t, f, seq, _p)] = kernel.read()
        assert t == (1 << 8) | 1 and f & NLM_F_DUMP == NLM_F_DUMP
        kernel.send(reply(seq, v4) + reply(seq, odd), reply(seq, v6) + done(seq))

    sock.send = send
    got = _dump(sock)
    assert [(c.family, c.dst, c.proto, c.dport) for c in got] == [
        (socket.AF_INET, "198.51.100.10", 6, 443), (socket.AF_INET6, "2001:db8:100::10", 6, 443)]
    key = delete_attrs(got[0])
    table = attr_table(key)
    assert sorted(table) == [CTA_TUPLE_ORIG, CTA_ID, CTA_ZONE] and attr_be32(key, table, CTA_ID) == 77
    assert struct.unpack_from("=H", key, 2)[0] == CTA_TUPLE_ORIG | NLA_F_NESTED
