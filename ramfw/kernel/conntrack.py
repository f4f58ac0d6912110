"""Cut tracked connections to destinations that are no longer allowed.

Established connections are accepted before any set lookup (so a pull survives TTL expiry);
that means removing an IP from a set does not stop a connection already open to it. When a
reload removes an allowed name, its connections are cut by deleting their conntrack entries:
the next packet is then NEW, meets the set lookup and is refused.
"""

from __future__ import annotations

import logging

from ramfw.kernel import netns

log = logging.getLogger(__name__)


def cut_connections(netns_name: str | None, ips) -> int:
    """Delete conntrack entries whose original destination is in `ips` (a set, or a predicate
    taking the destination address); return how many. Call it with no lock held: the dump
    walks every tracked connection of the namespace."""
    if not ips:
        return 0
    wanted = ips if callable(ips) else ips.__contains__
    from pyroute2 import Conntrack  # imported here: only the kernel-facing path needs it

    cut = 0
    # pyroute2 opens its netlink socket lazily, at first use: every call stays inside.
    with netns.entered(netns_name):
        ct = Conntrack()
        try:
            victims = [e for e in ct.dump_entries() if e.tuple_orig is not None and wanted(e.tuple_orig.daddr)]
            for entry in victims:
                try:
                    ct.delete(entry)
                    cut += 1
                except Exception as exc:  # an entry that went away meanwhile is fine
                    log.debug("conntrack delete %s: %s", entry, exc)
        finally:
            ct.close()
    if cut:
        log.info("cut %d connection(s) to addresses no longer allowed", cut)
    return cut


def destinations(netns_name: str | None) -> set[str]:
    """The original destination of every tracked connection in the namespace."""
    from pyroute2 import Conntrack

    with netns.entered(netns_name):
        ct = Conntrack()
        try:
            return {e.tuple_orig.daddr for e in ct.dump_entries() if e.tuple_orig is not None and e.tuple_orig.daddr}
        finally:
            ct.close()
