"""One namespace's enforcement: policy, DNS cache and backend, and how they meet.

`Enforcer` resolves, plans, applies and learns. `ramfw up` uses it once; the controller
(`ramfw run`) keeps it current.

Who may touch what (the controller's concurrency model, see controller.py):

- `cache` locks itself; any thread may call it.
- `counters` lock themselves.
- `policy`, `desired` and `snoop_mode` are replaced only by commit(), under `kernel_lock`, as
  one generation; readers take the references they need (attribute reads are atomic) and
  never mutate them.
- `kernel_lock` serialises writes to ramfw's kernel objects: element batches (snooper,
  resolver) and whole-ruleset transactions (start, reload, repair). It is held across the kernel
  transaction and the planning right before it, and across nothing else: resolution, the
  conntrack dump, state files and HTTP all happen outside it. Serialising the two kinds of
  write is what keeps a snooped address from being wiped by a transaction planned an instant
  before it was learned.
- `pending` (elements learned but not yet programmed) has its own small lock; flush() takes
  the batch under it and programs it under `kernel_lock`.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import dataclass, field

from ramfw.daemon import state as state_file
from ramfw.backends.base import Backend
from ramfw.backends.choose import retire_others
from ramfw.kernel.conntrack import cut_connections
from ramfw.common.counters import Counters
from ramfw.dns.cache import DnsCache, expiry
from ramfw.errors import BackendError
from ramfw.common.logs import fields
from ramfw.plan import MIN_ELEMENT_TIMEOUT, DesiredState, Element, plan
from ramfw.policy.model import Policy
from ramfw.daemon.refresh import short_error
from ramfw.dns.resolver import Resolver, read_nameservers

log = logging.getLogger(__name__)

# state.json lists at most this many learned names (the most recently answered): explain reads
# them, and a 300k-name cache must not mean a file of tens of megabytes rewritten every 10 s
STATE_NAMES_LIMIT = 5000

ENFORCER_COUNTERS = ("applies", "ips_added", "connections_cut", "resolve_failures", "refused_answers",
                     "pending_dropped")


def _is_ip(text) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


@dataclass
class Staged:
    """A policy ready to be committed: what resolving its names taught, not yet in the cache."""

    policy: Policy
    snoop_mode: str
    learned: list[tuple[str, tuple[str, ...], list]] = field(default_factory=list)  # (name, chain, answers)
    results: list = field(default_factory=list)  # resolver results, for the refresh schedule


class Enforcer:
    def __init__(self, netns_name: str | None, backend: Backend, backend_reason: str = "", clock=time.monotonic):
        self.netns_name = netns_name
        self.backend = backend
        self.backend_reason = backend_reason
        self.clock = clock
        self.cache = DnsCache(clock=clock)
        self.policy: Policy | None = None
        self.desired: DesiredState | None = None
        self.snoop_mode = "off"
        self.kernel_lock = threading.Lock()
        self.counters = Counters(*ENFORCER_COUNTERS)
        self._pending_lock = threading.Lock()
        self.pending: dict[str, dict[str, tuple[str, Element]]] = {}  # set -> ip -> (name, element)
        self._saved_version = -1  # cache version last written to state.json
        self.last_apply_seconds = 0.0

    # ---- policy and resolution ---------------------------------------------------------------

    def trusted_servers(self, policy: Policy | None = None) -> tuple[str, ...]:
        policy = policy or self.policy
        assert policy is not None
        return tuple(policy.dns.servers) or tuple(read_nameservers(self.netns_name))

    def set_policy(self, policy: Policy) -> None:
        """Adopt a policy directly (`ramfw up`, the controller's first start)."""
        self.policy = policy
        self._configure_cache(policy)

    def _configure_cache(self, policy: Policy) -> None:
        dns = policy.dns
        self.cache.configure(dns.min_ttl, dns.grace, dns.max_ips_per_name, getattr(dns, "max_addresses", None))
        # Names the new policy neither allows nor blocks teach us nothing any more.
        self.cache.drop_names(lambda n: policy.classify(n)[0] != "unlisted")

    def resolve(self, policy: Policy) -> tuple[list, list[tuple[str, tuple[str, ...], list]]]:
        """Look up every concrete name of `policy` (no lock held: this is network I/O).
        Returns the resolver's results and what of them may be learned under that policy."""
        names = list(dict.fromkeys(policy.concrete_names("allow") + policy.concrete_names("block")))
        results = Resolver(self.netns_name, list(self.trusted_servers(policy))).resolve_all(names)
        learned = []
        for res in results:
            if res.error:
                self.counters.inc("resolve_failures")
                known = self.cache.ips_for(res.name)
                keep = "keeping the last good answer" if known else "nothing known for it yet"
                log.warning("cannot resolve %s (%s); %s", res.name, short_error(str(res.error)), keep,
                            extra=fields(event="resolve_failed", name=res.name))
            elif res.answers:
                name, _ = self.creditable(res.name, list(res.chain), policy)
                if name is None and policy.classify(res.name)[0] == "blocked":
                    name = res.name  # kept for conflicts and explain; never in an allowed set
                if name is None:
                    self.counters.inc("refused_answers")
                    log.warning("%s resolves through a blocked name (%s); its addresses are not allowed",
                                res.name, " -> ".join(res.chain), extra=fields(event="blocked_chain", name=res.name))
                    continue
                learned.append((name, tuple(res.chain), list(res.answers)))
        return results, learned

    def resolve_policy_names(self) -> list:
        """Resolve the current policy's names and learn the answers at once (`ramfw up`)."""
        assert self.policy is not None
        results, learned = self.resolve(self.policy)
        for name, chain, answers in learned:
            self.counters.inc("ips_added", len(self.cache.add(name, answers, via=chain, source="resolver")))
        return results

    def stage(self, policy: Policy, snoop_mode: str) -> Staged:
        """The slow half of a reload, with no lock held: resolve the new policy's names."""
        results, learned = self.resolve(policy)
        return Staged(policy, snoop_mode, learned, results)

    # ---- restoring what a previous run knew ----------------------------------------------------

    def restore_from_state(self) -> int:
        """Re-learn the names and addresses a previous run recorded (state.json), where this
        policy still lists them, so a restart neither forgets snooped addresses nor cuts the
        connections to them. Returns how many pairs came back."""
        assert self.policy is not None
        saved = state_file.read_state(self.netns_name)
        remembered = saved.get("remembered")
        if isinstance(remembered, dict):
            for ip, names in list(remembered.items())[:STATE_NAMES_LIMIT]:
                if isinstance(names, list) and all(isinstance(n, str) for n in names) and _is_ip(ip):
                    self.cache.recall(str(ipaddress.ip_address(ip)), names)
        cache = saved.get("cache")
        if not isinstance(cache, dict):
            return 0
        offset = time.time() - self.clock()  # state files hold wall-clock expiries
        restored = 0
        for name, ips in cache.items():
            if not isinstance(name, str) or not isinstance(ips, dict) or self.policy.classify(name)[0] == "unlisted":
                continue
            try:
                entries = [(str(ipaddress.ip_address(ip)), float(exp) - offset) for ip, exp in ips.items()]
                restored += len(self.cache.restore(name, entries))
            except (TypeError, ValueError):
                continue  # a hostile or damaged entry costs only itself
        if restored:
            log.info("restored %d learned address(es) from the previous run", restored)
        return restored

    # ---- applying ----------------------------------------------------------------------------

    def plan(self, policy: Policy | None = None, snoop_mode: str | None = None, extra=None) -> DesiredState:
        policy = policy or self.policy
        assert policy is not None
        snapshot = self.cache.snapshot()
        now = self.clock()
        for name, _chain, answers in extra or ():
            ips = snapshot.setdefault(name, {})
            for ip, ttl in answers:
                ip = str(ip)
                ips[ip] = max(ips.get(ip, 0.0), expiry(ttl, now, policy.dns.min_ttl, policy.dns.grace))
        return plan(policy, snapshot, now, self.trusted_servers(policy), snoop_mode or self.snoop_mode)

    def apply(self) -> DesiredState:
        """Plan from the cache and install it (start, `ramfw up`, repair)."""
        assert self.policy is not None
        return self.commit(Staged(self.policy, self.snoop_mode))

    def commit(self, staged: Staged) -> DesiredState:
        """Install `staged` in one kernel transaction; only once the kernel accepted it do the
        policy, snoop mode and cache become the new ones (a refused apply leaves nothing learned
        under the rejected policy). Then cut the connections the new policy refuses."""
        old_policy, old_desired = self.policy, self.desired
        before, before_digest = self._enforced_sets()
        was_audit = self._enforced_audit()
        with self.kernel_lock:
            desired = self.plan(staged.policy, staged.snoop_mode, staged.learned)
            started = time.perf_counter()
            self.backend.apply(desired)  # raises BackendError; the old ruleset then stays
            self.last_apply_seconds = time.perf_counter() - started
            self.policy, self.snoop_mode, self.desired = staged.policy, staged.snoop_mode, desired
        first = self.counters["applies"] == 0
        self.counters.inc("applies")
        if staged.policy is not old_policy:
            self._configure_cache(staged.policy)
        for name, chain, answers in staged.learned:
            self.counters.inc("ips_added", len(self.cache.add(name, answers, via=chain, source="resolver")))
        if first:
            retire_others(self.netns_name, self.backend)
        policy_changed = old_desired is None or old_desired.policy_digest != desired.policy_digest or \
            old_desired.mode != desired.mode
        if old_desired is None and before_digest == desired.policy_digest:
            policy_changed = False  # a restart under the same policy removed nothing
        to_cut = self._to_cut(before, desired, policy_changed)
        if was_audit and not desired.audit:
            to_cut |= self._admitted_only_by_audit(desired)
        self.counters.inc("connections_cut", cut_connections(self.netns_name, to_cut))
        self.save_state()
        return desired

    def _enforced_sets(self) -> tuple[dict[str, set[str]], str | None]:
        """The sets in force before a commit, and the policy digest they were planned from."""
        if self.desired is not None:
            return {name: {e.ip for e in elems} for name, elems in self.desired.sets.items()}, self.desired.policy_digest
        try:
            kernel = self.backend.read_state()
        except BackendError:
            return {}, None
        if not kernel.installed:
            return {}, None
        return {name: set(elems) for name, elems in kernel.sets.items()}, kernel.meta.get("policy")

    def _enforced_audit(self) -> bool:
        if self.desired is not None:
            return self.desired.audit
        try:
            kernel = self.backend.read_state(with_elements=False)
        except BackendError:
            return False
        return kernel.installed and kernel.meta.get("audit") == "1"

    def _admitted_only_by_audit(self, desired: DesiredState) -> set[str]:
        """Leaving audit mode: connections audit let through must not outlive it (established
        traffic is accepted before any set lookup). Every tracked destination the new plan
        would refuse is cut."""
        from ramfw.kernel.conntrack import destinations

        allowed = {e.ip for name in ("allow4", "allow6") for e in desired.sets.get(name, ())}
        blocked = {e.ip for name in ("block4", "block6") for e in desired.sets.get(name, ())}
        if desired.mode != "allowlist":
            return destinations(self.netns_name) & blocked
        keep = [ipaddress.ip_network(n) for n in (*self.policy.allow_cidrs, *desired.dns.servers4, *desired.dns.servers6)]
        out = set()
        for text in destinations(self.netns_name) - allowed:
            ip = ipaddress.ip_address(text)
            if ip.is_loopback or ip.is_link_local or ip.is_multicast or any(ip in n for n in keep):
                continue
            if any(self.policy.classify(n)[0] == "allowed" for n in self.cache.names_ever_for(text)):
                continue  # an allowed name's address that aged out: not something audit let in
            out.add(text)
        return out

    def _to_cut(self, before: dict, desired: DesiredState, policy_changed: bool) -> set[str]:
        """Which destinations lose their live connections: those whose names the new policy
        refuses. An address that merely aged out of the cache keeps its connections while any
        name it was credited to is still allowed (a long pull from a short-TTL CDN address
        survives a reload); an address whose names are unknown is cut only when the policy
        itself changed and the address is no longer allowed. Only addresses ramfw enforced
        before are candidates, so an unchanged policy never costs a conntrack dump."""
        policy = self.policy
        after = {name: {e.ip for e in elems} for name, elems in desired.sets.items()}
        now_allowed = after.get("allow4", set()) | after.get("allow6", set())
        now_blocked = after.get("block4", set()) | after.get("block6", set())
        was_allowed = before.get("allow4", set()) | before.get("allow6", set())
        was_blocked = before.get("block4", set()) | before.get("block6", set())
        cut = now_blocked - was_blocked
        if desired.mode != "allowlist":
            return cut
        candidates = was_allowed - now_allowed
        if "allow4" not in before:  # switching from denylist to allowlist
            candidates |= was_blocked - now_allowed
        if policy_changed:
            # addresses that left the sets long ago may still carry live connections: those
            # whose every remembered name the new policy refuses go too (the most recent few
            # thousand: a reload must stay cheap while the snooper waits on nothing of it)
            candidates |= {ip for ip, names in self.cache.remembered(STATE_NAMES_LIMIT).items()
                           if ip not in now_allowed and not any(policy.classify(n)[0] == "allowed" for n in names)}
        for ip in candidates:
            names = self.cache.names_ever_for(ip)
            if names:
                if not any(policy.classify(n)[0] == "allowed" for n in names):
                    cut.add(ip)
            elif policy_changed:
                cut.add(ip)
        return cut

    def learn(self, name: str, answers, via: tuple[str, ...] = (), source: str = "snoop", defer: bool = False) -> int:
        """Credit DNS answers to `name` and program the kernel sets before returning (with
        defer: at the next flush(), so a batch of answers costs one transaction).
        Returns how many set elements were added or refreshed."""
        policy = self.policy
        assert policy is not None
        verdict, _ = policy.classify(name)
        if verdict == "unlisted" or (verdict == "blocked" and policy.mode == "allowlist"):
            return 0
        changes = self.cache.add(name, answers, via=via, source=source)
        if not changes:
            return 0
        kind = "allow" if verdict == "allowed" else "block"
        now = self.clock()
        with self._pending_lock:
            for ch in changes:
                timeout = max(MIN_ELEMENT_TIMEOUT, int(ch.expiry - now + 0.999))
                family = 6 if ":" in ch.ip else 4  # ch.ip is normalised text: no need to parse it again
                self.pending.setdefault(f"{kind}{family}", {})[ch.ip] = (name, Element(ch.ip, timeout))
        self.counters.inc("ips_added", len(changes))
        if not defer:
            self.flush()
        return len(changes)

    def flush(self) -> None:
        """Program every pending element in one transaction. Elements learned under a policy
        that a reload has since replaced are checked against the policy now in force."""
        with self._pending_lock:
            pending, self.pending = self.pending, {}
        if not pending:
            return
        with self.kernel_lock:
            policy = self.policy
            mode_sets = ("allow4", "allow6") if policy.mode == "allowlist" else ("block4", "block6")
            batch: dict[str, list[Element]] = {}
            dropped = 0
            for set_name, elems in pending.items():
                for name, elem in elems.values():
                    verdict = policy.classify(name)[0]
                    if set_name in mode_sets and verdict == ("allowed" if set_name.startswith("allow") else "blocked"):
                        batch.setdefault(set_name, []).append(elem)
                    else:
                        dropped += 1
            if dropped:
                self.counters.inc("pending_dropped", dropped)
            if batch:
                self.backend.add_elements(batch)

    def creditable(self, qname: str, chain: list[str], policy: Policy | None = None) -> tuple[str | None, str]:
        """Which name an answer's addresses belong to, or None and why not.

        allowlist: the queried name must be allowed and no name of its CNAME chain blocked; the
        addresses are credited to the queried name. denylist: the first blocked name of the
        chain takes the addresses into the blocked sets.
        """
        policy = policy or self.policy
        assert policy is not None
        verdicts = [policy.classify(n)[0] for n in chain]
        if policy.mode == "allowlist":
            if verdicts[0] != "allowed":
                return None, "not_listed"
            if "blocked" in verdicts:
                return None, "blocked_chain"
            return qname, "ok"
        for name, verdict in zip(chain, verdicts):
            if verdict == "blocked":
                return name, "ok"
        return None, "not_listed"

    def credit_answer(self, qname: str, chain: list[str], addresses, defer: bool = False) -> tuple[int, str]:
        """The snooper's (and the refresher's) callback for one validated answer."""
        name, outcome = self.creditable(qname, chain)
        if name is None:
            return 0, outcome
        return self.learn(name, addresses, via=tuple(chain), defer=defer), outcome

    # ---- state for status / explain ----------------------------------------------------------

    def save_state(self, extra: dict | None = None) -> None:
        """Write state.json: no lock of ours is held while it is serialised and written, and it
        lists at most STATE_NAMES_LIMIT learned names (the most recently answered)."""
        policy, desired = self.policy, self.desired
        assert policy is not None and desired is not None
        version = self.cache.version
        offset = time.time() - self.clock()  # monotonic -> wall clock for readers
        records = self.cache.recent(STATE_NAMES_LIMIT)
        stats = self.cache.stats()
        cache = {name: {ip: round(rec.expiry + offset, 1) for ip, rec in ips.items()} for name, ips in records.items()}
        vias = {name: sorted({" -> ".join(rec.via) for rec in ips.values() if len(rec.via) > 1}) for name, ips in records.items()}
        data = state_file.read_state(self.netns_name)
        data.update(
            {
                "policy_source": policy.source,
                "policy_digest": policy.digest,
                "mode": policy.mode,
                "audit": policy.audit,
                "backend": self.backend.name,
                "backend_reason": self.backend_reason,
                "snoop": self.snoop_mode,
                "dns_servers": list(self.trusted_servers(policy)),
                "applied_at": time.time(),
                "apply_seconds": round(self.last_apply_seconds, 4),
                "cache": cache,
                "cache_stats": {**stats, "listed": len(cache)},
                # which names addresses were credited to, beyond their expiry: a restarted
                # controller cuts the right live connections when a reload removes a name
                "remembered": {ip: sorted(names) for ip, names in self.cache.remembered(STATE_NAMES_LIMIT).items()},
                "cname_chains": {k: v for k, v in vias.items() if v},
                "conflicts": [
                    {"ip": c.ip, "allowed_names": list(c.allowed_names), "blocked_names": list(c.blocked_names)}
                    for c in desired.conflicts
                ],
                "counters": self.counters.snapshot(),
            }
        )
        if extra:
            data.update(extra)
        state_file.write_state(self.netns_name, data)
        self._saved_version = version
