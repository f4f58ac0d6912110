"""Minimal NFQUEUE and NFLOG clients on raw netlink sockets (stdlib only).

Sockets are created in the calling thread's current network namespace: wrap the constructor in
`netns.entered(name)` to listen in another one; the socket stays bound to that namespace.

Wire format (include/uapi/linux/netfilter/nfnetlink*.h):

    nlmsghdr   u32 len, u16 type, u16 flags, u32 seq, u32 pid      host byte order
    nfgenmsg   u8 family, u8 version (NFNETLINK_V0), be16 res_id   res_id = queue / group
    nlattr     u16 len, u16 type, payload, padding to 4 bytes      host byte order header;
                                                                   netfilter payloads are
                                                                   big-endian

Parsing never raises on hostile input: truncated messages end the walk, unknown attributes are
skipped, a packet message without the header we need is counted in `malformed` and dropped.

Threading: `receive()` is meant for one reader thread; `verdict()`/`verdict_batch()` may be
called from another thread (they only send).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass

from ramfw.errors import BackendError

# --- netlink ---------------------------------------------------------------------------------

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
NETLINK_CAP_ACK = 10
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4

NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = 0xFFFF & ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)

NFNETLINK_V0 = 0
NFNL_SUBSYS_QUEUE = 3
NFNL_SUBSYS_ULOG = 4

# --- nfnetlink_queue ----------------------------------------------------------------------------

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

# --- nfnetlink_log ------------------------------------------------------------------------------

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

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("!BBH")
_NLAHDR = struct.Struct("=HH")
_NLMSGERR = struct.Struct("=i")
_BE32 = struct.Struct("!I")
_NFQ_PACKET_HDR = struct.Struct("!IHB")  # packet_id, hw_protocol, hook (packed, 7 bytes)
_NFUL_PACKET_HDR = struct.Struct("!HBx")  # hw_protocol, hook, pad
_TIMESTAMP = struct.Struct("!QQ")  # sec, usec

_MIN_BUFSIZE = 256 * 1024
_ACK_TIMEOUT = 5.0
_MAX_ENOBUFS_PER_RECEIVE = 8


class NetlinkError(BackendError):
    """A netfilter netlink request failed; str() is one line naming the queue or group."""

    def __init__(self, message: str, err: int | None = None):
        super().__init__(message)
        self.errno = err


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


# --- encoding / decoding helpers (pure) --------------------------------------------------------


def _align4(n: int) -> int:
    return (n + 3) & ~3


def nla_pack(attr_type: int, data: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = _NLAHDR.size + len(data)
    return _NLAHDR.pack(length, attr_type) + data + b"\0" * (_align4(length) - length)


def nfnl_msg_pack(subsys: int, msg: int, family: int, res_id: int, attrs: bytes, *, seq: int = 0,
                  flags: int = NLM_F_REQUEST) -> bytes:
    body = _NFGENMSG.pack(family, NFNETLINK_V0, res_id & 0xFFFF) + attrs
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), (subsys << 8) | msg, flags, seq, 0) + body


def iter_nlmsgs(buf, length: int):
    """Yield (type, flags, seq, payload_start, payload_end) for each whole message in buf[:length]."""
    off = 0
    length = min(length, len(buf))
    while off + _NLMSGHDR.size <= length:
        msg_len, msg_type, flags, seq, _pid = _NLMSGHDR.unpack_from(buf, off)
        if msg_len < _NLMSGHDR.size or off + msg_len > length:
            return  # truncated or garbage: nothing after it can be trusted
        yield msg_type, flags, seq, off + _NLMSGHDR.size, off + msg_len
        off += _align4(msg_len)


def iter_nlattrs(buf, start: int, end: int):
    """Yield (type, data_start, data_end) with NLA_F_NESTED / NLA_F_NET_BYTEORDER masked off."""
    off = start
    end = min(end, len(buf))
    while off + _NLAHDR.size <= end:
        attr_len, attr_type = _NLAHDR.unpack_from(buf, off)
        if attr_len < _NLAHDR.size or off + attr_len > end:
            return
        yield attr_type & NLA_TYPE_MASK, off + _NLAHDR.size, off + attr_len
        off += _align4(attr_len)


def _attr_table(buf, start: int, end: int) -> dict[int, tuple[int, int]]:
    table: dict[int, tuple[int, int]] = {}
    for attr_type, s, e in iter_nlattrs(buf, start, end):
        table.setdefault(attr_type, (s, e))
    return table


def _be32(buf, table, attr_type: int) -> int | None:
    span = table.get(attr_type)
    if span is None or span[1] - span[0] < 4:
        return None
    return _BE32.unpack_from(buf, span[0])[0]


def parse_queue_packet(buf, start: int, end: int) -> QueuedPacket | None:
    """Decode the payload (nfgenmsg + attributes) of an NFQNL_MSG_PACKET message."""
    if end - start < _NFGENMSG.size or end > len(buf):
        return None
    table = _attr_table(buf, start + _NFGENMSG.size, end)
    hdr = table.get(NFQA_PACKET_HDR)
    if hdr is None or hdr[1] - hdr[0] < _NFQ_PACKET_HDR.size:
        return None
    packet_id, hw_protocol, hook = _NFQ_PACKET_HDR.unpack_from(buf, hdr[0])
    span = table.get(NFQA_PAYLOAD)
    payload = bytes(buf[span[0]:span[1]]) if span else b""
    return QueuedPacket(
        packet_id=packet_id,
        hw_protocol=hw_protocol,
        hook=hook,
        payload=payload,
        indev=_be32(buf, table, NFQA_IFINDEX_INDEV),
        outdev=_be32(buf, table, NFQA_IFINDEX_OUTDEV),
        mark=_be32(buf, table, NFQA_MARK) or 0,
        orig_len=_be32(buf, table, NFQA_CAP_LEN),
    )


def parse_log_packet(buf, start: int, end: int, *, with_uid: bool = True) -> LoggedPacket | None:
    """Decode the payload (nfgenmsg + attributes) of an NFULNL_MSG_PACKET message."""
    if end - start < _NFGENMSG.size or end > len(buf):
        return None
    table = _attr_table(buf, start + _NFGENMSG.size, end)
    hdr = table.get(NFULA_PACKET_HDR)
    if hdr is None or hdr[1] - hdr[0] < _NFUL_PACKET_HDR.size:
        return None
    hw_protocol, hook = _NFUL_PACKET_HDR.unpack_from(buf, hdr[0])
    span = table.get(NFULA_PAYLOAD)
    payload = bytes(buf[span[0]:span[1]]) if span else b""
    prefix = ""
    span = table.get(NFULA_PREFIX)
    if span:
        prefix = bytes(buf[span[0]:span[1]]).split(b"\0", 1)[0].decode("utf-8", "replace")
    timestamp = None
    span = table.get(NFULA_TIMESTAMP)
    if span and span[1] - span[0] >= _TIMESTAMP.size:
        sec, usec = _TIMESTAMP.unpack_from(buf, span[0])
        timestamp = sec + usec / 1e6
    return LoggedPacket(
        prefix=prefix,
        hw_protocol=hw_protocol,
        hook=hook,
        payload=payload,
        indev=_be32(buf, table, NFULA_IFINDEX_INDEV),
        outdev=_be32(buf, table, NFULA_IFINDEX_OUTDEV),
        uid=_be32(buf, table, NFULA_UID) if with_uid else None,
        gid=_be32(buf, table, NFULA_GID) if with_uid else None,
        timestamp=timestamp,
    )


# --- the socket ----------------------------------------------------------------------------------


class _NfnlSocket:
    """A NETLINK_NETFILTER socket bound to one nfnetlink subsystem and one queue / group."""

    _subsys: int
    _packet_msg: int
    _config_msg: int
    _what: str  # "NFQUEUE queue 7" / "NFLOG group 5", for messages

    def __init__(self, res_id: int, *, rcvbuf: int, bufsize: int):
        if not 0 <= res_id <= 0xFFFF:
            raise NetlinkError(f"{self._what}: number must be 0 … 65535")
        self._res_id = res_id
        self.overruns = 0  # ENOBUFS seen: the kernel could not deliver some messages to us
        self.malformed = 0  # packet messages we could not decode (skipped)
        self.truncated = 0  # datagrams larger than our buffer (lost)
        self.errors = 0  # asynchronous NLMSG_ERRORs (e.g. verdict for an unknown id)
        self.last_error = 0
        self._seq = 0
        self._pending: deque = deque()
        self._closed = False
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                       NETLINK_NETFILTER)
        except OSError as e:
            raise NetlinkError(f"{self._what}: cannot open a netfilter netlink socket: {e.strerror}",
                               e.errno) from None
        try:
            self._sock.bind((0, 0))
            self._set_rcvbuf(rcvbuf)
            try:  # errors carry only the header of our request, not all of it
                self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            except OSError:
                pass
            self._buf = bytearray(max(_MIN_BUFSIZE, bufsize))
            self._poll = select.poll()
            self._poll.register(self._sock.fileno(), select.POLLIN)
        except OSError as e:
            self._sock.close()
            raise NetlinkError(f"{self._what}: netlink socket setup failed: {e.strerror}", e.errno) from None
        except BaseException:
            self._sock.close()
            raise

    def _set_rcvbuf(self, size: int) -> None:
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        except PermissionError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def rcvbuf(self) -> int:
        """The receive buffer the kernel actually granted (it doubles the requested value)."""
        return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    # -- requests with acknowledgement

    def _config(self, family: int, attrs: bytes, action: str, res_id: int | None = None) -> None:
        """Send one config message with NLM_F_ACK and wait for its NLMSG_ERROR; raise on error."""
        self._seq += 1
        seq = self._seq
        msg = nfnl_msg_pack(self._subsys, self._config_msg, family,
                            self._res_id if res_id is None else res_id, attrs,
                            seq=seq, flags=NLM_F_REQUEST | NLM_F_ACK)
        self._send(msg, action)
        err = self._wait_ack(seq, action)
        if err:
            raise self._config_error(action, err)

    def _config_error(self, action: str, err: int) -> NetlinkError:
        what = self._what
        if action == "bind" and err in (errno.EBUSY, errno.EPERM):
            # EPERM: bound by another socket (or no CAP_NET_ADMIN); EBUSY: bound by this one
            return NetlinkError(f"{what} is already bound by another process or socket "
                                f"(or CAP_NET_ADMIN is missing): {os.strerror(err)}", err)
        if err == errno.EPERM:
            return NetlinkError(f"{what}: {action}: permission denied (needs CAP_NET_ADMIN in this network namespace)", err)
        return NetlinkError(f"{what}: {action} failed: {os.strerror(err)}", err)

    def _send(self, msg: bytes, action: str) -> None:
        try:
            self._sock.sendto(msg, (0, 0))
        except OSError as e:
            raise NetlinkError(f"{self._what}: {action}: netlink send failed: {e.strerror}", e.errno) from None

    def _wait_ack(self, seq: int, action: str) -> int:
        deadline = time.monotonic() + _ACK_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._poll.poll(max(1, int(remaining * 1000))):
                raise NetlinkError(f"{self._what}: {action}: no answer from the kernel in {_ACK_TIMEOUT:g} s",
                                   errno.ETIMEDOUT)
            n = self._recv()
            if n is None:
                continue
            found = None
            for msg_type, _flags, mseq, s, e in iter_nlmsgs(self._buf, n):
                if msg_type == NLMSG_ERROR and mseq == seq and e - s >= _NLMSGERR.size:
                    found = -_NLMSGERR.unpack_from(self._buf, s)[0]
                else:
                    self._handle(msg_type, mseq, s, e, self._pending)
            if found is not None:
                return found

    # -- receiving

    def _recv(self) -> int | None:
        """One datagram into self._buf without blocking; None when nothing (or an overrun)."""
        try:
            n = self._sock.recv_into(self._buf, len(self._buf), socket.MSG_DONTWAIT | socket.MSG_TRUNC)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                self.overruns += 1
                return None
            raise NetlinkError(f"{self._what}: netlink receive failed: {e.strerror}", e.errno) from None
        if n > len(self._buf):
            self.truncated += 1
            return None
        return n

    def _handle(self, msg_type: int, seq: int, start: int, end: int, out) -> None:
        if msg_type == (self._subsys << 8) | self._packet_msg:
            pkt = self._parse(start, end)
            if pkt is None:
                self.malformed += 1
            else:
                out.append(pkt)
        elif msg_type == NLMSG_ERROR:
            if end - start >= _NLMSGERR.size:
                err = -_NLMSGERR.unpack_from(self._buf, start)[0]
                if err:
                    self.errors += 1
                    self.last_error = err
        # NLMSG_NOOP, NLMSG_DONE, NLMSG_OVERRUN, anything else: ignored

    def _parse(self, start: int, end: int):
        raise NotImplementedError

    def receive(self, timeout: float | None = None, max_msgs: int = 256) -> list:
        """Wait up to `timeout` seconds (None: forever) for something readable, then drain what
        is readable without blocking, up to `max_msgs` packets. An overrun (ENOBUFS) is counted
        in `overruns`, never raised. May return an empty list."""
        if self._closed:
            raise NetlinkError(f"{self._what}: receive on a closed socket")
        out: list = []
        while self._pending and len(out) < max_msgs:
            out.append(self._pending.popleft())
        if len(out) >= max_msgs:
            return out
        if not out:
            if timeout is None:
                wait_ms = -1
            else:
                wait_ms = max(0, int(timeout * 1000 + 0.999))
            if not self._poll.poll(wait_ms):
                return out
        overruns_here = 0
        while len(out) < max_msgs:
            before = self.overruns
            n = self._recv()
            if n is None:
                if self.overruns != before:
                    overruns_here += 1
                    if overruns_here < _MAX_ENOBUFS_PER_RECEIVE:
                        continue  # the error is reported once; queued messages follow
                break
            batch: list = []
            for msg_type, _flags, seq, s, e in iter_nlmsgs(self._buf, n):
                self._handle(msg_type, seq, s, e, batch)
            room = max_msgs - len(out)
            out.extend(batch[:room])
            self._pending.extend(batch[room:])
        return out

    # -- teardown

    def _unbind_attrs(self) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._config(socket.AF_UNSPEC, self._unbind_attrs(), "unbind")
        except NetlinkError:
            pass  # closing the socket releases the queue / group anyway
        finally:
            self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NfQueue(_NfnlSocket):
    """Packets queued by an NFQUEUE rule: receive them, give each a verdict.

    Until a packet gets its verdict the kernel holds it; with `fail_open` the kernel accepts
    packets instead of dropping them when the queue is full or our socket buffer overflows.
    """

    _subsys = NFNL_SUBSYS_QUEUE
    _packet_msg = NFQNL_MSG_PACKET
    _config_msg = NFQNL_MSG_CONFIG

    def __init__(self, queue_num: int, *, copy_range: int = 0xFFFF, rcvbuf: int = 8 << 20,
                 queue_maxlen: int = 4096, fail_open: bool = True, uid_gid: bool = False):
        self.queue_num = queue_num
        self._what = f"NFQUEUE queue {queue_num}"
        super().__init__(queue_num, rcvbuf=rcvbuf, bufsize=copy_range + 8192)
        try:
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
            self._config(socket.AF_UNSPEC, nla_pack(NFQA_CFG_QUEUE_MAXLEN, _BE32.pack(queue_maxlen)),
                         "set queue length")
            mask = NFQA_CFG_F_FAIL_OPEN | (NFQA_CFG_F_UID_GID if uid_gid else 0)
            flags = (NFQA_CFG_F_FAIL_OPEN if fail_open else 0) | (NFQA_CFG_F_UID_GID if uid_gid else 0)
            self._config(socket.AF_UNSPEC,
                         nla_pack(NFQA_CFG_FLAGS, _BE32.pack(flags)) + nla_pack(NFQA_CFG_MASK, _BE32.pack(mask)),
                         "set flags")
        except BaseException:
            self._sock.close()
            self._closed = True
            raise

    @staticmethod
    def _cmd(cmd: int) -> bytes:
        # struct nfqnl_msg_config_cmd { u8 command; u8 _pad; be16 pf; }  (pf unused since 3.8)
        return nla_pack(NFQA_CFG_CMD, struct.pack("!BxH", cmd, 0))

    def _unbind_attrs(self) -> bytes:
        return self._cmd(NFQNL_CFG_CMD_UNBIND)

    def _config_error(self, action: str, err: int) -> NetlinkError:
        q = self.queue_num
        if action == "set flags" and err in (errno.EOPNOTSUPP, errno.EINVAL):
            return NetlinkError(f"NFQUEUE queue {q}: this kernel does not support the requested queue "
                                f"flags (fail-open/uid-gid): {os.strerror(err)}", err)
        return super()._config_error(action, err)

    def _parse(self, start: int, end: int):
        return parse_queue_packet(self._buf, start, end)

    def receive(self, timeout: float | None = None, max_msgs: int = 256) -> list[QueuedPacket]:
        return super().receive(timeout, max_msgs)

    def _send_verdict(self, msg_type: int, packet_id: int, accept: bool) -> None:
        if self._closed:
            raise NetlinkError(f"{self._what}: verdict on a closed socket")
        verdict = NF_ACCEPT if accept else NF_DROP
        attrs = nla_pack(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id & 0xFFFFFFFF))
        self._send(nfnl_msg_pack(NFNL_SUBSYS_QUEUE, msg_type, socket.AF_UNSPEC, self._res_id, attrs),
                   "verdict")

    def verdict(self, packet_id: int, accept: bool = True) -> None:
        """Accept or drop one queued packet. Errors (unknown id) come back asynchronously and are
        counted in `errors` by receive()."""
        self._send_verdict(NFQNL_MSG_VERDICT, packet_id, accept)

    def verdict_batch(self, max_id: int, accept: bool = True) -> None:
        """Accept or drop every queued packet whose id is <= max_id."""
        self._send_verdict(NFQNL_MSG_VERDICT_BATCH, max_id, accept)


class NfLog(_NfnlSocket):
    """Copies of packets sent to an NFLOG group (`nft ... log group N`, `-j NFLOG`).

    Configured for latency: the kernel flushes after every packet (qthresh 1) and at the latest
    after `flush_timeout_cs` hundredths of a second (the kernel defaults, 100 packets / 1 s,
    would hold a lone packet back for a second).

    `bind_pf` sends the historical PF_UNBIND/PF_BIND for AF_INET and AF_INET6. Off by default:
    on current kernels `log group` rules do not need it, and PF_UNBIND/PF_BIND *replace the
    namespace's default logger* (net.netfilter.nf_log.<pf>, e.g. nf_log_ipv4 → nfnetlink_log),
    which silently redirects other users' default logging. Only very old kernels need it.
    """

    _subsys = NFNL_SUBSYS_ULOG
    _packet_msg = NFULNL_MSG_PACKET
    _config_msg = NFULNL_MSG_CONFIG

    def __init__(self, group: int, *, copy_range: int = 0xFFFF, rcvbuf: int = 8 << 20,
                 flags_uid: bool = True, qthresh: int = 1, flush_timeout_cs: int = 1,
                 bind_pf: bool = False):
        self.group = group
        self._what = f"NFLOG group {group}"
        self._with_uid = flags_uid
        super().__init__(group, rcvbuf=rcvbuf, bufsize=copy_range + 8192)
        try:
            if bind_pf:
                for family in (socket.AF_INET, socket.AF_INET6):
                    self._config(family, self._cmd(NFULNL_CFG_CMD_PF_UNBIND), "family unbind", res_id=0)
                    self._config(family, self._cmd(NFULNL_CFG_CMD_PF_BIND), "family bind", res_id=0)
            self._config(socket.AF_UNSPEC, self._cmd(NFULNL_CFG_CMD_BIND), "bind")
            self._config(socket.AF_UNSPEC,
                         nla_pack(NFULA_CFG_MODE, struct.pack("!IBx", copy_range, NFULNL_COPY_PACKET)),
                         "set copy mode")
            self._config(socket.AF_UNSPEC, nla_pack(NFULA_CFG_QTHRESH, _BE32.pack(max(1, qthresh))),
                         "set queue threshold")
            self._config(socket.AF_UNSPEC, nla_pack(NFULA_CFG_TIMEOUT, _BE32.pack(max(0, flush_timeout_cs))),
                         "set flush timeout")
        except BaseException:
            self._sock.close()
            self._closed = True
            raise

    @staticmethod
    def _cmd(cmd: int) -> bytes:
        # struct nfulnl_msg_config_cmd { u8 command; }
        return nla_pack(NFULA_CFG_CMD, struct.pack("!B", cmd))

    def _unbind_attrs(self) -> bytes:
        return self._cmd(NFULNL_CFG_CMD_UNBIND)


    def _parse(self, start: int, end: int):
        return parse_log_packet(self._buf, start, end, with_uid=self._with_uid)

    def receive(self, timeout: float | None = None, max_msgs: int = 256) -> list[LoggedPacket]:
        return super().receive(timeout, max_msgs)
