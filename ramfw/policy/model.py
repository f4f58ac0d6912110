"""Policy model, loading and validation.

Validation collects every problem before failing, each as (key, reason), so an administrator
fixes a policy in one round. A policy that fails never reaches the kernel.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources

from ramfw.policy.catalog import Catalog, Expansion, default_catalog
from ramfw.errors import PolicyError
from ramfw.policy.names import NameError_, Pattern, PatternSet

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

    def concrete_names(self, which: str = "allow") -> list[str]:
        """Exact (non-wildcard) names of a list: the ones active resolution can look up."""
        pset = self.allow_set if which == "allow" else self.block_set
        seen: dict[str, None] = {}
        for pattern, _src in pset.patterns:
            if not pattern.is_wildcard:
                seen.setdefault(pattern.domain)
        return list(seen)


# ---- loading ------------------------------------------------------------------------------


def load_policy(path: str | None, catalog: Catalog | None = None) -> Policy:
    """Load and validate a policy file (TOML or JSON); None loads the embedded default."""
    if path is None:
        text = resources.files("ramfw").joinpath("data/default-policy.toml").read_text(encoding="utf-8")
        return parse_policy(text, DEFAULT_SOURCE, fmt="toml", catalog=catalog)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_POLICY_BYTES + 1)  # never more: a huge file is refused, not read
    except OSError as exc:
        raise PolicyError(path, [("(file)", f"cannot read: {exc.strerror}")]) from None
    check_size(len(raw), path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(path, [("(file)", "not UTF-8 text")]) from None
    fmt = "json" if path.endswith(".json") or (not path.endswith(".toml") and text.lstrip().startswith("{")) else "toml"
    return parse_policy(text, path, fmt=fmt, catalog=catalog)


def check_size(size: int, source: str) -> None:
    if size > MAX_POLICY_BYTES:
        raise PolicyError(source, [("(file)", f"larger than {MAX_POLICY_BYTES // 1024} KiB (refused whole, never cut): "
                                              "a policy lists registries, it is a few KiB")])


def nesting_depth(text: str, stop_at: int) -> int:
    """How deep [ and { nest in TOML or JSON text, outside strings and comments (a cheap
    single pass; stops counting at stop_at)."""
    depth = deepest = 0
    quote = ""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if quote:
            if ch == "\\" and quote[0] == '"':
                i += 1
            elif text.startswith(quote, i):
                i += len(quote) - 1
                quote = ""
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop_at:
                    return deepest
        elif ch in "]}":
            depth = max(0, depth - 1)
        elif ch in "\"'":
            quote = ch * 3 if text.startswith(ch * 3, i) else ch
            i += len(quote) - 1
        elif ch == "#":  # a TOML comment (JSON has none, and '#' outside a string is invalid there)
            j = text.find("\n", i)
            i = n if j < 0 else j
        i += 1
    return deepest


def parse_policy(text: str, source: str, fmt: str = "toml", catalog: Catalog | None = None) -> Policy:
    check_size(len(text.encode("utf-8", "surrogatepass")), source)
    if nesting_depth(text, MAX_NESTING) > MAX_NESTING:
        raise PolicyError(source, [("(file)", f"arrays or tables nested deeper than {MAX_NESTING} levels: refused")])
    try:
        data = json.loads(text) if fmt == "json" else tomllib.loads(text)
    except RecursionError:  # the depth scan is approximate; the parser's own limit is the backstop
        raise PolicyError(source, [("(file)", "nested too deeply to parse: refused")]) from None
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(source, [("(file)", f"{fmt.upper()} syntax error: {exc}")]) from None
    if not isinstance(data, dict):
        raise PolicyError(source, [("(file)", "the top level must be a table of keys")])
    return Validator(source, catalog or default_catalog()).build(data)


class Validator:
    TOP_KEYS = {"mode", "allow", "block", "allow_broad", "dns", "scope", "network", "tls"}
    TLS_KEYS = {"sni", "ports"}
    DNS_KEYS = {"servers", "min_ttl", "grace", "max_ips_per_name", "max_addresses", "snoop"}
    SCOPE_KEYS = {"output", "forward", "cgroup", "internal_interfaces"}
    NETWORK_KEYS = {"allow_cidrs"}

    def __init__(self, source: str, catalog: Catalog):
        self.source = source
        self.catalog = catalog
        self.problems: list[tuple[str, str]] = []
        self.warnings: list[str] = []
        self.ports: dict[str, int] = {}

    def problem(self, key: str, reason: str) -> None:
        self.problems.append((key, reason))

    # -- typed getters: each records a problem and returns the default on a wrong type --

    def _table(self, data: dict, key: str, allowed: set[str], prefix: str = "") -> dict:
        value = data.get(key, {}) if key else data
        full = f"{prefix}{key}" if key else ""
        if not isinstance(value, dict):
            self.problem(full, f"must be a table, got {_typename(value)}")
            return {}
        for unknown in sorted(set(value) - allowed):
            where = f"{full}.{unknown}" if full else unknown
            self.problem(where, f"unknown key (expected one of: {', '.join(sorted(allowed))})")
        return value

    def _bool(self, data: dict, key: str, default: bool, full: str) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            self.problem(full, f"must be true or false, got {_typename(value)}")
            return default
        return value

    def _int(self, data: dict, key: str, default: int, lo: int, hi: int, full: str) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(full, f"must be a whole number, got {_typename(value)}")
            return default
        if not lo <= value <= hi:
            self.problem(full, f"{value} is out of range ({lo} … {hi})")
            return default
        return value

    def _choice(self, data: dict, key: str, default: str, choices: tuple[str, ...], full: str) -> str:
        value = data.get(key, default)
        if value not in choices:
            self.problem(full, f"must be one of {', '.join(choices)}; got {value!r}")
            return default
        return value

    def _strings(self, data: dict, key: str, full: str) -> list[tuple[int, str]]:
        value = data.get(key, [])
        if not isinstance(value, list):
            self.problem(full, f"must be a list of strings, got {_typename(value)}")
            return []
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.problem(f"{full}[{i}]", f"must be a string, got {_typename(item)}")
            else:
                out.append((i, item))
        return out

    # -- the policy --

    def build(self, data: dict) -> Policy:
        top = self._table(data, "", self.TOP_KEYS)
        mode = self._choice(top, "mode", "allowlist", MODES, "mode")
        audit = mode == "audit"
        if audit:
            mode = "allowlist"
        allow_broad = self._bool(top, "allow_broad", False, "allow_broad")
        dns_t = self._table(top, "dns", self.DNS_KEYS)
        scope_t = self._table(top, "scope", self.SCOPE_KEYS)
        net_t = self._table(top, "network", self.NETWORK_KEYS)
        tls_t = self._table(top, "tls", self.TLS_KEYS)

        allow_set: PatternSet = PatternSet()
        block_set: PatternSet = PatternSet()
        expansions: list[Expansion] = []
        allow_entries = self._entries(top, "allow", allow_set, allow_broad, expansions)
        block_entries = self._entries(top, "block", block_set, True, expansions)
        for name in sorted(set(allow_entries) & set(block_entries)):
            self.problem(
                f"allow[{allow_entries[name]}]",
                f"{name!r} is both allowed and blocked (block[{block_entries[name]}]); keep it in one list",
            )
        if mode == "allowlist" and not allow_entries and "allow" in top:
            self.warnings.append(f"{self.source}: allow is empty: every registry is blocked")

        servers = []
        for i, text in self._strings(dns_t, "servers", "dns.servers"):
            try:
                servers.append(str(ipaddress.ip_address(text.strip())))
            except ValueError:
                self.problem(f"dns.servers[{i}]", f"{text!r} is not an IP address")
        dns = DnsSettings(
            servers=tuple(servers),
            min_ttl=self._int(dns_t, "min_ttl", 30, 0, TTL_MAX, "dns.min_ttl"),
            grace=self._int(dns_t, "grace", 120, 0, TTL_MAX, "dns.grace"),
            max_ips_per_name=self._int(dns_t, "max_ips_per_name", 1000, 1, 100000, "dns.max_ips_per_name"),
            snoop=self._choice(dns_t, "snoop", "auto", SNOOP_MODES, "dns.snoop"),
            max_addresses=self._int(dns_t, "max_addresses", 10000, 100, 2000000, "dns.max_addresses"),
        )

        scope = ScopeSettings(
            output=self._bool(scope_t, "output", True, "scope.output"),
            forward=self._bool(scope_t, "forward", False, "scope.forward"),
            cgroup=self._cgroup(scope_t),
            internal_interfaces=self._interfaces(scope_t),
        )
        if not scope.output and not scope.forward:
            self.problem("scope", "output and forward are both false: nothing would be enforced")
        if scope.cgroup and not scope.output:
            self.problem("scope.cgroup", "narrows the output scope, but scope.output is false")

        cidrs = []
        for i, text in self._strings(net_t, "allow_cidrs", "network.allow_cidrs"):
            try:
                cidrs.append(str(ipaddress.ip_network(text.strip(), strict=True)))
            except ValueError as exc:
                self.problem(f"network.allow_cidrs[{i}]", f"{text!r} is not a network ({exc})")

        tls = TlsSettings(sni=self._choice(tls_t, "sni", "off", SNI_MODES, "tls.sni"), ports=self._tls_ports(tls_t))
        if tls.sni != "off" and mode == "denylist":
            self.problem("tls.sni", "SNI binding needs allowlist (or audit) mode: in denylist mode no address is bound to names")

        if self.problems:
            raise PolicyError(self.source, self.problems)
        warnings = list(self.warnings)
        for exp in expansions:
            warnings.extend(f"{self.source}: {w}" for w in exp.warnings)
        return Policy(
            mode=mode,
            allow=tuple(allow_entries),
            block=tuple(block_entries),
            allow_broad=allow_broad,
            dns=dns,
            scope=scope,
            allow_cidrs=tuple(cidrs),
            source=self.source,
            audit=audit,
            expansions=tuple(expansions),
            warnings=tuple(warnings),
            ports=dict(self.ports),
            allow_set=allow_set,
            block_set=block_set,
            tls=tls,
        )

    def _tls_ports(self, tls_t: dict) -> tuple[int, ...]:
        if "ports" not in tls_t:
            return TlsSettings().ports
        value = tls_t["ports"]
        if not isinstance(value, list) or not value:
            self.problem("tls.ports", f"must be a non-empty list of port numbers, got {_typename(value) if not isinstance(value, list) else 'an empty list'}")
            return TlsSettings().ports
        if len(value) > MAX_TLS_PORTS:
            self.problem("tls.ports", f"{len(value)} ports: at most {MAX_TLS_PORTS}")
            return TlsSettings().ports
        ports: list[int] = []
        for i, port in enumerate(value):
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                self.problem(f"tls.ports[{i}]", f"{port!r} is not a port number (1 … 65535)")
            elif port in ports:
                self.problem(f"tls.ports[{i}]", f"port {port} is listed twice")
            else:
                ports.append(port)
        return tuple(ports)

    def _interfaces(self, scope_t: dict) -> tuple[str, ...]:
        if "internal_interfaces" not in scope_t:
            return DEFAULT_INTERNAL_INTERFACES
        names = []
        for i, text in self._strings(scope_t, "internal_interfaces", "scope.internal_interfaces"):
            if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,15}\*?", text) or len(text.rstrip("*")) == 0:
                self.problem(f"scope.internal_interfaces[{i}]", f"{text!r} is not an interface name (a trailing * matches a prefix)")
            else:
                names.append(text)
        return tuple(names)

    def _cgroup(self, scope_t: dict) -> str:
        value = scope_t.get("cgroup", "")
        if not isinstance(value, str):
            self.problem("scope.cgroup", f"must be a string, got {_typename(value)}")
            return ""
        path = value.strip().strip("/")
        if any(part in ("", ".", "..") for part in path.split("/")) and path:
            self.problem("scope.cgroup", f"{value!r} is not a plain cgroup v2 path like 'system.slice/docker.service'")
            return ""
        return path

    def _entries(self, top, key, pset: PatternSet, allow_broad: bool, expansions: list) -> dict[str, int]:
        """Validate one list; fill pset; return normalised entry -> index."""
        entries: dict[str, int] = {}
        for i, text in self._strings(top, key, key):
            where = f"{key}[{i}]"
            try:
                pattern = Pattern.parse(text)
            except NameError_ as exc:
                self.problem(where, str(exc))
                continue
            canon = str(pattern)
            host, sep, port = text.strip().rpartition(":")
            if sep and port.isdigit() and not pattern.is_wildcard:
                self.ports[pattern.domain] = int(port)
            if canon in entries:
                self.warnings.append(f"{self.source}: {where}: {text!r} repeats {key}[{entries[canon]}]")
                continue
            entries[canon] = i
            expansion = None if pattern.is_wildcard else self.catalog.expand(text, pattern.domain, allow_broad)
            if expansion is not None:
                expansions.append(expansion)
                for pat, role in expansion.patterns:
                    pset.add(pat, Source(key, text, str(pat), f"{expansion.registry.name} {role}"))
                for host in expansion.left_out:
                    self.warnings.append(
                        f"{self.source}: {where}: {host} ({expansion.registry.name} blobs) left out because "
                        "it is multi-tenant storage; set allow_broad = true if pulls stall"
                    )
                continue
            if key == "allow":
                self._check_broad(where, text, pattern, allow_broad)
            pset.add(pattern, Source(key, text, canon))
        return entries

    def _check_broad(self, where: str, text: str, pattern: Pattern, allow_broad: bool) -> None:
        if pattern.is_wildcard:
            apex = next((a for a in MULTI_TENANT_APEXES if pattern.covers_domain(a)), None)
            if apex and not allow_broad:
                self.problem(
                    where,
                    f"{text!r} is a wildcard over {apex}, whose names belong to anybody's buckets and "
                    "sites; name the exact host, or set allow_broad = true",
                )
            elif apex:
                self.warnings.append(f"{self.source}: {where}: {text!r} is broad (allow_broad = true)")
        elif pattern.domain in SHARED_HOSTS:
            self.warnings.append(
                f"{self.source}: {where}: {pattern.domain} serves every tenant of that service; "
                "allowing it reaches their data too"
            )


def _typename(value) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "a table"}.get(
        type(value), type(value).__name__
    )
