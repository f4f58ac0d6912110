"""The snooper's message handling, fed real DNS wire messages built with dnspython inside real
IP/UDP/TCP packets, through its own methods and its run loop over fake netlink sockets (no root,
no kernel): which answers count, what is credited, what is counted and released, and that an
answer is released only after its addresses were programmed."""

from __future__ import annotations

import threading

import dns.message
import dns.rrset
import pytest

from fakes import Clock, FakeLog, FakeQueue, Packet
from forge import tcp_packet, udp_packet
from ramfw.dns import snooper as snooper_mod
from ramfw.dns.snooper import Snooper
from ramfw.kernel.packet import TCP_FIN
from wait import wait_for

SERVER, SERVER6 = "198.51.100.53", "2001:db8:100::53"
CLIENT, CLIENT6 = "203.0.113.2", "2001:db8:113::2"
OTHER_SERVER = "198.51.100.99"


class Credits:
    """The controller's credit callback: records every call; answers "ok" for names ending in
    .reg.test, "not_listed" otherwise (the policy is the Enforcer's business, tested there)."""

    def __init__(self):
        self.calls: list[tuple[str, list[str], list]] = []
        self.raise_for: set[str] = set()

    def __call__(self, qname, chain, addresses):
        if qname in self.raise_for:
            raise RuntimeError("bug in credit")
        self.calls.append((qname, list(chain), list(addresses)))
        if qname.endswith(".reg.test"):
            return len(addresses), "ok"
        return 0, "not_listed"


@pytest.fixture
def credits():
    return Credits()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def snooper(credits, clock):
    return Snooper(None, (SERVER, SERVER6), credits, "queue", 0, 1, 2, clock=clock)


def query(name: str, rdtype: str = "A", ident: int = 4242) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    q.id = ident
    return q


def response(q: dns.message.Message, records: list[tuple[str, str, str]], ttl: int = 60, rcode=0) -> bytes:
    """records: (owner, type, value); e.g. a CNAME then the target's A record."""
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    for owner, rdtype, value in records:
        r.answer.append(dns.rrset.from_text(owner, ttl, "IN", rdtype, value))
    return r.to_wire()


def asked(q: dns.message.Message, client=CLIENT, server=SERVER, port=40000) -> bytes:
    return udp_packet(client, port, server, 53, q.to_wire())


def answered(wire: bytes, client=CLIENT, server=SERVER, port=40000, sport=53) -> bytes:
    return udp_packet(server, sport, client, port, wire)


# ---- which answers count -------------------------------------------------------------------------


def test_an_answer_to_a_tracked_question_is_credited_through_its_cname_chain(snooper, credits):
    q = query("www.reg.test")
    snooper.on_query(asked(q))
    wire = response(q, [("www.reg.test.", "CNAME", "edge.cdn.test."), ("edge.cdn.test.", "A", "198.51.100.10")], ttl=77)
    assert snooper.on_answer(answered(wire)) == "ok"
    assert credits.calls == [("www.reg.test", ["www.reg.test", "edge.cdn.test"], [("198.51.100.10", 77)])]
    assert snooper.counters["answers_used"] == 1 and snooper.counters["ips_programmed"] == 1
    assert snooper.recent["198.51.100.10"] == "www.reg.test"  # for audit events: the name asked for


def test_ipv6_transport_and_aaaa_answers(snooper, credits):
    q = query("v6.reg.test", "AAAA", ident=7)
    snooper.on_query(asked(q, CLIENT6, SERVER6))
    wire = response(q, [("v6.reg.test.", "AAAA", "2001:db8:100::10")])
    assert snooper.on_answer(answered(wire, CLIENT6, SERVER6)) == "ok"
    assert credits.calls[-1][2] == [("2001:db8:100::10", 60)]


def test_only_answers_from_trusted_servers_count(snooper, credits):
    q = query("www.reg.test")
    snooper.on_query(asked(q, server=OTHER_SERVER))  # a question to an untrusted server is not tracked
    assert len(snooper.tracker) == 0
    snooper.on_query(asked(q))
    wire = response(q, [("www.reg.test.", "A", "198.51.100.10")])
    assert snooper.on_answer(answered(wire, server=OTHER_SERVER)) == "untrusted"
    assert snooper.on_answer(answered(wire, sport=5353)) == "untrusted"  # trusted address, not port 53
    assert credits.calls == [] and snooper.counters["untrusted"] == 2
    assert snooper.on_answer(answered(wire)) == "ok"  # the question is still outstanding


