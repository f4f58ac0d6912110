"""The binding rule: the server name must be allowed, and (for a learned address) a name the
address was given for or a host of the same catalog registry."""

from ramfw.policy.catalog import default_catalog
from ramfw.policy.load import parse_policy
from ramfw.tls.binding import ALLOW, MISMATCH, NO_SNI, decide, registry_of
from ramfw.tls.clienthello import Hello

POLICY = parse_policy('allow = ["docker.io", "ghcr.io", "reg.example.test", "other.example.test"]\nblock = ["quay.io"]\n', "t")
CAT = default_catalog()


def verdict(sni, credited=(), static=False, **kw):
    hello = kw.pop("hello", None) or Hello("complete", sni)
    return decide(hello, credited, static, lambda n: POLICY.classify(n)[0], lambda n: registry_of(CAT, n), **kw)


def test_a_name_the_address_was_given_for_passes():
    assert verdict("reg.example.test", {"reg.example.test"}).verdict == ALLOW


def test_a_blocked_name_is_a_mismatch_even_when_credited():
    d = verdict("quay.io", {"quay.io", "reg.example.test"})
    assert d.verdict == MISMATCH and "blocked" in d.reason


def test_an_unlisted_name_is_a_mismatch():
    assert verdict("evil.example.net", {"reg.example.test"}).verdict == MISMATCH


def test_an_allowed_name_not_given_for_the_address_is_a_mismatch():
    d = verdict("other.example.test", {"reg.example.test"})
    assert d.verdict == MISMATCH and "reg.example.test" in d.reason and d.credited == ("reg.example.test",)


def test_hosts_of_one_catalog_registry_share_addresses():
    # Docker Hub's API host on an address given for its blob CDN: both are Docker Hub
    d = verdict("registry-1.docker.io", {"production.cloudflare.docker.com"})
    assert d.verdict == ALLOW and "docker" in d.reason
    # but another allowed registry on that address is not
    assert verdict("ghcr.io", {"production.cloudflare.docker.com"}).verdict == MISMATCH


def test_a_cidr_address_is_bound_by_the_policy_alone():
    assert verdict("other.example.test", {"reg.example.test"}, static=True).verdict == ALLOW
    assert verdict("quay.io", (), static=True).verdict == MISMATCH


def test_an_address_with_no_remembered_names_falls_back_to_the_policy():
    assert verdict("other.example.test", ()).verdict == ALLOW


def test_no_name_ech_not_tls_and_bounds_are_no_sni():
    assert verdict(None, {"reg.example.test"}).verdict == NO_SNI
    ech = verdict(None, hello=Hello("complete", "reg.example.test", ech=True))
    assert ech.verdict == NO_SNI and "Encrypted Client Hello" in ech.reason
    assert verdict(None, hello=Hello("not_tls", reason="x")).verdict == NO_SNI
    assert verdict(None, hello=Hello("malformed", reason="x")).verdict == NO_SNI
    d = verdict(None, hello=Hello("incomplete"), bound="bytes")
    assert d.verdict == NO_SNI and "bytes" in d.reason
