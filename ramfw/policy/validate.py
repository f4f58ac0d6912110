"""Policy validation: turns parsed TOML/JSON data into a Policy. Collects every problem before
failing, each as (key, reason), so an administrator fixes a policy in one round; a policy that
fails never reaches the kernel.
"""

from __future__ import annotations

import ipaddress
import re

from ramfw.policy.catalog import Catalog, Expansion
from ramfw.errors import PolicyError
from ramfw.policy.model import MODES, SNOOP_MODES, TTL_MAX, MULTI_TENANT_APEXES, SHARED_HOSTS, Source, DnsSettings, DEFAULT_INTERNAL_INTERFACES, ScopeSettings, Policy
from ramfw.policy.model import MAX_TLS_PORTS, SNI_MODES, TlsSettings
from ramfw.policy.names import NameError_, Pattern, PatternSet


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
