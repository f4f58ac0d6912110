"""The VM tier: Debian 12 under qemu (its own 6.1 kernel, systemd 252 as PID 1), ramfw installed
from this checkout into /opt/ramfw, the real unit from `ramfw install`.

One boot per session (the `vm` fixture); the image is built or found in the cache first
(scripts/vm/build). Like every root tier it fails, never skips, without root or without qemu.
A failed test's report carries the guest's journal. The tier's time (build, probe, boot, checks)
is printed at the end of the run.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from machine import Machine, MachineError, build_image, kvm_works  # noqa: E402
from service import NOTES, TIMES, setup_guestbed  # noqa: E402

_ACTIVE: list[Machine] = []


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "vm" in item.path.parts and "tests" in item.path.parts:
            item.add_marker(pytest.mark.root)


@pytest.fixture(scope="session")
def vm():
    if os.geteuid() != 0:
        pytest.fail("the VM tier needs root (run: sudo scripts/test)")
    for tool in ("qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4"):
        if not shutil.which(tool):
            pytest.fail(f"the VM tier needs {tool}: run scripts/bootstrap (it installs qemu-system-x86, qemu-utils, debootstrap)")
    t_start = time.monotonic()
    t0 = time.monotonic()
    image = build_image()
    TIMES["image (build or cache)"] = time.monotonic() - t0
    t0 = time.monotonic()
    use_kvm, why = kvm_works(image)
    TIMES["KVM probe"] = time.monotonic() - t0
    accel = "kvm" if use_kvm else "tcg"
    NOTES.append(f"accelerator {accel}: {why}")
    machine = Machine(image, accel=accel)
    _ACTIVE.append(machine)
    try:
        TIMES["boot to agent"] = machine.boot()
        yield machine
    finally:
        t0 = time.monotonic()
        _ACTIVE.remove(machine)
        machine.close()
        TIMES["power off"] = time.monotonic() - t0
        TIMES["VM tier total"] = time.monotonic() - t_start


@pytest.fixture(scope="session")
def bed(vm):
    """The small internet inside the guest: namespace `inet` with DNS, two registries holding
    tiny:1, and a web server (tests/vm/guestbed.sh). Returns the Machine."""
    t0 = time.monotonic()
    setup_guestbed(vm)
    TIMES["guest testbed"] = time.monotonic() - t0
    return vm


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _ACTIVE and "vm" in item.path.parts:
        report.sections.append(("guest journal (last 400 lines)", _ACTIVE[0].journal(400)))


def pytest_terminal_summary(terminalreporter):
    if not TIMES:
        return
    terminalreporter.section("VM tier time")
    for note in NOTES:
        terminalreporter.write_line(note)
    for what, secs in TIMES.items():
        terminalreporter.write_line(f"{secs:7.1f} s  {what}")


@pytest.fixture(autouse=True)
def _time_each_check(request):
    t0 = time.monotonic()
    yield
    if "vm" in request.node.path.parts:
        TIMES[f"check {request.node.name}"] = time.monotonic() - t0


__all__ = ["Machine", "MachineError"]
