"""nftables backend: ramfw owns table `inet ramfw` and nothing else.

The desired state is rendered to one nft script (the same text `ramfw dry-run` prints); libnftables
sends a script as one netlink batch, so the kernel switches from the old ruleset to the new one
atomically (no window without rules) and a refused script changes nothing.

A re-apply replaces the table's contents in place (flush the rules and sets, declare them again)
instead of deleting and recreating the table: unregistering a base chain's hook makes the kernel
drop every packet waiting in NFQUEUE in the namespace, which would throw away the DNS answers
the snooper holds. Base chains are only deleted when the scope no longer needs them. Named
counters survive. The policy digest lives in the comment of the one rule of chain `policy_info`
(a table's comment cannot be changed once the table exists).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from ramfw.errors import BackendError
from ramfw.plan import DesiredState, Element, Rule
from ramfw.backends.base import Backend, KernelState, Probe
from ramfw.backends import sni_rules
from ramfw.backends.nft import sni_fallback
from ramfw.backends.nft.libnft import NftContext
from ramfw.backends.links import Links, is_loopback, read_links
from ramfw.backends.owned import OwnedElements
from ramfw.kernel.nftnl import NftElementWriter, NftReader

log = logging.getLogger(__name__)

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
LINK_LOCAL6 = ("fe80::/10", "ff02::/16")
DHCP6_SERVERS = ("ff02::1:2", "fe80::/10")  # All_DHCP_Relay_Agents_and_Servers; link-local unicast
DHCP4_BROADCAST = ("255.255.255.255",)


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


def _meta_comment(desired: DesiredState) -> str:
    return f"ramfw policy={desired.policy_digest} mode={desired.mode}{' audit=1' if desired.audit else ''} snoop={desired.dns.mode}"


def parse_meta(comment: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in comment.split() if "=" in kv)


CGROUP_ROOT = "/sys/fs/cgroup"


def _cgroup_path(desired: DesiredState) -> str | None:
    return next((r.args[0] for c in desired.chains for r in c.rules if r.kind == "bypass_cgroup"), None)


def _cgroup2_mounted() -> bool:
    try:
        with open("/proc/self/mounts") as fh:
            return any(line.split()[1:3] == [CGROUP_ROOT, "cgroup2"] for line in fh)
    except OSError:
        return False


def _cgroup_id(desired: DesiredState) -> int | None:
    """The inode of scope.cgroup's directory (the id nft resolves the path to), or None."""
    path = _cgroup_path(desired)
    if path is None:
        return None
    try:
        return os.stat(os.path.join(CGROUP_ROOT, path)).st_ino
    except OSError:
        return None


