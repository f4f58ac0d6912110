"""A fleet's policy from an HTTPS URL: fetched inside the namespace, revalidated with ETag,
kept as a last good copy when the server is unreachable or serves an invalid policy."""

import hashlib
import http.server
import json
import ssl
import subprocess
import threading
import time

import pytest

from ramfw.kernel import netns
from runcli import Controller, run_ramfw
from wait import poll

A4, B4, POLICY_IP = "198.51.100.10", "198.51.100.20", "198.51.100.80"
URL = "https://policy.test/fleet/ramfw.toml"


def make_pki(d):
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ramfw test CA",
            "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=policy.test", "-keyout", f"{d}/srv.key", "-out", f"{d}/srv.csr")
    (d / "ext.cnf").write_text("subjectAltName=DNS:policy.test\n")
    openssl("x509", "-req", "-in", f"{d}/srv.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{d}/ext.cnf", "-out", f"{d}/srv.pem")
    return d / "ca.pem", d / "srv.pem", d / "srv.key"


class PolicyServer:
    """HTTPS in the internet namespace; serves `text` with an ETag and answers 304 to a match."""

    def __init__(self, ns, cert, key):
        self.text = ""
        self.log = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                etag = '"' + hashlib.sha256(outer.text.encode()).hexdigest()[:16] + '"'
                if self.headers.get("If-None-Match") == etag:
                    outer.log.append(304)
                    self.send_response(304)
                    self.end_headers()
                    return
                outer.log.append(200)
                body = outer.text.encode()
                self.send_response(200)
                self.send_header("ETag", etag)
                self.send_header("Content-Type", "application/toml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        with netns.entered(ns):
            self.httpd = http.server.ThreadingHTTPServer((POLICY_IP, 443), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fleet(testbed, state_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RAMFW_CACHE_DIR", str(tmp_path / "cache"))
    testbed.set_names({"reg.allowed.test": [A4], "reg.other.test": [B4], "policy.test": [POLICY_IP]}, ttl=60)
    testbed.add_address(POLICY_IP)
    for ip in (A4, B4):
        testbed.serve_tcp(ip, 443)
    ca, cert, key = make_pki(tmp_path)
    server = PolicyServer(testbed.inet, str(cert), str(key))
    yield testbed, server, ca
    server.stop()
    run_ramfw("down", "--netns", testbed.client)


def status(ns):
    return json.loads(run_ramfw("status", "--netns", ns, "--json", check=0).stdout)


def until(fn, timeout):
    return bool(poll(fn, timeout, interval=0.1))


def test_policy_url_lifecycle(fleet):
    tb, server, ca = fleet
    server.text = 'allow = ["reg.allowed.test"]\n'
    ctl = Controller(tb.client, URL, "--policy-ca", str(ca), "--policy-refresh", "1")
    try:
        first = ctl.wait_ready()
        assert first["policy_source"] == URL
        assert tb.connect(A4, 443).ok and tb.connect(B4, 443).error == "ECONNREFUSED"
        # unchanged: revalidated with 304s, nothing reloaded
        assert until(lambda: server.log.count(304) >= 2, 5), server.log
        assert status(tb.client)["policy_digest"] == first["policy_digest"]

        # changed on the server: enforced within the refresh interval (+ apply)
        server.text = 'allow = ["reg.allowed.test", "reg.other.test"]\n'
        t0 = time.monotonic()
        assert until(lambda: tb.connect(B4, 443, timeout=0.5).ok, 5), ctl.output()
        print(f"URL policy change enforced in {time.monotonic() - t0:.2f}s")
        second = status(tb.client)["policy_digest"]
        assert second != first["policy_digest"]

        # invalid on the server: refused, the last good policy stays
        server.text = 'allow = ["*.amazonaws.com"]\n'
        assert until(lambda: "policy from https://policy.test/fleet/ramfw.toml refused" in ctl.output(), 5), ctl.output()
        assert status(tb.client)["policy_digest"] == second
        assert tb.connect(B4, 443).ok and tb.connect(A4, 443).ok

        # unreachable: logged, enforcement goes on
        server.stop()
        assert until(lambda: "unreachable" in ctl.output(), 5), ctl.output()
        assert tb.connect(B4, 443).ok
    finally:
        ctl.stop()

    # a restart while the server is down starts from the last good copy
    ctl = Controller(tb.client, URL, "--policy-ca", str(ca), "--policy-refresh", "1")
    try:
        assert ctl.wait_ready()["policy_digest"] == second
        assert tb.connect(B4, 443).ok
    finally:
        ctl.stop()


def test_no_copy_and_no_server_is_a_clear_error(fleet):
    tb, server, ca = fleet
    server.stop()
    r = run_ramfw("up", "--netns", tb.client, "--policy", URL, "--policy-ca", str(ca), check=1)
    assert r.stderr.strip().splitlines()[-1].startswith(f"ramfw: error: no policy yet: {URL} could not be fetched")
