"""One namespace's enforcement: policy, DNS cache and backend, and how they meet.

`Enforcer` resolves, plans, applies and learns. `ramfw up` uses it once; the controller
(`ramfw run`) keeps it current.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time

from . import state as state_file
from .backends.base import Backend
from .backends.choose import retire_others
from .conntrack import cut_connections
from .dnscache import DnsCache
from .errors import BackendError
from .logs import fields
from .plan import MIN_ELEMENT_TIMEOUT, DesiredState, Element, family_of, plan
from .policy import Policy
from .resolver import Resolver, read_nameservers

log = logging.getLogger(__name__)


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
        self.lock = threading.RLock()  # the snooper, the resolver and reloads share the cache
        self.counters = {"applies": 0, "ips_added": 0, "connections_cut": 0, "resolve_failures": 0}
        self.pending: dict[str, dict[str, Element]] = {}  # set -> ip -> element, for flush()
        self._saved_version = -1  # cache version last written to state.json
        self.last_apply_seconds = 0.0

    # ---- policy and resolution ---------------------------------------------------------------

    def trusted_servers(self) -> tuple[str, ...]:
        assert self.policy is not None
        return tuple(self.policy.dns.servers) or tuple(read_nameservers(self.netns_name))

    def set_policy(self, policy: Policy) -> None:
        with self.lock:
            self.policy = policy
            self.cache.configure(policy.dns.min_ttl, policy.dns.grace, policy.dns.max_ips_per_name)
            # Names the new policy neither allows nor blocks teach us nothing any more.
            self.cache.drop_names(lambda n: policy.classify(n)[0] != "unlisted")

    def resolve_policy_names(self) -> list:
        """Look up every concrete name of the policy (allowed and blocked) and learn the answers."""
        assert self.policy is not None
        names = list(dict.fromkeys(self.policy.concrete_names("allow") + self.policy.concrete_names("block")))
        resolver = Resolver(self.netns_name, list(self.trusted_servers()))
        results = resolver.resolve_all(names)
        with self.lock:
            for res in results:
                if res.error:
                    self.counters["resolve_failures"] += 1
                    known = self.cache.ips_for(res.name)
                    keep = "keeping the last good answer" if known else "nothing known for it yet"
                    log.warning("cannot resolve %s (%s); %s", res.name, res.error, keep,
                                extra=fields(event="resolve_failed", name=res.name))
                elif res.answers:
                    name, outcome = self.creditable(res.name, list(res.chain))
                    if name is None and self.policy.classify(res.name)[0] == "blocked":
                        name = res.name  # kept for conflicts and explain; never in an allowed set
                    if name is None:
                        self.counters["refused_answers"] = self.counters.get("refused_answers", 0) + 1
                        log.warning("%s resolves through a blocked name (%s); its addresses are not allowed",
                                    res.name, " -> ".join(res.chain), extra=fields(event="blocked_chain", name=res.name))
                        continue
                    self.counters["ips_added"] += len(self.cache.add(name, res.answers, via=res.chain, source="resolver"))
        return results

    # ---- applying ----------------------------------------------------------------------------

    def plan(self) -> DesiredState:
        assert self.policy is not None
        with self.lock:
            return plan(self.policy, self.cache.snapshot(), self.clock(), self.trusted_servers(), self.snoop_mode)

    def apply(self) -> DesiredState:
        """Plan from the cache and install it; cut connections that lost their permission."""
        with self.lock:
            desired = self.plan()
            before = self._enforced_sets()
            was_audit = self._enforced_audit()
            started = time.perf_counter()
            self.backend.apply(desired)  # raises BackendError; the old ruleset then stays
            self.last_apply_seconds = time.perf_counter() - started
            if self.counters["applies"] == 0:
                retire_others(self.netns_name, self.backend)
            self.counters["applies"] += 1
            self.desired = desired
            lost = self._lost(before, desired)
            if was_audit and not desired.audit:
                lost |= self._admitted_only_by_audit(desired)
            self.counters["connections_cut"] += cut_connections(self.netns_name, lost)
            self.save_state()
            return desired

    def _enforced_sets(self) -> dict[str, set[str]]:
        if self.desired is not None:
            return {name: {e.ip for e in elems} for name, elems in self.desired.sets.items()}
        try:
            kernel = self.backend.read_state()
        except BackendError:
            return {}
        return {name: set(elems) for name, elems in kernel.sets.items()} if kernel.installed else {}

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
        from .conntrack import destinations

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
            out.add(text)
        return out

    @staticmethod
    def _lost(before: dict[str, set[str]], desired: DesiredState) -> set[str]:
        """IPs whose connections must be cut: no longer allowed, or newly blocked."""
        after = {name: {e.ip for e in elems} for name, elems in desired.sets.items()}
        was_allowed = before.get("allow4", set()) | before.get("allow6", set())
        now_allowed = after.get("allow4", set()) | after.get("allow6", set())
        lost = was_allowed - now_allowed if "allow4" in after else set()
        now_blocked = after.get("block4", set()) | after.get("block6", set())
        lost |= now_blocked - (before.get("block4", set()) | before.get("block6", set()))
        if desired.mode == "allowlist" and "allow4" not in before and before:
            # switching from denylist to allowlist: every connection not to an allowed IP
            lost |= set().union(*before.values()) - now_allowed
        return lost

    def learn(self, name: str, answers, via: tuple[str, ...] = (), source: str = "snoop", defer: bool = False) -> int:
        """Credit DNS answers to `name` and program the kernel sets before returning (with
        defer: at the next flush(), so a batch of answers costs one transaction).
        Returns how many set elements were added or refreshed."""
        assert self.policy is not None
        with self.lock:
            verdict, _ = self.policy.classify(name)
            if verdict == "unlisted" or (verdict == "blocked" and self.policy.mode == "allowlist"):
                return 0
            changes = self.cache.add(name, answers, via=via, source=source)
            if not changes:
                return 0
            kind = "allow" if verdict == "allowed" else "block"
            now = self.clock()
            for ch in changes:
                timeout = max(MIN_ELEMENT_TIMEOUT, int(ch.expiry - now + 0.999))
                self.pending.setdefault(f"{kind}{family_of(ch.ip)}", {})[ch.ip] = Element(ch.ip, timeout)
            self.counters["ips_added"] += len(changes)
            if not defer:
                self.flush()
            return len(changes)

    def flush(self) -> None:
        """Program every pending element in one transaction."""
        with self.lock:
            pending, self.pending = self.pending, {}
            if pending:
                self.backend.add_elements({name: list(elems.values()) for name, elems in pending.items()})

    def creditable(self, qname: str, chain: list[str]) -> tuple[str | None, str]:
        """Which name an answer's addresses belong to, or None and why not.

        allowlist: the queried name must be allowed and no name of its CNAME chain blocked; the
        addresses are credited to the queried name. denylist: the first blocked name of the
        chain takes the addresses into the blocked sets.
        """
        assert self.policy is not None
        verdicts = [self.policy.classify(n)[0] for n in chain]
        if self.policy.mode == "allowlist":
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
        """Write state.json. The cache is copied under the lock (the snooper waits for it) and
        serialised after, so a large cache never holds DNS answers back for long."""
        assert self.policy is not None and self.desired is not None
        with self.lock:
            offset = time.time() - self.clock()  # monotonic -> wall clock for readers
            records = {name: self.cache.ips_for(name) for name in self.cache.names()}
            self._saved_version = self.cache.version
        cache = {name: {ip: round(rec.expiry + offset, 1) for ip, rec in ips.items()} for name, ips in records.items()}
        vias = {name: sorted({" -> ".join(rec.via) for rec in ips.values() if len(rec.via) > 1}) for name, ips in records.items()}
        data = state_file.read_state(self.netns_name)
        data.update(
            {
                "policy_source": self.policy.source,
                "policy_digest": self.policy.digest,
                "mode": self.policy.mode,
                "audit": self.policy.audit,
                "backend": self.backend.name,
                "backend_reason": self.backend_reason,
                "snoop": self.snoop_mode,
                "dns_servers": list(self.trusted_servers()),
                "applied_at": time.time(),
                "apply_seconds": round(self.last_apply_seconds, 4),
                "cache": cache,
                "cname_chains": {k: v for k, v in vias.items() if v},
                "conflicts": [
                    {"ip": c.ip, "allowed_names": list(c.allowed_names), "blocked_names": list(c.blocked_names)}
                    for c in self.desired.conflicts
                ],
                "counters": dict(self.counters),
            }
        )
        if extra:
            data.update(extra)
        state_file.write_state(self.netns_name, data)
