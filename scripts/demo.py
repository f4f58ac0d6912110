"""The demo behind scripts/demo: see that script's header."""

import json
import os
import subprocess
import sys
import tempfile
import time

from testbed import Testbed

HUB = {  # what the sandbox's DNS answers for Docker Hub's hosts (catalog names, testbed addresses)
    "registry-1.docker.io": ["198.51.100.10", "2001:db8:100::10"],
    "auth.docker.io": ["198.51.100.11"],
    "production.cloudflare.docker.com": ["198.51.100.12"],
}
QUAY = {"quay.io": ["198.51.100.20", "2001:db8:100::20"]}


def say(text=""):
    print(text, flush=True)


def ramfw(*args, show=True):
    proc = subprocess.run([sys.executable, "-m", "ramfw.cli", *args], capture_output=True, text=True)
    if show:
        say(f"\n$ ramfw {' '.join(args)}")
        for line in (proc.stderr + proc.stdout).rstrip().splitlines():
            say("    " + line)
    if proc.returncode not in (0, 3):
        raise SystemExit(f"demo: ramfw {' '.join(args)} failed with exit code {proc.returncode}")
    return proc


def attempt(tb, name):
    ip = tb.resolve(name)[0]  # through the sandbox's DNS, as a client would: ramfw sees the answer
    r = tb.connect(ip, 443)
    outcome = "CONNECTED" if r.ok else f"REFUSED ({r.error})"
    say(f"  {name:<34} -> {ip:<15} port 443: {outcome} in {r.elapsed * 1000:.1f} ms")
    return r.ok


def wait_ready(ns, proc):
    for _ in range(200):
        if proc.poll() is not None:
            raise SystemExit("demo: ramfw run exited early")
        st = ramfw("status", "--netns", ns, "--json", show=False)
        if st.returncode == 0 and json.loads(st.stdout)["controller"]["running"]:
            return
        time.sleep(0.05)
    raise SystemExit("demo: ramfw run did not become ready")


def main():
    os.environ.setdefault("RAMFW_STATE_DIR", tempfile.mkdtemp(prefix="ramfw-demo-"))
    with Testbed("demo") as tb:
        tb.set_names({**HUB, **QUAY}, ttl=300)
        for ip in [ip for ips in (*HUB.values(), *QUAY.values()) for ip in ips]:
            tb.serve_tcp(ip, 443)
        say(f"sandbox: client namespace {tb.client}, internet namespace {tb.inet} (DNS 198.51.100.53)")
        say("\nbefore ramfw, the client reaches every registry:")
        attempt(tb, "registry-1.docker.io")
        attempt(tb, "quay.io")
        say(f"\n$ ramfw run --netns {tb.client} &      # the controller, embedded default policy: allow docker.io")
        log = open(os.path.join(os.environ["RAMFW_STATE_DIR"], "run.log"), "w")
        controller = subprocess.Popen([sys.executable, "-m", "ramfw.cli", "run", "--netns", tb.client], stdout=log, stderr=log)
        try:
            wait_ready(tb.client, controller)
            say("\nwith ramfw:")
            hub_ok = attempt(tb, "registry-1.docker.io")
            attempt(tb, "production.cloudflare.docker.com")
            quay_ok = attempt(tb, "quay.io")
            time.sleep(0.3)
            ramfw("events", "--netns", tb.client)
            ramfw("check", "--netns", tb.client)
            ramfw("explain", "quay.io", "--netns", tb.client)
            ramfw("status", "--netns", tb.client)
        finally:
            controller.terminate()
            controller.wait(10)
            log.close()
        ramfw("down", "--netns", tb.client)
    say("\nsandbox removed.")
    if not hub_ok or quay_ok:
        raise SystemExit("demo: enforcement did not behave as expected")
    say("demo: Docker Hub allowed, quay.io refused at the IP layer, as the default policy says.")


if __name__ == "__main__":
    main()
