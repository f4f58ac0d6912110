"""Fakes for unit tests of the daemon's logic without root or a kernel: a clock tests move by
hand, a backend that records what would reach the kernel, the conntrack cut, and the snooper's
netlink sockets (a queue and two logs that hand out prepared packets).

The fakes keep the contracts of what they replace (a refused apply leaves the previous sets, an
element batch for a set that does not exist is refused like the kernel refuses it), so a test
that passes against them says something about the real thing.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

from ramfw.backends.base import Backend, KernelState, Probe

from ramfw.policy.load import parse_policy  # noqa: F401  (re-exported for the unit tests)
from ramfw.dns.resolver import Resolution
from ramfw.errors import BackendError


class Clock:
    """A monotonic clock that moves only when a test says so (thread-safe)."""

    def __init__(self, t: float = 1000.0):
        self.t = t
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.t

    def advance(self, dt: float) -> None:
        with self.lock:
            self.t += dt


class FakeBackend(Backend):
    """Records what would reach the kernel; sets are name -> {ip: timeout}.

    fail_next_apply / fail_adds make the next apply (or every element batch) raise BackendError,
    as a kernel that refuses a transaction does; the sets then stay as they were."""

    name = "fake"

    def __init__(self):
        super().__init__(None)
        self.features = {"queue": True}
        self.sets: dict[str, dict[str, int]] = {}
        self.applied = []
        self.batches: list[dict[str, list]] = []
        self.fail_next_apply = False
        self.fail_adds = False
        self.lock = threading.Lock()  # the kernel is atomic; a dict is not

    @classmethod
    def probe(cls, netns_name):
        return Probe(True, "fake")

    def queue_mechanism(self) -> str:
        return "the fake backend's queue"  # snoop mode stays "queue" across reloads

    def render(self, desired):
        return ""

    def apply(self, desired):
        if self.fail_next_apply:
            self.fail_next_apply = False
            raise BackendError("fake: refused")
        with self.lock:
            self.sets = {name: {e.ip: e.timeout for e in elems} for name, elems in desired.sets.items()}
            self.applied.append(desired)

    def add_elements(self, elements):
        if self.fail_adds:
            raise BackendError("fake: element batch refused")
        with self.lock:
            for name in elements:
                if name not in self.sets:
                    raise BackendError(f"fake: no set {name}")
            for name, elems in elements.items():
                for e in elems:
                    self.sets[name][e.ip] = e.timeout
            self.batches.append({name: list(elems) for name, elems in elements.items()})

    def remove_elements(self, elements):
        with self.lock:
            for name, ips in elements.items():
                for ip in ips:
                    self.sets.get(name, {}).pop(ip, None)

    def read_state(self, with_elements=True):
        with self.lock:
            return KernelState(True, "fake", sets={k: dict(v) for k, v in self.sets.items()})

    def check(self, desired):
        return []

    def destroy(self):
        return True


class ConntrackRecorder:
    """Stands in for kernel.conntrack.cut_connections: records each set of destinations a
    commit asked to cut (an empty set too: "cut nothing" is an answer worth checking)."""

    def __init__(self):
        self.calls: list[set[str]] = []

    def __call__(self, netns_name, ips) -> int:
        self.calls.append(set(ips))
        return len(ips)

    @property
    def last(self) -> set[str]:
        assert self.calls, "no commit asked conntrack for anything"
        return self.calls[-1]


class TableResolver:
    """Stands in for dns.resolver.Resolver: answers[name] is a Resolution, or an error string.
    Names not in the table do not exist (NXDOMAIN: no answers, no error)."""

    answers: dict[str, object] = {}
    asked: list[str] = []

    def __init__(self, netns_name, servers, timeout=2.0, workers=8):
        self.servers = servers

    def resolve_all(self, names):
        out = []
        for name in names:
            TableResolver.asked.append(name)
            entry = TableResolver.answers.get(name)
            if entry is None:
                out.append(Resolution(name, missing=True))
            elif isinstance(entry, str):
                out.append(Resolution(name, error=entry))
            else:
                out.append(entry)
        return out


# ---- the snooper's netlink sockets ---------------------------------------------------------------


@dataclass
class Packet:
    """What NfQueue/NfLog.receive() return: the IP packet and, for the queue, its id."""

    payload: bytes
    packet_id: int = 0


class _Readable:
    """A real descriptor for the snooper's selector: a socketpair kept readable while packets
    wait, so select() returns at once and the loop never waits on a timer."""

    def __init__(self):
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self.overruns = 0
        self.waiting: list[Packet] = []

    def fileno(self) -> int:
        return self._r.fileno()

    def _signal(self) -> None:
        if self.waiting:
            try:
                self._w.send(b"x")
            except BlockingIOError:
                pass
        else:
            try:
                while self._r.recv(4096):
                    pass
            except BlockingIOError:
                pass

    def push(self, *packets: Packet) -> None:
        self.waiting.extend(packets)
        self._signal()

    def receive(self, timeout=0) -> list[Packet]:
        out, self.waiting = self.waiting, []
        self._signal()
        return out

    def close(self) -> None:
        self._r.close()
        self._w.close()


class FakeLog(_Readable):
    """An NfLog: receive() hands out the packets pushed so far. `on_receive`, when set, is
    called before each receive (a test uses it to script what arrives between passes)."""

    def __init__(self):
        super().__init__()
        self.on_receive = None
        self.receives = 0

    def receive(self, timeout=0) -> list[Packet]:
        self.receives += 1
        if self.on_receive is not None:
            self.on_receive(self)
        return super().receive(timeout)


class FakeQueue(FakeLog):
    """An NfQueue: packets pushed get increasing ids; verdicts are recorded per id
    (a batch verdict covers every id up to and including the one given)."""

    def __init__(self):
        super().__init__()
        self._next_id = 1
        self.verdicts: dict[int, bool] = {}
        self.issued: list[int] = []

    def push(self, *payloads: bytes) -> None:  # type: ignore[override]
        packets = []
        for payload in payloads:
            packets.append(Packet(payload, self._next_id))
            self.issued.append(self._next_id)
            self._next_id += 1
        super().push(*packets)

    def verdict(self, packet_id: int, accept: bool) -> None:
        assert packet_id not in self.verdicts, f"packet {packet_id} given a second verdict"
        self.verdicts[packet_id] = accept

    def verdict_batch(self, max_id: int, accept: bool) -> None:
        for pid in self.issued:
            if pid <= max_id and pid not in self.verdicts:
                self.verdicts[pid] = accept

