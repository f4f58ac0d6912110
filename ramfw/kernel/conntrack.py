"""Cut tracked connections to destinations that are no longer allowed (ctnetlink, raw netlink).

Established connections are accepted before any set lookup (so a pull survives TTL expiry);
that means removing an IP from a set does not stop a connection already open to it. When a
reload removes an allowed name, its connections are cut by deleting their conntrack entries:
the next packet is then NEW, meets the set lookup and is refused.

Spoken directly rather than through pyroute2: importing pyroute2 grows the controller's memory by
about 21 MiB (its package imports every module it has), for a dump and a few deletes.

Wire format (include/uapi/linux/netfilter/nfnetlink_conntrack.h): a dump of IPCTNL_MSG_CT_GET
yields one message per connection, with CTA_TUPLE_ORIG → CTA_TUPLE_IP (addresses) and
CTA_TUPLE_PROTO (protocol, ports), CTA_ID and CTA_ZONE. A delete sends back the original tuple,
the id (so a connection that was replaced meanwhile is left alone) and the zone.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
from dataclasses import dataclass

from ramfw.kernel import netns
from ramfw.kernel.nfnetlink import (
    NLA_F_NESTED,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    iter_nlattrs,
    iter_nlmsgs,
    nfnl_msg_pack,
    nla_pack,
)

log = logging.getLogger(__name__)

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NLM_F_DUMP = 0x300

CTA_TUPLE_ORIG = 1
CTA_ID = 12
CTA_ZONE = 18
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3

RECV_TIMEOUT = 5.0  # a dump of a busy table takes milliseconds; a silent kernel is an error


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


def dump_request(seq: int) -> bytes:
    return nfnl_msg_pack(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET, socket.AF_UNSPEC, 0, b"", seq=seq,
                         flags=NLM_F_REQUEST | NLM_F_DUMP)


def delete_request(conn: Connection, seq: int) -> bytes:
    attrs = conn.tuple_attr
    if conn.ident is not None:
        attrs += nla_pack(CTA_ID, conn.ident)
    if conn.zone is not None:
        attrs += nla_pack(CTA_ZONE, conn.zone)
    return nfnl_msg_pack(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE, conn.family, 0, attrs, seq=seq,
                         flags=NLM_F_REQUEST | NLM_F_ACK)


def parse_connection(buf, start: int, end: int) -> Connection | None:
    """One dump message's payload (from the nfgenmsg header on) → Connection, or None when it
    lacks what we need. Never raises on short or odd input."""
    if end - start < 4:
        return None
    family = buf[start]
    attrs = {t: (s, e) for t, s, e in iter_nlattrs(buf, start + 4, end)}
    orig = attrs.get(CTA_TUPLE_ORIG)
    if orig is None:
        return None
    fields: dict[int, tuple[int, int]] = {}
    for t, s, e in iter_nlattrs(buf, *orig):
        for t2, s2, e2 in iter_nlattrs(buf, s, e):
            fields[(t << 8) | t2] = (s2, e2)

    def field(outer: int, inner: int) -> bytes | None:
        span = fields.get((outer << 8) | inner)
        return bytes(buf[span[0]:span[1]]) if span else None

    if family == socket.AF_INET:
        src, dst = field(CTA_TUPLE_IP, CTA_IP_V4_SRC), field(CTA_TUPLE_IP, CTA_IP_V4_DST)
        size = 4
    elif family == socket.AF_INET6:
        src, dst = field(CTA_TUPLE_IP, CTA_IP_V6_SRC), field(CTA_TUPLE_IP, CTA_IP_V6_DST)
        size = 16
    else:
        return None
    if src is None or dst is None or len(src) != size or len(dst) != size:
        return None
    proto = field(CTA_TUPLE_PROTO, CTA_PROTO_NUM)
    sport = field(CTA_TUPLE_PROTO, CTA_PROTO_SRC_PORT)
    dport = field(CTA_TUPLE_PROTO, CTA_PROTO_DST_PORT)
    ident, zone = attrs.get(CTA_ID), attrs.get(CTA_ZONE)
    # the whole CTA_TUPLE_ORIG attribute, header included (4 bytes before its payload)
    tuple_attr = bytes(buf[orig[0] - 4:orig[1]])
    return Connection(
        family=family,
        proto=proto[0] if proto else 0,
        src=str(ipaddress.ip_address(src)),
        dst=str(ipaddress.ip_address(dst)),
        sport=struct.unpack("!H", sport)[0] if sport and len(sport) == 2 else None,
        dport=struct.unpack("!H", dport)[0] if dport and len(dport) == 2 else None,
        tuple_attr=tuple_attr[:2] + struct.pack("=H", CTA_TUPLE_ORIG | NLA_F_NESTED) + tuple_attr[4:],
        ident=bytes(buf[ident[0]:ident[1]]) if ident else None,
        zone=bytes(buf[zone[0]:zone[1]]) if zone else None,
    )


class _Ctnetlink:
    """A NETLINK_NETFILTER socket for ctnetlink requests, opened in the current namespace."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
        self.sock.settimeout(RECV_TIMEOUT)
        self.sock.bind((0, 0))
        self.seq = 0
        self.buf = bytearray(1 << 16)

    def close(self) -> None:
        self.sock.close()

    def _replies(self, msg: bytes, what: str):
        """Send one request; yield (type, start, end) of each reply until DONE or the ack."""
        self.sock.send(msg)
        while True:
            try:
                n = self.sock.recv_into(self.buf)
            except socket.timeout:
                raise OSError(f"conntrack {what}: no answer from the kernel within {RECV_TIMEOUT:.0f} s") from None
            for msg_type, _flags, seq, start, end in iter_nlmsgs(self.buf, n):
                if seq != self.seq:
                    continue
                if msg_type == NLMSG_DONE:
                    return
                if msg_type == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", self.buf, start)[0]
                    if err:
                        raise OSError(err, f"conntrack {what}: {os.strerror(err)}")
                    return  # the ack
                yield msg_type, start, end

    def dump(self) -> list[Connection]:
        self.seq += 1
        found = []
        for _type, start, end in self._replies(dump_request(self.seq), "dump"):
            conn = parse_connection(self.buf, start, end)
            if conn is not None:
                found.append(conn)
        return found

    def delete(self, conn: Connection) -> None:
        self.seq += 1
        for _ in self._replies(delete_request(conn, self.seq), "delete"):
            pass


def cut_connections(netns_name: str | None, ips) -> int:
    """Delete conntrack entries whose original destination is in `ips` (a set, or a predicate
    taking the destination address); return how many. Call it with no lock held: the dump
    walks every tracked connection of the namespace."""
    if not ips:
        return 0
    wanted = ips if callable(ips) else ips.__contains__
    cut = 0
    with netns.entered(netns_name):
        ct = _Ctnetlink()  # the socket stays bound to the namespace it was opened in
    try:
        for conn in [c for c in ct.dump() if wanted(c.dst)]:
            try:
                ct.delete(conn)
                cut += 1
            except OSError as exc:  # an entry that went away meanwhile is fine
                log.debug("conntrack delete %s -> %s: %s", conn.src, conn.dst, exc)
    finally:
        ct.close()
    if cut:
        log.info("cut %d connection(s) to addresses no longer allowed", cut)
    return cut


def destinations(netns_name: str | None) -> set[str]:
    """The original destination of every tracked connection in the namespace."""
    with netns.entered(netns_name):
        ct = _Ctnetlink()
    try:
        return {c.dst for c in ct.dump()}
    finally:
        ct.close()
