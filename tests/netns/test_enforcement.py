"""Enforcement with real packets: `ramfw up` / `down` against a testbed namespace pair, the same
tests for every backend (nftables; iptables + ipset)."""

import json
import re
import socket
import threading

import pytest

from ramfw.kernel import netns
from runcli import run_ramfw
from testbed import kernel_ruleset, probe_during

ALLOWED = {"reg.allowed.test": ["198.51.100.10", "2001:db8:100::10"]}
OTHER = {"reg.other.test": ["198.51.100.20", "2001:db8:100::20"]}
UNKNOWN4 = "198.51.100.30"
A4, A6 = ALLOWED["reg.allowed.test"]
B4, B6 = OTHER["reg.other.test"]


@pytest.fixture(params=["nft", "iptables"])
def net(request, testbed, state_dir):
    testbed.backend = request.param
    testbed.set_names({**ALLOWED, **OTHER}, ttl=60)
    for ip in (A4, A6, B4, B6, UNKNOWN4):
        testbed.serve_tcp(ip, 443)
    return testbed


def policy(tmp_path, text, name="policy.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def up(tb, path, check=0):
    return run_ramfw("up", "--netns", tb.client, "--policy", path, "--backend", tb.backend, check=check)


def nft_ruleset(ns):
    """Everything either backend could have touched in the namespace (nft, both iptables
    flavours, ipsets), without counters."""
    return kernel_ruleset(ns)


def stable(ruleset: str) -> str:
    """A ruleset listing without what changes by itself over time (element expiry countdowns)."""
    return re.sub(r" expires \S+", "", ruleset)


def assert_refused_fast(tb, ip):
    r = tb.connect(ip, 443)
    assert not r.ok and r.error == "ECONNREFUSED", (ip, r)
    # at once: a reset, not the 2 s connect timeout a silent drop would cost (a bound, not a figure)
    assert r.elapsed < 1.0, f"{ip}: refused after {r.elapsed:.3f}s, not at once"


def test_allowlist_with_real_packets(net, tmp_path):
    for ip in (A4, A6, B4, B6, UNKNOWN4):
        assert net.connect(ip, 443).ok, f"testbed broken: {ip} unreachable before ramfw"
    out = up(net, policy(tmp_path, 'allow = ["reg.allowed.test"]')).stdout
    assert "enforcing allowlist policy" in out
    for ip in (A4, A6):
        r = net.connect(ip, 443)
        assert r.ok and r.reply.endswith(f"ok {ip} 443\n".encode()), (ip, r)
    for ip in (B4, B6, UNKNOWN4):
        assert_refused_fast(net, ip)
    # DNS to the trusted resolver still works, for names allowed or not
    assert net.resolve("reg.other.test") == [B4]
    assert net.resolve("reg.allowed.test", "AAAA") == [A6]
    # loopback stays open
    with netns.entered(net.client):
        srv = socket.create_server(("127.0.0.1", 0))
    with srv, netns.entered(net.client):
        socket.create_connection(srv.getsockname(), timeout=1).close()
    status = json.loads(run_ramfw("status", "--netns", net.client, "--json", check=0).stdout)
    assert status["enforcing"] and status["mode"] == "allowlist" and status["backend"] == net.backend
    assert status["sets"] == {"allow4": 1, "allow6": 1}
    assert status["counters"]["refuse_output"]["packets"] >= 3


def test_denylist_blocks_only_listed(net, tmp_path):
    up(net, policy(tmp_path, 'mode = "denylist"\nblock = ["reg.other.test"]'))
    for ip in (A4, A6, UNKNOWN4):
        assert net.connect(ip, 443).ok, ip
    for ip in (B4, B6):
        assert_refused_fast(net, ip)


def test_explain_after_up(net, tmp_path):
    up(net, policy(tmp_path, 'allow = ["reg.allowed.test"]'))
    data = json.loads(run_ramfw("explain", A4, "--netns", net.client, "--json", check=0).stdout)
    assert data["verdict"] == "allowed"
    assert [x["name"] for x in data["learned_from"]] == ["reg.allowed.test"]
    data = json.loads(run_ramfw("explain", B4, "--netns", net.client, "--json", check=0).stdout)
    assert data["verdict"] == "refused"
    data = json.loads(run_ramfw("explain", "reg.allowed.test", "--netns", net.client, "--json", check=0).stdout)
    assert data["verdict"] == "allowed" and {x["ip"] for x in data["learned_ips"]} == {A4, A6}


def test_reapply_is_idempotent(net, tmp_path):
    path = policy(tmp_path, 'allow = ["reg.allowed.test"]')
    up(net, path)
    first = stable(nft_ruleset(net.client))
    up(net, path)
    assert stable(nft_ruleset(net.client)) == first


class EchoServer:
    """Long-lived TCP connections for reload tests: echoes until the peer closes."""

    def __init__(self, ns, addrs, port=7007):
        self.socks = []
        for ip in addrs:
            fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
            with netns.entered(ns):
                s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, port))
            s.listen()
            self.socks.append(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        while True:
            try:
                conn, _ = s.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn):
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    def close(self):
        for s in self.socks:
            s.close()


