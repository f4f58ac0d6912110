"""ramfw as a systemd service in the VM: the unit from `ramfw install`, policies, journal reads.

Guest commands are slow under TCG (a `ramfw` CLI call takes a few seconds), so each helper does
its work in one guest shell command where it can.
"""

from __future__ import annotations

import re
import shlex
import time

from pathlib import Path

from machine import Machine

HERE = Path(__file__).resolve().parent
TIMES: dict[str, float] = {}  # printed at the end of the run (conftest.py)
NOTES: list[str] = []
POLICY = "/etc/ramfw/policy.toml"
RESOLVER = "198.51.100.53"
ALLOWED, ALLOWED_IP = "reg-allowed.test", "198.51.100.10"
BLOCKED, BLOCKED_IP = "reg-blocked.test", "198.51.100.20"
WEB, WEB_IP = "web.test", "198.51.100.80"
IMAGE = "tiny:1"


def policy(allow=(ALLOWED,), cgroup: str = "", extra: str = "") -> str:
    """An allowlist policy trusting the guest testbed's resolver (TOML)."""
    allow_list = ", ".join(f'"{a}"' for a in allow)
    text = f'mode = "allowlist"\nallow = [{allow_list}]\n{extra}\n[dns]\nservers = ["{RESOLVER}"]\n'
    if cgroup:
        text += f'\n[scope]\noutput = true\ncgroup = "{cgroup}"\n'
    return text


def install_unit(vm: Machine) -> str:
    """`ramfw install` (the unit and, the first time, the default policy); the unit's text."""
    vm.sh("ramfw install && systemctl daemon-reload", timeout=120)
    return vm.sh("cat /etc/systemd/system/ramfw.service")


def enforce(vm: Machine, policy_text: str, enable: bool = True) -> None:
    """Write the policy and (re)start the service with it; returns once systemd says active."""
    vm.put(POLICY, policy_text)
    if not vm.run("test -e /etc/systemd/system/ramfw.service").ok:
        install_unit(vm)
    vm.sh(("systemctl enable ramfw -q && " if enable else "") + "systemctl reset-failed ramfw; systemctl restart ramfw", timeout=180)
    state = vm.sh("systemctl is-active ramfw || true").strip()
    assert state == "active", f"ramfw.service is {state}"


def main_pid(vm: Machine) -> int:
    return int(vm.sh("systemctl show -p MainPID --value ramfw").strip())


def cursor(vm: Machine) -> str:
    """The journal's current end: pass to journal_after() to read only what comes next."""
    out = vm.sh("journalctl -n 0 --show-cursor --no-pager")
    return re.search(r"-- cursor: (\S+)", out).group(1)


def journal_after(vm: Machine, cur: str, unit: str = "ramfw.service", fmt: str = "short-monotonic") -> str:
    """Lines of the unit (its own and systemd's about it) logged after the cursor."""
    return vm.sh(f"journalctl --no-pager -o {fmt} --after-cursor={shlex.quote(cur)} _SYSTEMD_UNIT={unit} + UNIT={unit}")


def table_present(vm: Machine) -> bool:
    return vm.run("nft list table inet ramfw >/dev/null 2>&1").ok


def status_json(vm: Machine) -> dict:
    import json

    return json.loads(vm.sh("ramfw status --json", timeout=120))


def wait_guest(vm: Machine, condition_sh: str, timeout: float, what: str) -> float:
    """Poll a guest shell condition (inside the guest, one command) until it holds; seconds taken."""
    t0 = time.monotonic()
    r = vm.run(f"end=$(($(date +%s) + {int(timeout)})); until {condition_sh}; do [ $(date +%s) -lt $end ] || exit 1; sleep 0.2; done",
               timeout=timeout + 60)
    assert r.ok, f"timed out after {timeout:.0f} s waiting for {what}"
    return time.monotonic() - t0


def uptime(vm: Machine) -> float:
    return float(vm.sh("cut -d' ' -f1 /proc/uptime"))


def setup_guestbed(vm: Machine) -> None:
    """(Re)start the guest testbed (tests/vm/guestbed.sh); a reboot takes its namespace and services away."""
    vm.put("/usr/local/sbin/vm-guestbed", (HERE / "guestbed.sh").read_text(), mode=0o755)
    vm.run("/usr/local/sbin/vm-guestbed", timeout=600, check=True)
