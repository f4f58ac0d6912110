import json

import pytest

from ramfw.errors import PolicyError
from ramfw.policy.model import DEFAULT_SOURCE
from ramfw.policy.load import load_policy, parse_policy


def problems(text, fmt="toml"):
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "p.toml", fmt=fmt)
    return err.value.lines()


def test_default_policy_is_docker_hub_allowlist():
    pol = load_policy(None)
    assert pol.source == DEFAULT_SOURCE
    assert pol.mode == "allowlist" and pol.allow == ("docker.io",) and pol.block == ()
    assert pol.is_allowed_name("registry-1.docker.io")
    assert pol.is_allowed_name("production.cloudflare.docker.com")
    assert not pol.is_allowed_name("quay.io")
    assert pol.scope.output and not pol.scope.forward
    assert pol.dns.min_ttl == 30 and pol.dns.grace == 120 and pol.dns.snoop == "auto"


def test_full_policy_parses():
    pol = parse_policy(
        """
mode = "allowlist"
allow = ["docker.io", "ghcr.io", "registry.corp.example:5000", "*.mirror.corp.example"]
block = ["quay.io"]
[dns]
servers = ["198.51.100.53", "2001:db8:100::53"]
min_ttl = 5
grace = 0
max_ips_per_name = 10
snoop = "queue"
[scope]
output = true
forward = true
cgroup = "/system.slice/docker.service/"
[network]
allow_cidrs = ["203.0.113.0/25", "2001:db8:113::/64"]
""",
        "p.toml",
    )
    assert pol.allow[2] == "registry.corp.example" and pol.allow[3] == "*.mirror.corp.example"
    assert pol.dns.servers == ("198.51.100.53", "2001:db8:100::53")
    assert pol.scope.cgroup == "system.slice/docker.service"
    assert pol.allow_cidrs == ("203.0.113.0/25", "2001:db8:113::/64")
    assert pol.classify("x.mirror.corp.example")[0] == "allowed"
    assert pol.classify("mirror.corp.example")[0] == "unlisted"
    assert pol.classify("quay.io")[0] == "blocked"
    assert pol.classify("cdn02.quay.io")[0] == "blocked"  # catalog expansion of the block entry


def test_json_policy_same_meaning_as_toml():
    toml_pol = parse_policy('allow = ["ghcr.io"]\n[dns]\nmin_ttl = 10\n', "a.toml")
    json_pol = parse_policy(json.dumps({"allow": ["ghcr.io"], "dns": {"min_ttl": 10}}), "a.json", fmt="json")
    assert toml_pol.digest == json_pol.digest


def test_digest_ignores_formatting_but_not_meaning():
    a = parse_policy('allow = ["ghcr.io"]', "a")
    b = parse_policy('# comment\nallow = [ "GHCR.io." ]\nmode = "allowlist"', "b")
    c = parse_policy('allow = ["quay.io"]', "c")
    assert a.digest == b.digest != c.digest


def test_every_problem_reported_at_once_with_file_key_reason():
    lines = problems(
        """
mode = "blocklist"
allow = ["docker.io", "1.2.3.4", "", "*.amazonaws.com", "a.*.b.example", 7, "quay.io"]
block = ["quay.io"]
allow_broad = "yes"
colour = "blue"
[dns]
servers = ["not-an-ip"]
min_ttl = 90000
grace = -1
max_ips_per_name = 0
snoop = "sometimes"
typo = 1
[scope]
output = "true"
cgroup = "../etc"
[network]
allow_cidrs = ["10.0.0.1/8", "nonsense"]
"""
    )
    expected = [
        "p.toml: colour: unknown key",
        "p.toml: mode: must be one of allowlist, denylist, audit; got 'blocklist'",
        "p.toml: allow_broad: must be true or false, got a string",
        "p.toml: dns.typo: unknown key",
        "p.toml: allow[1]: '1.2.3.4' is an IP address, not a name (use network.allow_cidrs for addresses)",
        "p.toml: allow[2]: empty host name",
        "p.toml: allow[3]: '*.amazonaws.com' is a wildcard over amazonaws.com",
        "p.toml: allow[4]: 'a.*.b.example': wildcards must be the whole first label",
        "p.toml: allow[5]: must be a string, got a number",
        "p.toml: allow[6]: 'quay.io' is both allowed and blocked (block[0])",
        "p.toml: dns.servers[0]: 'not-an-ip' is not an IP address",
        "p.toml: dns.min_ttl: 90000 is out of range (0 … 86400)",
        "p.toml: dns.grace: -1 is out of range (0 … 86400)",
        "p.toml: dns.max_ips_per_name: 0 is out of range (1 … 100000)",
        "p.toml: dns.snoop: must be one of auto, queue, log, off; got 'sometimes'",
        "p.toml: scope.output: must be true or false, got a string",
        "p.toml: scope.cgroup: '../etc' is not a plain cgroup v2 path",
        "p.toml: network.allow_cidrs[0]: '10.0.0.1/8' is not a network (10.0.0.1/8 has host bits set)",
        "p.toml: network.allow_cidrs[1]: 'nonsense' is not a network",
    ]
    for want in expected:
        assert any(line.startswith(want) for line in lines), f"missing: {want}\n" + "\n".join(lines)
    assert len(lines) == len(expected), "\n".join(lines)


