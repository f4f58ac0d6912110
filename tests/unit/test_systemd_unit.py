"""The shipped systemd unit: valid for systemd, hardened, and installed with real paths."""

import re
import subprocess
import sys
import time

from ramfw.daemon.install import ramfw_executable, render_unit


def ramfw(*args):
    return subprocess.run([sys.executable, "-m", "ramfw.cli", *args], capture_output=True, text=True)


def test_unit_verifies_and_is_hardened(tmp_path):
    unit = tmp_path / "ramfw.service"
    exe = ramfw_executable()
    unit.write_text(render_unit("/etc/ramfw/policy.toml", executable=exe))
    text = unit.read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text and "Restart=on-failure" in text
    # Every program the unit runs is ramfw itself: a minimal Debian has no /bin/kill (procps).
    assert re.search(rf"^ExecReload={re.escape(exe)} reload --pid \$MAINPID$", text, re.M), text
    assert re.findall(r"^Exec\w+=(\S+)", text, re.M) == [exe, exe]
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
    from ramfw.daemon.install import dropin_paths, render_dropin

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


def test_reload_sends_sighup_to_the_given_pid(tmp_path):
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", (
        "import signal, sys, pathlib\n"
        "signal.signal(signal.SIGHUP, lambda *a: sys.exit(42))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "signal.pause()\n"
    )])
    try:
        for _ in range(200):
            if ready.exists():
                break
            time.sleep(0.01)
        r = ramfw("reload", "--pid", str(child.pid))
        assert r.returncode == 0, r.stderr
        assert f"pid {child.pid}" in r.stdout
        assert child.wait(timeout=10) == 42  # the SIGHUP handler ran
    finally:
        child.kill()
        child.wait()


def test_reload_without_a_controller_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("RAMFW_STATE_DIR", str(tmp_path / "state"))
    r = ramfw("reload")
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "no ramfw controller is running" in r.stderr, r.stderr
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    r = ramfw("reload", "--pid", str(gone.pid))
    assert r.returncode == 1 and f"no process {gone.pid}" in r.stderr, r.stderr


def test_unit_waits_for_the_file_system_of_its_executable():
    """Found in the VM tier: /opt/ramfw on its own (nofail) mount was not there yet when the unit
    started at boot (203/EXEC), and the engines, which require ramfw, did not start at all."""
    from ramfw.daemon.install import render_unit

    unit = render_unit("/etc/ramfw/policy.toml", executable="/opt/ramfw/venv/bin/ramfw")
    assert re.search(r"^RequiresMountsFor=/opt/ramfw/venv/bin$", unit, re.M), unit
    assert not re.search(r"@[A-Z_]+@", unit), unit  # every placeholder filled in
