"""The testbed's own guards, which need no namespace (moved from tests/netns/test_testbed.py):
test traffic and DNS answers stay inside the documentation ranges of TESTBED.md."""

import pytest

from testbed import ConnectResult, Testbed


def test_connect_result_is_a_dataclass():
    r = ConnectResult(False, "timeout", 1.0)
    assert r.reply == b""


def test_set_names_rejects_non_documentation_addresses():
    testbed = Testbed()  # never started: the checks run before anything is touched
    with pytest.raises(ValueError):
        testbed.set_names({"x.example.test": ["192.0.2.1"]})
    with pytest.raises(ValueError):
        testbed.set_names({"x.example.test": ["10.0.0.1"]})
    with pytest.raises(ValueError):
        testbed.add_address("203.0.113.50")
