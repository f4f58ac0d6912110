"""Host names and host patterns: normalisation, validation and fast matching.

A pattern is one of
  host            exactly that name
  *.domain        exactly one label in front of domain (the apex itself does not match)
  **.domain       one or more labels in front of domain

Matching runs for every DNS answer the snooper sees, so patterns are compiled once into dicts
and a match costs a few dict lookups, plus a bounded memo of recent names (DNS names repeat).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Generic, Iterable, TypeVar

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")

EXACT, ONE_LABEL, ANY_LABELS = "exact", "one-label", "any-labels"


class NameError_(ValueError):
    """A host name or pattern that cannot be used. str() is the reason, without the key."""


def is_ip_literal(text: str) -> bool:
    t = text.strip().strip("[]")
    try:
        ipaddress.ip_address(t.split("%")[0])
        return True
    except ValueError:
        return False


def _strip_port(text: str) -> str:
    # "registry.corp.example:5000" -> host; ports are accepted and ignored (enforcement is per host).
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise NameError_(f"invalid port {port!r}")
        return host
    return text


def _to_ascii_label(label: str) -> str:
    if label.isascii():
        return label
    try:
        return label.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise NameError_(f"label {label!r} is not a valid internationalised name ({exc})") from None


def normalise_name(text: str) -> str:
    """Canonical form of a host name: lower case, IDNA (punycode), no trailing dot, no port.

    Raises NameError_ with the reason when the text is not a usable host name.
    """
    if not isinstance(text, str):
        raise NameError_(f"expected a host name string, got {type(text).__name__}")
    raw = text.strip()
    if not raw:
        raise NameError_("empty host name")
    if "://" in raw or "/" in raw:
        raise NameError_(f"{raw!r} is not a host name (drop the scheme and path)")
    if is_ip_literal(raw) or is_ip_literal(raw.rsplit(":", 1)[0]):
        raise NameError_(f"{raw!r} is an IP address, not a name (use network.allow_cidrs for addresses)")
    host = _strip_port(raw)
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise NameError_(f"{raw!r} has no host part")
    labels = [_to_ascii_label(lbl).lower() for lbl in host.split(".")]
    for lbl in labels:
        if not lbl:
            raise NameError_(f"{raw!r} has an empty label")
        if "*" in lbl:
            raise NameError_(f"{raw!r}: '*' is only allowed as the whole first label ('*.domain' or '**.domain')")
        if not _LABEL.match(lbl):
            raise NameError_(f"{raw!r}: label {lbl!r} is not a valid DNS label")
    name = ".".join(labels)
    if len(name) > 253:
        raise NameError_(f"{raw!r} is longer than 253 characters")
    return name


@dataclass(frozen=True, slots=True)
class Pattern:
    kind: str  # EXACT, ONE_LABEL or ANY_LABELS
    domain: str  # the name itself for EXACT, the part after "*." / "**." otherwise

    @classmethod
    def parse(cls, text: str) -> "Pattern":
        if not isinstance(text, str):
            raise NameError_(f"expected a host name string, got {type(text).__name__}")
        raw = text.strip()
        if raw in ("*", "**", "*.", "**."):
            raise NameError_(f"{raw!r} alone matches every host; name a domain ('*.domain' or '**.domain')")
        if raw.startswith("**."):
            kind, rest = ANY_LABELS, raw[3:]
        elif raw.startswith("*."):
            kind, rest = ONE_LABEL, raw[2:]
        elif "*" in raw:
            raise NameError_(f"{raw!r}: wildcards must be the whole first label: '*.domain' (one label) or '**.domain' (one or more)")
        else:
            return cls(EXACT, normalise_name(raw))
        domain = normalise_name(rest)
        if "." not in domain:
            raise NameError_(f"{raw!r}: a wildcard over a top-level domain matches half the internet")
        return cls(kind, domain)

    def __str__(self) -> str:
        prefix = {EXACT: "", ONE_LABEL: "*.", ANY_LABELS: "**."}[self.kind]
        return prefix + self.domain

    @property
    def is_wildcard(self) -> bool:
        return self.kind != EXACT

    def matches(self, name: str) -> bool:
        if self.kind == EXACT:
            return name == self.domain
        if not name.endswith("." + self.domain):
            return False
        head = name[: -len(self.domain) - 1]
        return self.kind == ANY_LABELS or "." not in head

    def covers_domain(self, apex: str) -> bool:
        """True when this pattern matches names under `apex` that belong to other tenants:
        the pattern is a wildcard whose domain is apex itself or a name inside it."""
        return self.is_wildcard and (self.domain == apex or self.domain.endswith("." + apex))


T = TypeVar("T")


class PatternSet(Generic[T]):
    """Compiled patterns, each carrying a tag (e.g. the policy entry it came from).

    match(name) returns the tags of every matching pattern, most specific first (exact, then
    one-label, then any-labels from the longest domain), as a tuple; () when nothing matches.
    Names must already be normalised.
    """

    _MEMO_LIMIT = 8192  # a flood of distinct names must not grow it: 65,536 cost ~30 MB across two sets

    def __init__(self, items: Iterable[tuple[Pattern, T]] = ()):
        self._exact: dict[str, list[T]] = {}
        self._one: dict[str, list[T]] = {}
        self._any: dict[str, list[T]] = {}
        self._any_tails: set[str] = set()  # last two labels of every any-labels domain
        self.patterns: list[tuple[Pattern, T]] = []
        self._memo: dict[str, tuple[T, ...]] = {}
        for pattern, tag in items:
            self.add(pattern, tag)

    def add(self, pattern: Pattern, tag: T) -> None:
        table = {EXACT: self._exact, ONE_LABEL: self._one, ANY_LABELS: self._any}[pattern.kind]
        table.setdefault(pattern.domain, []).append(tag)
        if pattern.kind == ANY_LABELS:
            self._any_tails.add(_last_two_labels(pattern.domain))
        self.patterns.append((pattern, tag))
        self._memo.clear()

    def __len__(self) -> int:
        return len(self.patterns)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def match(self, name: str) -> tuple[T, ...]:
        hit = self._memo.get(name)
        if hit is not None:
            return hit
        found = self._match_uncached(name)
        if len(self._memo) >= self._MEMO_LIMIT:
            self._memo.clear()  # cheap bound; a full rebuild costs one miss per name
        self._memo[name] = found
        return found

    def _match_uncached(self, name: str) -> tuple[T, ...]:
        found: list[T] = []
        exact = self._exact.get(name)
        if exact:
            found.extend(exact)
        dot = name.find(".")
        if dot < 0:
            return tuple(found)
        parent = name[dot + 1 :]
        one = self._one.get(parent)
        if one:
            found.extend(one)
        if _last_two_labels(parent) in self._any_tails:
            # every proper suffix of the name, longest first
            suffix = parent
            while True:
                tags = self._any.get(suffix)
                if tags:
                    found.extend(tags)
                dot = suffix.find(".")
                if dot < 0:
                    break
                suffix = suffix[dot + 1 :]
        return tuple(found)

    def matches(self, name: str) -> bool:
        return bool(self.match(name))


def _last_two_labels(name: str) -> str:
    # A cheap filter before walking every suffix: most names share no tail with any pattern.
    return name[name.rfind(".", 0, name.rfind(".")) + 1 :]
