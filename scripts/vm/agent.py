"""Command agent of the ramfw test VM (runs in the guest as ramfw-vm-agent.service).

The VM has no network: its only channel to the host is a virtio-serial port, a unix socket on
the host. Over it travel JSON lines, one request or one reply each:

    {"id": 7, "op": "run", "sh": "systemctl is-active ramfw", "timeout": 60}
        -> {"id": 7, "rc": 0, "out": "<base64>", "err": "<base64>", "secs": 0.12}
    {"id": 8, "op": "ping"}  -> {"id": 8, "boot_id": "...", "uptime": 12.3}
    {"id": 9, "op": "put", "path": "/etc/x", "data": "<base64>", "mode": 420} -> {"id": 9, "rc": 0}

Requests run in threads, so a ping is answered while a long command runs; a command past its
timeout is killed with its whole process group (rc 124). Python's standard library only: the
agent runs with the guest's /usr/bin/python3, whatever is installed in /opt/ramfw.
"""

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time

ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}


def boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as fh:
        return fh.read().strip()


def uptime() -> float:
    with open("/proc/uptime") as fh:
        return float(fh.read().split()[0])


def run(req: dict) -> dict:
    started = time.monotonic()
    proc = subprocess.Popen(
        ["/bin/sh", "-c", req["sh"]], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**ENV, **req.get("env", {})}, cwd="/", start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=req.get("timeout", 120))
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        rc = 124
        err += f"\nagent: killed after {req.get('timeout', 120)} s".encode()
    return {"rc": rc, "out": base64.b64encode(out).decode(), "err": base64.b64encode(err).decode(),
            "secs": round(time.monotonic() - started, 3)}


def put(req: dict) -> dict:
    path = req["path"]
    os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
    tmp = f"{path}.agent-tmp"
    with open(tmp, "wb") as fh:
        fh.write(base64.b64decode(req["data"]))
    os.chmod(tmp, req.get("mode", 0o644))
    os.replace(tmp, path)
    return {"rc": 0}


def handle(req: dict) -> dict:
    op = req.get("op")
    try:
        if op == "ping":
            return {"boot_id": boot_id(), "uptime": uptime()}
        if op == "run":
            return run(req)
        if op == "put":
            return put(req)
        return {"rc": 127, "error": f"unknown op {op!r}"}
    except Exception as exc:  # a reply for every request, whatever went wrong
        return {"rc": 125, "error": f"{type(exc).__name__}: {exc}"}


def main(port: str) -> None:
    for _ in range(300):
        if os.path.exists(port):
            break
        time.sleep(0.1)
    fd = os.open(port, os.O_RDWR)
    write_lock = threading.Lock()

    def reply(req: dict) -> None:
        answer = {"id": req.get("id"), **handle(req)}
        data = (json.dumps(answer) + "\n").encode()
        with write_lock:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]

    buf = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:  # no host connected to the port right now: wait for one
            time.sleep(0.2)
            continue
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                req = json.loads(line)
            except ValueError:
                continue  # a partial line from a host that reconnected: it retries
            threading.Thread(target=reply, args=(req,), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1])
