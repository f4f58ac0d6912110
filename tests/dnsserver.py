"""An in-process, programmable DNS server for tests (dnspython + stdlib).

It runs in threads of the test process; its UDP and TCP sockets are created inside a network
namespace (normally the testbed's "internet" namespace) and bound to the given addresses, port 53.

    srv = DnsServer(tb.inet, ["198.51.100.54", "2001:db8:100::54"])
    srv.zone.update({"a.allowed.test": ["198.51.100.100"]})
    srv.cnames["alias.allowed.test"] = "edge.cdn.test"
    srv.start()
    ...
    srv.handler = lambda req: answer(req, [("a.allowed.test", "A", "198.51.100.101")], ttl=1)
    ...
    srv.stop()

A handler takes a `Request` and returns what to send back:
  - None: no answer;
  - a dns.message.Message: sent (its id is whatever the handler set; `answer()` copies the
    request's);
  - bytes: sent as they are (raw wire, for malformed or hand-made messages);
  - a list of the above: each sent in order.
Without a handler (handler = None) the built-in zone answers: `zone` (name -> addresses, or a
callable returning addresses), `cnames` (alias -> target), `ttl`. Unknown names: NXDOMAIN; a known
name asked for a type it lacks: NOERROR with no data.

TCP: DNS messages are length-prefixed; `tcp_split = True` writes the 2-byte prefix and then the
message in `tcp_chunk`-byte pieces as separate send() calls with TCP_NODELAY and `tcp_pause`
seconds between them, so an answer crosses the wire as several segments.

Every request is recorded in `requests` (the last 10,000) and `wait_request()` waits for one that
matches a predicate.
"""

from __future__ import annotations

import collections
import ipaddress
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from ramfw.kernel import netns


@dataclass
class Request:
    transport: str  # "udp" or "tcp"
    client: str
    port: int
    server: str  # the local address the request arrived at
    message: dns.message.Message
    wire: bytes
    at: float = field(default_factory=time.monotonic)

    @property
    def qname(self) -> str:
        return self.message.question[0].name.to_text(omit_final_dot=True).lower() if self.message.question else ""

    @property
    def qtype(self) -> str:
        return dns.rdatatype.to_text(self.message.question[0].rdtype) if self.message.question else ""

    @property
    def id(self) -> int:
        return self.message.id



def _rrset(owner: str, rdtype: str, value: str, ttl: int) -> dns.rrset.RRset:
    return dns.rrset.from_text(owner.rstrip(".") + ".", ttl, "IN", rdtype, value if rdtype != "CNAME" else value.rstrip(".") + ".")


def answer(
    request: Request | dns.message.Message,
    records: Iterable[tuple[str, str, str]],
    ttl: int = 300,
    question: tuple[str, str] | None = None,
    rcode: int = dns.rcode.NOERROR,
) -> dns.message.Message:
    """A response to `request` (same id, RD/RA like a recursive server) whose answer section holds
    `records` [(owner, "A"|"AAAA"|"CNAME", value)], in order, one rrset per record (records of the
    same owner and type are merged). `question` replaces the question section (name, type)."""
    query = request.message if isinstance(request, Request) else request
    resp = dns.message.make_response(query)
    resp.flags |= dns.flags.RA
    resp.set_rcode(rcode)
    if question is not None:
        qname, qtype = question
        resp.question = [dns.rrset.RRset(dns.name.from_text(qname), dns.rdataclass.IN, dns.rdatatype.from_text(qtype))]
    merged: dict[tuple[str, str], dns.rrset.RRset] = {}
    for owner, rdtype, value in records:
        key = (owner.lower().rstrip("."), rdtype.upper())
        rr = _rrset(owner, rdtype.upper(), value, ttl)
        if key in merged:
            merged[key].union_update(rr)
        else:
            merged[key] = rr
            resp.answer.append(rr)
    return resp


