"""NFQUEUE: packets an `NFQUEUE` / `queue` rule holds until we give each a verdict
(include/uapi/linux/netfilter/nfnetlink_queue.h)."""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

from ramfw.kernel.netlink import (
    NetlinkError,
    attr_be32,
    nfnl_msg_pack,
    nla_be32,
    nla_pack,
)
from ramfw.kernel.subscription import Subscription, packet_attrs

NFNL_SUBSYS_QUEUE = 3

NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3

NFQNL_CFG_CMD_NONE = 0
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_CFG_CMD_PF_BIND = 3
NFQNL_CFG_CMD_PF_UNBIND = 4

NFQNL_COPY_NONE = 0
NFQNL_COPY_META = 1
NFQNL_COPY_PACKET = 2

NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5

NFQA_CFG_F_FAIL_OPEN = 1 << 0
NFQA_CFG_F_CONNTRACK = 1 << 1
NFQA_CFG_F_GSO = 1 << 2
NFQA_CFG_F_UID_GID = 1 << 3

NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_MARK = 3
NFQA_TIMESTAMP = 4
NFQA_IFINDEX_INDEV = 5
NFQA_IFINDEX_OUTDEV = 6
NFQA_PAYLOAD = 10
NFQA_CAP_LEN = 13
NFQA_UID = 16
NFQA_GID = 17

NF_DROP = 0
NF_ACCEPT = 1

_PACKET_HDR = struct.Struct("!IHB")  # packet_id, hw_protocol, hook (packed, 7 bytes)


@dataclass(slots=True)
class QueuedPacket:
    packet_id: int
    hw_protocol: int  # ethertype: 0x0800 IPv4, 0x86dd IPv6
    hook: int  # NF_INET_* (0 prerouting, 1 input, 2 forward, 3 output, 4 postrouting)
    payload: bytes  # the IP packet (first copy_range bytes)
    indev: int | None = None
    outdev: int | None = None
    mark: int = 0
    orig_len: int | None = None  # set when the payload was cut at copy_range


def parse_queue_packet(buf, start: int, end: int) -> QueuedPacket | None:
    """Decode the payload (nfgenmsg + attributes) of an NFQNL_MSG_PACKET message."""
    found = packet_attrs(buf, start, end, NFQA_PACKET_HDR, _PACKET_HDR)
    if found is None:
        return None
    table, (packet_id, hw_protocol, hook) = found
    span = table.get(NFQA_PAYLOAD)
    return QueuedPacket(
        packet_id=packet_id,
        hw_protocol=hw_protocol,
        hook=hook,
        payload=bytes(buf[span[0]:span[1]]) if span else b"",
        indev=attr_be32(buf, table, NFQA_IFINDEX_INDEV),
        outdev=attr_be32(buf, table, NFQA_IFINDEX_OUTDEV),
        mark=attr_be32(buf, table, NFQA_MARK) or 0,
        orig_len=attr_be32(buf, table, NFQA_CAP_LEN),
    )


class NfQueue(Subscription):
    """Packets queued by an NFQUEUE rule: receive them, give each a verdict.

    Until a packet gets its verdict the kernel holds it; with `fail_open` the kernel accepts
    packets instead of dropping them when the queue is full or our socket buffer overflows.
    """

    subsys = NFNL_SUBSYS_QUEUE
    config_msg = NFQNL_MSG_CONFIG
    message_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET

    def __init__(self, queue_num: int, *, copy_range: int = 0xFFFF, rcvbuf: int = 8 << 20,
                 queue_maxlen: int = 4096, fail_open: bool = True, uid_gid: bool = False):
        self.queue_num = queue_num
        super().__init__(queue_num, f"NFQUEUE queue {queue_num}", rcvbuf=rcvbuf, copy_range=copy_range)
        self._configure(lambda: self._bind(copy_range, queue_maxlen, fail_open, uid_gid))

    def _bind(self, copy_range: int, queue_maxlen: int, fail_open: bool, uid_gid: bool) -> None:
        # Obsolete since Linux 3.8 (the kernel answers 0 and does nothing); older kernels
        # needed the queue handler bound per family. Errors are not fatal.
        for family in (socket.AF_INET, socket.AF_INET6):
            for cmd in (NFQNL_CFG_CMD_PF_UNBIND, NFQNL_CFG_CMD_PF_BIND):
                try:
                    self._config(family, self._cmd(cmd), "family bind", res_id=0)
                except NetlinkError as e:
                    if e.errno == errno.EPERM:
                        raise
        self._config(socket.AF_UNSPEC, self._cmd(NFQNL_CFG_CMD_BIND), "bind")
        self._config(socket.AF_UNSPEC,
                     nla_pack(NFQA_CFG_PARAMS, struct.pack("!IB", copy_range, NFQNL_COPY_PACKET)),
                     "set copy mode")
        self._config(socket.AF_UNSPEC, nla_be32(NFQA_CFG_QUEUE_MAXLEN, queue_maxlen), "set queue length")
        mask = NFQA_CFG_F_FAIL_OPEN | (NFQA_CFG_F_UID_GID if uid_gid else 0)
        flags = (NFQA_CFG_F_FAIL_OPEN if fail_open else 0) | (NFQA_CFG_F_UID_GID if uid_gid else 0)
        self._config(socket.AF_UNSPEC, nla_be32(NFQA_CFG_FLAGS, flags) + nla_be32(NFQA_CFG_MASK, mask),
                     "set flags")

    @staticmethod
    def _cmd(cmd: int) -> bytes:
        # struct nfqnl_msg_config_cmd { u8 command; u8 _pad; be16 pf; }  (pf unused since 3.8)
        return nla_pack(NFQA_CFG_CMD, struct.pack("!BxH", cmd, 0))

    def _unbind_attrs(self) -> bytes:
        return self._cmd(NFQNL_CFG_CMD_UNBIND)

    def explain(self, action: str, err: int) -> NetlinkError:
        if action == "set flags" and err in (errno.EOPNOTSUPP, errno.EINVAL):
            return NetlinkError(f"{self.what}: this kernel does not support the requested queue "
                                f"flags (fail-open/uid-gid): {os.strerror(err)}", err)
        return super().explain(action, err)

    def decode(self, buf, start: int, end: int) -> QueuedPacket | None:
        return parse_queue_packet(buf, start, end)

    def receive(self, timeout: float | None = None, max_msgs: int = 256) -> list[QueuedPacket]:
        return super().receive(timeout, max_msgs)

    def _send_verdict(self, msg_type: int, packet_id: int, accept: bool) -> None:
        if self._closed:
            raise NetlinkError(f"{self.what}: verdict on a closed socket")
        verdict = NF_ACCEPT if accept else NF_DROP
        attrs = nla_pack(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id & 0xFFFFFFFF))
        self.send(nfnl_msg_pack(NFNL_SUBSYS_QUEUE, msg_type, socket.AF_UNSPEC, self.res_id, attrs), "verdict")

    def verdict(self, packet_id: int, accept: bool = True) -> None:
        """Accept or drop one queued packet. Errors (unknown id) come back asynchronously and are
        counted in `errors` by receive()."""
        self._send_verdict(NFQNL_MSG_VERDICT, packet_id, accept)

    def verdict_batch(self, max_id: int, accept: bool = True) -> None:
        """Accept or drop every queued packet whose id is <= max_id."""
        self._send_verdict(NFQNL_MSG_VERDICT_BATCH, max_id, accept)
