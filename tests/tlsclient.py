"""A TLS client for the SNI tests, run inside the client namespace.

    python tlsclient.py IP PORT NAME CAFILE [--split N | --bytes1] [--count K]

Connects to IP:PORT and does a TLS handshake with server name NAME (verified against CAFILE),
reads the server's one line, and prints one JSON object per connection:
    {"ok": true, "reply": "hello NAME", "seconds": 0.004, "port": 40000}
    {"ok": false, "error": "ECONNRESET", "seconds": 0.001, "port": 40001}

--split N   the ClientHello leaves in N TCP segments (TCP_NODELAY, one write per piece, a short
            pause between writes so the kernel does not coalesce them)
--bytes1    the ClientHello leaves one byte per write
--count K   K connections one after the other
"""

import errno
import json
import socket
import ssl
import sys
import time

args = sys.argv[1:]
ip, port, name, cafile = args[0], int(args[1]), args[2], args[3]
split = 1
bytes1 = "--bytes1" in args
if "--split" in args:
    split = int(args[args.index("--split") + 1])
count = int(args[args.index("--count") + 1]) if "--count" in args else 1

ctx = ssl.create_default_context(cafile=cafile)
family = socket.AF_INET6 if ":" in ip else socket.AF_INET


def pieces(data: bytes):
    if bytes1:
        return [data[i:i + 1] for i in range(len(data))]
    size = -(-len(data) // split)
    return [data[i:i + size] for i in range(0, len(data), size)]


def one():
    start = time.monotonic()
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(5)
    local = None
    try:
        sock.connect((ip, port))
        local = sock.getsockname()[1]
        if split == 1 and not bytes1:
            tls = ctx.wrap_socket(sock, server_hostname=name)
            reply = tls.recv(200).decode().strip()
            tls.close()
        else:
            # drive the handshake by hand so the ClientHello can be cut where we want
            inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = ctx.wrap_bio(inc, out, server_hostname=name)
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            hello = out.read()
            for piece in pieces(hello):
                sock.sendall(piece)
                time.sleep(0.002)
            while True:
                try:
                    obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    data = out.read()
                    if data:
                        sock.sendall(data)
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionResetError(errno.ECONNRESET, "closed during handshake")
                    inc.write(chunk)
            data = out.read()
            if data:
                sock.sendall(data)
            reply = b""
            while b"\n" not in reply:
                try:
                    reply += obj.read(200)
                except ssl.SSLWantReadError:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    inc.write(chunk)
            reply = reply.decode().strip()
        return {"ok": True, "reply": reply, "seconds": round(time.monotonic() - start, 6), "port": local}
    except OSError as exc:
        code = errno.errorcode.get(exc.errno, type(exc).__name__) if exc.errno else type(exc).__name__
        return {"ok": False, "error": code, "detail": str(exc)[:200], "seconds": round(time.monotonic() - start, 6), "port": local}
    finally:
        sock.close()


for _ in range(count):
    print(json.dumps(one()), flush=True)
