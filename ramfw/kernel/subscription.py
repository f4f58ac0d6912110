"""What NFQUEUE and NFLOG sockets share: a netlink socket bound to one nfnetlink subsystem and
one queue or group number, configured by acknowledged requests, unbound when closed.

Parsing never raises on hostile input: a packet message without the header we need is counted
in `malformed` and skipped. Threading: `receive()` is meant for one reader thread; NFQUEUE
verdicts may be sent from another thread (they only send).
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from ramfw.kernel.netlink import NFGENMSG_SIZE, NetlinkError, NetlinkSocket, attr_table

_MIN_BUFSIZE = 256 * 1024


def packet_attrs(buf, start: int, end: int, header_attr: int, header: struct.Struct):
    """(attribute table, unpacked packet header) of a packet message's payload (nfgenmsg +
    attributes), or None when it lacks the header: such a message is counted as malformed."""
    if end - start < NFGENMSG_SIZE or end > len(buf):
        return None
    table = attr_table(buf, start + NFGENMSG_SIZE, end)
    span = table.get(header_attr)
    if span is None or span[1] - span[0] < header.size:
        return None
    return table, header.unpack_from(buf, span[0])


class Subscription(NetlinkSocket):
    """Subclasses set `subsys`, `config_msg` and `message_type`, and implement `decode` and
    `_unbind_attrs`."""

    subsys: int
    config_msg: int

    def __init__(self, res_id: int, what: str, *, rcvbuf: int, copy_range: int):
        if not 0 <= res_id <= 0xFFFF:
            raise NetlinkError(f"{what}: number must be 0 … 65535")
        self.res_id = res_id
        super().__init__(what, rcvbuf=rcvbuf, bufsize=max(_MIN_BUFSIZE, copy_range + 8192), lossy=True)

    def _config(self, family: int, attrs: bytes, action: str, res_id: int | None = None) -> None:
        """One acknowledged config message for our queue / group (res_id 0: per family)."""
        self.request(self.subsys, self.config_msg, family, attrs, action,
                     res_id=self.res_id if res_id is None else res_id)

    def _configure(self, steps) -> None:
        """Run the config steps; on any failure close the socket (the kernel drops the binding)."""
        try:
            steps()
        except BaseException:
            self._closed = True
            self._sock.close()
            raise

    def explain(self, action: str, err: int) -> NetlinkError:
        if action == "bind" and err in (errno.EBUSY, errno.EPERM):
            # EPERM: bound by another socket (or no CAP_NET_ADMIN); EBUSY: bound by this one
            return NetlinkError(f"{self.what} is already bound by another process or socket "
                                f"(or CAP_NET_ADMIN is missing): {os.strerror(err)}", err)
        if err == errno.EPERM:
            return NetlinkError(f"{self.what}: {action}: permission denied (needs CAP_NET_ADMIN in this network namespace)", err)
        return super().explain(action, err)

    def _unbind_attrs(self) -> bytes:
        raise NotImplementedError

    def _release(self) -> None:
        self._config(socket.AF_UNSPEC, self._unbind_attrs(), "unbind")
