"""nft backend element writes over netlink: reachability at once, timeout refresh, removal."""

import pytest

from ramfw.backends.nft.backend import NftBackend
from ramfw.errors import BackendError
from ramfw.plan import Element, plan
from ramfw.policy.model import parse_policy

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
