import pytest

from ramfw.catalog import ROLE_API, ROLE_BLOB, default_catalog, parse_catalog
from ramfw.policy import parse_policy

REQUIRED = ["docker.io", "ghcr.io", "quay.io", "gcr.io", "us-docker.pkg.dev", "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            "public.ecr.aws", "mcr.microsoft.com", "registry.gitlab.com", "nvcr.io", "registry.k8s.io"]


@pytest.mark.parametrize("name", REQUIRED)
def test_catalog_covers_the_major_registries(name):
    exp = default_catalog().expand(name, name, allow_broad=False)
    assert exp is not None, name
    assert any(role == ROLE_API for _, role in exp.patterns)


def test_docker_hub_expands_to_api_token_and_cdn_hosts():
    exp = default_catalog().expand("docker.io", "docker.io", False)
    hosts = {str(p): role for p, role in exp.patterns}
    for h in ("registry-1.docker.io", "auth.docker.io", "index.docker.io"):
        assert hosts[h] == ROLE_API
    for h in ("production.cloudflare.docker.com", "production.cloudfront.docker.com"):
        assert hosts[h] == ROLE_BLOB
    assert any(h.endswith("r2.cloudflarestorage.com") for h in hosts)


def test_aliases_select_the_same_registry():
    a = default_catalog().lookup("index.docker.io")
    b = default_catalog().lookup("docker.io")
    assert a[0] is b[0]


def test_ecr_template_fills_account_and_region():
    exp = default_catalog().expand("x", "123456789012.dkr.ecr.eu-west-1.amazonaws.com", False)
    hosts = {str(p) for p, _ in exp.patterns}
    assert hosts == {
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        "api.ecr.eu-west-1.amazonaws.com",
        "prod-eu-west-1-starport-layer-bucket.s3.eu-west-1.amazonaws.com",
    }
    assert default_catalog().lookup("12345.dkr.ecr.eu-west-1.amazonaws.com") is None  # not 12 digits


def test_broad_hosts_only_with_allow_broad():
    narrow = default_catalog().expand("registry.gitlab.com", "registry.gitlab.com", False)
    broad = default_catalog().expand("registry.gitlab.com", "registry.gitlab.com", True)
    assert "*.storage.googleapis.com" in narrow.left_out
    assert "*.storage.googleapis.com" in {str(p) for p, _ in broad.patterns}
    pol = parse_policy('allow = ["registry.gitlab.com"]', "p")
    assert any("left out" in w for w in pol.warnings)
    assert not pol.is_allowed_name("bucket.storage.googleapis.com")


def test_shared_hosts_warn():
    pol = parse_policy('allow = ["gcr.io"]', "p")
    assert pol.is_allowed_name("storage.googleapis.com") and pol.is_allowed_name("eu.gcr.io")
    assert any("storage.googleapis.com is shared" in w for w in pol.warnings)


def test_policy_entry_naming_catalog_registry_expands():
    pol = parse_policy('allow = ["ghcr.io"]', "p")
    verdict, sources = pol.classify("pkg-containers.githubusercontent.com")
    assert verdict == "allowed"
    assert sources[0].entry == "ghcr.io" and "blob host" in sources[0].via


def test_non_catalog_names_are_plain_hosts():
    pol = parse_policy('allow = ["registry.corp.example:5000"]', "p")
    assert pol.expansions == ()
    assert pol.concrete_names() == ["registry.corp.example"]


def test_bad_catalog_entry_fails_at_load():
    with pytest.raises(ValueError, match="catalog entry x"):
        parse_catalog('[[registry]]\nid="x"\nname="X"\nselect=["x.example"]\nhosts=["bad..host"]\n')
