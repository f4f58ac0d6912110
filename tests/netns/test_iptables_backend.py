"""The iptables backend with real packets: IptablesBackend driven directly against a testbed.

Every enforcement test runs twice, once per xtables flavour (iptables-legacy written through
python-iptables, iptables-nft written through iptables-nft-restore). Set contents for the bulk
timings use 100.64.0.0/10 and 2001:db8::/32 addresses: they only sit in the sets, no packet is
ever sent to them.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ramfw.kernel import netns
from ramfw.backends.iptables import flavour as flavours, render, savetext
from ramfw.backends.iptables.backend import IptablesBackend
from ramfw.errors import BackendError
from ramfw.kernel.nflog import NfLog
from ramfw.kernel.nfqueue import NfQueue
from ramfw.plan import AUDIT_LOG_GROUP, DNS_LOG_GROUP, DNS_QUERY_GROUP, DNS_QUEUE_NUM, Element, plan
from ramfw.policy.load import parse_policy
from testbed import DNS4, DNS6, probe_during

ALLOWED = {"reg.allowed.test": ["198.51.100.10", "2001:db8:100::10"]}
OTHER = {"reg.other.test": ["198.51.100.20", "2001:db8:100::20"]}
UNKNOWN4, UNKNOWN6 = "198.51.100.30", "2001:db8:100::30"
A4, A6 = ALLOWED["reg.allowed.test"]
B4, B6 = OTHER["reg.other.test"]
FLAVOURS = ("legacy", "nft")
SAVE_TOOLS = ("iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save", "ip6tables-nft-save")


# ---- helpers ----------------------------------------------------------------------------------


# The jumps as iptables-save prints them: DNS chains only for port 53, the main chains only for
# packets that are not part of an established connection.
OUT_DNS_JUMPS = ["-p udp -m udp --dport 53 -j RAMFW-DNS-OUT", "-p tcp -m tcp --dport 53 -j RAMFW-DNS-OUT"]
IN_DNS_JUMPS = ["-p udp -m udp --sport 53 -j RAMFW-DNS-IN", "-p tcp -m tcp --sport 53 -j RAMFW-DNS-IN"]
OUT_JUMP = "-m conntrack ! --ctstate RELATED,ESTABLISHED -j RAMFW-OUT"
FWD_JUMPS = [*OUT_DNS_JUMPS, *IN_DNS_JUMPS, "-m conntrack ! --ctstate RELATED,ESTABLISHED -j RAMFW-FWD"]


def desired(text: str, names: dict[str, list[str]] | None = None, snoop: str = "off", ttl: int = 300):
    """A DesiredState from a policy text and name -> addresses (what DNS would have taught)."""
    now = 1000.0
    snapshot = {name: {ip: now + ttl for ip in ips} for name, ips in (names or {}).items()}
    return plan(parse_policy(text, "test-policy"), snapshot, now, (DNS4, DNS6), snoop)


ALLOW = 'allow = ["reg.allowed.test"]'


def run(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    with netns.entered(ns):
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"{argv} failed: {p.stderr}")
    return p


def normalize(text: str) -> str:
    out = []
    for line in text.splitlines():
        if line.startswith("#") or line.startswith("Size in memory"):
            continue
        line = re.sub(r"\[\d+:\d+\]", "[0:0]", line)
        line = re.sub(r"packets \d+ bytes \d+", "packets N bytes N", line)
        line = re.sub(r" timeout \d+$", " timeout N", line)  # ipset member countdowns
        line = re.sub(r" initval 0x[0-9a-f]+", "", line)  # random per set (a swap makes a new one)
        out.append(line.rstrip())
    return "\n".join(out)


def snapshot(ns: str) -> str:
    """Everything firewall-ish in the namespace: both xtables flavours, ipsets, nf_tables."""
    parts = []
    for tool in SAVE_TOOLS:
        parts.append(f"== {tool}\n{normalize(run(ns, tool).stdout)}")
    parts.append(f"== ipset list\n{normalize(run(ns, 'ipset', 'list').stdout)}")
    parts.append(f"== nft list ruleset\n{normalize(run(ns, 'nft', 'list', 'ruleset').stdout)}")
    return "\n".join(parts)


def save_rules(ns: str, flavour: str, family: int) -> dict[str, list[str]]:
    """chain -> rule arguments, from <flavour>-save of the filter table."""
    dump = savetext.parse_save(run(ns, f"{flavours.TOOL[(flavour, family)]}-save").stdout).get("filter", savetext.TableDump())
    return {c: [a for a, _p, _b in dump.rules.get(c, [])] for c in dump.chains}


def xt(ns: str, flavour: str, family: int, *args: str) -> None:
    run(ns, flavours.TOOL[(flavour, family)], *args)


def assert_refused_fast(tb, ip, port=443):
    r = tb.connect(ip, port)
    assert not r.ok and r.error == "ECONNREFUSED", (ip, r)
    # a reject answers at once; a drop would run into the 2 s connect timeout
    assert r.elapsed < 1.0, f"{ip}: refused after {r.elapsed:.3f}s, not at once"


@pytest.fixture
def net(testbed):
    testbed.set_names({**ALLOWED, **OTHER}, ttl=60)
    for ip in (A4, A6, B4, B6, UNKNOWN4, UNKNOWN6):
        testbed.serve_tcp(ip, 443)
    return testbed


@pytest.fixture(params=FLAVOURS)
def flavour(request):
    return request.param


@pytest.fixture
def backend(net, flavour):
    b = IptablesBackend(net.client, flavour=flavour)
    try:
        yield b
    finally:
        try:
            b.destroy()
        finally:
            b.close()


# ---- flavour choice -----------------------------------------------------------------------------


def test_probe_says_which_flavour_and_why(net):
    p = IptablesBackend.probe(net.client)
    assert p.usable, p.reason
    assert p.reason.startswith(f"iptables-{flavours.system_flavour()}: no iptables rules yet"), p.reason
    # Rules already in iptables-legacy: follow them.
    xt(net.client, "legacy", 4, "-N", "ADMIN-RULES")
    p = IptablesBackend.probe(net.client)
    assert p.usable and p.features["legacy"] and p.reason.startswith("iptables-legacy: the namespace's existing iptables rules"), p.reason
    assert "python-iptables" in p.reason
    # Docker's chains win over other rules: here Docker (as on Debian) uses iptables-nft.
    xt(net.client, "nft", 4, "-N", "DOCKER-USER")
    p = IptablesBackend.probe(net.client)
    assert p.usable and not p.features["legacy"] and p.reason.startswith("iptables-nft: Docker's chains are there"), p.reason
    # Once ramfw is installed somewhere, it stays there.
    b = IptablesBackend(net.client, flavour="legacy")
    try:
        b.apply(desired(ALLOW, ALLOWED))
        p = IptablesBackend.probe(net.client)
        assert p.features["legacy"] and "ramfw's chains are already there" in p.reason, p.reason
        fresh = IptablesBackend(net.client)  # auto: finds the installed flavour
        assert fresh.read_state().meta["flavour"] == "legacy"
        assert fresh.read_state().where.startswith("iptables-legacy -S RAMFW-OUT")
        fresh.close()
    finally:
        b.destroy()
        b.close()


def test_choose_flavour_refuses_clearly_when_the_flavour_cannot_be_driven():
    facts = flavours.Facts(False, {"legacy": False, "nft": True}, {"legacy": False, "nft": False}, {"legacy": True, "nft": False}, {"legacy": True, "nft": False}, "nft")
    choice, why = flavours.choose_flavour(facts)
    assert choice is None
    assert why == "Docker's chains are there (iptables-legacy), but this kernel has no legacy xtables (ip_tables)"


# ---- enforcement ------------------------------------------------------------------------------


def test_allowlist_with_real_packets(net, backend, flavour):
    for ip in (A4, A6, B4, B6, UNKNOWN4):
        assert net.connect(ip, 443).ok, f"testbed broken: {ip} unreachable before ramfw"
    backend.apply(desired(ALLOW, ALLOWED))
    for ip in (A4, A6):
        r = net.connect(ip, 443)
        assert r.ok and r.reply.endswith(f"ok {ip} 443\n".encode()), (ip, r)
    for ip in (B4, B6, UNKNOWN4, UNKNOWN6):
        assert_refused_fast(net, ip)
    # DNS to the trusted resolver still works, for names allowed or not, over both families
    assert net.resolve("reg.other.test") == [B4]
    assert net.resolve("reg.allowed.test", "AAAA") == [A6]
    r = net.query("reg.other.test", "AAAA", server=DNS6)
    assert [rd.to_text() for rr in r.answer for rd in rr] == [B6]
    # loopback stays open
    with netns.entered(net.client):
        srv = socket.create_server(("127.0.0.1", 0))
    with srv, netns.entered(net.client):
        socket.create_connection(srv.getsockname(), timeout=1).close()
    state = backend.read_state()
    assert state.installed and state.backend == "iptables" and state.meta["flavour"] == flavour
    assert state.where == f"{flavours.TOOL[(flavour, 4)]} -S RAMFW-OUT; {flavours.TOOL[(flavour, 6)]} -S RAMFW-OUT; ipset list -t (sets ramfw-*)"
    assert state.meta["mode"] == "allowlist"
    assert set(state.sets) == {"allow4", "allow6"}
    assert set(state.sets["allow4"]) == {A4} and set(state.sets["allow6"]) == {A6}
    assert 0 < state.sets["allow4"][A4] <= 300
    assert state.counters["refuse_output"]["packets"] >= 4  # one SYN each for B4, B6, UNKNOWN4/6
    assert "refuse_forward" not in state.counters


def test_denylist_blocks_only_listed(net, backend):
    backend.apply(desired('mode = "denylist"\nblock = ["reg.other.test"]', OTHER))
    for ip in (A4, A6, UNKNOWN4, UNKNOWN6):
        assert net.connect(ip, 443).ok, ip
    for ip in (B4, B6):
        assert_refused_fast(net, ip)
    assert set(backend.read_state().sets) == {"block4", "block6"}
    # back to an allowlist: the block sets go, the allow sets come
    backend.apply(desired(ALLOW, ALLOWED))
    assert set(backend.read_state().sets) == {"allow4", "allow6"}
    assert "ramfw-block4" not in run(net.client, "ipset", "list", "-n").stdout
    assert net.connect(A4, 443).ok
    assert_refused_fast(net, UNKNOWN4)


def test_refused_attempts_reach_the_audit_log_group(net, backend):
    backend.apply(desired(ALLOW, ALLOWED))
    with netns.entered(net.client):
        audit = NfLog(AUDIT_LOG_GROUP)
    try:
        assert_refused_fast(net, B4)
        assert_refused_fast(net, B6)
        got = []
        deadline = time.monotonic() + 2
        while len(got) < 2 and time.monotonic() < deadline:
            got += audit.receive(timeout=0.2)
    finally:
        audit.close()
    assert {p.prefix for p in got} == {"ramfw-block-out "}
    assert {p.hw_protocol for p in got} == {0x0800, 0x86DD}


def test_reapply_is_idempotent_and_matches_render(net, backend, flavour):
    d = desired(ALLOW + '\n[network]\nallow_cidrs = ["203.0.113.0/25", "2001:db8:113::/64"]\n[scope]\nforward = true', ALLOWED, snoop="queue")
    backend.apply(d)
    first = snapshot(net.client)
    backend.apply(d)
    assert snapshot(net.client) == first
    # render() (what dry-run prints) is exactly what the kernel holds, rule for rule.
    text = backend.render(d)
    sections = text.split("# ip6tables-restore")
    for family, section in ((4, sections[0]), (6, sections[1])):
        rendered: dict[str, list[str]] = {}
        for line in section.splitlines():
            m = re.match(r"\[\d+:\d+\] -A (\S+) (.*)", line)
            if m:
                rendered.setdefault(m.group(1), []).append(m.group(2))
        installed = save_rules(net.client, flavour, family)
        for chain, rules in rendered.items():
            if chain != render.META:
                assert installed[chain] == rules, (family, chain)
        assert installed["OUTPUT"][:3] == [*OUT_DNS_JUMPS, OUT_JUMP]
        assert installed["INPUT"][:2] == IN_DNS_JUMPS
        assert installed["FORWARD"][:5] == FWD_JUMPS
    assert "create ramfw-allow4 hash:ip family inet hashsize 1024 maxelem 1048576 timeout 0" in text
    assert f"add ramfw-allow4 {A4} timeout 300" in text


def test_apply_replaces_without_a_window(net, backend):
    """Alternate between two desired states that both allow A and refuse B while probing both
    continuously: neither the set swap nor the rule commit lets B through or refuses A."""
    d1 = desired(ALLOW, ALLOWED)
    d2 = desired('allow = ["reg.allowed.test", "third.test"]\n[network]\nallow_cidrs = ["198.51.100.40/32"]', {**ALLOWED, "third.test": ["198.51.100.41"]})
    backend.apply(d1)
    def replace_30_times():
        for i in range(30):
            backend.apply(d2 if i % 2 == 0 else d1)

    results = probe_during(net, A4, B4, 443, replace_30_times)
    assert results["a_fail"] == 0 and results["b_ok"] == 0, results
    assert results["a_ok"] > 20, results


def test_failed_apply_leaves_previous_state(net, backend):
    backend.apply(desired(ALLOW, ALLOWED))
    before = snapshot(net.client)
    bad = desired('allow = ["reg.other.test"]\n[scope]\ncgroup = "rt-no-such.slice/x.service"', OTHER)
    with pytest.raises(BackendError) as exc:
        backend.apply(bad)
    assert "\n" not in str(exc.value) and "refused ramfw's rules" in str(exc.value), str(exc.value)
    assert snapshot(net.client) == before
    assert net.connect(A4, 443).ok
    assert_refused_fast(net, B4)


def test_add_elements_is_immediate_and_fast(net, backend, flavour):
    backend.apply(desired(ALLOW, ALLOWED))
    assert_refused_fast(net, UNKNOWN4)
    assert_refused_fast(net, UNKNOWN6)
    backend.add_elements({"allow4": [Element(UNKNOWN4, 60)], "allow6": [Element(UNKNOWN6, 60)]})
    assert net.connect(UNKNOWN4, 443).ok and net.connect(UNKNOWN6, 443).ok
    # refresh: a second add of the same IP resets its timeout (ipset -exist semantics)
    backend.add_elements({"allow4": [Element(UNKNOWN4, 5000)]})
    assert backend.read_state().sets["allow4"][UNKNOWN4] > 4000
    backend.remove_elements({"allow4": [UNKNOWN4, "100.64.0.1"], "allow6": [UNKNOWN6]})  # a missing one is fine
    assert_refused_fast(net, UNKNOWN4)
    assert_refused_fast(net, UNKNOWN6)

    # Large sets: 10,000 then 100,000 elements applied whole, then single adds into the 100,000 set
    # (their speed is scripts/bench/bench_backends.py's to measure; here: they land, nothing else moves).
    for n in (10_000, 100_000):
        bulk = {"reg.allowed.test": [A4, A6] + [str(ipaddress.IPv4Address(0x64400000 + i)) for i in range(n // 2)]
                + [str(ipaddress.IPv6Address(0x20010DB8_0042_0000_0000_0000_0000_0000 + i)) for i in range(n // 2)]}  # fmt: skip
        backend.apply(desired(ALLOW, bulk))
    assert net.connect(A4, 443).ok and net.connect(A6, 443).ok
    assert_refused_fast(net, B4)
    for i in range(3000):
        ip = str(ipaddress.IPv4Address(0x64600000 + i % 2000))  # 2000 new ones, then refreshes
        backend.add_elements({"allow4": [Element(ip, 120)]})
    sizes = {k: len(v) for k, v in backend.read_state().sets.items()}
    assert sizes == {"allow4": 50_001 + 2000, "allow6": 50_001}, sizes


def test_dns_hooks_queue_with_bypass_and_log(net, backend):
    # queue mode, nobody listening: --queue-bypass lets answers through
    backend.apply(desired(ALLOW, ALLOWED, snoop="queue"))
    assert net.resolve("reg.other.test") == [B4]
    assert backend.read_state().counters["dns_answers"]["packets"] >= 1
    # queue mode with a listener: the answer is held until the verdict
    with netns.entered(net.client):
        q = NfQueue(DNS_QUEUE_NUM)
    try:
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", net.resolve("reg.allowed.test")))
        t.start()
        pkts = []
        deadline = time.monotonic() + 3
        while not pkts and time.monotonic() < deadline:
            pkts = q.receive(timeout=0.2)
        assert pkts, "the DNS answer was not queued"
        assert t.is_alive(), "the answer reached the resolver before its verdict"
        for p in pkts:
            q.verdict(p.packet_id, True)
        t.join(3)
        assert out["r"] == [A4]
    finally:
        q.close()
    # log mode: questions and answers are copied to their NFLOG groups; refused TCP is dropped
    backend.apply(desired(ALLOW, ALLOWED, snoop="log"))
    with netns.entered(net.client):
        answers, questions = NfLog(DNS_LOG_GROUP), NfLog(DNS_QUERY_GROUP)
    try:
        assert net.resolve("reg.other.test") == [B4]
        assert answers.receive(timeout=2) and questions.receive(timeout=2)
    finally:
        answers.close()
        questions.close()
    r = net.connect(B4, 443, timeout=0.3)
    assert not r.ok and r.error == "timeout", r


def cgroup2_root() -> Path:
    for line in Path("/proc/mounts").read_text().splitlines():
        dev, mnt, fstype, *_ = line.split()
        if fstype == "cgroup2":
            return Path(mnt)
    pytest.fail("no cgroup2 hierarchy mounted: the cgroup scope cannot be tested here")


def test_cgroup_scope_restricts_only_that_cgroup(net, backend):
    cg = f"rt-{os.getpid()}-cg"
    path = cgroup2_root() / cg
    path.mkdir()
    try:
        backend.apply(desired(ALLOW + f'\n[scope]\ncgroup = "{cg}"', ALLOWED))
        assert net.connect(B4, 443).ok  # this process is outside the cgroup: bypassed
        code = (
            "import errno, socket, sys\n"
            f"open({str(path / 'cgroup.procs')!r}, 'w').write('0')\n"
            "s = socket.socket()\ns.settimeout(2)\n"
            f"print(errno.errorcode.get(s.connect_ex(({B4!r}, 443)), 'ok'))\n"
        )
        with netns.entered(net.client):
            child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=10)
        assert child.stdout.strip() == "ECONNREFUSED", child
    finally:
        for _ in range(50):
            try:
                path.rmdir()
                break
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
                time.sleep(0.05)


# ---- invariants, coexistence, teardown --------------------------------------------------------


def test_check_names_a_deleted_jump_and_apply_repairs_it(net, backend, flavour):
    d = desired(ALLOW, ALLOWED)
    backend.apply(d)
    assert backend.check(d) == []
    xt(net.client, flavour, 4, "-D", "OUTPUT", *OUT_JUMP.split())
    assert net.connect(B4, 443).ok  # the hole is real
    assert backend.check(d) == [f"jump from OUTPUT to RAMFW-OUT ({flavours.TOOL[(flavour, 4)]}) is missing"]
    backend.apply(d)
    assert backend.check(d) == []
    assert_refused_fast(net, B4)
    # other drift: a foreign rule ahead of ours, a changed chain, a deleted set, another policy
    xt(net.client, flavour, 6, "-I", "OUTPUT", "1", "-j", "ACCEPT")
    xt(net.client, flavour, 4, "-A", "RAMFW-OUT", "-j", "ACCEPT")
    problems = backend.check(d)
    assert f"jump from OUTPUT to RAMFW-OUT ({flavours.TOOL[(flavour, 6)]}) is not rule 1" in problems
    want = len(render.table_part(d, 4, links=backend.links).chains["RAMFW-OUT"])
    assert f"chain RAMFW-OUT ({flavours.TOOL[(flavour, 4)]}) has {want + 1} rules instead of {want}" in problems
    other = desired('allow = ["reg.other.test"]', OTHER)
    assert any("holds policy" in p for p in backend.check(other))
    backend.apply(d)
    assert backend.check(d) == []


def test_docker_user_chain_is_used_and_repaired(net, backend, flavour):
    ns = net.client
    d = desired(ALLOW + "\n[scope]\nforward = true", ALLOWED, snoop="log")
    # Docker present before ramfw (IPv4 only, as Docker without ipv6 enabled)
    xt(ns, flavour, 4, "-N", "DOCKER-USER")
    xt(ns, flavour, 4, "-A", "DOCKER-USER", "-j", "RETURN")
    xt(ns, flavour, 4, "-I", "FORWARD", "1", "-j", "DOCKER-USER")
    backend.apply(d)
    v4, v6 = save_rules(ns, flavour, 4), save_rules(ns, flavour, 6)
    assert v4["DOCKER-USER"] == [*FWD_JUMPS, "-j RETURN"]
    assert v4["FORWARD"] == ["-j DOCKER-USER"]
    assert v6["FORWARD"][:5] == FWD_JUMPS
    assert backend.check(d) == []
    # dockerd restart: DOCKER-USER flushed and its RETURN put back
    xt(ns, flavour, 4, "-F", "DOCKER-USER")
    xt(ns, flavour, 4, "-A", "DOCKER-USER", "-j", "RETURN")
    tool = flavours.TOOL[(flavour, 4)]
    assert backend.check(d) == [f"jump from DOCKER-USER to {c} ({tool}) is missing" for c in ("RAMFW-DNS-OUT", "RAMFW-DNS-IN", "RAMFW-FWD")]
    backend.apply(d)
    assert backend.check(d) == []
    assert save_rules(ns, flavour, 4)["DOCKER-USER"] == [*FWD_JUMPS, "-j RETURN"]
    # Docker appearing after ramfw (IPv6 here): the jump must move from FORWARD to DOCKER-USER
    xt(ns, flavour, 6, "-N", "DOCKER-USER")
    xt(ns, flavour, 6, "-A", "DOCKER-USER", "-j", "RETURN")
    xt(ns, flavour, 6, "-I", "FORWARD", "1", "-j", "DOCKER-USER")
    tool6 = flavours.TOOL[(flavour, 6)]
    problems = backend.check(d)
    assert f"jump from DOCKER-USER to RAMFW-FWD ({tool6}) is missing" in problems
    assert f"FORWARD ({tool6}) still jumps to RAMFW-DNS-OUT, RAMFW-DNS-IN, RAMFW-FWD: it belongs in DOCKER-USER" in problems
    backend.apply(d)
    assert backend.check(d) == []
    v6 = save_rules(ns, flavour, 6)
    assert v6["FORWARD"] == ["-j DOCKER-USER"]
    assert v6["DOCKER-USER"][-1] == "-j RETURN"
    # destroy leaves Docker's chains as Docker made them
    assert backend.destroy()
    for family in (4, 6):
        rules = save_rules(ns, flavour, family)
        assert rules["DOCKER-USER"] == ["-j RETURN"] and rules["FORWARD"] == ["-j DOCKER-USER"]
        assert not [c for c in rules if c.startswith("RAMFW-")]


def test_destroy_restores_everything_exactly(net, backend, flavour):
    ns = net.client
    # foreign rules, chains and sets in both flavours, created first
    for fl in FLAVOURS:
        for family in (4, 6):
            xt(ns, fl, family, "-N", f"FOREIGN-{fl.upper()}")
            xt(ns, fl, family, "-A", f"FOREIGN-{fl.upper()}", "-p", "tcp", "--dport", "9", "-j", "ACCEPT")
            xt(ns, fl, family, "-A", "OUTPUT", "-j", f"FOREIGN-{fl.upper()}")
            xt(ns, fl, family, "-A", "INPUT", "-p", "udp", "--dport", "9", "-j", "DROP")
    run(ns, "ipset", "create", "foreign4", "hash:ip", "timeout", "0")
    run(ns, "ipset", "add", "foreign4", "198.51.100.200")  # set content only, never a destination
    xt(ns, flavour, 4, "-A", "FOREIGN-" + flavour.upper(), "-m", "set", "--match-set", "foreign4", "dst", "-j", "ACCEPT")
    before = snapshot(ns)
    backend.apply(desired(ALLOW + "\n[scope]\nforward = true", ALLOWED, snoop="queue"))
    assert snapshot(ns) != before
    assert_refused_fast(net, B4)
    assert backend.destroy() is True
    assert snapshot(ns) == before
    assert backend.destroy() is False
    assert snapshot(ns) == before
    assert net.connect(B4, 443).ok and net.connect(B6, 443).ok


def test_destroy_in_a_fresh_namespace(net, backend, flavour):
    """iptables-nft tables ramfw created are deleted again; a legacy table, once instantiated,
    stays (empty) until the namespace dies: the kernel offers no way to remove it."""
    before = snapshot(net.client)
    backend.apply(desired(ALLOW, ALLOWED))
    backend.destroy()
    after = snapshot(net.client)
    if flavour == "nft":
        assert after == before
    else:
        for tool in ("iptables-legacy-save", "ip6tables-legacy-save"):
            assert normalize(run(net.client, tool).stdout).splitlines() == [
                "*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", "COMMIT",
            ]  # fmt: skip
        strip = lambda s: re.sub(r"== ip6?tables-legacy-save\n(.*?)(?=\n==)", "", s, flags=re.S)  # noqa: E731
        assert strip(after) == strip(before)


def test_render_is_pure(flavour):
    """render() needs no namespace and no kernel (dry-run)."""
    b = IptablesBackend("rt-no-such-namespace", flavour=flavour)
    text = b.render(desired(ALLOW + "\n[scope]\nforward = true", ALLOWED, snoop="log"))
    assert "-A RAMFW-REFUSE-OUT -j DROP" in text  # log mode: drop so TCP retries
    assert '-A RAMFW-REFUSE-FWD -j NFLOG --nflog-prefix "ramfw-block-fwd " --nflog-group 3731' in text
    # no routes known without a namespace: answers count at least never when they come over lo
    assert f"-A RAMFW-DNS-IN -s {DNS4}/32 ! -i lo -p udp -m udp --sport 53 -j NFLOG --nflog-group {DNS_LOG_GROUP}" in text
    assert f"-A RAMFW-DNS-IN -s {DNS6}/128 ! -i lo -p tcp -m tcp --sport 53 -j NFLOG --nflog-group {DNS_LOG_GROUP}" in text
    assert f"add ramfw-allow6 {ALLOWED['reg.allowed.test'][1]} timeout 300" in text


def test_legacy_without_python_iptables_writes_the_same_rules(net):
    """When python-iptables is missing, iptables-legacy-restore writes the identical ruleset."""
    d = desired(ALLOW + "\n[scope]\nforward = true", ALLOWED, snoop="queue")
    shots = []
    for use in (True, False):
        b = IptablesBackend(net.client, flavour="legacy", use_python_iptables=use)
        try:
            b.apply(d)
            b.apply(d)
            assert b.check(d) == []
            assert_refused_fast(net, B4)
            assert net.connect(A4, 443).ok
            shots.append(snapshot(net.client))
            assert b.destroy()
        finally:
            b.close()
    assert shots[0] == shots[1]


def test_switching_flavour_moves_the_rules(net):
    d = desired(ALLOW, ALLOWED)
    legacy, nft = IptablesBackend(net.client, flavour="legacy"), IptablesBackend(net.client, flavour="nft")
    try:
        legacy.apply(d)
        assert nft.check(d)[0] == "ramfw's chains are in iptables-legacy, not iptables-nft"
        nft.apply(d)
        assert nft.check(d) == []
        assert not [c for c in save_rules(net.client, "legacy", 4) if c.startswith("RAMFW-")]
        assert IptablesBackend(net.client).read_state().meta["flavour"] == "nft"
        assert_refused_fast(net, B4)
        assert net.connect(A4, 443).ok
    finally:
        nft.destroy()
        legacy.close()
        nft.close()


# ---- jumps: conditioned, and the earlier unconditional ones replaced -------------------------------


def jumps_to_ours(ns: str, flavour: str, family: int) -> dict[str, list[str]]:
    """Foreign chain -> every rule in it that jumps to one of ramfw's chains."""
    rules = save_rules(ns, flavour, family)
    return {c: [a for a in r if render.is_ours(render.jump_target(a))] for c, r in rules.items() if not render.is_ours(c)}


