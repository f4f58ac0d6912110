"""Hostile input: each is refused in one line (policy validate: exit 2), never an internal error.

The running controller's side (keeps its last good policy, stays alive) is in
tests/netns/test_attacks.py."""

import json
import logging
import subprocess
import sys

import pytest

from ramfw.dns import resolver
from ramfw.daemon import state
from ramfw.errors import PolicyError
from ramfw.plan import plan
from ramfw.policy.model import MAX_NESTING, MAX_POLICY_BYTES
from ramfw.policy.load import load_policy, nesting_depth, parse_policy

DEEP = 5000


def hostile_policies(tmp_path):
    files = {
        "deep.toml": "allow = " + "[" * DEEP + "]" * DEEP + "\n",
        "deep.json": '{"allow": ' + "[" * DEEP + "]" * DEEP + "}",
        "deep-tables.json": '{"dns": ' + '{"a": ' * DEEP + "1" + "}" * DEEP + "}",
        "huge.toml": 'allow = ["docker.io"]\n' + "# padding\n" * (MAX_POLICY_BYTES // 10 + 1),
        "huge.json": '{"allow": ["docker.io"], "pad": "' + "x" * MAX_POLICY_BYTES + '"}',
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return files


def test_each_hostile_policy_is_a_policy_error(tmp_path):
    for name in hostile_policies(tmp_path):
        with pytest.raises(PolicyError) as err:
            load_policy(str(tmp_path / name))
        assert len(err.value.lines()) == 1, (name, err.value.lines())
        line = err.value.lines()[0]
        assert line.startswith(f"{tmp_path / name}: (file): "), line
        assert ("nested" in line) if "deep" in name else ("larger than 1024 KiB" in line and "never cut" in line), line


def test_validate_refuses_each_hostile_policy_in_one_line(tmp_path):
    for name in hostile_policies(tmp_path):
        p = subprocess.run([sys.executable, "-m", "ramfw.cli", "policy", "validate", str(tmp_path / name)],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        assert p.returncode == 2, (name, p.returncode, p.stderr[-500:])
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ramfw: error: "), (name, p.stderr[-500:])
        assert "Traceback" not in p.stderr


def test_a_policy_just_under_the_limits_is_accepted():
    text = 'allow = ["docker.io"]\n' + "# padding\n" * ((MAX_POLICY_BYTES - 100) // 10)
    assert parse_policy(text, "p").allow == ("docker.io",)
    nested_ok = '{"allow": ["docker.io"], "dns": {"servers": []}}'
    assert parse_policy(nested_ok, "p", fmt="json").allow == ("docker.io",)


def test_nesting_depth_ignores_brackets_in_strings_and_comments():
    assert nesting_depth('allow = ["a[[[[b", \'c{{{{\']\n# [[[[[[[[[\n[dns]\nservers = []\n', 99) == 1
    assert nesting_depth('x = """ [[[[[ \\""" [[[ """', 99) == 0
    assert nesting_depth("[" * 100, MAX_NESTING) == MAX_NESTING + 1  # stops counting early


def test_ip_literal_policy_url_host_stays_reachable_by_address():
    pol = load_policy(None)
    for host, cidr in (("198.51.100.5", "198.51.100.5/32"), ("[2001:db8:100::5]", "2001:db8:100::5/128")):
        p = pol.with_infrastructure([host], "policy source")
        assert p.infrastructure_cidrs == (cidr,)
        assert p.digest == pol.digest  # still the same policy
        d = plan(p, {}, 0.0)
        assert [r.args for r in d.chains[0].rules if r.kind == "accept_cidrs"] == [(cidr,)]


def test_nameserver_lines_that_are_not_addresses_are_skipped_once(tmp_path, monkeypatch, caplog):
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver not-an-address\nnameserver 198.51.100.53\nnameserver fe80::1%eth0\n"
                    "nameserver 198.51.100.53\nnameserver\nnameserver 999.1.1.1\n")  # fmt: skip
    monkeypatch.setattr(resolver.netns, "resolv_conf_path", lambda _ns: str(conf))
    with caplog.at_level(logging.WARNING):
        assert resolver.read_nameservers(None) == ["198.51.100.53", "fe80::1"]
        assert resolver.read_nameservers(None) == ["198.51.100.53", "fe80::1"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and all("is not an IP address; ignored" in w for w in warnings), warnings
    # and a plan built from what is left works (it raised ValueError at every apply)
    plan(load_policy(None), {}, 0.0, tuple(resolver.read_nameservers(None)))


@pytest.mark.parametrize("content", [
    "[1, 2, 3]", '"a string"', "{not json", "[" * DEEP + "]" * DEEP, '{"a": ' * DEEP + "1" + "}" * DEEP, b"\xff\xfe\x00",
])  # fmt: skip
def test_hostile_state_files_are_ignored_with_a_warning(tmp_path, monkeypatch, caplog, content):
    monkeypatch.setattr(state, "STATE_ROOT", str(tmp_path))
    path = state.state_path(None, "controller.json")
    import os

    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as fh:
        fh.write(content if isinstance(content, bytes) else content.encode())
    with caplog.at_level(logging.WARNING):
        assert state.read_state(None, "controller.json") == {}
    assert any("ignoring state file" in r.getMessage() for r in caplog.records)


def test_a_good_state_file_still_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "STATE_ROOT", str(tmp_path))
    state.write_state(None, {"pid": 1, "counters": {"a": 1}}, name="controller.json")
    assert json.loads(open(state.state_path(None, "controller.json")).read())["pid"] == 1
    assert state.read_state(None, "controller.json")["counters"] == {"a": 1}


def test_failed_state_writes_are_survived_and_summarised(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    monkeypatch.setattr(state, "STATE_ROOT", str(blocker))  # every write fails (ENOTDIR), like a full /run
    now = [0.0]
    monkeypatch.setattr(state, "write_failures", state._WriteFailures(clock=lambda: now[0]))
    with caplog.at_level(logging.WARNING):
        for _ in range(30):  # 30 heartbeats
            assert state.write_state(None, {"pid": 1}, name="controller.json") is False
            now[0] += 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 + (30 * 2 - 2) // 60, errors  # the first, then one reminder a minute
    assert "cannot write state file" in errors[0] and "enforcement goes on" in errors[0]
    caplog.clear()
    monkeypatch.setattr(state, "STATE_ROOT", str(tmp_path / "ok"))
    with caplog.at_level(logging.WARNING):
        assert state.write_state(None, {"pid": 1}, name="controller.json") is True
    assert any("written again after 30 failed writes" in r.getMessage() for r in caplog.records)
