"""The policy model: what a validated policy says (modes, allowed and blocked patterns, catalog
expansions, DNS and scope settings) and the limits every policy is held to. Built only by the
validator (validate.py) from text the loader (load.py) read; immutable once built.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
from dataclasses import dataclass, field

from ramfw.policy.catalog import Expansion
from ramfw.policy.names import Pattern, PatternSet

MODES = ("allowlist", "denylist", "audit")  # "audit": allowlist semantics, nothing refused (see Policy.audit)
SNOOP_MODES = ("auto", "queue", "log", "off")
TTL_MAX = 86400
DEFAULT_SOURCE = "<default policy>"
# Hostile input limits. A real policy is a few kilobytes and a few levels deep; anything far
# beyond is refused before a parser sees it (a 5,000-deep array makes the parsers recurse until
# RecursionError; a policy is never cut to size and then validated: a cut policy is another one).
MAX_POLICY_BYTES = 1 << 20
MAX_NESTING = 32

# Apexes whose subdomains belong to unrelated tenants (buckets, distributions, accounts).
# A wildcard over one of these opens the door to anybody's storage.
MULTI_TENANT_APEXES = (
    "amazonaws.com",
    "cloudfront.net",
    "googleapis.com",
    "googleusercontent.com",
    "appspot.com",
    "r2.cloudflarestorage.com",
    "r2.dev",
    "workers.dev",
    "pages.dev",
    "blob.core.windows.net",
    "azureedge.net",
    "azurefd.net",
    "azurecr.io",
    "trafficmanager.net",
    "akamaized.net",
    "akamaihd.net",
    "edgekey.net",
    "fastly.net",
    "fastlylb.net",
    "githubusercontent.com",
    "github.io",
    "digitaloceanspaces.com",
    "backblazeb2.com",
    "wasabisys.com",
    "herokuapp.com",
    "vercel.app",
    "netlify.app",
    "ngrok.io",
    "ngrok-free.app",
)

# Exact hosts that serve every tenant of a storage service.
SHARED_HOSTS = ("storage.googleapis.com", "s3.amazonaws.com", "s3.dualstack.us-east-1.amazonaws.com")


@dataclass(frozen=True, slots=True)
class Source:
    """Why a pattern is in the policy: the entry that put it there and how."""

    list: str  # "allow" or "block"
    entry: str  # the policy entry as written
    pattern: str  # the pattern it produced
    via: str = ""  # e.g. "Docker Hub blob host" for catalog expansions

    def describe(self) -> str:
        how = f" ({self.via})" if self.via else ""
        return f"{self.list} entry {self.entry!r} -> {self.pattern}{how}"


@dataclass(frozen=True)
class DnsSettings:
    servers: tuple[str, ...] = ()
    min_ttl: int = 30
    grace: int = 120
    max_ips_per_name: int = 1000
    snoop: str = "auto"
    max_addresses: int = 10000  # (name, address) pairs the DNS cache remembers; bounds memory


DEFAULT_INTERNAL_INTERFACES = ("docker0", "br-*")

SNI_MODES = ("off", "audit", "enforce")
MAX_TLS_PORTS = 32


@dataclass(frozen=True)
class TlsSettings:
    """SNI binding (README "SNI binding"). Off by default: it needs the controller running
    (`ramfw run`), sends the first packets of each TLS connection to an allowed address through
    user space, and resets clients that send no server name (IP-literal HTTPS, plain TCP on 443);
    roll it out like a policy: "audit" first, then "enforce"."""

    sni: str = "off"
    ports: tuple[int, ...] = (443,)


@dataclass(frozen=True)
class ScopeSettings:
    output: bool = True
    forward: bool = False
    cgroup: str = ""
    # forwarded traffic that leaves through these interfaces stays inside the machine (container
    # to container on a Docker bridge, published ports): not egress, not filtered
    internal_interfaces: tuple[str, ...] = DEFAULT_INTERNAL_INTERFACES


@dataclass(frozen=True)
class Policy:
    mode: str
    allow: tuple[str, ...]
    block: tuple[str, ...]
    allow_broad: bool
    dns: DnsSettings
    scope: ScopeSettings
    allow_cidrs: tuple[str, ...]
    source: str
    audit: bool = False  # the whole pipeline runs, but what would be refused is only reported
    expansions: tuple[Expansion, ...] = ()
    warnings: tuple[str, ...] = ()
    ports: dict = field(default_factory=dict, compare=False)  # name -> port written in an entry (check probes it)
    allow_set: PatternSet = field(default_factory=PatternSet, compare=False, repr=False)
    block_set: PatternSet = field(default_factory=PatternSet, compare=False, repr=False)
    # addresses that must stay reachable whatever the policy says (an IP-literal policy URL);
    # not part of what the policy means, so not in its digest
    infrastructure_cidrs: tuple[str, ...] = ()
    tls: TlsSettings = field(default_factory=TlsSettings)

    @property
    def digest(self) -> str:
        """Short stable fingerprint of what the policy means (not of its formatting)."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        # "audit" appears only when set, so the digests of enforcing policies stay what they were
        return {
            **({"audit": True} if self.audit else {}),
            "mode": self.mode,
            "allow": list(self.allow),
            "block": list(self.block),
            "allow_broad": self.allow_broad,
            "dns": {
                "servers": list(self.dns.servers),
                "min_ttl": self.dns.min_ttl,
                "grace": self.dns.grace,
                "max_ips_per_name": self.dns.max_ips_per_name,
                "max_addresses": self.dns.max_addresses,
                "snoop": self.dns.snoop,
            },
            "scope": {
                "output": self.scope.output,
                "forward": self.scope.forward,
                "cgroup": self.scope.cgroup,
                "internal_interfaces": list(self.scope.internal_interfaces),
            },
            "network": {"allow_cidrs": list(self.allow_cidrs)},
            # only when not the default, so the digests of existing policies stay what they were
            **({"tls": {"sni": self.tls.sni, "ports": list(self.tls.ports)}} if self.tls != TlsSettings() else {}),
        }

    # ---- verdicts -------------------------------------------------------------------------

    def classify(self, name: str) -> tuple[str, tuple[Source, ...]]:
        """Verdict for a normalised name: ("blocked"|"allowed"|"unlisted", reasons).

        block entries always win: a name matching both lists is blocked.
        """
        blocked = self.block_set.match(name)
        if blocked:
            return "blocked", blocked
        allowed = self.allow_set.match(name)
        if allowed:
            return "allowed", allowed
        return "unlisted", ()

    @property
    def mode_label(self) -> str:
        """The mode as people should read it in messages."""
        return f"audit ({self.mode} evaluated, nothing refused)" if self.audit else self.mode

    def audited(self) -> "Policy":
        """The same policy in audit mode (`--audit`): its digest differs from the enforcing one,
        so status, events and repair never mistake one for the other."""
        return self if self.audit else dataclasses.replace(self, audit=True)

    def with_infrastructure(self, hosts: list[str], why: str) -> "Policy":
        """A copy that also allows `hosts` (e.g. the policy server itself), which the policy's
        own entries must not be able to cut off. The digest stays the policy's."""
        if not hosts:
            return self
        allow = PatternSet(self.allow_set.patterns)
        cidrs = list(self.infrastructure_cidrs)
        for host in hosts:
            try:  # an IP-literal policy URL: the address itself stays reachable
                addr = ipaddress.ip_address(host.strip("[]"))
            except ValueError:
                allow.add(Pattern.parse(host), Source("allow", why, host, "always reachable"))
                continue
            cidr = f"{addr.compressed}/{addr.max_prefixlen}"
            if cidr not in cidrs:
                cidrs.append(cidr)
        return dataclasses.replace(self, allow_set=allow, infrastructure_cidrs=tuple(cidrs))

    def is_allowed_name(self, name: str) -> bool:
        return not self.block_set.match(name) and bool(self.allow_set.match(name))

    def summary(self) -> str:
        """One line for `ramfw policy validate`: mode, entry counts, catalog hosts, digest."""
        expanded = sum(len(e.patterns) for e in self.expansions)
        return (f"{self.mode}, {len(self.allow)} allow and {len(self.block)} block entries "
                f"({expanded} hosts from the registry catalog), digest {self.digest}")

    def concrete_names(self, which: str = "allow") -> list[str]:
        """Exact (non-wildcard) names of a list: the ones active resolution can look up."""
        pset = self.allow_set if which == "allow" else self.block_set
        seen: dict[str, None] = {}
        for pattern, _src in pset.patterns:
            if not pattern.is_wildcard:
                seen.setdefault(pattern.domain)
        return list(seen)
