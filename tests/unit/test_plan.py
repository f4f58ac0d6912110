from ramfw.backends.nft.backend import NftBackend
from ramfw.plan import plan
from ramfw.policy.load import parse_policy

NOW = 1000.0


def test_allowlist_sets_and_skeleton():
    pol = parse_policy('allow = ["ghcr.io"]\n[network]\nallow_cidrs = ["203.0.113.0/25"]', "p")
    snap = {
        "ghcr.io": {"198.51.100.1": NOW + 100, "2001:db8:100::1": NOW + 50, "198.51.100.99": NOW - 1},
        "quay.io": {"198.51.100.2": NOW + 100},  # not allowed: never in a set
    }
    d = plan(pol, snap, NOW, ("198.51.100.53", "2001:db8:100::53"), "queue")
    assert [(e.ip, e.timeout) for e in d.sets["allow4"]] == [("198.51.100.1", 100)]  # expired one dropped
    assert [(e.ip, e.timeout) for e in d.sets["allow6"]] == [("2001:db8:100::1", 50)]
    assert set(d.sets) == {"allow4", "allow6"}
    (chain,) = d.chains
    kinds = [r.kind for r in chain.rules]
    assert kinds == ["accept_established", "accept_loopback", "accept_link_local", "accept_dns", "accept_dns",
                     "accept_cidrs", "accept_set", "accept_set", "refuse_all"]
    assert chain.final == "reject"
    assert d.dns.mode == "queue" and d.dns.servers4 == ("198.51.100.53",) and d.dns.hooks == ("input",)


def test_log_mode_drops_instead_of_rejecting():
    d = plan(parse_policy("", "p"), {}, NOW, (), "log")
    assert d.chains[0].final == "drop"


def test_forward_scope_adds_chain_and_dns_hook():
    pol = parse_policy("[scope]\noutput = false\nforward = true", "p")
    d = plan(pol, {}, NOW, ("198.51.100.53",), "off")
    assert [c.hook for c in d.chains] == ["forward"]
    assert "accept_loopback" not in [r.kind for r in d.chains[0].rules]
    assert d.dns.hooks == ("forward",)


def test_denylist_blocks_only_blocked_names():
    pol = parse_policy('mode = "denylist"\nblock = ["quay.io"]', "p")
    snap = {"quay.io": {"198.51.100.2": NOW + 10}, "cdn.quay.io": {"198.51.100.3": NOW + 10}, "other.example": {"198.51.100.4": NOW + 10}}
    d = plan(pol, snap, NOW)
    assert [e.ip for e in d.sets["block4"]] == ["198.51.100.2", "198.51.100.3"]
    assert set(d.sets) == {"block4", "block6"}
    assert [r.kind for r in d.chains[0].rules][-3:] == ["refuse_set", "refuse_set", "accept_all"]


def test_conflicts_are_allowed_in_allowlist_and_not_blocked_in_denylist():
    allow = parse_policy('allow = ["ghcr.io"]\nblock = ["quay.io"]', "p")
    snap = {"ghcr.io": {"198.51.100.5": NOW + 10}, "quay.io": {"198.51.100.5": NOW + 10, "198.51.100.6": NOW + 10}}
    d = plan(allow, snap, NOW)
    assert [e.ip for e in d.sets["allow4"]] == ["198.51.100.5"]
    (c,) = d.conflicts
    assert (c.ip, c.allowed_names, c.blocked_names) == ("198.51.100.5", ("ghcr.io",), ("quay.io",))
    deny = parse_policy('mode = "denylist"\nallow = ["ghcr.io"]\nblock = ["quay.io"]', "p")
    d = plan(deny, snap, NOW)
    assert [e.ip for e in d.sets["block4"]] == ["198.51.100.6"]
    assert len(d.conflicts) == 1


def test_timeout_uses_latest_expiry_across_names():
    pol = parse_policy('allow = ["ghcr.io", "quay.io"]', "p")
    d = plan(pol, {"ghcr.io": {"198.51.100.5": NOW + 10}, "quay.io": {"198.51.100.5": NOW + 70.2}}, NOW)
    assert [(e.ip, e.timeout) for e in d.sets["allow4"]] == [("198.51.100.5", 71)]


def test_plan_is_deterministic_and_render_is_stable():
    pol = parse_policy('allow = ["ghcr.io"]', "p")
    snap = {"ghcr.io": {"198.51.100.%d" % i: NOW + 30 for i in (9, 1, 200, 20)}}
    a, b = plan(pol, snap, NOW, ("198.51.100.53",)), plan(pol, dict(reversed(snap.items())), NOW, ("198.51.100.53",))
    assert a == b
    text = NftBackend(None).render(a)
    assert text == NftBackend(None).render(b)
    assert "198.51.100.1 timeout 30s, 198.51.100.9 timeout 30s, 198.51.100.20 timeout 30s" in text
    assert f'comment "ramfw policy={pol.digest} mode=allowlist snoop=off"' in text
    assert "goto refuse_output" in text and "reject with tcp reset" in text


def test_cgroup_scope_renders_bypass_rule():
    pol = parse_policy('[scope]\ncgroup = "system.slice/docker.service"', "p")
    text = NftBackend(None).render(plan(pol, {}, NOW))
    assert 'socket cgroupv2 level 2 != "system.slice/docker.service" accept' in text


def test_forward_chain_lets_container_bridges_talk():
    pol = parse_policy("[scope]\nforward = true", "p")
    d = plan(pol, {}, NOW)
    fwd = [c for c in d.chains if c.hook == "forward"][0]
    assert fwd.rules[1].kind == "accept_internal" and fwd.rules[1].args == ("docker0", "br-*")
    text = NftBackend(None).render(d)
    assert 'oifname "docker0" accept' in text and 'oifname "br-*" accept' in text
    out = [c for c in d.chains if c.hook == "output"][0]
    assert "accept_internal" not in [r.kind for r in out.rules]
    pol = parse_policy('[scope]\nforward = true\ninternal_interfaces = []', "p")
    assert "accept_internal" not in [r.kind for r in plan(pol, {}, NOW).chains[1].rules]
