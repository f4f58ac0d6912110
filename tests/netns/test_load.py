"""The controller under load and faults, with real packets: a flood of distinct names, live
connections across reloads, repairs and restarts, and every thread killed in turn.

Addresses (documentation ranges, inside the testbed's namespaces only):
  198.51.100.53 / 2001:db8:100::53   the testbed's dnsmasq (trusted resolver)
  2001:db8:100::1:0:0 + i            the answer of n<i>.flood.test (one new address per name)
  198.51.100.70-.72                  listeners (TCP 443 accept-and-close, TCP 8443 echo)
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ramfw.kernel import netns

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from flood import flood, flood_names  # noqa: E402
from test_snoop import Ctl, Listener, addresses, connect_here, policy_toml, write_atomic  # noqa: E402
from wait import wait_for as shared_wait_for  # noqa: E402
from testbed import DNS4, Testbed, require_root, root_ns_fingerprint, set_addresses  # noqa: E402

FRESH4 = "198.51.100.70"
KEEP_OLD4 = "198.51.100.71"
KEEP_NEW4 = "198.51.100.72"
ECHO_PORT = 8443


def log(msg: str) -> None:
    print(f"[test_load] {msg}", flush=True)


@pytest.fixture(scope="module", autouse=True)
def root_namespace_untouched():
    require_root()
    before = root_ns_fingerprint()
    yield
    assert root_ns_fingerprint() == before, "the machine's own (root) network namespace changed during tests/netns/test_load.py"


def make_bed(tb: Testbed, tmp: Path, backend: str):
    """What test_snoop's Ctl needs of a bed, on a plain Testbed (dnsmasq as the resolver)."""
    bed = SimpleNamespace(tb=tb, tmp=tmp, backend=backend, client=tb.client, inet=tb.inet)

    def set_ips(name: str) -> set[str]:
        return set_addresses(tb, tb.client, name, backend)

    bed.set_ips = set_ips
    return bed


@pytest.fixture
def started():
    ctls: list[Ctl] = []
    yield ctls
    for ctl in ctls:
        try:
            ctl.finish()
        finally:
            print(ctl.stderr_tail(3000))


def lookup(ns: str, name: str, rdtype: str = "A") -> list[str]:
    import dns.message
    import dns.query

    with netns.entered(ns):
        return addresses(dns.query.udp(dns.message.make_query(name, rdtype), DNS4, timeout=2))


# ---- a flood of distinct names -----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_flood_of_distinct_names_learns_every_delivered_answer(backend, tmp_path, started):
    """DNS at full speed for over 100k distinct allowed names, each with its own address: the
    controller stays alive, every answer the client received has its address in the set (a
    sample of 500), and a fresh allowed name connects within 2 s afterwards."""
    names = flood_names(130_000)
    with Testbed(tag="load") as tb:
        tb.set_names({**names, "fresh.flood.test": [FRESH4]}, ttl=300)
        tb.add_address(FRESH4)
        listener = Listener(tb.inet)
        try:
            bed = make_bed(tb, tmp_path, backend)
            ctl = Ctl(bed, policy_toml(["**.flood.test"], servers=(DNS4,)))
            started.append(ctl)
            ctl.wait_ready()
            # at full speed: about 10 s on a quiet machine; a busy one may need longer to send 100k
            result = flood(tb.client, DNS4, list(names), seconds=30)
            delivered = {n: a for n, a in result.received.items() if a}
            log(f"{backend}: {result.sent} distinct names in {result.seconds:.1f} s ({result.rate:,.0f} q/s), "
                f"{len(delivered)} answers delivered")
            ctl.assert_alive("under the flood")
            assert result.sent >= 100_000, f"the flood reached only {result.sent} names (machine too slow?)"
            assert len(delivered) >= 50_000, f"only {len(delivered)} answers came back: the resolver path stalled"
            sample = random.Random(1).sample(sorted(delivered), 500)
            in_set = bed.set_ips("allow6")
            missing = [n for n in sample if delivered[n] not in in_set]
            assert not missing, (f"{len(missing)}/500 delivered answers were not in allow6 (released before "
                                 f"their address was programmed), e.g. {missing[:3]}")
            t0 = time.monotonic()
            while True:
                with netns.entered(tb.client):
                    res = connect_here(lookup(tb.client, "fresh.flood.test")[0], timeout=1.0)
                if res.ok or time.monotonic() - t0 > 2.0:
                    break
                time.sleep(0.05)  # retry pacing: the loop ends on the condition above
            assert res.ok, f"a fresh allowed name was refused {time.monotonic() - t0:.1f} s after the flood: {res}"
            counters = ctl.counters()
            log(f"{backend}: cache {counters.get('cache_addresses')} addresses, evicted {counters.get('cache_evicted')}, "
                f"snoop errors {counters.get('snoop_errors')}, queue overruns {counters.get('snoop_queue_overruns')}")
            assert counters.get("cache_addresses", 0) <= 10000  # the default cap holds
            ctl.assert_alive("after the flood")
        finally:
            listener.close()


