"""A TLS server for the SNI tests: one address, many names, answers by server name.

    python tlsserver.py IP PORT CERT KEY LOG

Listens on IP:PORT (TCP, TLS with the one certificate whose SANs cover every test name) and on
UDP IP:PORT (QUIC-shaped datagrams are recorded, never answered). Writes one JSON line per
event to LOG, flushed at once, so a test can assert what reached the server:

    {"kind": "conn", "peer": [ip, port]}                           a TCP connection was accepted
    {"kind": "bytes", "peer": [...], "n": N, "head": "16030..."}   N bytes arrived before the TLS
                                                                    handshake (peeked, first 8)
    {"kind": "tls", "peer": [...], "sni": "name"}                  a handshake completed
    {"kind": "udp", "peer": [...], "n": N}                         a datagram arrived

After the handshake it answers each connection with "hello <sni>\\n" and closes it.
Runs until killed (the testbed kills it by its process group).
"""

import json
import socket
import ssl
import sys
import threading

ip, port, cert, key, log_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
family = socket.AF_INET6 if ":" in ip else socket.AF_INET
log_lock = threading.Lock()
log = open(log_path, "a", buffering=1)


def note(**ev):
    with log_lock:
        log.write(json.dumps(ev) + "\n")


ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
seen = threading.local()


def on_sni(sslobj, name, _ctx):
    seen.name = name


ctx.sni_callback = on_sni


def serve(conn, peer):
    peer = list(peer[:2])
    note(kind="conn", peer=peer)
    conn.settimeout(5)
    try:
        head = conn.recv(8, socket.MSG_PEEK)
        note(kind="bytes", peer=peer, n=len(head), head=head.hex())
        if not head:
            return
        seen.name = None
        tls = ctx.wrap_socket(conn, server_side=True)
        note(kind="tls", peer=peer, sni=seen.name)
        tls.sendall(f"hello {seen.name}\n".encode())
        tls.close()
    except OSError as exc:
        note(kind="error", peer=peer, error=str(exc))
    finally:
        conn.close()


def udp():
    u = socket.socket(family, socket.SOCK_DGRAM)
    u.bind((ip, port))
    while True:
        data, peer = u.recvfrom(65535)
        note(kind="udp", peer=list(peer[:2]), n=len(data))


threading.Thread(target=udp, daemon=True).start()
srv = socket.socket(family, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((ip, port))
srv.listen(512)
note(kind="ready")
while True:
    c, p = srv.accept()
    threading.Thread(target=serve, args=(c, p), daemon=True).start()
