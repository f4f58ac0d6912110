"""DNS snooping: learn every address a client in scope is told, and program it before the client
can use it.

Queries to the trusted servers are copied to us (NFLOG); answers from them are held in a queue
(NFQUEUE, `queue` mode) until their addresses are in the kernel sets, or copied (NFLOG, `log`
mode) and programmed right after. An answer counts only when it comes from a trusted server, for
a question we saw asked on the same flow with the same ID, name and type; its addresses are
credited to the name the client asked for, through the CNAME chain inside the answer. What the
policy makes of the name is the controller's business: it hands us `credit`.

The snooper never imports a backend and never raises on a packet: malformed input is counted
and the packet released.
"""

from __future__ import annotations

import ipaddress
import logging
import selectors
import sys
import threading
import time
from collections import OrderedDict
from typing import Callable

from ramfw.kernel import netns
from ramfw.dns.stream import TcpDnsReassembler
from ramfw.dns.wire import MalformedPacket, Question, parse_message, parse_query, resolve_chain
from ramfw.common.logs import RepeatedLog
from ramfw.kernel.nflog import NfLog
from ramfw.kernel.netlink import NetlinkError
from ramfw.kernel.nfqueue import NfQueue
from ramfw.kernel.packet import PROTO_UDP, TCP_FIN, TCP_RST, ip_text, parse_packet

log = logging.getLogger(__name__)

RECENT_LIMIT = 8192
QUERY_BUDGET = 0.005  # seconds of query reading per pass before held answers are looked at
HOLD_SECONDS = 1.0  # longest an answer waits for its question to be read (then: unsolicited)

# credit(queried name, CNAME chain, [(ip, ttl)]) -> (elements programmed, outcome word)
Credit = Callable[[str, list[str], list[tuple[object, int]]], tuple[int, str]]

COUNTERS = (
    "answers_seen",  # answer packets (or TCP messages) examined
    "answers_used",  # answers whose addresses were credited to an allowed (or blocked) name
    "ips_programmed",  # set elements added or refreshed from snooped answers
    "queries_seen",
    "malformed",  # packets or messages that do not parse
    "untrusted",  # answers from a server that is not trusted
    "unsolicited",  # answers to no outstanding question
    "mismatched",  # answers whose question differs from the one asked
    "not_listed",  # answers for names the policy does not list (or, allowlist, blocks)
    "blocked_chain",  # allowed names whose CNAME chain passes through a blocked name
    "tcp_fallbacks",  # TCP answers that could not be reassembled: resolved actively instead
    "answers_dropped",  # batches of held answers dropped because programming them failed
    "queue_overruns",
    "log_overruns",
    "errors",
)


class QuestionTracker:
    """Outstanding questions: (client ip, client port, server ip, id) -> question, until answered
    or timed out. Bounded: the oldest are forgotten first."""

    def __init__(self, timeout: float = 10.0, limit: int = 65536, clock=time.monotonic):
        self.timeout = timeout
        self.limit = limit
        self.clock = clock
        self._pending: OrderedDict[tuple, tuple[str, int, float]] = OrderedDict()

    def asked(self, key: tuple, question: Question) -> None:
        self._pending.pop(key, None)
        self._pending[key] = (question.name, question.qtype, self.clock() + self.timeout)
        while len(self._pending) > self.limit:
            self._pending.popitem(last=False)

    def take(self, key: tuple, question: Question) -> str:
        """'ok' (and forget it), 'unsolicited' or 'mismatched'."""
        pending = self._pending.get(key)
        if pending is None or pending[2] < self.clock():
            return "unsolicited"
        name, qtype, _ = pending
        if name != question.name or qtype != question.qtype:
            return "mismatched"
        del self._pending[key]
        return "ok"

    def names_for_flow(self, client: str, port: int, server: str) -> list[str]:
        return [q[0] for k, q in self._pending.items() if k[:3] == (client, port, server)]

    def gc(self) -> None:
        now = self.clock()
        for key in [k for k, v in self._pending.items() if v[2] < now]:
            del self._pending[key]

    def __len__(self) -> int:
        return len(self._pending)