@pytest.mark.parametrize("change, outcome", [
    ({"ident": 4243}, "unsolicited"),  # another ID
    ({"port": 40001}, "unsolicited"),  # another client port
    ({"client": "203.0.113.3"}, "unsolicited"),  # another client
    ({"name": "evil.reg.test"}, "mismatched"),  # the same flow and ID, another question
    ({"rdtype": "AAAA"}, "mismatched"),  # the same name, another type
])
def test_an_answer_must_match_an_outstanding_question(snooper, credits, change, outcome):
    snooper.on_query(asked(query("www.reg.test")))
    q = query(change.get("name", "www.reg.test"), change.get("rdtype", "A"), change.get("ident", 4242))
    rdtype, value = ("AAAA", "2001:db8:100::10") if change.get("rdtype") == "AAAA" else ("A", "198.51.100.10")
    wire = response(q, [(f"{q.question[0].name}", rdtype, value)])
    packet = answered(wire, client=change.get("client", CLIENT), port=change.get("port", 40000))
    assert snooper.on_answer(packet) == outcome
    assert credits.calls == [] and snooper.counters[outcome] == 1


def test_a_question_is_answered_once_and_forgotten_after_its_timeout(snooper, credits, clock):
    q = query("www.reg.test")
    wire = response(q, [("www.reg.test.", "A", "198.51.100.10")])
    snooper.on_query(asked(q))
    assert snooper.on_answer(answered(wire)) == "ok"
    assert snooper.on_answer(answered(wire)) == "unsolicited"  # a replayed answer teaches nothing
    snooper.on_query(asked(q))
    clock.advance(snooper.tracker.timeout + 0.1)
    assert snooper.on_answer(answered(wire)) == "unsolicited"
    snooper.tracker.gc()
    assert len(snooper.tracker) == 0
    assert len(credits.calls) == 1


def test_outcomes_the_credit_reports_are_counted(snooper, credits):
    q = query("docker.other.test")
    snooper.on_query(asked(q))
    assert snooper.on_answer(answered(response(q, [("docker.other.test.", "A", "198.51.100.11")]))) == "not_listed"
    assert snooper.counters["not_listed"] == 1 and snooper.counters["answers_used"] == 0
    # a name the client asked for is remembered whatever the policy thinks of it
    assert snooper.recent["198.51.100.11"] == "docker.other.test"


def test_error_answers_and_empty_answers_credit_nothing(snooper, credits):
    q = query("gone.reg.test")
    snooper.on_query(asked(q))
    assert snooper.on_answer(answered(response(q, [], rcode=3))) == "rcode"  # NXDOMAIN
    q2 = query("txt.reg.test", ident=9)
    snooper.on_query(asked(q2))
    assert snooper.on_answer(answered(response(q2, [("txt.reg.test.", "TXT", '"hi"')]))) == "empty"
    assert credits.calls == []


# ---- malformed input ---------------------------------------------------------------------------


@pytest.mark.parametrize("packet", [
    b"",
    b"\x45\x00",  # a truncated IPv4 header
    udp_packet(SERVER, 53, CLIENT, 40000, b"")[:-4] + b"\xff\xff",  # a UDP length past the end
    udp_packet(SERVER, 53, CLIENT, 40000, b"\x10\x92\x81\x80\x00\x01"),  # a DNS header cut short
    udp_packet(SERVER, 53, CLIENT, 40000, b"\x10\x92\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00\x03www\xc0\x0c"),
])
def test_malformed_answers_are_counted_and_released(snooper, credits, packet):
    assert snooper.on_answer(packet) == "malformed"
    assert snooper.counters["malformed"] == 1 and credits.calls == []


def test_malformed_queries_are_counted_and_ignored(snooper):
    snooper.on_query(b"\x45")
    snooper.on_query(udp_packet(CLIENT, 40000, SERVER, 53, b"\x00\x01garbage"))
    assert snooper.counters["malformed"] == 2 and len(snooper.tracker) == 0


