"""Cut tracked connections to destinations that are no longer allowed.

Established connections are accepted before any set lookup (so a pull survives TTL expiry);
that means removing an IP from a set does not stop a connection already open to it. When a
reload removes an allowed name, its connections are cut by deleting their conntrack entries:
the next packet is then NEW, meets the set lookup and is refused.

ctnetlink (include/uapi/linux/netfilter/nfnetlink_conntrack.h) over the netlink core, so the
dump, like every netlink receive of ramfw, has a timeout.
"""

from __future__ import annotations

import logging
import socket

from ramfw.kernel import netns
from ramfw.kernel.netlink import NetlinkError, NetlinkSocket, attr_table, nla_pack

log = logging.getLogger(__name__)

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 1, 2
CTA_TUPLE_ORIG, CTA_ID, CTA_ZONE = 1, 12, 18
CTA_TUPLE_IP = 1
CTA_IP_V4_DST, CTA_IP_V6_DST = 2, 4
_NESTED = 0x8000


def _entries(sock: NetlinkSocket):
    """(family, destination, attributes that name the entry for a delete) of every tracked
    connection, both families."""
    for body in sock.request(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET, socket.AF_UNSPEC, b"", "conntrack dump",
                             dump=True):
        top = attr_table(body)
        orig = top.get(CTA_TUPLE_ORIG)
        ip = attr_table(body, *attr_table(body, *orig).get(CTA_TUPLE_IP, (0, 0))) if orig else {}
        for attr, family in ((CTA_IP_V4_DST, socket.AF_INET), (CTA_IP_V6_DST, socket.AF_INET6)):
            span = ip.get(attr)
            if span and span[1] - span[0] == (4 if family == socket.AF_INET else 16):
                # the tuple as the kernel gave it, plus the id and zone: delete exactly this entry
                key = nla_pack(CTA_TUPLE_ORIG | _NESTED, bytes(body[orig[0]:orig[1]]))
                key += b"".join(nla_pack(t, bytes(body[top[t][0]:top[t][1]])) for t in (CTA_ID, CTA_ZONE) if t in top)
                yield family, socket.inet_ntop(family, bytes(body[span[0]:span[1]])), key
                break


def cut_connections(netns_name: str | None, ips) -> int:
    """Delete conntrack entries whose original destination is in `ips` (a set, or a predicate
    taking the destination address); return how many. Call it with no lock held: the dump
    walks every tracked connection of the namespace."""
    if not ips:
        return 0
    wanted = ips if callable(ips) else ips.__contains__
    cut = 0
    with netns.entered(netns_name):
        sock = NetlinkSocket("conntrack")
    with sock:
        for family, daddr, key in [e for e in _entries(sock) if wanted(e[1])]:
            try:
                sock.request(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE, family, key, f"delete {daddr}")
                cut += 1
            except NetlinkError as exc:  # an entry that went away meanwhile is fine
                log.debug("conntrack %s", exc)
    if cut:
        log.info("cut %d connection(s) to addresses no longer allowed", cut)
    return cut


def destinations(netns_name: str | None) -> set[str]:
    """The original destination of every tracked connection in the namespace."""
    with netns.entered(netns_name):
        sock = NetlinkSocket("conntrack")
    with sock:
        return {daddr for _family, daddr, _key in _entries(sock)}