class Snooper:
    def __init__(
        self,
        netns_name: str | None,
        trusted: tuple[str, ...],
        credit: Credit,
        mode: str,
        queue_num: int,
        answer_group: int,
        query_group: int,
        fallback: Callable[[str], None] | None = None,
        flush: Callable[[], None] | None = None,
        clock=time.monotonic,
    ):
        if mode not in ("queue", "log"):
            raise ValueError(f"snoop mode {mode!r}")
        self.netns_name = netns_name
        self.credit = credit
        self.mode = mode
        self.queue_num, self.answer_group, self.query_group = queue_num, answer_group, query_group
        self.fallback = fallback
        self.flush = flush or (lambda: None)  # programs what credit() deferred, in one transaction
        self.tracker = QuestionTracker(timeout=5.0, limit=8192, clock=clock)
        self.answer_streams = TcpDnsReassembler()
        self.query_streams = TcpDnsReassembler()
        self.counters = dict.fromkeys(COUNTERS, 0)
        # ip -> the name a client asked for, whatever the policy thinks of it: lets a blocked
        # attempt be reported with the host name the client was after
        self.recent: OrderedDict[str, str] = OrderedDict()
        self.set_trusted(trusted)
        self.queue: NfQueue | None = None
        self.beat: Callable[[], None] = lambda: None  # the supervising Worker's heartbeat
        self._complaints = RepeatedLog(log)
        self.answer_log: NfLog | None = None
        self.query_log: NfLog | None = None

    def set_trusted(self, servers) -> None:
        self.trusted = frozenset(str(ipaddress.ip_address(s)) for s in servers)

    # ---- sockets ----------------------------------------------------------------------------

    def open(self) -> None:
        """Bind the netlink sockets inside the namespace (they stay bound to it)."""
        with netns.entered(self.netns_name):
            self.query_log = NfLog(self.query_group)
            if self.mode == "queue":
                # fail_open=False: when the queue is full an answer is dropped (the client's
                # resolver asks again), never released before its addresses are programmed
                self.queue = NfQueue(self.queue_num, fail_open=False)
            else:
                self.answer_log = NfLog(self.answer_group)

    def close(self) -> None:
        for sock in (self.queue, self.answer_log, self.query_log):
            if sock is not None:
                sock.close()
        self.queue = self.answer_log = self.query_log = None

    # ---- packets ----------------------------------------------------------------------------

    def on_query(self, payload: bytes) -> None:
        pkt = parse_packet(payload)
        if pkt is None:
            self.counters["malformed"] += 1
            return
        server = ip_text(pkt.dst)
        if server not in self.trusted or pkt.dport != 53:
            return
        # interned: thousands of outstanding questions share a handful of addresses
        server, client = sys.intern(server), sys.intern(ip_text(pkt.src))
        if pkt.proto == PROTO_UDP:
            raws = [pkt.payload]
        else:
            flow = (client, pkt.sport, server, 53)
            raws = self.query_streams.feed(flow, pkt.tcp_seq, pkt.payload)
            if pkt.tcp_flags & (TCP_FIN | TCP_RST):
                self.query_streams.close(flow)
        for raw in raws:
            try:
                query = parse_query(raw)  # header and question only: bounded work per query
            except MalformedPacket:
                self.counters["malformed"] += 1
                continue
            if query is None:
                continue
            self.counters["queries_seen"] += 1
            self.tracker.asked((client, pkt.sport, server, query[0]), query[1])

    def on_answer(self, payload: bytes, final: bool = True) -> str:
        """Examine one answer packet and credit what it teaches. Never raises. Returns "retry"
        (only when not `final`) for a UDP answer whose question has not been read yet: the
        caller holds it and tries again once more queries are read."""
        try:
            return self._on_answer(payload, final)
        except Exception:  # a bug must not stop DNS: count it, log once per kind, release
            self.counters["errors"] += 1
            log.exception("unexpected error while snooping a DNS answer; packet released")
            return "error"

    def _on_answer(self, payload: bytes, final: bool) -> str:
        pkt = parse_packet(payload)
        if pkt is None:
            self.counters["malformed"] += 1
            return "malformed"
        server, client = ip_text(pkt.src), ip_text(pkt.dst)
        if server not in self.trusted or pkt.sport != 53:
            self.counters["untrusted"] += 1
            return "untrusted"
        if pkt.proto == PROTO_UDP:
            return self._on_message(pkt.payload, client, pkt.dport, server, final)
        flow = (server, 53, client, pkt.dport)
        gaps = self.answer_streams.gaps + self.answer_streams.overflows
        raws = self.answer_streams.feed(flow, pkt.tcp_seq, pkt.payload)
        if self.answer_streams.gaps + self.answer_streams.overflows != gaps:
            self._fall_back(client, pkt.dport, server)
        if pkt.tcp_flags & (TCP_FIN | TCP_RST):
            self.answer_streams.close(flow)
        for raw in raws:  # a TCP segment is fed once: never retried
            self._on_message(raw, client, pkt.dport, server, True)
        return "ok"

    def _on_message(self, raw: bytes, client: str, port: int, server: str, final: bool = True) -> str:
        try:
            msg = parse_message(raw)
        except MalformedPacket:
            self.counters["answers_seen"] += 1
            self.counters["malformed"] += 1
            return "malformed"
        if not msg.is_response or msg.opcode != 0 or msg.qdcount != 1 or msg.question is None:
            self.counters["answers_seen"] += 1
            self.counters["mismatched"] += 1
            return "mismatched"
        outcome = self.tracker.take((client, port, server, msg.id), msg.question)
        if outcome == "unsolicited" and not final:
            return "retry"
        self.counters["answers_seen"] += 1
        if outcome != "ok":
            self.counters[outcome] += 1
            return outcome
        if msg.rcode != 0:
            return "rcode"
        chain, addresses = resolve_chain(msg)
        if not addresses:
            return "empty"
        addresses = [(ip_text(ip), ttl) for ip, ttl in addresses]
        self._remember(addresses, msg.question.name)
        programmed, outcome = self.credit(msg.question.name, chain, addresses)
        if outcome == "ok":
            self.counters["answers_used"] += 1
            self.counters["ips_programmed"] += programmed
        else:
            self.counters[outcome] += 1
        return outcome

    def _remember(self, addresses, name: str) -> None:
        for ip, _ttl in addresses:
            self.recent.pop(ip, None)
            self.recent[ip] = name
        while len(self.recent) > RECENT_LIMIT:
            self.recent.popitem(last=False)

    def _fall_back(self, client: str, port: int, server: str) -> None:
        self.counters["tcp_fallbacks"] += 1
        for name in self.tracker.names_for_flow(client, port, server):
            log.info("DNS over TCP answer for %s could not be reassembled; resolving it actively", name)
            if self.fallback is not None:
                self.fallback(name)

    # ---- the loop ---------------------------------------------------------------------------

    def _drain_queries(self, budget: float) -> bool:
        """Read logged queries for at most `budget` seconds; True when none is left. A flood
        of queries must not keep answers waiting: what is not read now is read next pass."""
        assert self.query_log is not None
        deadline = time.monotonic() + budget
        while True:
            packets = self.query_log.receive(timeout=0)
            for p in packets:
                self.on_query(p.payload)
            if not packets:
                return True
            if time.monotonic() >= deadline:
                return False

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set. A query's log message is queued in the kernel before the
        query leaves, so it is on the socket before its answer can exist; when a flood of
        queries is still being read, an answer whose question has not been read yet is held
        (at most HOLD_SECONDS) rather than released unprogrammed."""
        sel = selectors.DefaultSelector()
        for sock in (self.query_log, self.queue, self.answer_log):
            if sock is not None:
                sel.register(sock.fileno(), selectors.EVENT_READ)
        last_gc = time.monotonic()
        held: list = []  # (queued packet, held since): answers waiting for their question
        try:
            while not stop.is_set():
                self.beat()
                queued: list = []
                try:
                    sel.select(timeout=0.01 if held else 0.25)
                    # Take the answers first, then read the queries: every query whose answer is in
                    # hand was logged before that answer existed, so it is on the socket by now.
                    queued = self.queue.receive(timeout=0) if self.queue is not None else []
                    logged = self.answer_log.receive(timeout=0) if self.answer_log is not None else []
                    all_read = self._drain_queries(QUERY_BUDGET)
                    now = time.monotonic()
                    release, still_held = [], []
                    for p, since in held + [(p, now) for p in queued]:
                        final = all_read or now - since >= HOLD_SECONDS
                        if self.on_answer(p.payload, final) == "retry":
                            still_held.append((p, since))
                        else:
                            release.append(p)
                    for p in logged:
                        self.on_answer(p.payload)
                    programmed = self._flush() if (release or logged) else True
                    held = still_held
                    if release:
                        # every released answer is examined and its addresses programmed; if
                        # programming failed the answers are dropped: the client asks again
                        if held:
                            for p in release:
                                self.queue.verdict(p.packet_id, programmed)
                        else:  # ids are increasing; the batch verdict covers <= last id
                            self.queue.verdict_batch(max(p.packet_id for p in release), programmed)
                    self._sync_overruns()
                    if time.monotonic() - last_gc > 5:
                        self.tracker.gc()
                        last_gc = time.monotonic()
                except NetlinkError as exc:
                    self.counters["errors"] += 1
                    self._complaints.error("netlink", "DNS snooping: %s; continuing", exc)
                    held = self._release_all(held, queued)
                except Exception as exc:  # the loop must outlive any one bad batch
                    self.counters["errors"] += 1
                    self._complaints.exception("loop", "DNS snooping loop error (%s); continuing", exc)
                    held = self._release_all(held, queued)
        finally:
            sel.close()

    def _release_all(self, held: list, queued: list) -> list:
        """After an error: never leave answers held (their addresses may be missing; the next
        answer brings them)."""
        ids = [p.packet_id for p, _ in held] + [p.packet_id for p in queued]
        if ids and self.queue is not None:
            try:
                self.queue.verdict_batch(max(ids), True)
            except Exception:
                pass
        return []

    def _flush(self) -> bool:
        try:
            self.flush()
            return True
        except Exception as exc:  # the held answers are dropped; the repair restores the sets
            self.counters["errors"] += 1
            self.counters["answers_dropped"] += 1
            self._complaints.error("flush", "programming snooped addresses failed (%s); their answers were dropped, "
                                   "clients will ask again", exc)
            return False

    def _sync_overruns(self) -> None:
        if self.queue is not None:
            self.counters["queue_overruns"] = self.queue.overruns
        overruns = sum(s.overruns for s in (self.answer_log, self.query_log) if s is not None)
        self.counters["log_overruns"] = overruns
