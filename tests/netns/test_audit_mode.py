"""Audit mode, `ramfw learn` and events robustness, against a running controller with real
packets, on both backends.

In audit mode nothing may be refused (every connection the enforcing policy refuses gets
through), yet every such connection must be an event with "action": "would_refuse" and the host
name the client asked for, in `events`, the log and the metrics, and `status` must say AUDIT on
its first line. Switching the same policy to enforcing must refuse the very same connection.
"""

import json
import os
import stat
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ramfw.policy.load import parse_policy  # noqa: E402
from runcli import Controller, events, run_ramfw, wait_for  # noqa: E402
from test_service import metric, scrape_unix  # noqa: E402

A4, U4, U6, B4 = "198.51.100.10", "198.51.100.40", "2001:db8:100::40", "198.51.100.20"
ALLOWED, UNLISTED, BLOCKED = "reg.allowed.test", "blobs.unlisted.test", "reg.blocked.test"
POLICY = f'allow = ["{ALLOWED}"]\nblock = ["{BLOCKED}"]\n'


@pytest.fixture(params=["nft", "iptables"])
def net(request, testbed, state_dir):
    testbed.set_names({ALLOWED: [A4], UNLISTED: [U4, U6], BLOCKED: [B4]}, ttl=60)
    for ip in (A4, U4, U6, B4):
        testbed.serve_tcp(ip, 443)
    testbed.backend = request.param
    yield testbed
    run_ramfw("down", "--netns", testbed.client)


def start(tb, policy_path, *extra):
    ctl = Controller(tb.client, str(policy_path), "--backend", tb.backend, *extra)
    try:
        ctl.wait_ready()
    except BaseException:
        ctl.stop()
        raise
    return ctl




def status_json(ns):
    return json.loads(run_ramfw("status", "--netns", ns, "--json", check=0).stdout)


@pytest.mark.parametrize("how", ["flag", "policy"])
def test_audit_lets_through_and_records_would_refuse(net, tmp_path, how):
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY if how == "flag" else 'mode = "audit"\n' + POLICY)
    sock = str(tmp_path / "metrics.sock")
    ctl = start(net, policy, *(["--audit"] if how == "flag" else []), "--metrics", f"unix:{sock}")
    try:
        assert net.resolve(UNLISTED) == [U4]
        assert net.resolve(UNLISTED, "AAAA") == [U6]
        # nothing is refused: an unlisted name (v4 and v6), a blocked one and a bare address
        for ip in (U4, U6, B4, U4):
            r = net.connect(ip, 443)
            assert r.ok, f"audit mode refused {ip}: {r}"
        assert net.connect(A4, 443).ok

        evs = wait_for(lambda: [e for e in events(net.client) if e["dst"] in (U4, U6, B4)] if len(events(net.client)) >= 4 else None)
        assert evs, events(net.client)
        by_dst = {}
        for e in evs:
            by_dst.setdefault(e["dst"], []).append(e)
        assert len(by_dst[U4]) == 2 and len(by_dst[U6]) == 1 and len(by_dst[B4]) == 1, evs
        assert all(e["action"] == "would_refuse" for e in evs), evs
        assert {e["hostname"] for e in by_dst[U4] + by_dst[U6]} == {UNLISTED}, evs
        assert by_dst[B4][0]["hostname"] == BLOCKED
        assert not [e for e in events(net.client) if e["dst"] == A4], "an allowed connection became an event"

        # status: AUDIT on the first line, and in --json
        human = run_ramfw("status", "--netns", net.client, check=0).stdout
        assert human.splitlines()[0].startswith("AUDIT:"), human
        st = status_json(net.client)
        assert st["audit"] is True and st["mode"] == "allowlist"
        # the log names the host once, as an audit line, never as "blocked"
        out = ctl.output()
        assert sum(f"audit: registry access to {UNLISTED} ({U4}:443" in ln for ln in out.splitlines()) == 1, out
        assert "blocked: registry access" not in out, out
        # metrics: would-refuse attempts by host, and the mode
        text = scrape_unix(sock)
        assert metric(text, "ramfw_would_refuse_attempts_total", host=UNLISTED) == 3
        assert metric(text, "ramfw_audit_mode") == 1
        assert f'ramfw_blocked_attempts_total{{host="{UNLISTED}"}}' not in text
    finally:
        ctl.stop()

    # the same policy enforcing: the same connection is refused, and recorded as refused
    policy.write_text(POLICY)
    ctl = start(net, policy)
    try:
        assert net.resolve(UNLISTED) == [U4]
        assert net.connect(U4, 443).error == "ECONNREFUSED"
        refused = wait_for(lambda: [e for e in events(net.client) if e["dst"] == U4 and e["action"] == "refused"])
        assert refused and refused[0]["hostname"] == UNLISTED, events(net.client)
        assert not run_ramfw("status", "--netns", net.client, check=0).stdout.startswith("AUDIT")
        assert status_json(net.client)["audit"] is False
    finally:
        ctl.stop()