class NftBackend(Backend):
    name = "nft"

    def __init__(self, netns_name: str | None = None, features: dict[str, bool] | None = None):
        super().__init__(netns_name)
        self.features = features if features is not None else {}
        self._ctx: NftContext | None = None
        self._element_writer: NftElementWriter | None = None
        self.links = Links()  # read from the namespace at every apply; dry-run renders without
        self._applied: dict[str, str] = {}  # chain -> digest read back right after our apply
        self._owned = OwnedElements()
        # scope.cgroup: the cgroup's inode when applied (None: it did not exist). nft resolves the
        # path to that id once, at load time; a cgroup created or recreated since (the engine
        # started or restarted) makes check() report it, and the repair resolves it anew.
        self._cgroup_id: int | None = None
        self._cgroup_missing = False
        self._sni_fallback_installed: bool | None = None  # None: not known yet (no apply in this process)

    @property
    def ctx(self) -> NftContext:
        if self._ctx is None:
            self._ctx = NftContext(self.netns_name)
        return self._ctx

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None
        if self._element_writer is not None:
            self._element_writer.close()
            self._element_writer = None

    # ---- probing ----------------------------------------------------------------------------

    @classmethod
    def probe(cls, netns_name: str | None) -> Probe:
        try:
            ctx = NftContext(netns_name)
        except BackendError as exc:
            return Probe(False, f"libnftables unusable: {exc}")
        try:
            # A dry-run transaction is validated by the kernel and then aborted: nothing stays.
            base = f"add table {FAMILY} ramfw_probe\nadd chain {FAMILY} ramfw_probe c {{ type filter hook input priority 0; }}\n"
            try:
                ctx.run(base + f"add rule {FAMILY} ramfw_probe c ip saddr 203.0.113.1 accept\n", dry_run=True)
            except BackendError as exc:
                return Probe(False, f"nf_tables is not usable here: {exc}")
            features = {}
            for feature, rule in (
                ("queue", "udp sport 53 queue num 1 bypass"),
                ("log", "udp sport 53 log group 1"),
                ("reject", "meta l4proto tcp reject with tcp reset"),
            ):
                try:
                    ctx.run(base + f"add rule {FAMILY} ramfw_probe c {rule}\n", dry_run=True)
                    features[feature] = True
                except BackendError:
                    features[feature] = False
            how = "libnftables" if ctx.uses_library else "the nft command"
            missing = [f for f, ok in features.items() if not ok]
            reason = f"nf_tables works through {how}" + (f"; kernel lacks nft {', '.join(missing)}" if missing else "")
            return Probe(features["reject"], reason, features)
        finally:
            ctx.close()

    # ---- rendering (pure) -------------------------------------------------------------------

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
            check = sni_rules.nft_check_chain(desired, self.features.get("queue", False))
            chains.append(ChainText(sni_rules.NFT_CHECK_CHAIN, None, rules=tuple(check)))
        chains += self._dns_chains(desired)
        # never jumped to: carries what status reads back
        chains.append(ChainText(META_CHAIN, None, rules=(f'counter comment "{_meta_comment(desired)}"',)))
        return chains

    def _sni_text(self, desired: DesiredState, hook: str) -> list[str]:
        """SNI binding's rules (backends/sni_rules.py), narrowed to the scope's cgroup on output."""
        path = _cgroup_path(desired) if hook == "output" and not self._cgroup_missing else None
        cgroup = f'socket cgroupv2 level {path.count("/") + 1} "{path}"' if path else ""
        return sni_rules.nft_rules(desired, self.features.get("queue", False), cgroup)

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
        if dns.mode == "queue" and self.features.get("queue", False):
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
                if self._cgroup_missing:
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
        for name in self._counter_names(desired):
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

    # ---- applying ---------------------------------------------------------------------------

    def apply(self, desired: DesiredState) -> None:
        before, self.links = self.links, read_links(self.netns_name, desired.dns.servers4 + desired.dns.servers6)
        self._cgroup_id = _cgroup_id(desired)
        # where /sys/fs/cgroup is not cgroup v2, nft cannot match any cgroup: the kernel's refusal
        # (a one-line error below) is the answer; where it is, a missing cgroup is one that has
        # not started yet
        missing = _cgroup_path(desired) is not None and self._cgroup_id is None and _cgroup2_mounted()
        if missing and not self._cgroup_missing:
            log.warning("scope.cgroup %s does not exist yet: every process is filtered until it does (checked every "
                        "check interval)", _cgroup_path(desired))
        self._cgroup_missing = missing
        with self._reader() as r:
            exists = r.table_comment() is not None
            have_chains = r.chains() if exists else {}
            have_sets = r.sets() if exists else []
            counters = r.counters() if exists else {}
        want_chains = {c.name: c.hook for c in self.chains(desired)}
        lines = [f"add table {FAMILY} {TABLE}"]
        if exists:
            # one transaction: empty what is there, drop what is no longer wanted, declare anew
            lines.append(f"flush table {FAMILY} {TABLE}")
            for name, hook in have_chains.items():
                if want_chains.get(name, "gone") != hook:
                    lines.append(f"delete chain {FAMILY} {TABLE} {name}")
            for set_name in have_sets:
                verb = "flush" if set_name in desired.sets else "delete"
                lines.append(f"{verb} set {FAMILY} {TABLE} {set_name}")
            wanted_counters = set(self._counter_names(desired))
            for name in counters:
                if name not in wanted_counters:
                    lines.append(f"delete counter {FAMILY} {TABLE} {name}")
        try:
            self.ctx.run("\n".join(lines) + "\n" + self.render(desired, counters))
        except BackendError as exc:
            self.links = before  # the previous ruleset, rendered with the previous routes, stays
            path = next((r.args[0] for c in desired.chains for r in c.rules if r.kind == "bypass_cgroup"), None)
            if path and "cgroupv2 path fails" in str(exc):
                raise BackendError(
                    f"scope.cgroup {path!r}: nft finds no /sys/fs/cgroup/{path} (nft 1.0 looks for cgroup v2 "
                    "only there); create the cgroup, or on a host whose cgroup v2 tree is elsewhere use --backend iptables"
                ) from None
            raise
        if self._sni_fallback_needed(desired):
            sni_fallback.install(self.netns_name, desired.sni.queue_num)
        elif self._sni_fallback_installed or (self._sni_fallback_installed is None and self._sni_fallback_present()):
            # turned off, or (first apply in this process) left by an earlier run
            sni_fallback.remove(self.netns_name)
        self._sni_fallback_installed = self._sni_fallback_needed(desired)
        # What was applied, as the kernel holds it: check() compares against this, by content.
        self._owned.reset({name: [e.ip for e in elems] for name, elems in desired.sets.items()})
        with self._reader() as r:
            self._applied = r.chain_digests()
        log.debug("applied table %s %s (%d elements)", FAMILY, TABLE, desired.element_count())

    def _counter_names(self, desired: DesiredState) -> list[str]:
        return sorted({REFUSE_CHAIN[c.hook] for c in desired.chains} | ({"dns_answers"} if desired.dns.mode != "off" else set()))

    def _writer(self) -> NftElementWriter:
        # one socket for the backend's life: the snooper adds elements many times a second
        if self._element_writer is None:
            self._element_writer = NftElementWriter(self.netns_name, FAMILY, TABLE)
        return self._element_writer

    def add_elements(self, elements: dict[str, list[Element]]) -> None:
        for name, elems in elements.items():
            self._owned.add(name, [e.ip for e in elems])  # before the kernel has it: never "foreign"
        self._writer().add({name: [(e.ip, e.timeout) for e in elems] for name, elems in elements.items() if elems})

    def remove_elements(self, elements: dict[str, list[str]]) -> None:
        self._writer().remove({name: list(ips) for name, ips in elements.items() if ips})
        for name, ips in elements.items():
            self._owned.remove(name, ips)

    def _sni_fallback_present(self) -> bool:
        for family in ("ip", "ip6"):
            try:
                self.ctx.run(f"list chain {family} {sni_fallback.TABLE} {sni_fallback.CHAIN}\n")
                return True
            except BackendError:
                pass
        return False

    def _sni_fallback_needed(self, desired: DesiredState) -> bool:
        return desired.sni is not None and not self.features.get("queue", False)

    def destroy(self) -> bool:
        sni_fallback.remove(self.netns_name)
        if not self._table_exists():
            return False
        self.ctx.run(f"delete table {FAMILY} {TABLE}\n")
        return True

    # ---- reading ----------------------------------------------------------------------------

    def _reader(self) -> NftReader:
        return NftReader(self.netns_name, FAMILY, TABLE)

    def _table_exists(self) -> bool:
        with self._reader() as r:
            return r.table_comment() is not None

    def read_state(self, with_elements: bool = True) -> KernelState:
        state = KernelState(installed=False, backend=self.name, where=f"nft list table {FAMILY} {TABLE}")
        with self._reader() as r:
            if r.table_comment() is None:
                return state
            state.installed = True
            state.meta = parse_meta(" ".join(r.rule_comments(META_CHAIN)))
            state.counters = r.counters()
            counts = r.rule_counts()
            state.chains = {name: counts.get(name, 0) for name in r.chains()}
            for set_name in r.sets():
                state.sets[set_name] = r.elements(set_name) if with_elements else {}
        return state

    def _cgroup_problem(self, desired: DesiredState) -> list[str]:
        path = _cgroup_path(desired)
        if path is None or not self._applied:
            return []
        now = _cgroup_id(desired)
        if now == self._cgroup_id:
            return []
        what = "appeared" if self._cgroup_id is None else "is gone" if now is None else "was recreated"
        return [f"scope.cgroup {path} {what} since the rules were loaded (nft matches the cgroup it found then)"]

    def check(self, desired: DesiredState) -> list[str]:
        """Problems where the kernel differs from what this backend applied: missing or foreign
        chains, a chain whose content (hook, policy, every rule's expressions and comment) is
        not what was applied, routes that changed the exception rules, and set elements ramfw
        did not put there. Without an apply in this process, rule counts are compared instead."""
        state = self.read_state(with_elements=False)
        if not state.installed:
            return [f"table {FAMILY} {TABLE} is missing"]
        problems = self._cgroup_problem(desired)
        if self._sni_fallback_needed(desired):
            problems += sni_fallback.problems(self.netns_name, desired.sni.queue_num)
        if state.meta.get("policy") != desired.policy_digest:
            problems.append(f"table {FAMILY} {TABLE} holds policy {state.meta.get('policy')} instead of {desired.policy_digest}")
        if self._applied:
            links = read_links(self.netns_name, desired.dns.servers4 + desired.dns.servers6)
            if links != self.links:
                problems.append(f"routes changed since the last apply (connected networks or the way to a resolver): {links}")
        wanted = self.chains(desired)
        with self._reader() as r:
            digests = r.chain_digests() if self._applied else {}
            foreign = {name: self._owned.foreign(name, r.elements(name)) for name in desired.sets
                       if name in state.sets and self._owned.known}  # unknown: no element dump at all
        for chain in wanted:
            have = state.chains.get(chain.name)
            if have is None:
                problems.append(f"chain {chain.name} is missing")
            elif have != len(chain.rules):
                problems.append(f"chain {chain.name} has {have} rules instead of {len(chain.rules)}")
            elif self._applied and digests.get(chain.name) != self._applied.get(chain.name):
                problems.append(f"chain {chain.name} was edited: its rules are not the ones ramfw applied")
        for extra in sorted(set(state.chains) - {c.name for c in wanted}):
            problems.append(f"chain {extra} is not ramfw's")
        for set_name in desired.sets:
            if set_name not in state.sets:
                problems.append(f"set {set_name} is missing")
            elif foreign.get(set_name):
                ips = foreign[set_name]
                problems.append(f"set {set_name} holds {len(ips)} element(s) ramfw did not add: {', '.join(ips[:5])}")
        return problems
