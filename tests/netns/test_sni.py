"""SNI binding with real packets: a TLS server on one allowed address serves an allowed and a
blocked name by server name (a CDN edge in miniature), and a client in the enforced namespace
reaches it under each name, on both backends, against a running controller.

The server records what reached it: a refused ClientHello must never arrive, not even its first
byte, whether it leaves in one segment, two, or one byte per segment."""

import os
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from runcli import Controller, events, run_ramfw, wait_for  # noqa: E402
from tlsbed import TlsServer, make_certs, tls_connect  # noqa: E402

EDGE4, EDGE6, CIDR4 = "198.51.100.60", "2001:db8:100::60", "198.51.100.70"
ALLOWED, BLOCKED, OTHER = "reg.allowed.test", "reg.blocked.test", "other.allowed.test"
SERVED = [ALLOWED, BLOCKED, OTHER, "cidr.allowed.test"]


def policy_text(sni: str) -> str:
    return (f'allow = ["{ALLOWED}", "{OTHER}", "cidr.allowed.test"]\nblock = ["{BLOCKED}"]\n'
            f'[network]\nallow_cidrs = ["{CIDR4}/32"]\n[tls]\nsni = "{sni}"\n')


@pytest.fixture(params=["nft", "iptables"])
def bed(request, testbed, state_dir, tmp_path):
    # ALLOWED resolves to the edge; BLOCKED would too, but the client reaches it by address
    # (hosts file, --resolve): DNS never credits the edge to it
    testbed.set_names({ALLOWED: [EDGE4, EDGE6], OTHER: ["198.51.100.61"]}, ttl=300)
    certs = make_certs(tmp_path / "certs", SERVED)
    testbed.certs = certs
    testbed.edge4 = TlsServer(testbed, EDGE4, 443, certs)
    testbed.edge6 = TlsServer(testbed, EDGE6, 443, certs)
    testbed.cidr = TlsServer(testbed, CIDR4, 443, certs)
    testbed.backend = request.param
    yield testbed
    run_ramfw("down", "--netns", testbed.client)


def start(tb, tmp_path, sni="enforce"):
    path = tmp_path / "policy.toml"
    path.write_text(policy_text(sni))
    ctl = Controller(tb.client, str(path), "--backend", tb.backend, "--check-interval", "1")
    try:
        ctl.wait_ready()
        # the client learns the edge's address the way a pull does: by asking DNS
        assert tb.resolve(ALLOWED) == [EDGE4] and tb.resolve(ALLOWED, "AAAA") == [EDGE6]
    except BaseException:
        ctl.stop()
        raise
    return ctl


def sni_path(tb) -> str:
    """Which kernel path holds the hellos: nft's own queue (Debian 12's 6.1), the xtables
    fallback (kernels without nft queue), or the iptables backend's chains."""
    if tb.backend == "iptables":
        return "iptables"
    table = tb.run(tb.client, "nft", "list", "table", "inet", "ramfw").stdout
    return "nft queue" if "queue" in table and "3735" in table else "xtables fallback"


def test_allowed_name_passes_and_blocked_name_is_reset_at_once(bed, tmp_path):
    ctl = start(bed, tmp_path)
    print(f"sni path: {sni_path(bed)}")
    try:
        for ip, server in ((EDGE4, bed.edge4), (EDGE6, bed.edge6)):
            ok = tls_connect(bed, ip, 443, ALLOWED, bed.certs["ca"])[0]
            assert ok["ok"] and ok["reply"] == f"hello {ALLOWED}", (ip, ok, ctl.output()[-3000:])
            bad = tls_connect(bed, ip, 443, BLOCKED, bed.certs["ca"])[0]
            # a reset, not a drop: the client learns at once (the figure is printed; the
            # bound only tells a reset from a retransmit or a 2 s timeout)
            assert not bad["ok"] and bad["error"] == "ECONNRESET", (ip, bad)
            print(f"blocked name to {ip} reset after {bad['seconds'] * 1000:.1f} ms")
            assert bad["seconds"] < 1.0, f"reset took {bad['seconds']:.3f} s"
            # the server saw the TCP connection, but not one byte of the refused ClientHello
            got = server.from_port(bad["port"])
            assert [e for e in got if e["kind"] == "bytes" and e["n"] > 0] == [], got
        evs = wait_for(lambda: [e for e in events(bed.client) if e.get("action") == "sni_mismatch"])
        assert {e["dst"] for e in evs} >= {EDGE4, EDGE6}, evs
        ev = next(e for e in evs if e["dst"] == EDGE4)
        assert ev["sni"] == BLOCKED and ALLOWED in ev["names"] and ev["refused"] is True, ev
        # explain: the names the address carries, and that binding applies to it
        import json
        ex = json.loads(run_ramfw("explain", EDGE4, "--netns", bed.client, "--json", check=0).stdout)
        assert ALLOWED in ex["names"] and ex["sni"]["applies"] and ex["sni"]["mode"] == "enforce", ex
        text = run_ramfw("explain", EDGE4, "--netns", bed.client, check=0).stdout
        assert f"names it carries: {ALLOWED}" in text and "SNI binding (enforce, TCP ports 443): applies" in text, text
        assert "sni binding:" in run_ramfw("status", "--netns", bed.client, check=0).stdout
        human = run_ramfw("events", "--netns", bed.client, check=0).stdout
        assert "sni_mismatch" in human and f"{BLOCKED}  (address given for {ALLOWED}; reset" in human, human
        # the SNI rules read back exactly as rendered: the 1 s check never finds them altered
        time.sleep(2.5)
        assert "altered" not in ctl.output(), ctl.output()[-3000:]
    finally:
        ctl.stop()


