"""The registry catalog as verified data: evidence on every entry, the hosts each registry's own
documentation names allowed by a policy naming it, and no multi-tenant host let in quietly."""

import datetime
import re

import pytest

from ramfw.policy.catalog import ROLE_API, ROLE_BLOB, ROLE_BROAD, default_catalog, parse_catalog
from ramfw.policy.names import Pattern
from ramfw.policy.model import MULTI_TENANT_APEXES, SHARED_HOSTS
from ramfw.policy.load import parse_policy

CATALOG = default_catalog()
REGISTRIES = {reg.id: reg for reg in CATALOG.registries}
REQUIRED = ["docker.io", "ghcr.io", "quay.io", "gcr.io", "us-docker.pkg.dev", "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            "public.ecr.aws", "mcr.microsoft.com", "registry.gitlab.com", "nvcr.io", "registry.k8s.io",
            "dhi.io", "cgr.dev", "registry.connect.redhat.com", "docker.elastic.co", "registry.access.redhat.com"]


def entry_for(reg) -> str:
    return reg.select[0] if reg.select else reg.example


def policy_naming(reg, allow_broad=False):
    return parse_policy(f'allow = ["{entry_for(reg)}"]\nallow_broad = {str(allow_broad).lower()}\n', "p")


# ---- evidence -------------------------------------------------------------------------------


@pytest.mark.parametrize("reg", CATALOG.registries, ids=lambda r: r.id)
def test_every_entry_carries_sources_and_the_date_it_was_checked(reg):
    assert reg.sources, f"{reg.id}: no sources"
    for url in reg.sources:
        assert re.fullmatch(r"https://[^\s]+", url), f"{reg.id}: source {url!r} is not a URL"
    assert datetime.date.fromisoformat(reg.checked) == datetime.date(2026, 11, 30), reg.checked
    assert reg.examples, f"{reg.id}: no example hosts from its documentation"


def test_generated_lists_say_where_and_when_they_came_from():
    k8s = REGISTRIES["registry.k8s.io"]
    assert "buckets.go" in k8s.generated_from and "2026-07-29" in k8s.generated_from
    ar = [h for h in k8s.blob_hosts if h.endswith("-docker.pkg.dev")]
    s3 = [h for h in k8s.blob_hosts if ".s3.dualstack." in h]
    assert len(ar) == 20, ar  # one per Cloud Run region of the oci-proxy terraform
    assert len(s3) >= 31, s3  # buckets.go's buckets (plus the terraform's older eu-west-2 name)
    assert "d1be1w964nk82h.cloudfront.net" in k8s.blob_hosts  # archeio's default blob URL since 2026-07-29


@pytest.mark.parametrize("name", REQUIRED)
def test_catalog_covers_the_registries_users_ask_for(name):
    exp = CATALOG.expand(name, name, allow_broad=False)
    assert exp is not None, name
    assert any(role == ROLE_API for _, role in exp.patterns)


# ---- the test that would have caught the GitLab bug ------------------------------------------


@pytest.mark.parametrize("reg", CATALOG.registries, ids=lambda r: r.id)
def test_every_documented_host_is_allowed_by_a_policy_naming_the_registry(reg):
    for entry in reg.select or (reg.example,):
        pol = parse_policy(f'allow = ["{entry}"]\n', "p")
        missing = [h for h in reg.examples if not pol.is_allowed_name(h)]
        assert not missing, f"a policy allowing {entry!r} refuses {missing}, which {reg.name}'s documentation names"


def test_the_examples_check_fails_on_the_old_gitlab_entry():
    """The old entry listed only `*.cdn.registry.gitlab-static.net`: `*.` never matches the apex
    the GitLab settings page names, so the check above must flag it."""
    old = parse_catalog(
        '[[registry]]\nid="gl"\nname="GitLab"\nselect=["registry.gitlab.com"]\n'
        'hosts=["registry.gitlab.com","gitlab.com"]\nblob_hosts=["*.cdn.registry.gitlab-static.net"]\n'
    )
    pol = parse_policy('allow = ["registry.gitlab.com"]\n', "p", catalog=old)
    assert not pol.is_allowed_name("cdn.registry.gitlab-static.net")
    new = parse_policy('allow = ["registry.gitlab.com"]\n', "p")
    assert new.is_allowed_name("cdn.registry.gitlab-static.net")
    assert new.is_allowed_name("eu.cdn.registry.gitlab-static.net")