def test_a_bug_in_crediting_is_counted_and_the_packet_released(snooper, credits):
    q = query("boom.reg.test")
    credits.raise_for.add("boom.reg.test")
    snooper.on_query(asked(q))
    assert snooper.on_answer(answered(response(q, [("boom.reg.test.", "A", "198.51.100.12")]))) == "error"
    assert snooper.counters["errors"] == 1


# ---- DNS over TCP --------------------------------------------------------------------------------


def framed(wire: bytes) -> bytes:
    return len(wire).to_bytes(2, "big") + wire


def test_tcp_questions_and_answers_split_over_segments(snooper, credits):
    q = query("big.reg.test", ident=99)
    snooper.on_query(tcp_packet(CLIENT, 41000, SERVER, 53, 5000, framed(q.to_wire())))
    assert len(snooper.tracker) == 1
    records = [("big.reg.test.", "A", f"198.51.100.{i}") for i in range(1, 41)]
    data = framed(response(q, records))
    first, rest = data[:30], data[30:]
    assert snooper.on_answer(tcp_packet(SERVER, 53, CLIENT, 41000, 9000, first)) == "ok"
    assert credits.calls == []  # half a message teaches nothing yet
    assert snooper.on_answer(tcp_packet(SERVER, 53, CLIENT, 41000, 9000 + len(first), rest, flags=0x18 | TCP_FIN)) == "ok"
    [(name, _chain, addresses)] = credits.calls
    assert name == "big.reg.test" and len(addresses) == 40
    assert len(snooper.answer_streams) == 0  # FIN: the flow is forgotten


def test_a_tcp_answer_with_a_gap_falls_back_to_active_resolution(credits, clock):
    wanted = []
    snooper = Snooper(None, (SERVER,), credits, "queue", 0, 1, 2, fallback=wanted.append, clock=clock)
    q = query("gap.reg.test", ident=5)
    snooper.on_query(tcp_packet(CLIENT, 41001, SERVER, 53, 100, framed(q.to_wire())))
    data = framed(response(q, [("gap.reg.test.", "A", "198.51.100.13")]))
    snooper.on_answer(tcp_packet(SERVER, 53, CLIENT, 41001, 7000, data[:10]))
    snooper.on_answer(tcp_packet(SERVER, 53, CLIENT, 41001, 7000 + 20, data[20:]))  # bytes 10..19 lost
    assert wanted == ["gap.reg.test"] and snooper.counters["tcp_fallbacks"] == 1
    assert credits.calls == []


# ---- holding an answer whose question is not read yet -----------------------------------------


def test_an_answer_before_its_question_is_held_not_refused(snooper, credits):
    q = query("early.reg.test")
    wire = answered(response(q, [("early.reg.test.", "A", "198.51.100.14")]))
    assert snooper.on_answer(wire, final=False) == "retry"
    assert snooper.counters["answers_seen"] == 0  # not judged yet
    snooper.on_query(asked(q))
    assert snooper.on_answer(wire, final=False) == "ok"
    assert snooper.on_answer(wire, final=True) == "unsolicited"  # a final look does not hold


# ---- the run loop over fake netlink sockets ----------------------------------------------------


class Loop:
    """Snooper.run() in a thread over a FakeQueue (answers) and a FakeLog (queries)."""

    def __init__(self, snooper: Snooper, flush=None):
        self.snooper = snooper
        self.events: list[str] = []
        self.queue, self.queries = FakeQueue(), FakeLog()
        snooper.queue, snooper.query_log = self.queue, self.queries
        snooper.flush = flush or (lambda: self.events.append("flush"))
        real_verdict, real_batch = self.queue.verdict, self.queue.verdict_batch
        self.queue.verdict = lambda pid, ok: (self.events.append(f"verdict {pid} {ok}"), real_verdict(pid, ok))
        self.queue.verdict_batch = lambda pid, ok: (self.events.append(f"batch {pid} {ok}"), real_batch(pid, ok))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=snooper.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> "Loop":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive(), "the snoop loop did not stop"
        self.queue.close()
        self.queries.close()

    def verdict(self, pid: int, timeout: float = 5.0) -> bool:
        return wait_for(lambda: pid in self.queue.verdicts, timeout, f"a verdict on answer {pid}",
                        detail=lambda: f"events: {self.events}, counters: {self.snooper.counters}") and \
            self.queue.verdicts[pid]


