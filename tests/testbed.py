"""The testbed: a client namespace and an "internet" namespace joined by a veth pair.

    client (rt-<pid>-<tag><n>-cli)                 inet (rt-<pid>-<tag><n>-inet)
      eth0 203.0.113.2/25, 2001:db8:113::2/64  <->   veth-cli 203.0.113.1/25, 2001:db8:113::1/64
      default via 203.0.113.1 / 2001:db8:113::1      lo: 198.51.100.53/32, 2001:db8:100::53/128
      /etc/netns/<client>/resolv.conf                    (dnsmasq) + service addresses (/32, /128)
                                                     + one tests/servers.py TCP server (lazy)

Nothing is ever created in, or linked to, the machine's own (root) namespace: the veth pair is
created from inside the client namespace with its peer placed directly in the inet namespace.
Every process is started through spawn() (its own session) and killed by pid/process group at
stop(); stop() also runs when start() fails halfway.

Use:
    with Testbed() as tb:
        tb.set_names({"reg.example.test": ["198.51.100.10", "2001:db8:100::10"]})
        tb.serve_tcp("198.51.100.10", 5000)
        assert tb.connect("198.51.100.10", 5000).ok
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from ramfw.kernel import netns

DNS4 = "198.51.100.53"
DNS6 = "2001:db8:100::53"

CLIENT4, CLIENT6 = "203.0.113.2", "2001:db8:113::2"
INET4, INET6 = "203.0.113.1", "2001:db8:113::1"
CLIENT_LINK = "eth0"  # the client's interface (towards inet)
INET_LINK = "veth-cli"  # inet's interface (towards the client)

SERVICE_NETS = (ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("2001:db8:100::/64"))
# Addresses a DNS answer may carry: documentation ranges only, never 192.0.2.0/24.
ANSWER_NETS = (
    ipaddress.ip_network("198.51.100.0/24"),
    ipaddress.ip_network("203.0.113.0/24"),
    ipaddress.ip_network("2001:db8::/32"),
)

SERVERS_PY = Path(__file__).with_name("servers.py")
KEEP_ENV = "TESTBED_KEEP"  # set to 1 to keep run dirs (dnsmasq log, configs) for debugging

_counter = itertools.count()
_NAME_RE = re.compile(r"^(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?$")


class TestbedError(RuntimeError):
    """Setup, readiness or teardown of the testbed failed (message says what and where)."""

    __test__ = False


class CommandFailed(subprocess.CalledProcessError):
    """CalledProcessError whose message includes the command's stdout/stderr."""

    def __str__(self) -> str:
        return (
            f"command {self.cmd!r} exited {self.returncode}\n"
            f"--- stdout ---\n{self.stdout or ''}--- stderr ---\n{self.stderr or ''}"
        )


@dataclass
class ConnectResult:
    ok: bool
    error: str | None  # errno name ("ECONNREFUSED", "EHOSTUNREACH", "EACCES", ...) or "timeout"
    elapsed: float  # seconds spent in connect()
    reply: bytes = b""


def require_root() -> None:
    """Fail (never skip) with a clear message when not root: these tests must run."""
    if os.geteuid() != 0:
        pytest.fail(
            "network-namespace tests must run as root (they create namespaces, veth links and "
            "nftables rules inside them); run them with sudo or in the root CI job",
            pytrace=False,
        )


def _ip(*args: str, input: str | None = None) -> None:
    p = subprocess.run(["ip", *args], input=input, capture_output=True, text=True)
    if p.returncode != 0:
        raise CommandFailed(p.returncode, ["ip", *args], p.stdout, (input or "") + p.stderr)


def _write_sysctl(ns: str, key: str, value: str) -> None:
    # /proc/sys/net is resolved against the calling thread's network namespace.
    with netns.entered(ns):
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(value)