def test_pattern_semantics_are_unchanged():
    assert not Pattern.parse("*.cdn.example.com").matches("cdn.example.com")  # `*.` excludes the apex
    assert Pattern.parse("*.cdn.example.com").matches("a.cdn.example.com")
    assert not Pattern.parse("*.cdn.example.com").matches("a.b.cdn.example.com")
    assert Pattern.parse("**.cdn.example.com").matches("a.b.cdn.example.com")


# ---- multi-tenant hosts ----------------------------------------------------------------------


def multi_tenant(pattern: Pattern) -> bool:
    return (pattern.is_wildcard and any(pattern.covers_domain(a) for a in MULTI_TENANT_APEXES)) or \
        (not pattern.is_wildcard and pattern.domain in SHARED_HOSTS)


@pytest.mark.parametrize("reg", CATALOG.registries, ids=lambda r: r.id)
def test_no_multi_tenant_host_is_expanded_quietly(reg):
    pol = policy_naming(reg)
    for exp in pol.expansions:
        for pattern, role in exp.patterns:
            if multi_tenant(pattern):
                assert str(pattern) in reg.shared_hosts, f"{reg.id}: {pattern} ({role}) expanded without allow_broad"
                assert any(str(pattern) in w and "shared" in w for w in pol.warnings), pol.warnings
    for host in reg.broad_hosts:
        assert not pol.is_allowed_name(host.replace("*.", "tenant-x.").replace("**.", "a.b.")), \
            f"{reg.id}: broad host {host} allowed without allow_broad"


def test_cgr_dev_blob_domain_needs_allow_broad():
    reg = REGISTRIES["cgr.dev"]
    narrow = policy_naming(reg)
    assert narrow.is_allowed_name("9236a389bd48b984df91adc1bc924620.r2.cloudflarestorage.com")  # Chainguard's own account host
    assert not narrow.is_allowed_name("someone-else.r2.cloudflarestorage.com")
    assert any("*.r2.cloudflarestorage.com" in w and "left out" in w for w in narrow.warnings)
    broad = policy_naming(reg, allow_broad=True)
    assert broad.is_allowed_name("someone-else.r2.cloudflarestorage.com")


def test_gcr_no_longer_allows_every_storage_bucket():
    pol = parse_policy('allow = ["gcr.io"]', "p")
    assert pol.is_allowed_name("eu.gcr.io") and pol.is_allowed_name("us-docker.pkg.dev")
    assert not pol.is_allowed_name("storage.googleapis.com")
    assert parse_policy('allow = ["gcr.io"]\nallow_broad = true', "p").is_allowed_name("storage.googleapis.com")
    ar = parse_policy('allow = ["europe-west1-docker.pkg.dev"]', "p")
    assert not ar.is_allowed_name("storage.googleapis.com")


def test_gitlab_storage_fallback_only_with_allow_broad():
    narrow = parse_policy('allow = ["registry.gitlab.com"]', "p")
    assert not narrow.is_allowed_name("bucket.storage.googleapis.com") and not narrow.is_allowed_name("storage.googleapis.com")
    assert any("left out" in w for w in narrow.warnings)
    broad = parse_policy('allow = ["registry.gitlab.com"]\nallow_broad = true', "p")
    assert broad.is_allowed_name("storage.googleapis.com") and broad.is_allowed_name("bucket.storage.googleapis.com")


# ---- the corrected entries -------------------------------------------------------------------


def test_quay_and_red_hat_use_cdn01_to_cdn06_and_no_sso():
    for entry in ("quay.io", "registry.redhat.io", "registry.access.redhat.com"):
        pol = parse_policy(f'allow = ["{entry}"]', "p")
        assert all(pol.is_allowed_name(f"cdn0{i}.quay.io") for i in range(1, 7)), entry
        assert not pol.is_allowed_name("sso.redhat.com"), entry
    assert CATALOG.lookup("registry.access.redhat.com")[0].id == "registry.redhat.io"


def test_docker_hub_expands_to_api_token_and_cdn_hosts():
    exp = CATALOG.expand("docker.io", "docker.io", False)
    hosts = {str(p): role for p, role in exp.patterns}
    for h in ("registry-1.docker.io", "auth.docker.io", "index.docker.io"):
        assert hosts[h] == ROLE_API
    for h in ("production.cloudflare.docker.com", "production.cloudfront.docker.com"):
        assert hosts[h] == ROLE_BLOB


