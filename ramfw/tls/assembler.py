"""Hold a connection's first payload until its ClientHello can be judged. PURE (clock injected).

The inspector hands every queued TCP packet of an undecided connection to `Assembler.feed`.
Packets without payload need no judgement. Payload-carrying packets are *held* (their verdict
is withheld, so none of their bytes leave) and their bytes put in stream order from the first
payload byte; once the stream holds a whole ClientHello, or proves it is not one, or a bound is
hit, the connection is *ready* and every held packet gets the same verdict at once.

Bounds, each ending the wait with what is there (a verdict on "no server name"):
  MAX_BYTES    stream bytes per connection (a real ClientHello is 200 B … ~2 KB; 16 KiB of
               handshake is the parser's own ceiling)
  MAX_WAIT     seconds since the connection's first payload packet
  MAX_HELD     packets held per connection (a hello in 1-byte segments is 16 K packets: the
               byte bound ends it first for real hellos; this stops a flood of empty retransmits)
  MAX_FLOWS    connections waiting at once; a new one beyond it evicts (and decides) the oldest

After a verdict the connection is remembered for a while (MAX_DECIDED, DECIDED_TTL): packets
that were already queued when the kernel learnt the verdict get the same verdict, not a second
inspection.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from .clienthello import Hello, parse

MAX_BYTES = 16 * 1024 + 64
MAX_WAIT = 2.0
MAX_HELD = 512
MAX_FLOWS = 4096
MAX_DECIDED = 16384
DECIDED_TTL = 30.0
SEQ_MOD = 1 << 32

FlowKey = tuple  # (src ip text, sport, dst ip text, dport)


@dataclass
class Flow:
    key: FlowKey
    started: float
    base: int  # TCP sequence number of the first stream byte we hold
    data: bytearray = field(default_factory=bytearray)
    pending: dict[int, bytes] = field(default_factory=dict)  # out-of-order: offset -> bytes
    held: list = field(default_factory=list)  # opaque packet handles, in arrival order
    known_start: bool = False  # base came from the SYN (else: from the first payload seen)


@dataclass(frozen=True)
class Ready:
    """A connection whose held packets can now be released, and on what evidence."""

    key: FlowKey
    hello: Hello  # status "complete"/"not_tls"/"malformed", or "incomplete" when a bound hit
    held: tuple  # the packet handles to give the verdict to
    bound: str = ""  # "bytes", "time", "packets", "flows" when a bound ended the wait


def _offset(seq: int, base: int) -> int:
    """Stream offset of `seq` from `base`, modulo 2^32, as a signed distance."""
    d = (seq - base) % SEQ_MOD
    return d - SEQ_MOD if d >= SEQ_MOD // 2 else d


class Assembler:
    def __init__(self, clock: Callable[[], float] = time.monotonic, max_bytes: int = MAX_BYTES,
                 max_wait: float = MAX_WAIT, max_held: int = MAX_HELD, max_flows: int = MAX_FLOWS):
        self.clock = clock
        self.max_bytes, self.max_wait, self.max_held, self.max_flows = max_bytes, max_wait, max_held, max_flows
        self._flows: OrderedDict[FlowKey, Flow] = OrderedDict()  # oldest first
        self._decided: OrderedDict[FlowKey, tuple[object, float]] = OrderedDict()
        self._starts: OrderedDict[FlowKey, int] = OrderedDict()  # where each stream begins (SYN + 1)

    def __len__(self) -> int:
        return len(self._flows)

    # ---- verdicts remembered ------------------------------------------------------------------

    def decided(self, key: FlowKey):
        """The verdict given to `key` recently, or None."""
        found = self._decided.get(key)
        if found is None:
            return None
        verdict, when = found
        if self.clock() - when > DECIDED_TTL:
            del self._decided[key]
            return None
        return verdict

    def remember(self, key: FlowKey, verdict) -> None:
        self._decided.pop(key, None)
        self._decided[key] = (verdict, self.clock())
        while len(self._decided) > MAX_DECIDED:
            self._decided.popitem(last=False)

    # ---- feeding ------------------------------------------------------------------------------

    def note_syn(self, key: FlowKey, seq: int) -> None:
        """The connection's SYN: its stream starts at seq + 1. Without it, the first payload
        seen is taken as the start, and an earlier one arriving later moves the start back."""
        self._starts.pop(key, None)
        self._starts[key] = (seq + 1) % SEQ_MOD
        while len(self._starts) > MAX_DECIDED:
            self._starts.popitem(last=False)

    def feed(self, key: FlowKey, seq: int, payload: bytes, handle) -> list[Ready]:
        """Hold one payload-carrying packet. Returns the connections that became ready (this
        one, and an evicted oldest one when MAX_FLOWS was reached)."""
        out: list[Ready] = []
        flow = self._flows.get(key)
        if flow is None:
            if len(self._flows) >= self.max_flows:
                old_key, old = self._flows.popitem(last=False)
                out.append(self._ready(old, "flows"))
            start = self._starts.pop(key, None)
            flow = Flow(key, self.clock(), seq if start is None else start)
            flow.known_start = start is not None
            self._flows[key] = flow
        flow.held.append(handle)
        self._place(flow, seq, payload)
        hello = parse(flow.data)
        if hello.status != "incomplete":
            del self._flows[key]
            out.append(Ready(key, hello, tuple(flow.held)))
        elif len(flow.data) >= self.max_bytes:
            out.append(self._ready(self._flows.pop(key), "bytes"))
        elif len(flow.held) >= self.max_held:
            out.append(self._ready(self._flows.pop(key), "packets"))
        return out

    def _place(self, flow: Flow, seq: int, payload: bytes) -> None:
        off = _offset(seq, flow.base)
        if off < 0 and not flow.known_start and -off < self.max_bytes:
            # earlier bytes than the first we saw (reordered on the way): the stream starts
            # here; what we hold moves to where it belongs
            shift = -off
            moved = {o + shift: b for o, b in flow.pending.items()}
            if flow.data:
                moved[shift] = bytes(flow.data)
            flow.pending, flow.data, flow.base, off = moved, bytearray(), seq, 0
        if off < 0:  # starts before the stream: a retransmit reaching back; keep the new part
            payload = payload[-off:]
            off = 0
        have = len(flow.data)
        room = self.max_bytes - have
        if off > have:  # a gap: keep it aside (bounded) until the hole is filled
            if off - have < self.max_bytes and len(flow.pending) < 64:
                flow.pending.setdefault(off, payload[:max(0, self.max_bytes - off)])
            return
        new = payload[have - off:][:room]
        flow.data += new
        while flow.pending:  # pull in what the new bytes made contiguous
            progressed = False
            for p_off in sorted(flow.pending):
                if p_off <= len(flow.data):
                    chunk = flow.pending.pop(p_off)
                    extra = chunk[len(flow.data) - p_off:][:self.max_bytes - len(flow.data)]
                    flow.data += extra
                    progressed = True
                    break
            if not progressed:
                break

    def _ready(self, flow: Flow, bound: str) -> Ready:
        hello = parse(flow.data)
        return Ready(flow.key, hello, tuple(flow.held), bound if hello.status == "incomplete" else "")

    def expire(self) -> list[Ready]:
        """Connections that waited MAX_WAIT: decided on what they sent."""
        now = self.clock()
        out = []
        while self._flows:
            key, flow = next(iter(self._flows.items()))
            if now - flow.started < self.max_wait:
                break
            del self._flows[key]
            out.append(self._ready(flow, "time"))
        return out

    def next_deadline(self) -> float | None:
        if not self._flows:
            return None
        return next(iter(self._flows.values())).started + self.max_wait

    def drain(self) -> list[Ready]:
        """Every waiting connection, as it is (shutting down)."""
        out = [self._ready(f, "time") for f in self._flows.values()]
        self._flows.clear()
        return out
