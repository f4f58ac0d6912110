"""The nft script for table `inet ramfw`, as pure text: the same script `ramfw dry-run` prints
and apply() sends. No I/O: the facts that cannot be constants (whether the kernel's nftables has
`queue`, the namespace's links, whether scope.cgroup exists yet) are given to NftRender.
"""

from __future__ import annotations

from dataclasses import dataclass

from ramfw.plan import DesiredState, Rule
from ramfw.backends.links import DHCP4_BROADCAST, DHCP6_SERVERS, LINK_LOCAL6, Links, is_loopback
from ramfw.backends.meta import meta_text
from ramfw.backends import sni_rules

TABLE = "ramfw"
FAMILY = "inet"
CHAIN_PRIORITY = "filter - 10"  # before Docker's filter rules (priority filter)
DNS_PRIORITY = "filter - 20"  # see answers before anything accepts them as established
CHAIN_FOR_HOOK = {"output": "output_filter", "forward": "forward_filter"}
REFUSE_CHAIN = {"output": "refuse_output", "forward": "refuse_forward"}
DNS_CHAIN = {"output": "dns_output", "input": "dns_input", "forward": "dns_forward"}
SET_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
ADDR = {4: "ip", 6: "ip6"}
# Neighbour discovery is only valid with hop limit 255 (RFC 4861: a receiver drops anything
# else) and only towards the link: link-local, link-scope multicast, or a neighbour on a
# directly connected network. MLD travels with hop limit 1 to multicast groups (RFC 3810).
# Neither may reach an address behind a gateway: that would be a tunnel to the internet.
ND_TYPES = "nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert"
MLD_TYPES = "mld-listener-query, mld-listener-report, mld-listener-done, mld2-listener-report"


@dataclass
class ChainText:
    name: str
    hook: str | None  # None for a regular (jump target) chain
    priority: str = ""
    rules: tuple[str, ...] = ()

    def text(self) -> str:
        head = []
        if self.hook:
            head.append(f"\t\ttype filter hook {self.hook} priority {self.priority}; policy accept;")
        body = [f"\t\t{r}" for r in self.rules]
        return "\n".join([f"\tchain {self.name} {{", *head, *body, "\t}"])


def _elements_text(elements) -> str:
    return ", ".join(f"{e.ip} timeout {e.timeout}s" for e in elements)


def _addrs(values) -> str:
    return "{ " + ", ".join(values) + " }"


META_CHAIN = "policy_info"  # ("meta" is an nft keyword)


