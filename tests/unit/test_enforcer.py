"""The Enforcer's crediting, expiry, transaction and cutting logic, with a fake backend and a
clock the test moves (no root, no kernel): what reaches the "kernel" sets, with which timeout,
and which live connections a new policy cuts."""

from __future__ import annotations

import pytest

from fakes import Clock, FakeBackend, parse_policy
from ramfw.daemon import enforcer as enforcer_mod
from ramfw.daemon.enforcer import Enforcer, Staged
from ramfw.dns.resolver import Resolution
from ramfw.plan import MIN_ELEMENT_TIMEOUT


SERVERS = '[dns]\nservers = ["198.51.100.53"]\n'
POLICY = """
allow = ["**.reg.test", "hub.test"]
block = ["bad.reg.test", "evil.cdn.test"]
[dns]
servers = ["198.51.100.53"]
min_ttl = 30
grace = 120
"""
DENY = """
mode = "denylist"
block = ["bad.reg.test", "**.evil.test"]
[dns]
servers = ["198.51.100.53"]
min_ttl = 30
grace = 0
"""


def policy(text: str, source: str = "new.toml"):
    return parse_policy(text, source)


# ---- crediting ---------------------------------------------------------------------------------


def test_addresses_are_credited_to_the_queried_name_through_its_cname_chain(make_enforcer):
    enf, _ = make_enforcer(POLICY)
    added, outcome = enf.credit_answer("www.reg.test", ["www.reg.test", "edge.cdn.test", "e1.cdn.test"],
                                       [("198.51.100.10", 60), ("2001:db8:100::10", 60)])
    assert (added, outcome) == (2, "ok")
    assert set(enf.backend.sets["allow4"]) == {"198.51.100.10"}
    assert set(enf.backend.sets["allow6"]) == {"2001:db8:100::10"}
    # the queried name owns them; the CDN names the chain went through are only the path
    assert enf.cache.names_for("198.51.100.10") == {"www.reg.test"}
    assert enf.cache.ips_for("edge.cdn.test") == {}


def test_a_chain_that_reaches_an_allowed_name_from_an_unlisted_one_adds_nothing(make_enforcer):
    enf, _ = make_enforcer(POLICY)
    assert enf.credit_answer("mirror.other.test", ["mirror.other.test", "www.reg.test"],
                             [("198.51.100.11", 60)]) == (0, "not_listed")
    assert enf.backend.sets["allow4"] == {}


def test_blocked_and_unlisted_names_add_nothing(make_enforcer):
    enf, _ = make_enforcer(POLICY)
    assert enf.credit_answer("bad.reg.test", ["bad.reg.test"], [("198.51.100.9", 60)]) == (0, "not_listed")
    assert enf.credit_answer("x.other.test", ["x.other.test"], [("198.51.100.10", 60)]) == (0, "not_listed")
    assert enf.credit_answer("a.reg.test", ["a.reg.test", "bad.reg.test"], [("198.51.100.11", 60)]) == (0, "blocked_chain")
    assert enf.credit_answer("b.reg.test", ["b.reg.test", "x.cdn.test", "evil.cdn.test"],
                             [("198.51.100.12", 60)]) == (0, "blocked_chain")
    assert enf.backend.sets["allow4"] == {} and enf.backend.batches == []
    assert len(enf.cache) == 0  # nothing remembered either


def test_denylist_puts_the_first_blocked_name_of_the_chain_into_the_blocked_sets(make_enforcer):
    enf, _ = make_enforcer(DENY)
    assert enf.credit_answer("pull.reg.test", ["pull.reg.test", "x.evil.test"], [("198.51.100.13", 60)]) == (1, "ok")
    assert set(enf.backend.sets["block4"]) == {"198.51.100.13"}
    assert enf.cache.names_for("198.51.100.13") == {"x.evil.test"}
    # a name nothing blocks teaches a denylist nothing
    assert enf.credit_answer("fine.test", ["fine.test"], [("198.51.100.14", 60)]) == (0, "not_listed")
    assert "198.51.100.14" not in enf.backend.sets["block4"]


# ---- timeouts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ttl, timeout", [(1, 30 + 120), (29, 30 + 120), (300, 300 + 120)])
def test_element_timeout_is_the_ttl_raised_to_the_floor_plus_grace(make_enforcer, ttl, timeout):
    enf, clock = make_enforcer(POLICY)
    enf.credit_answer("a.reg.test", ["a.reg.test"], [("198.51.100.20", ttl)])
    assert enf.backend.sets["allow4"]["198.51.100.20"] == timeout
    assert enf.cache.ips_for("a.reg.test")["198.51.100.20"].expiry == pytest.approx(clock() + timeout)


