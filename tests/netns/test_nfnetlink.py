"""ramfw.kernel.nfqueue and ramfw.kernel.nflog against the real kernel: NFQUEUE and NFLOG in a
throwaway network namespace.

Everything happens inside `rt-<pid>-nfnl`: the rules (iptables-nft / nft), the sockets and the
traffic (documentation addresses on the namespace's lo). The namespace is deleted at the end.
The pure decoding tests are in tests/unit/test_netlink.py (no root).
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time

import pytest

from ramfw.kernel import netns
from ramfw.kernel.netlink import NetlinkError
from ramfw.kernel.nflog import NfLog
from ramfw.kernel.nfqueue import NfQueue

V4 = "198.51.100.1"
V6 = "2001:db8:100::1"
QPORT = 9999  # queued by NFQUEUE 7
LPORT = 9998  # logged to NFLOG group 5
QUEUE = 7
GROUP = 5
NF_INET_LOCAL_OUT = 3
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def _ns_run(ns: str, *cmd: str) -> str:
    proc = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} in {ns} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")


@pytest.fixture(scope="module")
def ns():
    if os.geteuid() != 0:
        pytest.fail("tests/netns/test_nfnetlink.py needs root (network namespaces, netfilter rules); "
                    "run it as root, it only touches its own rt-<pid>-nfnl namespace")
    name = f"rt-{os.getpid()}-nfnl"
    _run("ip", "netns", "add", name)
    try:
        _run("ip", "-n", name, "link", "set", "lo", "up")
        _run("ip", "-n", name, "addr", "add", f"{V4}/32", "dev", "lo")
        _run("ip", "-n", name, "addr", "add", f"{V6}/128", "dev", "lo", "nodad")
        for tool in ("iptables-nft", "ip6tables-nft"):
            _ns_run(name, tool, "-A", "OUTPUT", "-p", "udp", "--dport", str(QPORT),
                    "-j", "NFQUEUE", "--queue-num", str(QUEUE), "--queue-bypass")
        _ns_run(name, "nft", "add", "table", "inet", "t")
        _ns_run(name, "nft", "add", "chain", "inet", "t", "o", "{ type filter hook output priority 0; }")
        _ns_run(name, "nft", "add", "rule", "inet", "t", "o", "udp", "dport", str(LPORT),
                "log", "group", str(GROUP), "prefix", '"ramfw-test"')
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def _sock_in(ns: str, family: int, bind: tuple | None = None, *, rcvbuf: int | None = None) -> socket.socket:
    with netns.entered(ns):
        s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        # queued skbs stay charged to the sender until their verdict: a burst needs room
        s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 8 << 20)
        if bind is not None:
            s.bind(bind)
    except BaseException:
        s.close()
        raise
    return s


@pytest.fixture
def sockets(request, ns):
    opened: list = []

    def make(family, bind=None, **kw):
        s = _sock_in(ns, family, bind, **kw)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def nfqueue(ns):
    opened: list = []

    def make(*args, **kw):
        with netns.entered(ns):
            q = NfQueue(*args, **kw)
        opened.append(q)
        return q

    yield make
    for q in opened:
        q.close()


@pytest.fixture
def nflog(ns):
    opened: list = []

    def make(*args, **kw):
        with netns.entered(ns):
            log = NfLog(*args, **kw)
        opened.append(log)
        return log

    yield make
    for log in opened:
        log.close()


FAMILIES = [
    pytest.param(socket.AF_INET, V4, ETH_P_IP, id="ipv4"),
    pytest.param(socket.AF_INET6, V6, ETH_P_IPV6, id="ipv6"),
]


def _udp_of(packet: bytes, family: int) -> tuple[bytes, bytes, int, int, bytes]:
    """(src, dst, sport, dport, data) of an IP/UDP packet without options or extension headers."""
    if family == socket.AF_INET:
        assert packet[0] >> 4 == 4
        ihl = (packet[0] & 0x0F) * 4
        assert packet[9] == socket.IPPROTO_UDP
        src, dst, udp = packet[12:16], packet[16:20], packet[ihl:]
    else:
        assert packet[0] >> 4 == 6
        assert packet[6] == socket.IPPROTO_UDP
        src, dst, udp = packet[8:24], packet[24:40], packet[40:]
    sport, dport, length = struct.unpack("!HHH", udp[:6])
    return src, dst, sport, dport, udp[8:length]


def _receive_one(q, timeout: float = 3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = q.receive(timeout=max(0.0, deadline - time.monotonic()))
        if got:
            assert len(got) == 1, got
            return got[0]
    pytest.fail(f"nothing received in {timeout} s")


def _recv_or_none(s: socket.socket, timeout: float) -> bytes | None:
    s.settimeout(timeout)
    try:
        return s.recv(65535)
    except TimeoutError:
        return None


# --- NFQUEUE --------------------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize("family, addr, ethertype", FAMILIES)
def test_queue_accept_delivers_and_drop_discards(ns, sockets, nfqueue, family, addr, ethertype):
    q = nfqueue(QUEUE)
    listener = sockets(family, (addr, QPORT))
    sender = sockets(family, (addr, 0))
    sport = sender.getsockname()[1]
    packed = socket.inet_pton(family, addr)

    sender.sendto(b"accept-me", (addr, QPORT))
    pkt = _receive_one(q)
    assert pkt.hw_protocol == ethertype
    assert pkt.hook == NF_INET_LOCAL_OUT
    assert pkt.outdev == socket.if_nametoindex("lo")  # same ifindex in every namespace
    assert _udp_of(pkt.payload, family) == (packed, packed, sport, QPORT, b"accept-me")
    assert _recv_or_none(listener, 0.3) is None, "delivered before the verdict"
    q.verdict(pkt.packet_id, accept=True)
    assert _recv_or_none(listener, 2.0) == b"accept-me"

    sender.sendto(b"drop-me", (addr, QPORT))
    pkt = _receive_one(q)
    assert _udp_of(pkt.payload, family)[4] == b"drop-me"
    q.verdict(pkt.packet_id, accept=False)
    assert _recv_or_none(listener, 0.5) is None, "a dropped packet arrived"

    sender.sendto(b"after-drop", (addr, QPORT))
    pkt = _receive_one(q)
    q.verdict(pkt.packet_id)
    assert _recv_or_none(listener, 2.0) == b"after-drop"
    assert q.errors == 0 and q.overruns == 0 and q.malformed == 0


@pytest.mark.root
@pytest.mark.parametrize("family, addr, ethertype", FAMILIES)
def test_queue_bypass_without_listener(ns, sockets, family, addr, ethertype):
    listener = sockets(family, (addr, QPORT))
    sender = sockets(family)
    for i in range(3):
        sender.sendto(b"bypass-%d" % i, (addr, QPORT))
        assert _recv_or_none(listener, 2.0) == b"bypass-%d" % i


@pytest.mark.root
def test_queue_multiple_packets_per_receive_and_batch_verdict(ns, sockets, nfqueue):
    q = nfqueue(QUEUE)
    listener = sockets(socket.AF_INET, (V4, QPORT))
    sender = sockets(socket.AF_INET)
    for i in range(20):
        sender.sendto(b"m%02d" % i, (V4, QPORT))
    got: list = []
    deadline = time.monotonic() + 3
    while len(got) < 20 and time.monotonic() < deadline:
        got += q.receive(timeout=0.5, max_msgs=7)
    assert [_udp_of(p.payload, socket.AF_INET)[4] for p in got] == [b"m%02d" % i for i in range(20)]
    ids = [p.packet_id for p in got]
    assert ids == sorted(ids)
    q.verdict_batch(ids[-1], accept=True)
    received = sorted(_recv_or_none(listener, 2.0) for _ in range(20))
    assert received == [b"m%02d" % i for i in range(20)]


@pytest.mark.root
def test_queue_already_bound_is_a_clear_error(ns, nfqueue):
    nfqueue(QUEUE)
    with pytest.raises(NetlinkError, match=rf"queue {QUEUE} is already bound") as info:
        nfqueue(QUEUE)
    assert "\n" not in str(info.value)


@pytest.mark.root
def test_queue_overrun_is_counted_and_fail_open_passes_the_rest(ns, sockets, nfqueue):
    q = nfqueue(QUEUE, rcvbuf=4096)
    assert q.rcvbuf <= 16384  # the kernel doubles the request, with a floor
    listener = sockets(socket.AF_INET, (V4, QPORT), rcvbuf=8 << 20)
    sender = sockets(socket.AF_INET)
    burst = 300
    for i in range(burst):
        sender.sendto(b"burst-%03d" % i + b"x" * 200, (V4, QPORT))

    queued = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        got = q.receive(timeout=0.3)
        if not got and q.overruns:
            break
        for p in got:
            q.verdict(p.packet_id, accept=True)
        queued += len(got)
    assert q.overruns >= 1, "a 300-packet burst into an 8 KiB socket buffer should overrun"
    assert 0 < queued < burst

    seen = set()
    while len(seen) < burst:
        data = _recv_or_none(listener, 2.0)
        if data is None:
            break
        seen.add(data[:9])
    # what we verdicted plus what the kernel accepted for us (fail-open) = everything
    assert len(seen) == burst, f"{burst - len(seen)} packets lost (queued to us: {queued})"

    # the socket keeps working after the overrun
    sender.sendto(b"after-overrun", (V4, QPORT))
    pkt = _receive_one(q)
    assert _udp_of(pkt.payload, socket.AF_INET)[4] == b"after-overrun"
    q.verdict(pkt.packet_id)
    assert _recv_or_none(listener, 2.0) == b"after-overrun"
    print(f"\noverrun: {q.overruns} ENOBUFS, {queued}/{burst} queued to userspace, rest failed open")


# --- NFLOG ----------------------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize("family, addr, ethertype", FAMILIES)
def test_nflog_delivers_prefix_payload_and_uid(ns, sockets, nflog, family, addr, ethertype):
    log = nflog(GROUP)
    listener = sockets(family, (addr, LPORT))
    sender = sockets(family, (addr, 0))
    sport = sender.getsockname()[1]
    packed = socket.inet_pton(family, addr)
    sender.sendto(b"log-me", (addr, LPORT))
    pkt = _receive_one(log)
    assert pkt.prefix == "ramfw-test"
    assert pkt.hw_protocol == ethertype
    assert pkt.hook == NF_INET_LOCAL_OUT
    assert _udp_of(pkt.payload, family) == (packed, packed, sport, LPORT, b"log-me")
    assert pkt.uid == 0 and pkt.gid == 0  # a root process's socket
    assert pkt.outdev == socket.if_nametoindex("lo") and pkt.indev is None
    assert _recv_or_none(listener, 2.0) == b"log-me"  # logging does not hold the packet
    assert log.overruns == 0 and log.malformed == 0


@pytest.mark.root
def test_nflog_group_already_bound_is_a_clear_error(ns, nflog):
    nflog(GROUP)
    with pytest.raises(NetlinkError, match=rf"NFLOG group {GROUP} is already bound"):
        nflog(GROUP)


@pytest.mark.root
def test_nflog_leaves_the_namespace_default_logger_alone(ns, nflog):
    before = {pf: _ns_run(ns, "cat", f"/proc/sys/net/netfilter/nf_log/{pf}") for pf in (2, 10)}
    log = nflog(GROUP)
    log.close()
    after = {pf: _ns_run(ns, "cat", f"/proc/sys/net/netfilter/nf_log/{pf}") for pf in (2, 10)}
    assert after == before


def _nflog_latencies(log, sender, n: int) -> list[float]:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        sender.sendto(b"lat-%d" % i, (V4, LPORT))
        pkt = _receive_one(log, timeout=3.0)
        samples.append(time.perf_counter() - t0)
        assert _udp_of(pkt.payload, socket.AF_INET)[4] == b"lat-%d" % i
    return samples


@pytest.mark.root
def test_nflog_delivers_each_packet_without_batching(ns, sockets, nflog):
    """Log-mode snooping needs each answer at once: a logger left batching (qthreshold > 1) holds
    a packet until its flush timeout (1 s by default). The latency figures are the bench's."""
    log = nflog(GROUP)
    sender = sockets(socket.AF_INET)
    samples = _nflog_latencies(log, sender, 20)
    assert max(samples) < 0.5, f"NFLOG held packets back: {[round(s * 1e3, 1) for s in samples]} ms"


@pytest.mark.root
def test_nflog_kernel_default_batching_would_be_caught(ns, sockets, nflog):
    """The kernel's defaults (flush at 100 packets or after 1 s) hold a lone packet back: the
    latency test above would fail with them."""
    log = nflog(GROUP, qthresh=100, flush_timeout_cs=100)
    sender = sockets(socket.AF_INET)
    samples = _nflog_latencies(log, sender, 1)
    assert samples[0] > 0.5
