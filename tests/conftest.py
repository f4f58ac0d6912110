"""Shared test setup. Tests under tests/netns and tests/e2e need root: they fail (never skip)
without it, so a green run always means the kernel paths were exercised."""

import os

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
