"""Small test servers, run as subprocesses inside a testbed namespace (stdlib only).

    python servers.py tcp --control-fd N [--listen IP PORT ...]

`tcp`: one process serving any number of (ip, port) TCP listeners. On every accepted
connection it at once sends a minimal HTTP/1.0 response whose body is "ok <ip> <port>\\n",
half-closes (so the peer reads the reply and EOF), drains whatever the peer sent (an HTTP
request from wget/curl, or nothing from a raw connect) and closes. Replying before reading and
draining afterwards means raw connects get the reply without sending anything, and HTTP clients
never see a reset caused by unread request bytes.

Control: fd N is an already listening unix stream socket (created by the testbed, inherited
across `ip netns exec`), so the control channel is usable the moment the process exists. One
request line per connection, one reply line:

    listen IP PORT   ->  "ok" once the listener is bound and listening, or "err <reason>"
    list             ->  "ok IP PORT;IP PORT;..."
    ping             ->  "ok"

The process runs until it is killed (SIGTERM/SIGKILL by the testbed, by pid).
"""

from __future__ import annotations

import argparse
import ipaddress
import selectors
import socket
import sys
import threading

DRAIN_SECONDS = 2.0


def http_reply(ip: str, port: int) -> bytes:
    body = f"ok {ip} {port}\n".encode()
    head = (
        "HTTP/1.0 200 OK\r\n"
        "Content-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode()
    return head + body


def _handle_conn(conn: socket.socket, reply: bytes) -> None:
    try:
        conn.settimeout(DRAIN_SECONDS)
        try:
            conn.sendall(reply)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):
                pass
        except OSError:
            pass
    finally:
        conn.close()


class TcpServer:
    def __init__(self, control: socket.socket):
        self.sel = selectors.DefaultSelector()
        self.control = control
        self.control.setblocking(False)
        self.sel.register(control, selectors.EVENT_READ, ("control", None))
        self.listeners: dict[tuple[str, int], socket.socket] = {}

    def listen(self, ip: str, port: int) -> None:
        addr = ipaddress.ip_address(ip)
        key = (str(addr), port)
        if key in self.listeners:
            return
        fam = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((str(addr), port))
            s.listen(128)
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        self.listeners[key] = s
        self.sel.register(s, selectors.EVENT_READ, ("tcp", http_reply(*key)))

    def _control_request(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            data = b""
            while not data.endswith(b"\n") and len(data) < 4096:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            words = data.decode(errors="replace").split()
            try:
                if words[:1] == ["listen"] and len(words) == 3:
                    self.listen(words[1], int(words[2]))
                    answer = "ok"
                elif words == ["list"]:
                    answer = "ok " + ";".join(f"{i} {p}" for i, p in sorted(self.listeners))
                elif words == ["ping"]:
                    answer = "ok"
                else:
                    answer = f"err bad request {data!r}"
            except (OSError, ValueError) as e:
                answer = f"err {e}"
            conn.sendall(answer.encode() + b"\n")
        except OSError:
            pass
        finally:
            conn.close()

    def serve_forever(self) -> None:
        while True:
            for key, _ in self.sel.select():
                kind, reply = key.data
                try:
                    conn, _peer = key.fileobj.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                conn.setblocking(True)
                if kind == "control":
                    self._control_request(conn)
                else:
                    threading.Thread(target=_handle_conn, args=(conn, reply), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="servers.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tcp", help="multi-listener TCP/HTTP reply server")
    t.add_argument("--control-fd", type=int, required=True)
    t.add_argument("--listen", nargs=2, action="append", default=[], metavar=("IP", "PORT"))
    args = p.parse_args(argv)

    if args.cmd == "tcp":
        control = socket.socket(fileno=args.control_fd)
        server = TcpServer(control)
        for ip, port in args.listen:
            server.listen(ip, int(port))
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
