"""Fixtures for the unit tier (no root, no kernel): an Enforcer over a fake backend with an
injected clock, its state files in a temporary directory, conntrack and the retiring of other
backends recorded instead of done (both would reach the machine's own namespace here), and a
resolver that answers from a table."""

from __future__ import annotations

import pytest

from fakes import Clock, ConntrackRecorder, FakeBackend, TableResolver, parse_policy
from ramfw.daemon import enforcer as enforcer_mod
from ramfw.daemon import state as state_file
from ramfw.daemon.enforcer import Enforcer, Staged


@pytest.fixture
def resolver(monkeypatch):
    """The table the Enforcer's resolver answers from: {name: Resolution | "error text"}."""
    monkeypatch.setattr(TableResolver, "answers", {})
    monkeypatch.setattr(TableResolver, "asked", [])
    monkeypatch.setattr(enforcer_mod, "Resolver", TableResolver)
    return TableResolver.answers


@pytest.fixture
def conntrack(monkeypatch) -> ConntrackRecorder:
    recorder = ConntrackRecorder()
    monkeypatch.setattr(enforcer_mod, "cut_connections", recorder)
    monkeypatch.setattr(enforcer_mod, "retire_others", lambda netns, backend: [])
    return recorder


@pytest.fixture
def state_root(tmp_path, monkeypatch):
    """state.json and friends go to a temporary directory (the real files, not a fake)."""
    root = tmp_path / "state"
    monkeypatch.setattr(state_file, "STATE_ROOT", str(root))
    return root


@pytest.fixture
def make_enforcer(conntrack, state_root, resolver):
    """make_enforcer(policy_text, snoop="queue", clock=None) -> (enforcer, clock): a started
    Enforcer (its first commit done) over a FakeBackend."""

    def make(policy_text: str, snoop: str = "queue", clock: Clock | None = None):
        clock = clock or Clock()
        enf = Enforcer(None, FakeBackend(), "fake", clock=clock)
        enf.set_policy(parse_policy(policy_text, "test.toml"))
        enf.commit(Staged(enf.policy, snoop))
        return enf, clock

    return make
