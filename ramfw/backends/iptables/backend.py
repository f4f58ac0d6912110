"""iptables backend: ramfw's own chains in the `filter` table plus ipsets, nothing else.

IptablesBackend ties the pieces together, one job per module:

    render.py       desired state -> ramfw's chains and jumps per family (pure; the layout)
    savetext.py     iptables-save text: parse, and compare a table with what render wants (pure)
    flavour.py      iptables-legacy or iptables-nft: which one, and reading its tables
    write.py        the write plan (pure) and iptables-restore; iptc_writer.py: python-iptables
    sets.py         ipset staging: build, swap in, swap back
    ipset.py        the ipset netlink socket

An apply reads both families' tables, plans their writes (write.plan_apply), stages the sets,
writes IPv4 then IPv6 and, when a write is refused, rolls back the family already written
(write.plan_rollback) and swaps the old sets back. `KernelState.where` names the exact commands
an admin should run, e.g. "iptables-nft -S RAMFW-OUT; ip6tables-nft -S RAMFW-OUT; ipset list -t
(sets ramfw-*)".
"""

from __future__ import annotations

import logging
import threading

from ramfw.errors import BackendError, NetnsError
from ramfw.plan import DesiredState, Element
from ramfw.backends.base import Backend, KernelState, Probe
from ramfw.backends.links import Links, read_links
from ramfw.backends.owned import OwnedElements
from ramfw.backends.iptables import iptc_writer
from ramfw.backends.iptables.flavour import (
    FLAVOURS, NFT_FAMILY, TOOL, choose_flavour, gather_facts, iptc_available, read_filter, run_in, tool_available,
)
from ramfw.backends.iptables.ipset import CMD_PROTOCOL, MAX_TIMEOUT, IpsetSocket
from ramfw.backends.iptables.render import (
    BUILTIN, COUNTER_CHAINS, DNS_IN, DOCKER_USER, IPSET, META, ipset_create_line, meta_comment, table_part,
)
from ramfw.backends.iptables.savetext import TableDump, table_problems
from ramfw.backends.iptables.sets import TEMP_SUFFIX, SetStager
from ramfw.backends.iptables.write import WritePlan, destroy_plan, plan_apply, plan_rollback, plan_write, restore_script, write_restore

log = logging.getLogger(__name__)


class IptablesBackend(Backend):
    name = "iptables"
    described = "iptables chains RAMFW-* and ipsets ramfw-*"

    def __init__(self, netns_name: str | None = None, features: dict[str, bool] | None = None, flavour: str | None = None, use_python_iptables: bool | None = None):
        super().__init__(netns_name)
        self.features = dict(features) if features is not None else {"queue": True, "log": True, "reject": True}
        if flavour is None and features is not None and "legacy" in features:
            flavour = "legacy" if features["legacy"] else "nft"
        if flavour is not None and flavour not in FLAVOURS:
            raise BackendError(f"unknown iptables flavour {flavour!r} (legacy or nft)")
        self.flavour = flavour  # None: decided at first use (installed flavour, else probe)
        self.use_python_iptables = iptc_available() if use_python_iptables is None else use_python_iptables
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
            if flavour == "nft" and not tool_available("nft"):
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
                iptc_writer.ensure_loaded(self.netns_name)
            except BackendError as exc:
                log.warning("%s; writing with iptables-legacy-restore instead", exc)
                self.use_python_iptables = False
            else:
                iptc_writer.write_iptc(self.netns_name, wp)
                return
        write_restore(self.netns_name, flavour, wp)

    def where(self, flavour: str | None = None) -> str:
        flavour = flavour or self.flavour or "nft"
        return f"{TOOL[(flavour, 4)]} -S RAMFW-OUT; {TOOL[(flavour, 6)]} -S RAMFW-OUT; ipset list -t (sets ramfw-*)"

    def queue_mechanism(self) -> str:
        return "xtables NFQUEUE" if self.features.get("queue") else ""

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
            "python_iptables": iptc_available(),
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
            stager = SetStager(self.ipset)
            staged = stager.stage(desired)
            done = []
            try:
                for wp in plan_apply(parts, dumps):
                    self._write(flavour, wp)
                    done.append(wp.family)
            except BackendError:
                for family in done:  # put the previous rules back (the other family failed)
                    try:
                        now = read_filter(self.netns_name, flavour, family)
                        self._write(flavour, plan_rollback(family, dumps[family], now))
                    except BackendError as exc:
                        log.error("could not restore the previous %s rules: %s", TOOL[(flavour, family)], exc)
                stager.unstage(staged)
                raise
            stager.finish(staged, desired)
            self.links = links
            self._owned.reset({name: [e.ip for e in elems] for name, elems in desired.sets.items()})
            self._clear_other_flavour(flavour)
            log.debug("applied iptables-%s rules and %d set elements", flavour, desired.element_count())

    def _clear_other_flavour(self, flavour: str) -> None:
        """ramfw lives in one flavour: chains left in the other (an earlier choice) go."""
        other = "nft" if flavour == "legacy" else "legacy"
        if other == "nft" and not tool_available("nft"):
            return
        for family in (4, 6):
            dump = read_filter(self.netns_name, other, family)
            if dump and dump.ours():
                try:
                    self._write(other, destroy_plan(family, dump))
                    log.info("removed ramfw's old chains from %s", TOOL[(other, family)])
                except BackendError as exc:
                    log.warning("could not remove ramfw's old chains from %s: %s", TOOL[(other, family)], exc)

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
                if flavour == "nft" and not tool_available("nft"):
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
                        SetStager(self.ipset).destroy(name)
                        removed = True
            return removed

    def _remove_created(self, family: int, created: set[str]) -> None:
        """Delete nf_tables objects ramfw's apply created, if nothing else uses them now."""
        dump = read_filter(self.netns_name, "nft", family)
        fam = NFT_FAMILY[family]
        if dump is None:
            return
        if "table" in created and not dump.has_content():
            run_in(self.netns_name, ["nft", "delete", "table", fam, "filter"])
            return
        from ramfw.kernel.nftnl import NftReader

        with NftReader(self.netns_name, fam, "filter") as reader:
            present = reader.chains()
        for chain in sorted(created & set(BUILTIN)):
            if chain in present and not dump.rules.get(chain) and dump.chains.get(chain) == "ACCEPT":
                run_in(self.netns_name, ["nft", "delete", "chain", fam, "filter", chain])

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
                problems += table_problems(part, dump, tool, anchor, family)
            for set_name in desired.sets:
                if not self.ipset.exists(IPSET[set_name]):
                    problems.append(f"set {IPSET[set_name]} is missing")
                    continue
                foreign = self._owned.foreign(set_name, self.ipset.list(IPSET[set_name])[1]) if self._owned.known else []
                if foreign:
                    problems.append(f"set {IPSET[set_name]} holds {len(foreign)} element(s) ramfw did not add: {', '.join(foreign[:5])}")
            return problems
