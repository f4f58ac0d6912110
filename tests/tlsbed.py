"""TLS pieces for the SNI tests: a throwaway CA per run, a TLS server in the "internet"
namespace that serves several names on one address (tlsserver.py) and records what reached it,
and a client (tlsclient.py) run inside the client namespace."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def make_certs(directory: Path, names: list[str]) -> dict[str, str]:
    """A CA and one server certificate whose SANs cover `names`; paths by role."""
    directory.mkdir(parents=True, exist_ok=True)
    d = {k: str(directory / f) for k, f in (("ca", "ca.crt"), ("ca_key", "ca.key"), ("cert", "server.crt"),
                                               ("key", "server.key"), ("csr", "server.csr"), ("ext", "san.ext"))}

    def run(*argv):
        subprocess.run(["openssl", *argv], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", d["ca_key"], "-out", d["ca"], "-days", "2", "-subj", "/CN=ramfw SNI test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", d["key"], "-out", d["csr"], "-subj", f"/CN={names[0]}")
    Path(d["ext"]).write_text("subjectAltName=" + ",".join(f"DNS:{n}" for n in names) + "\n")
    run("x509", "-req", "-in", d["csr"], "-CA", d["ca"], "-CAkey", d["ca_key"], "-CAcreateserial", "-out", d["cert"],
        "-days", "2", "-extfile", d["ext"])
    return d


class TlsServer:
    def __init__(self, tb, ip: str, port: int, certs: dict[str, str]):
        tb.add_address(ip)
        self.log = Path(tb.run_dir) / f"tls-{ip.replace(':', '_')}-{port}.jsonl"
        self.proc = tb.spawn(tb.inet, sys.executable, str(HERE / "tlsserver.py"), ip, str(port), certs["cert"], certs["key"], str(self.log))
        deadline = time.monotonic() + 5
        while not any(e["kind"] == "ready" for e in self.events()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"TLS server on {ip}:{port} did not start: {self.proc.log_path.read_text() if self.proc.log_path else ''}")
            time.sleep(0.05)

    def events(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def from_port(self, port: int) -> list[dict]:
        return [e for e in self.events() if e.get("peer") and e["peer"][1] == port]


def tls_connect(tb, ip: str, port: int, name: str, ca: str, *extra: str, timeout: float = 30) -> list[dict]:
    """tlsclient.py in the client namespace; one dict per connection."""
    p = tb.run(tb.client, sys.executable, str(HERE / "tlsclient.py"), ip, str(port), name, ca, *extra, timeout=timeout, check=False)
    lines = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise AssertionError(f"tlsclient printed nothing (exit {p.returncode}): {p.stderr[-2000:]}")
    return lines
