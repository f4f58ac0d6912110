"""The unit from `ramfw install`, started by a real systemd 252 (PID 1) on Debian 12's own kernel:
notify/READY, reload on a minimal system, hardening score, restart after SIGKILL, watchdog
after SIGSTOP. Runs in file order; each test sets the service state it needs."""

from __future__ import annotations

import re

from machine import REPO
from service import (
    ALLOWED, cursor, enforce, install_unit, journal_after, main_pid, policy, status_json, table_present, uptime,
    wait_guest,
)


def test_enable_now_is_active_only_after_ready(bed):
    vm = bed
    vm.put("/etc/ramfw/policy.toml", policy())
    unit = install_unit(vm)
    assert "Type=notify" in unit
    vm.sh("systemctl disable --now ramfw -q 2>/dev/null; systemctl reset-failed ramfw 2>/dev/null; ramfw down", timeout=120)
    assert not table_present(vm)
    cur = cursor(vm)
    # Right when `enable --now` returns, the unit is active and the ruleset is in the kernel.
    out = vm.sh("systemctl enable --now ramfw; echo enable=$?; "
                "nft list table inet ramfw >/dev/null 2>&1; echo table=$?; "
                "echo state=$(systemctl is-active ramfw); systemctl show -p StatusText ramfw", timeout=180)
    assert "enable=0" in out and "table=0" in out and "state=active" in out, out
    # STATUS= travels only with sd_notify: systemd heard from ramfw.
    assert re.search(r"StatusText=enforcing policy [0-9a-f]+", out), out
    # systemd logged "Started" only after ramfw had logged its ruleset as enforced (READY comes
    # right after that line); with Type=simple, "Started" would come seconds earlier.
    lines = journal_after(vm, cur).splitlines()
    enforcing = next((i for i, l in enumerate(lines) if "enforcing allowlist policy" in l), None)
    started = next((i for i, l in enumerate(lines) if re.search(r"systemd\[1\]: Started ramfw", l)), None)
    assert enforcing is not None and started is not None, "\n".join(lines)
    assert enforcing < started, "\n".join(lines)


def test_invalid_policy_never_becomes_active_and_keeps_the_ruleset(bed):
    vm = bed
    enforce(vm, policy())
    before = vm.sh("nft list table inet ramfw | grep -o 'policy=[0-9a-f]*'")
    restarts = int(vm.sh("systemctl show -p NRestarts --value ramfw"))
    vm.put("/etc/ramfw/policy.toml", 'mode = "sometimes"\nallow = ["reg-allowed.test"]\n')
    try:
        cur = cursor(vm)
        r = vm.run("systemctl restart ramfw", timeout=180)
        assert not r.ok, "a service with an invalid policy must not become active"
        out = vm.sh("systemctl is-active ramfw; systemctl show -p Result,ExecMainStatus,NRestarts ramfw", timeout=60)
        # Exit 2 (bad policy) is not restarted every RestartSec: the unit stays failed and says why.
        assert sorted(out.split()) == sorted(["failed", "Result=exit-code", "ExecMainStatus=2", f"NRestarts={restarts}"]), out
        log = journal_after(vm, cur, fmt="cat")
        assert "ramfw: error:" in log and "mode" in log, log
        assert vm.sh("nft list table inet ramfw | grep -o 'policy=[0-9a-f]*'") == before, "the enforced ruleset changed"
    finally:
        enforce(vm, policy())


def test_reload_works_without_procps(bed):
    vm = bed
    # The image is minimal Debian: no /bin/kill (procps). The unit must not need it.
    assert not vm.run("test -e /bin/kill || test -e /usr/bin/kill").ok, "the image must lack kill(1) for this check"
    enforce(vm, policy())
    pid = main_pid(vm)
    cur = cursor(vm)
    r = vm.run("systemctl reload ramfw", timeout=120)
    assert r.ok, r.err + journal_after(vm, cur)
    wait_guest(vm, f"journalctl -u ramfw --after-cursor='{cur}' -o cat | grep -q 'reloaded (SIGHUP)'", 60,
               "the controller to log its reload")
    assert main_pid(vm) == pid, "reload restarted the process instead of reloading it"
    assert "status=203/EXEC" not in journal_after(vm, cur)


