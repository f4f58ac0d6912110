"""What the iptables backend installs, as pure data: ramfw's chains and jumps in one family's
`filter` table (iptables-save arguments), and the ipset create lines. No I/O, no root.

Layout (IPv4 rules in iptables, IPv6 rules in ip6tables, same names in both):

    OUTPUT       -p udp/tcp --dport 53 -j RAMFW-DNS-OUT  (DNS snooping on: questions, NFLOG)
                 ! --ctstate RELATED,ESTABLISHED -j RAMFW-OUT  (scope.output)  first rules of OUTPUT
    INPUT        -p udp/tcp --sport 53 -j RAMFW-DNS-IN   (snooping on: answers, NFLOG or NFQUEUE)
    DOCKER-USER  the two DNS jumps (snooping in forward scope), then
    (or FORWARD) ! --ctstate RELATED,ESTABLISHED -j RAMFW-FWD  (scope.forward; DOCKER-USER when
                 Docker's chain exists)
    RAMFW-OUT / RAMFW-FWD          the planner's rule skeleton, in the nft backend's order
    RAMFW-REFUSE-OUT / -FWD        NFLOG (audit group, prefix "ramfw-block-out "/"-fwd ") then
                                   REJECT tcp-reset / icmp(6) admin-prohibited, or DROP (log mode)
    RAMFW-META                     never jumped to; one `-m comment` rule carrying the policy
                                   digest, mode, snoop mode, flavour (status reads it back)
    ipsets ramfw-allow4/6, ramfw-block4/6   hash:ip, timeout 0 (per-element timeouts)

The jumps carry their own conditions (see jump_rules) for throughput: iptables-nft gives every
rule a counter, updated only when the rule's matches succeed, so an unconditional jump costs
every packet a counter update and a chain traversal, and the established-accept inside RAMFW-OUT
another counter. Conditioned, an established packet (nearly all of a bulk transfer) fails one
native `ct state` compare in OUTPUT and goes on: no counter, no jump. Established traffic is
still never refused by ramfw (it just no longer enters ramfw's chains; RAMFW-OUT keeps its own
established-accept for anything that reaches it), the DNS chains only ever matched port 53, and
the DNS jumps stay ahead of the main jump. Jumps written by earlier versions (`-j RAMFW-X`, no
condition) are still recognised as ramfw's, so a re-apply replaces them and destroy removes them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ramfw.errors import BackendError
from ramfw.plan import DesiredState, Rule
from ramfw.backends.links import DHCP4_BROADCAST, DHCP6_SERVERS, LINK_LOCAL6, Links, is_loopback
from ramfw.backends.meta import meta_text
from ramfw.backends import sni_rules
from ramfw.backends.iptables.ipset import _set_sizes

PREFIX = "RAMFW-"
MAIN_CHAIN = {"output": "RAMFW-OUT", "forward": "RAMFW-FWD"}
REFUSE_CHAIN = {"output": "RAMFW-REFUSE-OUT", "forward": "RAMFW-REFUSE-FWD"}
DNS_IN, DNS_OUT, META = "RAMFW-DNS-IN", "RAMFW-DNS-OUT", "RAMFW-META"
DOCKER_USER = "DOCKER-USER"
BUILTIN = ("INPUT", "FORWARD", "OUTPUT")
IPSET = {"allow4": "ramfw-allow4", "allow6": "ramfw-allow6", "block4": "ramfw-block4", "block6": "ramfw-block6"}
REJECT_OTHER = {4: "icmp-admin-prohibited", 6: "icmp6-adm-prohibited"}
# Link protocols, each only towards the link (see the nft backend for the reasoning):
# ND (RS, RA, NS, NA) with hop limit 255 to link-local, link-scope multicast or a connected
# network; MLD (query/report/done, MLDv2 report) with hop limit 1 to multicast; DHCP only to
# the broadcast/well-known server addresses or a connected network.
ND_TYPES = (133, 134, 135, 136)
MLD_TYPES = (130, 131, 132, 143)
ESTABLISHED = "-m conntrack ! --ctstate RELATED,ESTABLISHED"  # as iptables-save prints it
COUNTER_CHAINS = {"refuse_output": REFUSE_CHAIN["output"], "refuse_forward": REFUSE_CHAIN["forward"], "dns_answers": DNS_IN}


def save_string(value: str) -> str:
    """A value the way iptables-save prints it (libxtables xtables_save_string)."""
    safe = "_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    if value and all(c in safe for c in value):
        return value
    return '"' + "".join("\\" + c if c in "\"\\'" else c for c in value) + '"'


def _host(addr: str) -> str:
    """An address or network in iptables-save's canonical form (always with a prefix length)."""
    net = ipaddress.ip_network(addr, strict=False)
    return f"{net.network_address.compressed}/{net.prefixlen}"


