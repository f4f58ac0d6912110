"""Attacks on ramfw, each with real packets, real processes or real files, on both backends where
it applies. Each test first proves its attack really happened (the packet was delivered where
ramfw does not stand in the way, the file really was written), so it fails when ramfw fails.

  1. exception rules: DHCP- and DHCPv6-shaped UDP and ND/MLD-typed ICMPv6 to a global address
     reach nothing (the same packets to an allowed address arrive);
  2. forged answers with the right tuple: a process that asked the question forges the answer
     with a raw socket over loopback, and (forward scope) a "container" forges it through its
     gateway, hairpinned back into itself: the address stays refused;
  7. tampering (final rule replaced with accept, a foreign element in an allow set, a flushed
     table) is repaired within the check interval, and counted.

Addresses: documentation ranges only, inside the testbed's namespaces (tests/testbed.py), plus
203.0.113.128/25 for the "container" namespace behind the client (TESTBED.md: Docker's bridge).
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.message
import pytest

from ramfw.kernel import netns

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from forge import Forger, udp_packet  # noqa: E402
from wait import poll, time_until, wait_for  # noqa: E402
from test_snoop import (  # noqa: E402,F401  (bed and controller are fixtures)
    POOL4,
    SERVER4,
    WILDCARD,
    addresses,
    bed,
    controller,
    policy_toml,
)
from testbed import CLIENT4, _ip, _write_sysctl  # noqa: E402
from dnsserver import Request, answer  # noqa: E402

GLOBAL4, GLOBAL6 = "198.51.100.77", "2001:db8:100::77"  # not allowed: nothing may reach them
OPEN4, OPEN6 = "198.51.100.78", "2001:db8:100::78"  # allowed (allow_cidrs): the control case
CTR_NET, CTR_GW, CTR4 = "203.0.113.128/25", "203.0.113.129", "203.0.113.130"
IP_PKTINFO = 8  # <linux/in.h>; the socket module lacks it


# ---------------------------------------------------------------------------------------------
# 1. exception rules reach nothing outside the link


class Catcher:
    """In the inet namespace: UDP 67 and 547 listeners and a raw ICMPv6 socket; records what
    arrives at which destination address."""

    def __init__(self, ns: str):
        with netns.entered(ns):
            self.u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.u4.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            self.u4.bind(("0.0.0.0", 67))
            self.u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            self.u6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            self.u6.bind(("::", 547))
            self.icmp6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            self.icmp6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        self.got: list[tuple[str, str, bytes]] = []  # (kind, destination, payload)

    def drain(self, wait: float) -> list[tuple[str, str, bytes]]:
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.u4, self.u6, self.icmp6], [], [], left)
            for s in ready:
                data, anc, _flags, _src = s.recvmsg(65535, 256)
                dst = ""
                for level, kind, value in anc:
                    if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                        dst = socket.inet_ntop(socket.AF_INET, value[8:12])
                    elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                        dst = socket.inet_ntop(socket.AF_INET6, value[:16])
                label = {self.u4: "udp67", self.u6: "udp547", self.icmp6: f"icmpv6-{data[0] if data else '?'}"}[s]
                self.got.append((label, dst, data))
        return self.got

    def close(self) -> None:
        for s in (self.u4, self.u6, self.icmp6):
            s.close()


def _sendto(sock: socket.socket, data: bytes, addr) -> None:
    try:
        sock.sendto(data, addr)
    except OSError:
        pass  # refused locally by the ruleset (EPERM): that is the point
    finally:
        sock.close()


def _send_exception_shaped(ns: str, dst4: str, dst6: str) -> None:
    """From `ns`: every packet shape the link exceptions are about, to dst4/dst6."""
    tag = f"to {dst4} {dst6}".encode()
    with netns.entered(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # DHCPv4 client -> server
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((CLIENT4, 68))
        _sendto(s, b"dhcp4 " + tag, (dst4, 67))
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)  # DHCPv6 client -> server
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", 546))
        _sendto(s, b"dhcp6 " + tag, (dst6, 547))
        _sendto(socket.socket(socket.AF_INET6, socket.SOCK_DGRAM), b"tunnel " + tag, (dst6, 547))  # any port to 547
        target = socket.inet_pton(socket.AF_INET6, dst6)
        for icmp_type, hops in ((135, 255), (136, 255), (133, 255), (131, 1), (143, 1)):
            r = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            r.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, hops)
            _sendto(r, struct.pack("!BBHI", icmp_type, 0, 0, 0) + target + tag, (dst6, 0))  # kernel fills the checksum


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_exception_shaped_packets_reach_no_global_address(testbed, backend, tmp_path, state_dir):
    tb = testbed
    for ip in (GLOBAL4, GLOBAL6, OPEN4, OPEN6):
        tb.add_address(ip)
    policy = tmp_path / "p.toml"
    policy.write_text(f'allow = ["reg.example.test"]\n[network]\nallow_cidrs = ["{OPEN4}/32", "{OPEN6}/128"]\n'
                      f'[dns]\nsnoop = "off"\n')
    up = subprocess.run([sys.executable, "-m", "ramfw.cli", "up", "--netns", tb.client, "--policy", str(policy),
                         "--backend", backend], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert up.returncode == 0, up.stderr
    tb.serve_tcp(OPEN6, 8443)
    catcher = Catcher(tb.inet)
    try:
        _send_exception_shaped(tb.client, OPEN4, OPEN6)  # control: an allowed address gets them all
        _send_exception_shaped(tb.client, GLOBAL4, GLOBAL6)
        got = catcher.drain(1.5)
        # IPv6 itself still works: neighbour discovery towards the gateway is let out
        subprocess.run(["ip", "-n", tb.client, "neigh", "flush", "all"], capture_output=True)
        v6 = tb.connect(OPEN6, 8443)
    finally:
        catcher.close()
        subprocess.run([sys.executable, "-m", "ramfw.cli", "down", "--netns", tb.client], capture_output=True, timeout=60)
    to_open = sorted((k, d) for k, d, _ in got if d == OPEN4 or d == OPEN6)
    to_global = [(k, d, p[-40:]) for k, d, p in got if d in (GLOBAL4, GLOBAL6)]
    assert to_open == sorted([("udp67", OPEN4), ("udp547", OPEN6), ("udp547", OPEN6), ("icmpv6-135", OPEN6),
                              ("icmpv6-136", OPEN6), ("icmpv6-133", OPEN6), ("icmpv6-131", OPEN6),
                              ("icmpv6-143", OPEN6)]), f"the control packets did not all arrive: {got}"  # fmt: skip
    assert to_global == [], f"exception-shaped packets reached a global address that is not allowed: {to_global}"
    assert v6.ok, f"IPv6 to an allowed address broke (neighbour discovery refused?): {v6}"


# ---------------------------------------------------------------------------------------------
# 2. forged answers with the right tuple


def _forge_during_question(bed, forge, asker_ns: str, asker_addr: str, real_ip: str, forged_ip: str):
    """Ask a.allowed.test from (asker_ns, asker_addr); while the question is outstanding (the
    test DNS server holds its answer) call forge(req, wire) with a forged answer carrying
    forged_ip and the question's exact tuple; then let the genuine answer (real_ip) go.
    Returns the answers the asking socket received, as (source, port, addresses)."""
    asked = threading.Event()
    forged = threading.Event()
    seen: dict = {}

    def handler(req: Request):
        if req.qname != "a.allowed.test":
            return bed.dns.zone_answer(req)
        seen["req"] = req
        asked.set()
        forged.wait(5)
        return answer(req, [("a.allowed.test", "A", real_ip)])

    bed.dns.handler = handler
    with netns.entered(asker_ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((asker_addr, 0))
        q = dns.message.make_query("a.allowed.test", "A")
        s.sendto(q.to_wire(), (SERVER4, 53))
        assert asked.wait(5), "the test DNS server never saw the question"
        req = seen["req"]
        assert (req.client, req.port, req.id) == (asker_addr, s.getsockname()[1], q.id)
        forge(req, answer(req, [("a.allowed.test", "A", forged_ip)]).to_wire())
        got = []
        s.settimeout(2.0)
        try:
            got.append(s.recvfrom(65535))  # the forgery first (the server is still holding its answer)
        finally:
            forged.set()
        try:
            got.append(s.recvfrom(65535))
        except TimeoutError:
            pass
    finally:
        forged.set()
        s.close()
        bed.dns.handler = None
    return [(src[0], src[1], addresses(dns.message.from_wire(data))) for data, src in got]


@pytest.mark.parametrize("snoop", ["queue", "log"])
def test_forged_answer_over_loopback_adds_nothing(bed, controller, snoop):
    """The asking process itself, with CAP_NET_RAW, forges the answer over the namespace's own
    path (destination: its own address, so the packet travels over lo). Queue mode (held
    answers) and log mode (copied answers) credit through different rules: both are attacked."""
    forged_ip, real_ip = POOL4[80], POOL4[81]
    ctl = controller(policy_toml(WILDCARD, snoop=snoop))
    assert bed.set_ips("allow4") == set()

    def forge(req, wire):
        with Forger(bed.client) as f:  # a raw socket inside the enforced namespace
            f.udp(SERVER4, 53, req.client, req.port, wire)

    got = _forge_during_question(bed, forge, bed.client, CLIENT4, real_ip, forged_ip)
    assert got[0] == (SERVER4, 53, [forged_ip]), f"the forgery never reached the asking socket: {got}"
    assert (SERVER4, 53, [real_ip]) in got, f"the genuine answer did not arrive: {got}"
    poll(lambda: real_ip in bed.set_ips("allow4"), 2)
    assert bed.set_ips("allow4") == {real_ip}, "the forged address was learned (or the genuine one was not)"
    refused = bed.connect(forged_ip, timeout=1.5)
    assert not refused.ok and refused.error == ("ECONNREFUSED" if snoop == "queue" else "timeout"), refused  # log mode drops
    assert bed.connect(real_ip).ok
    ctl.assert_alive("after a forged answer over loopback")


class Container:
    """A namespace behind the client, the way Docker puts a container behind its bridge: veth
    `docker0` (client, 203.0.113.129/25) <-> `eth0` (container, 203.0.113.130/25, default via
    the client). The client forwards; the inet namespace routes 203.0.113.128/25 back."""

    def __init__(self, tb):
        self.ns = tb.client.removesuffix("-cli") + "-ctr"
        self.tb = tb
        _ip("netns", "add", self.ns)
        try:
            _ip("-n", tb.client, "link", "add", "docker0", "type", "veth", "peer", "name", "eth0", "netns", self.ns)
            _ip("-n", tb.client, "addr", "add", f"{CTR_GW}/25", "dev", "docker0")
            _ip("-n", tb.client, "link", "set", "docker0", "up")
            _ip("-n", self.ns, "link", "set", "lo", "up")
            _ip("-n", self.ns, "addr", "add", f"{CTR4}/25", "dev", "eth0")
            _ip("-n", self.ns, "link", "set", "eth0", "up")
            _ip("-n", self.ns, "route", "add", "default", "via", CTR_GW)
            _ip("-n", tb.inet, "route", "add", CTR_NET, "via", CLIENT4)
            _write_sysctl(tb.client, "net.ipv4.ip_forward", "1")
            # the kernel's own reverse-path filter off: the test is about ramfw's check
            for conf in ("all", "default", "docker0", "eth0"):
                _write_sysctl(tb.client, f"net.ipv4.conf.{conf}.rp_filter", "0")
        except BaseException:
            self.close()
            raise

    def mac(self, ns: str, dev: str) -> bytes:
        out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", dev], capture_output=True, text=True, check=True)
        return bytes.fromhex(json.loads(out.stdout)[0]["address"].replace(":", ""))

    def hairpin(self, packet: bytes) -> None:
        """Send an IPv4 packet from the container to its gateway's MAC (AF_PACKET, CAP_NET_RAW):
        the client routes it, and back out of docker0 when its destination is the container."""
        frame = self.mac(self.tb.client, "docker0") + self.mac(self.ns, "eth0") + b"\x08\x00" + packet
        with netns.entered(self.ns):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        try:
            s.bind(("eth0", 0))
            s.send(frame)
        finally:
            s.close()

    def close(self) -> None:
        subprocess.run(["ip", "-n", self.tb.inet, "route", "del", CTR_NET], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


def test_forged_answer_from_container_through_the_bridge_adds_nothing(bed, controller):
    forged_ip, real_ip = POOL4[82], POOL4[83]
    ctr = Container(bed.tb)
    try:
        text = policy_toml(WILDCARD) + "[scope]\noutput = true\nforward = true\n"
        ctl = controller(text)
        assert bed.set_ips("allow4") == set()
        forged_path = []

        def forge(req, wire):
            assert req.client == CTR4, req.client
            ctr.hairpin(udp_packet(SERVER4, 53, CTR4, req.port, wire))
            forged_path.append(True)

        got = _forge_during_question(bed, forge, ctr.ns, CTR4, real_ip, forged_ip)
        assert forged_path and got and got[0] == (SERVER4, 53, [forged_ip]), f"the hairpinned forgery never arrived: {got}"
        assert (SERVER4, 53, [real_ip]) in got, f"the genuine answer did not arrive: {got}"
        poll(lambda: real_ip in bed.set_ips("allow4"), 2)
        assert bed.set_ips("allow4") == {real_ip}, "the forged address was learned (or the genuine one was not)"
        assert bed.connect(forged_ip).error == "ECONNREFUSED"
        ctl.assert_alive("after a forged answer through the bridge")
    finally:
        ctr.close()


# ---------------------------------------------------------------------------------------------
# 7. tampering is repaired, by content, within the check interval

CHECK_INTERVAL = 5.0  # `ramfw run`'s default --check-interval
REPAIR_SLACK = 1.5  # the loop's poll (0.25 s), one apply, the heartbeat that carries counters


def _admin(bed, backend_status: dict) -> str:
    """The iptables command of the flavour ramfw uses (status names it: "iptables-nft -S …")."""
    return backend_status["rules_at"].split()[0]


def _wait_refused(bed, ip: str, limit: float) -> float:
    took = time_until(lambda: bed.connect(ip, timeout=0.5).error == "ECONNREFUSED", limit)
    return float("inf") if took is None else took


def test_tampering_is_repaired_within_the_check_interval(bed, controller):
    victim = POOL4[90]  # never allowed: every tampering below makes it reachable
    ctl = controller(policy_toml(WILDCARD))
    st = ctl.status()
    assert bed.connect(victim).error == "ECONNREFUSED"
    ns = bed.client
    if bed.backend == "nft":
        listing = bed.tb.run(ns, "nft", "-a", "list", "chain", "inet", "ramfw", "output_filter").stdout
        handle = [ln for ln in listing.splitlines() if "goto refuse_output" in ln][0].rsplit("handle", 1)[1].strip()
        tampers = {
            "final rule replaced with accept": ["nft", "replace", "rule", "inet", "ramfw", "output_filter", "handle", handle, "accept"],
            "foreign element in allow4": ["nft", "add", "element", "inet", "ramfw", "allow4", f"{{ {victim} timeout 1h }}"],
            "table flushed": ["nft", "flush", "table", "inet", "ramfw"],
        }
    else:
        tool = _admin(bed, st)
        rules = bed.tb.run(ns, tool, "-S", "RAMFW-OUT").stdout.splitlines()
        last = len([r for r in rules if r.startswith("-A RAMFW-OUT")])
        tampers = {
            "final rule replaced with accept": [tool, "-R", "RAMFW-OUT", str(last), "-j", "ACCEPT"],
            "foreign element in allow4": ["ipset", "add", "ramfw-allow4", victim, "timeout", "3600"],
            "chain flushed": [tool, "-F", "RAMFW-OUT"],
        }
    took = {}
    for what, argv in tampers.items():
        time.sleep(0.3)  # not right after a check: the repair must come from the next one
        bed.tb.run(ns, *argv)
        opened = bed.connect(victim)
        assert opened.ok, f"{what}: the tampering did not open the way (so this test would prove nothing): {opened}"
        took[what] = _wait_refused(bed, victim, CHECK_INTERVAL + REPAIR_SLACK)
        assert took[what] <= CHECK_INTERVAL + REPAIR_SLACK, f"{what}: not repaired within the check interval ({took})\n{ctl.stderr_tail()}"
    print(f"[test_attacks] {bed.backend}: repaired after {took}")
    assert ctl.wait_counter("tampered", len(tampers)) >= len(tampers)
    st = ctl.status()
    assert st["check_interval"] == CHECK_INTERVAL
    human = ctl.cli("status", "--netns", ns).stdout
    assert f"every {CHECK_INTERVAL:g}s" in human and "tampered" in human
    ctl.assert_alive("after tampering")


# ---------------------------------------------------------------------------------------------
# 4. hostile policies written over the running one: refused, the last good policy stays


def test_running_controller_refuses_hostile_policies_and_stays_alive(bed, controller):
    from test_snoop import write_atomic

    ctl = controller(policy_toml(WILDCARD))
    digest = ctl.status()["policy_digest"]
    hostile = {
        "5,000-deep TOML": "allow = " + "[" * 5000 + "]" * 5000 + "\n",
        "5,000-deep JSON (in a .toml file)": '{"allow": ' + "[" * 5000 + "]" * 5000 + "}",
        "over 1 MiB": policy_toml(["*.allowed.test", "evil.test"]) + "# pad\n" * 200_000,
        "binary garbage": "\x00\xff" * 1000,
    }
    refused = ctl.counters().get("reloads_refused", 0)
    for what, text in hostile.items():
        write_atomic(ctl.policy, text)
        refused += 1
        got = ctl.wait_counter("reloads_refused", refused, timeout=8)
        assert got >= refused, f"{what}: the controller did not refuse it (reloads_refused {got})\n{ctl.stderr_tail()}"
        ctl.assert_alive(f"after a {what} policy")
        assert ctl.status()["policy_digest"] == digest, f"{what}: the enforced policy changed"
    err = ctl.stderr()
    assert "Traceback" not in err and "RecursionError" not in err, ctl.stderr_tail()
    assert "nested deeper than" in err and "larger than 1024 KiB" in err
    # still learning with the last good policy
    bed.dns.zone["b.allowed.test"] = [POOL4[95]]
    ips = addresses(bed.lookup("b.allowed.test"))
    assert ips and bed.connect(ips[0]).ok
    # and a good policy is taken again
    write_atomic(ctl.policy, policy_toml(WILDCARD, min_ttl=31))
    wait_for(lambda: ctl.status()["policy_digest"] != digest, 8, "the good policy to be taken again", detail=ctl.stderr_tail)
    ctl.assert_alive("at the end")


# ---------------------------------------------------------------------------------------------
# 5. the metrics port: 2,000 idle local connections against a controller with 1,024 descriptors

METRICS_PORT = 9464


def _start_limited_controller(bed, policy_text: str, extra: list[str], nofile: int = 1024, state_dir=None, shell: str = ""):
    """A `ramfw run` like test_snoop's Ctl, under `prlimit --nofile` (systemd's default for
    services is 1,024), so the Ctl helpers (status, counters, finish) work on it. `shell`:
    commands run first in the controller's own mount namespace (`ip netns exec` makes one)."""
    from test_snoop import Ctl

    wrap = ("prlimit", f"--nofile={nofile}:{nofile}")
    if shell:
        wrap = ("sh", "-c", shell + ' && exec "$@"', "sh", *wrap)
    ctl = Ctl(bed, policy_text, name="limited", extra=tuple(extra), wrap=wrap, state_dir=state_dir)
    return ctl