def _dns_probe(ns: str, server: str, deadline: float, proc: subprocess.Popen | None = None) -> dns.message.Message:
    """Ask `server` (from inside ns) for CHAOS TXT version.bind until it answers or deadline."""
    q = dns.message.make_query("version.bind", dns.rdatatype.TXT, dns.rdataclass.CH)
    wire = q.to_wire()
    fam = socket.AF_INET6 if ":" in server else socket.AF_INET
    last: Exception | None = None
    while True:
        if proc is not None and proc.poll() is not None:
            log = getattr(proc, "log_path", None)
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise TestbedError(f"dnsmasq exited with status {proc.returncode} before answering:\n{tail}")
        with netns.entered(ns):
            s = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            s.settimeout(0.05)
            s.connect((server, 53))  # connected: an ICMP port unreachable shows up as ECONNREFUSED
            s.send(wire)
            while True:
                r = dns.message.from_wire(s.recv(65535))
                if r.id == q.id:
                    return r
        except (OSError, dns.exception.DNSException) as e:
            last = e
        finally:
            s.close()
        if time.monotonic() > deadline:
            raise TestbedError(f"DNS server {server} not answering from namespace {ns}: {last!r}")
        time.sleep(0.003)


def _normalize(text: str) -> str:
    out = []
    for line in text.splitlines():
        if line.startswith("#"):  # iptables-save banners carry dates / warnings
            continue
        line = re.sub(r"\[\d+:\d+\]", "[0:0]", line)  # chain policy counters
        line = re.sub(r"counter packets \d+ bytes \d+", "counter", line)
        line = re.sub(r"\b(packets|bytes) \d+", r"\1 N", line)
        line = re.sub(r"\bexpires \S+", "", line)
        line = re.sub(r"\btimeout \d+", "timeout N", line)
        line = re.sub(r"\b(valid_lft|preferred_lft) \S+", "", line)
        if line.startswith("Size in memory:"):
            continue
        out.append(line.rstrip())
    return "\n".join(out)


def _read_only(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return "[missing]"
    return p.stdout + (f"\n[stderr] {p.stderr}" if p.stderr.strip() else "") + f"\n[rc {p.returncode}]"


def probe_during(tb: "Testbed", allowed_ip: str, refused_ip: str, port: int, action) -> dict:
    """Connect to allowed_ip and refused_ip from the client, over and over, while action() runs
    (ruleset replacements); returns how many attempts went which way."""
    import threading

    stop = threading.Event()
    results = {"a_fail": 0, "a_ok": 0, "b_ok": 0, "b_refused": 0}

    def probe():
        while not stop.is_set():
            ra, rb = tb.connect(allowed_ip, port, timeout=1), tb.connect(refused_ip, port, timeout=1)
            results["a_ok" if ra.ok else "a_fail"] += 1
            results["b_ok" if rb.ok else "b_refused"] += 1

    t = threading.Thread(target=probe)
    t.start()
    try:
        action()
    finally:
        stop.set()
        t.join()
    return results


def kernel_ruleset(ns: str) -> str:
    """Everything a firewall tool could have left in `ns`: nft ruleset, iptables-save of both
    flavours and families, ipset list. Counters, element countdowns and comments are dropped so
    two snapshots of the same rules compare equal."""
    parts = []
    for argv in (["nft", "list", "ruleset"], ["iptables-nft-save"], ["ip6tables-nft-save"],
                 ["iptables-legacy-save"], ["ip6tables-legacy-save"], ["ipset", "list"]):
        proc = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True)
        parts.append(f"== {' '.join(argv)} (rc {proc.returncode})\n{_normalize(proc.stdout)}")
    text = "\n".join(parts)
    text = re.sub(r" expires \S+", "", text)
    text = re.sub(r"(?m)^(Size in memory|References|Number of entries):.*$", "", text)
    text = re.sub(r" initval 0x[0-9a-f]+", "", text)  # a rebuilt set hashes with a new seed
    return re.sub(r" timeout \d+", " timeout N", text)


