"""SNI binding's queue as xtables rules, for kernels whose nftables lacks `queue`.

Like the DNS answer queue (queue_fallback.py), but in iptables-nft's `filter` table: holding a
ClientHello and then resetting its connection needs NFQUEUE *and* REJECT in the same hook, and
REJECT exists only in `filter`. ramfw's nft chains (priority filter - 10) mark a connection to
inspect PENDING in its conntrack mark; the chain ramfw-nft-sni here (jumped to first from OUTPUT
and from DOCKER-USER, or FORWARD without Docker, priority filter) queues its packets, and when
the inspector repeats a packet with its verdict in the packet mark, moves the verdict to the
connection and resets a refused one. Only packets of PENDING connections enter the chain.

`--queue-bypass`: with no controller listening, packets pass (the IP allowlist still holds).
"""

from __future__ import annotations

import json
import logging

from ramfw.backends.nft.queue_fallback import TOOLS, _run, available
from ramfw.common import proc
from ramfw.errors import BackendError
from ramfw.kernel import netns
from ramfw.plan import SNI_MASK, SNI_PASS, SNI_PENDING, SNI_REFUSE

log = logging.getLogger(__name__)

# not "RAMFW-…": the iptables backend owns that prefix in this table, and retires it when nft takes over
CHAIN = "ramfw-nft-sni"
TABLE = "filter"
DOCKER_USER = "DOCKER-USER"


def _mark(value: int) -> str:
    return f"{value:#x}/{SNI_MASK:#x}" if value else f"0x0/{SNI_MASK:#x}"


JUMP = f"-m connmark --mark {_mark(SNI_PENDING)} -j {CHAIN}"


def rule_specs(queue_num: int) -> list[str]:
    """The chain's rules as `iptables -S` prints them (problems() compares)."""
    return [
        f"-m mark --mark {_mark(SNI_PASS)} -j CONNMARK --set-xmark {_mark(SNI_PASS)}",
        f"-m mark --mark {_mark(SNI_REFUSE)} -j CONNMARK --set-xmark {_mark(SNI_REFUSE)}",
        f"-p tcp -m connmark --mark {_mark(SNI_REFUSE)} -m conntrack --ctdir ORIGINAL -j REJECT --reject-with tcp-reset",
        f"-m mark --mark {_mark(0)} -m connmark --mark {_mark(SNI_PENDING)} -j NFQUEUE --queue-num {queue_num} --queue-bypass",
    ]


def _anchors(netns_name, tool: str) -> list[str]:
    has_docker = _run(netns_name, [tool, "-t", TABLE, "-S", DOCKER_USER], check=False).returncode == 0
    return ["OUTPUT", DOCKER_USER if has_docker else "FORWARD"]


def install(netns_name: str | None, queue_num: int) -> None:
    """Install or replace the chain and its jumps (BackendError naming the refused step)."""
    try:
        for family, tool in TOOLS.items():
            lines = [f"*{TABLE}", f":{CHAIN} - [0:0]"] + [f"-A {CHAIN} {spec}" for spec in rule_specs(queue_num)] + ["COMMIT"]
            _run(netns_name, [f"{tool}-restore", "--noflush"], "\n".join(lines) + "\n")
            for anchor in _anchors(netns_name, tool):
                if _run(netns_name, [tool, "-t", TABLE, "-C", anchor, *JUMP.split()], check=False).returncode != 0:
                    _run(netns_name, [tool, "-t", TABLE, "-I", anchor, "1", *JUMP.split()])
    except BackendError as exc:
        raise BackendError(f"SNI queue chain {CHAIN}: {exc}".replace("the DNS queue rule", "the rule")) from None


def problems(netns_name: str | None, queue_num: int) -> list[str]:
    found = []
    for family, tool in TOOLS.items():
        listing = _run(netns_name, [tool, "-t", TABLE, "-S", CHAIN], check=False)
        if listing.returncode != 0:
            found.append(f"{tool} {TABLE} chain {CHAIN} is missing")
            continue
        for anchor in _anchors(netns_name, tool):
            if _run(netns_name, [tool, "-t", TABLE, "-C", anchor, *JUMP.split()], check=False).returncode != 0:
                found.append(f"{tool} {TABLE} {anchor} no longer jumps to {CHAIN}")
        rules = [ln.removeprefix(f"-A {CHAIN} ") for ln in listing.stdout.splitlines() if ln.startswith(f"-A {CHAIN} ")]
        if rules != rule_specs(queue_num):
            found.append(f"{tool} {TABLE} chain {CHAIN} was edited: its rules are not the ones ramfw installed")
    return found


def remove(netns_name: str | None) -> bool:
    """Remove the chain and every jump to it; then drop an iptables-nft filter table that holds
    nothing at all (no rule, no chain of its own, every base chain accepting): such a table
    does nothing, and it is most likely the one our install created."""
    if not available():
        return False
    removed = False
    for family, tool in TOOLS.items():
        for anchor in ("OUTPUT", "FORWARD", DOCKER_USER):
            while _run(netns_name, [tool, "-t", TABLE, "-D", anchor, *JUMP.split()], check=False).returncode == 0:
                removed = True
        if _run(netns_name, [tool, "-t", TABLE, "-S", CHAIN], check=False).returncode == 0:
            _run(netns_name, [tool, "-t", TABLE, "-F", CHAIN])
            _run(netns_name, [tool, "-t", TABLE, "-X", CHAIN])
            removed = True
    if removed:
        for family in ("ip", "ip6"):
            _delete_if_noop(netns_name, family)
    return removed


def _delete_if_noop(netns_name, family: str) -> None:
    listed = proc.run(["nft", "-j", "list", "table", family, TABLE], inside=netns.entered(netns_name))
    if listed.returncode != 0:
        return
    items = json.loads(listed.stdout)["nftables"]
    chains = [i["chain"] for i in items if "chain" in i]
    if any("rule" in i or "set" in i or "map" in i for i in items):
        return
    if any("hook" not in c or c.get("policy", "accept") != "accept" for c in chains):
        return
    proc.run(["nft", "delete", "table", family, TABLE], inside=netns.entered(netns_name))
