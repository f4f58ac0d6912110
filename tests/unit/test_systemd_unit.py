"""The shipped systemd unit: valid for systemd, hardened, and installed with real paths."""

import re
import subprocess
import sys

from ramfw.install import render_unit


def ramfw(*args):
    return subprocess.run([sys.executable, "-m", "ramfw.cli", *args], capture_output=True, text=True)


def test_unit_verifies_and_is_hardened(tmp_path):
    unit = tmp_path / "ramfw.service"
    unit.write_text(render_unit("/etc/ramfw/policy.toml"))
    text = unit.read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text and "Restart=on-failure" in text
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text
    assert re.search(r"^Before=.*\bdocker\.service\b", text, re.M)
    assert re.search(r"^After=.*\bnetwork-pre\.target\b", text, re.M)
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for ramfw\.service: ([\d.]+)", security.stdout)
    assert m, security.stdout + security.stderr
    exposure = float(m.group(1))
    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure <= 2.5, security.stdout


def test_install_writes_unit_and_default_policy(tmp_path):
    policy = tmp_path / "etc" / "policy.toml"
    r = ramfw("install", "--unit-dir", str(tmp_path / "units"), "--policy", str(policy))
    assert r.returncode == 0, r.stderr
    unit = (tmp_path / "units" / "ramfw.service").read_text()
    assert f"run --policy {policy}" in unit and "@RAMFW@" not in unit
    exe = re.search(r"^ExecStart=(\S+)", unit, re.M).group(1)
    assert exe.endswith("/ramfw")
    assert 'allow = ["docker.io"]' in policy.read_text()
    # an existing policy is never overwritten
    policy.write_text('allow = ["ghcr.io"]\n')
    assert ramfw("install", "--unit-dir", str(tmp_path / "units"), "--policy", str(policy)).returncode == 0
    assert policy.read_text() == 'allow = ["ghcr.io"]\n'


def test_install_refuses_paths_systemd_would_split():
    r = ramfw("install", "--print", "--policy", "/etc/my policy.toml")
    assert r.returncode == 2 and "white space" in r.stderr


def test_install_writes_engine_dropins_that_require_ramfw(tmp_path):
    from ramfw.install import dropin_paths, render_dropin

    units = tmp_path / "units"
    r = ramfw("install", "--unit-dir", str(units), "--policy", str(tmp_path / "policy.toml"))
    assert r.returncode == 0, r.stderr
    for engine, path in dropin_paths(str(units)).items():
        text = open(path).read()
        assert path == str(units / f"{engine}.d" / "ramfw.conf")
        assert text == render_dropin(engine)
        assert re.search(r"^\[Unit\]$", text, re.M)
        assert re.search(r"^Requires=ramfw\.service$", text, re.M) and re.search(r"^After=ramfw\.service$", text, re.M)
        assert f"wrote {path}" in r.stdout
    # systemd accepts them: a stand-in engine unit with the drop-in next to ramfw.service
    engine = units / "docker.service"
    engine.write_text("[Unit]\nDescription=stand-in engine\n[Service]\nExecStart=/bin/true\n")
    verify = subprocess.run(["systemd-analyze", "verify", str(engine)], capture_output=True, text=True,
                            env={"SYSTEMD_UNIT_PATH": f"{units}:", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    assert "ramfw.conf" not in verify.stderr and "Unknown" not in verify.stderr