def test_zero_grace_and_zero_floor_still_keep_an_element_a_few_seconds(make_enforcer):
    enf, _ = make_enforcer('allow = ["a.reg.test"]\n[dns]\nservers = ["198.51.100.53"]\nmin_ttl = 0\ngrace = 0\n')
    enf.credit_answer("a.reg.test", ["a.reg.test"], [("198.51.100.21", 0)])
    assert enf.backend.sets["allow4"]["198.51.100.21"] == MIN_ELEMENT_TIMEOUT


def test_a_later_answer_refreshes_the_expiry_and_an_immediate_repeat_costs_no_kernel_write(make_enforcer):
    enf, clock = make_enforcer(POLICY)
    enf.credit_answer("a.reg.test", ["a.reg.test"], [("198.51.100.22", 60)])
    batches = len(enf.backend.batches)
    clock.advance(1)
    # answered again a second later: the expiry would move by 1 s of 180, not worth a transaction
    assert enf.credit_answer("a.reg.test", ["a.reg.test"], [("198.51.100.22", 60)]) == (0, "ok")
    assert len(enf.backend.batches) == batches
    clock.advance(100)
    assert enf.credit_answer("a.reg.test", ["a.reg.test"], [("198.51.100.22", 60)]) == (1, "ok")
    assert enf.backend.batches[-1] == {"allow4": [enforcer_mod.Element("198.51.100.22", 180)]}
    assert enf.cache.ips_for("a.reg.test")["198.51.100.22"].expiry == pytest.approx(clock() + 180)
    # a shorter TTL never shortens what is known
    enf.credit_answer("a.reg.test", ["a.reg.test"], [("198.51.100.22", 1)])
    assert enf.cache.ips_for("a.reg.test")["198.51.100.22"].expiry == pytest.approx(clock() + 180)


def test_an_expired_address_leaves_the_next_plan(make_enforcer):
    enf, clock = make_enforcer(POLICY)
    enf.credit_answer("a.reg.test", ["a.reg.test"], [("198.51.100.23", 60)])
    clock.advance(179)
    assert "198.51.100.23" in {e.ip for e in enf.plan().sets["allow4"]}
    clock.advance(2)
    enf.cache.gc()
    assert "198.51.100.23" not in {e.ip for e in enf.apply().sets["allow4"]}
    assert "198.51.100.23" not in enf.backend.sets["allow4"]
    assert enf.cache.names_ever_for("198.51.100.23") == {"a.reg.test"}  # but whose it was is kept


def test_deferred_answers_reach_the_kernel_in_one_batch_at_flush(make_enforcer):
    enf, _ = make_enforcer(POLICY)
    for i in range(5):
        enf.credit_answer(f"n{i}.reg.test", [f"n{i}.reg.test"], [(f"198.51.100.{30 + i}", 60)], defer=True)
    assert enf.backend.sets["allow4"] == {} and enf.backend.batches == []
    enf.flush()
    assert len(enf.backend.batches) == 1
    assert set(enf.backend.sets["allow4"]) == {f"198.51.100.{30 + i}" for i in range(5)}


def test_pending_elements_of_a_replaced_policy_are_not_programmed(make_enforcer):
    enf, _ = make_enforcer(POLICY)
    enf.credit_answer("a.reg.test", ["a.reg.test"], [("198.51.100.40", 60)], defer=True)
    enf.commit(Staged(policy('allow = ["other.test"]\n' + SERVERS), "queue"))
    enf.flush()
    assert "198.51.100.40" not in enf.backend.sets["allow4"]
    assert enf.counters["pending_dropped"] == 1


# ---- stage and commit --------------------------------------------------------------------------


