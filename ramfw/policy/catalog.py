"""The registry catalog: a registry named in a policy expands to every host its pulls touch.

Data lives in ramfw/data/registries.toml (package data) so it can be updated without code.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources

from ramfw.policy.names import NameError_, Pattern

ROLE_API = "api/token host"
ROLE_BLOB = "blob host"
ROLE_SHARED = "shared blob host"
ROLE_BROAD = "broad blob host"


@dataclass(frozen=True)
class Registry:
    id: str
    name: str
    select: tuple[str, ...]
    template: re.Pattern | None
    hosts: tuple[str, ...]
    blob_hosts: tuple[str, ...] = ()
    shared_hosts: tuple[str, ...] = ()
    broad_hosts: tuple[str, ...] = ()
    note: str = ""
    sources: tuple[str, ...] = ()  # vendor documentation (URLs) the hosts were checked against
    checked: str = ""  # ISO date of that check
    # hosts the registry's own documentation names (concrete, templates filled with `example`):
    # tests assert a policy naming the registry allows each of them
    examples: tuple[str, ...] = ()
    example: str = ""  # for a template: a policy entry it selects (tests and explain use it)
    entry_form: str = ""  # for a template: the policy entry, from placeholder values (learn suggests it)
    generated_from: str = ""  # upstream file a host list was generated from, with its date


@dataclass(frozen=True)
class Expansion:
    """What one policy entry naming a catalog registry stands for."""

    registry: Registry
    entry: str
    patterns: tuple[tuple[Pattern, str], ...]  # (pattern, role)
    left_out: tuple[str, ...] = ()  # broad hosts not expanded because allow_broad is false
    warnings: tuple[str, ...] = field(default=())


class Catalog:
    def __init__(self, registries: list[Registry]):
        self.registries = registries
        self._by_select = {name: reg for reg in registries for name in reg.select}

    def lookup(self, name: str) -> tuple[Registry, dict[str, str]] | None:
        """The registry a normalised policy name selects, with template values; None if none."""
        reg = self._by_select.get(name)
        if reg is not None:
            return reg, {}
        for reg in self.registries:
            if reg.template is not None:
                m = reg.template.match(name)
                if m:
                    return reg, m.groupdict()
        return None

    def owner_of(self, host: str) -> tuple[Registry, str, dict[str, str]] | None:
        """The catalog registry whose pulls touch `host` (a normalised name), the role the host
        plays, and template values; None when no entry lists it. Broad hosts count too: `learn`
        must say a bucket host belongs to GitLab even when allow_broad keeps it out."""
        for reg in self.registries:
            for texts, role in ((reg.hosts, ROLE_API), (reg.blob_hosts, ROLE_BLOB), (reg.shared_hosts, ROLE_SHARED),
                                (reg.broad_hosts, ROLE_BROAD)):
                for text in texts:
                    m = _host_regex(text).fullmatch(host)
                    if m:
                        return reg, role, m.groupdict()
        return None

    def entry_for(self, reg: Registry, values: dict[str, str]) -> str | None:
        """The policy entry that names `reg` (its first select name, or its template filled);
        None when the values needed to fill a template are unknown."""
        if reg.select:
            return reg.select[0]
        try:
            return reg.entry_form.format(**values) if reg.entry_form else None
        except KeyError:
            return None

    def expand(self, entry: str, name: str, allow_broad: bool) -> Expansion | None:
        found = self.lookup(name)
        if found is None:
            return None
        reg, values = found
        patterns: list[tuple[Pattern, str]] = []
        seen: set[Pattern] = set()

        def add(texts, role):
            for text in texts:
                pattern = Pattern.parse(text.format(**values))
                if pattern not in seen:
                    seen.add(pattern)
                    patterns.append((pattern, role))

        add(reg.hosts, ROLE_API)
        add(reg.blob_hosts, ROLE_BLOB)
        add(reg.shared_hosts, ROLE_SHARED)
        warnings = tuple(
            f"{entry}: {host} is shared by every tenant of that service; allowing it reaches their data too"
            for host in reg.shared_hosts
        )
        left_out: tuple[str, ...] = ()
        if allow_broad:
            add(reg.broad_hosts, ROLE_BROAD)
        else:
            left_out = tuple(reg.broad_hosts)
        return Expansion(reg, entry, tuple(patterns), left_out, warnings)


@functools.lru_cache(maxsize=4096)
def _host_regex(text: str) -> re.Pattern:
    """A catalog host (pattern or template) as a regex over a normalised name: `*.` one label,
    `**.` one or more, `{placeholder}` one label or part of one (named group)."""
    if text.startswith("**."):
        head, text = r"(?:[^.]+\.)+", text[3:]
    elif text.startswith("*."):
        head, text = r"[^.]+\.", text[2:]
    else:
        head = ""
    body, seen = [], set()
    for i, part in enumerate(re.split(r"\{(\w+)\}", text)):
        if i % 2 == 0:
            body.append(re.escape(part))
        elif part in seen:
            body.append(f"(?P={part})")  # the same value wherever it appears
        else:
            seen.add(part)
            body.append(f"(?P<{part}>[a-z0-9-]+)")
    return re.compile(head + "".join(body))


def _parse_registry(raw: dict) -> Registry:
    template = raw.get("template")
    reg = Registry(
        id=raw["id"],
        name=raw["name"],
        select=tuple(raw.get("select", ())),
        template=re.compile(template) if template else None,
        hosts=tuple(raw["hosts"]),
        blob_hosts=tuple(raw.get("blob_hosts", ())),
        shared_hosts=tuple(raw.get("shared_hosts", ())),
        broad_hosts=tuple(raw.get("broad_hosts", ())),
        note=raw.get("note", ""),
        sources=tuple(raw.get("sources", ())),
        checked=str(raw.get("checked", "")),
        examples=tuple(raw.get("examples", ())),
        example=raw.get("example", ""),
        entry_form=raw.get("entry_form", ""),
        generated_from=raw.get("generated_from", ""),
    )
    if not reg.select and reg.template is None:
        raise ValueError(f"catalog entry {reg.id}: needs select or template")
    if reg.template is not None and not (reg.example and reg.template.match(reg.example)):
        raise ValueError(f"catalog entry {reg.id}: a template needs an example entry it matches")
    return reg


def parse_catalog(text: str) -> Catalog:
    data = tomllib.loads(text)
    registries = [_parse_registry(raw) for raw in data.get("registry", [])]
    # Fail at load, not at a user's policy, when a catalog host is not a valid pattern.
    for reg in registries:
        for host in reg.hosts + reg.blob_hosts + reg.shared_hosts + reg.broad_hosts:
            if "{" not in host:
                try:
                    Pattern.parse(host)
                except NameError_ as exc:
                    raise ValueError(f"catalog entry {reg.id}: {exc}") from None
    return Catalog(registries)


@functools.cache
def default_catalog() -> Catalog:
    text = resources.files("ramfw").joinpath("data/registries.toml").read_text(encoding="utf-8")
    return parse_catalog(text)
