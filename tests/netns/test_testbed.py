"""Self-test of the testbed (tests/testbed.py): DNS, TCP, teardown, isolation. Needs root."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dns.rcode
import dns.rdatatype
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (for testbed, servers)

from ramfw.kernel import netns  # noqa: E402
from testbed import (  # noqa: E402, F401  (testbed is the fixture)
    DNS4,
    DNS6,
    Testbed,
    TestbedError,
    nft_ruleset,
    require_root,
    root_ns_fingerprint,
    testbed,
)

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _must_be_root():
    require_root()  # fails, never skips


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ------------------------------------------------------------------ DNS


def test_names_resolve_a_aaaa_and_cname_chain(testbed):
    testbed.set_names(
        {"reg.example.test": ["198.51.100.10", "198.51.100.11", "2001:db8:100::10"]},
        cnames={"alias.example.test": "mid.example.test", "mid.example.test": "reg.example.test"},
        ttl=123,
    )
    assert sorted(testbed.resolve("reg.example.test")) == ["198.51.100.10", "198.51.100.11"]
    assert testbed.resolve("reg.example.test", "AAAA") == ["2001:db8:100::10"]
    assert sorted(testbed.resolve("alias.example.test")) == ["198.51.100.10", "198.51.100.11"]
    assert testbed.resolve("alias.example.test", "AAAA") == ["2001:db8:100::10"]

    r = testbed.query("alias.example.test", "A")
    chain = [(rr.name.to_text(), dns.rdatatype.to_text(rr.rdtype)) for rr in r.answer]
    assert chain == [
        ("alias.example.test.", "CNAME"),
        ("mid.example.test.", "CNAME"),
        ("reg.example.test.", "A"),
    ]
    assert {rr.ttl for rr in r.answer} == {123}
    # also over the v6 server
    r6 = testbed.query("reg.example.test", "AAAA", server=DNS6)
    assert [rr.ttl for rr in r6.answer] == [123]


def test_unknown_names_are_nxdomain_and_missing_types_empty(testbed):
    testbed.set_names({"v4only.example.test": ["198.51.100.12"]})
    assert testbed.resolve("nothing.example.test") == []
    assert testbed.query("nothing.example.test").rcode() == dns.rcode.NXDOMAIN
    assert testbed.query("docker.io").rcode() == dns.rcode.NXDOMAIN  # never forwarded anywhere
    assert testbed.query("sub.v4only.example.test").rcode() == dns.rcode.NXDOMAIN
    r = testbed.query("v4only.example.test", "AAAA")
    assert r.rcode() == dns.rcode.NOERROR and r.answer == []
    assert testbed.resolve("v4only.example.test", "AAAA") == []


def test_set_names_change_takes_effect(testbed):
    testbed.set_names({"a.example.test": ["198.51.100.20"], "b.example.test": ["198.51.100.21"]}, ttl=60)
    assert testbed.resolve("a.example.test") == ["198.51.100.20"]
    testbed.set_names({"a.example.test": ["198.51.100.22"]}, ttl=5)
    assert testbed.resolve("a.example.test") == ["198.51.100.22"]
    assert testbed.query("a.example.test").answer[0].ttl == 5
    assert testbed.resolve("b.example.test") == []


def test_wildcard_names(testbed):
    testbed.set_names(
        {"*.mirror.example.test": ["198.51.100.80", "2001:db8:100::80"], "pinned.mirror.example.test": ["198.51.100.81"]},
        ttl=42,
    )
    assert testbed.resolve("eu.mirror.example.test") == ["198.51.100.80"]
    assert testbed.resolve("a.b.mirror.example.test", "AAAA") == ["2001:db8:100::80"]
    assert testbed.resolve("mirror.example.test") == ["198.51.100.80"]  # dnsmasq: apex included
    assert testbed.resolve("pinned.mirror.example.test") == ["198.51.100.81"]  # exact name wins
    assert testbed.query("eu.mirror.example.test").answer[0].ttl == 42
    assert testbed.resolve("other.example.test") == []


def test_client_resolv_conf(testbed):
    assert Path(f"/etc/netns/{testbed.client}/resolv.conf").read_text() == f"nameserver {DNS4}\n"
    out = testbed.run(testbed.client, "cat", "/etc/resolv.conf").stdout
    assert out == f"nameserver {DNS4}\n"


# ------------------------------------------------------------------ TCP


def test_connect_v4_and_v6_gets_reply(testbed):
    testbed.serve_tcp("198.51.100.30", 5000)
    testbed.serve_tcp("2001:db8:100::30", 443)
    r = testbed.connect("198.51.100.30", 5000)
    assert r.ok and r.error is None, r
    assert r.reply.startswith(b"HTTP/1.0 200 OK\r\n")
    assert r.reply.endswith(b"\r\n\r\nok 198.51.100.30 5000\n")
    r6 = testbed.connect("2001:db8:100::30", 443)
    assert r6.ok, r6
    assert r6.reply.endswith(b"ok 2001:db8:100::30 443\n")
    # a second listener on the already running server, same address
    testbed.serve_tcp("198.51.100.30", 80)
    assert testbed.connect("198.51.100.30", 80).reply.endswith(b"ok 198.51.100.30 80\n")
    assert testbed.connect("198.51.100.30", 5000).ok
    testbed.serve_tcp("198.51.100.30", 80)  # idempotent


def test_http_client_gets_reply(testbed):
    """A real HTTP exchange from a process in the client namespace (request sent, then read)."""
    testbed.serve_tcp("198.51.100.31", 8080)
    code = (
        "import urllib.request;"
        "print(urllib.request.urlopen('http://198.51.100.31:8080/v2/', timeout=2).read().decode(), end='')"
    )
    out = testbed.run(testbed.client, sys.executable, "-c", code).stdout
    assert out == "ok 198.51.100.31 8080\n"


def test_connect_without_listener_is_refused_fast(testbed):
    testbed.add_address("198.51.100.40")
    testbed.add_address("2001:db8:100::40")
    for ip in ("198.51.100.40", "2001:db8:100::40", DNS4):
        r = testbed.connect(ip, 5000)
        assert not r.ok and r.error == "ECONNREFUSED", (ip, r)
        assert r.elapsed < 1.0, (ip, r)  # a reset, not the 2 s timeout of a drop


def test_connect_timeout_reported(testbed):
    # drop SYNs towards one address inside the client namespace: connect() must time out
    testbed.serve_tcp("198.51.100.41", 5000)
    testbed.run(
        testbed.client, "nft",
        "add table inet tbtest; add chain inet tbtest out { type filter hook output priority 0; };"
        " add rule inet tbtest out ip daddr 198.51.100.41 drop",
    )  # fmt: skip
    assert "198.51.100.41" in nft_ruleset(testbed.client)
    r = testbed.connect("198.51.100.41", 5000, timeout=0.3)
    # observed on this kernel: an nft output drop of the SYN shows up as a timeout (not EPERM)
    assert not r.ok and r.error == "timeout", r
    assert 0.25 < r.elapsed < 1.0, r


# ------------------------------------------------------------------ lifecycle


def test_teardown_removes_everything_and_root_untouched():
    before = root_ns_fingerprint()
    t0 = time.monotonic()
    tb = Testbed(tag="td").start()
    t_start = time.monotonic() - t0
    try:
        tb.set_names({"reg.example.test": ["198.51.100.50", "2001:db8:100::50"]})
        tb.serve_tcp("198.51.100.50", 5000)
        tb.serve_tcp("2001:db8:100::50", 5000)
        assert tb.connect("2001:db8:100::50", 5000).ok
        sleeper = tb.spawn(tb.inet, "sleep", "300")
        pids = tb.pids
        assert sleeper.pid in pids and len(pids) == 3  # dnsmasq, tcp server, sleep
        assert all(_alive(p) for p in pids)
        names, run_dir = (tb.client, tb.inet), tb.run_dir
        assert all(netns.exists(n) for n in names)
        assert run_dir.is_dir()
        assert tb.run(tb.inet, "ip", "-o", "addr", "show", "dev", "lo").stdout.count("198.51.100.") == 2
    finally:
        t1 = time.monotonic()
        tb.stop()
        t_stop = time.monotonic() - t1
    assert not any(netns.exists(n) for n in names)
    assert not Path(f"/etc/netns/{names[0]}").exists()
    assert not Path(f"/etc/netns/{names[1]}").exists()
    assert not run_dir.exists()
    assert not any(_alive(p) for p in pids)
    assert tb.pids == []
    tb.stop()  # idempotent
    assert root_ns_fingerprint() == before
    print(f"start {t_start * 1000:.0f} ms, stop {t_stop * 1000:.0f} ms")


def test_failed_start_cleans_up(monkeypatch):
    import testbed as tbmod

    tb = Testbed(tag="fail")

    def boom(self):
        raise RuntimeError("dnsmasq start failed (simulated)")

    monkeypatch.setattr(tbmod.Testbed, "_start_dnsmasq", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        tb.start()
    assert not netns.exists(tb.client) and not netns.exists(tb.inet)
    assert not Path(f"/etc/netns/{tb.client}").exists()
    assert not tb.run_dir.exists()


def test_dnsmasq_death_is_reported():
    """A dnsmasq that cannot start makes set_names fail at once with its own error message."""
    import socket

    with Testbed(tag="bad") as tb:
        pid = tb._dnsmasq.pid
        with netns.entered(tb.inet):
            squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            tb._kill(tb._dnsmasq)  # free the port, then take it (no SO_REUSEADDR: dnsmasq's bind fails)
            squatter.bind((DNS4, 53))
            t0 = time.monotonic()
            with pytest.raises(TestbedError, match="(?s)dnsmasq exited.*Address already in use"):
                tb.set_names({"a.example.test": ["198.51.100.70"]})
            assert time.monotonic() - t0 < 1
        finally:
            squatter.close()
        assert not _alive(pid)


def test_two_testbeds_do_not_collide():
    with Testbed(tag="one") as a, Testbed(tag="two") as b:
        assert len({a.client, a.inet, b.client, b.inet}) == 4
        assert a.run_dir != b.run_dir
        a.set_names({"reg.example.test": ["198.51.100.60"]})
        b.set_names({"reg.example.test": ["198.51.100.61"]})
        a.serve_tcp("198.51.100.60", 5000)
        b.serve_tcp("198.51.100.60", 5001)  # same address, other namespace pair
        assert a.resolve("reg.example.test") == ["198.51.100.60"]
        assert b.resolve("reg.example.test") == ["198.51.100.61"]
        assert a.connect("198.51.100.60", 5000).ok
        assert b.connect("198.51.100.60", 5000).error == "ECONNREFUSED"
        assert b.connect("198.51.100.60", 5001).ok
        assert a.connect("198.51.100.60", 5001).error == "ECONNREFUSED"
        b_names = (b.client, b.inet)
        b.stop()
        assert not any(netns.exists(n) for n in b_names)
        assert a.resolve("reg.example.test") == ["198.51.100.60"]  # a unaffected
        assert a.connect("198.51.100.60", 5000).ok


def test_run_and_nft_ruleset(testbed):
    assert nft_ruleset(testbed.client).strip() == ""
    p = testbed.run(testbed.client, "ip", "-o", "addr", "show", "dev", "eth0")
    assert "203.0.113.2/25" in p.stdout and "2001:db8:113::2/64" in p.stdout
    with pytest.raises(subprocess.CalledProcessError, match="stderr"):
        testbed.run(testbed.client, "ip", "link", "show", "nosuchlink")
    assert testbed.run(testbed.client, "false", check=False).returncode == 1
    assert testbed.run(testbed.client, "cat", "/proc/sys/net/ipv6/conf/eth0/accept_dad").stdout.strip() == "0"