# ---- live connections across reload, edit, repair, restart ---------------------------------------


class EchoServer:
    """TCP echo on (ip, ECHO_PORT) in a namespace; every connection served until closed."""

    def __init__(self, ns: str, ips: list[str]):
        self.socks = []
        with netns.entered(ns):
            for ip in ips:
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((ip, ECHO_PORT))
                s.listen(16)
                self.socks.append(s)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._accept, args=(s,), daemon=True) for s in self.socks]
        for t in self.threads:
            t.start()

    def _accept(self, sock):
        sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn):
        conn.settimeout(0.5)
        with conn:
            while not self.stop.is_set():
                try:
                    data = conn.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def close(self):
        self.stop.set()
        for s in self.socks:
            s.close()


class LiveConnection:
    def __init__(self, ns: str, ip: str):
        with netns.entered(ns):
            self.sock = socket.create_connection((ip, ECHO_PORT), timeout=2)
        self.ip = ip

    def alive(self) -> bool:
        try:
            self.sock.sendall(b"ping\n")
            return self.sock.recv(16) == b"ping\n"
        except OSError:
            return False

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_live_connection_to_an_aged_out_address_survives_until_its_name_is_removed(backend, tmp_path, started):
    """A CDN rotates cdn.keep.test from one address to another while a long transfer to the
    first is open. That address ages out of the DNS cache and the sets; its connection must
    survive SIGHUP, a policy edit that keeps the name, a repair and a controller restart, and
    be cut (with the connection to the current address) by an edit that removes the name."""
    with Testbed(tag="live") as tb:
        tb.set_names({"cdn.keep.test": [KEEP_OLD4], "other.keep.test": [FRESH4]}, ttl=1)
        for ip in (KEEP_OLD4, KEEP_NEW4, FRESH4):
            tb.add_address(ip)
        echo = EchoServer(tb.inet, [KEEP_OLD4, KEEP_NEW4])
        conns: list[LiveConnection] = []
        try:
            bed = make_bed(tb, tmp_path, backend)
            policy = lambda names: policy_toml(names, servers=(DNS4,), min_ttl=0, grace=0)  # noqa: E731
            ctl = Ctl(bed, policy(["cdn.keep.test"]), extra=("--check-interval", "1"))
            started.append(ctl)
            ctl.wait_ready()
            old = LiveConnection(tb.client, lookup(tb.client, "cdn.keep.test")[0])
            conns.append(old)
            assert old.ip == KEEP_OLD4 and old.alive()
            tb.set_names({"cdn.keep.test": [KEEP_NEW4], "other.keep.test": [FRESH4]}, ttl=1)  # the CDN rotates
            wait_for(lambda: KEEP_OLD4 not in bed.set_ips("allow4"), "the rotated-away address to age out of the set",
                     timeout=20)
            assert old.alive()

            ctl.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: ctl.stderr().count("reloaded (SIGHUP)") >= 1, "the SIGHUP reload")
            assert old.alive(), f"SIGHUP cut a live connection to an address of a still-allowed name\n{ctl.stderr_tail()}"

            write_atomic(ctl.policy, policy(["cdn.keep.test", "other.keep.test"]))
            wait_for(lambda: "reloaded (policy changed" in ctl.stderr(), "the policy edit")
            assert old.alive(), f"an edit that kept the name cut its live connection\n{ctl.stderr_tail()}"

            tampered_at = time.time()
            if backend == "nft":
                tb.run(tb.client, "nft", "delete", "table", "inet", "ramfw")
            else:  # whichever flavour the backend chose holds the chain
                flushed = [tb.run(tb.client, tool, "-F", "RAMFW-OUT", check=False).returncode == 0
                           for tool in ("iptables-nft", "iptables-legacy")]
                assert any(flushed)
            wait_for(lambda: "restoring it" in ctl.stderr(), "the repair", timeout=10)
            ctl.wait_applied(tampered_at)  # the repair's transaction and any cut after it are done
            assert old.alive(), f"the repair cut a live connection\n{ctl.stderr_tail()}"

            assert ctl.terminate() == 0
            ctl2 = Ctl(bed, policy(["cdn.keep.test", "other.keep.test"]), name="ctl2", extra=("--check-interval", "1"))
            started.append(ctl2)
            ctl2.wait_ready()  # ready only after the first apply, whose cuts come before the heartbeat
            assert old.alive(), f"a controller restart cut a live connection\n{ctl2.stderr_tail()}"

            current = LiveConnection(tb.client, lookup(tb.client, "cdn.keep.test")[0])
            conns.append(current)
            assert current.ip == KEEP_NEW4 and current.alive()
            write_atomic(ctl2.policy, policy(["other.keep.test"]))
            # logged after the transaction and its cuts
            wait_for(lambda: "reloaded (policy changed" in ctl2.stderr(), "the edit removing the name")
            assert not current.alive(), "the connection to the current address of a removed name was not cut"
            assert not old.alive(), "the connection to the old address of a removed name was not cut"
        finally:
            for c in conns:
                c.close()
            echo.close()