def test_upgrade_from_unconditional_jumps_leaves_one_jump_each(net, flavour):
    """An earlier ramfw wrote bare `-j RAMFW-X` jumps. Written here by hand (with a foreign rule
    between them), an apply by this version replaces each with the conditioned jump(s), leaves
    no old one behind, enforces, and destroy then removes every jump."""
    ns = net.client
    d = desired(ALLOW + "\n[scope]\nforward = true", ALLOWED, snoop="queue")
    old = {"OUTPUT": ["RAMFW-DNS-OUT", "RAMFW-OUT"], "INPUT": ["RAMFW-DNS-IN"], "FORWARD": ["RAMFW-DNS-OUT", "RAMFW-DNS-IN", "RAMFW-FWD"]}
    for family in (4, 6):
        for chain in ("RAMFW-DNS-OUT", "RAMFW-DNS-IN", "RAMFW-OUT", "RAMFW-FWD"):
            xt(ns, flavour, family, "-N", chain)
        xt(ns, flavour, family, "-A", "RAMFW-OUT", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
        xt(ns, flavour, family, "-A", "OUTPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT")  # foreign
        for anchor, targets in old.items():
            for pos, target in enumerate(targets):
                xt(ns, flavour, family, "-I", anchor, str(pos + 1), "-j", target)
    assert jumps_to_ours(ns, flavour, 4)["OUTPUT"] == ["-j RAMFW-DNS-OUT", "-j RAMFW-OUT"]
    backend = IptablesBackend(ns, flavour=flavour)
    try:
        assert f"jump from OUTPUT to RAMFW-OUT ({flavours.TOOL[(flavour, 4)]}) is not the one ramfw writes (an earlier version's?)" in backend.check(d)
        backend.apply(d)
        for family in (4, 6):
            jumps = jumps_to_ours(ns, flavour, family)
            assert jumps["OUTPUT"] == [*OUT_DNS_JUMPS, OUT_JUMP], family
            assert jumps["INPUT"] == IN_DNS_JUMPS, family
            assert jumps["FORWARD"] == FWD_JUMPS, family
            assert save_rules(ns, flavour, family)["OUTPUT"][-1] == "-p tcp -m tcp --dport 9 -j ACCEPT"
        assert backend.check(d) == []
        assert net.connect(A4, 443).ok and net.connect(A6, 443).ok
        assert_refused_fast(net, B4)
        assert_refused_fast(net, B6)
        backend.apply(d)  # and a second apply changes nothing
        assert jumps_to_ours(ns, flavour, 4)["OUTPUT"] == [*OUT_DNS_JUMPS, OUT_JUMP]
        assert backend.destroy()
        for family in (4, 6):
            assert not any(jumps_to_ours(ns, flavour, family).values()), family
            assert save_rules(ns, flavour, family)["OUTPUT"] == ["-p tcp -m tcp --dport 9 -j ACCEPT"]
    finally:
        backend.destroy()
        backend.close()


def test_established_packets_do_not_enter_ramfw_chains(net, backend, flavour):
    """The point of the conditioned jump: of a connection's packets only the first (the SYN)
    crosses the jump to RAMFW-OUT; the rest never reach ramfw's chains (and their counters)."""
    backend.apply(desired(ALLOW, ALLOWED))
    for _ in range(3):
        r = net.connect(A4, 443)
        assert r.ok, r
    dump = savetext.parse_save(run(net.client, f"{flavours.TOOL[(flavour, 4)]}-save", "-c").stdout)["filter"]
    jump = [(p, a) for a, p, _b in dump.rules["OUTPUT"] if render.jump_target(a) == "RAMFW-OUT"]
    assert jump == [(3, OUT_JUMP)]
    established = dump.rules["RAMFW-OUT"][0]
    assert established[0] == "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" and established[1] == 0
