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


def test_unknown_backend_is_a_usage_error():
    r = ramfw("up", "--backend", "pf")
    assert r.returncode == 2
    assert r.stderr.strip() == "ramfw: error: --backend must be one of auto, nft, iptables; got 'pf'"


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


def test_missing_namespace_is_a_clear_error(tmp_path):
    """Moved from tests/netns: naming a namespace that does not exist needs no root to refuse."""
    import os

    r = ramfw("up", "--netns", "rt-no-such-ns", env={**os.environ, "RAMFW_STATE_DIR": str(tmp_path / "state")})
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "ramfw: error: network namespace 'rt-no-such-ns' not found (no /var/run/netns/rt-no-such-ns); "
        "create it with 'ip netns add rt-no-such-ns'"
    )


def test_explain_refuses_a_bad_name_before_reading_the_kernel():
    """A malformed name is a usage error (exit 2, one line) even where the kernel cannot be read,
    e.g. without root: the name is checked first."""
    for env in (None, {"PATH": "/nonexistent"}):
        r = ramfw("explain", "foo..bar", env=env)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == ["ramfw: error: cannot explain 'foo..bar': 'foo..bar' has an empty label"]