def open_conn(ns, ip, port=7007):
    with netns.entered(ns):
        c = socket.create_connection((ip, port), timeout=2)
    c.sendall(b"hello")
    assert c.recv(16) == b"hello"
    return c


def assert_kept_and_cut(keep, cut) -> None:
    """`keep` still carries data both ways; `cut` was reset by ramfw (its conntrack entry went)."""
    keep.sendall(b"after")
    assert keep.recv(16) == b"after"
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        cut.sendall(b"after")
        cut.recv(16)
    keep.close()
    cut.close()


def test_reload_keeps_allowed_connections_and_cuts_removed(net, tmp_path):
    echo = EchoServer(net.inet, [A4, B4])
    try:
        path = policy(tmp_path, 'allow = ["reg.allowed.test", "reg.other.test"]')
        up(net, path)
        keep, cut = open_conn(net.client, A4), open_conn(net.client, B4)
        # same policy again: nothing is cut
        up(net, path)
        keep.sendall(b"again")
        assert keep.recv(16) == b"again"
        cut.sendall(b"still")
        assert cut.recv(16) == b"still"
        # reg.other.test is removed: its connection is cut, the other survives
        (tmp_path / "policy.toml").write_text('allow = ["reg.allowed.test"]')
        up(net, path)
        assert_kept_and_cut(keep, cut)
    finally:
        echo.close()


def test_down_restores_the_ruleset_exactly(net, tmp_path):
    net.run(net.client, "nft", "add table inet foreign")
    net.run(net.client, "nft", "add chain inet foreign out { type filter hook output priority 0; policy accept; }")
    net.run(net.client, "nft", "add rule inet foreign out tcp dport 9 counter accept")
    before = nft_ruleset(net.client)
    up(net, policy(tmp_path, 'allow = ["reg.allowed.test"]'))
    assert nft_ruleset(net.client) != before
    out = run_ramfw("down", "--netns", net.client, check=0).stdout
    assert out.startswith("ramfw: removed ") and "nothing" not in out
    assert nft_ruleset(net.client) == before
    out = run_ramfw("down", "--netns", net.client, check=0).stdout
    assert "nothing" in out
    assert nft_ruleset(net.client) == before
    assert net.connect(B4, 443).ok


def test_invalid_policy_leaves_enforcement_untouched(net, tmp_path):
    up(net, policy(tmp_path, 'allow = ["reg.allowed.test"]'))
    before = stable(nft_ruleset(net.client))
    bad = policy(tmp_path, 'allow = ["reg.other.test", "*.cloudfront.net"]\n[dns]\nmin_ttl = -5\n', "bad.toml")
    r = up(net, bad, check=2)
    assert f"{bad}: allow[1]: '*.cloudfront.net' is a wildcard over cloudfront.net" in r.stderr
    assert f"{bad}: dns.min_ttl: -5 is out of range" in r.stderr
    assert stable(nft_ruleset(net.client)) == before
    assert net.connect(A4, 443).ok
    assert_refused_fast(net, B4)


def test_failed_apply_leaves_previous_state(net, tmp_path):
    up(net, policy(tmp_path, 'allow = ["reg.allowed.test"]'))
    before = stable(nft_ruleset(net.client))
    # valid policy, but the kernel refuses it: the cgroup does not exist
    r = up(net, policy(tmp_path, 'allow = ["reg.other.test"]\n[scope]\ncgroup = "no-such.slice/x.service"', "cg.toml"), check=1)
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("ramfw: error: "), r.stderr
    assert "no-such.slice/x.service" in lines[-1], r.stderr  # names what the kernel could not find
    assert stable(nft_ruleset(net.client)) == before
    assert net.connect(A4, 443).ok
    assert_refused_fast(net, B4)


def test_policy_changes_replace_without_a_window(net, tmp_path):
    """Alternate between two policies that both allow A and refuse B, while probing both
    continuously: an atomic replace never lets B through nor refuses A."""
    p1 = policy(tmp_path, 'allow = ["reg.allowed.test"]', "p1.toml")
    p2 = policy(tmp_path, 'allow = ["reg.allowed.test", "third.test"]\n[network]\nallow_cidrs = ["198.51.100.40/32"]', "p2.toml")
    up(net, p1)
    def replace_12_times():
        for i in range(12):
            up(net, p2 if i % 2 == 0 else p1)

    results = probe_during(net, A4, B4, 443, replace_12_times)
    assert results["a_fail"] == 0 and results["b_ok"] == 0, results
    assert results["a_ok"] > 20, results


def test_status_when_nothing_is_installed(net):
    data = json.loads(run_ramfw("status", "--netns", net.client, "--json", check=0).stdout)
    assert data["enforcing"] is False and data["sets"] == {}
    assert "ramfw has nothing installed" in run_ramfw("status", "--netns", net.client, check=0).stdout
