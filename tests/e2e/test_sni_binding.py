"""SNI binding with the real client (issue 15): one TLS registry address serves an allowed and
a blocked name by server name, the way a CDN edge serves many sites on one address.

edge-allowed.test resolves (DNS) to the edge; edge-blocked.test is never given for it. A
developer steering the blocked name onto the allowed address (a hosts-file entry for dockerd,
`--add-host` for a container, `curl --resolve`) reaches an address the IP allowlist admits:
only the server name in the ClientHello tells the two apart. With `[tls] sni = "enforce"` the
allowed name pulls and every route to the blocked one is reset at once and recorded.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

import dockerbed as db

pytestmark = pytest.mark.e2e

EDGE_IP = "198.51.100.50"
EDGE_ALLOWED, EDGE_BLOCKED = "edge-allowed.test", "edge-blocked.test"
POLICY = (f'allow = ["{db.REG_ALLOWED}:{db.PORT}", "{EDGE_ALLOWED}:{db.PORT}"]\nblock = ["{EDGE_BLOCKED}"]\n'
          f'[scope]\nforward = true\n[tls]\nsni = "enforce"\nports = [{db.PORT}]\n')


@pytest.fixture(scope="module")
def edge(e2e_net, dockerd, e2e_work):
    """The edge registry: the allowed registry's storage served over TLS by a certificate that
    names both hosts; dockerd trusts the test CA for both."""
    tb, pki = e2e_net.tb, e2e_net.pki
    d = e2e_work / "edge"
    d.mkdir()
    key, csr, crt, ext = d / "edge.key", d / "edge.csr", d / "edge.crt", d / "edge.ext"
    ext.write_text(f"subjectAltName=DNS:{EDGE_ALLOWED},DNS:{EDGE_BLOCKED}\nextendedKeyUsage=serverAuth\n")
    for argv in (["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
                  "-out", str(csr), "-subj", f"/CN={EDGE_ALLOWED}"],
                 ["x509", "-req", "-in", str(csr), "-CA", str(pki.ca_crt), "-CAkey", str(pki.ca_key), "-CAcreateserial",
                  "-out", str(crt), "-days", "2", "-extfile", str(ext)]):
        subprocess.run(["openssl", *argv], check=True, capture_output=True)
    tb.add_address(EDGE_IP)
    config = d / "config.yml"
    config.write_text(f"""\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {e2e_net.allowed.storage}
  cache:
    blobdescriptor: inmemory
http:
  addr: {EDGE_IP}:{db.PORT}
  secret: ramfw-e2e-edge-{os.getpid()}
  tls:
    certificate: {crt}
    key: {key}
""")
    proc = tb.spawn(tb.inet, "docker-registry", "serve", str(config))
    db.wait_http(tb.inet, EDGE_IP, db.PORT, "/v2/", proc, "edge registry", tls_ca=pki.ca_crt, host=EDGE_ALLOWED)
    tb.set_names({**db.NAMES, EDGE_ALLOWED: [EDGE_IP]}, ttl=300)
    for name in (EDGE_ALLOWED, EDGE_BLOCKED):
        dockerd.ca_certs[f"{name}:{db.PORT}"] = pki.ca_crt
    dockerd.restart()
    # baseline without ramfw: both names pull from the edge (so a failure below is ramfw's)
    for name in (EDGE_ALLOWED,):
        pull = dockerd.pull(db.ref(name))
        assert pull.downloaded, f"baseline pull without ramfw failed:\n{pull}"
    with dockerd.hosts_entries(f"{EDGE_IP} {EDGE_BLOCKED}\n"):
        pull = dockerd.pull(db.ref(EDGE_BLOCKED))
        assert pull.downloaded, f"baseline pull of the blocked name through the hosts file failed:\n{pull}"
    dockerd.remove_all_images()
    yield d
    tb.set_names(db.NAMES, ttl=300)
    tb._kill(proc)


def sni_events(run, name):
    deadline = time.monotonic() + 5
    while True:
        hits = [e for e in run.events() if e.get("action") == "sni_mismatch" and e.get("sni") == name]
        if hits or time.monotonic() > deadline:
            return hits


def test_allowed_name_pulls_and_the_blocked_name_on_its_address_is_reset(ramfw, dockerd, e2e_net, edge):
    tb = e2e_net.tb
    run = ramfw(POLICY)
    ok = dockerd.pull(db.ref(EDGE_ALLOWED))
    assert ok.downloaded, f"allowed name on the edge:\n{ok}\n{run.log_tail()}"
    db.log(f"edge pull with SNI binding {ok.elapsed:.2f}s")

    # 1. the hosts file: dockerd itself (output scope)
    with dockerd.hosts_entries(f"{EDGE_IP} {EDGE_BLOCKED}\n"):
        bad = dockerd.pull(db.ref(EDGE_BLOCKED))
    assert not bad.ok and "connection reset" in bad.stderr.lower() and EDGE_IP in bad.stderr, f"{bad}\n{run.log_tail()}"
    assert bad.elapsed < 5, bad
    db.log(f"blocked name through the hosts file reset in {bad.elapsed:.2f}s: {bad.stderr.strip()[:200]}")
    hits = sni_events(run, EDGE_BLOCKED)
    assert hits and hits[0]["dst"] == EDGE_IP and hits[0]["scope"] == "output" and EDGE_ALLOWED in hits[0]["names"], run.events()

    # 2. curl --resolve from the namespace
    t0 = time.monotonic()
    c = tb.run(tb.client, "curl", "-sS", "--max-time", "5", "--cacert", str(e2e_net.pki.ca_crt), "--resolve",
               f"{EDGE_BLOCKED}:{db.PORT}:{EDGE_IP}", f"https://{EDGE_BLOCKED}:{db.PORT}/v2/", check=False)
    took = time.monotonic() - t0
    assert c.returncode != 0 and "reset" in c.stderr.lower(), c
    assert took < 1.0, f"curl --resolve was reset only after {took:.2f}s"
    good = tb.run(tb.client, "curl", "-sS", "--max-time", "5", "--cacert", str(e2e_net.pki.ca_crt), "--resolve",
                  f"{EDGE_ALLOWED}:{db.PORT}:{EDGE_IP}", f"https://{EDGE_ALLOWED}:{db.PORT}/v2/", check=False)
    assert good.returncode == 0, good

    # 3. --add-host in a container: forwarded through the namespace (forward scope)
    # (the image comes from the edge: with [tls] ports = [5000] the plain-HTTP registry on 5000
    # is "not TLS" and refused like any hello without a server name)
    base = dockerd.pull(db.ref(EDGE_ALLOWED))
    assert base.downloaded, base
    image = db.ref(EDGE_ALLOWED)
    before = len(sni_events(run, EDGE_BLOCKED))

    def in_container(name):
        return dockerd.docker("run", "--rm", "--add-host", f"{name}:{EDGE_IP}", image, "timeout", "5", "wget", "-q", "-O", "-",
                              "--no-check-certificate", f"https://{name}:{db.PORT}/v2/", check=False, timeout=60)

    assert in_container(EDGE_ALLOWED).returncode == 0, "the allowed name from a container"
    r = in_container(EDGE_BLOCKED)
    assert r.returncode != 0, r
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        fwd = [e for e in sni_events(run, EDGE_BLOCKED) if e["scope"] == "forward"]
        if fwd:
            break
        time.sleep(0.1)
    assert fwd and len(sni_events(run, EDGE_BLOCKED)) > before, (r, run.events())
    run.assert_alive()
