"""What DNS told us: name -> {ip: expiry}, and the reverse ip -> names.

Pure and clock-injected (like Cilium's pkg/fqdn cache): the controller feeds it answers from the
resolver and the snooper, the planner reads snapshots, gc(now) ages entries out. Expiry is
now + max(ttl, min_ttl) + grace, refreshed by every answer; a name holds at most
max_ips_per_name addresses, the soonest-expiring evicted first (CDNs rotate through many).

A refresh that moves an expiry forward by less than a tenth of its lifetime (at most 30 s) is
not a change: popular names are answered many times a second, and reprogramming the kernel for
each answer would cost a transaction per answer for nothing the grace period does not cover.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from typing import Callable, Iterable


@dataclass(slots=True)
class Learned:
    expiry: float
    learned_at: float
    via: tuple[str, ...]  # CNAME chain the answer came through, queried name first
    source: str  # "resolver" or "snoop"


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
    ):
        self.min_ttl = min_ttl
        self.grace = grace
        self.max_ips_per_name = max_ips_per_name
        self.clock = clock
        self._by_name: dict[str, dict[str, Learned]] = {}
        self._by_ip: dict[str, set[str]] = {}
        self.evicted = 0
        self.version = 0  # bumped by every change, so readers know when to look again

    def configure(self, min_ttl: int, grace: int, max_ips_per_name: int) -> None:
        """New policy settings apply to answers from now on."""
        self.min_ttl, self.grace, self.max_ips_per_name = min_ttl, grace, max_ips_per_name

    def expiry_for(self, ttl: int, now: float) -> float:
        return now + max(int(ttl), self.min_ttl) + self.grace

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
        now = self.clock() if now is None else now
        ips = self._by_name.setdefault(name, {})
        changes: list[Change] = []
        for ip, ttl in answers:
            ip_s = str(ipaddress.ip_address(ip)) if not isinstance(ip, str) else ip
            expiry = self.expiry_for(ttl, now)
            known = ips.get(ip_s)
            if known is None:
                ips[ip_s] = Learned(expiry, now, via or (name,), source)
                self._by_ip.setdefault(ip_s, set()).add(name)
            elif expiry > known.expiry + min(30.0, 0.1 * (expiry - now)):
                known.expiry = expiry
                known.via = via or known.via
            else:
                continue
            changes.append(Change(name, ip_s, expiry))
        self._enforce_cap(name, ips, changes)
        if not ips:
            del self._by_name[name]
        if changes:
            self.version += 1
        return changes

    def _enforce_cap(self, name: str, ips: dict[str, Learned], changes: list[Change]) -> None:
        excess = len(ips) - self.max_ips_per_name
        if excess <= 0:
            return
        victims = sorted(ips.items(), key=lambda kv: kv[1].expiry)[:excess]
        gone = {ip for ip, _ in victims}
        for ip in gone:
            self._forget(name, ip, ips)
        self.evicted += len(gone)
        changes[:] = [c for c in changes if c.ip not in gone]

    def _forget(self, name: str, ip: str, ips: dict[str, Learned]) -> None:
        del ips[ip]
        names = self._by_ip.get(ip)
        if names is not None:
            names.discard(name)
            if not names:
                del self._by_ip[ip]

    def gc(self, now: float | None = None) -> list[Change]:
        """Drop expired pairs; return them."""
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

    # ---- reading --------------------------------------------------------------------------

    def names(self) -> list[str]:
        return list(self._by_name)

    def ips_for(self, name: str) -> dict[str, Learned]:
        return dict(self._by_name.get(name, {}))

    def names_for(self, ip: str) -> set[str]:
        return set(self._by_ip.get(str(ipaddress.ip_address(ip)), ()))

    def snapshot(self) -> dict[str, dict[str, float]]:
        """An immutable-by-copy view for the planner: name -> {ip: expiry}."""
        return {name: {ip: rec.expiry for ip, rec in ips.items()} for name, ips in self._by_name.items()}

    def __len__(self) -> int:
        return sum(len(ips) for ips in self._by_name.values())
