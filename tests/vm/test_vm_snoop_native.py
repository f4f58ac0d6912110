"""DNS snooping with nftables' own `queue` statement, which Debian 12's kernel has (the development
machines' kernel lacks it, so there only the xtables NFQUEUE fallback ever ran)."""

from __future__ import annotations

import re

from service import TIMES, enforce, policy, status_json


def test_service_snoops_with_native_nft_queue_and_no_xtables_chain(bed):
    vm = bed
    enforce(vm, policy())
    st = status_json(vm)
    assert st["snoop"] == "queue" and st["snoop_reason"] == "queue via nft queue", st
    assert "snoop queue via nft queue" in vm.sh("ramfw status", timeout=120)
    table = vm.sh("nft list table inet ramfw")
    assert re.search(r"th sport 53 .*queue flags bypass to \d+", table), table
    # No xtables NFQUEUE chain anywhere (that is the fallback for kernels without nft queue).
    ruleset = vm.sh("nft list ruleset")
    assert "RAMFW-DNSQ" not in ruleset and "NFQUEUE" not in ruleset, ruleset


def test_2000_ttl1_lookup_then_connect_cycles_native_queue(bed):
    """tests/netns/test_snoop.py's 2,000-cycle test, run inside the guest on its kernel: the
    DNS server, client and target namespaces are built in the guest; zero failures."""
    vm = bed
    # The systemd-managed ramfw steps aside: the in-guest test checks that the guest's own
    # namespace is unchanged around it, and the service's sets change as it learns.
    vm.sh("systemctl stop ramfw && ramfw down", timeout=120)
    try:
        r = vm.run(
            "cd /opt/ramfw/src && PYTHONDONTWRITEBYTECODE=1 /opt/ramfw/venv/bin/python -m pytest -p no:cacheprovider "
            "-q -s 'tests/netns/test_snoop.py::test_random_ip_ttl1_queue_mode_zero_failures[nft]' 2>&1",
            timeout=900,
        )
        print(r.out[-3000:])
        assert r.ok and re.search(r"^1 passed", r.out, re.M), r.out[-6000:]
        m = re.search(r"queue mode, 2000 cycles: ([\d.]+)s total.*failures (\d+)", r.out)
        assert m and m.group(2) == "0", r.out[-6000:]
        TIMES["(in guest) 2000 cycles"] = float(m.group(1))
        # The controller that ran them used the native path, not the xtables fallback.
        assert "snoop queue via nft queue" in r.out, r.out[-6000:]
    finally:
        enforce(vm, policy())