def test_another_allowed_name_not_given_for_the_address_is_reset(bed, tmp_path):
    """OTHER is allowed, but DNS never gave the edge's address for it: an allowed name
    steered onto a shared address (hosts file) is still a mismatch."""
    ctl = start(bed, tmp_path)
    try:
        r = tls_connect(bed, EDGE4, 443, OTHER, bed.certs["ca"])[0]
        assert not r["ok"] and r["error"] == "ECONNRESET", r
        # an address admitted by allow_cidrs is bound by the policy's names alone
        assert tls_connect(bed, CIDR4, 443, OTHER, bed.certs["ca"])[0]["ok"]
        assert not tls_connect(bed, CIDR4, 443, BLOCKED, bed.certs["ca"])[0]["ok"]
    finally:
        ctl.stop()


@pytest.mark.parametrize("how", [["--split", "2"], ["--bytes1"]], ids=["two-segments", "one-byte-segments"])
def test_split_client_hello(bed, tmp_path, how):
    ctl = start(bed, tmp_path)
    try:
        if how[0] == "--split":
            ok = tls_connect(bed, EDGE4, 443, ALLOWED, bed.certs["ca"], *how)[0]
            assert ok["ok"], (ok, ctl.output()[-3000:])
        bad = tls_connect(bed, EDGE4, 443, BLOCKED, bed.certs["ca"], *how)[0]
        assert not bad["ok"] and bad["error"] in ("ECONNRESET", "EPIPE"), bad
        got = bed.edge4.from_port(bad["port"])
        assert got and [e for e in got if e["kind"] == "bytes" and e["n"] > 0] == [], got
    finally:
        ctl.stop()


def test_decided_connections_stay_in_the_kernel(bed, tmp_path):
    """Only a connection's first packets reach user space: 20 connections, each with a
    multi-kilobyte reply, cost a handful of queued packets each, however much follows."""
    ctl = start(bed, tmp_path)
    try:
        before = run_status(bed)
        results = tls_connect(bed, EDGE4, 443, ALLOWED, bed.certs["ca"], "--count", "20")
        assert all(r["ok"] for r in results), results
        def judged():
            s = run_status(bed)
            return s if s.get("sni_connections", 0) - before.get("sni_connections", 0) >= 20 else None

        after = wait_for(judged, timeout=10)
        assert after, run_status(bed)
        queued = after["sni_packets"] - before.get("sni_packets", 0)
        print(f"{queued} packets queued for 20 connections")
        # the ClientHello alone: the SYN and the handshake's ACK carry no payload and stay in
        # the kernel, and so does everything after the verdict (handshake, data, FIN)
        assert 20 <= queued <= 20 + 2, f"{queued} packets went to user space for 20 connections"
    finally:
        ctl.stop()


def test_quic_to_an_allowed_address_is_refused_under_enforce(bed, tmp_path):
    ctl = start(bed, tmp_path)
    try:
        code = ("import socket,errno\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                "try:\n s.sendto(b'\\xc0'+bytes(1199),('%s',443)); print('sent')\nexcept OSError as e: print(errno.errorcode[e.errno])\n" % EDGE4)
        out = bed.run(bed.client, sys.executable, "-c", code).stdout.strip()
        assert out in ("EPERM", "sent"), out
        time.sleep(0.3)  # a datagram that got out would be on the server's log by now
        assert not [e for e in bed.edge4.events() if e["kind"] == "udp"], bed.edge4.events()
        assert out == "EPERM"
    finally:
        ctl.stop()


def test_audit_lets_a_mismatch_through_and_records_it(bed, tmp_path):
    ctl = start(bed, tmp_path, sni="audit")
    try:
        r = tls_connect(bed, EDGE4, 443, BLOCKED, bed.certs["ca"])[0]
        assert r["ok"] and r["reply"] == f"hello {BLOCKED}", r
        evs = wait_for(lambda: [e for e in events(bed.client) if e.get("action") == "sni_mismatch"])
        assert evs and evs[0]["sni"] == BLOCKED and evs[0]["refused"] is False, evs
    finally:
        ctl.stop()


def run_status(tb) -> dict:
    import json

    data = json.loads(run_ramfw("status", "--netns", tb.client, "--json", check=0).stdout)
    return data.get("controller_counters", {})


@pytest.mark.parametrize("fault", ["sni:raise", "sni:hang"])
def test_a_failed_sni_thread_ends_the_process_non_zero_and_the_rules_stay(bed, tmp_path, monkeypatch, fault):
    """The sni thread is supervised like the others: a fault injected at its first beat ends the
    controller with exit status 1 within the stall limit, naming it, and the ruleset stays."""
    monkeypatch.setenv("RAMFW_STALL_LIMIT", "3")
    monkeypatch.setenv("RAMFW_FAULT", fault)
    path = tmp_path / "policy.toml"
    path.write_text(policy_text("enforce"))
    ctl = Controller(bed.client, str(path), "--backend", bed.backend)
    try:
        rc = ctl.proc.wait(timeout=20)
    except Exception:
        ctl.stop()
        pytest.fail(f"{fault}: the controller was still running 20 s later\n{ctl.output()[-3000:]}")
    assert rc == 1, f"{fault}: exit status {rc}\n{ctl.output()[-3000:]}"
    assert "the sni thread" in ctl.output(), ctl.output()[-3000:]
    if bed.backend == "nft":
        assert "inet ramfw" in bed.run(bed.client, "nft", "list", "tables").stdout, "the ruleset left with the controller"
    else:
        assert "RAMFW-SNI-OUT" in bed.run(bed.client, "iptables", "-S").stdout, "the ruleset left with the controller"
