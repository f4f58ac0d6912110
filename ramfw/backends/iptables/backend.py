"""iptables backend: ramfw's own chains in the `filter` table plus ipsets, nothing else.

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

Two xtables flavours live side by side in a Linux kernel, and a rule is only visible to the
tools of its own flavour: iptables-legacy (setsockopt IPT_SO_SET_REPLACE on per-namespace legacy
tables; python-iptables drives only this one: it links libip4tc/libip6tc, the legacy libiptc)
and iptables-nft (the same rules kept as nf_tables `ip filter` / `ip6 filter` tables, what
Debian's `iptables` and therefore Debian's dockerd use; python-iptables cannot write these).
`probe()` picks the flavour per namespace and says why: the one ramfw already uses there, else
the one holding Docker's chains, else the one holding any rules, else the flavour of the
system's `iptables` command. Rules are then written in one atomic commit per table: with
python-iptables (one libiptc commit) for legacy, falling back to iptables-legacy-restore when
python-iptables is not installed, and with `iptables-nft-restore --noflush --counters` (one
nf_tables transaction) for nft. Both flavours are read with `<flavour>-save -c`, which never
instantiates a table. `KernelState.where` names the exact commands an admin should run, e.g.
"iptables-nft -S RAMFW-OUT; ip6tables-nft -S RAMFW-OUT; ipset list -t (sets ramfw-*)".

Sets are managed over raw ipset netlink (nfnetlink subsystem 6) on one socket opened inside the
namespace. pyroute2's IPSet was measured at ~270 us per add (p99 1.8 ms) and opens a fresh
socket per thread, in whatever namespace that thread happens to be in; the raw socket adds one
element in ~10 us (p99 ~25 us) and fills 100,000 in ~0.1 s (batches of 1,500 per message).
apply() builds every set under a temporary name (ramfw-allow4-new), fills it, swaps it with the
live one, commits the rules, and only then destroys the old contents: there is never a moment
without the refuse rule, and a refused rule commit swaps the old sets back. Counters of
unchanged rules are carried across a re-apply.

python-iptables pitfalls handled here (found on iptables 1.8.9 / python-iptables 1.2.0):
  * Table objects are cached per class and name, process-wide: a cached handle from another
    namespace would be reused. Tables are built with object.__new__ (no cache), autocommit off.
  * Target(rule, name) for any name outside its short list of standard targets (NFLOG, NFQUEUE,
    chain names) scans *all five* legacy tables through that cache, instantiating nat, mangle,
    raw and security in the namespace. Rules here are a subclass that only looks in the table
    being edited.
  * Setting `nflog_prefix` corrupts the heap (segfault/abort after a few rules); the prefix is
    written straight into the xt_nflog_info struct instead.
  * A handle is single-use after commit() (EAGAIN); every write opens a fresh one.
A legacy table cannot be removed from a namespace once instantiated (the kernel keeps it until
the namespace dies), so after `destroy()` an empty `*filter` may remain in iptables-legacy-save
where there was none; iptables-nft tables and base chains that ramfw created are deleted again.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import importlib.util
import ipaddress
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ramfw.kernel import netns
from ramfw.errors import BackendError, NetnsError
from ramfw.plan import DesiredState, Element, Rule
from ramfw.backends import sni_rules
from ramfw.backends.base import Backend, KernelState, Probe
from ramfw.backends.links import Links, is_loopback, read_links
from ramfw.backends.owned import OwnedElements
from ramfw.backends.iptables.ipset import (
    CMD_PROTOCOL,
    IPSET_ERR_REFERENCED,
    MAX_TIMEOUT,
    IpsetError,
    IpsetSocket,
    _set_sizes,
)

log = logging.getLogger(__name__)

PREFIX = "RAMFW-"
MAIN_CHAIN = {"output": "RAMFW-OUT", "forward": "RAMFW-FWD"}
REFUSE_CHAIN = {"output": "RAMFW-REFUSE-OUT", "forward": "RAMFW-REFUSE-FWD"}
DNS_IN, DNS_OUT, META = "RAMFW-DNS-IN", "RAMFW-DNS-OUT", "RAMFW-META"
DOCKER_USER = "DOCKER-USER"
BUILTIN = ("INPUT", "FORWARD", "OUTPUT")
IPSET = {"allow4": "ramfw-allow4", "allow6": "ramfw-allow6", "block4": "ramfw-block4", "block6": "ramfw-block6"}
TEMP_SUFFIX = "-new"
FLAVOURS = ("legacy", "nft")
TOOL = {("legacy", 4): "iptables-legacy", ("legacy", 6): "ip6tables-legacy", ("nft", 4): "iptables-nft", ("nft", 6): "ip6tables-nft"}
NFT_FAMILY = {4: "ip", 6: "ip6"}
REJECT_OTHER = {4: "icmp-admin-prohibited", 6: "icmp6-adm-prohibited"}
# Link protocols, each only towards the link (see the nft backend for the reasoning):
# ND (RS, RA, NS, NA) with hop limit 255 to link-local, link-scope multicast or a connected
# network; MLD (query/report/done, MLDv2 report) with hop limit 1 to multicast; DHCP only to
# the broadcast/well-known server addresses or a connected network.
ND_TYPES = (133, 134, 135, 136)
MLD_TYPES = (130, 131, 132, 143)
LINK_LOCAL6 = ("fe80::/10", "ff02::/16")
DHCP6_SERVERS = ("ff02::1:2", "fe80::/10")
DHCP4_BROADCAST = ("255.255.255.255",)
ESTABLISHED = "-m conntrack ! --ctstate RELATED,ESTABLISHED"  # as iptables-save prints it
COUNTER_CHAINS = {"refuse_output": REFUSE_CHAIN["output"], "refuse_forward": REFUSE_CHAIN["forward"], "dns_answers": DNS_IN}


# ---- pure rendering ---------------------------------------------------------------------------


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
    text = f"ramfw policy={desired.policy_digest} mode={desired.mode}{' audit=1' if desired.audit else ''} snoop={desired.dns.mode} flavour={flavour}"
    if created:
        text += " created=" + ",".join(sorted(created))
    return text


def parse_meta(comment: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in comment.split() if "=" in kv)


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
    target = _jump_target(args)
    if not _ours(target):
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


def _jump_target(args: str) -> str | None:
    """The target of a rule given as iptables-save arguments (-j X / -g X), else None."""
    toks = args.split()
    for i in range(len(toks) - 1):
        if toks[i] in ("-j", "-g"):
            return toks[i + 1]
    return None


def _ours(chain: str | None) -> bool:
    return bool(chain) and chain.startswith(PREFIX)


# ---- iptables-save text -----------------------------------------------------------------------


@dataclass
class TableDump:
    chains: dict[str, str] = field(default_factory=dict)  # chain -> policy ("-" for user chains)
    rules: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)  # chain -> [(args, packets, bytes)]

    def ours(self) -> list[str]:
        return [c for c in self.chains if _ours(c)]

    def has_content(self) -> bool:
        return any(r for r in self.rules.values()) or any(p == "-" for p in self.chains.values()) or any(
            p not in ("-", "ACCEPT") for p in self.chains.values()
        )

    def meta(self) -> dict[str, str]:
        for args, _p, _b in self.rules.get(META, []):
            toks = shlex.split(args)
            if "--comment" in toks:
                return parse_meta(toks[toks.index("--comment") + 1])
        return {}


def parse_save(text: str) -> dict[str, TableDump]:
    """iptables-save [-c] output -> table -> TableDump."""
    tables: dict[str, TableDump] = {}
    cur: TableDump | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            cur = tables.setdefault(line[1:], TableDump())
        elif cur is None:
            continue
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            cur.chains[name] = policy
            cur.rules.setdefault(name, [])
        elif line == "COMMIT":
            cur = None
        else:
            packets = nbytes = 0
            if line.startswith("["):
                counts, line = line.split("]", 1)
                packets, nbytes = (int(x) for x in counts[1:].split(":"))
                line = line.strip()
            if line.startswith("-A "):
                _, chain, *rest = line.split(" ", 2)
                cur.rules.setdefault(chain, []).append((rest[0] if rest else "", packets, nbytes))
    return tables


# ---- namespace facts --------------------------------------------------------------------------


def _run(netns_name, argv, input_text=None, check=False) -> subprocess.CompletedProcess:
    with netns.entered(netns_name):
        try:
            proc = subprocess.run(argv, input=input_text, capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            raise BackendError(f"{argv[0]} is not installed") from None
    if check and proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[0]
        raise BackendError(f"{' '.join(argv)} failed: {msg}")
    return proc


def _legacy_tables(netns_name, family: int) -> list[str] | None:
    """Legacy xtables tables instantiated in the namespace (None: kernel lacks legacy xtables).
    Reading the /proc list instantiates nothing (a getsockopt on a table would)."""
    name = "ip_tables_names" if family == 4 else "ip6_tables_names"
    with netns.entered(netns_name):
        try:
            with open(f"/proc/thread-self/net/{name}") as f:
                return f.read().split()
        except FileNotFoundError:
            return None


def _legacy_module_present() -> bool:
    """ip_tables not loaded yet, but loadable (modular kernels load it on first use)."""
    release = os.uname().release
    return any(Path(f"/lib/modules/{release}/kernel/net/ipv4/netfilter").glob("ip_tables.ko*"))


def _tool_available(flavour: str) -> bool:
    return all(shutil.which(f"{TOOL[(flavour, f)]}-save") and shutil.which(f"{TOOL[(flavour, f)]}-restore") for f in (4, 6))


def _iptc_available() -> bool:
    return importlib.util.find_spec("iptc") is not None


def read_tables(netns_name, flavour: str, family: int) -> dict[str, TableDump]:
    """Every table of one flavour and family, read with <tool>-save -c; creates nothing."""
    if flavour == "legacy" and not _legacy_tables(netns_name, family):
        return {}
    if not shutil.which(f"{TOOL[(flavour, family)]}-save"):
        return {}
    proc = _run(netns_name, [f"{TOOL[(flavour, family)]}-save", "-c"])
    if proc.returncode != 0:
        return {}
    return parse_save(proc.stdout)


def read_filter(netns_name, flavour: str, family: int) -> TableDump | None:
    return read_tables(netns_name, flavour, family).get("filter")


def system_flavour() -> str:
    path = shutil.which("iptables")
    real = os.path.basename(os.path.realpath(path)) if path else ""
    return "legacy" if "legacy" in real else "nft"


@dataclass
class Facts:
    legacy_kernel: bool
    available: dict[str, bool]
    ramfw: dict[str, bool]
    docker: dict[str, bool]
    rules: dict[str, bool]
    system: str


def gather_facts(netns_name) -> Facts:
    ramfw = {f: False for f in FLAVOURS}
    docker = {f: False for f in FLAVOURS}
    rules = {f: False for f in FLAVOURS}
    legacy_kernel = _legacy_tables(netns_name, 4) is not None or _legacy_module_present()
    for flavour in FLAVOURS:
        for family in (4, 6):
            for name, dump in read_tables(netns_name, flavour, family).items():
                if name == "filter" and dump.ours():
                    ramfw[flavour] = True
                if any(c.startswith("DOCKER") for c in dump.chains):
                    docker[flavour] = True
                if dump.has_content():
                    rules[flavour] = True
    available = {
        "legacy": legacy_kernel and (_iptc_available() or _tool_available("legacy")),
        "nft": _tool_available("nft"),
    }
    return Facts(legacy_kernel, available, ramfw, docker, rules, system_flavour())


def choose_flavour(facts: Facts, forced: str | None = None) -> tuple[str | None, str]:
    """(flavour or None, one line saying why)."""
    if forced:
        if forced not in FLAVOURS:
            return None, f"unknown iptables flavour {forced!r} (legacy or nft)"
        return (forced, "flavour chosen explicitly") if facts.available[forced] else (None, _unavailable(forced, facts))
    choice = why = None
    for fact, text in (
        (facts.ramfw, "ramfw's chains are already there"),
        (facts.docker, "Docker's chains are there"),
        (facts.rules, "the namespace's existing iptables rules are there"),
    ):
        holders = [f for f in FLAVOURS if fact[f]]
        if len(holders) == 1:
            choice, why = holders[0], text
            break
        if len(holders) == 2 and choice is None:
            why = f"{text.split(' are')[0]} are in both flavours; following the system's iptables"
            choice = facts.system
            break
    if choice is None:
        choice, why = facts.system, f"no iptables rules yet; the system's iptables command is iptables-{facts.system}"
    if not facts.available[choice]:
        return None, f"{why} (iptables-{choice}), but " + _unavailable(choice, facts)
    return choice, why


def _unavailable(flavour: str, facts: Facts) -> str:
    if flavour == "legacy":
        if not facts.legacy_kernel:
            return "this kernel has no legacy xtables (ip_tables)"
        return "neither python-iptables nor iptables-legacy-restore is installed"
    return "iptables-nft-save/-restore are not installed"


# ---- writing one table ------------------------------------------------------------------------


@dataclass
class WritePlan:
    family: int
    chains: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)  # (re)create + fill
    delete_chains: list[str] = field(default_factory=list)
    unjump: dict[str, list[str]] = field(default_factory=dict)  # chain -> rules (args) to delete
    jump: dict[str, list[str]] = field(default_factory=dict)  # anchor -> jump rules (args), inserted first

    def empty(self) -> bool:
        return not (self.chains or self.delete_chains or self.unjump or self.jump)


def plan_write(part: TablePart, dump: TableDump | None) -> WritePlan:
    """The changes that turn `dump` (None: no table yet) into one holding `part`; counters of
    unchanged rules are carried over."""
    dump = dump or TableDump()
    wp = WritePlan(part.family)
    for chain, rules in part.chains.items():
        old: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        for args, p, b in dump.rules.get(chain, []):
            old[args].append((p, b))
        wp.chains[chain] = [(a, *(old[a].popleft() if old[a] else (0, 0))) for a in rules]
    wp.delete_chains = [c for c in dump.ours() if c not in part.chains]
    for chain, rules in dump.rules.items():
        if _ours(chain):
            continue
        mine = [a for a, _p, _b in rules if is_our_jump(a)]
        want = part.jumps.get(chain, [])
        head = [a for a, _p, _b in rules[: len(want)]]
        if head == want and len(mine) == len(want):
            continue
        if mine:
            wp.unjump[chain] = mine
        if want:
            wp.jump[chain] = want
    for anchor, want in part.jumps.items():
        if anchor not in dump.rules:
            wp.jump[anchor] = want
    # A foreign rule referencing a chain we delete would make the commit fail: drop those too.
    doomed = set(wp.delete_chains)
    for chain, rules in dump.rules.items():
        if not _ours(chain):
            extra = [a for a, _p, _b in rules if _jump_target(a) in doomed and a not in wp.unjump.get(chain, [])]
            if extra:
                wp.unjump.setdefault(chain, []).extend(extra)
    return wp


def destroy_plan(family: int, dump: TableDump) -> WritePlan:
    wp = WritePlan(family)
    wp.delete_chains = dump.ours()
    for chain, rules in dump.rules.items():
        if not _ours(chain):
            refs = [a for a, _p, _b in rules if _ours(_jump_target(a))]
            if refs:
                wp.unjump[chain] = refs
    return wp


def restore_script(wp: WritePlan) -> list[str]:
    lines = ["*filter"]
    lines += [f":{c} - [0:0]" for c in list(wp.chains) + wp.delete_chains]  # creates, or empties
    for chain, specs in wp.unjump.items():
        lines += [f"-D {chain} {s}" for s in specs]
    for anchor, targets in wp.jump.items():
        lines += [f"-I {anchor} 1 {j}" for j in reversed(targets)]
    for chain, rules in wp.chains.items():
        lines += [f"[{p}:{b}] -A {chain} {a}" for a, p, b in rules]
    lines += [f"-X {c}" for c in wp.delete_chains]
    lines.append("COMMIT")
    return lines


def write_restore(netns_name, flavour: str, wp: WritePlan) -> None:
    """One <tool>-restore --noflush run: one atomic commit of the filter table."""
    tool = TOOL[(flavour, wp.family)]
    lines = restore_script(wp)
    proc = _run(netns_name, [f"{tool}-restore", "--noflush", "--counters"], "\n".join(lines) + "\n")
    if proc.returncode == 0:
        return
    err = [l.strip() for l in proc.stderr.strip().splitlines() if l.strip() and not l.startswith("Try `")]
    detail = err[-1] if err else f"exit status {proc.returncode}"
    for l in err:
        m = re.search(r"\bline (\d+)", l)
        if m and 0 < int(m.group(1)) <= len(lines):
            detail = f"{l} (`{lines[int(m.group(1)) - 1]}`)"
            break
    raise BackendError(f"{tool}-restore refused ramfw's rules: {detail}")


_IPTC_LOCK = threading.Lock()  # libxtables keeps global state: one user at a time
_iptc_mod = None
_rule_cls: dict[int, type] = {}


def _iptc():
    """python-iptables, imported on first use (must run inside the namespace: importing it runs
    modprobe and probes extension revisions through a raw socket)."""
    global _iptc_mod
    if _iptc_mod is None:
        try:
            import iptc  # noqa: PLC0415
        except Exception as exc:  # ImportError, or XTablesError from a missing libxtables
            raise BackendError(f"python-iptables cannot be loaded: {exc}") from None
        for family, base in ((4, iptc.Rule), (6, iptc.Rule6)):
            # Look targets up in the table being edited only (see module docstring).
            _rule_cls[family] = type(f"RamfwRule{family}", (base,), {"tables": property(lambda self: self._ramfw_tables)})
        _iptc_mod = iptc
    return _iptc_mod


_FIELDS = {"-s": "src", "-d": "dst", "-p": "protocol", "-o": "out_interface", "-i": "in_interface"}
_NFLOG_PREFIX_OFFSET = 12  # struct xt_nflog_info { u32 len; u16 group, threshold, flags, pad; char prefix[64]; }


def _iptc_rule(iptc, family: int, table, args: str):
    """Build a python-iptables rule from iptables-save arguments."""
    rule = _rule_cls[family]()
    rule._ramfw_tables = [table]
    toks = shlex.split(args)
    cur = None
    nflog_prefix = None
    negate = False
    i = 0
    while i < len(toks):
        tok = toks[i]
        if tok == "!":
            negate = True
            i += 1
            continue
        if tok in _FIELDS:
            value = toks[i + 1]
            if tok == "-p" and not value.isdigit():
                value = str(socket.getprotobyname(value))  # python-iptables' own table lacks ipv6-icmp
            setattr(rule, _FIELDS[tok], ("!" if negate else "") + value)
            negate = False
            i += 2
        elif tok == "-m":
            cur = rule.create_match(toks[i + 1])
            i += 2
        elif tok in ("-j", "-g"):
            cur = iptc.Target(rule, toks[i + 1], goto=(tok == "-g"))
            rule.target = cur
            i += 2
        elif tok.startswith("--") and cur is not None:
            j = i + 1
            vals = []
            while j < len(toks) and toks[j] != "!" and not (toks[j].startswith("-") and toks[j] != "-"):
                vals.append(toks[j])
                j += 1
            if tok == "--nflog-prefix":
                nflog_prefix = vals[0]
            else:
                value = (["!"] if negate else []) + vals if len(vals) > 1 else ("!" if negate else "") + (vals[0] if vals else "")
                setattr(cur, tok[2:].replace("-", "_"), value)
            negate = False
            i = j
        else:
            raise BackendError(f"cannot express `{args}` with python-iptables (at {tok!r})")
    if nflog_prefix is not None:
        raw = nflog_prefix.encode()[:63] + b"\0"
        ctypes.memmove(ctypes.addressof(rule.target.target) + ctypes.sizeof(type(rule.target.target)) + _NFLOG_PREFIX_OFFSET, raw, len(raw))
    return rule


def write_iptc(netns_name, wp: WritePlan) -> None:
    """Apply a WritePlan to the legacy filter table with python-iptables: one libiptc commit."""
    tool = TOOL[("legacy", wp.family)]
    with _IPTC_LOCK, netns.entered(netns_name):
        iptc = _iptc()
        cls = iptc.Table if wp.family == 4 else iptc.Table6
        table = object.__new__(cls)  # not Table(): that returns a process-wide cached handle
        try:
            table._init("filter", False)
        except iptc.IPTCError as exc:
            raise BackendError(f"{tool}: cannot open the filter table: {_iptc_msg(exc)}") from None
        step = "prepare"
        try:
            chains = []
            name = table._iptc.iptc_first_chain(table._handle)
            while name:
                chains.append(name.decode())
                name = table._iptc.iptc_next_chain(table._handle)
            for chain in wp.chains:
                if chain not in chains:
                    step = f"-N {chain}"
                    table.create_chain(chain)
            for chain in list(wp.chains) + wp.delete_chains:
                step = f"-F {chain}"
                table.flush_entries(chain)
            for chain, specs in wp.unjump.items():
                want = collections.Counter(_jump_target(s) for s in specs)
                doomed = []
                entry = table.first_rule(chain)
                n = 0
                while entry:
                    target = table.get_target(entry)
                    target = target.decode() if target else ""
                    if want[target] > 0:
                        want[target] -= 1
                        doomed.append(n)
                    entry = table.next_rule(entry)
                    n += 1
                for num in reversed(doomed):
                    step = f"-D {chain} {num + 1}"
                    if table._iptc.iptc_delete_num_entry(chain.encode(), num, table._handle) != 1:
                        raise iptc.IPTCError(table.strerror())
            for anchor, jumps in wp.jump.items():
                for pos, args in enumerate(jumps):
                    step = f"-I {anchor} {pos + 1} {args}"
                    table.insert_entry(anchor, _iptc_rule(iptc, wp.family, table, args).rule, pos)
            for chain, rules in wp.chains.items():
                for args, packets, nbytes in rules:
                    step = f"-A {chain} {args}"
                    rule = _iptc_rule(iptc, wp.family, table, args)
                    rule.counters = (packets, nbytes)
                    table.append_entry(chain, rule.rule)
            for chain in wp.delete_chains:
                step = f"-X {chain}"
                table.delete_chain(chain)
            step = "commit"
            table.commit()
        except BackendError:
            raise
        except Exception as exc:  # IPTCError, XTablesError, ValueError from extension parsers
            raise BackendError(f"{tool} (python-iptables) refused ramfw's rules at `{step}`: {_iptc_msg(exc)}") from None
        finally:
            table.close()


def _iptc_msg(exc) -> str:
    text = str(exc)
    return text.replace("b'", "").replace("'", "") if "b'" in text else text


# ---- the backend ------------------------------------------------------------------------------


class IptablesBackend(Backend):
    name = "iptables"

    def __init__(self, netns_name: str | None = None, features: dict[str, bool] | None = None, flavour: str | None = None, use_python_iptables: bool | None = None):
        super().__init__(netns_name)
        self.features = dict(features) if features is not None else {"queue": True, "log": True, "reject": True}
        if flavour is None and features is not None and "legacy" in features:
            flavour = "legacy" if features["legacy"] else "nft"
        if flavour is not None and flavour not in FLAVOURS:
            raise BackendError(f"unknown iptables flavour {flavour!r} (legacy or nft)")
        self.flavour = flavour  # None: decided at first use (installed flavour, else probe)
        self.use_python_iptables = _iptc_available() if use_python_iptables is None else use_python_iptables
        self._ipset: IpsetSocket | None = None
        self._lock = threading.RLock()
        self.links = Links()  # read from the namespace at every apply; dry-run renders without
        self._owned = OwnedElements()

    # ---- plumbing ---------------------------------------------------------------------------

    @property
    def ipset(self) -> IpsetSocket:
        if self._ipset is None:
            try:
                self._ipset = IpsetSocket(self.netns_name)
            except OSError as exc:
                raise BackendError(f"ipset netlink socket unavailable: {exc}") from None
        return self._ipset

    def close(self) -> None:
        if self._ipset is not None:
            self._ipset.close()
            self._ipset = None

    def _locate(self) -> tuple[str | None, dict[int, TableDump | None]]:
        """(flavour holding ramfw's chains, its filter tables); (None, {}) when none does."""
        for flavour in FLAVOURS:
            if flavour == "nft" and not _tool_available("nft"):
                continue
            dumps = {f: read_filter(self.netns_name, flavour, f) for f in (4, 6)}
            if any(d and d.ours() for d in dumps.values()):
                return flavour, dumps
        return None, {}

    def _installed_flavour(self) -> str | None:
        return self._locate()[0]

    def installed(self) -> bool:
        """Whether ramfw's chains are in this namespace (either flavour)."""
        return self._installed_flavour() is not None

    def _flavour(self) -> str:
        if self.flavour is None:
            installed = self._installed_flavour()
            if installed:
                self.flavour = installed
            else:
                choice, why = choose_flavour(gather_facts(self.netns_name))
                if choice is None:
                    raise BackendError(f"iptables backend cannot run here: {why}")
                self.flavour = choice
        return self.flavour

    def _write(self, flavour: str, wp: WritePlan) -> None:
        if wp.empty():
            return
        if flavour == "legacy" and self.use_python_iptables:
            try:
                with netns.entered(self.netns_name):
                    _iptc()
            except BackendError as exc:
                log.warning("%s; writing with iptables-legacy-restore instead", exc)
                self.use_python_iptables = False
            else:
                write_iptc(self.netns_name, wp)
                return
        write_restore(self.netns_name, flavour, wp)

    def where(self, flavour: str | None = None) -> str:
        flavour = flavour or self.flavour or "nft"
        return f"{TOOL[(flavour, 4)]} -S RAMFW-OUT; {TOOL[(flavour, 6)]} -S RAMFW-OUT; ipset list -t (sets ramfw-*)"

    # ---- probing ----------------------------------------------------------------------------

    @classmethod
    def probe(cls, netns_name: str | None, flavour: str | None = None) -> Probe:
        try:
            facts = gather_facts(netns_name)
        except (BackendError, NetnsError) as exc:
            return Probe(False, str(exc))
        try:
            sock = IpsetSocket(netns_name)
            try:
                sock.request(CMD_PROTOCOL, b"", "protocol")
            finally:
                sock.close()
            ipset_ok = True
        except (OSError, BackendError) as exc:
            return Probe(False, f"ipset is not usable here: {exc}", {"legacy": False})
        choice, why = choose_flavour(facts, flavour)
        features = {
            "queue": True,  # NFQUEUE is an xtables target: always there for this backend
            "log": True,
            "reject": True,
            "ipset": ipset_ok,
            "legacy": choice == "legacy",
            "python_iptables": _iptc_available(),
            "docker": any(facts.docker.values()),
        }
        if choice is None:
            return Probe(False, why, features)
        how = "python-iptables (libiptc)" if choice == "legacy" and features["python_iptables"] else f"{TOOL[(choice, 4)]}-restore"
        return Probe(True, f"iptables-{choice}: {why}; rules written with {how}, sets via ipset netlink", features)

    # ---- rendering (pure) -------------------------------------------------------------------

    def render(self, desired: DesiredState, forward_anchor: str = "FORWARD") -> str:
        flavour = self.flavour or "auto"
        meta = meta_comment(desired, flavour)
        out = [f"# ramfw iptables backend ({'flavour chosen per namespace' if flavour == 'auto' else 'iptables-' + flavour})", "# ipset restore"]
        for set_name, elements in desired.sets.items():
            out.append(ipset_create_line(set_name, len(elements)))
            out += [f"add {IPSET[set_name]} {e.ip} timeout {max(0, min(e.timeout, MAX_TIMEOUT))}" for e in elements]
        for family in (4, 6):
            part = table_part(desired, family, forward_anchor, meta, self.links)  # routes as last applied (none: dry-run)
            tool = "iptables" if family == 4 else "ip6tables"
            out.append(f"# {tool}-restore --noflush   (RAMFW-FWD is jumped to from DOCKER-USER when that chain exists)")
            out += restore_script(plan_write(part, None))
        return "\n".join(out) + "\n"

    # ---- applying ---------------------------------------------------------------------------

    def apply(self, desired: DesiredState) -> None:
        with self._lock:
            flavour = self._flavour()
            dumps = {f: read_filter(self.netns_name, flavour, f) for f in (4, 6)}
            links = read_links(self.netns_name, desired.dns.servers4 + desired.dns.servers6)
            parts = {}
            for family in (4, 6):
                dump = dumps[family]
                anchor = DOCKER_USER if dump is not None and DOCKER_USER in dump.chains else "FORWARD"
                created = self._nft_created(family, dump) if flavour == "nft" else set()
                parts[family] = table_part(desired, family, anchor, meta_comment(desired, flavour, created), links)
            plans = {f: plan_write(parts[f], dumps[f]) for f in (4, 6)}
            staged = self._stage_sets(desired)
            done = []
            try:
                for family in (4, 6):
                    self._write(flavour, plans[family])
                    done.append(family)
            except BackendError:
                for family in done:  # put the previous rules back (the other family failed)
                    try:
                        self._write(flavour, self._revert_plan(family, dumps[family], flavour))
                    except BackendError as exc:
                        log.error("could not restore the previous %s rules: %s", TOOL[(flavour, family)], exc)
                self._unstage_sets(staged)
                raise
            self._finish_sets(staged, desired)
            self.links = links
            self._owned.reset({name: [e.ip for e in elems] for name, elems in desired.sets.items()})
            self._clear_other_flavour(flavour)
            log.debug("applied iptables-%s rules and %d set elements", flavour, desired.element_count())

    def _clear_other_flavour(self, flavour: str) -> None:
        """ramfw lives in one flavour: chains left in the other (an earlier choice) go."""
        other = "nft" if flavour == "legacy" else "legacy"
        if other == "nft" and not _tool_available("nft"):
            return
        for family in (4, 6):
            dump = read_filter(self.netns_name, other, family)
            if dump and dump.ours():
                try:
                    self._write(other, destroy_plan(family, dump))
                    log.info("removed ramfw's old chains from %s", TOOL[(other, family)])
                except BackendError as exc:
                    log.warning("could not remove ramfw's old chains from %s: %s", TOOL[(other, family)], exc)

    def _revert_plan(self, family: int, old: TableDump | None, flavour: str) -> WritePlan:
        now = read_filter(self.netns_name, flavour, family)
        if old is None or not old.ours():
            return destroy_plan(family, now) if now else WritePlan(family)
        part = TablePart(family, {c: [a for a, _p, _b in old.rules.get(c, [])] for c in old.ours()})
        for chain, rules in old.rules.items():
            if not _ours(chain):
                jumps = [a for a, _p, _b in rules if is_our_jump(a)]
                if jumps:
                    part.jumps[chain] = jumps
        return plan_write(part, now)

    def _nft_created(self, family: int, dump: TableDump | None) -> set[str]:
        """What ramfw's apply creates in nf_tables (the `ip filter` table, base chains), merged with
        what earlier applies recorded, so destroy() can remove it again."""
        from ramfw.kernel.nftnl import NftReader

        created = set(dump.meta().get("created", "").split(",")) - {""} if dump else set()
        try:
            with NftReader(self.netns_name, NFT_FAMILY[family], "filter") as reader:
                if reader.table_comment() is None:
                    return created | {"table"} | set(BUILTIN)  # a new table: every base chain is ours
                chains = reader.chains()
        except BackendError:
            return created
        return created | {c for c in BUILTIN if c not in chains}

    # ---- sets -------------------------------------------------------------------------------

    def _stage_sets(self, desired: DesiredState) -> list[tuple[str, str, bool]]:
        """Build each desired set under a temporary name, then swap it in (or rename it, when the
        live set does not exist yet). Returns [(live, temp, swapped)] for finish/undo."""
        ips = self.ipset
        built: list[tuple[str, str, list[Element], int]] = []
        try:
            for set_name, elements in desired.sets.items():
                live = IPSET[set_name]
                temp = live + TEMP_SUFFIX
                if ips.exists(temp):
                    ips.destroy(temp)  # left over from an interrupted apply
                family = 6 if set_name.endswith("6") else 4
                ips.create(temp, family, len(elements))
                built.append((live, temp, list(elements), family))
                ips.add(temp, elements)
        except BackendError:
            for _live, temp, _e, _f in built:
                self._quiet_destroy(temp)
            raise
        staged = []
        try:
            for live, temp, _e, _f in built:
                if ips.exists(live):
                    ips.swap(temp, live)
                    staged.append((live, temp, True))
                else:
                    ips.rename(temp, live)
                    staged.append((live, temp, False))
        except BackendError:
            self._unstage_sets(staged)
            for live, temp, _e, _f in built:
                self._quiet_destroy(temp)
            raise
        return staged

    def _unstage_sets(self, staged) -> None:
        for live, temp, swapped in reversed(staged):
            try:
                if swapped:
                    self.ipset.swap(temp, live)  # the old contents go back under the live name
                    self.ipset.destroy(temp)
                else:
                    self.ipset.destroy(live)
            except BackendError as exc:
                log.error("could not restore set %s: %s", live, exc)

    def _finish_sets(self, staged, desired: DesiredState) -> None:
        for live, temp, swapped in staged:
            if swapped:
                self._quiet_destroy(temp)
        wanted = {IPSET[s] for s in desired.sets}
        for live in IPSET.values():
            if live not in wanted and self.ipset.exists(live):
                self._quiet_destroy(live)  # unreferenced now that the new rules are in

    def _destroy_set(self, name: str, wait: float = 3.0) -> None:
        """Destroy a set; a rule that referenced it may still be releasing it (nf_tables frees
        replaced rules after the commit returns), so "referenced" is retried for a moment."""
        deadline = time.monotonic() + wait
        while True:
            try:
                self.ipset.destroy(name)
                return
            except IpsetError as exc:
                if exc.code not in (IPSET_ERR_REFERENCED, errno.EBUSY) or time.monotonic() > deadline:
                    raise
            time.sleep(0.01)

    def _quiet_destroy(self, name: str) -> bool:
        try:
            self._destroy_set(name)
            return True
        except BackendError as exc:
            if getattr(exc, "code", 0) != errno.ENOENT:
                log.warning("%s", exc)
            return False

    def add_elements(self, elements: dict[str, list[Element]]) -> None:
        with self._lock:
            for set_name, elems in elements.items():
                if elems:
                    self._owned.add(set_name, [e.ip for e in elems])  # before the kernel has it
                    self.ipset.add(IPSET[set_name], elems)

    def remove_elements(self, elements: dict[str, list[str]]) -> None:
        with self._lock:
            for set_name, ips in elements.items():
                if ips:
                    self.ipset.delete(IPSET[set_name], ips)
                    self._owned.remove(set_name, ips)

    # ---- removing ---------------------------------------------------------------------------

    def destroy(self) -> bool:
        with self._lock:
            removed = False
            for flavour in FLAVOURS:
                if flavour == "nft" and not _tool_available("nft"):
                    continue
                for family in (4, 6):
                    dump = read_filter(self.netns_name, flavour, family)
                    if dump is None:
                        continue
                    wp = destroy_plan(family, dump)
                    if wp.empty():
                        continue
                    created = set(dump.meta().get("created", "").split(",")) - {""}
                    self._write(flavour, wp)
                    removed = True
                    if flavour == "nft" and created:
                        self._remove_created(family, created)
            for live in IPSET.values():
                for name in (live + TEMP_SUFFIX, live):
                    if self.ipset.exists(name):
                        self._destroy_set(name)
                        removed = True
            return removed

    def _remove_created(self, family: int, created: set[str]) -> None:
        """Delete nf_tables objects ramfw's apply created, if nothing else uses them now."""
        dump = read_filter(self.netns_name, "nft", family)
        fam = NFT_FAMILY[family]
        if dump is None:
            return
        if "table" in created and not dump.has_content():
            _run(self.netns_name, ["nft", "delete", "table", fam, "filter"])
            return
        from ramfw.kernel.nftnl import NftReader

        with NftReader(self.netns_name, fam, "filter") as reader:
            present = reader.chains()
        for chain in sorted(created & set(BUILTIN)):
            if chain in present and not dump.rules.get(chain) and dump.chains.get(chain) == "ACCEPT":
                _run(self.netns_name, ["nft", "delete", "chain", fam, "filter", chain])

    # ---- reading ----------------------------------------------------------------------------

    def read_state(self, with_elements: bool = True) -> KernelState:
        with self._lock:
            flavour, dumps = self._locate()
            state = KernelState(installed=False, backend=self.name, where=self.where(flavour))
            if flavour is None:
                return state
            state.installed = True
            state.meta = {}
            for family in (6, 4):  # the IPv4 table's META wins
                if dumps[family]:
                    state.meta.update(dumps[family].meta())
            counters: dict[str, dict[str, int]] = {}
            for family, dump in dumps.items():
                if not dump:
                    continue
                for chain in dump.ours():
                    state.chains[f"{NFT_FAMILY[family]}:{chain}"] = len(dump.rules.get(chain, []))
                for key, chain in COUNTER_CHAINS.items():
                    rules = dump.rules.get(chain)
                    if rules is None:
                        continue
                    # refuse chains: the NFLOG rule sees every refused packet; DNS: all rules
                    picked = rules[:1] if chain != DNS_IN else rules
                    c = counters.setdefault(key, {"packets": 0, "bytes": 0})
                    c["packets"] += sum(p for _a, p, _b in picked)
                    c["bytes"] += sum(b for _a, _p, b in picked)
            state.counters = counters
            for set_name, live in IPSET.items():
                if self.ipset.exists(live):
                    state.sets[set_name] = self.ipset.list(live)[1] if with_elements else {}
            return state

    def set_sizes(self) -> dict[str, int]:
        """From each ipset's header: one small message per set, whatever its size."""
        with self._lock:
            return {name: self.ipset.count(live) for name, live in IPSET.items() if self.ipset.exists(live)}

    def check(self, desired: DesiredState) -> list[str]:
        """Problems where the kernel differs from what apply() writes: every rule of ramfw's
        chains compared by content (iptables-save's canonical text against the rendered rule,
        with the routes read now), the jumps, the sets, and set elements ramfw did not add."""
        with self._lock:
            links = read_links(self.netns_name, desired.dns.servers4 + desired.dns.servers6)
            located, dumps = self._locate()
            problems = []
            flavour = self.flavour or located
            if flavour is None:
                return ["ramfw's iptables chains are missing (in both iptables-legacy and iptables-nft)"]
            if located is not None and located != flavour:
                problems.append(f"ramfw's chains are in iptables-{located}, not iptables-{flavour}")
            if located != flavour:
                dumps = {f: read_filter(self.netns_name, flavour, f) for f in (4, 6)}
            meta = dumps[4].meta() if dumps[4] else {}
            if not meta:
                problems.append(f"chain {META} ({TOOL[(flavour, 4)]}) is missing")
            elif meta.get("policy") != desired.policy_digest:
                problems.append(f"{TOOL[(flavour, 4)]} chain {META} holds policy {meta.get('policy')} instead of {desired.policy_digest}")
            for family in (4, 6):
                tool = TOOL[(flavour, family)]
                dump = dumps[family] or TableDump()
                anchor = DOCKER_USER if DOCKER_USER in dump.chains else "FORWARD"
                part = table_part(desired, family, anchor, links=links)
                for chain, rules in part.chains.items():
                    have = dump.rules.get(chain)
                    if chain not in dump.chains:
                        if not (chain == META and family == 4):
                            problems.append(f"chain {chain} ({tool}) is missing")
                    elif len(have) != len(rules):
                        problems.append(f"chain {chain} ({tool}) has {len(have)} rules instead of {len(rules)}")
                    elif chain != META:  # META's comment varies with the flavour; its digest is checked above
                        changed = [i + 1 for i, ((args, _p, _b), want) in enumerate(zip(have, rules)) if args != want]
                        if changed:
                            problems.append(f"chain {chain} ({tool}) was edited: rule(s) {', '.join(map(str, changed))} differ from ramfw's")
                for extra in sorted(set(dump.ours()) - set(part.chains)):
                    problems.append(f"chain {extra} ({tool}) is not ramfw's")
                for anchor_chain, jumps in part.jumps.items():
                    rules = [a for a, _p, _b in dump.rules.get(anchor_chain, [])]
                    found: dict[str, str] = {}  # target -> its first problem (a DNS chain has two jumps)
                    for pos, want in enumerate(jumps):
                        target = _jump_target(want)
                        if target in found or (pos < len(rules) and rules[pos] == want):
                            continue
                        if want in rules:
                            found[target] = f"jump from {anchor_chain} to {target} ({tool}) is not rule {pos + 1}"
                        elif any(is_our_jump(a) and _jump_target(a) == target for a in rules):
                            found[target] = f"jump from {anchor_chain} to {target} ({tool}) is not the one ramfw writes (an earlier version's?)"
                        else:
                            found[target] = f"jump from {anchor_chain} to {target} ({tool}) is missing"
                    problems += found.values()
                    extra = [a for a in rules if is_our_jump(a) and a not in jumps] + [a for a in set(jumps) if rules.count(a) > 1]
                    if extra:
                        problems.append(f"{anchor_chain} ({tool}) holds {len(extra)} stale jump(s) to ramfw's chains")
                if anchor == DOCKER_USER:
                    stale = [a for a, _p, _b in dump.rules.get("FORWARD", []) if _jump_target(a) in (MAIN_CHAIN["forward"], DNS_IN, DNS_OUT)]
                    if stale:
                        targets = dict.fromkeys(_jump_target(a) for a in stale)
                        problems.append(f"FORWARD ({tool}) still jumps to {', '.join(targets)}: it belongs in {DOCKER_USER}")
            for set_name in desired.sets:
                if not self.ipset.exists(IPSET[set_name]):
                    problems.append(f"set {IPSET[set_name]} is missing")
                    continue
                foreign = self._owned.foreign(set_name, self.ipset.list(IPSET[set_name])[1]) if self._owned.known else []
                if foreign:
                    problems.append(f"set {IPSET[set_name]} holds {len(foreign)} element(s) ramfw did not add: {', '.join(foreign[:5])}")
            return problems
