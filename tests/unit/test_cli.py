"""The CLI contract, through the real entry point (a subprocess, as scripts use it)."""

import json
import subprocess
import sys


def ramfw(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ramfw.cli", *args], capture_output=True, text=True, env=env)


def test_help_lists_every_contract_command():
    out = ramfw("--help").stdout
    for cmd in ("up", "run", "down", "status", "explain", "check", "events", "policy", "dry-run"):
        assert f" {cmd} " in out


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


def test_not_yet_built_commands_say_so():
    r = ramfw("events")
    assert r.returncode == 1 and "not available yet" in r.stderr
