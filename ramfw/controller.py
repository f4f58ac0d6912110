"""The controller: one namespace's policy, DNS cache and backend, and how they meet.

`Enforcer` does one namespace's work: resolve, plan, apply, learn. `ramfw up` uses it once;
`ramfw run` (the long-running loop) keeps it current.
"""

from __future__ import annotations

import logging
import threading
import time

from . import state as state_file
from .backends.base import Backend
from .backends.nft import NftBackend
from .conntrack import cut_connections
from .dnscache import DnsCache
from .errors import BackendError, NotAvailableError, UsageError
from .plan import DesiredState, Element, family_of, plan
from .policy import Policy
from .resolver import Resolver, read_nameservers

log = logging.getLogger(__name__)

BACKENDS = ("auto", "nft", "iptables")


def select_backend(netns_name: str | None, choice: str = "auto") -> tuple[Backend, str]:
    """The backend to use in this namespace, and one line saying why."""
    if choice not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}; got {choice!r}")
    if choice == "iptables":
        raise NotAvailableError("the iptables backend is not available yet in this build; use --backend nft")
    probe = NftBackend.probe(netns_name)
    if not probe.usable:
        raise BackendError(f"nftables backend cannot run here: {probe.reason}")
    reason = probe.reason if choice == "nft" else f"auto: {probe.reason}"
    return NftBackend(netns_name, probe.features), reason


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
                    log.warning("cannot resolve %s (%s); %s", res.name, res.error, keep)
                elif res.answers:
                    self.cache.add(res.name, res.answers, via=res.chain, source="resolver")
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
            started = time.perf_counter()
            self.backend.apply(desired)  # raises BackendError; the old ruleset then stays
            self.last_apply_seconds = time.perf_counter() - started
            self.counters["applies"] += 1
            self.desired = desired
            self.counters["connections_cut"] += cut_connections(self.netns_name, self._lost(before, desired))
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

    def learn(self, name: str, answers, via: tuple[str, ...] = (), source: str = "snoop") -> int:
        """Credit DNS answers to `name` and program the kernel sets before returning.
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
            elements: dict[str, list[Element]] = {}
            for ch in changes:
                timeout = max(1, int(ch.expiry - now + 0.999))
                elements.setdefault(f"{kind}{family_of(ch.ip)}", []).append(Element(ch.ip, timeout))
            self.backend.add_elements(elements)
            self.counters["ips_added"] += len(changes)
            return len(changes)

    # ---- state for status / explain ----------------------------------------------------------

    def save_state(self, extra: dict | None = None) -> None:
        assert self.policy is not None and self.desired is not None
        offset = time.time() - self.clock()  # monotonic -> wall clock for readers
        cache = {
            name: {ip: round(rec.expiry + offset, 1) for ip, rec in self.cache.ips_for(name).items()}
            for name in self.cache.names()
        }
        vias = {
            name: sorted({" -> ".join(rec.via) for rec in self.cache.ips_for(name).values() if len(rec.via) > 1})
            for name in self.cache.names()
        }
        data = state_file.read_state(self.netns_name)
        data.update(
            {
                "policy_source": self.policy.source,
                "policy_digest": self.policy.digest,
                "mode": self.policy.mode,
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