def test_stage_resolves_without_learning_and_commit_learns_under_the_new_policy(make_enforcer, resolver):
    enf, clock = make_enforcer(POLICY)
    new = policy('allow = ["api.new.test", "gone.new.test"]\nblock = ["bad.new.test"]\n'
                 '[dns]\nservers = ["198.51.100.53"]\nmin_ttl = 10\ngrace = 5\n')
    resolver["api.new.test"] = Resolution("api.new.test", [("198.51.100.50", 1)], ("api.new.test", "edge.cdn.test"))
    resolver["gone.new.test"] = "NoNameservers: All nameservers failed to answer the query"
    resolver["bad.new.test"] = Resolution("bad.new.test", [("198.51.100.51", 60)], ("bad.new.test",))

    staged = enf.stage(new, "log")
    assert enf.policy is not new and enf.cache.ips_for("api.new.test") == {}  # nothing learned yet
    assert enf.counters["resolve_failures"] == 1
    assert [n for n, _, _ in staged.learned] == ["api.new.test", "bad.new.test"]  # blocked: kept for conflicts

    desired = enf.commit(staged)
    assert enf.policy is new and enf.snoop_mode == "log" and enf.desired is desired
    # the new policy's floor and grace: max(1, 10) + 5
    assert enf.backend.sets["allow4"] == {"198.51.100.50": 15}
    assert enf.cache.ips_for("api.new.test")["198.51.100.50"].expiry == pytest.approx(clock() + 15)
    assert "198.51.100.51" not in enf.backend.sets["allow4"]


def test_a_name_resolving_through_a_blocked_name_is_refused_at_stage(make_enforcer, resolver):
    enf, _ = make_enforcer(POLICY)
    resolver["a.reg.test"] = Resolution("a.reg.test", [("198.51.100.52", 60)], ("a.reg.test", "bad.reg.test"))
    staged = enf.stage(policy('allow = ["a.reg.test"]\nblock = ["bad.reg.test"]\n' + SERVERS), "queue")
    assert staged.learned == [] and enf.counters["refused_answers"] == 1


def test_a_new_policy_forgets_what_it_no_longer_lists(make_enforcer):
    enf, _ = make_enforcer(POLICY)
    enf.credit_answer("a.reg.test", ["a.reg.test"], [("198.51.100.53", 60)])
    enf.credit_answer("hub.test", ["hub.test"], [("198.51.100.54", 60)])
    enf.commit(Staged(policy('allow = ["hub.test"]\n' + SERVERS), "queue"))
    assert enf.cache.ips_for("a.reg.test") == {}
    assert set(enf.cache.ips_for("hub.test")) == {"198.51.100.54"}
    assert set(enf.backend.sets["allow4"]) == {"198.51.100.54"}


# ---- which connections a new policy cuts -------------------------------------------------------


def learn_then_age_out(enf, clock):
    enf.credit_answer("cdn.reg.test", ["cdn.reg.test"], [("198.51.100.60", 1)])
    enf.credit_answer("hub.test", ["hub.test"], [("198.51.100.61", 1)])
    enf.commit(Staged(enf.policy, "queue"))  # both in the enforced sets
    clock.advance(1000)
    enf.cache.gc()  # both aged out of the cache, so the next plan lacks them


def test_an_unchanged_policy_cuts_nothing_even_when_addresses_aged_out(make_enforcer, conntrack):
    enf, clock = make_enforcer(POLICY)
    learn_then_age_out(enf, clock)
    enf.commit(Staged(enf.policy, "queue"))  # SIGHUP, a touched file, a repair: same policy
    assert conntrack.last == set()


def test_cut_only_the_addresses_of_names_the_new_policy_refuses(make_enforcer, conntrack):
    enf, clock = make_enforcer(POLICY)
    learn_then_age_out(enf, clock)
    enf.commit(Staged(policy('allow = ["hub.test"]\n' + SERVERS), "queue"))
    # cdn.reg.test is no longer allowed: cut; hub.test still is: its live pull goes on
    assert conntrack.last == {"198.51.100.60"}


def test_addresses_that_left_the_sets_long_ago_are_cut_when_their_names_are_removed(make_enforcer, conntrack):
    enf, clock = make_enforcer(POLICY)
    learn_then_age_out(enf, clock)
    enf.commit(Staged(enf.policy, "queue"))  # the sets no longer hold either address
    assert conntrack.last == set()
    enf.commit(Staged(policy('allow = ["hub.test"]\n' + SERVERS), "queue"))
    assert conntrack.last == {"198.51.100.60"}  # found by the address memory, not the sets


def test_an_address_credited_to_an_allowed_and_a_removed_name_keeps_its_connections(make_enforcer, conntrack):
    enf, clock = make_enforcer(POLICY)
    enf.credit_answer("a.reg.test", ["a.reg.test"], [("198.51.100.62", 60)])
    enf.credit_answer("hub.test", ["hub.test"], [("198.51.100.62", 60)])
    enf.commit(Staged(policy('allow = ["hub.test"]\n' + SERVERS), "queue"))
    assert conntrack.last == set()