def meta_comment(desired: DesiredState, flavour: str, created: set[str] = frozenset()) -> str:
    text = f"{meta_text(desired)} flavour={flavour}"
    if created:
        text += " created=" + ",".join(sorted(created))
    return text


@dataclass
class TablePart:
    """ramfw's part of one family's filter table: its chains (rules as iptables-save prints them,
    without "-A CHAIN") and the jump rules that must be the first rules of other chains."""

    family: int
    chains: dict[str, list[str]] = field(default_factory=dict)
    jumps: dict[str, list[str]] = field(default_factory=dict)  # anchor -> jump rules (args), in order

    def empty(self) -> bool:
        return not self.chains and not self.jumps


def jump_rules(target: str) -> list[str]:
    """The rules (iptables-save arguments) that jump to one of ramfw's chains: only packets the
    chain can act on enter it (see the module docstring)."""
    if target in (DNS_OUT, DNS_IN):
        port = "--dport" if target == DNS_OUT else "--sport"
        return [f"-p {p} -m {p} {port} 53 -j {target}" for p in ("udp", "tcp")]
    if target in MAIN_CHAIN.values():
        return [f"{ESTABLISHED} -j {target}"]
    raise ValueError(f"ramfw does not jump to {target}")


def is_our_jump(args: str) -> bool:
    """A rule in someone else's chain that ramfw wrote: a jump as rendered now, or the bare
    `-j RAMFW-X` earlier versions wrote (recognised so that an upgrade replaces it)."""
    target = jump_target(args)
    if not is_ours(target):
        return False
    if sni_rules.is_sni_jump(args):
        return True
    if args.split() in (["-j", target], ["-g", target]):
        return True
    try:
        return args in jump_rules(target)
    except ValueError:
        return False


