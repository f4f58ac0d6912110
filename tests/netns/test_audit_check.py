"""events, check and explain against a running controller, with real blocked attempts."""

import json

import pytest

from runcli import Controller, events, run_ramfw, wait_for

A4, A6, B4, Q4 = "198.51.100.10", "2001:db8:100::10", "198.51.100.20", "198.51.100.21"
F6 = "2001:db8:100::30"  # no name: reached only by a raw IPv6 fragment


@pytest.fixture
def enforced(testbed, state_dir, tmp_path):
    testbed.set_names(
        {"reg.allowed.test": [A4, A6], "reg.blocked.test": [B4], "quay.io": [Q4]},
        cnames={"alias.allowed.test": "reg.allowed.test"},
        ttl=60,
    )
    for ip in (A4, A6, B4, Q4):
        testbed.serve_tcp(ip, 443)
    path = tmp_path / "policy.toml"
    path.write_text('allow = ["reg.allowed.test", "alias.allowed.test"]\nblock = ["reg.blocked.test"]\n')
    ctl = Controller(testbed.client, str(path))
    try:
        ctl.wait_ready()
        yield testbed, ctl, path
    finally:
        ctl.stop()
        run_ramfw("down", "--netns", testbed.client)




def test_blocked_attempts_become_events_with_hostnames(enforced):
    tb, ctl, _ = enforced
    assert tb.resolve("quay.io") == [Q4]  # the client looks it up: the snooper sees the answer
    for _ in range(20):
        assert tb.connect(Q4, 443).error == "ECONNREFUSED"
    assert tb.connect(B4, 443).error == "ECONNREFUSED"
    assert tb.connect(A4, 443).ok
    send_ipv6_first_fragment(tb, F6, 8443)


    def all_recorded():
        evs = events(tb.client)
        return evs if {B4, F6} <= {e["dst"] for e in evs} else []

    evs = wait_for(all_recorded)
    by_dst = {}
    for e in evs:
        by_dst.setdefault(e["dst"], []).append(e)
    assert set(by_dst) == {Q4, B4, F6}, evs
    # behind the IPv6 fragment header: tcp to 8443 (audit's old parser said protocol 44, no port)
    assert [(e["src"], e["proto"], e["dport"]) for e in by_dst[F6]] == [("2001:db8:113::2", "tcp", 8443)]
    quay = by_dst[Q4]
    assert len(quay) == 20
    assert all(e["hostname"] == "quay.io" and e["scope"] == "output" and e["proto"] == "tcp" and e["dport"] == 443 for e in quay)
    assert quay[0]["uid"] == 0 and quay[0]["src"] == "203.0.113.2"
    assert by_dst[B4][0]["hostname"] == "reg.blocked.test"
    # the log names each destination once, not once per attempt
    log_lines = [ln for ln in ctl.output().splitlines() if "blocked: registry access to quay.io" in ln]
    assert len(log_lines) == 1, ctl.output()
    human = run_ramfw("events", "--netns", tb.client, check=0).stdout
    assert f"-> {Q4}:443  quay.io" in human
    status = json.loads(run_ramfw("status", "--netns", tb.client, "--json", check=0).stdout)
    assert status["controller_counters"]["blocked_attempts"] >= 21 or wait_for(
        lambda: json.loads(run_ramfw("status", "--netns", tb.client, "--json").stdout)["controller_counters"]["blocked_attempts"] >= 21
    )


def test_check_passes_when_enforced_and_fails_when_not(enforced):
    tb, ctl, path = enforced
    r = run_ramfw("check", "--netns", tb.client, "--json", check=0)
    data = json.loads(r.stdout)
    rows = {(p["host"], p["address"]): p for p in data["probes"]}
    assert rows[("reg.allowed.test", A4)]["result"] == "reachable"
    assert rows[("reg.allowed.test", A6)]["result"] == "reachable"
    assert rows[("reg.blocked.test", B4)]["result"] == "refused by policy"
    assert rows[("quay.io", Q4)]["result"] == "refused by policy"  # catalog registry not allowed
    assert rows[("ghcr.io", "")]["verdict"] == "unresolved"  # reported, not a mismatch
    assert data["summary"]["mismatches"] == 0 and data["summary"]["ok"] == 6  # alias.allowed.test reaches A4 and A6 too
    # without enforcement the blocked registry is reachable: a mismatch, exit 3
    ctl.stop()
    run_ramfw("down", "--netns", tb.client, check=0)
    r = run_ramfw("check", "--netns", tb.client, "--policy", str(path), check=3)
    assert "mismatch: reg.blocked.test (198.51.100.20:443) expected refused, got reachable" in r.stdout


def test_explain_shows_cname_chain_and_learned_names(enforced):
    tb, _, _ = enforced
    assert tb.resolve("alias.allowed.test") == [A4]
    data = json.loads(run_ramfw("explain", A4, "--netns", tb.client, "--json", check=0).stdout)
    assert data["verdict"] == "allowed"
    assert {x["name"] for x in data["learned_from"]} >= {"reg.allowed.test"}
    data = json.loads(run_ramfw("explain", "alias.allowed.test", "--netns", tb.client, "--json", check=0).stdout)
    assert data["verdict"] == "allowed"
    assert data["reasons"][0].startswith("allow entry 'alias.allowed.test'")


def send_ipv6_first_fragment(tb, dst: str, dport: int) -> None:
    """The first fragment of a TCP SYN from the client, sent raw: the kernel logs it with its
    fragment header in place, so the event must look behind that header for the protocol."""
    import socket
    import struct

    from ramfw.kernel import netns
    from testbed import CLIENT6

    frag = struct.pack("!BBHI", socket.IPPROTO_TCP, 0, 1, 0x5241)  # offset 0, more fragments follow
    syn = struct.pack("!HHIIBBHHH", 40001, dport, 1, 0, 0x50, 0x02, 65535, 0, 0)
    head = struct.pack("!IHBB16s16s", 6 << 28, len(frag + syn), 44, 64,
                       socket.inet_pton(socket.AF_INET6, CLIENT6), socket.inet_pton(socket.AF_INET6, dst))
    with netns.entered(tb.client):
        raw = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    with raw:
        try:
            raw.sendto(head + frag + syn, (dst, 0))
        except PermissionError:
            pass  # refused in the output hook: the kernel says so to the sender
