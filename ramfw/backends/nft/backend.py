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

from ramfw.errors import BackendError
from ramfw.plan import DesiredState, Element
from ramfw.backends.base import Backend, KernelState, Probe
from ramfw.backends.nft.libnft import NftContext
from ramfw.backends.nft import queue_fallback
from ramfw.backends.nft import sni_fallback
from ramfw.backends.nft.queue_fallback import QueueFallback
from ramfw.backends.nft.render import FAMILY, META_CHAIN, TABLE, ChainText, NftRender, counter_names
from ramfw.backends.links import Links, read_links
from ramfw.backends.meta import parse_meta
from ramfw.backends.owned import OwnedElements
from ramfw.kernel.nftnl import NftElementWriter, NftReader

log = logging.getLogger(__name__)

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
        self.queue_fallback = QueueFallback(netns_name)

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

    # ---- rendering (pure: render.py) --------------------------------------------------------

    def _renderer(self) -> NftRender:
        return NftRender(self.features.get("queue", False), self.links, self._cgroup_missing)

    def chains(self, desired: DesiredState) -> list[ChainText]:
        return self._renderer().chains(desired)

    def render(self, desired: DesiredState, counters: dict[str, dict[str, int]] | None = None) -> str:
        return self._renderer().render(desired, counters)

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
        if self._needs_queue_fallback(desired):
            # first, so that a refusal leaves the table as it was (a check repairs the chain)
            self.queue_fallback.install(desired.dns.servers4, desired.dns.servers6, desired.dns.queue_num)
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
            wanted_counters = set(counter_names(desired))
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
        # What was applied, as the kernel holds it: check() compares against this, by content.
        self._owned.reset({name: [e.ip for e in elems] for name, elems in desired.sets.items()})
        with self._reader() as r:
            self._applied = r.chain_digests()
        if self._sni_fallback_needed(desired):  # SNI binding's xtables queue (sni_fallback.py)
            sni_fallback.install(self.netns_name, desired.sni.queue_num)
        elif self._sni_fallback_installed or (self._sni_fallback_installed is None and self._sni_fallback_present()):
            sni_fallback.remove(self.netns_name)  # turned off, or left by an earlier run
        self._sni_fallback_installed = self._sni_fallback_needed(desired)
        if not self._needs_queue_fallback(desired):
            try:
                if self.queue_fallback.remove_if_present():
                    log.info("removed the xtables DNS queue chain %s: snoop mode is %s now", queue_fallback.CHAIN, desired.dns.mode)
            except BackendError as exc:
                log.warning("could not remove the xtables DNS queue chain %s: %s", queue_fallback.CHAIN, exc)
        log.debug("applied table %s %s (%d elements)", FAMILY, TABLE, desired.element_count())

    # ---- the DNS queue: nft `queue`, or the xtables fallback (queue_fallback.py) --------------

    def queue_mechanism(self) -> str:
        if self.features.get("queue"):
            return "nft queue"
        if queue_fallback.available():
            return "xtables NFQUEUE (this kernel's nftables lacks queue)"
        return ""

    def _needs_queue_fallback(self, desired: DesiredState) -> bool:
        return desired.dns.mode == "queue" and not self.features.get("queue", False)

    def _sni_fallback_needed(self, desired: DesiredState) -> bool:
        return desired.sni is not None and not self.features.get("queue", False)

    def _sni_fallback_present(self) -> bool:
        for family in ("ip", "ip6"):
            try:
                self.ctx.run(f"list chain {family} {sni_fallback.TABLE} {sni_fallback.CHAIN}\n")
                return True
            except BackendError:
                pass
        return False

    def created_tables(self) -> list[str]:
        return list(self.queue_fallback.created)

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

    def destroy(self) -> bool:
        return bool(self.teardown())

    def teardown(self, created_tables: list[str] = ()) -> list[str]:
        removed = []
        if self._table_exists():
            self.ctx.run(f"delete table {FAMILY} {TABLE}\n")
            removed.append(f"table {FAMILY} {TABLE}")
        self.queue_fallback.created = sorted(set(self.queue_fallback.created) | set(created_tables))
        self.queue_fallback.installed = None  # whatever this process did: look
        if self.queue_fallback.remove_if_present():
            removed.append(f"chain {queue_fallback.CHAIN} (iptables-nft {queue_fallback.TABLE})")
        if self._sni_fallback_present() and sni_fallback.remove(self.netns_name):
            removed.append(f"chain {sni_fallback.CHAIN} (iptables-nft {sni_fallback.TABLE})")
        return removed

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
        if self._needs_queue_fallback(desired):
            problems += self.queue_fallback.problems(desired.dns.servers4, desired.dns.servers6, desired.dns.queue_num)
        if self._sni_fallback_needed(desired):
            problems += sni_fallback.problems(self.netns_name, desired.sni.queue_num)
        return problems

