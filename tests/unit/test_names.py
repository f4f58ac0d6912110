import pytest

from ramfw.policy.names import ANY_LABELS, EXACT, ONE_LABEL, NameError_, Pattern, PatternSet, normalise_name


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Registry-1.Docker.IO", "registry-1.docker.io"),
        ("docker.io.", "docker.io"),
        ("registry.corp.example:5000", "registry.corp.example"),
        ("  ghcr.io  ", "ghcr.io"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("MÜNCHEN.example.", "xn--mnchen-3ya.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("localhost", "localhost"),
    ],
)
def test_normalise(text, expected):
    assert normalise_name(text) == expected


@pytest.mark.parametrize(
    "text,reason",
    [
        ("", "empty host name"),
        ("1.2.3.4", "is an IP address"),
        ("1.2.3.4:5000", "is an IP address"),
        ("[2001:db8::1]", "is an IP address"),
        ("2001:db8::1", "is an IP address"),
        ("foo..bar", "empty label"),
        ("-foo.bar", "not a valid DNS label"),
        ("foo-.bar", "not a valid DNS label"),
        ("a" * 64 + ".example", "not a valid DNS label"),
        (".".join(["a" * 60] * 5), "longer than 253"),
        ("https://docker.io", "not a host name"),
        ("docker.io/library", "not a host name"),
        ("host:99999", "invalid port"),
        ("host:abc", "invalid port"),
        ("sp ace.example", "not a valid DNS label"),
    ],
)
def test_normalise_rejects(text, reason):
    with pytest.raises(NameError_, match=reason):
        normalise_name(text)


def test_pattern_shapes():
    assert Pattern.parse("*.Example.com.") == Pattern(ONE_LABEL, "example.com")
    assert Pattern.parse("**.example.com") == Pattern(ANY_LABELS, "example.com")
    assert Pattern.parse("example.com:443") == Pattern(EXACT, "example.com")
    assert str(Pattern.parse("**.example.com")) == "**.example.com"
    for bad, reason in [
        ("*", "matches every host"),
            ("**", "matches every host"),
        ("*.com", "top-level domain"),
        ("**.com", "top-level domain"),
        ("foo*.example.com", "whole first label"),
        ("*.*.example.com", "only allowed as the whole first label"),
        ("a.*.example.com", "whole first label"),
        ("***.example.com", "whole first label"),
    ]:
        with pytest.raises(NameError_, match=reason):
            Pattern.parse(bad)


def test_one_label_wildcard_matches_exactly_one_label_and_not_the_apex():
    p = Pattern.parse("*.example.com")
    assert p.matches("a.example.com")
    assert not p.matches("example.com")
    assert not p.matches("a.b.example.com")
    assert not p.matches("aexample.com")


def test_any_labels_wildcard():
    p = Pattern.parse("**.example.com")
    assert p.matches("a.example.com") and p.matches("a.b.c.example.com")
    assert not p.matches("example.com")
    assert not p.matches("badexample.com")


def test_patternset_returns_every_match_most_specific_first():
    ps = PatternSet(
        [
            (Pattern.parse("**.example.com"), "any"),
            (Pattern.parse("*.example.com"), "one"),
            (Pattern.parse("a.example.com"), "exact"),
            (Pattern.parse("**.a.example.com"), "any-deeper"),
        ]
    )
    assert ps.match("a.example.com") == ("exact", "one", "any")
    assert ps.match("x.a.example.com") == ("any-deeper", "any")
    assert ps.match("example.com") == ()
    assert ps.match("other.org") == ()
    # memoised answers stay right after adding a pattern
    ps.add(Pattern.parse("other.org"), "late")
    assert ps.match("other.org") == ("late",)


def test_patternset_agrees_with_pattern_matches():
    patterns = [Pattern.parse(t) for t in ("a.b.c", "*.b.c", "**.c.d", "*.x.y.z", "**.y.z")]
    ps = PatternSet((p, str(p)) for p in patterns)
    names = ["a.b.c", "b.c", "q.b.c", "q.q.b.c", "c.d", "e.c.d", "f.e.c.d", "w.x.y.z", "x.y.z", "v.w.x.y.z", "y.z"]
    for name in names:
        assert set(ps.match(name)) == {str(p) for p in patterns if p.matches(name)}, name