def _scrape(ns: str, timeout: float = 3.0) -> str:
    with netns.entered(ns):
        s = socket.create_connection(("127.0.0.1", METRICS_PORT), timeout=timeout)
    try:
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data.decode(errors="replace")
    finally:
        s.close()


def test_two_thousand_idle_metrics_connections_leave_the_controller_working(bed):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    bed.dns.zone.update({f"m{i}.allowed.test": [POOL4[40 + i]] for i in range(30)})
    ctl = _start_limited_controller(bed, policy_toml(WILDCARD), ["--metrics", f"127.0.0.1:{METRICS_PORT}"])
    idle: list[socket.socket] = []
    try:
        ctl.wait_ready()
        assert "ramfw_set_elements" in _scrape(bed.client)
        with netns.entered(bed.client):
            for _ in range(2000):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", METRICS_PORT))
                idle.append(s)
        pid = ctl.proc.pid
        most_fds = 0
        t0 = time.monotonic()
        learned = []
        while time.monotonic() - t0 < 8:  # longer than the per-connection timeout
            most_fds = max(most_fds, len(os.listdir(f"/proc/{pid}/fd")))
            ctl.assert_alive("with 2,000 idle metrics connections")
            st = ctl.status()
            assert st["controller"]["running"] and st["controller"]["heartbeat_age"] < 5, st["controller"]
            name = f"m{len(learned)}.allowed.test"
            ips, conn = bed.lookup_connect(name)
            assert conn.ok, f"learning stopped under the connection flood: {name} {ips} {conn}"
            learned.append(ips[0])
            time.sleep(0.5)  # the scenario: a lookup every 0.5 s for 8 s while the idle connections are held
        print(f"[test_attacks] {bed.backend}: at most {most_fds} descriptors open in the controller; learned {len(learned)} names")
        assert most_fds < 100, f"the controller held {most_fds} descriptors (the idle connections are not capped)"
        for s in idle:
            s.close()
        idle.clear()
        body = _scrape(bed.client, timeout=10)
        assert "ramfw_set_elements" in body and "ramfw_tampered" in body and "ramfw_check_interval_seconds 5.0" in body
        ctl.assert_alive("after the flood")
    finally:
        for s in idle:
            s.close()
        try:
            ctl.finish()
        finally:
            print(ctl.stderr_tail(3000))


