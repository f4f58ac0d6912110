"""DNS snooping figures (root; builds its own namespace pair and removes it).

- DNS latency added by `queue` mode at 1,000 queries/s: p50/p99 with ramfw running and without,
  same run (target: p99 added <= 2 ms).
- Answers processed per second by ramfw in `queue` and `log` mode under dnsperf at full speed,
  and the same load through `dnsmasq --nftset` filling an nft set, the closest existing tool
  (target: ramfw >= 1.0x dnsmasq).
- Controller RSS under that load (target <= 60 MB) and idle CPU.

Every answer names a distinct AAAA address, so each one is new to both tools.
"""

import contextlib
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from ramfw.kernel import netns
from testbed import DNS4, Testbed

NAMES = 4000
DURATION = 6


def names():
    return {f"n{i}.bench.test": [f"2001:db8:100::1:{i:x}"] for i in range(NAMES)}


def query_bytes(qid: int, name: str) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", 28, 1)


def latency_probe(ns: str, server: str, rate: int = 1000, seconds: float = 5.0):
    """Send `rate` queries/s for `seconds`; return sorted RTTs (s) and the count lost."""
    with netns.entered(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.5)
    sent: dict[int, float] = {}
    rtts: list[float] = []
    done = threading.Event()

    def receive():
        while not done.is_set() or len(rtts) < len(sent):
            try:
                data = sock.recv(4096)
            except socket.timeout:
                if done.is_set():
                    return
                continue
            t = time.perf_counter()
            qid = struct.unpack_from("!H", data)[0]
            if qid in sent:
                rtts.append(t - sent.pop(qid))

    rx = threading.Thread(target=receive)
    rx.start()
    total = int(rate * seconds)
    start = time.perf_counter()
    for i in range(total):
        target = start + i / rate
        while (now := time.perf_counter()) < target:
            time.sleep(max(0.0, min(target - now, 0.0005)))
        qid = i & 0xFFFF
        sent[qid] = time.perf_counter()
        sock.sendto(query_bytes(qid, f"n{i % NAMES}.bench.test"), (server, 53))
    done.set()
    rx.join()
    sock.close()
    rtts.sort()
    return rtts, total - len(rtts)


def pct(values, p):
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


