"""PURE planner: (policy, DNS cache snapshot, environment) -> desired kernel state.

No I/O, no root. Backends render a DesiredState into their own ruleset language and apply it in
one transaction; tests check plans without a kernel.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field

from ramfw.policy.model import Policy

# Identifiers shared by every backend, so status/explain/events read the same names everywhere.
SET_NAMES = {("allow", 4): "allow4", ("allow", 6): "allow6", ("block", 4): "block4", ("block", 6): "block6"}
AUDIT_LOG_GROUP = 3731  # NFLOG group for blocked attempts (events)
DNS_LOG_GROUP = 3732  # NFLOG group for snooped DNS answers (log mode)
DNS_QUEUE_NUM = 3733  # NFQUEUE number for held DNS answers (queue mode)
DNS_QUERY_GROUP = 3734  # NFLOG group for DNS questions (answers count only for questions asked)
SNI_QUEUE_NUM = 3735  # NFQUEUE number for the first payload of TLS connections (SNI binding)
# SNI binding keeps its verdict in two bits of the connection's conntrack mark, under SNI_MASK
# (the other 30 bits are preserved): high bits, clear of Docker (none), kube-proxy
# (0x4000/0x8000), Tailscale (0xff0000), Cilium (0x0f00) and Istio (0x539). The inspector gives
# its verdict in the same bits of the packet mark (NF_REPEAT), and a rule moves them to the
# connection. PENDING is the nft fallback's "queue me" (ct mark, see backends/sni_rules.py);
# LOOKED is the packet mark of a packet without payload: seen, nothing decided yet.
SNI_MASK = 0x30000000
SNI_PASS = 0x10000000
SNI_REFUSE = 0x20000000
SNI_PENDING = 0x30000000
SNI_LOOKED = 0x30000000
AUDIT_PREFIX = {"output": "ramfw-block-out", "forward": "ramfw-block-fwd"}
# Audit mode logs with its own prefixes: an event says by itself whether the packet was refused
# or only would have been, even while a reload switches between the two.
WOULD_REFUSE_PREFIX = {"output": "ramfw-audit-out", "forward": "ramfw-audit-fwd"}
# Never shorter than a TCP connect with its SYN retransmits (1 s, then 3 s): in log mode the
# first SYN to a just-learned address may be dropped, and the retry must still find it.
MIN_ELEMENT_TIMEOUT = 5


@dataclass(frozen=True, slots=True)
class Element:
    ip: str
    timeout: int  # seconds from the moment of apply


@dataclass(frozen=True, slots=True)
class Conflict:
    ip: str
    allowed_names: tuple[str, ...]
    blocked_names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rule:
    """One step of the rule skeleton, in evaluation order. Backends render each kind.

    kinds:
      accept_established              ct state established,related
      accept_loopback                 to/from lo (output only)
      accept_link_local               output only: ICMPv6 neighbour discovery/MLD, DHCP/DHCPv6,
                                      each only towards the link (link-local, multicast, a
                                      directly connected network), never through a gateway
      accept_published                forward only: inbound connections DNATed to containers
      accept_dns      family, addrs   UDP/TCP port 53 to trusted resolvers
      accept_cidrs    family, addrs   network.allow_cidrs
      accept_set      family, set     destination in an allowed set
      refuse_set      family, set     destination in a blocked set (denylist): audit + reject
      refuse_all                      audit + reject (or drop in log mode) everything left
      accept_all                      denylist: everything left
      bypass_cgroup   path            output narrowed to a cgroup: other sockets accepted
      accept_internal ifnames         forward: leaving through a container bridge is not egress
      sni_bind                        SNI binding (DesiredState.sni): first, before established
                                      traffic is accepted; rendered by backends/sni_rules.py
    """

    kind: str
    family: int = 0
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChainPlan:
    hook: str  # "output" or "forward"
    rules: tuple[Rule, ...]
    # what happens to a packet the policy refuses: "reject", "drop" (log mode, so TCP retries),
    # or "accept" (audit mode: logged as would_refuse and let through)
    final: str

    @property
    def log_prefix(self) -> str:
        """NFLOG prefix of the refuse chain (without the trailing space the backends add)."""
        return (WOULD_REFUSE_PREFIX if self.final == "accept" else AUDIT_PREFIX)[self.hook]


@dataclass(frozen=True)
class DnsHook:
    mode: str  # "queue", "log" or "off"
    servers4: tuple[str, ...]
    servers6: tuple[str, ...]
    hooks: tuple[str, ...]  # where answers arrive: "input" (output scope), "forward"
    queue_num: int = DNS_QUEUE_NUM
    log_group: int = DNS_LOG_GROUP
    query_group: int = DNS_QUERY_GROUP


@dataclass(frozen=True)
class SniHook:
    """SNI binding: TCP to `ports` of an allowed address (a set or a CIDR) is queued to
    `queue_num` until its connection carries a verdict; refused connections are reset."""

    mode: str  # "audit" (nothing refused, mismatches recorded) or "enforce"
    ports: tuple[int, ...]
    cidrs4: tuple[str, ...] = ()
    cidrs6: tuple[str, ...] = ()
    queue_num: int = SNI_QUEUE_NUM

    @property
    def refuse_quic(self) -> bool:
        """QUIC carries its ClientHello encrypted (with keys anyone can derive, but not cheaply
        in the kernel path): under enforce UDP to the TLS ports is refused, clients fall back to
        TCP. Under audit it is left alone."""
        return self.mode == "enforce"


@dataclass(frozen=True)
class DesiredState:
    mode: str
    policy_digest: str
    sets: dict[str, tuple[Element, ...]]  # set name -> elements (sorted by ip)
    chains: tuple[ChainPlan, ...]
    dns: DnsHook
    conflicts: tuple[Conflict, ...] = ()
    audit: bool = False  # audit mode: refuse chains log and accept
    audit_group: int = AUDIT_LOG_GROUP
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)  # ip -> names (for explain)
    sni: SniHook | None = None  # SNI binding, when the policy turns it on

    def element_count(self) -> int:
        return sum(len(v) for v in self.sets.values())


def family_of(ip: str) -> int:
    return ipaddress.ip_address(ip).version


def split_families(addrs) -> tuple[tuple[str, ...], tuple[str, ...]]:
    v4 = tuple(a for a in addrs if ipaddress.ip_network(a, strict=False).version == 4)
    v6 = tuple(a for a in addrs if ipaddress.ip_network(a, strict=False).version == 6)
    return v4, v6


def plan(
    policy: Policy,
    snapshot: dict[str, dict[str, float]],
    now: float,
    dns_servers: tuple[str, ...] = (),
    snoop_mode: str = "off",
) -> DesiredState:
    """Compute the desired state.

    snapshot: name -> {ip: absolute expiry} (DnsCache.snapshot()), on the same clock as `now`.
    dns_servers: the trusted resolvers (policy.dns.servers, or the namespace's resolv.conf).
    snoop_mode: the mechanism actually chosen after probing ("queue", "log" or "off").
    """
    allowed: dict[str, dict[str, float]] = {}  # ip -> {name: expiry}
    blocked: dict[str, dict[str, float]] = {}
    for name, ips in snapshot.items():
        verdict, _ = policy.classify(name)
        target = {"allowed": allowed, "blocked": blocked}.get(verdict)
        if target is None:
            continue
        for ip, expiry in ips.items():
            if expiry > now:
                target.setdefault(ip, {})[name] = expiry

    conflicts = tuple(
        Conflict(ip, tuple(sorted(allowed[ip])), tuple(sorted(blocked[ip]))) for ip in sorted(set(allowed) & set(blocked))
    )
    conflicted = {c.ip for c in conflicts}

    def elements(source: dict[str, dict[str, float]], family: int, skip: set[str]) -> tuple[Element, ...]:
        out = []
        for ip, names in source.items():
            if ip in skip or family_of(ip) != family:
                continue
            timeout = max(MIN_ELEMENT_TIMEOUT, math.ceil(max(names.values()) - now))
            out.append(Element(ip, timeout))
        out.sort(key=lambda e: ipaddress.ip_address(e.ip))
        return tuple(out)

    sets: dict[str, tuple[Element, ...]] = {}
    if policy.mode == "allowlist":
        # A conflicting IP stays allowed: the IP layer cannot tell the two names apart.
        sets["allow4"] = elements(allowed, 4, set())
        sets["allow6"] = elements(allowed, 6, set())
    else:
        sets["block4"] = elements(blocked, 4, conflicted)
        sets["block6"] = elements(blocked, 6, conflicted)

    servers4, servers6 = split_families(dns_servers)
    cidrs4, cidrs6 = split_families(tuple(policy.allow_cidrs) + tuple(policy.infrastructure_cidrs))
    final = "accept" if policy.audit else "drop" if snoop_mode == "log" else "reject"
    sni = None
    if policy.tls.sni != "off" and policy.mode == "allowlist":
        sni = SniHook("audit" if policy.audit else policy.tls.sni, tuple(policy.tls.ports), cidrs4, cidrs6)
    chains = []
    for hook, enabled in (("output", policy.scope.output), ("forward", policy.scope.forward)):
        if enabled:
            rules = _skeleton(policy, hook, servers4, servers6, cidrs4, cidrs6)
            chains.append(ChainPlan(hook, ((Rule("sni_bind"),) if sni else ()) + rules, final))

    hooks = tuple(h for h, on in (("input", policy.scope.output), ("forward", policy.scope.forward)) if on)
    names = {ip: tuple(sorted(n)) for src in (allowed, blocked) for ip, n in src.items()}
    return DesiredState(
        mode=policy.mode,
        policy_digest=policy.digest,
        sets=sets,
        chains=tuple(chains),
        dns=DnsHook(snoop_mode, servers4, servers6, hooks),
        conflicts=conflicts,
        audit=policy.audit,
        names=names,
        sni=sni,
    )


def _skeleton(policy: Policy, hook: str, servers4, servers6, cidrs4, cidrs6) -> tuple[Rule, ...]:
    rules = [Rule("accept_established")]
    if hook == "output":
        rules.append(Rule("accept_loopback"))
        if policy.scope.cgroup:
            rules.append(Rule("bypass_cgroup", args=(policy.scope.cgroup,)))
    elif policy.scope.internal_interfaces:
        rules.append(Rule("accept_internal", args=policy.scope.internal_interfaces))
    # Link protocols (ND, MLD, DHCP) are never routed, so the forward hook needs no exception
    # for them; it only lets published ports' inbound connections back out.
    rules.append(Rule("accept_link_local") if hook == "output" else Rule("accept_published"))
    if policy.mode == "denylist":
        rules += [Rule("refuse_set", 4, ("block4",)), Rule("refuse_set", 6, ("block6",)), Rule("accept_all")]
        return tuple(rules)
    for family, servers in ((4, servers4), (6, servers6)):
        if servers:
            rules.append(Rule("accept_dns", family, servers))
    for family, cidrs in ((4, cidrs4), (6, cidrs6)):
        if cidrs:
            rules.append(Rule("accept_cidrs", family, cidrs))
    rules += [Rule("accept_set", 4, ("allow4",)), Rule("accept_set", 6, ("allow6",)), Rule("refuse_all")]
    return tuple(rules)
