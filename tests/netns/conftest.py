"""Fixtures for the namespace tier: every test here builds its own namespaces and must leave the
machine's own namespace exactly as it found it (asserted around every test module)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from testbed import root_ns_fingerprint, testbed  # noqa: E402,F401  (fixture re-export)


@pytest.fixture(scope="module", autouse=True)
def root_namespace_untouched():
    if os.geteuid() != 0:
        pytest.fail("the namespace tier needs root (run: sudo scripts/test)")
    before = root_ns_fingerprint()
    yield
    assert root_ns_fingerprint() == before, "a test changed the machine's own network namespace"


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    d = tmp_path / "state"
    monkeypatch.setenv("RAMFW_STATE_DIR", str(d))
    return d