def dnsperf(tb: Testbed, server: str, seconds: int = DURATION) -> float:
    data = tb.run_dir / "dnsperf.txt"
    data.write_text("".join(f"n{i}.bench.test AAAA\n" for i in range(NAMES)))
    out = tb.run(tb.client, "dnsperf", "-s", server, "-d", str(data), "-l", str(seconds), "-q", "64", "-c", "4", timeout=seconds + 30).stdout
    m = re.search(r"Queries per second:\s+([\d.]+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    return float(m.group(1)) if m else 0.0, int(lost.group(1)) if lost else -1


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status(ns: str, env) -> dict:
    out = subprocess.run([sys.executable, "-m", "ramfw.cli", "status", "--netns", ns, "--json"], capture_output=True, text=True, env=env).stdout
    return json.loads(out)


def run_mode(tb: Testbed, mode: str, env) -> dict:
    policy = tb.run_dir / f"policy-{mode}.toml"
    policy.write_text(f'allow = ["**.bench.test"]\n[dns]\nservers = ["{DNS4}"]\nsnoop = "{mode}"\n')
    log = open(tb.run_dir / f"ramfw-{mode}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "ramfw.cli", "run", "--netns", tb.client, "--policy", str(policy)], stdout=log, stderr=log, env=env)
    try:
        for _ in range(100):
            try:
                if status(tb.client, env)["controller"]["running"]:
                    break
            except (ValueError, KeyError):
                pass
            time.sleep(0.1)
        result = {}
        if mode == "queue":
            # first sight: most answers carry an address new to the sets (a kernel write each);
            # then the same names again: answers only refresh what is known
            for phase in ("cold", "warm"):
                rtts, lost = latency_probe(tb.client, DNS4)
                result[phase] = (pct(rtts, 0.5), pct(rtts, 0.99), lost)
        cpu0 = cpu_seconds(proc.pid)
        time.sleep(5)
        result["idle_cpu"] = (cpu_seconds(proc.pid) - cpu0) / 5 * 100
        seen0 = status(tb.client, env)["controller_counters"].get("snoop_answers_seen", 0)
        peak = [0.0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mb(proc.pid))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample)
        sampler.start()
        t0 = time.monotonic()
        qps, lost = dnsperf(tb, DNS4)
        elapsed = time.monotonic() - t0
        time.sleep(2.5)  # let the heartbeat publish the counters
        stop.set()
        sampler.join()
        seen = status(tb.client, env)["controller_counters"].get("snoop_answers_seen", 0) - seen0
        result.update(qps=qps, lost=lost, processed=seen / elapsed, rss=peak[0])
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        subprocess.run([sys.executable, "-m", "ramfw.cli", "down", "--netns", tb.client], capture_output=True, env=env)


@contextlib.contextmanager
def dnsmasq_nftset(tb: Testbed, domain: str, set_timeout: str = ""):
    """dnsmasq in the client namespace on 127.0.0.1, forwarding to the testbed DNS with no cache
    (every query forwarded, every answer added) and adding each IPv6 answer under `domain` to
    the nft set `inet dnsmasqref allow6` (--nftset): the closest existing tool to ramfw's job."""
    tb.run(tb.client, "nft", "add table inet dnsmasqref")
    timeout = f" timeout {set_timeout};" if set_timeout else ""
    tb.run(tb.client, "nft", f"add set inet dnsmasqref allow6 {{ type ipv6_addr; flags timeout;{timeout} }}")
    proc = tb.spawn(
        tb.client, "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--cache-size=0",
        "--dns-forward-max=4096", "--listen-address=127.0.0.1", "--bind-interfaces", f"--server={DNS4}",
        f"--nftset=/{domain}/6#inet#dnsmasqref#allow6", f"--pid-file={tb.run_dir}/dnsmasq-ref.pid",
    )
    try:
        time.sleep(0.5)
        yield "127.0.0.1"
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        tb.run(tb.client, "nft", "delete table inet dnsmasqref")


def dnsmasq_reference(tb: Testbed) -> tuple[float, int]:
    with dnsmasq_nftset(tb, "bench.test") as server:
        return dnsperf(tb, server)


def main():
    env = dict(os.environ, RAMFW_STATE_DIR=tempfile.mkdtemp(prefix="ramfw-bench-"))
    with Testbed("bdns") as tb:
        tb.set_names(names(), ttl=300)
        base_rtts, base_lost = latency_probe(tb.client, DNS4)
        base_qps, _ = dnsperf(tb, DNS4)
        queue = run_mode(tb, "queue", env)
        logm = run_mode(tb, "log", env)
        ref_qps, ref_lost = dnsmasq_reference(tb)
    b50, b99 = pct(base_rtts, 0.5), pct(base_rtts, 0.99)
    print(f"dns: latency at 1,000 q/s without ramfw          p50 {b50 * 1000:.2f} ms  p99 {b99 * 1000:.2f} ms  (lost {base_lost})")
    for phase, what in (("cold", "new addresses"), ("warm", "known addresses")):
        q50, q99, qlost = queue[phase]
        print(f"dns: latency at 1,000 q/s, queue, {what:<15} p50 {q50 * 1000:.2f} ms  p99 {q99 * 1000:.2f} ms  (lost {qlost}); "
              f"added p50 {(q50 - b50) * 1000:+.2f} ms  p99 {(q99 - b99) * 1000:+.2f} ms   target p99 added <= 2 ms")
    print(f"dns: dnsperf full speed, no ramfw        {base_qps:10,.0f} answers/s")
    for name, r in (("queue", queue), ("log", logm)):
        print(f"dns: dnsperf full speed, {name:<5} mode      {r['qps']:10,.0f} answers/s (lost {r['lost']}); ramfw processed {r['processed']:,.0f} answers/s")
    print(f"dns: dnsmasq --nftset (no cache)         {ref_qps:10,.0f} answers/s (lost {ref_lost})")
    print(f"dns: ramfw queue mode vs dnsmasq --nftset: {queue['processed'] / ref_qps:.2f}x   target >= 1.0x")
    print(f"dns: ramfw log mode vs dnsmasq --nftset:   {logm['processed'] / ref_qps:.2f}x")
    print(f"dns: controller RSS under load: queue {queue['rss']:.1f} MB, log {logm['rss']:.1f} MB   target <= 60 MB")
    print(f"dns: controller idle CPU: queue {queue['idle_cpu']:.2f} %, log {logm['idle_cpu']:.2f} % of one core")


if __name__ == "__main__":
    main()
