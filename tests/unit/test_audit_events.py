"""Audit mode without a kernel: the policy field, the plan, both backends' rendering, and the
events records (actions, torn lines, file mode, per-source rate limit)."""

import json
import os
import stat
import struct
import subprocess
import sys

import pytest

from ramfw.daemon import audit
from ramfw.daemon.audit import AuditLog, SourceLimiter, load_events
from ramfw.backends.iptables.render import table_part
from ramfw.backends.nft.backend import NftBackend
from ramfw.plan import plan
from ramfw.policy.load import parse_policy

NOW = 1000.0


# ---- policy and plan --------------------------------------------------------------------------


def test_mode_audit_is_allowlist_evaluated_with_nothing_refused():
    pol = parse_policy('mode = "audit"\nallow = ["ghcr.io"]', "p")
    assert pol.mode == "allowlist" and pol.audit
    assert pol.classify("quay.io")[0] == "unlisted"  # still evaluated: events say what would be refused


def test_audit_changes_the_digest_but_enforcing_digests_stay_as_they_were():
    enforcing = parse_policy('allow = ["ghcr.io"]', "p")
    assert enforcing.to_dict().get("audit") is None  # so existing digests do not change
    assert enforcing.audited().digest != enforcing.digest
    assert enforcing.audited().digest == parse_policy('mode = "audit"\nallow = ["ghcr.io"]', "p").digest
    audited = enforcing.audited()
    assert audited.audited() is audited


@pytest.mark.parametrize("snoop", ["queue", "log", "off"])
def test_audit_plan_accepts_what_it_would_refuse_and_logs_it_as_audit(snoop):
    pol = parse_policy('allow = ["ghcr.io"]\n[scope]\nforward = true', "p").audited()
    d = plan(pol, {}, NOW, ("198.51.100.53",), snoop)
    assert d.audit
    assert [c.final for c in d.chains] == ["accept", "accept"]
    assert [c.log_prefix for c in d.chains] == ["ramfw-audit-out", "ramfw-audit-fwd"]
    enforcing = plan(parse_policy('allow = ["ghcr.io"]', "p"), {}, NOW, (), "queue")
    assert enforcing.chains[0].final == "reject" and enforcing.chains[0].log_prefix == "ramfw-block-out"


def test_nft_renders_log_then_accept_in_audit_mode():
    d = plan(parse_policy('mode = "audit"\nallow = ["ghcr.io"]', "p"), {}, NOW, ("198.51.100.53",), "queue")
    text = NftBackend(None).render(d)
    refuse = text[text.index("chain refuse_output {"):].split("}")[0]
    assert 'log prefix "ramfw-audit-out " group 3731' in refuse and "\t\taccept" in refuse
    assert "reject" not in refuse and "drop" not in refuse
    assert "audit=1" in text  # status reads the mode back from the table


def test_iptables_renders_nflog_then_accept_in_audit_mode():
    d = plan(parse_policy('mode = "audit"\nallow = ["ghcr.io"]', "p"), {}, NOW, ("198.51.100.53",), "queue")
    for family in (4, 6):
        part = table_part(d, family)
        assert part.chains["RAMFW-REFUSE-OUT"] == ['-j NFLOG --nflog-prefix "ramfw-audit-out " --nflog-group 3731', "-j ACCEPT"]
        assert "audit=1" in part.chains["RAMFW-META"][0]


