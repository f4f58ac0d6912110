"""NFLOG: copies of packets sent to a log group (`nft ... log group N`, `-j NFLOG`)
(include/uapi/linux/netfilter/nfnetlink_log.h)."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from ramfw.kernel.netlink import attr_be32, attr_str, nla_be32, nla_pack
from ramfw.kernel.subscription import Subscription, packet_attrs

NFNL_SUBSYS_ULOG = 4

NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1

NFULNL_CFG_CMD_NONE = 0
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
NFULNL_CFG_CMD_PF_BIND = 3
NFULNL_CFG_CMD_PF_UNBIND = 4

NFULNL_COPY_NONE = 0
NFULNL_COPY_META = 1
NFULNL_COPY_PACKET = 2

NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_NLBUFSIZ = 3
NFULA_CFG_TIMEOUT = 4
NFULA_CFG_QTHRESH = 5
NFULA_CFG_FLAGS = 6

NFULA_PACKET_HDR = 1
NFULA_MARK = 2
NFULA_TIMESTAMP = 3
NFULA_IFINDEX_INDEV = 4
NFULA_IFINDEX_OUTDEV = 5
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NFULA_UID = 11
NFULA_GID = 14

_PACKET_HDR = struct.Struct("!HBx")  # hw_protocol, hook, pad
_TIMESTAMP = struct.Struct("!QQ")  # sec, usec


@dataclass(slots=True)
class LoggedPacket:
    prefix: str
    hw_protocol: int
    hook: int
    payload: bytes
    indev: int | None
    outdev: int | None
    uid: int | None
    gid: int | None
    timestamp: float | None


def parse_log_packet(buf, start: int, end: int, *, with_uid: bool = True) -> LoggedPacket | None:
    """Decode the payload (nfgenmsg + attributes) of an NFULNL_MSG_PACKET message."""
    found = packet_attrs(buf, start, end, NFULA_PACKET_HDR, _PACKET_HDR)
    if found is None:
        return None
    table, (hw_protocol, hook) = found
    span = table.get(NFULA_PAYLOAD)
    timestamp = None
    stamp = table.get(NFULA_TIMESTAMP)
    if stamp and stamp[1] - stamp[0] >= _TIMESTAMP.size:
        sec, usec = _TIMESTAMP.unpack_from(buf, stamp[0])
        timestamp = sec + usec / 1e6
    return LoggedPacket(
        prefix=attr_str(buf, table, NFULA_PREFIX),
        hw_protocol=hw_protocol,
        hook=hook,
        payload=bytes(buf[span[0]:span[1]]) if span else b"",
        indev=attr_be32(buf, table, NFULA_IFINDEX_INDEV),
        outdev=attr_be32(buf, table, NFULA_IFINDEX_OUTDEV),
        uid=attr_be32(buf, table, NFULA_UID) if with_uid else None,
        gid=attr_be32(buf, table, NFULA_GID) if with_uid else None,
        timestamp=timestamp,
    )


class NfLog(Subscription):
    """Copies of packets sent to an NFLOG group.

    Configured for latency: the kernel flushes after every packet (qthresh 1) and at the latest
    after `flush_timeout_cs` hundredths of a second (the kernel defaults, 100 packets / 1 s,
    would hold a lone packet back for a second).

    `bind_pf` sends the historical PF_UNBIND/PF_BIND for AF_INET and AF_INET6. Off by default:
    on current kernels `log group` rules do not need it, and PF_UNBIND/PF_BIND *replace the
    namespace's default logger* (net.netfilter.nf_log.<pf>, e.g. nf_log_ipv4 → nfnetlink_log),
    which silently redirects other users' default logging. Only very old kernels need it.
    """

    subsys = NFNL_SUBSYS_ULOG
    config_msg = NFULNL_MSG_CONFIG
    message_type = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET

    def __init__(self, group: int, *, copy_range: int = 0xFFFF, rcvbuf: int = 8 << 20,
                 flags_uid: bool = True, qthresh: int = 1, flush_timeout_cs: int = 1,
                 bind_pf: bool = False):
        self.group = group
        self._with_uid = flags_uid
        super().__init__(group, f"NFLOG group {group}", rcvbuf=rcvbuf, copy_range=copy_range)
        self._configure(lambda: self._bind(copy_range, qthresh, flush_timeout_cs, bind_pf))

    def _bind(self, copy_range: int, qthresh: int, flush_timeout_cs: int, bind_pf: bool) -> None:
        if bind_pf:
            for family in (socket.AF_INET, socket.AF_INET6):
                self._config(family, self._cmd(NFULNL_CFG_CMD_PF_UNBIND), "family unbind", res_id=0)
                self._config(family, self._cmd(NFULNL_CFG_CMD_PF_BIND), "family bind", res_id=0)
        self._config(socket.AF_UNSPEC, self._cmd(NFULNL_CFG_CMD_BIND), "bind")
        self._config(socket.AF_UNSPEC,
                     nla_pack(NFULA_CFG_MODE, struct.pack("!IBx", copy_range, NFULNL_COPY_PACKET)),
                     "set copy mode")
        self._config(socket.AF_UNSPEC, nla_be32(NFULA_CFG_QTHRESH, max(1, qthresh)), "set queue threshold")
        self._config(socket.AF_UNSPEC, nla_be32(NFULA_CFG_TIMEOUT, max(0, flush_timeout_cs)), "set flush timeout")

    @staticmethod
    def _cmd(cmd: int) -> bytes:
        # struct nfulnl_msg_config_cmd { u8 command; }
        return nla_pack(NFULA_CFG_CMD, struct.pack("!B", cmd))

    def _unbind_attrs(self) -> bytes:
        return self._cmd(NFULNL_CFG_CMD_UNBIND)

    def decode(self, buf, start: int, end: int) -> LoggedPacket | None:
        return parse_log_packet(buf, start, end, with_uid=self._with_uid)

    def receive(self, timeout: float | None = None, max_msgs: int = 256) -> list[LoggedPacket]:
        return super().receive(timeout, max_msgs)
