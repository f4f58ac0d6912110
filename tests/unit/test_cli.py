"""The CLI contract, through the real entry point (a subprocess, as scripts use it)."""

import json
import subprocess
import sys


def ramfw(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ramfw.cli", *args], capture_output=True, text=True, env=env)


def test_help_lists_every_contract_command():
    out = ramfw("--help").stdout
    for cmd in ("up", "run", "down", "status", "explain", "check", "events", "learn", "policy", "dry-run"):
        assert f" {cmd} " in out
    for cmd in ("run", "up"):
        assert "--audit" in ramfw(cmd, "--help").stdout


def test_policy_validate_ok_and_bad(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('allow = ["ghcr.io"]\n')
    r = ramfw("policy", "validate", str(good))
    assert r.returncode == 0 and "ok: allowlist" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('allow = ["*.cloudfront.net"]\n[dns]\nmin_ttl = "x"\n')
    r = ramfw("policy", "validate", str(bad))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"ramfw: error: {bad}: allow[0]: '*.cloudfront.net' is a wildcard over cloudfront.net")
    assert lines[1] == f"ramfw: error: {bad}: dns.min_ttl: must be a whole number, got a string"


def test_dry_run_prints_ruleset_without_root_or_kernel():
    r = ramfw("dry-run")
    assert r.returncode == 0, r.stderr
    assert "table inet ramfw {" in r.stdout and "set allow4" in r.stdout
    assert "registry-1.docker.io" in r.stdout


def test_explain_offline_lists_catalog_expansion():
    r = ramfw("explain", "docker.io", "--policy", "/dev/null", "--json")
    # /dev/null is an empty policy: allowlist with nothing allowed
    data = json.loads(r.stdout)
    assert data["verdict"] == "refused"
    hosts = [h["pattern"] for h in data["catalog"]["hosts"]]
    assert "registry-1.docker.io" in hosts and "production.cloudflare.docker.com" in hosts


def test_explain_against_default_policy():
    r = ramfw("explain", "production.cloudflare.docker.com", "--json", env={"RAMFW_STATE_DIR": "/nonexistent", "PATH": "/usr/bin:/bin"})
    data = json.loads(r.stdout)
    assert data["verdict"] == "allowed"
    assert "Docker Hub blob host" in data["reasons"][0]


def test_bad_names_give_one_line_usage_errors():
    r = ramfw("explain", "foo..bar")
    assert r.returncode == 2 and r.stderr.strip() == "ramfw: error: cannot explain 'foo..bar': 'foo..bar' has an empty label"
    r = ramfw("up", "--backend", "pf")
    assert r.returncode == 2


def test_events_without_a_controller_says_how_to_get_them(tmp_path):
    import os

    r = ramfw("events", env={**os.environ, "RAMFW_STATE_DIR": str(tmp_path)})
    assert r.returncode == 0
    assert r.stdout.startswith("no blocked attempts recorded (no controller is running here")
    r = ramfw("events", "--json", env={**os.environ, "RAMFW_STATE_DIR": str(tmp_path)})
    assert json.loads(r.stdout) == []


def test_audit_header_parsing():
    import struct

    from ramfw.daemon.audit import describe, parse_header

    v4 = bytes([0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0]) + bytes([203, 0, 113, 2]) + bytes([198, 51, 100, 20])
    v4 += struct.pack("!HH", 40000, 5000) + b"\0" * 16
    assert parse_header(v4) == {"src": "203.0.113.2", "dst": "198.51.100.20", "proto": "tcp", "dport": 5000}
    v6 = bytes([0x60, 0, 0, 0, 0, 8, 17, 64]) + bytes(15) + b"\x01" + bytes(15) + b"\x02" + struct.pack("!HHHH", 1, 53, 8, 0)
    assert parse_header(v6) == {"src": "::1", "dst": "::2", "proto": "udp", "dport": 53}
    assert parse_header(b"\x45") is None and parse_header(b"") is None
    line = describe({"dst": "198.51.100.20", "dport": 5000, "proto": "tcp", "scope": "output", "uid": 0, "hostname": "quay.io", "policy": "abc"})
    assert line == ("blocked: registry access to quay.io (198.51.100.20:5000 tcp, output, uid 0) is not allowed by policy abc; "
                    "to allow it, add it to the policy's allow list")
