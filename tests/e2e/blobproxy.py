"""A registry front that sends blob downloads to another host, as Docker Hub does with its CDN.

    python blobproxy.py --api IP:PORT --blobs IP:PORT --origin IP:PORT --blob-base URL

Two listeners in one process (stdlib only; run inside the testbed's "internet" namespace):

  --api    forwards every /v2/ request to the origin registry (a plain `docker-registry`),
           except `GET /v2/<name>/blobs/<digest>`, answered `307 Location: <blob-base>/v2/...`
  --blobs  serves `GET|HEAD /v2/<name>/blobs/<digest>` with the bytes fetched from the origin;
           anything else is 404

Every request is logged to stdout as one line: `<listener> <method> <path> <status>`, so tests
can tell that blobs really came from the redirect host.
"""

from __future__ import annotations

import argparse
import http.client
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BLOB_RE = re.compile(r"^/v2/(?:[a-z0-9._/-]+)/blobs/sha256:[0-9a-f]{64}$")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


def split_addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class Base(BaseHTTPRequestHandler):
    listener = "?"
    origin: tuple[str, int] = ("127.0.0.1", 5000)
    blob_base = ""
    server_version = "blobproxy/1"

    def log_message(self, fmt, *args):  # quiet default logging; we log our own line
        pass

    def note(self, status: int) -> None:
        print(f"{self.listener} {self.command} {self.path} {status}", flush=True)

    def forward(self, send_body: bool = True) -> None:
        """Send this request to the origin registry and relay the answer (body buffered)."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        conn = http.client.HTTPConnection(*self.origin, timeout=30)
        try:
            # header by header: Docker sends one Accept header per manifest media type, and the
            # registry answers a digest request only when the stored type is among them
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                    conn.putheader(k, v)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as e:
            self.note(502)
            self.send_error(502, f"origin unreachable: {e}")
            return
        finally:
            conn.close()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if send_body and self.command != "HEAD":
            self.wfile.write(data)
        self.note(resp.status)


class Api(Base):
    listener = "api"

    def do_GET(self):
        if BLOB_RE.match(self.path):
            self.send_response(307)
            self.send_header("Location", self.blob_base + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.note(307)
            return
        self.forward()

    def do_HEAD(self):
        self.forward(send_body=False)

    do_POST = do_PUT = do_PATCH = do_DELETE = Base.forward


class Blobs(Base):
    listener = "blobs"

    def do_GET(self):
        if not BLOB_RE.match(self.path):
            self.note(404)
            self.send_error(404, "only blobs here")
            return
        self.forward()

    do_HEAD = do_GET


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--api", required=True)
    ap.add_argument("--blobs", required=True)
    ap.add_argument("--origin", required=True)
    ap.add_argument("--blob-base", required=True, help="e.g. http://blobs.example.test:5000")
    args = ap.parse_args(argv)
    origin = split_addr(args.origin)
    servers = []
    for cls, addr in ((Api, args.api), (Blobs, args.blobs)):
        handler = type(cls.__name__, (cls,), {"origin": origin, "blob_base": args.blob_base.rstrip("/")})
        srv = ThreadingHTTPServer(split_addr(addr), handler)
        srv.daemon_threads = True
        servers.append(srv)
    print(f"listening api={args.api} blobs={args.blobs} origin={args.origin}", flush=True)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