class DnsServer:
    def __init__(self, ns: str | None, addresses: list[str], port: int = 53, ttl: int = 300):
        self.ns = ns
        self.addresses = [str(ipaddress.ip_address(a)) for a in addresses]
        self.port = port
        self.ttl = ttl
        self.zone: dict[str, list[str] | Callable[[Request], list[str]]] = {}
        self.cnames: dict[str, str] = {}
        self.handler: Callable[[Request], object] | None = None
        self.tcp_split = False
        self.tcp_chunk = 7
        self.tcp_pause = 0.01
        self.requests: collections.deque[Request] = collections.deque(maxlen=10000)
        self.errors: list[str] = []  # handler exceptions (a test should assert this stays empty)
        self.udp: dict[str, socket.socket] = {}
        self._tcp_listen: dict[str, socket.socket] = {}
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._tcp_threads: list[threading.Thread] = []

    # ---- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> "DnsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "DnsServer":
        try:
            with netns.entered(self.ns):
                for addr in self.addresses:
                    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
                    u = socket.socket(fam, socket.SOCK_DGRAM)
                    self.udp[addr] = u
                    if fam == socket.AF_INET6:
                        u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                    u.bind((addr, self.port))
                    t = socket.socket(fam, socket.SOCK_STREAM)
                    self._tcp_listen[addr] = t
                    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if fam == socket.AF_INET6:
                        t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    t.bind((addr, self.port))
                    t.listen(128)
            self._wake_r, self._wake_w = socket.socketpair()
            self._thread = threading.Thread(target=self._serve, name="dnsserver", daemon=True)
            self._thread.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._tcp_threads:
            t.join(5)
        for s in [*self.udp.values(), *self._tcp_listen.values(), self._wake_r, self._wake_w]:
            if s is not None:
                s.close()
        self.udp.clear()
        self._tcp_listen.clear()
        self._wake_r = self._wake_w = None

    # ---- answering --------------------------------------------------------------------------

    def zone_answer(self, req: Request) -> dns.message.Message:
        """What the built-in zone says (follows CNAMEs inside the zone, like a recursive server)."""
        q = req.message.question[0]
        want = dns.rdatatype.to_text(q.rdtype)
        name = req.qname
        records: list[tuple[str, str, str]] = []
        seen = set()
        while name in self.cnames and name not in seen and want != "CNAME":
            seen.add(name)
            records.append((name, "CNAME", self.cnames[name]))
            name = self.cnames[name].lower().rstrip(".")
        ips = self.zone.get(name)
        if callable(ips):
            ips = ips(req)
        if ips is None and not records:
            return answer(req, [], ttl=self.ttl, rcode=dns.rcode.NXDOMAIN)
        for ip in ips or []:
            fam = "AAAA" if ":" in ip else "A"
            if fam == want:
                records.append((name, fam, ip))
        return answer(req, records, ttl=self.ttl)

    def _respond(self, req: Request) -> list[bytes]:
        with self._cond:
            self.requests.append(req)
            self._cond.notify_all()
        try:
            out = self.handler(req) if self.handler is not None else self.zone_answer(req)
        except Exception as exc:  # noqa: BLE001 - reported through self.errors
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return []
        if out is None:
            return []
        if not isinstance(out, list):
            out = [out]
        wires = []
        for item in out:
            if item is None:
                continue
            wires.append(item if isinstance(item, (bytes, bytearray)) else item.to_wire())
        return wires

    def wait_request(self, pred: Callable[[Request], bool], timeout: float = 5.0, after: int = 0) -> Request:
        """The first recorded request (from index `after` of those recorded so far) matching pred."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for req in list(self.requests)[after:]:
                    if pred(req):
                        return req
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no matching DNS request reached the server")
                self._cond.wait(left)

    # ---- the loops --------------------------------------------------------------------------

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        for addr, s in self.udp.items():
            sel.register(s, selectors.EVENT_READ, ("udp", addr))
        for addr, s in self._tcp_listen.items():
            sel.register(s, selectors.EVENT_READ, ("tcp", addr))
        sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.5):
                    kind, addr = key.data
                    if kind == "udp":
                        self._udp_one(key.fileobj, addr)
                    elif kind == "tcp":
                        try:
                            conn, peer = key.fileobj.accept()
                        except OSError:
                            continue
                        with self._lock:
                            self._conns.add(conn)
                        t = threading.Thread(target=self._tcp_conn, args=(conn, peer, addr), daemon=True)
                        self._tcp_threads = [x for x in self._tcp_threads if x.is_alive()] + [t]
                        t.start()
        finally:
            sel.close()

    def _udp_one(self, sock: socket.socket, addr: str) -> None:
        try:
            data, peer = sock.recvfrom(65535)
        except OSError:
            return
        try:
            msg = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return
        if msg.flags & dns.flags.QR or not msg.question:
            return
        for wire in self._respond(Request("udp", peer[0], peer[1], addr, msg, data)):
            try:
                sock.sendto(wire, peer[:2])
            except OSError as exc:
                self.errors.append(f"udp send: {exc}")

    def _tcp_conn(self, conn: socket.socket, peer, addr: str) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(10)
            while not self._stop.is_set():
                head = _recv_exact(conn, 2)
                if head is None:
                    return
                (size,) = struct.unpack("!H", head)
                data = _recv_exact(conn, size)
                if data is None:
                    return
                try:
                    msg = dns.message.from_wire(data)
                except dns.exception.DNSException:
                    return
                for wire in self._respond(Request("tcp", peer[0], peer[1], addr, msg, data)):
                    self._tcp_write(conn, wire)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _tcp_write(self, conn: socket.socket, wire: bytes) -> None:
        prefix = struct.pack("!H", len(wire))
        if not self.tcp_split:
            conn.sendall(prefix + wire)
            return
        conn.sendall(prefix)
        for i in range(0, len(wire), self.tcp_chunk):
            time.sleep(self.tcp_pause)
            conn.sendall(wire[i : i + self.tcp_chunk])


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
