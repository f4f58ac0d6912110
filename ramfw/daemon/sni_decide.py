"""SNI binding's decision, bound to one Enforcer: its current policy and its DNS cache.

tls/binding.py holds the rule (pure); this supplies the facts it needs for a destination:
the names the address was credited to (the cache remembers them beyond their expiry, and
locks itself), whether a CIDR of the policy admits the address, and which catalog registry a
host belongs to (memoised: the catalog's templates are regular expressions).
"""

from __future__ import annotations

import functools
import ipaddress

from ramfw.policy.catalog import default_catalog
from ramfw.tls.binding import Decision, decide, registry_of


@functools.lru_cache(maxsize=8192)
def _registry(name: str) -> str | None:
    return registry_of(default_catalog(), name)


@functools.lru_cache(maxsize=64)
def _networks(cidrs: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


def static_admits(policy, ip: str) -> bool:
    """True when the policy's allow_cidrs (or an infrastructure address) admit `ip`."""
    addr = ipaddress.ip_address(ip)
    return any(addr in net for net in _networks(tuple(policy.allow_cidrs) + tuple(policy.infrastructure_cidrs)))


def decider(enforcer):
    """(hello, destination ip, bound) -> Decision, reading the enforcer's state at each call."""

    def _decide(hello, dst: str, bound: str = "") -> Decision:
        policy = enforcer.policy
        return decide(hello, enforcer.cache.names_ever_for(dst), static_admits(policy, dst),
                      lambda name: policy.classify(name)[0], _registry, bound)

    return _decide
