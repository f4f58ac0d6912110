"""Fixtures for the end-to-end tier: a real dockerd behind `ramfw run`, real registries.

Fixture API (see dockerbed.py for the pieces):

  e2e_net   (session)  E2eNet: .tb (Testbed: .client/.inet namespaces, .connect(), .run()),
                       .pki (throwaway CA), .allowed / .blocked / .origin (Registry: .name, .ip,
                       .addr "host:5000", .ref() "host:5000/tiny:1"), .cdn (BlobProxy: .log_lines())
                       Registry.requests() = its access-log lines (who was really served).
  dockerd   (session)  Dockerd in the client namespace: .docker(*args), .pull(ref) -> Pull
                       (rmi of every image first; .ok, .downloaded, .elapsed, .stderr), .env
                       (DOCKER_HOST for /usr/bin/docker). `with dockerd.hosts_entries("IP name\\n"):`
                       runs a block with those /etc/hosts entries (dockerd restarted before and
                       after, ~2 s in all: a second dockerd in the namespace would fight over docker0).
                       The tiny image is pushed to every registry (and each pulled back once,
                       without ramfw) before any test runs; no image is left locally.
  ramfw     (function) factory: ramfw(policy_text) -> RamfwRun started and ready (controller
                       running and enforcing); .write_policy(text), .status(), .events(), .stop()
                       (idempotent: SIGTERM/SIGKILL by pid, then `ramfw down`); every run is
                       stopped at teardown, even on failure. RAMFW_STATE_DIR is per test.

Helpers in dockerbed: events(client_ns, state_dir) -> parsed `ramfw events --json` list;
tcp_connect(ns, ip, port) -> None or errno name; ref(host) -> "host:5000/tiny:1".
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for p in (HERE, HERE.parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import dockerbed as db  # noqa: E402
from testbed import Testbed, require_root, root_ns_fingerprint  # noqa: E402

ROOT_SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv6/conf/all/forwarding",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
)

DOCKER_RUN_NAMES = ("containerd", "docker", "docker.sock", "docker.pid", "mount")  # what a stray dockerd or mount writes


def machine_fingerprint() -> str:
    """The root namespace's firewall/links (testbed.root_ns_fingerprint) plus what a stray
    dockerd would change: forwarding sysctls, /etc/docker, /run, test cgroups."""
    parts = [root_ns_fingerprint()]
    for key in ROOT_SYSCTLS:
        try:
            parts.append(f"{key} = {Path('/proc/sys', key).read_text().strip()}")
        except OSError as e:
            parts.append(f"{key}: {e.strerror}")
    parts.append("/etc/docker: " + " ".join(sorted(os.listdir("/etc/docker"))) if os.path.isdir("/etc/docker") else "/etc/docker: absent")
    parts.append("/run: " + " ".join(n for n in DOCKER_RUN_NAMES if os.path.lexists(f"/run/{n}")))
    parts.append("cgroups: " + " ".join(sorted(glob.glob("/sys/fs/cgroup/*/ramfw-e2e-*") + glob.glob("/sys/fs/cgroup/unified/ramfw-e2e-*"))))
    return "\n".join(parts)


@pytest.fixture(scope="session", autouse=True)
def machine_untouched():
    require_root()
    before = machine_fingerprint()
    yield
    after = machine_fingerprint()
    assert after == before, "the end-to-end tier changed the machine's own namespace, /etc/docker, /run or cgroups"


@pytest.fixture(scope="session")
def e2e_work():
    d = Path(tempfile.mkdtemp(prefix=db.TMP_PREFIX + "w-", dir="/tmp"))
    yield d
    if not os.environ.get("TESTBED_KEEP"):
        shutil.rmtree(d, ignore_errors=True)


@dataclass
class E2eNet:
    tb: Testbed
    pki: db.Pki
    allowed: db.Registry
    blocked: db.Registry
    origin: db.Registry  # behind the blobproxy; clients use cdn_ref
    cdn: db.BlobProxy

    @property
    def cdn_ref(self) -> str:
        return db.ref(db.CDN_API)


@pytest.fixture(scope="session")
def e2e_net(e2e_work):
    t0 = time.monotonic()
    with Testbed(tag="e2e") as tb:
        tb.set_names(db.NAMES, ttl=300)
        pki = db.Pki(e2e_work / "pki")
        allowed = db.start_registry(tb, e2e_work, db.REG_ALLOWED, db.ALLOWED_IP)
        blocked = db.start_registry(tb, e2e_work, db.REG_BLOCKED, db.BLOCKED_IP,
                                    cert=pki.server_cert(db.REG_BLOCKED), ca=pki.ca_crt)  # fmt: skip
        origin = db.start_registry(tb, e2e_work, db.CDN_ORIGIN_IP, db.CDN_ORIGIN_IP)
        cdn = db.start_blobproxy(tb, db.CDN_ORIGIN_IP)
        db.log(f"testbed, DNS, 3 registries and the blob proxy up in {time.monotonic() - t0:.2f}s")
        yield E2eNet(tb, pki, allowed, blocked, origin, cdn)


def _stop_dockerd(d: db.Dockerd) -> None:
    problems = d.stop()
    if problems:
        pytest.fail("dockerd teardown incomplete: " + "; ".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def dockerd(e2e_net, e2e_work):
    """The session's dockerd; the tiny image is on every registry before any ramfw starts."""
    net = e2e_net
    d = db.Dockerd(
        net.tb.client,
        insecure=[net.allowed.addr, net.origin.addr, f"{db.CDN_API}:{db.PORT}"],
        ca_certs={net.blocked.addr: net.pki.ca_crt},
    )
    try:
        t0 = time.monotonic()
        d.start()
        db.log(f"dockerd ready in {d.ready_after:.2f}s (cgroup driver {d.info.get('CgroupDriver')}, "
               f"cgroup v{d.info.get('CgroupVersion')}, storage {d.info.get('Driver')})")
        db.build_tiny_image(d, e2e_work)
        for reg in (net.allowed, net.blocked, net.origin):
            d.docker("tag", db.IMAGE, reg.ref())
            d.docker("push", reg.ref())
        # Baseline without ramfw: every registry serves the image (so a failure under ramfw is ramfw's)
        for r in (net.allowed.ref(), net.blocked.ref(), net.cdn_ref):
            pull = d.pull(r)
            assert pull.downloaded, f"baseline pull without ramfw failed:\n{pull}"
        assert any(line.startswith("blobs GET ") for line in net.cdn.log_lines()), "baseline: blobs did not come from the redirect host"
        d.remove_all_images()
        flavour = net.tb.run(net.tb.client, "iptables", "-V").stdout.strip()
        db.log(f"images built, pushed and checked in {time.monotonic() - t0:.2f}s; dockerd's iptables: {flavour}")
        yield d
    finally:
        _stop_dockerd(d)


@pytest.fixture(params=["nft", "iptables"])
def ramfw(request, e2e_net, dockerd, tmp_path):
    """Factory: ramfw(policy_text) -> a ready RamfwRun; all are stopped (and `ramfw down`) at teardown.
    Depends on dockerd so the images are pushed before any controller starts."""
    runs: list[db.RamfwRun] = []

    def start(policy_text: str) -> db.RamfwRun:
        n = len(runs)
        policy = tmp_path / f"policy{n}.toml"
        policy.write_text(policy_text)
        run = db.RamfwRun(e2e_net.tb.client, policy, tmp_path / "state", tmp_path / f"ramfw-run{n}.log", request.param)
        runs.append(run)
        run.start()
        db.log(f"ramfw run ready in {run.ready_after:.2f}s")
        return run

    yield start
    problems = []
    for run in runs:
        problems += run.stop()
    if problems:
        pytest.fail("ramfw teardown incomplete: " + "; ".join(problems), pytrace=False)
