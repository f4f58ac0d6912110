"""Real `docker pull`s by the guest's systemd-managed dockerd through the systemd-managed ramfw,
from registries in the guest's `inet` namespace (tests/vm/guestbed.sh): with the default output
scope, and with scope.cgroup = "system.slice/docker.service" (nft matches cgroup v2 paths under
/sys/fs/cgroup, which a booted Debian 12 mounts)."""

from __future__ import annotations

import time

from service import ALLOWED, BLOCKED, IMAGE, WEB_IP, enforce, policy, status_json, wait_guest

REFUSED_WITHIN = 15.0  # seconds; under TCG a refused pull takes a few (docker's own start-up of the request)


def pull(vm, registry: str):
    """docker pull registry:5000/tiny:1 (then drop the image, so the next pull is real again)."""
    t0 = time.monotonic()
    r = vm.run(f"docker pull {registry}:5000/{IMAGE}", timeout=180)
    took = time.monotonic() - t0
    vm.run(f"docker rmi -f {registry}:5000/{IMAGE} >/dev/null 2>&1")
    return r, took


def assert_pull_works(vm, registry: str) -> None:
    r, took = pull(vm, registry)
    assert r.ok, f"docker pull from {registry} failed:\n{r.out}\n{r.err}"
    print(f"docker pull {registry}: ok in {took:.1f} s")


def assert_pull_refused(vm, registry: str) -> None:
    r, took = pull(vm, registry)
    assert not r.ok, f"docker pull from {registry} should have been refused:\n{r.out}"
    assert "connection refused" in r.err, r.err
    print(f"docker pull {registry}: refused in {took:.1f} s")
    assert took < REFUSED_WITHIN, f"the refused pull took {took:.1f} s: it should fail at once, not time out"


def test_docker_pull_allowed_and_refused_through_the_service(bed):
    vm = bed
    enforce(vm, policy())
    vm.sh("systemctl start docker")
    assert_pull_works(vm, ALLOWED)
    assert_pull_refused(vm, BLOCKED)
    # The refusal is an audit event naming the registry's host name.
    wait_guest(vm, f"ramfw events --json | grep -q '\"hostname\": \"{BLOCKED}\"'", 90, "ramfw events to name the refused registry")


def test_cgroup_scope_docker_service_with_nft(bed):
    vm = bed
    enforce(vm, policy(cgroup="system.slice/docker.service"))
    vm.sh("systemctl start docker")
    st = status_json(vm)
    assert st["backend"] == "nft", st
    # docker requires ramfw, so its cgroup appears only after ramfw started (filtering every
    # process meanwhile); the next check loads the rule that matches it
    wait_guest(vm, "nft list table inet ramfw | grep -q system.slice/docker.service", 30,
               "the ruleset to match docker.service's cgroup once docker started")
    assert_pull_works(vm, ALLOWED)
    assert_pull_refused(vm, BLOCKED)
    # Another service, outside docker's cgroup, reaches a non-registry address...
    r = vm.run(f"systemd-run --quiet --wait --pipe --unit=vm-tier-web-check timeout 20 busybox wget -q -O - http://{WEB_IP}/", timeout=90)
    assert r.ok and "web.test says hello" in r.out, f"a service outside docker's cgroup could not reach {WEB_IP}: {r.out}{r.err}"
    # ... while the same request from inside docker.service's cgroup is refused.
    r = vm.run("sh -c 'echo $$ > /sys/fs/cgroup/system.slice/docker.service/cgroup.procs && "
               f"exec timeout 20 busybox wget -q -O - http://{WEB_IP}/'", timeout=90)
    assert not r.ok and "refused" in r.err.lower(), f"from docker's cgroup: rc={r.rc} {r.out}{r.err}"
