"""ramfw run as a service: sd_notify READY only once the ruleset is in place, watchdog pings,
SIGHUP reload, Prometheus metrics that agree with `ramfw status`."""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from harness import ControllerProcess
from runcli import Controller, run_ramfw
from wait import wait_for
from testbed import nft_ruleset

A4, B4 = "198.51.100.10", "198.51.100.20"


@pytest.fixture
def net(testbed, state_dir):
    testbed.set_names({"reg.allowed.test": [A4], "reg.other.test": [B4]}, ttl=60)
    for ip in (A4, B4):
        testbed.serve_tcp(ip, 443)
    return testbed


def notify_listener(tmp_path, timeout):
    """A stand-in for systemd's notify socket; returns (socket, path)."""
    path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(timeout)
    return listener, path


def test_ready_after_ruleset_and_watchdog_pings(net, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('allow = ["reg.allowed.test"]\n')
    listener, notify_path = notify_listener(tmp_path, 10)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="600000")
    ctl = ControllerProcess(net.client, policy, env=env, log_path=tmp_path / "run.log").start()
    try:
        first = listener.recv(4096).decode()
        # at the moment READY arrives, the ruleset and the allowed address are in the kernel
        ruleset = nft_ruleset(net.client)
        assert first.startswith("READY=1"), first
        assert "table inet ramfw" in ruleset and A4 in ruleset
        pings, statuses = 0, 0
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                msg = listener.recv(4096).decode()
            except socket.timeout:
                break
            pings += msg == "WATCHDOG=1"
            statuses += msg.startswith("STATUS=")
        assert pings >= 4, f"only {pings} watchdog pings in 2 s (WatchdogSec 0.6 s: every 0.3 s)"
        # SIGHUP reloads (here: the same file, so the digest stays and the reload counter moves)
        ctl.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: ctl.counters().get("reloads") == 1, 5, "the SIGHUP reload in status", detail=ctl.log_tail)
        assert ctl.terminate(10) == 0
        tail = []
        listener.settimeout(1)
        try:
            while True:
                tail.append(listener.recv(4096).decode())
        except socket.timeout:
            pass
        assert "STOPPING=1" in tail
    finally:
        ctl.finish()
        listener.close()
    assert "reloaded (SIGHUP)" in ctl.output()


def test_ready_is_not_sent_when_the_policy_is_invalid(net, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('allow = ["*.amazonaws.com"]\n')
    listener, notify_path = notify_listener(tmp_path, 0.5)
    r = subprocess.run([sys.executable, "-m", "ramfw.cli", "run", "--netns", net.client, "--policy", str(policy)],
                       env=dict(os.environ, NOTIFY_SOCKET=notify_path), capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "allow[0]" in r.stderr
    with pytest.raises(socket.timeout):
        listener.recv(4096)
    listener.close()
    assert "table inet ramfw" not in nft_ruleset(net.client)


def scrape_unix(path: str) -> str:
    class UnixConnection(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(path)

    conn = UnixConnection("localhost")
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    assert resp.status == 200
    return resp.read().decode()


def metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}(?:{{{re.escape(want)}}})? ([0-9.e+]+)$" if want else rf"^{re.escape(name)} ([0-9.e+]+)$"
    m = re.search(pattern, text, re.M)
    assert m, f"{name} {labels} not in:\n{text}"
    return float(m.group(1))


def test_metrics_agree_with_status(net, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('allow = ["reg.allowed.test"]\n')
    sock_path = str(tmp_path / "metrics.sock")
    ctl = Controller(net.client, str(policy), "--metrics", f"unix:{sock_path}")
    try:
        ctl.wait_ready()
        assert net.resolve("reg.other.test") == [B4]
        for _ in range(3):
            assert net.connect(B4, 443).error == "ECONNREFUSED"
        assert net.connect(A4, 443).ok
        # the audit thread has recorded the three attempts, and a heartbeat put them in status
        wait_for(lambda: ctl.counters().get("blocked_attempts", 0) >= 3, 6, "three blocked attempts in status",
                 detail=ctl.log_tail)
        text = scrape_unix(sock_path)
        status = json.loads(run_ramfw("status", "--netns", net.client, "--json", check=0).stdout)
        assert metric(text, "ramfw_set_elements", set="allow4") == status["sets"]["allow4"] == 1
        assert metric(text, "ramfw_refused_packets_total", scope="output") == status["counters"]["refuse_output"]["packets"] >= 3
        assert metric(text, "ramfw_blocked_attempts_total", host="reg.other.test") == 3
        assert metric(text, "ramfw_applies_total") == status["controller_counters"]["applies"] == 1
        assert metric(text, "ramfw_dns_answers_total", outcome="used") == status["controller_counters"]["snoop_answers_used"]
        assert f'digest="{status["policy_digest"]}"' in text
        assert 0 <= metric(text, "ramfw_policy_age_seconds") < 60
    finally:
        ctl.stop()
        run_ramfw("down", "--netns", net.client)
    assert not os.path.exists(sock_path)


def test_metrics_refuse_a_public_address(net, tmp_path):
    r = run_ramfw("run", "--netns", net.client, "--metrics", "0.0.0.0:9799")
    assert r.returncode == 2 and "loopback" in r.stderr
    assert "table inet ramfw" not in nft_ruleset(net.client)


def test_resolver_failure_keeps_the_last_good_answer(net, tmp_path):
    """The trusted resolver stops answering: refreshes fail with a warning naming the name and
    the reason, and the last good addresses stay in force."""
    policy = tmp_path / "policy.toml"
    policy.write_text('allow = ["reg.allowed.test"]\n[dns]\nmin_ttl = 1\ngrace = 60\n')
    net.set_names({"reg.allowed.test": [A4], "reg.other.test": [B4]}, ttl=1)
    ctl = Controller(net.client, str(policy))
    try:
        ctl.wait_ready()
        assert net.connect(A4, 443).ok
        # the internet namespace drops every DNS query from now on
        net.run(net.inet, "nft", "add table inet dnsdown")
        net.run(net.inet, "nft", "add chain inet dnsdown in { type filter hook input priority 0; }")
        net.run(net.inet, "nft", "add rule inet dnsdown in th dport 53 drop")
        wait_for(lambda: "cannot refresh reg.allowed.test" in ctl.output(), 10, "the refresh failure to be logged",
                 detail=ctl.log_tail)
        line = next(ln for ln in ctl.output().splitlines() if "cannot refresh reg.allowed.test" in ln)
        assert "keeping the last good answer" in line and "Timeout" in line, line
        assert net.connect(A4, 443).ok
        status = json.loads(run_ramfw("status", "--netns", net.client, "--json", check=0).stdout)
        assert status["sets"]["allow4"] == 1 and status["controller"]["running"]
    finally:
        ctl.stop()
        run_ramfw("down", "--netns", net.client)