def test_loop_releases_an_answer_only_after_its_addresses_are_programmed(snooper, credits):
    q = query("www.reg.test")
    with Loop(snooper) as loop:
        loop.queries.push(Packet(asked(q)))
        loop.queue.push(answered(response(q, [("www.reg.test.", "A", "198.51.100.10")])))
        assert loop.verdict(1) is True
    assert credits.calls and loop.events.index("flush") < loop.events.index("batch 1 True")


def test_loop_releases_malformed_and_untrusted_answers(snooper, credits):
    with Loop(snooper) as loop:
        loop.queue.push(b"\x45\x00junk", answered(b"\x00" * 12, server=OTHER_SERVER))
        assert loop.verdict(1) is True and loop.verdict(2) is True
    assert snooper.counters["malformed"] == 1 and snooper.counters["untrusted"] == 1


def test_loop_drops_the_batch_when_programming_fails(snooper, credits):
    def failing_flush():
        raise RuntimeError("netlink: no buffer space")

    q = query("www.reg.test")
    with Loop(snooper, flush=failing_flush) as loop:
        loop.queries.push(Packet(asked(q)))
        loop.queue.push(answered(response(q, [("www.reg.test.", "A", "198.51.100.10")])))
        assert loop.verdict(1) is False  # dropped: the client's resolver asks again
    assert snooper.counters["answers_dropped"] == 1 and snooper.counters["errors"] == 1


def test_loop_holds_an_answer_while_a_query_flood_is_still_being_read(snooper, credits, monkeypatch):
    """Queries are read for QUERY_BUDGET per pass; while some are still unread, an answer to a
    question not read yet waits (no verdict) rather than being released unprogrammed."""
    monkeypatch.setattr(snooper_mod, "QUERY_BUDGET", 0.001)
    q = query("late.reg.test")
    flooding = threading.Event()
    flooding.set()
    junk = Packet(asked(query("noise.other.test", ident=1), port=50000))

    def flood(log):
        if flooding.is_set():
            log.waiting.append(junk)  # never empty: the drain never finishes within its budget

    with Loop(snooper) as loop:
        loop.queries.on_receive = flood
        loop.queue.push(answered(response(q, [("late.reg.test.", "A", "198.51.100.15")])))
        wait_for(lambda: loop.queries.receives > 50, 5, "the loop reading the query flood")
        assert 1 not in loop.queue.verdicts and credits.calls == []  # held, not released
        loop.queries.push(Packet(asked(q)))
        flooding.clear()
        assert loop.verdict(1) is True
    assert [c[0] for c in credits.calls] == ["late.reg.test"]


def test_loop_releases_a_held_answer_as_unsolicited_after_the_hold(snooper, credits, monkeypatch):
    monkeypatch.setattr(snooper_mod, "QUERY_BUDGET", 0.001)
    monkeypatch.setattr(snooper_mod, "HOLD_SECONDS", 0.2)
    junk = Packet(asked(query("noise.other.test", ident=1), port=50000))
    q = query("never.reg.test")
    with Loop(snooper) as loop:
        loop.queries.on_receive = lambda log: log.waiting.append(junk)
        loop.queue.push(answered(response(q, [("never.reg.test.", "A", "198.51.100.16")])))
        assert loop.verdict(1) is True
    assert credits.calls == [] and snooper.counters["unsolicited"] == 1


def test_log_mode_credits_copied_answers_without_verdicts(credits, clock):
    snooper = Snooper(None, (SERVER,), credits, "log", 0, 1, 2, clock=clock)
    answers, queries = FakeLog(), FakeLog()
    snooper.answer_log, snooper.query_log = answers, queries
    q = query("copy.reg.test")
    stop = threading.Event()
    thread = threading.Thread(target=snooper.run, args=(stop,), daemon=True)
    thread.start()
    try:
        queries.push(Packet(asked(q)))
        answers.push(Packet(answered(response(q, [("copy.reg.test.", "A", "198.51.100.17")]))))
        wait_for(lambda: credits.calls, 5, "the logged answer to be credited")
    finally:
        stop.set()
        thread.join(5)
        answers.close()
        queries.close()
    assert credits.calls[0][0] == "copy.reg.test"
