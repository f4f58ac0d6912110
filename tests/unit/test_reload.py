"""Reload and rollback through the real Controller.reload(), with a fake backend, a resolver that
answers from a table and an injected clock (no root): a policy the kernel refuses, or that does
not load, leaves the previous policy, cache, refresh schedule and trusted servers in force, and
nothing is learned under the rejected policy."""

from __future__ import annotations

import logging

import pytest

from fakes import Clock, TableResolver
from ramfw.daemon.controller import Controller
from ramfw.daemon.enforcer import Staged
from ramfw.daemon.refresh import RefreshSchedule
from ramfw.daemon.source import FileSource
from ramfw.dns.resolver import Resolution
from ramfw.dns.snooper import Snooper
from ramfw.errors import BackendError

OLD = """
allow = ["api.old.test", "cdn.old.test"]
[dns]
servers = ["198.51.100.53"]
min_ttl = 30
grace = 0
"""
NEW = """
allow = ["api.new.test"]
[dns]
servers = ["198.51.100.54"]
min_ttl = 30
grace = 0
"""


@pytest.fixture(autouse=True)
def no_kernel_sockets(monkeypatch):
    """A unit test must not bind NFQUEUE/NFLOG in the machine's own namespace: a reload that
    would restart the snooper or the audit reader fails here instead."""
    from ramfw.daemon.audit import AuditLog

    def refuse(self):
        raise AssertionError("a unit test opened a kernel socket (the snooper or audit would bind in the machine's namespace)")

    monkeypatch.setattr(Snooper, "open", refuse)
    monkeypatch.setattr(AuditLog, "open", refuse)


@pytest.fixture
def controller(tmp_path, make_enforcer, resolver):
    """A Controller over a started Enforcer (fake backend), its policy in a real file, a
    snooper that was never opened (reload only tells it the trusted servers)."""
    resolver["api.old.test"] = Resolution("api.old.test", [("198.51.100.10", 60)], ("api.old.test",))
    resolver["cdn.old.test"] = Resolution("cdn.old.test", [("198.51.100.11", 600)], ("cdn.old.test",))
    path = tmp_path / "policy.toml"
    path.write_text(OLD)
    clock = Clock()
    ctl = Controller(str(path), None)
    ctl.source = FileSource(str(path))
    ctl.schedule = RefreshSchedule(clock=clock)
    enf, _ = make_enforcer(OLD, clock=clock)
    staged = enf.stage(enf.policy, "queue")
    enf.commit(staged)
    ctl.schedule.record(staged.results, enf.policy.dns.min_ttl, announce=False)
    ctl.enforcer = enf
    ctl.snooper = Snooper(None, enf.trusted_servers(), enf.credit_answer, "queue", 0, 1, 2)
    return ctl, path, clock


def snapshot(ctl: Controller, clock: Clock) -> dict:
    """Everything a refused reload must leave as it was."""
    enf = ctl.enforcer
    clock.advance(0)
    return {
        "policy": enf.policy,
        "desired": enf.desired,
        "snoop_mode": enf.snoop_mode,
        "sets": {k: dict(v) for k, v in enf.backend.sets.items()},
        "cache": enf.cache.snapshot(),
        "ips_added": enf.counters["ips_added"],
        "schedule": dict(ctl.schedule._next),
        "trusted": ctl.snooper.trusted,
    }


def test_a_policy_the_kernel_refuses_leaves_everything_as_it_was(controller, resolver, caplog):
    ctl, path, clock = controller
    before = snapshot(ctl, clock)
    resolver["api.new.test"] = Resolution("api.new.test", [("198.51.100.20", 60)], ("api.new.test",))
    path.write_text(NEW)
    ctl.enforcer.backend.fail_next_apply = True
    caplog.set_level(logging.ERROR)

    assert ctl.reload("test") is False

    assert snapshot(ctl, clock) == before
    assert ctl.enforcer.cache.ips_for("api.new.test") == {}  # resolved, but not learned
    assert ctl.counters["apply_failures"] == 1 and ctl.counters["reloads"] == 0
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "previous ruleset stays in force" in line and "fake: refused" in line