def wait_for(cond, what: str, timeout: float = 6.0) -> None:
    shared_wait_for(cond, timeout, what, interval=0.1)


# ---- every thread killed in turn -------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["snoop:raise", "snoop:hang", "audit:raise", "audit:hang", "metrics:raise",
                                   "metrics:hang", "main:raise", "main:hang"])
def test_a_failed_thread_ends_the_process_non_zero_and_the_rules_stay(fault, tmp_path, started, monkeypatch):
    """Inject a fault into one thread (RAMFW_FAULT): the process exits non-zero within the stall
    limit (3 s here; the watchdog interval under systemd), saying which thread, and the ruleset
    stays in the kernel (fail closed)."""
    monkeypatch.setenv("RAMFW_STALL_LIMIT", "3")
    with Testbed(tag="fault") as tb:
        tb.set_names({"a.allowed.test": [FRESH4]}, ttl=300)
        bed = make_bed(tb, tmp_path, "nft")
        monkeypatch.setenv("RAMFW_FAULT", fault)  # fires at the thread's first beat, after the apply
        ctl = Ctl(bed, policy_toml(["a.allowed.test"], servers=(DNS4,)), name="faulty",
                  extra=("--metrics", f"unix:{tmp_path}/metrics2.sock"))
        started.append(ctl)
        t0 = time.monotonic()
        try:
            rc = ctl.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{fault}: the controller was still running 15 s later\n{ctl.stderr_tail()}")
        took = time.monotonic() - t0
        log(f"{fault}: exit status {rc} after {took:.1f} s")
        assert rc == 1, f"{fault}: exit status {rc}\n{ctl.stderr_tail()}"
        thread = fault.split(":")[0]
        assert thread in ctl.stderr(), ctl.stderr_tail()
        tables = tb.run(tb.client, "nft", "list", "tables").stdout
        assert "inet ramfw" in tables, "the ruleset left with the controller (it must fail closed)"


# ---- a flood of crafted questions from an unprivileged process --------------------------------------

FLOOD_SCRIPT = r"""
import socket, struct, sys, time
server, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
# one question, then 5,000 additional records of 12 bytes each: ~60 KB that a parser walking
# every section pays for, and that a question-only parser does not
question = b"".join(bytes([len(p)]) + p.encode() for p in "x.flood.test".split(".")) + b"\0" + struct.pack("!HH", 28, 1)
records = (b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 0, 0)) * 5000
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent, start, i = 0, time.monotonic(), 0
while time.monotonic() - start < seconds:
    i += 1
    s.sendto(struct.pack("!6H", i & 0xFFFF, 0x0100, 1, 0, 0, 5000) + question + records, (server, 53))
    sent += 1
    time.sleep(max(0.0, start + sent / rate - time.monotonic()))
print(sent)
"""


def test_question_flood_from_an_unprivileged_user_does_not_stall_learning(tmp_path, started):
    """An unprivileged process floods the trusted resolver with 60 KB crafted questions (300 a
    second: a parser that walked every section would need over three seconds of CPU a second); meanwhile every
    wildcard-allowed name a client looks up connects within 2 s."""
    names = {f"w{i}.flood.test": [f"198.51.100.{100 + i}"] for i in range(40)}
    with Testbed(tag="qflood") as tb:
        tb.set_names(names, ttl=300)
        for ips in names.values():
            tb.add_address(ips[0])
        listener = Listener(tb.inet)
        flooder = None
        try:
            bed = make_bed(tb, tmp_path, "nft")
            ctl = Ctl(bed, policy_toml(["**.flood.test"], servers=(DNS4,)))
            started.append(ctl)
            ctl.wait_ready()
            flooder = subprocess.Popen(
                ["ip", "netns", "exec", tb.client, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                 "/usr/bin/python3", "-c", FLOOD_SCRIPT, DNS4, "12", "300"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(1.0)  # the scenario: let the flood build up before the lookups start
            slow = []
            for name, ips in names.items():
                t0 = time.monotonic()
                while True:
                    try:
                        got = lookup(tb.client, name)
                        with netns.entered(tb.client):
                            res = connect_here(got[0], timeout=1.0)
                    except Exception as exc:  # noqa: BLE001 - a lost answer: the client asks again
                        res = SimpleNamespace(ok=False, error=repr(exc))
                    took = time.monotonic() - t0
                    if res.ok or took > 2.0:
                        break
                if not res.ok:
                    slow.append((name, round(took, 2), res.error))
                if flooder.poll() is not None:
                    break
            out, err = flooder.communicate(timeout=30)
            assert flooder.returncode == 0, err
            log(f"question flood: {out.strip()} crafted 60 KB questions sent; {len(names)} wildcard names looked up")
            assert int(out.strip()) >= 500, "the flood did not run"
            assert not slow, f"names that did not connect within 2 s during the flood: {slow}\n{ctl.stderr_tail()}"
            ctl.assert_alive("during the question flood")
        finally:
            if flooder is not None and flooder.poll() is None:
                flooder.kill()
                flooder.wait(5)
            listener.close()
