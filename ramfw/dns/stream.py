"""Reassembly of DNS messages carried over TCP (two-byte length prefix, RFC 1035 4.2.2), from
the segments the snooper sees, for many flows at once and in bounded memory."""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable


class _Flow:
    __slots__ = ("next_seq", "buf", "broken")

    def __init__(self, seq: int):
        self.next_seq = seq
        self.buf = bytearray()
        self.broken = False  # lost sync: ignore the rest of this connection


class TcpDnsReassembler:
    """Reassemble length-prefixed DNS messages from TCP segments of many flows.

    A flow starts at the sequence number of the first data segment seen for it (a DNS server
    sends nothing before its first answer). Exact or partial retransmits of bytes already
    consumed are trimmed. A gap (a segment ahead of the next expected byte) means a message
    cannot be rebuilt and later ones can no longer be framed, so the flow's buffer is dropped
    and the flow is ignored until close(); the caller falls back to active resolution. Memory
    is bounded: a flow holding more than max_flow_bytes is likewise given up (counted in
    overflows), and beyond max_flows the least recently used flow is evicted.
    """

    def __init__(self, max_flow_bytes: int = 70 * 1024, max_flows: int = 1024):
        self.max_flow_bytes = max_flow_bytes
        self.max_flows = max_flows
        self._flows: OrderedDict[Hashable, _Flow] = OrderedDict()
        self.gaps = 0
        self.evicted = 0
        self.overflows = 0
        self.retransmits = 0

    def __len__(self) -> int:
        return len(self._flows)

    def feed(self, flow: Hashable, seq: int, payload: bytes) -> list[bytes]:
        """Add one segment's payload; return the messages it completes (no length prefix)."""
        if not payload:
            return []  # pure ACK/FIN: no data, and its seq says nothing new
        state = self._flow(flow, seq)
        if state.broken:
            return []
        data = self._in_order_part(state, seq, payload)
        if data is None:
            return []
        state.buf += data
        state.next_seq = (state.next_seq + len(data)) & 0xFFFFFFFF
        messages = _split_messages(state.buf)
        if len(state.buf) > self.max_flow_bytes or _pending_size(state.buf) > self.max_flow_bytes:
            self.overflows += 1
            self._give_up(state)
        return messages

    def close(self, flow: Hashable) -> None:
        """Forget a flow (FIN/RST seen); unknown flows are fine."""
        self._flows.pop(flow, None)

    def _flow(self, flow: Hashable, seq: int) -> _Flow:
        state = self._flows.get(flow)
        if state is not None:
            self._flows.move_to_end(flow)
            return state
        if len(self._flows) >= self.max_flows:
            self._flows.popitem(last=False)
            self.evicted += 1
        state = self._flows[flow] = _Flow(seq)
        return state

    def _in_order_part(self, state: _Flow, seq: int, payload: bytes) -> bytes | None:
        """The part of payload that starts at next_seq, or None if there is none."""
        ahead = (seq - state.next_seq) & 0xFFFFFFFF  # sequence numbers wrap at 2**32
        if ahead == 0:
            return payload
        if ahead < 0x80000000:
            self.gaps += 1
            self._give_up(state)
            return None
        behind = 0x100000000 - ahead
        self.retransmits += 1
        if behind >= len(payload):
            return None  # everything already consumed
        return payload[behind:]

    @staticmethod
    def _give_up(state: _Flow) -> None:
        state.buf = bytearray()
        state.broken = True


def _split_messages(buf: bytearray) -> list[bytes]:
    """Remove and return every complete length-prefixed message at the front of buf."""
    messages = []
    pos = 0
    while len(buf) - pos >= 2:
        size = (buf[pos] << 8) | buf[pos + 1]
        if len(buf) - pos - 2 < size:
            break
        messages.append(bytes(buf[pos + 2 : pos + 2 + size]))
        pos += 2 + size
    if pos:
        del buf[:pos]
    return messages


def _pending_size(buf: bytearray) -> int:
    """Bytes the incomplete message at the front of buf will need in total."""
    return 2 + ((buf[0] << 8) | buf[1]) if len(buf) >= 2 else len(buf)