def test_ecr_forms_are_templates_per_account_and_region():
    exp = CATALOG.expand("x", "123456789012.dkr.ecr.eu-west-1.amazonaws.com", False)
    assert {str(p) for p, _ in exp.patterns} == {
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        "api.ecr.eu-west-1.amazonaws.com",
        "prod-eu-west-1-starport-layer-bucket.s3.eu-west-1.amazonaws.com",
    }
    assert CATALOG.lookup("12345.dkr.ecr.eu-west-1.amazonaws.com") is None  # not 12 digits
    for name, reg_id in (("123456789012.dkr-ecr.us-east-2.on.aws", "ecr-dualstack"),
                         ("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com", "ecr-fips"),
                         ("123456789012.dkr.ecr.cn-northwest-1.amazonaws.com.cn", "ecr-china")):
        reg, values = CATALOG.lookup(name)
        assert reg.id == reg_id and values["account"] == "123456789012", name


def test_public_ecr_and_mcr_blob_cdns():
    assert parse_policy('allow = ["public.ecr.aws"]', "p").is_allowed_name("d2glxqk2uabbnd.cloudfront.net")
    assert not parse_policy('allow = ["public.ecr.aws"]', "p").is_allowed_name("other.cloudfront.net")
    assert parse_policy('allow = ["mcr.microsoft.com"]', "p").is_allowed_name("mcr-0001.mcr-msedge.net")


def test_k8s_gcr_io_selects_registry_k8s_io():
    pol = parse_policy('allow = ["k8s.gcr.io"]', "p")
    assert pol.is_allowed_name("registry.k8s.io") and pol.is_allowed_name("europe-west4-docker.pkg.dev")


# ---- reverse lookup (learn) and loading ------------------------------------------------------


def test_owner_of_finds_registry_role_and_template_values():
    reg, role, values = CATALOG.owner_of("prod-ap-south-1-starport-layer-bucket.s3.ap-south-1.amazonaws.com")
    assert reg.id == "ecr" and role == ROLE_BLOB and values == {"region": "ap-south-1"}
    assert CATALOG.entry_for(reg, values) is None  # the account is unknown: no entry to suggest
    reg, role, values = CATALOG.owner_of("123456789012.dkr.ecr.ap-south-1.amazonaws.com")
    assert CATALOG.entry_for(reg, values) == "123456789012.dkr.ecr.ap-south-1.amazonaws.com"
    reg, role, _ = CATALOG.owner_of("eu.cdn.registry.gitlab-static.net")
    assert reg.id == "registry.gitlab.com" and role == ROLE_BLOB
    reg, role, _ = CATALOG.owner_of("bucket.storage.googleapis.com")
    assert reg.id == "registry.gitlab.com" and role == ROLE_BROAD
    assert CATALOG.owner_of("cdn.registry.gitlab-static.net.evil.example") is None
    assert CATALOG.owner_of("blobs.unknown.example") is None


def test_aliases_select_the_same_registry():
    assert CATALOG.lookup("index.docker.io")[0] is CATALOG.lookup("docker.io")[0]


def test_non_catalog_names_are_plain_hosts():
    pol = parse_policy('allow = ["registry.corp.example:5000"]', "p")
    assert pol.expansions == ()
    assert pol.concrete_names() == ["registry.corp.example"]


def test_bad_catalog_entries_fail_at_load():
    with pytest.raises(ValueError, match="catalog entry x"):
        parse_catalog('[[registry]]\nid="x"\nname="X"\nselect=["x.example"]\nhosts=["bad..host"]\n')
    with pytest.raises(ValueError, match="template needs an example"):
        parse_catalog('[[registry]]\nid="t"\nname="T"\ntemplate=\'^(?P<r>[a-z]+)\\.t\\.example$\'\nhosts=["{r}.t.example"]\n')


def test_shared_hosts_are_allowed_with_a_warning():
    cat = parse_catalog(
        '[[registry]]\nid="s"\nname="S"\nselect=["s.example"]\nhosts=["s.example"]\nshared_hosts=["storage.googleapis.com"]\n'
        'sources=["https://s.example/docs"]\nchecked=2026-11-30\nexamples=["s.example"]\n'
    )
    pol = parse_policy('allow = ["s.example"]', "p", catalog=cat)
    assert pol.is_allowed_name("storage.googleapis.com")
    assert any("storage.googleapis.com is shared" in w for w in pol.warnings), pol.warnings
