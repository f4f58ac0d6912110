"""Cut tracked connections to destinations that are no longer allowed (ctnetlink, raw netlink).

Established connections are accepted before any set lookup (so a pull survives TTL expiry);
that means removing an IP from a set does not stop a connection already open to it. When a
reload removes an allowed name, its connections are cut by deleting their conntrack entries:
the next packet is then NEW, meets the set lookup and is refused.

Spoken directly rather than through pyroute2: importing pyroute2 grows the controller's memory by
about 21 MiB (its package imports every module it has), for a dump and a few deletes. The
requests go through the netlink core, so the dump, like every netlink receive, has a timeout.

Wire format (include/uapi/linux/netfilter/nfnetlink_conntrack.h): a dump of IPCTNL_MSG_CT_GET
yields one message per connection, with CTA_TUPLE_ORIG → CTA_TUPLE_IP (addresses) and
CTA_TUPLE_PROTO (protocol, ports), CTA_ID and CTA_ZONE. A delete sends back the original tuple,
the id (so a connection that was replaced meanwhile is left alone) and the zone.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass

from ramfw.kernel import netns
from ramfw.kernel.netlink import NLA_F_NESTED, NetlinkError, NetlinkSocket, attr_be16, attr_table, nla_pack

log = logging.getLogger(__name__)

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2

CTA_TUPLE_ORIG = 1
CTA_ID = 12
CTA_ZONE = 18
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3

# family -> (source attribute, destination attribute, address size)
_ADDRESSES = {socket.AF_INET: (CTA_IP_V4_SRC, CTA_IP_V4_DST, 4), socket.AF_INET6: (CTA_IP_V6_SRC, CTA_IP_V6_DST, 16)}


@dataclass(frozen=True)
class Connection:
    """One tracked connection's original direction, and what a delete needs to name it."""

    family: int
    proto: int
    src: str
    dst: str
    sport: int | None
    dport: int | None
    tuple_attr: bytes  # CTA_TUPLE_ORIG as the kernel sent it, header included
    ident: bytes | None  # CTA_ID's payload
    zone: bytes | None  # CTA_ZONE's payload


def delete_attrs(conn: Connection) -> bytes:
    """The attributes of the IPCTNL_MSG_CT_DELETE that removes exactly this connection."""
    attrs = conn.tuple_attr
    if conn.ident is not None:
        attrs += nla_pack(CTA_ID, conn.ident)
    if conn.zone is not None:
        attrs += nla_pack(CTA_ZONE, conn.zone)
    return attrs


def parse_connection(buf, start: int = 0, end: int | None = None) -> Connection | None:
    """One dump reply's attributes (after nfgenmsg) → Connection, or None when it lacks what we
    need. The family is the one whose addresses the tuple carries. Never raises on short or odd
    input."""
    end = len(buf) if end is None else end
    attrs = attr_table(buf, start, end)
    orig = attrs.get(CTA_TUPLE_ORIG)
    if orig is None:
        return None
    tuple_orig = attr_table(buf, *orig)
    ip = attr_table(buf, *tuple_orig[CTA_TUPLE_IP]) if CTA_TUPLE_IP in tuple_orig else {}
    ports = attr_table(buf, *tuple_orig[CTA_TUPLE_PROTO]) if CTA_TUPLE_PROTO in tuple_orig else {}
    for family, (src_attr, dst_attr, size) in _ADDRESSES.items():
        src, dst = ip.get(src_attr), ip.get(dst_attr)
        if src and dst and src[1] - src[0] == size and dst[1] - dst[0] == size:
            break
    else:
        return None
    proto = ports.get(CTA_PROTO_NUM)
    ident, zone = attrs.get(CTA_ID), attrs.get(CTA_ZONE)
    return Connection(
        family=family,
        proto=buf[proto[0]] if proto and proto[1] > proto[0] else 0,
        src=str(ipaddress.ip_address(bytes(buf[src[0]:src[1]]))),
        dst=str(ipaddress.ip_address(bytes(buf[dst[0]:dst[1]]))),
        sport=attr_be16(buf, ports, CTA_PROTO_SRC_PORT),
        dport=attr_be16(buf, ports, CTA_PROTO_DST_PORT),
        # the whole CTA_TUPLE_ORIG attribute, sent back as the kernel gave it (marked nested)
        tuple_attr=nla_pack(CTA_TUPLE_ORIG | NLA_F_NESTED, bytes(buf[orig[0]:orig[1]])),
        ident=bytes(buf[ident[0]:ident[1]]) if ident else None,
        zone=bytes(buf[zone[0]:zone[1]]) if zone else None,
    )


def _dump(sock: NetlinkSocket) -> list[Connection]:
    replies = sock.request(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET, socket.AF_UNSPEC, b"", "dump", dump=True)
    return [conn for body in replies if (conn := parse_connection(body)) is not None]


def _open(netns_name: str | None) -> NetlinkSocket:
    with netns.entered(netns_name):
        return NetlinkSocket("conntrack")  # the socket stays bound to the namespace it was opened in


def cut_connections(netns_name: str | None, ips) -> int:
    """Delete conntrack entries whose original destination is in `ips` (a set, or a predicate
    taking the destination address); return how many. Call it with no lock held: the dump
    walks every tracked connection of the namespace."""
    if not ips:
        return 0
    wanted = ips if callable(ips) else ips.__contains__
    cut = 0
    with _open(netns_name) as sock:
        for conn in [c for c in _dump(sock) if wanted(c.dst)]:
            try:
                sock.request(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE, conn.family, delete_attrs(conn), "delete")
                cut += 1
            except NetlinkError as exc:  # an entry that went away meanwhile is fine
                log.debug("conntrack delete %s -> %s: %s", conn.src, conn.dst, exc)
    if cut:
        log.info("cut %d connection(s) to addresses no longer allowed", cut)
    return cut


def destinations(netns_name: str | None) -> set[str]:
    """The original destination of every tracked connection in the namespace."""
    with _open(netns_name) as sock:
        return {c.dst for c in _dump(sock)}
