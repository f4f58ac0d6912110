"""A Debian 12 virtual machine under qemu for the VM tier: its own kernel, systemd as PID 1.

The image comes from scripts/vm/build (cached outside the checkout). Each boot gets qcow2
overlays in a temporary directory, so the cached image is never written. The guest has no
network device at all; the only channel is a virtio-serial port served by the guest's agent
(scripts/vm/agent.py), a unix socket here. Nothing outlives `close()`: qemu is powered off,
or killed by its pid, and the temporary directory is removed.

KVM is used only when a short probe boot under it succeeds (on some machines /dev/kvm exists
but guests fail: "failed to set MSR", or a hang after "Probing EDD"); otherwise TCG.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QEMU = "qemu-system-x86_64"


class MachineError(RuntimeError):
    """The VM could not be built, booted, reached or stopped (says which and shows the console)."""


@dataclass
class Result:
    rc: int
    out: str
    err: str
    secs: float

    @property
    def ok(self) -> bool:
        return self.rc == 0


def build_image() -> Path:
    """scripts/vm/build: the image directory (built now, or found in the cache)."""
    proc = subprocess.run([str(REPO / "scripts/vm/build")], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise MachineError(f"scripts/vm/build failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def kvm_works(image: Path, timeout: float = 20.0) -> tuple[bool, str]:
    """A short boot of the image's kernel under KVM, with no root file system: it must reach the
    kernel's own end (a panic for want of a root, which -no-reboot turns into qemu's exit)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "no usable /dev/kvm"
    with tempfile.TemporaryDirectory(prefix="ramfw-vm-kvm-") as tmp:
        console = Path(tmp) / "console.log"
        argv = [QEMU, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults", "-no-user-config",
                "-display", "none", "-no-reboot", "-kernel", str(image / "vmlinuz"),
                "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent", "-serial", f"file:{console}"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return False, f"a KVM probe boot did not finish in {timeout:.0f} s (console ends: {_tail(console, 1)!r})"
        text = console.read_text(errors="replace") if console.exists() else ""
        if "Kernel panic" in text:
            return True, "a KVM probe boot reached the kernel's end"
        return False, f"a KVM probe boot failed: {(out.strip() or _tail(console, 1))[:200]}"


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Machine:
    """One booted VM. run() executes a shell command in the guest as root."""

    def __init__(self, image: Path, accel: str = "tcg", memory_mb: int = 2048, cpus: int = 2):
        self.image = image
        self.accel = accel
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.dir = Path(tempfile.mkdtemp(prefix=f"ramfw-vm-{os.getpid()}-"))
        self.console = self.dir / "console.log"
        self.sock_path = self.dir / "agent.sock"
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.buf = b""
        self.ids = itertools.count(1)
        self.boot_id = ""

    # ---- life cycle -------------------------------------------------------------------------

    def boot(self, timeout: float = 300.0) -> float:
        """Start qemu and wait for the guest agent; returns the seconds it took."""
        t0 = time.monotonic()
        for disk in ("root", "ramfw"):
            backing = os.path.realpath(self.image / f"{disk}.img")
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", backing,
                            str(self.dir / f"{disk}.qcow2")], check=True, capture_output=True)
        argv = [
            QEMU, "-accel", self.accel, *(["-cpu", "host"] if self.accel == "kvm" else []),
            "-m", str(self.memory_mb), "-smp", str(self.cpus),
            "-nodefaults", "-no-user-config", "-display", "none", "-nic", "none",
            "-kernel", str(self.image / "vmlinuz"), "-initrd", str(self.image / "initrd.img"),
            "-append", "console=ttyS0 root=LABEL=root rw panic=-1 loglevel=4",
            "-drive", f"file={self.dir / 'root.qcow2'},format=qcow2,if=virtio,cache=unsafe",
            "-drive", f"file={self.dir / 'ramfw.qcow2'},format=qcow2,if=virtio,cache=unsafe",
            "-device", "virtio-rng-pci",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=agent,path={self.sock_path},server=on,wait=off",
            "-device", "virtserialport,chardev=agent,name=ramfw.agent",
            "-serial", f"file:{self.console}",
        ]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not self.sock_path.exists():
            self._check_qemu()
            if time.monotonic() > deadline:
                raise MachineError(f"qemu made no agent socket in 10 s\n{self.console_tail()}")
            time.sleep(0.05)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(self.sock_path))
        self.boot_id = self.wait_agent(timeout)
        return time.monotonic() - t0

    def wait_agent(self, timeout: float, not_boot_id: str = "") -> str:
        """Ping until the agent answers (from a boot other than not_boot_id); its boot id."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_qemu()
            try:
                reply = self._request({"op": "ping"}, timeout=2.0)
            except TimeoutError:
                continue
            if reply["boot_id"] != not_boot_id:
                return reply["boot_id"]
            time.sleep(0.5)
        raise MachineError(f"the guest agent did not answer in {timeout:.0f} s\n{self.console_tail()}")

    def reboot(self, timeout: float = 300.0) -> float:
        """`systemctl reboot` in the guest (qemu resets and boots the same kernel); seconds taken."""
        t0 = time.monotonic()
        old = self.boot_id
        self.run("systemctl reboot --no-block", timeout=30)
        self.boot_id = self.wait_agent(timeout, not_boot_id=old)
        return time.monotonic() - t0

    def close(self) -> None:
        """Power off (or kill qemu by pid) and remove every temporary file."""
        try:
            if self.proc and self.proc.poll() is None:
                try:
                    self._send({"id": next(self.ids), "op": "run", "sh": "systemctl poweroff --no-block", "timeout": 10})
                    self.proc.wait(timeout=60)
                except (OSError, subprocess.TimeoutExpired):
                    pass
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait(timeout=30)
        finally:
            if self.sock:
                self.sock.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---- commands ---------------------------------------------------------------------------

    def run(self, sh: str, timeout: float = 120.0, check: bool = False, env: dict | None = None) -> Result:
        """Run `sh -c SH` in the guest as root; check=True raises with its output on a non-zero exit."""
        reply = self._request({"op": "run", "sh": sh, "timeout": timeout, "env": env or {}}, timeout=timeout + 30)
        if "error" in reply:
            raise MachineError(f"agent could not run {sh!r}: {reply['error']}")
        res = Result(reply["rc"], base64.b64decode(reply["out"]).decode(errors="replace"),
                     base64.b64decode(reply["err"]).decode(errors="replace"), reply["secs"])
        if check and not res.ok:
            raise AssertionError(f"guest command failed (exit {res.rc}): {sh}\n--- stdout\n{res.out[-3000:]}\n--- stderr\n{res.err[-3000:]}")
        return res

    def sh(self, sh: str, timeout: float = 120.0) -> str:
        """Run and return stdout; a non-zero exit fails with the command's output."""
        return self.run(sh, timeout=timeout, check=True).out

    def put(self, path: str, data: str | bytes, mode: int = 0o644) -> None:
        raw = data.encode() if isinstance(data, str) else data
        reply = self._request({"op": "put", "path": path, "data": base64.b64encode(raw).decode(), "mode": mode}, timeout=60)
        if reply.get("rc") != 0:
            raise MachineError(f"agent could not write {path}: {reply.get('error')}")

    def journal(self, lines: int = 400) -> str:
        """The guest's journal (this boot and the one before, if any), for failure reports."""
        try:
            return self.run(f"journalctl --no-pager -o short-monotonic -n {lines}", timeout=60).out
        except Exception as exc:  # noqa: BLE001 - the report must not hide the real failure
            return f"(journal unavailable: {exc})\n{self.console_tail()}"

    def console_tail(self, lines: int = 40) -> str:
        return f"--- serial console (last {lines} lines)\n{_tail(self.console, lines)}"

    # ---- the wire ---------------------------------------------------------------------------

    def _check_qemu(self) -> None:
        if self.proc and self.proc.poll() is not None:
            out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
            raise MachineError(f"qemu exited ({self.proc.returncode}): {out.strip()[-2000:]}\n{self.console_tail()}")

    def _send(self, req: dict) -> None:
        self.sock.sendall((json.dumps(req) + "\n").encode())

    def _request(self, req: dict, timeout: float) -> dict:
        """Send one request and wait for the reply with its id (replies to abandoned requests,
        e.g. pings sent while the guest was booting, are dropped)."""
        req_id = next(self.ids)
        self._send({"id": req_id, **req})
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                try:
                    reply = json.loads(line)
                except ValueError:
                    continue
                if reply.get("id") == req_id:
                    return reply
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply to {req.get('op')} in {timeout:.0f} s")
            self.sock.settimeout(min(left, 1.0))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                self._check_qemu()
                continue
            if not chunk:
                raise MachineError(f"qemu closed the agent socket\n{self.console_tail()}")
            self.buf += chunk