# ---------------------------------------------------------------------------------------------
# 6. a full state directory (a real tmpfs, filled) is logged once and survived


def test_full_state_directory_is_survived_and_summarised(bed):
    import errno
    import glob

    state = bed.tmp / "state-full"
    state.mkdir()
    bed.dns.zone.update({f"f{i}.allowed.test": [POOL4[10 + i]] for i in range(30)})
    # a 256 KiB tmpfs over the state directory, in the controller's own mount namespace only
    ctl = _start_limited_controller(bed, policy_toml(WILDCARD), [], state_dir=state,
                                    shell=f"mount -t tmpfs -o size=256k ramfw-test-state {state}")  # fmt: skip
    try:
        seen = Path(f"/proc/{ctl.proc.pid}/root") / str(state).lstrip("/")  # the tmpfs, as the controller sees it
        def heartbeat_file():
            ctl.assert_alive("starting")
            return glob.glob(str(seen / "net-*" / "controller.json"))

        wait_for(heartbeat_file, 20, "the heartbeat file in the tmpfs", detail=ctl.stderr_tail)
        assert not list(state.iterdir()), "the tmpfs is not private to the controller's mount namespace"
        heartbeat = Path(glob.glob(str(seen / "net-*" / "controller.json"))[0])
        filler = seen / "filler"
        with open(filler, "wb", buffering=0) as fh:  # fill it to the last block
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < 7:  # three heartbeats and several state writes fail meanwhile
            ctl.assert_alive("with a full state directory")
            ips, conn = bed.lookup_connect(f"f{n}.allowed.test")
            assert conn.ok, f"learning stopped with a full state directory: {ips} {conn}"
            n += 1
            time.sleep(0.4)  # the scenario: a new name every 0.4 s while the state directory is full
        said = ctl.stderr().count("cannot write state file")
        assert said == 1, f"state write failures not summarised ({said} lines)\n{ctl.stderr_tail()}"
        assert "No space left on device" in ctl.stderr()
        filler.unlink()
        stamp = heartbeat.stat().st_mtime
        wait_for(lambda: heartbeat.stat().st_mtime != stamp and "written again after" in ctl.stderr(), 6,
                 "state writes to resume", detail=ctl.stderr_tail)
        ctl.assert_alive("after the state directory had room again")
        print(f"[test_attacks] {bed.backend}: {n} names learned while /run was full; one log line")
    finally:
        try:
            ctl.finish()
        finally:
            print(ctl.stderr_tail(3000))
