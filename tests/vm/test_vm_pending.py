"""Two checks of the VM tier whose fixes are other work than this branch's; both are strict
xfails: they run, they fail today for the reason given, and the day the fix lands they XPASS,
which fails the run until the marker is removed. Neither can pass by accident.

- the resolver's backoff and summary while offline (the controller's refresh loop; on this
  branch a failed name is retried, and logged, every 5 s);
- docker.service and containerd.service drop-ins requiring ramfw, so that with an invalid
  policy docker does not start (the adversary issue's drop-ins).
"""

from __future__ import annotations

import re

import pytest

from service import ALLOWED, WEB, cursor, enforce, journal_after, policy, uptime

OFFLINE_WINDOW = 60.0  # seconds; the issue says 5 minutes: the rate below is what is checked
MAX_LINES_PER_NAME = 4  # in the window, start-up included; today's code logs 1 + 60/5 = 13


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="resolver backoff and summary are not on this branch (controller.py refresh retries every 5 s)")
def test_offline_journal_holds_a_few_lines_per_name_not_one_every_5s(bed):
    vm = bed
    names = (ALLOWED, WEB)
    vm.put("/etc/ramfw/policy.toml", policy(allow=names))
    vm.sh("ip route del default")  # no route to the resolver
    try:
        cur = cursor(vm)
        enforce(vm, policy(allow=names))
        started = uptime(vm)
        vm.sh(f"sleep {OFFLINE_WINDOW:.0f}", timeout=OFFLINE_WINDOW + 60)
        log = journal_after(vm, cur, fmt="cat")
        window = uptime(vm) - started
        per_name = {n: sum(1 for line in log.splitlines() if re.search(rf"\b{re.escape(n)}\b", line)) for n in names}
        print(f"offline {window:.0f} s: journal lines per name {per_name}; longest line {max(map(len, log.splitlines()))} chars")
        assert all(count <= MAX_LINES_PER_NAME for count in per_name.values()), (
            f"offline for {window:.0f} s the journal holds {per_name} lines per name (at most {MAX_LINES_PER_NAME} expected)\n"
            + log[-4000:]
        )
    finally:
        vm.sh("ip route replace default via 203.0.113.1")
        enforce(vm, policy())


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="docker/containerd drop-ins requiring ramfw.service are another branch's (adversary issue)")
def test_with_an_invalid_policy_docker_does_not_start_and_status_says_why(bed):
    vm = bed
    enforce(vm, policy())
    vm.sh("systemctl stop docker.socket docker.service", timeout=120)
    vm.put("/etc/ramfw/policy.toml", 'mode = "sometimes"\n')
    try:
        assert not vm.run("systemctl restart ramfw", timeout=180).ok
        r = vm.run("systemctl start docker.service", timeout=180)
        status = vm.run("systemctl status --no-pager docker.service", timeout=60).out
        assert not r.ok and vm.sh("systemctl is-active docker.service || true").strip() != "active", status
        assert "ramfw" in status, f"`systemctl status docker` does not say that ramfw failed:\n{status}"
    finally:
        enforce(vm, policy())
        vm.sh("systemctl start docker.service", timeout=180)