def test_up_audit_refuses_nothing_and_status_says_so(net, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    r = run_ramfw("up", "--netns", net.client, "--policy", str(policy), "--backend", net.backend, "--audit", check=0)
    assert "audit (allowlist evaluated, nothing refused)" in r.stdout, r.stdout
    assert run_ramfw("status", "--netns", net.client, check=0).stdout.startswith("AUDIT:")
    assert net.connect(U4, 443).ok and net.connect(B4, 443).ok
    counters = status_json(net.client)["counters"]
    assert counters["refuse_output"]["packets"] >= 2, counters  # seen by the refuse chain, let through
    check = run_ramfw("check", "--netns", net.client, "--policy", str(policy), check=3)
    assert "AUDIT mode" in check.stderr, check.stderr
    # the same policy without --audit, applied over it: refused again
    run_ramfw("up", "--netns", net.client, "--policy", str(policy), "--backend", net.backend, check=0)
    assert net.connect(U4, 443).error == "ECONNREFUSED"
    assert not run_ramfw("status", "--netns", net.client, check=0).stdout.startswith("AUDIT")


def test_leaving_audit_cuts_what_audit_let_through(net, tmp_path):
    """Established traffic is accepted before any set lookup: a connection audit let through
    must be cut when the policy starts enforcing, while an allowed one survives."""
    from test_enforcement import EchoServer, assert_kept_and_cut, open_conn

    echo = EchoServer(net.inet, [A4, U4])
    try:
        policy = tmp_path / "policy.toml"
        policy.write_text(POLICY)
        run_ramfw("up", "--netns", net.client, "--policy", str(policy), "--backend", net.backend, "--audit", check=0)
        keep, cut = open_conn(net.client, A4), open_conn(net.client, U4)
        run_ramfw("up", "--netns", net.client, "--policy", str(policy), "--backend", net.backend, check=0)
        assert_kept_and_cut(keep, cut)
    finally:
        echo.close()


@pytest.mark.parametrize("forward", [False, True])
def test_the_invariant_check_accepts_the_audit_ruleset_and_sees_a_switch(net, forward):
    """The controller repairs whatever its check flags: the audit ruleset must pass its own
    backend's check (or it would be re-applied every 5 s), and a ruleset of the other mode must not."""
    from ramfw.backends.choose import select_backend
    from ramfw.plan import plan

    text = POLICY + ("[scope]\nforward = true\n" if forward else "")
    audit_plan = plan(parse_policy(text, "p").audited(), {}, 0.0, ("198.51.100.53",), "off")
    enforcing_plan = plan(parse_policy(text, "p"), {}, 0.0, ("198.51.100.53",), "off")
    backend, _ = select_backend(net.client, net.backend)
    try:
        backend.apply(audit_plan)
        assert backend.check(audit_plan) == []
        assert backend.check(enforcing_plan), "an audit ruleset passed the enforcing plan's check"
        backend.apply(enforcing_plan)
        assert backend.check(enforcing_plan) == []
        assert backend.check(audit_plan)
    finally:
        backend.close()


def test_learn_names_the_hosts_and_its_suggestion_enforces(net, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    ctl = start(net, policy, "--audit")
    try:
        assert net.resolve(UNLISTED) == [U4]
        assert net.resolve(BLOCKED) == [B4]
        assert net.connect(U4, 443).ok and net.connect(B4, 443).ok
        assert wait_for(lambda: {e["dst"] for e in events(net.client)} >= {U4, B4}), events(net.client)
        r = run_ramfw("learn", "--netns", net.client, "--json", check=0)
        report = json.loads(r.stdout)
        human = run_ramfw("learn", "--netns", net.client, check=0).stdout
    finally:
        ctl.stop()
    assert report["audit"] is True
    assert report["suggested_entries"] == [UNLISTED], report  # the blocked host is not suggested
    unknown = next(g for g in report["groups"] if g["registry"] == "unknown")
    assert {h["host"] for h in unknown["hosts"]} == {UNLISTED, BLOCKED}
    assert UNLISTED in human and "suggested policy fragment" in human

    # the policy plus learn's suggestion, enforcing: the learned host works, the blocked stays refused
    fragment = report["fragment"]
    body = "\n".join(ln for ln in fragment.splitlines() if ln.startswith("allow = "))
    policy.write_text(body + f'\nblock = ["{BLOCKED}"]\n')
    assert run_ramfw("policy", "validate", str(policy), check=0).returncode == 0
    ctl = start(net, policy)
    try:
        assert net.resolve(UNLISTED) == [U4] and net.resolve(BLOCKED) == [B4]
        assert net.connect(U4, 443).ok
        assert net.connect(A4, 443).ok
        assert net.connect(B4, 443).error == "ECONNREFUSED"
        # learn now reports only what the new policy still refuses
        report = json.loads(run_ramfw("learn", "--netns", net.client, "--json", check=0).stdout)
        assert report["suggested_entries"] == []
    finally:
        ctl.stop()


def test_events_survive_a_torn_line_a_flood_and_a_loose_umask(net, tmp_path, state_dir):
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    sock = str(tmp_path / "metrics.sock")
    old_umask = os.umask(0)  # the controller inherits it: the events file must still not be world-readable
    try:
        ctl = start(net, policy, "--metrics", f"unix:{sock}")
    finally:
        os.umask(old_umask)
    try:
        assert net.resolve(BLOCKED) == [B4]
        assert net.connect(B4, 443).error == "ECONNREFUSED"
        assert wait_for(lambda: events(net.client)), "no event recorded"
        path = next(state_dir.glob("net-*/events.jsonl"))
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode & 0o027 == 0, f"events.jsonl is {oct(mode)} under umask 0"

        # a torn line (a crash mid-write) followed by new events: only the torn line is lost
        with open(path, "a") as fh:
            fh.write('{"time":"2026-11-30T00:00:00.000Z","action":"refused","dst":"198.51.')
        assert net.connect(B4, 443).error == "ECONNREFUSED"
        assert wait_for(lambda: len(events(net.client)) >= 2), events(net.client)
        r = run_ramfw("events", "--netns", net.client, check=0)
        assert r.returncode == 0 and "skipped 1 unreadable line" in r.stderr, r.stderr
        assert len([e for e in events(net.client) if e["dst"] == B4]) == 2

        # a flood from one source: the per-source limit drops most of it and counts the drops;
        # another source (a process with another uid) still gets its events recorded
        before = len(events(net.client))
        t0 = time.monotonic()
        for _ in range(200):
            net.connect(B4, 443, timeout=0.5)
        flood_seconds = time.monotonic() - t0
        uid_event = _connect_as(net, 65534, B4, 443)
        assert uid_event == "ECONNREFUSED"
        evs = wait_for(lambda: [e for e in events(net.client) if e.get("uid") == 65534])
        assert evs, "the other source's event was pushed out by the flood"
        flood = len(events(net.client)) - before - len(evs)
        # the bucket (burst 50, 5 a second; it has refilled since the first events) bounds it
        assert flood <= 50 + 5 * (flood_seconds + 1), f"{flood} of 200 flood events recorded in {flood_seconds:.2f}s"
        st = wait_for(lambda: (s := status_json(net.client))["controller_counters"].get("events_dropped", 0) > 0 and s, timeout=6)
        assert st, status_json(net.client)
        assert st["controller_counters"]["events_dropped"] + flood >= 200
        assert metric(scrape_unix(sock), "ramfw_events_dropped_total") >= st["controller_counters"]["events_dropped"]
    finally:
        ctl.stop()


def _connect_as(tb, uid: int, ip: str, port: int) -> str:
    """A TCP connect from the client namespace by a process with another uid; the errno name."""
    code = (
        "import os,socket,errno,sys\n"
        f"os.setgid({uid}); os.setuid({uid})\n"
        "s=socket.socket(); s.settimeout(2)\n"
        f"try:\n s.connect(({ip!r},{port})); print('ok')\n"
        "except OSError as e:\n print(errno.errorcode.get(e.errno, str(e)))\n"
    )
    return tb.run(tb.client, sys.executable, "-c", code).stdout.strip()
