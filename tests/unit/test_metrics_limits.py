"""The metrics listener's limits, without a kernel: a connection cap, a read timeout, no secrets
in labels. (The real thing, 2,000 idle connections against a controller limited to 1,024
descriptors, is tests/netns/test_attacks.py.)"""

import socket
import threading
import time
from types import SimpleNamespace

from ramfw.daemon import metrics
from ramfw.daemon.source import redact_url


def test_policy_urls_lose_user_info_and_query():
    assert redact_url("https://user:s3cret@policy.example.test:8443/p.toml?token=abc#x") == "https://policy.example.test:8443/p.toml?…"
    assert redact_url("https://[2001:db8::1]/p.toml") == "https://[2001:db8::1]/p.toml"
    assert redact_url("/etc/ramfw/policy.toml") == "/etc/ramfw/policy.toml"
    assert "s3cret" not in redact_url("https://s3cret@x.test/")


def test_set_sizes_are_recounted_at_most_every_ttl():
    calls = []
    backend = SimpleNamespace(set_sizes=lambda: calls.append(1) or {"allow4": len(calls)})
    now = [0.0]
    collector = metrics.ControllerCollector(SimpleNamespace(enforcer=SimpleNamespace(backend=backend)), clock=lambda: now[0])
    for _ in range(50):  # 50 scrapes in 5 s
        collector.set_sizes()
        now[0] += 0.1
    assert len(calls) == 1
    now[0] += metrics.SET_SIZES_TTL
    assert collector.set_sizes() == {"allow4": 2}


def test_connections_are_capped_and_idle_ones_dropped(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "CONNECTION_TIMEOUT", 0.5)
    monkeypatch.setattr(metrics._Handler, "timeout", 0.5)
    path = str(tmp_path / "m.sock")
    server = metrics._UnixHTTPServer(path, metrics._Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    idle = []
    try:
        for _ in range(3 * metrics.MAX_CONNECTIONS):
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            idle.append(s)
        deadline = time.monotonic() + 3
        while server.refused < 2 * metrics.MAX_CONNECTIONS and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.refused == 2 * metrics.MAX_CONNECTIONS  # the extra ones were closed at once
        # the idle ones holding slots are dropped after the read timeout: the slots come back
        deadline = time.monotonic() + 3
        while server.slots._value < metrics.MAX_CONNECTIONS and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.slots._value == metrics.MAX_CONNECTIONS
    finally:
        for s in idle:
            s.close()
        server.shutdown()
        server.server_close()