def test_denylist_cuts_what_became_blocked(make_enforcer, conntrack):
    enf, _ = make_enforcer(DENY)
    enf.credit_answer("x.evil.test", ["x.evil.test"], [("198.51.100.63", 60)])
    enf.commit(Staged(enf.policy, "queue"))  # the first plan that holds it: a new block, cut
    assert conntrack.last == {"198.51.100.63"}
    enf.commit(Staged(enf.policy, "queue"))
    assert conntrack.last == set()  # blocked before, blocked now: nothing new to cut
    enf.commit(Staged(policy(DENY.replace('"**.evil.test"', '"**.evil.test", "new.test"')), "queue",
                      learned=[("new.test", ("new.test",), [("198.51.100.64", 60)])]))
    assert conntrack.last == {"198.51.100.64"}


def test_switching_from_denylist_to_allowlist_cuts_the_blocked_addresses(make_enforcer, conntrack):
    enf, _ = make_enforcer(DENY)
    enf.credit_answer("x.evil.test", ["x.evil.test"], [("198.51.100.65", 60)])
    enf.commit(Staged(policy('allow = ["hub.test"]\n' + SERVERS), "queue"))
    assert "198.51.100.65" in conntrack.last


# ---- restart: what state.json brings back -------------------------------------------------------


def test_a_restart_restores_learned_addresses_with_their_expiry(make_enforcer, conntrack):
    enf, clock = make_enforcer(POLICY)
    enf.credit_answer("a.reg.test", ["a.reg.test", "edge.cdn.test"], [("198.51.100.70", 300)])
    enf.credit_answer("short.reg.test", ["short.reg.test"], [("198.51.100.71", 1)])
    clock.advance(100)
    enf.cache.gc()
    enf.save_state()

    # a new process: another monotonic clock origin, the same wall clock
    later = Clock(50.0)
    again = Enforcer(None, FakeBackend(), "fake", clock=later)
    again.set_policy(policy(POLICY, "test.toml"))
    assert again.restore_from_state() == 2
    assert again.cache.ips_for("a.reg.test")["198.51.100.70"].expiry == pytest.approx(later() + 320, abs=2)
    assert set(again.cache.ips_for("short.reg.test")) == {"198.51.100.71"}
    # the first commit keeps them in the sets and, the policy being the same, cuts nothing
    again.commit(Staged(again.policy, "queue"))
    assert {"198.51.100.70", "198.51.100.71"} <= set(again.backend.sets["allow4"])
    assert conntrack.last == set()


def test_a_restart_under_a_narrower_policy_restores_only_what_it_lists(make_enforcer):
    enf, _ = make_enforcer(POLICY)
    enf.credit_answer("a.reg.test", ["a.reg.test"], [("198.51.100.72", 300)])
    enf.credit_answer("hub.test", ["hub.test"], [("198.51.100.73", 300)])
    enf.save_state()
    again = Enforcer(None, FakeBackend(), "fake", clock=Clock())
    again.set_policy(policy('allow = ["hub.test"]\n' + SERVERS))
    assert again.restore_from_state() == 1
    assert again.cache.ips_for("a.reg.test") == {}
    # but whose the address was is remembered: the first commit can cut it
    assert again.cache.names_ever_for("198.51.100.72") == {"a.reg.test"}


def test_restore_survives_junk_in_the_state_file(make_enforcer, monkeypatch):
    """Damaged entries cost only themselves."""
    import time

    enf, _ = make_enforcer(POLICY)
    wall = time.time()
    saved = {
        "cache": {
            "a.reg.test": {"198.51.100.1": wall + 100},
            "gone.reg.test": {"198.51.100.2": wall - 5},  # expired meanwhile
            "x.other.test": {"198.51.100.3": wall + 100},  # not in this policy
            "junk.reg.test": {"not an ip": wall + 100, "198.51.100.4": "soon"},
            "list.reg.test": ["198.51.100.5"],
        },
        "remembered": {"198.51.100.9": ["old.reg.test"], "nonsense": ["x"], "198.51.100.10": "y"},
    }
    monkeypatch.setattr(enforcer_mod.state_file, "read_state", lambda *a, **k: saved)
    assert enf.restore_from_state() == 1
    assert set(enf.cache.ips_for("a.reg.test")) == {"198.51.100.1"}
    assert enf.cache.ips_for("gone.reg.test") == {} and enf.cache.ips_for("x.other.test") == {}
    assert enf.cache.names_ever_for("198.51.100.9") == {"old.reg.test"}
