"""The one netlink core: framing, and a socket that asks the kernel and waits for its answer.

Every netlink client of ramfw uses it: nf_tables reads and element writes (nftnl.py), ipset
(backends/iptables/ipset.py), and the NFQUEUE and NFLOG subscriptions (nfqueue.py, nflog.py).
All speak nfnetlink (NETLINK_NETFILTER), so the nfgenmsg header is part of the framing here.

Wire format (include/uapi/linux/netlink.h, netfilter/nfnetlink.h):

    nlmsghdr   u32 len, u16 type, u16 flags, u32 seq, u32 pid      host byte order
    nfgenmsg   u8 family, u8 version (NFNETLINK_V0), be16 res_id   res_id = queue / group / subsys
    nlattr     u16 len, u16 type, payload, padding to 4 bytes      host byte order header;
                                                                   netfilter payloads are
                                                                   big-endian

Decoding never raises on hostile input: a truncated message or attribute ends the walk, unknown
attributes are skipped. Every wait for the kernel's answer has a timeout and fails with one line
naming the operation: a kernel that never answers must not hang a thread.

Sockets are created in the calling thread's network namespace: wrap the constructor in
`netns.entered(name)` to talk to another one; the socket stays bound to that namespace.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time
from collections import deque

from ramfw.errors import BackendError

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300

NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = 0xFFFF & ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)

NFNETLINK_V0 = 0
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11

DEFAULT_TIMEOUT = 5.0  # seconds without a word from the kernel before a request fails

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("!BBH")
_NLAHDR = struct.Struct("=HH")
_NLMSGERR = struct.Struct("=i")
_BE16 = struct.Struct("!H")
_BE32 = struct.Struct("!I")
_BE64 = struct.Struct("!Q")

NFGENMSG_SIZE = _NFGENMSG.size
_MAX_LOSSES_PER_RECEIVE = 8


class NetlinkError(BackendError):
    """A netlink request failed or went unanswered; str() is one line naming the operation."""

    def __init__(self, message: str, err: int | None = None):
        super().__init__(message)
        self.errno = err


# --- framing (pure) -------------------------------------------------------------------------


def _align4(n: int) -> int:
    return (n + 3) & ~3


def nla_pack(attr_type: int, data: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = _NLAHDR.size + len(data)
    return _NLAHDR.pack(length, attr_type) + data + b"\0" * (_align4(length) - length)


def nla_nested(attr_type: int, attrs: bytes) -> bytes:
    """An attribute holding attributes."""
    return nla_pack(attr_type | NLA_F_NESTED, attrs)


def nla_be32(attr_type: int, value: int) -> bytes:
    return nla_pack(attr_type, _BE32.pack(value))


def nla_be64(attr_type: int, value: int) -> bytes:
    return nla_pack(attr_type, _BE64.pack(value))


def nla_str(attr_type: int, text: str) -> bytes:
    """A NUL-terminated string attribute."""
    return nla_pack(attr_type, text.encode() + b"\0")


def nfnl_msg_pack(subsys: int, msg: int, family: int, res_id: int, attrs: bytes, *, seq: int = 0,
                  flags: int = NLM_F_REQUEST) -> bytes:
    """One nfnetlink message: nlmsghdr, nfgenmsg, attributes."""
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


def attr_table(buf, start: int = 0, end: int | None = None) -> dict[int, tuple[int, int]]:
    """attribute type -> (data_start, data_end) of its first occurrence in buf[start:end]."""
    table: dict[int, tuple[int, int]] = {}
    for attr_type, s, e in iter_nlattrs(buf, start, len(buf) if end is None else end):
        table.setdefault(attr_type, (s, e))
    return table


def attr_be16(buf, table: dict, attr_type: int) -> int | None:
    span = table.get(attr_type)
    return _BE16.unpack_from(buf, span[0])[0] if span and span[1] - span[0] >= 2 else None


def attr_be32(buf, table: dict, attr_type: int) -> int | None:
    span = table.get(attr_type)
    return _BE32.unpack_from(buf, span[0])[0] if span and span[1] - span[0] >= 4 else None


def attr_be64(buf, table: dict, attr_type: int) -> int | None:
    span = table.get(attr_type)
    return _BE64.unpack_from(buf, span[0])[0] if span and span[1] - span[0] >= 8 else None


def attr_str(buf, table: dict, attr_type: int) -> str:
    """A string attribute up to its first NUL; "" when absent."""
    span = table.get(attr_type)
    if span is None:
        return ""
    return bytes(buf[span[0]:span[1]]).split(b"\0", 1)[0].decode("utf-8", "replace")


def error_code(buf, start: int, end: int) -> int:
    """The positive errno of an NLMSG_ERROR (0: an acknowledgement) or NLMSG_DONE payload; a
    payload too short to hold one is a protocol error."""
    if end - start < _NLMSGERR.size:
        return errno.EPROTO
    return -_NLMSGERR.unpack_from(buf, start)[0]


# --- the socket -------------------------------------------------------------------------------


class NetlinkSocket:
    """One NETLINK_NETFILTER socket: requests with their acknowledgement, dumps, nfnetlink batches
    (request/dump/transaction, one at a time: a lock, so any thread may ask), and messages nobody
    asked for (receive(): the packets of an NFQUEUE/NFLOG subscription).

    Subscriptions set `message_type` and override `decode`; a packet that arrives while a
    request waits for its answer is kept for the next receive(). `lossy` sockets (subscriptions)
    count a receive buffer overrun and go on; on a request socket an overrun means a lost
    answer, and the request fails at once instead of waiting for its timeout.

    `sock` injects an already-open datagram socket (unit tests use one end of a socketpair).
    """

    what = "netlink"  # names the socket in every error: "NFQUEUE queue 7", "ipset"
    message_type: int | None = None  # (subsys << 8) | msg of the messages decode() turns into items

    def __init__(self, what: str | None = None, *, rcvbuf: int | None = None, bufsize: int = 1 << 20,
                 timeout: float = DEFAULT_TIMEOUT, lossy: bool = False, sock: socket.socket | None = None):
        if what is not None:
            self.what = what
        self.timeout = timeout
        self.lossy = lossy
        self.overruns = 0  # ENOBUFS seen: the kernel could not deliver some messages to us
        self.truncated = 0  # datagrams larger than our buffer (lost)
        self.malformed = 0  # subscription messages decode() could not read (skipped)
        self.errors = 0  # NLMSG_ERRORs that answer no pending request (a verdict for an unknown id)
        self.last_error = 0
        self._seq = 0
        self._lock = threading.Lock()
        self._pending: deque = deque()
        self._closed = False
        self._buf = bytearray(bufsize)
        self._sock = sock if sock is not None else self._open(rcvbuf)
        try:
            self._poll = select.poll()
            self._poll.register(self._sock.fileno(), select.POLLIN)
        except BaseException:
            self._sock.close()
            raise

    def _open(self, rcvbuf: int | None) -> socket.socket:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        except OSError as e:
            raise NetlinkError(f"{self.what}: cannot open a netfilter netlink socket: {e.strerror}", e.errno) from None
        try:
            sock.bind((0, 0))
            if rcvbuf:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
                except PermissionError:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            try:  # errors carry only the header of our request, not all of it
                sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            except OSError:
                pass
        except OSError as e:
            sock.close()
            raise NetlinkError(f"{self.what}: netlink socket setup failed: {e.strerror}", e.errno) from None
        return sock

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def rcvbuf(self) -> int:
        """The receive buffer the kernel actually granted (it doubles the requested value)."""
        return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    # -- asking

    def request(self, subsys: int, msg: int, family: int, attrs: bytes, action: str, *, res_id: int = 0,
                dump: bool = False, flags: int = 0) -> list[bytes]:
        """Send one request and wait for all of its answer: the replies and the acknowledgement,
        or a dump's replies up to NLMSG_DONE. Returns each reply's attributes (after nfgenmsg);
        raises NetlinkError (via explain()) for an error, a lost answer or a timeout."""
        with self._lock:
            seq = self._next_seq()
            flags |= NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
            self.send(nfnl_msg_pack(subsys, msg, family, res_id, attrs, seq=seq, flags=flags), action)
            return self._await({seq}, action)

    def transaction(self, subsys: int, family: int, messages: list[tuple[int, int, bytes]], action: str) -> None:
        """An nfnetlink batch, all or nothing: messages are (msg type, extra flags, attributes).
        Waits for every message's acknowledgement; the first error aborts the batch in the
        kernel (later messages get no answer) and is raised."""
        with self._lock:
            parts = [nfnl_msg_pack(0, NFNL_MSG_BATCH_BEGIN, socket.AF_UNSPEC, subsys, b"", seq=self._next_seq())]
            seqs = set()
            for msg, flags, attrs in messages:
                seq = self._next_seq()
                seqs.add(seq)
                parts.append(nfnl_msg_pack(subsys, msg, family, 0, attrs, seq=seq,
                                           flags=NLM_F_REQUEST | NLM_F_ACK | flags))
            parts.append(nfnl_msg_pack(0, NFNL_MSG_BATCH_END, socket.AF_UNSPEC, subsys, b"", seq=self._next_seq()))
            self.send(b"".join(parts), action)
            self._await(seqs, action)

    def send(self, data: bytes, action: str) -> None:
        """One datagram to the kernel (no answer awaited: verdicts)."""
        try:
            self._sock.send(data)
        except OSError as e:
            raise NetlinkError(f"{self.what}: {action}: netlink send failed: {e.strerror or e}", e.errno) from None

    def explain(self, action: str, err: int) -> NetlinkError:
        """The error raised when the kernel refuses `action` with errno `err` (subclasses word
        the errors of their own protocol)."""
        return NetlinkError(f"{self.what}: {action} failed: {os.strerror(err)}", err)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def _await(self, seqs: set[int], action: str) -> list[bytes]:
        """Read until every sequence number in seqs is answered (an NLMSG_ERROR, or a dump's
        NLMSG_DONE); messages for other sequence numbers go to _unsolicited()."""
        replies: list[bytes] = []
        deadline = time.monotonic() + self.timeout
        while seqs:
            n = self._recv(action)
            if n is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NetlinkError(f"{self.what}: {action}: no answer from the kernel in {self.timeout:g} s",
                                       errno.ETIMEDOUT)
                self._poll.poll(max(1, int(remaining * 1000 + 0.999)))
                continue
            failed = 0
            for msg_type, _flags, seq, s, e in iter_nlmsgs(self._buf, n):
                if seq not in seqs:
                    self._unsolicited(msg_type, s, e)
                    continue
                deadline = time.monotonic() + self.timeout  # the kernel is answering: a big dump is not a hang
                if msg_type in (NLMSG_ERROR, NLMSG_DONE):
                    seqs.discard(seq)
                    code = error_code(self._buf, s, e) if msg_type == NLMSG_ERROR or e > s else 0
                    failed = failed or code
                elif msg_type not in (NLMSG_NOOP, NLMSG_OVERRUN):
                    replies.append(bytes(self._buf[s + _NFGENMSG.size:e]))
            if failed:
                raise self.explain(action, failed)
        return replies

    # -- receiving

    def _recv(self, action: str) -> int | None:
        """One datagram into the buffer without blocking; None when there is none, or when a
        lossy socket lost some (counted)."""
        try:
            n = self._sock.recv_into(self._buf, len(self._buf), socket.MSG_DONTWAIT | socket.MSG_TRUNC)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as e:
            if e.errno == errno.ENOBUFS and self.lossy:
                self.overruns += 1
                return None
            if e.errno == errno.ENOBUFS:
                raise NetlinkError(f"{self.what}: {action}: answer lost: the receive buffer overflowed", e.errno) from None
            raise NetlinkError(f"{self.what}: {action}: netlink receive failed: {e.strerror}", e.errno) from None
        if n > len(self._buf):
            self.truncated += 1
            if not self.lossy:
                raise NetlinkError(f"{self.what}: {action}: answer lost: a {n}-byte message does not fit "
                                   f"the {len(self._buf)}-byte buffer", errno.EMSGSIZE)
            return None
        return n

    def _unsolicited(self, msg_type: int, start: int, end: int) -> None:
        """A message that answers no pending request: a subscription's packet (decoded and kept
        for receive()), an asynchronous error, or a late answer to a request that timed out."""
        if msg_type == self.message_type:
            item = self.decode(self._buf, start, end)
            if item is None:
                self.malformed += 1
            else:
                self._pending.append(item)
        elif msg_type == NLMSG_ERROR:
            code = error_code(self._buf, start, end)
            if code:
                self.errors += 1
                self.last_error = code
        # NLMSG_NOOP, NLMSG_DONE, NLMSG_OVERRUN, stale replies: ignored

    def decode(self, buf, start: int, end: int):
        """The item one `message_type` message carries (payload span given), or None if it is
        malformed."""
        return None

    def receive(self, timeout: float | None = None, max_msgs: int = 256) -> list:
        """Wait up to `timeout` seconds (None: until something arrives) for a message, then drain
        what is readable without blocking, up to `max_msgs` decoded items. An overrun (ENOBUFS)
        is counted in `overruns`, never raised. May return an empty list."""
        if self._closed:
            raise NetlinkError(f"{self.what}: receive on a closed socket")
        if not self._pending:
            wait_ms = -1 if timeout is None else max(0, int(timeout * 1000 + 0.999))
            if not self._poll.poll(wait_ms):
                return []
        losses_here = 0
        while len(self._pending) < max_msgs:
            before = self.overruns + self.truncated
            n = self._recv("receive")
            if n is None:
                if self.overruns + self.truncated != before:
                    losses_here += 1
                    if losses_here < _MAX_LOSSES_PER_RECEIVE:
                        continue  # an overrun is reported once, a datagram lost alone: what follows is readable
                break
            for msg_type, _flags, _seq, s, e in iter_nlmsgs(self._buf, n):
                self._unsolicited(msg_type, s, e)
        pending = self._pending
        return [pending.popleft() for _ in range(min(max_msgs, len(pending)))]

    # -- teardown

    def _release(self) -> None:
        """Undo what the socket set up in the kernel before it closes (subscriptions unbind)."""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._release()
        except NetlinkError:
            pass  # closing the socket releases the queue / group anyway
        finally:
            self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