def root_ns_fingerprint() -> str:
    """Describe the root namespace's firewall and addressing, read-only, counters/timers removed.

    Covers nft ruleset, iptables/ip6tables (legacy and nft backends), ipset, link names and
    addresses. Compare two fingerprints to assert a test did not touch the root namespace.
    Must be called from the process's own (root) namespace, not inside netns.entered().
    """
    if netns.current_ns_id() != os.readlink("/proc/self/ns/net"):
        raise TestbedError("root_ns_fingerprint() called from outside the root network namespace")
    parts = []
    for argv in (
        ["nft", "-s", "list", "ruleset"],
        ["iptables-legacy-save"],
        ["ip6tables-legacy-save"],
        ["iptables-nft-save"],
        ["ip6tables-nft-save"],
        ["ipset", "list"],
    ):
        parts.append(f"== {' '.join(argv)}\n{_normalize(_read_only(argv))}")
    # Links (name, type, kind) and addresses; states, flags, counters and timers left out.
    try:
        links = json.loads(subprocess.run(["ip", "-j", "-d", "link", "show"], capture_output=True, text=True).stdout)
        parts.append("== links\n" + "\n".join(
            f"{l.get('ifname')} {l.get('link_type')} {l.get('linkinfo', {}).get('info_kind', '')}" for l in links
        ))  # fmt: skip
        addrs = json.loads(subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True).stdout)
        parts.append("== addresses\n" + "\n".join(
            f"{a.get('ifname')} {i.get('local')}/{i.get('prefixlen')}" for a in addrs for i in a.get("addr_info", [])
        ))  # fmt: skip
    except (OSError, ValueError) as e:
        parts.append(f"== ip: unreadable: {e}")
    return "\n".join(parts) + "\n"


