"""The `sni` thread: judge the first payload of each TLS connection to an allowed address.

The kernel queues (NFQUEUE plan.SNI_QUEUE_NUM, see backends/sni_rules.py) the packets of a
connection to a TLS port of an allowed address until the connection carries a verdict in its
conntrack mark. Here each packet is answered with NF_REPEAT and the verdict in the packet mark
(bits plan.SNI_MASK; the packet's other mark bits are kept): the hook runs again, a rule moves
the verdict to the connection (so its later packets never come here), and a refused one is
reset at once. NF_REPEAT plus a mark works on every kernel with NFQUEUE; setting the conntrack
mark straight from the verdict (NFQA_CT) needs CONFIG_NETFILTER_NETLINK_GLUE_CT, which this
project's development kernel lacks.

  * no payload (the kernel keeps these back already where it can tell, see
    backends/sni_rules.py; IP options, IPv6 extension headers, a window update): LOOKED,
    released at once, nothing decided; a SYN also says where the stream starts;
  * payload: held (no verdict, so none of its bytes leave) until the ClientHello is whole
    (tls/assembler.py: bounded in bytes, time, packets and connections), then every held
    packet gets the connection's verdict together, in the order they came;
  * the verdict: tls/binding.py's rule, through `decide` (the controller binds it to the
    enforcer's policy and DNS cache); under "audit" everything passes and a mismatch is only
    recorded; under "enforce" a mismatch (or no server name) is refused;
  * a packet that does not parse is counted and let go (LOOKED).

Owned by this thread alone: the assembler, the queue socket, the counters (others read single
keys). `record` (the audit log's) locks itself.
"""

from __future__ import annotations

import datetime
import logging
import selectors
import struct
import threading
import time
from typing import Callable

from ramfw.kernel import netns
from ramfw.kernel.netlink import NetlinkError, nfnl_msg_pack, nla_pack
from ramfw.kernel.nfqueue import NFNL_SUBSYS_QUEUE, NFQA_MARK, NFQA_VERDICT_HDR, NFQNL_MSG_VERDICT, NfQueue
from ramfw.kernel.packet import PROTO_TCP, TCP_SYN, ip_text, parse_packet
from ramfw.common.logs import RepeatedLog
from ramfw.plan import SNI_LOOKED, SNI_MASK, SNI_PASS, SNI_REFUSE
from ramfw.tls.assembler import Assembler, Ready
from ramfw.tls.binding import ALLOW, Decision

log = logging.getLogger(__name__)

NF_REPEAT = 4
HOOK_SCOPE = {3: "output", 2: "forward"}  # NF_INET_LOCAL_OUT, NF_INET_FORWARD
SNI_MISMATCH = "sni_mismatch"
COUNTERS = (
    "packets",  # packets queued to us
    "connections",  # connections judged
    "passed",  # judged and allowed (server name bound to the address)
    "mismatched",  # server name not allowed, or not a name of the address
    "no_sni",  # no server name, ECH, not TLS, malformed, or a bound reached first
    "refused",  # connections reset (enforce)
    "audited",  # mismatches let through (audit)
    "late",  # packets that arrived after their connection's verdict (same verdict given)
    "malformed",  # packets we could not parse (let go)
    "errors",
    "queue_overruns",
)

Decide = Callable[[object, str, str], Decision]  # (hello, destination ip, bound) -> Decision


class SniQueue(NfQueue):
    """An NfQueue whose verdicts repeat the hook with a new packet mark."""

    def repeat(self, verdicts: list[tuple[int, int]]) -> None:
        """NF_REPEAT each (packet id, mark): one datagram, one netlink message per packet (the
        kernel walks every message of a datagram)."""
        if not verdicts:
            return
        msgs = b"".join(
            nfnl_msg_pack(NFNL_SUBSYS_QUEUE, NFQNL_MSG_VERDICT, 0, self.res_id,
                          nla_pack(NFQA_VERDICT_HDR, struct.pack("!II", NF_REPEAT, pid & 0xFFFFFFFF))
                          + nla_pack(NFQA_MARK, struct.pack("!I", mark & 0xFFFFFFFF)))
            for pid, mark in verdicts)
        self.send(msgs, "verdict")


def _with_bits(mark: int, bits: int) -> int:
    return (mark & ~SNI_MASK & 0xFFFFFFFF) | bits


