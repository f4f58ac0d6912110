"""A reboot with ramfw.service enabled: the ruleset is in the kernel before docker.service starts."""

from __future__ import annotations

from service import TIMES, enforce, policy, setup_guestbed, table_present

# A probe for this test only (removed afterwards): what the kernel holds at the moment systemd
# runs docker.service's first command.
PROBE = "/etc/systemd/system/docker.service.d/50-vm-tier-probe.conf"
PROBE_TEXT = """[Service]
ExecStartPre=/bin/sh -c 'nft list table inet ramfw > /run/vm-tier-at-docker-start 2>&1; echo "rc=$?" >> /run/vm-tier-at-docker-start'
"""


def test_reboot_ruleset_is_in_the_kernel_before_docker_starts(bed):
    vm = bed
    enforce(vm, policy())
    vm.sh("systemctl enable -q docker.service ramfw.service")
    vm.put(PROBE, PROBE_TEXT)
    try:
        TIMES["reboot to agent"] = vm.reboot()
        vm.run("systemctl is-system-running --wait", timeout=300)  # the agent is up long before docker
        seen = vm.sh("cat /run/vm-tier-at-docker-start")
        assert seen.rstrip().endswith("rc=0") and "table inet ramfw" in seen and "queue" in seen, seen
        times = vm.sh(
            "systemctl show -p ActiveEnterTimestampMonotonic --value ramfw; "
            "systemctl show -p ExecMainStartTimestampMonotonic --value docker; "
            "systemctl is-active ramfw docker || true"
        ).split()
        ramfw_ready, docker_started = int(times[0]), int(times[1])
        assert times[2:] == ["active", "active"], times
        assert 0 < ramfw_ready < docker_started, f"ramfw active at {ramfw_ready} µs, dockerd started at {docker_started} µs"
        print(f"after reboot: ramfw active at {ramfw_ready / 1e6:.1f} s, dockerd started at {docker_started / 1e6:.1f} s (monotonic)")
    finally:
        vm.run(f"rm -f {PROBE} && systemctl daemon-reload")
        setup_guestbed(vm)  # the reboot took the testbed's namespace and services away
    assert table_present(vm)