def test_a_policy_that_does_not_load_is_refused_before_anything_is_resolved(controller, resolver, caplog):
    ctl, path, clock = controller
    before = snapshot(ctl, clock)
    asked = list(TableResolver.asked)
    path.write_text('allow = ["api.new.test"]\nmode = "sometimes"\n')
    caplog.set_level(logging.ERROR)

    assert ctl.reload("test") is False

    assert snapshot(ctl, clock) == before
    assert TableResolver.asked == asked  # no lookup for a refused policy
    assert ctl.counters["reloads_refused"] == 1
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "refused, still enforcing" in line and "mode" in line


def test_an_answer_snooped_while_a_reload_is_refused_is_still_programmed(controller, resolver):
    ctl, path, clock = controller
    enf = ctl.enforcer
    enf.credit_answer("cdn.old.test", ["cdn.old.test"], [("198.51.100.12", 60)], defer=True)
    path.write_text(NEW)
    enf.backend.fail_next_apply = True
    assert ctl.reload("test") is False
    enf.flush()  # the old policy is still the one in force: the pending element is valid
    assert "198.51.100.12" in enf.backend.sets["allow4"]
    assert enf.counters["pending_dropped"] == 0


def test_after_a_refused_reload_the_next_one_replaces_policy_cache_and_schedule(controller, resolver):
    ctl, path, clock = controller
    resolver["api.new.test"] = Resolution("api.new.test", [("198.51.100.20", 60)], ("api.new.test",))
    path.write_text(NEW)
    ctl.enforcer.backend.fail_next_apply = True
    assert ctl.reload("first") is False

    assert ctl.reload("second") is True

    enf = ctl.enforcer
    assert enf.policy.classify("api.new.test")[0] == "allowed" and enf.policy.classify("api.old.test")[0] == "unlisted"
    assert set(enf.backend.sets["allow4"]) == {"198.51.100.20"}
    assert enf.cache.ips_for("api.old.test") == {} and set(enf.cache.ips_for("api.new.test")) == {"198.51.100.20"}
    assert set(ctl.schedule._next) == {"api.new.test"}  # the old names are no longer refreshed
    assert ctl.snooper.trusted == frozenset({"198.51.100.54"})
    assert ctl.counters["reloads"] == 1 and ctl.counters["apply_failures"] == 1


def test_a_refused_apply_at_repair_keeps_the_generation(controller):
    """A repair is a commit of the policy in force; when the kernel refuses it, the
    generation and cache stay (the next check tries again)."""
    ctl, path, clock = controller
    enf = ctl.enforcer
    before = snapshot(ctl, clock)
    enf.backend.fail_next_apply = True
    with pytest.raises(BackendError):
        enf.commit(Staged(enf.policy, enf.snoop_mode))
    assert snapshot(ctl, clock) == before


def test_a_step_that_keeps_failing_does_not_starve_the_repair(controller, monkeypatch):
    """A refresh the kernel keeps refusing (its sets were flushed away) must not keep the main
    loop from reaching the repair that would put them back: each step runs on its own."""
    ctl, _path, clock = controller
    ran = []

    def refused():
        ran.append("refresh")
        raise BackendError("nf_tables refused the element change: No such file or directory")

    monkeypatch.setattr(ctl, "_refresh_due", refused)
    monkeypatch.setattr(ctl, "repair_if_needed", lambda: ran.append("repair"))
    last = {"check": 0.0, "gc": 0.0}
    for n in range(3):
        ctl._one_pass(ctl.check_interval * (n + 1), last)
    assert ran.count("repair") == 3 and ran.count("refresh") == 3
    assert ran[0] == "repair", "the repair runs before the refresh it would unblock"
    assert ctl.counters["loop_errors"] == 3
