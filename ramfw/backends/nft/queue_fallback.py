"""The DNS answer queue as an xtables NFQUEUE rule, for kernels whose nftables lacks `queue`.

Some kernels (this project's development machine among them) have nf_tables but not nft_queue,
while the xtables NFQUEUE target works through iptables-nft (nft_compat). ramfw then holds DNS
answers with its own chain RAMFW-DNSQ in the `mangle` table, jumped to first thing from
PREROUTING, so answers for the namespace itself and for routed containers pass through it
before anything else. `--queue-bypass` keeps DNS flowing when no controller listens.

iptables-nft keeps these rules in nftables tables `ip mangle` / `ip6 mangle`, where
`nft list ruleset` and `iptables -S -t mangle` both show them.

Only genuine answers are held (and so credited): from a resolver on a loopback address, those
arriving on `lo`; from any other, those passing a strict reverse-path check (`-m rpfilter`: the
route back to the source leaves through the interface the answer came in on) and not arriving
on `lo` (rpfilter waves loopback traffic through). A process that asked a question knows its
tuple; with CAP_NET_RAW it could forge the answer over loopback or, from a container, through
the bridge. Such a packet is not queued: the snooper never sees it and nothing is learned.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import shutil
import subprocess

from ramfw.kernel import netns
from ramfw.errors import BackendError

log = logging.getLogger(__name__)

CHAIN = "RAMFW-DNSQ"
TABLE = "mangle"
TOOLS = {4: "iptables-nft", 6: "ip6tables-nft"}


def available() -> bool:
    return all(shutil.which(t) and shutil.which(f"{t}-restore") for t in TOOLS.values())


def _run(netns_name, argv, input_text=None, check=True) -> subprocess.CompletedProcess:
    with netns.entered(netns_name):
        proc = subprocess.run(argv, input=input_text, capture_output=True, text=True)
    if check and proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or ["failed"])[0]
        raise BackendError(f"{argv[0]} refused the DNS queue rule: {msg}")
    return proc


def _nft_tables(netns_name) -> set[tuple[str, str]]:
    with netns.entered(netns_name):
        proc = subprocess.run(["nft", "-j", "list", "tables"], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        return set()
    return {(t["table"]["family"], t["table"]["name"]) for t in json.loads(proc.stdout)["nftables"] if "table" in t}


def rule_specs(servers, queue_num: int) -> list[str]:
    """The chain's rules, in the canonical form `iptables -S` prints them (problems() compares)."""
    out = []
    for server in servers:
        addr = ipaddress.ip_address(server)
        where = "-i lo" if addr.is_loopback else "! -i lo"
        for proto in ("udp", "tcp"):
            check = "" if addr.is_loopback else " -m rpfilter"
            out.append(f"-s {addr.compressed}/{addr.max_prefixlen} {where} -p {proto}{check} -m {proto} --sport 53 "
                       f"-j NFQUEUE --queue-num {queue_num} --queue-bypass")
    return out


def install(netns_name: str | None, servers4, servers6, queue_num: int) -> list[str]:
    """Install or replace the queue rules; returns the nft tables this call created."""
    before = _nft_tables(netns_name)
    for family, servers in ((4, servers4), (6, servers6)):
        tool = TOOLS[family]
        lines = [f"*{TABLE}", f":{CHAIN} - [0:0]"]
        lines += [f"-A {CHAIN} {spec}" for spec in rule_specs(servers, queue_num)]
        lines.append("COMMIT")
        # --noflush: only our chain is (re)declared, and declaring it empties it first.
        _run(netns_name, [f"{tool}-restore", "--noflush"], "\n".join(lines) + "\n")
        if _run(netns_name, [tool, "-t", TABLE, "-C", "PREROUTING", "-j", CHAIN], check=False).returncode != 0:
            _run(netns_name, [tool, "-t", TABLE, "-I", "PREROUTING", "1", "-j", CHAIN])
    created = sorted(f"{fam} {name}" for fam, name in _nft_tables(netns_name) - before if name == TABLE)
    return created


def problems(netns_name: str | None, servers4, servers6, queue_num: int) -> list[str]:
    """What differs from the rules install() writes, per family: chain, jump, rules."""
    found = []
    for family, servers in ((4, servers4), (6, servers6)):
        tool = TOOLS[family]
        listing = _run(netns_name, [tool, "-t", TABLE, "-S", CHAIN], check=False)
        if listing.returncode != 0:
            found.append(f"{tool} {TABLE} chain {CHAIN} is missing")
            continue
        if _run(netns_name, [tool, "-t", TABLE, "-C", "PREROUTING", "-j", CHAIN], check=False).returncode != 0:
            found.append(f"{tool} {TABLE} PREROUTING no longer jumps to {CHAIN}")
        rules = [ln.removeprefix(f"-A {CHAIN} ") for ln in listing.stdout.splitlines() if ln.startswith(f"-A {CHAIN} ")]
        want = rule_specs(servers, queue_num)
        if len(rules) != len(want):
            found.append(f"{tool} {TABLE} chain {CHAIN} has {len(rules)} rules instead of {len(want)}")
        elif rules != want:  # by content: a rule replaced keeps the count
            found.append(f"{tool} {TABLE} chain {CHAIN} was edited: its rules are not the ones ramfw installed")
    return found


def remove(netns_name: str | None, created_tables: list[str] = ()) -> bool:
    """Remove our chain and its jumps; drop a mangle table we created if it is empty again."""
    if not available():
        return False
    removed = False
    for family, tool in TOOLS.items():
        while _run(netns_name, [tool, "-t", TABLE, "-D", "PREROUTING", "-j", CHAIN], check=False).returncode == 0:
            removed = True
        if _run(netns_name, [tool, "-t", TABLE, "-S", CHAIN], check=False).returncode == 0:
            _run(netns_name, [tool, "-t", TABLE, "-F", CHAIN])
            _run(netns_name, [tool, "-t", TABLE, "-X", CHAIN])
            removed = True
    for spec in created_tables:
        family, name = spec.split()
        _delete_if_empty(netns_name, family, name)
    return removed


def _delete_if_empty(netns_name, family: str, name: str) -> None:
    with netns.entered(netns_name):
        proc = subprocess.run(["nft", "-j", "list", "table", family, name], capture_output=True, text=True)
    if proc.returncode != 0:
        return
    items = json.loads(proc.stdout)["nftables"]
    if any("rule" in i or ("chain" in i and "hook" not in i["chain"]) for i in items):
        return  # somebody else uses it now
    with netns.entered(netns_name):
        subprocess.run(["nft", "delete", "table", family, name], capture_output=True)
