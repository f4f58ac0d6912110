"""Backend figures, nftables and iptables + ipset side by side (root; builds its own namespace
pair and removes it).

Full apply time for 10,000 and 100,000 set elements (target <= 1 s for 100,000), single-element
add latency into a 100,000 set (target p99 <= 1 ms), and iperf3 TCP throughput between the
namespaces with ramfw's ruleset and 100,000 elements loaded versus no ruleset, as a ratio
measured in the same run (target >= 0.95).
"""

import ipaddress
import json
import statistics
import sys
import time

from ramfw.backends.iptables.backend import IptablesBackend
from ramfw.backends.nft.backend import NftBackend
from ramfw.plan import Element, plan
from ramfw.policy.load import parse_policy
from testbed import Testbed

PEER = "198.51.100.77"


def desired_with(n: int, extra: list[str] = ()):
    pol = parse_policy('allow = ["bench.test"]', "bench")
    # element IPs from 2001:db8:100::/64 and 198.18.0.0/15-free doc ranges would run out for v4;
    # use v6 for the bulk (the set lookup cost is the same) and the peer in v4
    base = int(ipaddress.ip_address("2001:db8:100::1:0"))
    ips = {str(ipaddress.ip_address(base + i)): 3600.0 for i in range(n)}
    for ip in extra:
        ips[ip] = 3600.0
    return plan(pol, {"bench.test": ips}, 0.0, ("198.51.100.53",), "off")


def apply_time(backend, n: int) -> float:
    desired = desired_with(n, [PEER])
    backend.apply(desired)  # warm (first apply creates the table)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        backend.apply(desired)
        times.append(time.perf_counter() - t)
    return min(times)


def add_latency(backend, count=500):
    lat = []
    base = int(ipaddress.ip_address("198.51.100.0"))
    for i in range(count):
        ip = str(ipaddress.ip_address(base + 100 + i % 100))
        t = time.perf_counter()
        backend.add_elements({"allow4": [Element(ip, 300)]})
        lat.append(time.perf_counter() - t)
    lat.sort()
    return lat[len(lat) // 2], lat[int(len(lat) * 0.99)]


def iperf(tb, seconds=4) -> float:
    out = tb.run(tb.client, "iperf3", "-c", PEER, "-t", str(seconds), "-J", timeout=seconds + 20).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"]


def throughput_ratio(tb, backend, desired, rounds=4):
    """iperf3 with and without the ruleset, alternated so drift hits both sides alike."""
    with_rules, without = [], []
    for _ in range(rounds):
        backend.destroy()
        without.append(iperf(tb, 3))
        backend.apply(desired)
        with_rules.append(iperf(tb, 3))
    return statistics.median(with_rules), statistics.median(without)


def main(names=()):
    """`names`: the backends to measure (nft, iptables); all when empty."""
    classes = [c for c in (NftBackend, IptablesBackend) if not names or c.name in names]
    with Testbed("bench") as tb:
        tb.add_address(PEER)
        server = tb.spawn(tb.inet, "iperf3", "-s", "-B", PEER)
        time.sleep(0.3)
        for cls in classes:
            backend = cls(tb.client, cls.probe(tb.client).features)
            name = backend.name
            for n in (10_000, 100_000):
                target = "   target <= 1000 ms" if n == 100_000 else ""
                print(f"{name}: full apply, {n:>7,} elements: {apply_time(backend, n) * 1000:8.1f} ms{target}")
            p50, p99 = add_latency(backend)
            print(f"{name}: single add into 100,000 set: p50 {p50 * 1000:.3f} ms, p99 {p99 * 1000:.3f} ms   target p99 <= 1 ms")
            with_rules, without = throughput_ratio(tb, backend, desired_with(100_000, [PEER]))
            print(f"{name}: iperf3 TCP with ruleset + 100,000 elements {with_rules / 1e9:.2f} Gbit/s, "
                  f"without {without / 1e9:.2f} Gbit/s (medians, alternated), ratio {with_rules / without:.3f}   target >= 0.95")
            backend.destroy()
            backend.close()
        server.terminate()


if __name__ == "__main__":
    main(sys.argv[1:])