@pytest.mark.parametrize(
    "entry",
    ["*.amazonaws.com", "**.s3.amazonaws.com", "**.cloudfront.net", "**.googleapis.com", "*.storage.googleapis.com",
     "**.r2.cloudflarestorage.com", "*.blob.core.windows.net", "*.dkr.ecr.us-east-1.amazonaws.com"],
)
def test_broad_wildcards_refused_unless_allow_broad(entry):
    lines = problems(f'allow = ["{entry}"]')
    assert len(lines) == 1 and "allow_broad = true" in lines[0]
    pol = parse_policy(f'allow = ["{entry}"]\nallow_broad = true', "p.toml")
    assert any("is broad" in w for w in pol.warnings)


def test_broad_wildcard_in_block_list_is_fine():
    pol = parse_policy('allow = ["ghcr.io"]\nblock = ["**.amazonaws.com"]', "p.toml")
    assert pol.classify("bucket.s3.amazonaws.com")[0] == "blocked"


def test_shared_host_is_a_warning_not_an_error():
    pol = parse_policy('allow = ["storage.googleapis.com"]', "p.toml")
    assert any("storage.googleapis.com serves every tenant" in w for w in pol.warnings)


def test_block_wins_over_allow():
    pol = parse_policy('allow = ["**.corp.example"]\nblock = ["bad.corp.example"]', "p.toml")
    verdict, sources = pol.classify("bad.corp.example")
    assert verdict == "blocked" and sources[0].entry == "bad.corp.example"
    assert pol.classify("good.corp.example")[0] == "allowed"


def test_scope_needs_something_to_enforce():
    assert problems("[scope]\noutput = false\nforward = false") == [
        "p.toml: scope: output and forward are both false: nothing would be enforced"
    ]


def test_syntax_errors_name_the_file():
    (line,) = problems("allow = [")
    assert line.startswith("p.toml: (file): TOML syntax error")
    (line,) = problems("{", fmt="json")
    assert line.startswith("p.toml: (file): JSON syntax error")


def test_missing_file(tmp_path):
    with pytest.raises(PolicyError) as err:
        load_policy(str(tmp_path / "nope.toml"))
    assert err.value.lines() == [f"{tmp_path / 'nope.toml'}: (file): cannot read: No such file or directory"]


def test_json_file_detected_by_extension(tmp_path):
    f = tmp_path / "p.json"
    f.write_text('{"allow": ["quay.io"], "mode": "denylist"}')
    pol = load_policy(str(f))
    assert pol.mode == "denylist" and pol.allow == ("quay.io",)


def test_concrete_names_exclude_wildcards():
    pol = parse_policy('allow = ["ghcr.io", "*.mirror.example", "mcr.microsoft.com"]', "p")
    names = pol.concrete_names()
    assert "ghcr.io" in names and "pkg-containers.githubusercontent.com" in names
    assert "mcr.microsoft.com" in names
    assert not any("*" in n for n in names)


def test_internal_interfaces_validated():
    lines = problems('[scope]\ninternal_interfaces = ["docker0", "bad name", "*", "waytoolonginterfacename"]')
    assert [ln.split(": ")[1] for ln in lines] == ["scope.internal_interfaces[1]", "scope.internal_interfaces[2]", "scope.internal_interfaces[3]"]
    assert parse_policy('[scope]\ninternal_interfaces = ["cni0", "veth*"]', "p").scope.internal_interfaces == ("cni0", "veth*")
