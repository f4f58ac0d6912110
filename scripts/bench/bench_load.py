"""The controller under a distinct-name load (root; builds its own namespace pair).

300,000 distinct names, each answered with its own IPv6 address (every answer is new to the
sets), asked at saturation by dnsperf, through `ramfw run` (queue mode) and through
`dnsmasq --nftset` (no cache) on the same load, same run:

- new addresses programmed per second (target: ramfw >= 1.0x dnsmasq);
- controller RSS peak under that load (target <= 60 MiB);
- then a Python client that records every answer it receives, on 50,000 further new names:
  the fraction of delivered answers whose address was in the set when checked (target 100 %).

The p99 latency added at 1,000 q/s of new names is bench_dns's "new addresses" line.
"""

import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time

from flood import flood, flood_names
from bench_dns import dnsmasq_nftset, rss_mb
from testbed import DNS4, Testbed, set_addresses

DISTINCT = 300_000
CHECKED = 50_000
SECONDS = 40


def counters(ns: str, env) -> dict:
    out = subprocess.run([sys.executable, "-m", "ramfw.cli", "status", "--netns", ns, "--json"],
                         capture_output=True, text=True, env=env).stdout
    return json.loads(out).get("controller_counters", {})


def dnsperf(tb: Testbed, server: str, names: list[str]) -> tuple[float, float]:
    """One pass over `names` at full speed; (queries/s, seconds)."""
    data = tb.run_dir / "distinct.txt"
    data.write_text("".join(f"{n} AAAA\n" for n in names))
    t0 = time.monotonic()
    out = tb.run(tb.client, "dnsperf", "-s", server, "-d", str(data), "-n", "1", "-l", str(SECONDS),
                 "-q", "256", "-c", "8", timeout=SECONDS + 60).stdout
    m = re.search(r"Queries per second:\s+([\d.]+)", out)
    return (float(m.group(1)) if m else 0.0), time.monotonic() - t0


def nft_set(tb: Testbed, family: str, table: str, name: str) -> set[str]:
    return set_addresses(tb, tb.client, name, "nft", family, table)


def delivered_in_set(tb, server: str, names: list[str], set_reader) -> tuple[int, float]:
    res = flood(tb.client, server, names, seconds=SECONDS)
    delivered = {n: a for n, a in res.received.items() if a}
    sample = random.Random(7).sample(sorted(delivered), min(2000, len(delivered)))
    in_set = set_reader()
    return len(delivered), sum(delivered[n] in in_set for n in sample) / max(1, len(sample))


def ramfw_run(tb: Testbed, load: list[str], check: list[str], env) -> dict:
    policy = tb.run_dir / "policy-load.toml"
    policy.write_text(f'allow = ["**.distinct.test"]\n[dns]\nservers = ["{DNS4}"]\nsnoop = "queue"\n')
    log = open(tb.run_dir / "ramfw-load.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "ramfw.cli", "run", "--netns", tb.client, "--policy", str(policy),
                             "--backend", "nft"], stdout=log, stderr=log, env=env)
    peak = [0.0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb(proc.pid))
            time.sleep(0.1)

    try:
        for _ in range(100):
            if counters(tb.client, env):
                break
            time.sleep(0.1)
        sampler = threading.Thread(target=sample)
        sampler.start()
        before = counters(tb.client, env).get("snoop_ips_programmed", 0)
        qps, seconds = dnsperf(tb, DNS4, load)
        time.sleep(2.5)  # the heartbeat publishes counters every 2 s
        programmed = counters(tb.client, env).get("snoop_ips_programmed", 0) - before
        delivered, fraction = delivered_in_set(tb, DNS4, check, lambda: nft_set(tb, "inet", "ramfw", "allow6"))
        stop.set()
        sampler.join()
        alive = proc.poll() is None
        return dict(qps=qps, rate=programmed / seconds, rss=peak[0], delivered=delivered, fraction=fraction, alive=alive)
    finally:
        stop.set()
        proc.terminate()
        proc.wait(timeout=15)
        log.close()
        keep = os.path.join(tempfile.gettempdir(), "ramfw-bench-load.log")
        with open(tb.run_dir / "ramfw-load.log") as src, open(keep, "w") as dst:
            dst.write(src.read())  # the controller's log outlives the testbed, for a look afterwards
        subprocess.run([sys.executable, "-m", "ramfw.cli", "down", "--netns", tb.client], capture_output=True, env=env)


def dnsmasq_run(tb: Testbed, load: list[str], check: list[str]) -> dict:
    with dnsmasq_nftset(tb, "distinct.test", set_timeout="1h") as server:
        qps, seconds = dnsperf(tb, server, load)
        added = len(nft_set(tb, "inet", "dnsmasqref", "allow6"))
        delivered, fraction = delivered_in_set(tb, server, check, lambda: nft_set(tb, "inet", "dnsmasqref", "allow6"))
        return dict(qps=qps, rate=added / seconds, delivered=delivered, fraction=fraction)


def main():
    env = dict(os.environ, RAMFW_STATE_DIR=tempfile.mkdtemp(prefix="ramfw-bench-"))
    ramfw_names = flood_names(DISTINCT + CHECKED, "r.distinct.test")
    ref_names = flood_names(DISTINCT + CHECKED, "d.distinct.test")
    with Testbed("bload") as tb:
        tb.set_names({**ramfw_names, **ref_names}, ttl=300)
        r_list, d_list = list(ramfw_names), list(ref_names)
        ramfw = ramfw_run(tb, r_list[:DISTINCT], r_list[DISTINCT:], env)
        ref = dnsmasq_run(tb, d_list[:DISTINCT], d_list[DISTINCT:])
    print(f"load: {DISTINCT:,} distinct names, each a new address, dnsperf at saturation")
    print(f"load: ramfw queue mode        {ramfw['qps']:9,.0f} answers/s, {ramfw['rate']:9,.0f} new addresses programmed/s"
          f"{'' if ramfw['alive'] else '  (CONTROLLER DIED)'}")
    print(f"load: dnsmasq --nftset         {ref['qps']:9,.0f} answers/s, {ref['rate']:9,.0f} new addresses programmed/s")
    print(f"load: ramfw vs dnsmasq, addresses programmed/s: {ramfw['rate'] / max(ref['rate'], 1):.2f}x   target >= 1.0x")
    print(f"load: controller RSS peak {ramfw['rss']:.1f} MiB   target <= 60 MiB")
    print(f"load: delivered answers whose address was in the set: ramfw {ramfw['fraction'] * 100:.2f} % "
          f"(of {ramfw['delivered']:,} delivered), dnsmasq {ref['fraction'] * 100:.2f} % (of {ref['delivered']:,})   "
          f"target 100 %")


if __name__ == "__main__":
    main()
