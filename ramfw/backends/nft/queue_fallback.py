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

The nft backend owns this: its apply installs the chain when the snoop mode is queue and the
kernel's nftables lacks `queue` (and removes it otherwise), its check reports what differs, its
destroy removes it. Every command runs through common.proc (a timeout, one-line errors).
"""

from __future__ import annotations

import ipaddress
import json
import shutil

from ramfw.common import proc
from ramfw.kernel import netns
from ramfw.kernel.nftnl import NftReader
from ramfw.errors import BackendError


CHAIN = "RAMFW-DNSQ"
TABLE = "mangle"
TOOLS = {4: "iptables-nft", 6: "ip6tables-nft"}
NFT_FAMILIES = ("ip", "ip6")  # where iptables-nft keeps the mangle tables


def available() -> bool:
    return all(shutil.which(t) and shutil.which(f"{t}-restore") for t in TOOLS.values())


def _run(netns_name, argv, input_text=None, check=True):
    result = proc.run(argv, input_text, inside=netns.entered(netns_name))
    if check and result.returncode != 0:
        raise BackendError(f"{argv[0]} refused the DNS queue rule: {proc.first_error_line(result)}")
    return result


def _nft_tables(netns_name) -> set[tuple[str, str]]:
    result = proc.run(["nft", "-j", "list", "tables"], inside=netns.entered(netns_name))
    if result.returncode != 0 or not result.stdout.strip():
        return set()
    return {(t["table"]["family"], t["table"]["name"]) for t in json.loads(result.stdout)["nftables"] if "table" in t}


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


class QueueFallback:
    """The xtables DNS queue chain in one namespace, and the nft tables installing it created
    (recorded so that a later `ramfw down` deletes a mangle table ramfw brought into being)."""

    def __init__(self, netns_name: str | None, created: list[str] = ()):
        self.netns_name = netns_name
        self.created = list(created)
        self.installed: bool | None = None  # None: not known in this process yet

    def install(self, servers4, servers6, queue_num: int) -> None:
        """Install or replace the queue rules."""
        ns = self.netns_name
        before = _nft_tables(ns)
        for family, servers in ((4, servers4), (6, servers6)):
            tool = TOOLS[family]
            lines = [f"*{TABLE}", f":{CHAIN} - [0:0]"]
            lines += [f"-A {CHAIN} {spec}" for spec in rule_specs(servers, queue_num)]
            lines.append("COMMIT")
            # --noflush: only our chain is (re)declared, and declaring it empties it first.
            _run(ns, [f"{tool}-restore", "--noflush"], "\n".join(lines) + "\n")
            if _run(ns, [tool, "-t", TABLE, "-C", "PREROUTING", "-j", CHAIN], check=False).returncode != 0:
                _run(ns, [tool, "-t", TABLE, "-I", "PREROUTING", "1", "-j", CHAIN])
        self.installed = True
        new = {f"{fam} {name}" for fam, name in _nft_tables(ns) - before if name == TABLE}
        self.created = sorted(set(self.created) | new)

    def problems(self, servers4, servers6, queue_num: int) -> list[str]:
        """What differs from the rules install() writes, per family: chain, jump, rules."""
        found = []
        for family, servers in ((4, servers4), (6, servers6)):
            tool = TOOLS[family]
            listing = _run(self.netns_name, [tool, "-t", TABLE, "-S", CHAIN], check=False)
            if listing.returncode != 0:
                found.append(f"{tool} {TABLE} chain {CHAIN} is missing")
                continue
            if _run(self.netns_name, [tool, "-t", TABLE, "-C", "PREROUTING", "-j", CHAIN], check=False).returncode != 0:
                found.append(f"{tool} {TABLE} PREROUTING no longer jumps to {CHAIN}")
            rules = [ln.removeprefix(f"-A {CHAIN} ") for ln in listing.stdout.splitlines() if ln.startswith(f"-A {CHAIN} ")]
            want = rule_specs(servers, queue_num)
            if len(rules) != len(want):
                found.append(f"{tool} {TABLE} chain {CHAIN} has {len(rules)} rules instead of {len(want)}")
            elif rules != want:  # by content: a rule replaced keeps the count
                found.append(f"{tool} {TABLE} chain {CHAIN} was edited: its rules are not the ones ramfw installed")
        return found

    def present(self) -> bool:
        """Whether the chain is in either mangle table: read over netlink, no command run."""
        for family in NFT_FAMILIES:
            with NftReader(self.netns_name, family, TABLE) as reader:
                if reader.table_comment() is not None and CHAIN in reader.chains():
                    return True
        return False

    def remove_if_present(self) -> bool:
        """remove(), unless the chain is known not to be there (this process removed it, or a
        netlink read finds it in neither mangle table) and no created table waits for removal:
        an apply or teardown without the chain runs no command."""
        if not self.created and (self.installed is False or (self.installed is None and not self.present())):
            self.installed = False
            return False
        return self.remove()

    def remove(self) -> bool:
        """Remove our chain and its jumps; drop a mangle table we created if it is empty again."""
        if not available():
            return False
        ns = self.netns_name
        removed = False
        for tool in TOOLS.values():
            while _run(ns, [tool, "-t", TABLE, "-D", "PREROUTING", "-j", CHAIN], check=False).returncode == 0:
                removed = True
            if _run(ns, [tool, "-t", TABLE, "-S", CHAIN], check=False).returncode == 0:
                _run(ns, [tool, "-t", TABLE, "-F", CHAIN])
                _run(ns, [tool, "-t", TABLE, "-X", CHAIN])
                removed = True
        for spec in self.created:
            family, name = spec.split()
            _delete_if_empty(ns, family, name)
        self.created = []
        self.installed = False
        return removed


def _delete_if_empty(netns_name, family: str, name: str) -> None:
    listing = proc.run(["nft", "-j", "list", "table", family, name], inside=netns.entered(netns_name))
    if listing.returncode != 0:
        return
    items = json.loads(listing.stdout)["nftables"]
    if any("rule" in i or ("chain" in i and "hook" not in i["chain"]) for i in items):
        return  # somebody else uses it now
    proc.run(["nft", "delete", "table", family, name], inside=netns.entered(netns_name))
