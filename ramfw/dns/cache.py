"""What DNS told us: name -> {ip: expiry}, and the reverse ip -> names.

Clock-injected (like Cilium's pkg/fqdn cache): the controller feeds it answers from the resolver
and the snooper, the planner reads snapshots, gc(now) ages entries out. Expiry is
now + max(ttl, min_ttl) + grace, refreshed by every answer; a name holds at most
max_ips_per_name addresses, the soonest-expiring evicted first (CDNs rotate through many).

Thread safety: the cache locks itself (Cilium's DNSCache embeds its mutex the same way). Every
public method takes the one lock and returns copies, so the snooper, the resolver, the main
loop, the audit thread and the metrics thread may all call it. The lock is never held across
anything but dictionary work.

Bounded memory: at most max_addresses (name, ip) pairs. Past that the names answered least
recently are forgotten first, whole, and counted in `evicted`. Forgetting only shrinks what
ramfw remembers. The kernel element keeps its own timeout, so a live flow to an evicted
address keeps working, and the next answer for the name brings it back.

Address memory: which names each address was credited to is remembered beyond the entry's
expiry (bounded the same way), so a reload can tell "this address belongs to a name the new
policy still allows" from "this address belongs to a name the policy removed" even after the
answer aged out. Only the latter has its connections cut.

A refresh that moves an expiry forward by less than a tenth of its lifetime (at most 30 s) is
not a change: popular names are answered many times a second, and reprogramming the kernel for
each answer would cost a transaction per answer for nothing the grace period does not cover.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable

DEFAULT_MAX_ADDRESSES = 10000


def expiry(ttl: int, now: float, min_ttl: int, grace: int) -> float:
    """When an answer with `ttl` given at `now` stops counting: max(ttl, min_ttl) + grace later."""
    return now + max(int(ttl), min_ttl) + grace


@dataclass(slots=True)
class Learned:
    expiry: float
    learned_at: float
    via: tuple[str, ...]  # CNAME chain the answer came through, queried name first
    source: str  # "resolver", "snoop" or "restored"


@dataclass(frozen=True, slots=True)
class Change:
    """An (ip, name) pair that was added, refreshed or removed; expiry is absolute."""

    name: str
    ip: str
    expiry: float


class DnsCache:
    def __init__(
        self,
        min_ttl: int = 30,
        grace: int = 120,
        max_ips_per_name: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = DEFAULT_MAX_ADDRESSES,
    ):
        self.min_ttl = min_ttl
        self.grace = grace
        self.max_ips_per_name = max_ips_per_name
        self.max_addresses = max_addresses
        self.clock = clock
        self._lock = threading.Lock()
        # name -> {ip: Learned}; ordered by the last answer that touched the name (oldest first)
        self._by_name: OrderedDict[str, dict[str, Learned]] = OrderedDict()
        self._by_ip: dict[str, tuple[str, ...]] = {}  # tuples: one name almost always, a quarter of a set
        self._pairs = 0  # sum of len(ips) over _by_name, kept current
        # ip -> names it was credited to, outliving expiry; oldest first, at most max_addresses
        # (a tuple: almost always one name, and a tuple costs a quarter of a frozenset)
        self._memory: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self.evicted = 0  # pairs dropped by the per-name or the total cap
        self.version = 0  # bumped by every change, so readers know when to look again

    def configure(self, min_ttl: int, grace: int, max_ips_per_name: int, max_addresses: int | None = None) -> None:
        """New policy settings apply to answers from now on."""
        with self._lock:
            self.min_ttl, self.grace, self.max_ips_per_name = min_ttl, grace, max_ips_per_name
            if max_addresses is not None:
                self.max_addresses = max_addresses
                self._enforce_total_cap()

    def expiry_for(self, ttl: int, now: float) -> float:
        return expiry(ttl, now, self.min_ttl, self.grace)

    # ---- writing ------------------------------------------------------------------------------

    def add(
        self,
        name: str,
        answers: Iterable[tuple[object, int]],
        via: tuple[str, ...] = (),
        source: str = "snoop",
        now: float | None = None,
    ) -> list[Change]:
        """Credit (ip, ttl) answers to `name` (the name the client asked for).

        Returns the pairs whose expiry moved forward (new, or refreshed by more than the slack):
        those the kernel sets must (re)program. An answer never shortens an expiry already known.
        """
        norm = [(str(ipaddress.ip_address(ip)) if not isinstance(ip, str) else ip, ttl) for ip, ttl in answers]
        with self._lock:
            now = self.clock() if now is None else now
            return self._add(name, norm, via, source, now, lambda ttl: self.expiry_for(ttl, now))

    def restore(self, name: str, entries: Iterable[tuple[str, float]], source: str = "restored") -> list[Change]:
        """Re-learn (ip, absolute expiry) pairs a previous run knew (state file, kernel sets)."""
        with self._lock:
            now = self.clock()
            live = [(ip, exp) for ip, exp in entries if exp > now]
            return self._add(name, live, (), source, now, lambda exp: exp)

    def _add(self, name, items, via, source, now, expiry_of) -> list[Change]:
        ips = self._by_name.get(name)
        if ips is None:
            ips = self._by_name[name] = {}
        else:
            self._by_name.move_to_end(name)
        changes: list[Change] = []
        for ip_s, value in items:
            expiry = expiry_of(value)
            known = ips.get(ip_s)
            if known is None:
                ips[ip_s] = Learned(expiry, now, via or (name,), source)
                self._pairs += 1
                names = self._by_ip.get(ip_s, ())
                if name not in names:
                    self._by_ip[ip_s] = names + (name,)
                self._remember(ip_s)
            elif expiry > known.expiry + min(30.0, 0.1 * (expiry - now)):
                known.expiry = expiry
                known.via = via or known.via
            else:
                continue
            changes.append(Change(name, ip_s, expiry))
        self._enforce_name_cap(name, ips, changes)
        if not ips:
            del self._by_name[name]
        self._enforce_total_cap(keep=name)
        if changes:
            self.version += 1
        return changes

    def _remember(self, ip: str, names=()) -> None:
        old = self._memory.pop(ip, ())
        merged = set(old) | set(names) | set(self._by_ip.get(ip, ()))
        self._memory[ip] = old if len(merged) == len(old) else tuple(sorted(merged))
        while len(self._memory) > self.max_addresses:
            self._memory.popitem(last=False)

    def _enforce_name_cap(self, name: str, ips: dict[str, Learned], changes: list[Change]) -> None:
        excess = len(ips) - self.max_ips_per_name
        if excess <= 0:
            return
        victims = sorted(ips.items(), key=lambda kv: kv[1].expiry)[:excess]
        gone = {ip for ip, _ in victims}
        for ip in gone:
            self._forget(name, ip, ips)
        self.evicted += len(gone)
        changes[:] = [c for c in changes if c.ip not in gone]

    def _enforce_total_cap(self, keep: str | None = None) -> None:
        """Forget the least recently answered names, whole, until the total fits."""
        while self._pairs > self.max_addresses and self._by_name:
            name, ips = next(iter(self._by_name.items()))
            if name == keep and len(self._by_name) == 1:
                return  # one name larger than the cap: max_ips_per_name bounds it
            if name == keep:
                self._by_name.move_to_end(name)
                continue
            self.evicted += len(ips)
            for ip in list(ips):
                self._forget(name, ip, ips)
            del self._by_name[name]
            self.version += 1

    def _forget(self, name: str, ip: str, ips: dict[str, Learned]) -> None:
        del ips[ip]
        self._pairs -= 1
        names = self._by_ip.get(ip)
        if names is not None:
            rest = tuple(n for n in names if n != name)
            if rest:
                self._by_ip[ip] = rest
            else:
                del self._by_ip[ip]

    def gc(self, now: float | None = None) -> list[Change]:
        """Drop expired pairs; return them."""
        with self._lock:
            now = self.clock() if now is None else now
            removed: list[Change] = []
            for name in list(self._by_name):
                ips = self._by_name[name]
                for ip, learned in list(ips.items()):
                    if learned.expiry <= now:
                        self._forget(name, ip, ips)
                        removed.append(Change(name, ip, learned.expiry))
                if not ips:
                    del self._by_name[name]
            if removed:
                self.version += 1
            return removed

    def drop_names(self, keep: Callable[[str], bool]) -> list[Change]:
        """Forget every name for which keep(name) is false (a reload removed it from the policy)."""
        with self._lock:
            removed = []
            for name in [n for n in self._by_name if not keep(n)]:
                ips = self._by_name[name]
                for ip, learned in list(ips.items()):
                    self._forget(name, ip, ips)
                    removed.append(Change(name, ip, learned.expiry))
                del self._by_name[name]
            if removed:
                self.version += 1
            return removed

    # ---- reading ------------------------------------------------------------------------------

    def names(self) -> list[str]:
        with self._lock:
            return list(self._by_name)

    def ips_for(self, name: str) -> dict[str, Learned]:
        with self._lock:
            return dict(self._by_name.get(name, {}))

    def names_for(self, ip: str) -> set[str]:
        with self._lock:
            return set(self._by_ip.get(str(ipaddress.ip_address(ip)), ()))

    def names_ever_for(self, ip: str) -> frozenset[str]:
        """Every name this address was credited to that is still remembered, expired or not."""
        with self._lock:
            ip = str(ipaddress.ip_address(ip))
            return frozenset(self._by_ip.get(ip, ())) | frozenset(self._memory.get(ip, ()))

    def remembered(self, limit: int | None = None) -> dict[str, frozenset[str]]:
        """ip -> names, for addresses remembered (the most recent `limit`), newest first."""
        with self._lock:
            out = {}
            for ip in reversed(self._memory):
                if limit is not None and len(out) >= limit:
                    break
                out[ip] = frozenset(self._by_ip.get(ip, ())) | frozenset(self._memory[ip])
            return out

    def recall(self, ip: str, names) -> None:
        """Remember that `ip` was credited to `names` (a previous run said so)."""
        with self._lock:
            self._remember(ip, names)

    def snapshot(self) -> dict[str, dict[str, float]]:
        """An immutable-by-copy view for the planner: name -> {ip: expiry}."""
        with self._lock:
            return {name: {ip: rec.expiry for ip, rec in ips.items()} for name, ips in self._by_name.items()}

    def recent(self, limit: int) -> dict[str, dict[str, Learned]]:
        """The `limit` most recently answered names and their entries (copies), newest first."""
        with self._lock:
            out = {}
            for name in reversed(self._by_name):
                if len(out) >= limit:
                    break
                out[name] = dict(self._by_name[name])
            return out

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"names": len(self._by_name), "addresses": self._pairs, "evicted": self.evicted,
                    "remembered": len(self._memory)}

    def __len__(self) -> int:
        with self._lock:
            return self._pairs
