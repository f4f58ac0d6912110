"""nft backend element writes over netlink: reachability at once, timeout refresh, removal."""

import pytest

from ramfw.backends.nft.backend import NftBackend
from ramfw.errors import BackendError
from ramfw.plan import Element, plan
from ramfw.policy.load import parse_policy

NEW4, NEW6 = "198.51.100.44", "2001:db8:100::44"


@pytest.fixture
def backend(testbed):
    for ip in (NEW4, NEW6):
        testbed.serve_tcp(ip, 443)
    b = NftBackend(testbed.client, NftBackend.probe(testbed.client).features)
    b.apply(plan(parse_policy('allow = ["x.test"]', "p"), {}, 0.0, ("198.51.100.53",)))
    yield b
    b.destroy()
    b.close()


def test_added_elements_are_reachable_at_once_and_refreshed(testbed, backend):
    assert testbed.connect(NEW4, 443).error == "ECONNREFUSED"
    backend.add_elements({"allow4": [Element(NEW4, 5)], "allow6": [Element(NEW6, 5)]})
    assert testbed.connect(NEW4, 443).ok and testbed.connect(NEW6, 443).ok
    sets = backend.read_state().sets
    assert 3 <= sets["allow4"][NEW4] <= 5
    backend.add_elements({"allow4": [Element(NEW4, 300)]})  # refresh: the timeout moves forward
    assert 290 <= backend.read_state().sets["allow4"][NEW4] <= 300
    backend.remove_elements({"allow4": [NEW4, "198.51.100.45"]})  # a missing one is no error
    assert NEW4 not in backend.read_state().sets["allow4"]
    assert testbed.connect(NEW4, 443).error == "ECONNREFUSED"


def test_element_write_errors_are_one_line(testbed, backend):
    with pytest.raises(BackendError, match="^nf_tables refused the element change: No such file or directory$"):
        backend.add_elements({"nosuchset": [Element(NEW4, 5)]})
    assert testbed.connect(NEW4, 443).error == "ECONNREFUSED"


def test_a_thousand_elements_in_one_batch(testbed, backend):
    ips = [f"2001:db8:100::2:{i:x}" for i in range(2500)]
    backend.add_elements({"allow6": [Element(ip, 60) for ip in ips]})
    assert set(ips) <= set(backend.read_state().sets["allow6"])


def test_reapply_keeps_packets_held_in_nfqueue(testbed, backend):
    """Re-applying must not unregister hooks: the kernel drops every queued packet of the
    namespace when a hook goes away, and the snooper holds DNS answers in a queue."""
    import socket
    import time

    from ramfw.kernel import netns
    from ramfw.kernel.nfqueue import NfQueue

    testbed.run(testbed.client, "iptables-nft", "-t", "mangle", "-A", "OUTPUT", "-p", "udp", "--dport", "9", "-j", "NFQUEUE", "--queue-num", "77")
    with netns.entered(testbed.client):
        queue = NfQueue(77)
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 9))
    rx.settimeout(2)
    try:
        tx.sendto(b"held", ("127.0.0.1", 9))
        (held,) = queue.receive(timeout=2)
        backend.apply(plan(parse_policy('allow = ["y.test"]\n[dns]\nsnoop = "log"', "p"), {}, 0.0, ("198.51.100.53",), "log"))
        time.sleep(0.1)
        queue.verdict(held.packet_id, True)
        assert rx.recv(16) == b"held"
        assert queue.errors == 0
    finally:
        queue.close()
        rx.close()
        tx.close()


def _mangle(testbed, tool: str, *args: str):
    return testbed.run(testbed.client, tool, "-t", "mangle", *args, check=False)


def _nft_tables(testbed) -> str:
    return testbed.run(testbed.client, "nft", "list", "tables").stdout


def test_the_nft_backend_owns_its_xtables_queue_fallback(testbed):
    """Where the kernel's nftables lacks `queue` (forced here, whatever this kernel has), the
    backend's apply installs the xtables NFQUEUE chain, real DNS answers wait in the queue until
    released, its check reports a removed jump, a re-apply repairs it, an apply in log mode
    removes it, and teardown removes it together with the mangle tables it created."""
    import threading

    from ramfw.backends.nft import queue_fallback
    from ramfw.kernel import netns
    from ramfw.kernel.nfqueue import NfQueue
    from ramfw.plan import DNS_QUEUE_NUM

    testbed.set_names({"x.test": ["198.51.100.44"]})
    servers = ("198.51.100.53", "2001:db8:100::53")
    had_mangle = "mangle" in _nft_tables(testbed)
    features = {**NftBackend.probe(testbed.client).features, "queue": False}
    b = NftBackend(testbed.client, features)
    assert b.queue_mechanism() == "xtables NFQUEUE (this kernel's nftables lacks queue)"
    queued = plan(parse_policy('allow = ["x.test"]', "p"), {}, 0.0, servers, "queue")
    try:
        b.apply(queued)
        for tool in ("iptables-nft", "ip6tables-nft"):
            assert _mangle(testbed, tool, "-C", "PREROUTING", "-j", queue_fallback.CHAIN).returncode == 0
        assert b.check(queued) == []

        with netns.entered(testbed.client):
            queue = NfQueue(DNS_QUEUE_NUM)
        try:
            answer: list = []
            asker = threading.Thread(target=lambda: answer.append(testbed.resolve("x.test")))
            asker.start()
            held = queue.receive(timeout=5)
            assert held and not answer, "the DNS answer was not held in the queue"
            for packet in held:
                queue.verdict(packet.packet_id, True)
            asker.join(5)
            assert answer == [["198.51.100.44"]]
        finally:
            queue.close()

        assert _mangle(testbed, "ip6tables-nft", "-D", "PREROUTING", "-j", queue_fallback.CHAIN).returncode == 0
        assert b.check(queued) == [f"ip6tables-nft mangle PREROUTING no longer jumps to {queue_fallback.CHAIN}"]
        b.apply(queued)
        assert b.check(queued) == []

        b.apply(plan(parse_policy('allow = ["x.test"]', "p"), {}, 0.0, servers, "log"))
        assert _mangle(testbed, "iptables-nft", "-S", queue_fallback.CHAIN).returncode != 0
        assert _mangle(testbed, "ip6tables-nft", "-S", queue_fallback.CHAIN).returncode != 0

        b.apply(queued)
        created = b.created_tables()
        assert created == ([] if had_mangle else ["ip mangle", "ip6 mangle"])
    finally:
        b.close()
    # `ramfw down` runs in another process: a fresh backend, told what the controller recorded
    fresh = NftBackend(testbed.client)
    try:
        assert fresh.teardown(created) == ["table inet ramfw", f"chain {queue_fallback.CHAIN} (iptables-nft mangle)"]
        assert fresh.teardown(created) == []
    finally:
        fresh.close()
    assert _mangle(testbed, "iptables-nft", "-S", queue_fallback.CHAIN).returncode != 0
    assert "ramfw" not in _nft_tables(testbed)
    assert ("mangle" in _nft_tables(testbed)) == had_mangle
