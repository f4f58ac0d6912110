"""Shared test setup. Tests under tests/netns and tests/e2e need root: they fail (never skip)
without it, so a green run always means the kernel paths were exercised. A failed test that
started controllers through tests/harness.py gets their logs in its report."""

import os
import sys

import pytest

PRIVILEGED_DIRS = ("netns", "e2e")


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = item.path.parts
        if any(d in parts for d in PRIVILEGED_DIRS):
            item.add_marker(pytest.mark.root)


@pytest.fixture(autouse=True)
def _require_root(request):
    if request.node.get_closest_marker("root") and os.geteuid() != 0:
        pytest.fail("this test needs root (run: sudo scripts/test); privileged tests never skip")


def pytest_runtest_setup(item):
    harness = sys.modules.get("harness")
    if harness is not None:
        harness.started_in_this_test.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that started controllers (tests/harness.py) gets their logs' tails in its
    report, whether or not the test thought to print them."""
    outcome = yield
    report = outcome.get_result()
    harness = sys.modules.get("harness")
    if report.failed and harness is not None:
        for ctl in harness.started_in_this_test:
            report.sections.append((f"ramfw run log, {ctl.netns} ({ctl.log_path})", ctl.output()[-4000:]))
