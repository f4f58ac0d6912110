"""The demo behind scripts/demo: see that script's header."""

import os
import subprocess
import sys
import tempfile

from testbed import Testbed

HUB = {  # what the sandbox's DNS answers for Docker Hub's hosts (catalog names, testbed addresses)
    "registry-1.docker.io": ["198.51.100.10", "2001:db8:100::10"],
    "auth.docker.io": ["198.51.100.11"],
    "production.cloudflare.docker.com": ["198.51.100.12"],
}
QUAY = {"quay.io": ["198.51.100.20", "2001:db8:100::20"]}


def say(text=""):
    print(text, flush=True)


def ramfw(*args):
    proc = subprocess.run([sys.executable, "-m", "ramfw.cli", *args], capture_output=True, text=True)
    out = (proc.stderr + proc.stdout).rstrip()
    for line in out.splitlines():
        say("    " + line)
    if proc.returncode != 0:
        raise SystemExit(f"demo: ramfw {' '.join(args)} failed with exit code {proc.returncode}")


def attempt(tb, name):
    ip = tb.resolve(name)[0]
    r = tb.connect(ip, 443)
    ms = r.elapsed * 1000
    if r.ok:
        say(f"  {name:<34} -> {ip:<15} port 443: CONNECTED in {ms:.1f} ms")
    else:
        say(f"  {name:<34} -> {ip:<15} port 443: REFUSED ({r.error}) in {ms:.1f} ms")
    return r.ok


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
        say(f"\n$ ramfw up --netns {tb.client}        # embedded default policy: allow docker.io")
        ramfw("up", "--netns", tb.client)
        say("\nwith ramfw:")
        hub_ok = attempt(tb, "registry-1.docker.io")
        attempt(tb, "production.cloudflare.docker.com")
        quay_ok = attempt(tb, "quay.io")
        say(f"\n$ ramfw status --netns {tb.client}")
        ramfw("status", "--netns", tb.client)
        say(f"\n$ ramfw explain quay.io --netns {tb.client}")
        ramfw("explain", "quay.io", "--netns", tb.client)
        say(f"\n$ ramfw down --netns {tb.client}")
        ramfw("down", "--netns", tb.client)
    say("\nsandbox removed.")
    if not hub_ok or quay_ok:
        raise SystemExit("demo: enforcement did not behave as expected")
    say("demo: Docker Hub allowed, quay.io refused at the IP layer, as the default policy says.")


if __name__ == "__main__":
    main()