def test_dry_run_says_audit():
    r = subprocess.run([sys.executable, "-m", "ramfw.cli", "dry-run", "--policy", "/dev/stdin"], input='mode = "audit"\n',
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "audit (allowlist evaluated, nothing refused)" in r.stdout.splitlines()[0]


# ---- events -----------------------------------------------------------------------------------


def tcp_syn(src: str, dst: str, dport: int) -> bytes:
    ip = bytes([0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0]) + bytes(map(int, src.split("."))) + bytes(map(int, dst.split(".")))
    return ip + struct.pack("!HH", 40000, dport) + b"\0" * 16


@pytest.fixture
def log(tmp_path, monkeypatch):
    monkeypatch.setattr(audit, "events_path", lambda ns: str(tmp_path / "events.jsonl"))
    clock = {"t": 0.0}
    a = AuditLog(None, 3731, lambda ip: ["blobs.example"] if ip == "198.51.100.40" else [], lambda: "abc",
                 limiter=SourceLimiter(burst=5, rate=1.0, clock=lambda: clock["t"]))
    a.clock = clock
    return a


def test_events_carry_their_action_from_the_prefix(log):
    would = log.event("ramfw-audit-out ", tcp_syn("203.0.113.2", "198.51.100.40", 443), 0, NOW)
    refused = log.event("ramfw-block-fwd ", tcp_syn("203.0.113.130", "198.51.100.20", 443), None, NOW)
    assert (would["action"], would["scope"], would["hostname"]) == ("would_refuse", "output", "blobs.example")
    assert (refused["action"], refused["scope"], refused["hostname"]) == ("refused", "forward", None)
    log.record([would, refused])
    assert [e["action"] for e in load_events(None).events] == ["would_refuse", "refused"]
    assert log.counts == {"refused": 1, "would_refuse": 1}
    assert log.by_host == {("would_refuse", "blobs.example"): 1, ("refused", "unknown"): 1}
    assert audit.describe(would).startswith("audit: registry access to blobs.example (198.51.100.40:443 tcp, output, uid 0) would be refused")


def test_a_torn_line_loses_only_itself(log, tmp_path):
    ev = log.event("ramfw-block-out ", tcp_syn("203.0.113.2", "198.51.100.20", 443), 0, NOW)
    log.record([ev])
    path = tmp_path / "events.jsonl"
    with open(path, "a") as fh:
        fh.write('{"time":"2026-11-30T00:00:00.000Z","action":"refu')  # a crash mid-write
    log.record([ev])  # the writer ends the torn line before appending
    with open(path, "a") as fh:
        fh.write("\x00\x00garbage\n")
    log.record([ev])
    found = load_events(None)
    assert len(found.events) == 3 and found.torn == 2


def test_a_torn_line_glued_to_a_whole_one_keeps_the_whole_one(tmp_path, monkeypatch):
    monkeypatch.setattr(audit, "events_path", lambda ns: str(tmp_path / "events.jsonl"))
    whole = json.dumps({"time": "t", "dst": "198.51.100.20", "action": "refused"})
    (tmp_path / "events.jsonl").write_text('{"time":"t0","dst":"198.5' + whole + "\n" + whole + "\n")
    found = load_events(None)
    assert found.torn == 1 and len(found.events) == 2


def test_events_written_before_actions_read_as_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(audit, "events_path", lambda ns: str(tmp_path / "events.jsonl"))
    (tmp_path / "events.jsonl").write_text(json.dumps({"time": "t", "dst": "198.51.100.20"}) + "\n")
    assert load_events(None).events[0]["action"] == "refused"


def test_events_file_is_not_world_readable_whatever_the_umask(log, tmp_path):
    old = os.umask(0)
    try:
        log.record([log.event("ramfw-block-out ", tcp_syn("203.0.113.2", "198.51.100.20", 443), 0, NOW)])
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "events.jsonl").st_mode)
    assert mode == 0o640, oct(mode)


def test_one_flooding_source_cannot_push_the_others_out(log):
    flood = [log.event("ramfw-block-out ", tcp_syn("203.0.113.2", "198.51.100.20", 443), 1000, NOW) for _ in range(100)]
    other = log.event("ramfw-block-out ", tcp_syn("203.0.113.2", "198.51.100.21", 443), 0, NOW)  # another uid
    container = log.event("ramfw-block-fwd ", tcp_syn("203.0.113.130", "198.51.100.20", 443), None, NOW)
    log.record(flood + [other, container])
    evs = load_events(None).events
    assert len([e for e in evs if e["uid"] == 1000]) == 5  # the burst
    assert other in evs and container in evs
    assert log.dropped == 95
    log.clock["t"] = 3.0  # 1 event a second refills the bucket
    log.record(flood[:10])
    assert len([e for e in load_events(None).events if e["uid"] == 1000]) == 8 and log.dropped == 102


def test_drops_are_summarised_in_the_log_once_a_minute(log, caplog):
    flood = [log.event("ramfw-block-out ", tcp_syn("203.0.113.2", "198.51.100.20", 443), 1000, NOW) for _ in range(20)]
    log._last_summary -= audit.LOG_EVERY
    with caplog.at_level("WARNING"):
        log.record(flood)
        log.record(flood)
    summaries = [r.getMessage() for r in caplog.records if "per-source limit" in r.getMessage()]
    assert len(summaries) == 1 and "203.0.113.2 (output, uid 1000)" in summaries[0], summaries


def test_limiter_keeps_a_bounded_number_of_sources():
    lim = SourceLimiter(burst=1, rate=0.0, clock=lambda: 0.0, max_sources=10)
    for i in range(100):
        assert lim.allow(("output", f"198.51.100.{i}", None))
    assert len(lim.buckets) == 10