def nft_ruleset(ns: str) -> str:
    """`nft list ruleset` inside namespace ns."""
    argv = ["ip", "netns", "exec", ns, "nft", "list", "ruleset"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise CommandFailed(p.returncode, p.args, p.stdout, p.stderr)
    return p.stdout


def _check_in(ip: str, nets, what: str) -> str:
    addr = ipaddress.ip_address(ip)
    if not any(addr in n for n in nets):
        raise ValueError(f"{what} {ip} is outside {', '.join(map(str, nets))}")
    return str(addr)


class Testbed:
    """A client namespace and an 'internet' namespace joined by a veth pair (see module doc)."""

    # not a test class, despite the name (keeps pytest from collecting it)
    __test__ = False

    def __init__(self, tag: str = "t"):
        if not re.fullmatch(r"[a-z0-9]{1,8}", tag):
            raise ValueError(f"tag must be 1-8 of [a-z0-9], got {tag!r}")
        n = next(_counter)
        base = f"rt-{os.getpid()}-{tag}{n}"
        self.client: str = base + "-cli"
        self.inet: str = base + "-inet"
        self.run_dir: Path = Path("/nonexistent")  # set by start()
        self._created_ns: list[str] = []
        self._etc_dirs: list[Path] = []
        self._procs: list[subprocess.Popen] = []
        self._addresses: set[str] = set()
        self._dnsmasq: subprocess.Popen | None = None
        self._dns_config: tuple[dict, dict, int] = ({}, {}, 300)
        self._tcp: subprocess.Popen | None = None
        self._tcp_control: Path | None = None
        self._served: set[tuple[str, int]] = set()
        self._started = False
        self._live = False  # fully started and not stopped
        self._log_n = itertools.count()

    # -------------------------------------------------------------- lifecycle

    def __enter__(self) -> "Testbed":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "Testbed":
        if os.geteuid() != 0:
            raise PermissionError("Testbed needs root (it creates network namespaces)")
        if self._started:
            raise TestbedError("Testbed already started")
        self._started = True
        try:
            self._start()
        except BaseException:
            try:
                self.stop()
            except Exception as e:  # keep the original error; report the teardown problem too
                print(f"testbed: teardown after failed start also failed: {e}", file=sys.stderr)
            raise
        return self

    def _start(self) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix=self.client.removesuffix("-cli") + "-"))
        for ns in (self.client, self.inet):
            if netns.exists(ns):
                raise TestbedError(f"namespace {ns} already exists (stale from a crashed run?); not touching it")
        try:
            _ip("-batch", "-", input=f"netns add {self.client}\nnetns add {self.inet}\n")
        finally:
            self._created_ns = [ns for ns in (self.client, self.inet) if netns.exists(ns)]

        # Before any link exists: no DAD (addresses usable at once), IPv6 on, no RA/autoconf.
        for ns in (self.client, self.inet):
            for conf in ("all", "default"):
                _write_sysctl(ns, f"net.ipv6.conf.{conf}.disable_ipv6", "0")
                _write_sysctl(ns, f"net.ipv6.conf.{conf}.accept_dad", "0")
                _write_sysctl(ns, f"net.ipv6.conf.{conf}.accept_ra", "0")
                _write_sysctl(ns, f"net.ipv6.conf.{conf}.autoconf", "0")

        _ip(
            "-n", self.client, "-batch", "-",
            input=f"""\
link set lo up
link add {CLIENT_LINK} type veth peer name {INET_LINK} netns {self.inet}
link set {CLIENT_LINK} up
addr add {CLIENT4}/25 dev {CLIENT_LINK}
addr add {CLIENT6}/64 dev {CLIENT_LINK} nodad
route add default via {INET4} dev {CLIENT_LINK}
route add ::/0 via {INET6} dev {CLIENT_LINK}
""",
        )  # fmt: skip
        _ip(
            "-n", self.inet, "-batch", "-",
            input=f"""\
link set lo up
link set {INET_LINK} up
addr add {INET4}/25 dev {INET_LINK}
addr add {INET6}/64 dev {INET_LINK} nodad
addr add {DNS4}/32 dev lo
addr add {DNS6}/128 dev lo
""",
        )  # fmt: skip
        self._addresses |= {DNS4, DNS6}

        etc = Path("/etc/netns") / self.client
        etc.mkdir(parents=True, exist_ok=False)
        self._etc_dirs.append(etc)
        (etc / "resolv.conf").write_text(f"nameserver {DNS4}\n")

        self._start_dnsmasq()
        # Readiness and routing check for both families, from the client side.
        deadline = time.monotonic() + 5
        _dns_probe(self.client, DNS4, deadline, self._dnsmasq)
        _dns_probe(self.client, DNS6, deadline, self._dnsmasq)
        self._live = True

    def stop(self) -> None:
        """Idempotent full teardown: processes (by pid / own process group), namespaces,
        /etc/netns/<name>/, run dir. Raises TestbedError after doing all it can if anything
        could not be removed."""
        problems: list[str] = []
        self._live = False

        procs, self._procs = self._procs, []
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)  # own session: pgid == pid
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 2
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    problems.append(f"process {p.pid} ({p.args!r}) did not die")
        self._dnsmasq = self._tcp = None
        self._served.clear()

        created, self._created_ns = self._created_ns, []
        if created:
            p = subprocess.run(
                ["ip", "-force", "-batch", "-"],
                input="".join(f"netns del {ns}\n" for ns in created),
                capture_output=True,
                text=True,
            )
            left = [ns for ns in created if netns.exists(ns)]
            if left:
                problems.append(f"namespaces not deleted: {left}: {p.stderr.strip()}")
                self._created_ns = left

        dirs, self._etc_dirs = self._etc_dirs, []
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
            if d.exists():
                problems.append(f"could not remove {d}")
                self._etc_dirs.append(d)

        if self.run_dir.name.startswith("rt-") and self.run_dir.exists() and not os.environ.get(KEEP_ENV):
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if problems:
            raise TestbedError("testbed teardown incomplete: " + "; ".join(problems))

    @property
    def pids(self) -> list[int]:
        """Pids of processes started (and not yet reaped by stop()) in this testbed."""
        return [p.pid for p in self._procs]

    # -------------------------------------------------------------- processes

    def run(self, ns: str, *argv: str, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        """Run argv inside namespace ns (`ip netns exec`, so /etc/netns/<ns>/ files apply)."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        p = subprocess.run(["ip", "netns", "exec", ns, *argv], timeout=timeout, **kw)
        if check and p.returncode != 0:
            raise CommandFailed(p.returncode, p.args, p.stdout, p.stderr)
        return p

    def spawn(self, ns: str, *argv: str, **kw) -> subprocess.Popen:
        """Start a long-running process in ns, in its own session; killed by pid at stop().
        stdout/stderr default to a log file in run_dir (p.log_path)."""
        if not self._started or not self._created_ns:
            raise TestbedError("spawn() needs a started testbed")
        log_path = None
        if "stdout" not in kw and "stderr" not in kw:
            name = Path(argv[0]).name if argv else "proc"
            log_path = self.run_dir / f"{name}.{next(self._log_n)}.log"
            log = open(log_path, "wb")
            kw["stdout"] = log
            kw["stderr"] = subprocess.STDOUT
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw["start_new_session"] = True
        try:
            p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)
        finally:
            if log_path is not None:
                log.close()
        p.log_path = log_path  # type: ignore[attr-defined]
        self._procs.append(p)
        return p

    def _kill(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(2)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        if p in self._procs:
            self._procs.remove(p)

    # -------------------------------------------------------------- addresses

    def add_address(self, ip: str) -> None:
        """Add a service address (198.51.100.x or 2001:db8:100::x) to inet's lo."""
        ip = _check_in(ip, SERVICE_NETS, "service address")
        if ip in self._addresses:
            return
        if ":" in ip:
            _ip("-n", self.inet, "addr", "add", f"{ip}/128", "dev", "lo", "nodad")
            self._wait_v6_local(ip)
        else:
            _ip("-n", self.inet, "addr", "add", f"{ip}/32", "dev", "lo")  # IPv4: live on return
        self._addresses.add(ip)

    def _wait_v6_local(self, ip: str, timeout: float = 2.0) -> None:
        """Even with nodad, an IPv6 address (and its local route) is installed by the kernel's
        addrconf work queue *after* `ip addr add` returns; a SYN arriving in between is dropped
        and only the retransmit 1 s later gets through. Wait until inet delivers to it locally:
        a connect from inside inet to a closed port is refused (or accepted) once it does."""
        deadline = time.monotonic() + timeout
        while True:
            with netns.entered(self.inet):
                s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            try:
                s.settimeout(0.2)
                s.connect((ip, 1))
                return
            except ConnectionRefusedError:
                return
            except OSError as e:
                if time.monotonic() > deadline:
                    raise TestbedError(f"IPv6 address {ip} not usable in {self.inet}: {e}") from e
            finally:
                s.close()
            time.sleep(0.002)

    # -------------------------------------------------------------- DNS

    def set_names(self, records: dict[str, list[str]], cnames: dict[str, str] | None = None, ttl: int = 300) -> None:
        """Replace the DNS data: name -> A/AAAA addresses, alias -> CNAME target; all with `ttl`.

        Unknown names get NXDOMAIN; a known name asked for a type it lacks gets NOERROR/no data.
        dnsmasq is restarted; when this returns the new data is being served (a name with an
        empty address list is simply absent). Addresses must be in documentation ranges.

        A key "*.domain" is a wildcard (dnsmasq --address=/domain/ip): it answers for domain
        itself and every name below it at any depth; exact names win over it. dnsmasq quirk:
        under a wildcard, a type with no address (AAAA when only A given) is NXDOMAIN, not
        NOERROR/no data."""
        cnames = dict(cnames or {})
        clean: dict[str, list[str]] = {}
        for name, ips in records.items():
            if isinstance(ips, str):
                ips = [ips]
            clean[self._check_name(name)] = [_check_in(i, ANSWER_NETS, f"address for {name}") for i in ips]
        clean_cnames: dict[str, str] = {}
        for alias, target in cnames.items():
            alias, target = self._check_name(alias), self._check_name(target)
            if "*" in alias + target:
                raise ValueError(f"wildcard CNAMEs are not supported: {alias} -> {target}")
            if alias.lower() in {n.lower() for n in clean if clean[n]}:
                raise ValueError(f"{alias} has both addresses and a CNAME")
            clean_cnames[alias] = target
        cnames = clean_cnames
        if not (0 <= int(ttl) <= 2**31 - 1):
            raise ValueError(f"bad ttl {ttl}")
        self._dns_config = (clean, cnames, int(ttl))
        if self._dnsmasq is not None:
            self._kill(self._dnsmasq)
            self._dnsmasq = None
        if self._live:
            self._start_dnsmasq()
            deadline = time.monotonic() + 5 + len(clean) / 50000  # a large zone takes dnsmasq a while
            # verified from inside inet: the client's own firewall (under test) may block DNS
            _dns_probe(self.inet, DNS4, deadline, self._dnsmasq)
            _dns_probe(self.inet, DNS6, deadline, self._dnsmasq)

    @staticmethod
    def _check_name(name: str) -> str:
        if not _NAME_RE.match(name) or ".." in name:
            raise ValueError(f"bad DNS name {name!r}")
        return name.rstrip(".")

    def _start_dnsmasq(self) -> None:
        records, cnames, ttl = self._dns_config
        lines = [
            "no-resolv",
            "no-hosts",
            "bind-interfaces",
            f"listen-address={DNS4}",
            f"listen-address={DNS6}",
            f"local-ttl={ttl}",
            f"auth-ttl={ttl}",
            "local=/#/",  # everything is local: unknown names are NXDOMAIN, never forwarded
            "log-queries",
            f"log-facility={self.run_dir / 'dnsmasq.log'}",
            f"pid-file={self.run_dir / 'dnsmasq.pid'}",
        ]
        exact = {name: ips for name, ips in records.items() if not name.startswith("*.")}
        for name, ips in records.items():
            if name.startswith("*."):
                lines += [f"address=/{name[2:]}/{ip}" for ip in ips]  # answered with local-ttl
        if len(exact) > 1000:
            # dnsmasq parses host-record lines in quadratic time (35 s for 130k): a large zone
            # goes in a hosts file, answered with local-ttl (loaded in under a second)
            hosts = self.run_dir / "dnsmasq.hosts"
            hosts.write_text("".join(f"{ip} {name}\n" for name, ips in exact.items() for ip in ips))
            hosts.chmod(0o644)  # dnsmasq reads it after dropping to nobody
            self.run_dir.chmod(0o711)
            lines.append(f"addn-hosts={hosts}")
        else:
            for name, ips in exact.items():
                lines += [f"host-record={name},{ip},{ttl}" for ip in ips]
        for alias, target in cnames.items():
            lines.append(f"cname={alias},{target},{ttl}")
        conf = self.run_dir / "dnsmasq.conf"
        conf.write_text("\n".join(lines) + "\n")
        self._dnsmasq = self.spawn(self.inet, "dnsmasq", "--keep-in-foreground", f"--conf-file={conf}")

    def query(self, name: str, rdtype: str = "A", server: str = DNS4, timeout: float = 2.0) -> dns.message.Message:
        """Full DNS response for name/rdtype from `server`, asked from inside the client namespace
        (UDP, TCP on truncation). Use it to look at TTLs, rcodes and CNAME chains."""
        q = dns.message.make_query(name, rdtype)
        with netns.entered(self.client):
            # the whole query runs on this thread, so its sockets are created in the client ns
            r, _tcp = dns.query.udp_with_fallback(q, server, timeout=timeout)
        return r

    def resolve(self, name: str, rdtype: str = "A") -> list[str]:
        """Addresses (or other rdata as text) for name/rdtype, following CNAMEs; [] on NXDOMAIN
        or no data. Raises TestbedError on other rcodes (SERVFAIL, REFUSED)."""
        r = self.query(name, rdtype)
        rc = r.rcode()
        if rc == dns.rcode.NXDOMAIN:
            return []
        if rc != dns.rcode.NOERROR:
            raise TestbedError(f"{name}/{rdtype}: {dns.rcode.to_text(rc)}")
        want = dns.rdatatype.from_text(rdtype)
        return [rd.to_text() for rrset in r.answer if rrset.rdtype == want for rd in rrset]

    # -------------------------------------------------------------- TCP

    def _control(self, line: str) -> str:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(5)
            s.connect(str(self._tcp_control))
            s.sendall(line.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        finally:
            s.close()
        return data.decode().strip()

    def serve_tcp(self, ip: str, port: int) -> None:
        """Make the testbed's TCP server listen on ip:port inside inet (adding the address).
        Returns once the listener accepts connections."""
        self.add_address(ip)
        ip = str(ipaddress.ip_address(ip))
        if (ip, port) in self._served and self._tcp is not None and self._tcp.poll() is None:
            return
        if self._tcp is None or self._tcp.poll() is not None:
            self._served.clear()
            self._tcp_control = self.run_dir / "tcp.sock"
            self._tcp_control.unlink(missing_ok=True)
            ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                ctl.bind(str(self._tcp_control))
                ctl.listen(16)
                self._tcp = self.spawn(
                    self.inet, sys.executable, str(SERVERS_PY), "tcp", "--control-fd", str(ctl.fileno()),
                    pass_fds=(ctl.fileno(),),
                )  # fmt: skip
            finally:
                ctl.close()
        try:
            answer = self._control(f"listen {ip} {port}")
        except OSError as e:
            raise TestbedError(f"TCP server control failed: {e}; log {getattr(self._tcp, 'log_path', None)}") from e
        if answer != "ok":
            raise TestbedError(f"TCP server cannot listen on {ip}:{port}: {answer}")
        # Check from inside inet (the client's firewall may be what is under test).
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        with netns.entered(self.inet):
            s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.settimeout(2)
            s.connect((ip, port))
        except OSError as e:
            raise TestbedError(f"listener {ip}:{port} does not accept from inet: {e}") from e
        finally:
            s.close()
        self._served.add((ip, port))

    def connect(self, ip: str, port: int, timeout: float = 2.0) -> ConnectResult:
        """TCP connect from the client namespace; on success read the server's reply until EOF."""
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        with netns.entered(self.client):
            s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            t0 = time.monotonic()
            try:
                s.connect((ip, port))
            except TimeoutError:
                return ConnectResult(False, "timeout", time.monotonic() - t0)
            except OSError as e:
                name = errno.errorcode.get(e.errno, str(e)) if e.errno else str(e)
                return ConnectResult(False, name, time.monotonic() - t0)
            elapsed = time.monotonic() - t0
            reply = b""
            try:
                while chunk := s.recv(65536):
                    reply += chunk
            except OSError:
                pass
            return ConnectResult(True, None, elapsed, reply)
        finally:
            s.close()


@pytest.fixture
def testbed():
    """A started Testbed, torn down after the test. Fails (not skips) when not root."""
    require_root()
    with Testbed() as tb:
        yield tb


def set_addresses(tb: "Testbed", ns: str, set_name: str, backend: str = "nft", family: str = "inet",
                  table: str = "ramfw", timeout: float = 300) -> set[str]:
    """Addresses in a kernel set, read with the admin's tools: `nft -j list set` (ramfw's
    `allow4` … or any table's set) or, for the iptables backend, `ipset list ramfw-<set_name>`."""
    if backend == "iptables":
        out = tb.run(ns, "ipset", "list", f"ramfw-{set_name}", timeout=timeout).stdout
        members = out.split("Members:", 1)[1].split()
        return {str(ipaddress.ip_address(m)) for m in members if ":" in m or m.count(".") == 3}
    out = tb.run(ns, "nft", "-j", "list", "set", family, table, set_name, timeout=timeout).stdout
    found = set()
    for item in json.loads(out)["nftables"]:
        for e in item.get("set", {}).get("elem", []):
            val = e["elem"]["val"] if isinstance(e, dict) and "elem" in e else e
            found.add(str(ipaddress.ip_address(val)))
    return found