class SniInspector:
    def __init__(self, netns_name: str | None, queue_num: int, decide: Decide, mode: Callable[[], str],
                 record: Callable[[list[dict]], None], policy_digest: Callable[[], str] = lambda: "",
                 clock=time.monotonic):
        self.netns_name = netns_name
        self.queue_num = queue_num
        self.decide = decide
        self.mode = mode  # "audit" | "enforce", read at every verdict (a reload may change it)
        self.record = record
        self.policy_digest = policy_digest
        self.assembler = Assembler(clock=clock)
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.queue: SniQueue | None = None
        self.beat: Callable[[], None] = lambda: None
        self._complaints = RepeatedLog(log)
        self._out: list[tuple[int, int]] = []  # verdicts to send at the end of this pass
        self._events: list[dict] = []

    def open(self) -> None:
        with netns.entered(self.netns_name):
            # fail_open=False: a full queue drops (TCP retransmits), never lets a hello past
            self.queue = SniQueue(self.queue_num, fail_open=False)

    def close(self) -> None:
        if self.queue is not None:
            self.queue.close()
            self.queue = None

    # ---- packets (pure apart from the verdict list) -------------------------------------------

    def on_packet(self, packet_id: int, payload: bytes, mark: int, hook: int) -> None:
        self.counters["packets"] += 1
        pkt = parse_packet(payload)
        if pkt is None:  # not a whole TCP/UDP packet: counted and let go
            self.counters["malformed"] += 1
            self._out.append((packet_id, _with_bits(mark, SNI_LOOKED)))
            return
        if pkt.proto != PROTO_TCP:
            self._out.append((packet_id, _with_bits(mark, SNI_LOOKED)))
            return
        key = (ip_text(pkt.src), pkt.sport, ip_text(pkt.dst), pkt.dport)
        known = self.assembler.decided(key)
        if known is not None:
            self.counters["late"] += 1
            self._out.append((packet_id, _with_bits(mark, known)))
            return
        seq = pkt.tcp_seq
        if pkt.tcp_flags & TCP_SYN:  # where the stream starts: reordered pieces fall in place
            self.assembler.note_syn(key, seq)
            seq = (seq + 1) & 0xFFFFFFFF  # TCP Fast Open: the SYN's own data starts after it
        if not pkt.payload:
            self._out.append((packet_id, _with_bits(mark, SNI_LOOKED)))
            return
        for ready in self.assembler.feed(key, seq, pkt.payload, (packet_id, mark, hook)):
            self._judge(ready)

    def _judge(self, ready: Ready) -> None:
        key = ready.key
        try:
            decision = self.decide(ready.hello, key[2], ready.bound)
        except Exception as exc:  # a bug must not hold connections: judge "no server name"
            self.counters["errors"] += 1
            self._complaints.exception("decide", "SNI decision failed (%s); treated as no server name", exc)
            decision = Decision("no_sni", None, f"internal error: {type(exc).__name__}")
        enforce = self.mode() == "enforce"
        self.counters["connections"] += 1
        if decision.verdict == ALLOW:
            self.counters["passed"] += 1
            bits = SNI_PASS
        else:
            self.counters["mismatched" if decision.verdict == "mismatch" else "no_sni"] += 1
            self.counters["refused" if enforce else "audited"] += 1
            bits = SNI_REFUSE if enforce else SNI_PASS
            hook = ready.held[0][2] if ready.held else 3
            self._events.append(self._event(key, decision, hook, refused=enforce))
        self.assembler.remember(key, bits)
        for packet_id, mark, _hook in ready.held:
            self._out.append((packet_id, _with_bits(mark, bits)))

    def _event(self, key, decision: Decision, hook: int, refused: bool) -> dict:
        return {
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "action": SNI_MISMATCH,
            "scope": HOOK_SCOPE.get(hook, "output"),
            "uid": None,
            "src": key[0], "dst": key[2], "proto": "tcp", "dport": key[3],
            "hostname": decision.sni,
            "sni": decision.sni,
            "names": list(decision.credited),
            "reason": decision.reason,
            "refused": refused,
            "policy": self.policy_digest(),
        }

    def take(self) -> tuple[list[tuple[int, int]], list[dict]]:
        """The verdicts and events this pass produced (and forget them)."""
        out, events = self._out, self._events
        self._out, self._events = [], []
        return out, events

    # ---- the loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        assert self.queue is not None
        sel = selectors.DefaultSelector()
        sel.register(self.queue.fileno(), selectors.EVENT_READ)
        try:
            while not stop.is_set():
                self.beat()
                deadline = self.assembler.next_deadline()
                wait = 0.25 if deadline is None else max(0.0, min(0.25, deadline - time.monotonic()))
                try:
                    sel.select(timeout=wait)
                    for p in self.queue.receive(timeout=0):
                        self.on_packet(p.packet_id, p.payload, p.mark, p.hook)
                    for ready in self.assembler.expire():
                        self._judge(ready)
                    self._flush()
                except NetlinkError as exc:
                    self.counters["errors"] += 1
                    self._complaints.error("netlink", "SNI inspection: %s; continuing", exc)
                except Exception as exc:
                    self.counters["errors"] += 1
                    self._complaints.exception("loop", "SNI inspection loop error (%s); continuing", exc)
            for ready in self.assembler.drain():  # leaving: nothing stays held
                self._judge(ready)
            self._flush()
        finally:
            sel.close()

    def _flush(self) -> None:
        verdicts, events = self.take()
        if verdicts:
            self.queue.repeat(verdicts)
        self.counters["queue_overruns"] = self.queue.overruns
        if events:
            try:
                self.record(events)
            except OSError as exc:  # the verdicts are given; only the record is lost
                self._complaints.error("record", "cannot record SNI mismatches: %s", exc.strerror or exc)


class SniService:
    """The sni thread's life inside a controller: started when the enforced plan has SNI
    binding's rules (which feed its queue), stopped when a reload turns binding off or the
    controller stops. The controller calls sync() after every apply it commits."""

    def __init__(self, netns_name: str | None):
        self.netns_name = netns_name
        self.inspector: SniInspector | None = None
        self.thread = None  # a LoopThread while binding is on

    @property
    def counters(self) -> dict:
        return dict(self.inspector.counters) if self.inspector is not None else {}

    def sync(self, enforcer, record: Callable[[list[dict]], None]) -> None:
        from ramfw.daemon.sni_decide import decider
        from ramfw.daemon.threads import LoopThread

        if enforcer.desired.sni is None:
            self.stop()
            return
        if self.thread is not None:
            return  # mode and ports are read from the enforcer at every verdict / apply
        self.inspector = SniInspector(
            self.netns_name, enforcer.desired.sni.queue_num, decider(enforcer),
            lambda: enforcer.desired.sni.mode if enforcer.desired.sni is not None else "audit",
            record, lambda: enforcer.policy.digest,
        )
        self.thread = LoopThread("sni", self.inspector).start()

    def stop(self) -> None:
        if self.thread is not None:
            self.thread.stop()
            self.thread = None
        self.inspector = None