def test_security_score_matches_readme_and_the_controller_works_hardened(bed):
    vm = bed
    enforce(vm, policy())
    readme = (REPO / "README.rst").read_text()
    claimed = re.search(r"security ramfw\.service`` rates its exposure \*\*([\d.]+) \((\w+)\)\*\*", readme)
    assert claimed, "README.rst no longer states the unit's exposure score"
    out = vm.sh("systemd-analyze security --no-pager ramfw.service", timeout=120)
    got = re.search(r"Overall exposure level for ramfw\.service: ([\d.]+) (\w+)", out)
    assert got, out
    print(f"systemd-analyze security in the VM: {got.group(1)} {got.group(2)}; README: {claimed.group(1)} {claimed.group(2)}")
    assert (got.group(1), got.group(2)) == (claimed.group(1), claimed.group(2)), out
    # Under every directive the controller enforces, snoops (native nft queue) and resolves.
    st = status_json(vm)
    assert st["enforcing"] and st["backend"] == "nft" and st["controller"]["running"], st
    assert st["snoop"] == "queue" and "nft queue" in (st["snoop_reason"] or ""), st
    before = st["controller_counters"].get("snoop_answers_used", 0)
    vm.sh(f"getent ahostsv4 {ALLOWED}")
    wait_guest(vm, f"ramfw status --json | python3 -c 'import json,sys; "
                   f"sys.exit(json.load(sys.stdin)[\"controller_counters\"].get(\"snoop_answers_used\", 0) <= {before})'",
               60, "the snooper to use the answer")


def test_sigkill_is_restarted_and_the_rules_never_leave(bed):
    vm = bed
    enforce(vm, policy())
    restarts = int(vm.sh("systemctl show -p NRestarts --value ramfw"))
    # One guest command: kill, then watch the table and the unit until a new main process is up.
    out = vm.sh(
        "old=$(systemctl show -p MainPID --value ramfw); systemctl kill -s KILL --kill-who=main ramfw; "
        "checks=0; missing=0; end=$(($(date +%s) + 120)); "
        "while :; do nft list table inet ramfw >/dev/null 2>&1 || missing=$((missing + 1)); checks=$((checks + 1)); "
        "  new=$(systemctl show -p MainPID --value ramfw); st=$(systemctl is-active ramfw); "
        "  [ \"$st\" = active ] && [ \"$new\" != 0 ] && [ \"$new\" != \"$old\" ] && break; "
        "  [ $(date +%s) -lt $end ] || break; done; "
        "echo old=$old new=$new state=$st checks=$checks missing=$missing", timeout=200)
    print(out)
    fields = dict(kv.split("=", 1) for kv in out.split())
    assert fields["state"] == "active" and fields["new"] != fields["old"], out
    assert int(fields["checks"]) >= 3, out
    assert fields["missing"] == "0", f"the ruleset left the kernel while ramfw restarted: {out}"
    assert int(vm.sh("systemctl show -p NRestarts --value ramfw")) == restarts + 1


def test_sigstop_watchdog_kills_and_restarts_within_watchdogsec(bed):
    vm = bed
    enforce(vm, policy())
    watchdog = vm.sh("systemctl show -p WatchdogUSec --value ramfw").strip()
    assert watchdog == "30s", watchdog
    cur = cursor(vm)
    pid = main_pid(vm)
    stopped_at = uptime(vm)
    vm.sh("systemctl kill -s STOP --kill-who=main ramfw")
    wait_guest(vm, f"[ \"$(systemctl show -p MainPID --value ramfw)\" != {pid} ] && "
                   "[ \"$(systemctl show -p MainPID --value ramfw)\" != 0 ] && systemctl is-active -q ramfw",
               120, "systemd to restart the stopped controller")
    log = journal_after(vm, cur)
    fired = re.search(r"^\[\s*([\d.]+)\].*ramfw\.service: Watchdog timeout", log, re.M)
    assert fired, log
    after = float(fired.group(1)) - stopped_at
    print(f"watchdog fired {after:.1f} s after SIGSTOP (WatchdogSec=30s)")
    assert after <= 30.5, f"the watchdog fired {after:.1f} s after SIGSTOP, WatchdogSec is 30 s\n{log}"
    assert table_present(vm)
