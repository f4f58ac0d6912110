"""`ramfw explain` reads what is enforced (the kernel sets) besides the policy, so it needs root
and a namespace: these ran in tests/unit against the machine's own namespace; here each reads
an empty namespace of its own (moved from tests/unit/test_cli.py)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import pytest

_n = itertools.count()


def ramfw(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ramfw.cli", *args], capture_output=True, text=True, env=env,
                          timeout=60)  # fmt: skip


@pytest.fixture
def empty_ns():
    """A fresh namespace with nothing installed (unique per run, deleted afterwards)."""
    name = f"rt-{os.getpid()}-ex{next(_n)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


def test_explain_offline_lists_catalog_expansion(empty_ns):
    r = ramfw("explain", "docker.io", "--netns", empty_ns, "--policy", "/dev/null", "--json")
    # /dev/null is an empty policy: allowlist with nothing allowed
    data = json.loads(r.stdout)
    assert data["verdict"] == "refused"
    hosts = [h["pattern"] for h in data["catalog"]["hosts"]]
    assert "registry-1.docker.io" in hosts and "production.cloudflare.docker.com" in hosts


def test_explain_against_default_policy(empty_ns):
    r = ramfw("explain", "production.cloudflare.docker.com", "--netns", empty_ns, "--json",
              env={"RAMFW_STATE_DIR": "/nonexistent", "PATH": "/usr/bin:/bin"})
    data = json.loads(r.stdout)
    assert data["verdict"] == "allowed"
    assert "Docker Hub blob host" in data["reasons"][0]


def test_bad_names_give_one_line_usage_errors(empty_ns):
    r = ramfw("explain", "foo..bar", "--netns", empty_ns)
    assert r.returncode == 2 and r.stderr.strip() == "ramfw: error: cannot explain 'foo..bar': 'foo..bar' has an empty label"
