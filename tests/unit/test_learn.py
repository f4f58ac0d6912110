"""`ramfw learn`: from events to a policy fragment, without a kernel."""

import tomllib

from ramfw.report.learn import summarise
from ramfw.policy.load import parse_policy


def ev(host, dst, action="would_refuse", dport=443, names=None):
    return {"time": "2026-11-30T07:00:00.000Z", "action": action, "scope": "output", "src": "203.0.113.2", "dst": dst,
            "dport": dport, "proto": "tcp", "uid": 0, "hostname": host, "names": names if names is not None else ([host] if host else [])}


def test_groups_by_catalog_registry_and_suggests_the_registry_entry():
    pol = parse_policy('mode = "audit"\nallow = ["ghcr.io"]', "p")
    r = summarise([
        ev("cdn04.quay.io", "198.51.100.1"), ev("cdn04.quay.io", "198.51.100.1"), ev("quay.io", "198.51.100.2"),
        ev("blobs.unknown.example", "198.51.100.3"),
        ev("pkg-containers.githubusercontent.com", "198.51.100.4"),  # allowed now (ghcr.io): not listed
    ], pol)
    groups = {g["registry"]: g for g in r["groups"]}
    assert set(groups) == {"Quay", "unknown"}
    assert [g["registry"] for g in r["groups"]][-1] == "unknown"  # unknown last
    quay = groups["Quay"]
    assert quay["entry"] == "quay.io" and {h["host"] for h in quay["hosts"]} == {"cdn04.quay.io", "quay.io"}
    assert next(h for h in quay["hosts"] if h["host"] == "cdn04.quay.io")["attempts"] == 2
    assert r["suggested_entries"] == ["quay.io", "blobs.unknown.example"]
    assert r["allow"] == ["ghcr.io", "quay.io", "blobs.unknown.example"]
    frag = tomllib.loads(r["fragment"])  # the fragment is valid TOML a policy can take as is
    assert frag["allow"] == r["allow"]
    assert parse_policy(r["fragment"], "fragment").is_allowed_name("cdn04.quay.io")


def test_multi_tenant_hosts_are_suggested_exactly_and_flagged():
    pol = parse_policy('allow = ["registry.gitlab.com"]', "p")
    r = summarise([ev("mybucket.storage.googleapis.com", "198.51.100.5"), ev("someone.r2.cloudflarestorage.com", "198.51.100.6")], pol)
    assert sorted(r["suggested_entries"]) == ["mybucket.storage.googleapis.com", "someone.r2.cloudflarestorage.com"]
    assert len(r["warnings"]) == 2 and all("many tenants" in w or "every tenant" in w for w in r["warnings"])
    assert r["fragment"].count("# warning:") == 2
    gitlab = next(g for g in r["groups"] if g["registry"] == "GitLab Container Registry")
    assert gitlab["hosts"][0]["role"] == "broad blob host"
    # the suggestion is an exact host: valid without allow_broad, and not a wildcard over the apex
    assert parse_policy(r["fragment"], "fragment").is_allowed_name("mybucket.storage.googleapis.com")
    assert not parse_policy(r["fragment"], "fragment").is_allowed_name("other.storage.googleapis.com")


def test_blocked_hosts_are_reported_but_never_suggested():
    pol = parse_policy('allow = ["ghcr.io"]\nblock = ["quay.io", "evil.example"]', "p")
    r = summarise([ev("cdn.quay.io", "198.51.100.1", "refused"), ev("evil.example", "198.51.100.9", "refused")], pol)
    assert r["suggested_entries"] == []
    assert all(h["suggest"] is None for g in r["groups"] for h in g["hosts"])
    assert any("blocks" in w for w in r["warnings"]) and any("blocked by the policy" in w for w in r["warnings"])


def test_events_without_a_name_suggest_a_commented_cidr():
    r = summarise([ev(None, "198.51.100.77"), ev(None, "2001:db8:100::77")], parse_policy('allow = ["ghcr.io"]', "p"))
    assert r["addresses_without_name"] == ["198.51.100.77", "2001:db8:100::77"]
    assert r["suggested_entries"] == []
    assert '# allow_cidrs = ["198.51.100.77/32", "2001:db8:100::77/128"]' in r["fragment"]
    tomllib.loads(r["fragment"])


def test_a_template_registry_without_its_account_suggests_the_exact_host():
    pol = parse_policy('allow = ["ghcr.io"]', "p")
    bucket = "prod-eu-west-1-starport-layer-bucket.s3.eu-west-1.amazonaws.com"
    r = summarise([ev(bucket, "198.51.100.8"), ev("123456789012.dkr.ecr.eu-west-1.amazonaws.com", "198.51.100.9")], pol)
    # the account is known from the API host: its entry covers the bucket too
    assert r["suggested_entries"] == ["123456789012.dkr.ecr.eu-west-1.amazonaws.com"]
    r = summarise([ev(bucket, "198.51.100.8")], pol)
    assert r["suggested_entries"] == [bucket]  # account unknown: the exact bucket host


def test_nothing_to_learn():
    r = summarise([], parse_policy('allow = ["ghcr.io"]', "p"))
    assert r["groups"] == [] and r["fragment"].startswith("# nothing to add")
