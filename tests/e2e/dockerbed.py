"""End-to-end infrastructure: a real dockerd in the testbed's client namespace, real registries
in its "internet" namespace, and a `ramfw run` controller between them.

    client namespace (tests/testbed.py)            inet namespace
      dockerd + its containerd, own mount ns         dnsmasq 198.51.100.53
        /etc/resolv.conf  <- /etc/netns/<cli>/...    reg-allowed.test   198.51.100.10:5000  HTTP
        /etc/docker       <- <root>/etc-docker       reg-blocked.test   198.51.100.20:5000  TLS (test CA)
        /etc/hosts        <- <root>/hosts            api.cdn-reg.test   198.51.100.30:5000  blobproxy front
        /run              <- tmpfs                   blobs.cdn-reg.test 198.51.100.31:5000  blobproxy blobs
      docker0 203.0.113.129/25 (bip)                 (origin registry   198.51.100.32:5000, no name)
      ramfw run --netns <cli>

Nothing here runs in, or writes to, the machine's own network namespace, /etc/docker, /run or
iptables: dockerd is started with `nsenter --net=<client ns> unshare -m` and bind mounts made
inside that private mount namespace (TESTBED.md, "Running dockerd inside a namespace"). Every
process is killed by pid at teardown (dockerd's containerd and shims start their own sessions:
they are found by their exec-root in /proc/<pid>/cmdline and by the per-daemon cgroup parent).
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import ControllerProcess
from ramfw.kernel import netns

DOCKER = "/usr/bin/docker"  # the docker.io client matching the dockerd (not /usr/local/bin/docker)
PORT = 5000

REG_ALLOWED, ALLOWED_IP = "reg-allowed.test", "198.51.100.10"
REG_BLOCKED, BLOCKED_IP = "reg-blocked.test", "198.51.100.20"
CDN_API, CDN_API_IP = "api.cdn-reg.test", "198.51.100.30"
CDN_BLOBS, CDN_BLOBS_IP = "blobs.cdn-reg.test", "198.51.100.31"
CDN_ORIGIN_IP = "198.51.100.32"  # the registry behind the blobproxy front; no DNS name

NAMES = {
    REG_ALLOWED: [ALLOWED_IP],
    REG_BLOCKED: [BLOCKED_IP],
    CDN_API: [CDN_API_IP],
    CDN_BLOBS: [CDN_BLOBS_IP],
}

IMAGE = "tiny:1"  # the busybox-static image, as imported and as pushed to every registry
BRIDGE_BIP = "203.0.113.129/25"
BUSYBOX = "/bin/busybox"
BUSYBOX_APPLETS = ("sh", "wget", "nc", "timeout", "echo", "cat", "sleep", "ls", "true")
BLOBPROXY_PY = Path(__file__).with_name("blobproxy.py")
TMP_PREFIX = f"rfe2e-{os.getpid()}-"  # short: containerd socket paths live under the exec-root


class DockerbedError(RuntimeError):
    """Setup, readiness or teardown of the end-to-end infrastructure failed (says what/where)."""


def log(msg: str) -> None:
    print(f"[e2e] {msg}", flush=True)


def ref(host: str, image: str = IMAGE, port: int = PORT) -> str:
    return f"{host}:{port}/{image}"


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 60)
    p = subprocess.run(argv, **kw)
    if p.returncode != 0:
        raise DockerbedError(f"{' '.join(argv)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def _tail(path: Path | None, n: int = 3000) -> str:
    if path is None or not path.exists():
        return ""
    return path.read_text(errors="replace")[-n:]


# ------------------------------------------------------------------------------------- PKI


@dataclass
class Pki:
    """A throwaway CA and server certificates signed by it (openssl), under one directory."""

    dir: Path
    ca_crt: Path = field(init=False)
    ca_key: Path = field(init=False)

    def __post_init__(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_crt, self.ca_key = self.dir / "ca.crt", self.dir / "ca.key"
        _run([
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(self.ca_key), "-out", str(self.ca_crt), "-days", "2",
            "-subj", "/CN=ramfw e2e throwaway CA", "-addext", "basicConstraints=critical,CA:true",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ])  # fmt: skip

    def server_cert(self, host: str) -> tuple[Path, Path]:
        key, csr, crt = self.dir / f"{host}.key", self.dir / f"{host}.csr", self.dir / f"{host}.crt"
        ext = self.dir / f"{host}.ext"
        ext.write_text(
            f"subjectAltName=DNS:{host}\nextendedKeyUsage=serverAuth\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\nbasicConstraints=CA:false\n"
        )
        _run([
            "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={host}",
        ])  # fmt: skip
        _run([
            "openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.ca_crt), "-CAkey", str(self.ca_key),
            "-CAcreateserial", "-out", str(crt), "-days", "2", "-extfile", str(ext),
        ])  # fmt: skip
        return crt, key


# ------------------------------------------------------------------------------ registries


def http_get(ns: str, ip: str, port: int, path: str, *, tls_ca: Path | None = None, host: str | None = None,
             timeout: float = 2.0) -> tuple[int, bytes]:
    """GET from inside namespace ns; returns (status, body). Sockets are created inside ns."""
    with netns.entered(ns):
        sock = socket.create_connection((ip, port), timeout=timeout)
    try:
        if tls_ca is not None:
            ctx = ssl.create_default_context(cafile=str(tls_ca))
            sock = ctx.wrap_socket(sock, server_hostname=host or ip)
        conn = http.client.HTTPConnection(host or ip, port, timeout=timeout)
        conn.sock = sock
        conn.request("GET", path, headers={"Host": f"{host or ip}:{port}"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        sock.close()


def tcp_connect(ns: str, ip: str, port: int, timeout: float = 1.0) -> str | None:
    """Open (and close at once) a TCP connection from inside ns: None when it connected, else
    the errno name ("ECONNREFUSED", ...) or "timeout". Reads nothing, so it times only connect()."""
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with netns.entered(ns):
        s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect((ip, port))
        return None
    except TimeoutError:
        return "timeout"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e)) if e.errno else str(e)
    finally:
        s.close()


def wait_http(ns: str, ip: str, port: int, path: str, proc: subprocess.Popen, what: str, *,
              tls_ca: Path | None = None, host: str | None = None, timeout: float = 10.0) -> None:
    """Poll GET path from inside ns until it answers 200 (a registry's /v2/), or fail."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        if proc.poll() is not None:
            raise DockerbedError(f"{what} exited with {proc.returncode}:\n{_tail(getattr(proc, 'log_path', None))}")
        try:
            status, _ = http_get(ns, ip, port, path, tls_ca=tls_ca, host=host, timeout=1.0)
            if status == 200:
                return
            last = f"HTTP {status}"
        except (OSError, http.client.HTTPException) as e:
            last = e
        if time.monotonic() > deadline:
            raise DockerbedError(f"{what} not answering on {ip}:{port}{path}: {last!r}\n"
                                 f"{_tail(getattr(proc, 'log_path', None))}")
        time.sleep(0.02)


@dataclass
class Registry:
    name: str  # DNS name clients use (or the IP for the nameless origin)
    ip: str
    proc: subprocess.Popen
    storage: Path
    tls: bool = False

    @property
    def addr(self) -> str:
        return f"{self.name}:{PORT}"

    def ref(self, image: str = IMAGE) -> str:
        return ref(self.name, image)

    def requests(self, needle: str = '"GET /v2/') -> list[str]:
        """Access-log lines (the registry's stdout) containing needle: who really got served."""
        return [l for l in _tail(getattr(self.proc, "log_path", None), 10**8).splitlines() if needle in l]


def start_registry(tb, workdir: Path, name: str, ip: str, cert: tuple[Path, Path] | None = None,
                   ca: Path | None = None) -> Registry:
    """`docker-registry serve` on ip:5000 inside tb.inet, storage under workdir/<name>/."""
    d = workdir / f"registry-{name}"
    storage = d / "storage"
    storage.mkdir(parents=True)
    tb.add_address(ip)
    tls = ""
    if cert is not None:
        tls = f"  tls:\n    certificate: {cert[0]}\n    key: {cert[1]}\n"
    config = d / "config.yml"
    config.write_text(f"""\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: {ip}:{PORT}
  secret: ramfw-e2e-{os.getpid()}
{tls}""")
    proc = tb.spawn(tb.inet, "docker-registry", "serve", str(config))
    wait_http(tb.inet, ip, PORT, "/v2/", proc, f"registry {name}", tls_ca=ca if cert else None,
              host=name if cert else None)
    return Registry(name, ip, proc, storage, tls=cert is not None)


@dataclass
class BlobProxy:
    api: str
    blobs: str
    proc: subprocess.Popen

    def log_lines(self) -> list[str]:
        return _tail(getattr(self.proc, "log_path", None), 10**7).splitlines()


def start_blobproxy(tb, origin_ip: str) -> BlobProxy:
    for ip in (CDN_API_IP, CDN_BLOBS_IP):
        tb.add_address(ip)
    proc = tb.spawn(
        tb.inet, sys.executable, "-u", str(BLOBPROXY_PY),
        "--api", f"{CDN_API_IP}:{PORT}", "--blobs", f"{CDN_BLOBS_IP}:{PORT}",
        "--origin", f"{origin_ip}:{PORT}", "--blob-base", f"http://{CDN_BLOBS}:{PORT}",
    )  # fmt: skip
    wait_http(tb.inet, CDN_API_IP, PORT, "/v2/", proc, "blobproxy (api)")
    return BlobProxy(CDN_API, CDN_BLOBS, proc)


# ----------------------------------------------------------------------------------- dockerd


def _pids_matching(pred) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if pred(int(entry)):
                out.append(int(entry))
        except OSError:
            continue
    return out


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


def _cgroups(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        return f.read()


class Dockerd:
    """One dockerd (with its own containerd) in network namespace `ns`, private mount namespace.

    root/                 per-daemon temp dir (short path: containerd sockets live below it)
      etc-docker/         bind-mounted over /etc/docker: daemon.json, certs.d/<host:port>/ca.crt
      hosts               bind-mounted over /etc/hosts (default: localhost only)
      data/ exec/         --data-root, --exec-root
      docker.sock docker.pid dockerd.log cli/ (DOCKER_CONFIG)
    """

    def __init__(self, ns: str, *, insecure: list[str] = (), ca_certs: dict[str, Path] | None = None,
                 hosts: str | None = None, tag: str = "d"):
        self.ns = ns
        self.insecure = list(insecure)
        self.ca_certs = dict(ca_certs or {})
        self.hosts = hosts
        self.root = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + tag + "-", dir="/tmp"))
        self.cgroup_parent = f"ramfw-e2e-{os.getpid()}-{self.root.name.rsplit('-', 1)[-1]}"
        self.sock = self.root / "docker.sock"
        self.log_path = self.root / "dockerd.log"
        self.proc: subprocess.Popen | None = None
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.sock}", "DOCKER_CONFIG": str(self.root / "cli")}
        self.env.pop("DOCKER_CONTEXT", None)
        self.env.pop("DOCKER_TLS_VERIFY", None)
        self.info: dict = {}
        self.ready_after: float = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> "Dockerd":
        nspath = netns.netns_path(self.ns)
        if not os.path.exists(nspath):
            raise DockerbedError(f"namespace {self.ns} does not exist; refusing to start dockerd anywhere else")
        resolv = Path("/etc/netns") / self.ns / "resolv.conf"
        if not resolv.exists():
            raise DockerbedError(f"{resolv} missing")
        etc = self.root / "etc-docker"
        for host, ca in self.ca_certs.items():
            d = etc / "certs.d" / host
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(ca, d / "ca.crt")
        etc.mkdir(exist_ok=True)
        config = {
            "bip": BRIDGE_BIP,
            "storage-driver": "vfs",
            "insecure-registries": self.insecure,
            "cgroup-parent": "/" + self.cgroup_parent,
            "userland-proxy": False,
            # a refused blob download is retried once, 5 s later, then the pull fails (default: 5
            # attempts, 50 s of back-off); 1 is the least dockerd accepts
            "max-download-attempts": 1,
            "log-level": "info",
        }
        (etc / "daemon.json").write_text(json.dumps(config, indent=2))
        hosts = self.root / "hosts"
        hosts.write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n" + (self.hosts or ""))
        (self.root / "cli").mkdir(exist_ok=True)
        r = self.root
        script = (
            "set -e; mount --make-rprivate /; "
            "mount -t tmpfs -o mode=755 ramfw-e2e-run /run; "  # containerd shim sockets: /run/containerd/s
            f"mount --bind {resolv} /etc/resolv.conf; "
            f"mount --bind {etc} /etc/docker; "
            f"mount --bind {hosts} /etc/hosts; "
            f"exec dockerd --config-file {etc}/daemon.json --data-root {r}/data --exec-root {r}/exec "
            f"-H unix://{self.sock} --pidfile {r}/docker.pid"
        )
        log_f = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net={nspath}", "unshare", "-m", "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=log_f, stderr=subprocess.STDOUT, start_new_session=True,
                # libmount would otherwise record the bind mounts in the machine's /run/mount/utab
                env={**{k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")},
                     "LIBMOUNT_UTAB": str(self.root / "utab")},
            )  # fmt: skip
        finally:
            log_f.close()
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                raise DockerbedError(f"dockerd exited with {self.proc.returncode} during startup:\n{_tail(self.log_path)}")
            # `docker info` exits 0 even when the daemon is unreachable; `docker version` does not
            p = subprocess.run([DOCKER, "version", "--format", "{{.Server.Version}}"], env=self.env,
                               capture_output=True, text=True, timeout=10)  # fmt: skip
            if p.returncode == 0 and p.stdout.strip():
                self.info = json.loads(self.docker("info", "--format", "{{json .}}").stdout)
                break
            if time.monotonic() > deadline:
                raise DockerbedError(f"dockerd not ready after {timeout}s: {p.stderr.strip()}\n{_tail(self.log_path)}")
            time.sleep(0.05)
        self.ready_after = time.monotonic() - t0
        # dockerd is the Popen'd process itself (nsenter, unshare and sh all exec)
        if netns.ns_id(self.ns) != os.readlink(f"/proc/{self.proc.pid}/ns/net"):
            raise DockerbedError("dockerd is not in the client namespace")
        return self

    def helper_pids(self) -> list[int]:
        """containerd, shims and container processes of this daemon (not dockerd itself)."""
        marker_a, marker_b = str(self.root) + "/", self.cgroup_parent
        own = self.proc.pid if self.proc else -1

        def pred(pid: int) -> bool:
            return pid != own and (marker_a in _cmdline(pid) or marker_b in _cgroups(pid))

        return _pids_matching(pred)

    def stop(self) -> list[str]:
        """Kill dockerd and everything it started, by pid; remove cgroups and the temp dir.
        Returns problems (empty when clean)."""
        problems = self._kill()
        mounted = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                   if line.split()[4].startswith(str(self.root))]  # fmt: skip
        if mounted:
            problems.append(f"mounts leaked into the test's mount namespace: {mounted}; {self.root} kept")
        elif not os.environ.get("TESTBED_KEEP"):
            shutil.rmtree(self.root, ignore_errors=True)
        return problems

    def restart(self, hosts: str | None = None) -> "Dockerd":
        """Stop and start again (same data root) with new /etc/hosts entries: a fresh process
        reads the hosts file at once (Go caches it for up to 5 s). Only one dockerd may run in a
        namespace: a second one would fight over docker0 and the DOCKER iptables chains."""
        problems = self._kill()
        if problems:
            raise DockerbedError("dockerd restart: " + "; ".join(problems))
        self.hosts = hosts
        return self.start()

    @contextlib.contextmanager
    def hosts_entries(self, text: str):
        """Run the block with `text` appended to dockerd's /etc/hosts (restarts dockerd twice)."""
        self.restart(hosts=text)
        try:
            yield self
        finally:
            self.restart(hosts=None)

    def _kill(self) -> list[str]:
        problems: list[str] = []
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.helper_pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 3
            while pids and time.monotonic() < deadline:
                pids = [p for p in pids if os.path.exists(f"/proc/{p}") and not _zombie(p)]
                time.sleep(0.02)
            if not pids:
                break
        left = [p for p in self.helper_pids() if not _zombie(p)]
        if left:
            problems.append(f"dockerd helpers still alive: {left}")
        problems += self._remove_cgroups()
        self.proc = None
        return problems

    def _remove_cgroups(self) -> list[str]:
        problems = []
        for base in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
            if not base.is_dir():
                continue
            for ctrl in [base, *[p for p in base.iterdir() if p.is_dir() and not p.is_symlink()]]:
                top = ctrl / self.cgroup_parent
                if not top.is_dir():
                    continue
                for sub in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    try:
                        sub.rmdir()
                    except OSError as e:
                        problems.append(f"cgroup {sub}: {e}")
                try:
                    top.rmdir()
                except OSError as e:
                    problems.append(f"cgroup {top}: {e}")
        return problems

    # -- client ----------------------------------------------------------------------------

    def docker(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        p = subprocess.run([DOCKER, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise DockerbedError(f"docker {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}\n"
                                 f"--- dockerd log (tail) ---\n{_tail(self.log_path, 2000)}")
        return p

    def remove_all_images(self) -> None:
        """Every image goes (all the test images share one layer: a pull must really download it)."""
        ids = self.docker("images", "-aq").stdout.split()
        if ids:
            self.docker("rmi", "-f", *sorted(set(ids)))
        left = self.docker("images", "-aq").stdout.split()
        if left:
            raise DockerbedError(f"images left after rmi: {left}")

    def pull(self, image_ref: str, timeout: float = 60) -> "Pull":
        """`docker rmi` everything, then `docker pull image_ref`; never raises on failure."""
        self.remove_all_images()
        t0 = time.monotonic()
        p = self.docker("pull", image_ref, check=False, timeout=timeout)
        return Pull(image_ref, p.returncode, p.stdout, p.stderr, time.monotonic() - t0)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@dataclass
class Pull:
    ref: str
    rc: int
    stdout: str
    stderr: str
    elapsed: float

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def downloaded(self) -> bool:
        """The layer really came over the network (not 'Already exists')."""
        return self.ok and "Pull complete" in self.stdout

    def __str__(self) -> str:
        return (f"docker pull {self.ref}: rc {self.rc} in {self.elapsed:.2f}s\n"
                f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}")


def build_tiny_image(d: Dockerd, workdir: Path, tag: str = IMAGE) -> str:
    """busybox-static in a tarball, `docker import`ed (no network pull). Returns the image id."""
    rootfs = workdir / "tiny-rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in BUSYBOX_APPLETS:
        os.symlink("busybox", rootfs / "bin" / applet)
    tar_path = workdir / "tiny.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(rootfs, arcname=".")
    with open(tar_path, "rb") as f:
        p = subprocess.run([DOCKER, "import", "-c", "ENV PATH=/bin", "-", tag], stdin=f, env=d.env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    if p.returncode != 0:
        raise DockerbedError(f"docker import failed: {p.stderr}")
    return p.stdout.strip()


# ------------------------------------------------------------------------------------- ramfw


class RamfwRun(ControllerProcess):
    """One `python -m ramfw.cli run --netns NS --policy FILE` in the background (tests/harness.py:
    own session, stopped by pid); failed waits raise DockerbedError."""

    error = DockerbedError

    def __init__(self, ns: str, policy_path: Path, state_dir: Path, log_path: Path, backend: str = "auto"):
        super().__init__(ns, policy_path, backend=backend, state_dir=state_dir, log_path=log_path)
        self.ns = ns
        self.ready_after = 0.0

    def start(self, timeout: float = 20.0) -> "RamfwRun":
        super().start()
        self.wait_ready(timeout)
        self.ready_after = self.ready_at - self.started_at
        return self

    def write_policy(self, text: str) -> float:
        """Replace the policy file atomically; returns the monotonic time of the replace."""
        tmp = self.policy_path.with_name(self.policy_path.name + ".new")
        tmp.write_text(text)
        os.replace(tmp, self.policy_path)
        return time.monotonic()

    def events(self) -> list[dict]:
        return events(self.ns, self.state_dir)

    def assert_alive(self, when: str = "") -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"ramfw run died (rc {self.proc and self.proc.returncode})\n{self.log_tail()}")

    def stop(self) -> list[str]:
        """SIGTERM, then SIGKILL, by pid; then `ramfw down --netns NS`. Returns problems."""
        return self.finish()


def events(client_ns: str, state_dir: Path | None = None, timeout: float = 30) -> list[dict]:
    """`ramfw events --netns NS --json`, parsed: a list of {time, scope, src, dst, dport, proto,
    hostname, uid}. Raises AssertionError with ramfw's message when the command fails."""
    env = dict(os.environ)
    if state_dir is not None:
        env["RAMFW_STATE_DIR"] = str(state_dir)
    p = subprocess.run([sys.executable, "-m", "ramfw.cli", "events", "--netns", client_ns, "--json"], env=env,
                       capture_output=True, text=True, timeout=timeout)  # fmt: skip
    if p.returncode != 0:
        raise AssertionError(f"ramfw events --netns {client_ns} --json exited {p.returncode}: {p.stderr.strip()}")
    data = json.loads(p.stdout)
    if not isinstance(data, list):
        raise AssertionError(f"ramfw events --json printed {type(data).__name__}, not a list: {p.stdout[:500]}")
    return data