def _rule_args(rule: Rule, family: int, hook: str, links: Links = Links()) -> list[str]:
    if rule.family and rule.family != family:
        return []
    refuse = f"-g {REFUSE_CHAIN[hook]}"
    match rule.kind:
        case "accept_established":
            return ["-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]
        case "accept_loopback":
            return ["-o lo -j ACCEPT"]
        case "bypass_cgroup":
            path = rule.args[0]
            if not path or any(c.isspace() or c in "\"'\\" for c in path):
                raise BackendError(f"cgroup path {path!r} cannot be expressed as an xt_cgroup --path")
            return [f"-m cgroup ! --path {save_string(path)} -j ACCEPT"]
        case "accept_internal":
            # nft's trailing * (prefix match) is xtables' trailing +
            return [f"-o {name[:-1] + '+' if name.endswith('*') else name} -j ACCEPT" for name in rule.args]
        case "accept_link_local":
            if family == 6:
                local = [_host(n) for n in LINK_LOCAL6 + links.onlink6]
                out = [f"-d {d} -p ipv6-icmp -m icmp6 --icmpv6-type {t} -m hl --hl-eq 255 -j ACCEPT" for d in local for t in ND_TYPES]
                out += [f"-d ff00::/8 -p ipv6-icmp -m icmp6 --icmpv6-type {t} -m hl --hl-eq 1 -j ACCEPT" for t in MLD_TYPES]
                out += [f"-d {_host(d)} -p udp -m udp --sport 546 --dport 547 -j ACCEPT" for d in DHCP6_SERVERS + links.onlink6]
            else:
                out = [f"-d {_host(d)} -p udp -m udp --sport 68 --dport 67 -j ACCEPT" for d in DHCP4_BROADCAST + links.onlink4]
            return out
        case "accept_published":
            # Published ports: inbound connections DNATed to containers are not egress.
            return ["-m conntrack --ctstate DNAT -j ACCEPT"]
        case "accept_dns":
            return [f"-d {_host(s)} -p {p} -m {p} --dport 53 -j ACCEPT" for s in rule.args for p in ("udp", "tcp")]
        case "accept_cidrs":
            return [f"-d {_host(c)} -j ACCEPT" for c in rule.args]
        case "accept_set":
            return [f"-m set --match-set {IPSET[rule.args[0]]} dst -j ACCEPT"]
        case "refuse_set":
            return [f"-m set --match-set {IPSET[rule.args[0]]} dst {refuse}"]
        case "refuse_all":
            return [refuse]
        case "accept_all":
            return ["-j ACCEPT"]
        case "sni_bind":
            return []  # its own chains, RAMFW-SNI-OUT/-FWD (sni_rules.add_to_table_part)
    raise ValueError(f"unknown rule kind {rule.kind}")


def _answer_source(server: str, links: Links) -> str:
    """Where a genuine answer from `server` arrives: -i of the interface its route uses (a
    resolver on a loopback address: lo). The xtables reverse-path match is refused in the
    filter table, so the interface read from the routes stands in for it; unknown: not lo."""
    if is_loopback(server):
        return "-i lo"
    iface = links.iface(server)
    return f"-i {iface}" if iface and iface != "lo" else "! -i lo"


def table_part(desired: DesiredState, family: int, forward_anchor: str = "FORWARD", meta: str = "", links: Links = Links()) -> TablePart:
    """Pure: what ramfw installs in one family's filter table for `desired`."""
    part = TablePart(family)
    part.chains[META] = [f"-m comment --comment {save_string(meta or meta_comment(desired, 'auto'))} -j RETURN"]
    main_jumps: dict[str, str] = {}
    for chain in desired.chains:
        rules = [a for r in chain.rules for a in _rule_args(r, family, chain.hook, links)]
        part.chains[MAIN_CHAIN[chain.hook]] = rules
        prefix = chain.log_prefix + " "
        refuse = [f"-j NFLOG --nflog-prefix {save_string(prefix)} --nflog-group {desired.audit_group}"]
        if chain.final in ("drop", "accept"):
            refuse.append(f"-j {chain.final.upper()}")
        else:
            refuse += ["-p tcp -j REJECT --reject-with tcp-reset", f"-j REJECT --reject-with {REJECT_OTHER[family]}"]
        part.chains[REFUSE_CHAIN[chain.hook]] = refuse
        main_jumps[chain.hook] = MAIN_CHAIN[chain.hook]

    dns = desired.dns
    servers = [s for s in (dns.servers4 if family == 4 else dns.servers6)]
    dns_jumps: dict[str, list[str]] = {}
    if dns.mode in ("log", "queue") and servers and dns.hooks:
        if dns.mode == "log":
            action = f"-j NFLOG --nflog-group {dns.log_group}"
        else:
            action = f"-j NFQUEUE --queue-num {dns.queue_num} --queue-bypass"
        part.chains[DNS_OUT] = [f"-d {_host(s)} -p {p} -m {p} --dport 53 -j NFLOG --nflog-group {dns.query_group}" for s in servers for p in ("udp", "tcp")]
        # Only answers from where the resolver really is: a forged one (right tuple, sent over
        # loopback or from a container bridge by a process with CAP_NET_RAW) is not credited.
        part.chains[DNS_IN] = [f"-s {_host(s)} {_answer_source(s, links)} -p {p} -m {p} --sport 53 {action}" for s in servers for p in ("udp", "tcp")]
        if "input" in dns.hooks:
            dns_jumps["OUTPUT"] = [DNS_OUT]
            dns_jumps["INPUT"] = [DNS_IN]
        if "forward" in dns.hooks:
            dns_jumps[forward_anchor] = [DNS_OUT, DNS_IN]

    # DNS chains first: their NFLOG/NFQUEUE must see packets before RAMFW-OUT accepts them.
    for anchor, targets in dns_jumps.items():
        part.jumps.setdefault(anchor, []).extend(j for t in targets for j in jump_rules(t))
    cgroup = next((r.args[0] for c in desired.chains for r in c.rules if r.kind == "bypass_cgroup"), "")
    sni_rules.add_to_table_part(part, desired, family, forward_anchor, cgroup, save_string)  # SNI binding, if on
    if "output" in main_jumps:
        part.jumps.setdefault("OUTPUT", []).extend(jump_rules(main_jumps["output"]))
    if "forward" in main_jumps:
        part.jumps.setdefault(forward_anchor, []).extend(jump_rules(main_jumps["forward"]))
    return part


def ipset_create_line(set_name: str, count: int) -> str:
    family = "inet6" if set_name.endswith("6") else "inet"
    hashsize, maxelem = _set_sizes(count)
    return f"create {IPSET[set_name]} hash:ip family {family} hashsize {hashsize} maxelem {maxelem} timeout 0"


def jump_target(args: str) -> str | None:
    """The target of a rule given as iptables-save arguments (-j X / -g X), else None."""
    toks = args.split()
    for i in range(len(toks) - 1):
        if toks[i] in ("-j", "-g"):
            return toks[i + 1]
    return None



def is_ours(chain: str | None) -> bool:
    """A chain ramfw owns (its name carries ramfw's prefix)."""
    return bool(chain) and chain.startswith(PREFIX)