class NftRender:
    """Renders desired states for one kernel and namespace.

    native_queue: the kernel's nftables has `queue` (else DNS answers are queued by the xtables
    fallback and the DNS chains only count them); links: the namespace's connected networks and
    the way to each resolver (Links(): nothing known, the strictest exceptions); cgroup_missing:
    scope.cgroup does not exist yet, so nothing bypasses the filter."""

    def __init__(self, native_queue: bool = False, links: Links = Links(), cgroup_missing: bool = False):
        self.native_queue = native_queue
        self.links = links
        self.cgroup_missing = cgroup_missing

    def chains(self, desired: DesiredState) -> list[ChainText]:
        chains = []
        for chain in desired.chains:
            rules = [r for rule in chain.rules
                     for r in (self._sni_text(desired, chain.hook) if rule.kind == "sni_bind" else self._rule_text(rule, chain.hook))]
            chains.append(ChainText(CHAIN_FOR_HOOK[chain.hook], chain.hook, CHAIN_PRIORITY, tuple(rules)))
            refuse = [f'counter name "{REFUSE_CHAIN[chain.hook]}"', f'log prefix "{chain.log_prefix} " group {desired.audit_group}']
            if chain.final in ("drop", "accept"):
                refuse.append(chain.final)
            else:
                refuse += ["meta l4proto tcp reject with tcp reset", "reject with icmpx admin-prohibited"]
            chains.append(ChainText(REFUSE_CHAIN[chain.hook], None, rules=tuple(refuse)))
        if desired.sni is not None:  # SNI binding's check chain, jumped to from both hooks
            check = sni_rules.nft_check_chain(desired, self.native_queue)
            chains.append(ChainText(sni_rules.NFT_CHECK_CHAIN, None, rules=tuple(check)))
        chains += self._dns_chains(desired)
        # never jumped to: carries what status reads back
        chains.append(ChainText(META_CHAIN, None, rules=(f'counter comment "{meta_text(desired)}"',)))
        return chains

    def _sni_text(self, desired: DesiredState, hook: str) -> list[str]:
        """SNI binding's rules (backends/sni_rules.py), narrowed to the scope's cgroup on output."""
        path = next((r.args[0] for c in desired.chains for r in c.rules if r.kind == "bypass_cgroup"), None)
        cgroup = f'socket cgroupv2 level {path.count("/") + 1} "{path}"' if path and hook == "output" and not self.cgroup_missing else ""
        return sni_rules.nft_rules(desired, self.native_queue, cgroup)

    def _dns_chains(self, desired: DesiredState) -> list[ChainText]:
        """Questions to the trusted servers are logged, answers from them held or copied.

        An answer counts only if it arrived where its resolver really is: a resolver on a
        loopback address over `lo`, any other over the interface the route back to it uses
        (`fib saddr . iif oif`: a strict reverse-path check). The same source address arriving
        over loopback, or from a container bridge, is a forgery by a process that knows the
        question's tuple (it asked it) and holds CAP_NET_RAW: it is neither held nor credited."""
        dns = desired.dns
        if dns.mode == "off":
            return []
        action = self._dns_action(desired)
        l4 = "meta l4proto { tcp, udp }"
        queries, answers = [], []
        for family, servers in ((4, dns.servers4), (6, dns.servers6)):
            if not servers:
                continue
            queries.append(f"{ADDR[family]} daddr {_addrs(servers)} {l4} th dport 53 log group {dns.query_group}")
            local = [s for s in servers if is_loopback(s)]
            remote = [s for s in servers if not is_loopback(s)]
            tail = f'{l4} th sport 53 counter name "dns_answers" {action}'.rstrip()
            if remote:
                answers.append(f'{ADDR[family]} saddr {_addrs(remote)} iifname != "lo" fib saddr . iif oif exists {tail}')
            if local:
                answers.append(f'{ADDR[family]} saddr {_addrs(local)} iifname "lo" {tail}')
        chains = []
        if "input" in dns.hooks:
            chains.append(ChainText(DNS_CHAIN["output"], "output", DNS_PRIORITY, tuple(queries)))
            chains.append(ChainText(DNS_CHAIN["input"], "input", DNS_PRIORITY, tuple(answers)))
        if "forward" in dns.hooks:
            chains.append(ChainText(DNS_CHAIN["forward"], "forward", DNS_PRIORITY, tuple(queries + answers)))
        return chains

    def _dns_action(self, desired: DesiredState) -> str:
        dns = desired.dns
        if dns.mode == "log":
            return f"log group {dns.log_group}"
        if dns.mode == "queue" and self.native_queue:
            return f"queue num {dns.queue_num} bypass"
        return ""  # queue through the xtables NFQUEUE fallback (see queue_fallback.py): count only

    def _rule_text(self, rule: Rule, hook: str) -> list[str]:
        refuse = f"goto {REFUSE_CHAIN[hook]}"
        match rule.kind:
            case "accept_established":
                return ["ct state established,related accept"]
            case "accept_loopback":
                return ['oifname "lo" accept']
            case "bypass_cgroup":
                path = rule.args[0]
                if self.cgroup_missing:
                    # Not there yet (the engine starts after ramfw): nothing to bypass for,
                    # so every process is filtered until it appears (fail closed)
                    return []
                return [f'socket cgroupv2 level {path.count("/") + 1} != "{path}" accept']
            case "accept_internal":
                return [f'oifname "{name}" accept' for name in rule.args]
            case "accept_link_local":
                # Only what the link protocols need, only towards the link (see ND_TYPES).
                on6, on4 = self.links.onlink6, self.links.onlink4
                return [
                    f"icmpv6 type {{ {ND_TYPES} }} ip6 hoplimit 255 ip6 daddr {_addrs(LINK_LOCAL6 + on6)} accept",
                    f"icmpv6 type {{ {MLD_TYPES} }} ip6 hoplimit 1 ip6 daddr ff00::/8 accept",
                    f"meta nfproto ipv4 udp sport 68 udp dport 67 ip daddr {_addrs(DHCP4_BROADCAST + on4)} accept",
                    f"meta nfproto ipv6 udp sport 546 udp dport 547 ip6 daddr {_addrs(DHCP6_SERVERS + on6)} accept",
                ]
            case "accept_published":
                # Published ports: inbound connections DNATed to containers are not egress.
                return ["ct status dnat accept"]
            case "accept_dns":
                return [f"{ADDR[rule.family]} daddr {_addrs(rule.args)} meta l4proto {{ tcp, udp }} th dport 53 accept"]
            case "accept_cidrs":
                return [f"{ADDR[rule.family]} daddr {_addrs(rule.args)} accept"]
            case "accept_set":
                return [f"{ADDR[rule.family]} daddr @{rule.args[0]} accept"]
            case "refuse_set":
                return [f"{ADDR[rule.family]} daddr @{rule.args[0]} {refuse}"]
            case "refuse_all":
                return [refuse]
            case "accept_all":
                return ["accept"]
        raise ValueError(f"unknown rule kind {rule.kind}")

    def render(self, desired: DesiredState, counters: dict[str, dict[str, int]] | None = None) -> str:
        lines = []
        counters = counters or {}
        for name in counter_names(desired):
            # Carry the old counts across a reload so status figures do not reset.
            old = counters.get(name, {})
            lines.append(f"\tcounter {name} {{ packets {old.get('packets', 0)} bytes {old.get('bytes', 0)} }}")
        for set_name, elements in desired.sets.items():
            family = 6 if set_name.endswith("6") else 4
            body = [f"\t\ttype {SET_TYPE[family]}", "\t\tflags timeout"]
            if elements:
                body.append(f"\t\telements = {{ {_elements_text(elements)} }}")
            lines.append("\n".join([f"\tset {set_name} {{", *body, "\t}"]))
        lines += [c.text() for c in self.chains(desired)]
        return f"table {FAMILY} {TABLE} {{\n" + "\n".join(lines) + "\n}\n"


def counter_names(desired: DesiredState) -> list[str]:
    """The named counters the table declares (status reads them; a re-apply carries their counts)."""
    return sorted({REFUSE_CHAIN[c.hook] for c in desired.chains} | ({"dns_answers"} if desired.dns.mode != "off" else set()))

