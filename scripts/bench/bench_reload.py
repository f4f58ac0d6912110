"""How fast a policy edit takes effect, and how fast the testbed itself starts and stops (root;
builds its own namespace pairs). These figures used to be asserted by functional tests
(tests/netns/test_snoop.py and tests/e2e: "within 2 s"; tests/netns/test_testbed.py: "start +
stop under 2 s"); the tests now keep only generous bounds, and the figures are printed here.

- policy edit -> first accepted connection to a newly allowed name, per backend (the file is
  replaced atomically, as an editor or a config manager does; the controller polls it every
  0.25 s, resolves the new name and applies one transaction): median and worst of TRIALS;
- SIGHUP -> "reloaded" in the controller's log, same;
- testbed start + stop (two namespaces, a veth pair, dnsmasq), median and worst of 5.
"""

import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import ControllerProcess
from testbed import Testbed
from wait import time_until

TRIALS = 8
BASE = "198.51.100.{}"


def policy_text(names: list[str]) -> str:
    quoted = ", ".join(f'"{n}"' for n in names)
    return f'allow = [{quoted}]\n[dns]\nmin_ttl = 60\ngrace = 0\n'


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def reload_figures(backend: str) -> tuple[list[float], list[float]]:
    edits, hups = [], []
    names = {f"n{i}.reload.test": [BASE.format(100 + i)] for i in range(TRIALS + 1)}
    with Testbed("bench") as tb, tempfile.TemporaryDirectory(prefix="ramfw-bench-") as tmp:
        tb.set_names(names, ttl=60)
        for ips in names.values():
            tb.serve_tcp(ips[0], 443)
        policy = Path(tmp) / "policy.toml"
        allowed = ["n0.reload.test"]
        policy.write_text(policy_text(allowed))
        ctl = ControllerProcess(tb.client, policy, backend=backend, state_dir=Path(tmp) / "state",
                                log_path=Path(tmp) / "run.log").start()
        try:
            ctl.wait_ready()
            for i in range(1, TRIALS + 1):
                allowed.append(f"n{i}.reload.test")
                ip = BASE.format(100 + i)
                write_atomic(policy, policy_text(allowed))
                took = time_until(lambda: tb.connect(ip, 443, timeout=0.5).ok, 15, interval=0.01)
                if took is None:
                    raise SystemExit(f"{backend}: n{i}.reload.test not reachable 15 s after the edit\n{ctl.log_tail()}")
                edits.append(took)
                before = ctl.output().count("reloaded (SIGHUP)")
                ctl.proc.send_signal(signal.SIGHUP)
                took = time_until(lambda: ctl.output().count("reloaded (SIGHUP)") > before, 15, interval=0.01)
                if took is None:
                    raise SystemExit(f"{backend}: no reload 15 s after SIGHUP\n{ctl.log_tail()}")
                hups.append(took)
        finally:
            ctl.finish()
    return edits, hups


def testbed_figures(rounds: int = 5) -> list[float]:
    times = []
    for _ in range(rounds):
        t0 = time.monotonic()
        with Testbed(tag="sp"):
            pass
        times.append(time.monotonic() - t0)
    return times


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:.0f} ms, worst {max(values) * 1000:.0f} ms"


def main(backends=()):
    for backend in backends or ("nft", "iptables"):
        edits, hups = reload_figures(backend)
        print(f"{backend}: policy edit -> newly allowed name reachable ({TRIALS} edits): {ms(edits)}   target <= 2000 ms")
        print(f"{backend}: SIGHUP -> reloaded ({TRIALS} reloads): {ms(hups)}")
    print(f"testbed start + stop (5 rounds): {ms(testbed_figures())}   target <= 2000 ms")


if __name__ == "__main__":
    main(sys.argv[1:])
