"""Which xtables flavour holds ramfw's rules in a namespace, and reading a flavour's tables.

Two xtables flavours live side by side in a Linux kernel, and a rule is only visible to the
tools of its own flavour: iptables-legacy (setsockopt IPT_SO_SET_REPLACE on per-namespace legacy
tables; python-iptables drives only this one: it links libip4tc/libip6tc, the legacy libiptc)
and iptables-nft (the same rules kept as nf_tables `ip filter` / `ip6 filter` tables, what
Debian's `iptables` and therefore Debian's dockerd use; python-iptables cannot write these).
`probe()` picks the flavour per namespace and says why: the one ramfw already uses there, else
the one holding Docker's chains, else the one holding any rules, else the flavour of the
system's `iptables` command. Rules are then written in one atomic commit per table: with
python-iptables (one libiptc commit) for legacy, falling back to iptables-legacy-restore when
python-iptables is not installed, and with `iptables-nft-restore --noflush --counters` (one
nf_tables transaction) for nft. Both flavours are read with `<flavour>-save -c`, which never
instantiates a table. `KernelState.where` names the exact commands an admin should run, e.g.
"iptables-nft -S RAMFW-OUT; ip6tables-nft -S RAMFW-OUT; ipset list -t (sets ramfw-*)".
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ramfw.common import proc
from ramfw.kernel import netns
from ramfw.backends.iptables.savetext import TableDump, parse_save

FLAVOURS = ("legacy", "nft")
TOOL = {("legacy", 4): "iptables-legacy", ("legacy", 6): "ip6tables-legacy", ("nft", 4): "iptables-nft", ("nft", 6): "ip6tables-nft"}
NFT_FAMILY = {4: "ip", 6: "ip6"}


XTABLES_TIMEOUT = 60.0  # seconds for one iptables(-save/-restore) run: a busy host's big tables


def run_in(netns_name, argv, input_text=None, check=False):
    """A command run inside the namespace (common.proc: timeout, one-line errors)."""
    return proc.run(argv, input_text, timeout=XTABLES_TIMEOUT, check=check, inside=netns.entered(netns_name))


def _legacy_tables(netns_name, family: int) -> list[str] | None:
    """Legacy xtables tables instantiated in the namespace (None: kernel lacks legacy xtables).
    Reading the /proc list instantiates nothing (a getsockopt on a table would)."""
    name = "ip_tables_names" if family == 4 else "ip6_tables_names"
    with netns.entered(netns_name):
        try:
            with open(f"/proc/thread-self/net/{name}") as f:
                return f.read().split()
        except FileNotFoundError:
            return None


def _legacy_module_present() -> bool:
    """ip_tables not loaded yet, but loadable (modular kernels load it on first use)."""
    release = os.uname().release
    return any(Path(f"/lib/modules/{release}/kernel/net/ipv4/netfilter").glob("ip_tables.ko*"))


def tool_available(flavour: str) -> bool:
    return all(shutil.which(f"{TOOL[(flavour, f)]}-save") and shutil.which(f"{TOOL[(flavour, f)]}-restore") for f in (4, 6))


def iptc_available() -> bool:
    return importlib.util.find_spec("iptc") is not None


def read_tables(netns_name, flavour: str, family: int) -> dict[str, TableDump]:
    """Every table of one flavour and family, read with <tool>-save -c; creates nothing."""
    if flavour == "legacy" and not _legacy_tables(netns_name, family):
        return {}
    if not shutil.which(f"{TOOL[(flavour, family)]}-save"):
        return {}
    result = run_in(netns_name, [f"{TOOL[(flavour, family)]}-save", "-c"])
    if result.returncode != 0:
        return {}
    return parse_save(result.stdout)


def read_filter(netns_name, flavour: str, family: int) -> TableDump | None:
    return read_tables(netns_name, flavour, family).get("filter")


def system_flavour() -> str:
    path = shutil.which("iptables")
    real = os.path.basename(os.path.realpath(path)) if path else ""
    return "legacy" if "legacy" in real else "nft"


@dataclass
class Facts:
    legacy_kernel: bool
    available: dict[str, bool]
    ramfw: dict[str, bool]
    docker: dict[str, bool]
    rules: dict[str, bool]
    system: str


def gather_facts(netns_name) -> Facts:
    ramfw = {f: False for f in FLAVOURS}
    docker = {f: False for f in FLAVOURS}
    rules = {f: False for f in FLAVOURS}
    legacy_kernel = _legacy_tables(netns_name, 4) is not None or _legacy_module_present()
    for flavour in FLAVOURS:
        for family in (4, 6):
            for name, dump in read_tables(netns_name, flavour, family).items():
                if name == "filter" and dump.ours():
                    ramfw[flavour] = True
                if any(c.startswith("DOCKER") for c in dump.chains):
                    docker[flavour] = True
                if dump.has_content():
                    rules[flavour] = True
    available = {
        "legacy": legacy_kernel and (iptc_available() or tool_available("legacy")),
        "nft": tool_available("nft"),
    }
    return Facts(legacy_kernel, available, ramfw, docker, rules, system_flavour())


def choose_flavour(facts: Facts, forced: str | None = None) -> tuple[str | None, str]:
    """(flavour or None, one line saying why)."""
    if forced:
        if forced not in FLAVOURS:
            return None, f"unknown iptables flavour {forced!r} (legacy or nft)"
        return (forced, "flavour chosen explicitly") if facts.available[forced] else (None, _unavailable(forced, facts))
    choice = why = None
    for fact, text in (
        (facts.ramfw, "ramfw's chains are already there"),
        (facts.docker, "Docker's chains are there"),
        (facts.rules, "the namespace's existing iptables rules are there"),
    ):
        holders = [f for f in FLAVOURS if fact[f]]
        if len(holders) == 1:
            choice, why = holders[0], text
            break
        if len(holders) == 2 and choice is None:
            why = f"{text.split(' are')[0]} are in both flavours; following the system's iptables"
            choice = facts.system
            break
    if choice is None:
        choice, why = facts.system, f"no iptables rules yet; the system's iptables command is iptables-{facts.system}"
    if not facts.available[choice]:
        return None, f"{why} (iptables-{choice}), but " + _unavailable(choice, facts)
    return choice, why


def _unavailable(flavour: str, facts: Facts) -> str:
    if flavour == "legacy":
        if not facts.legacy_kernel:
            return "this kernel has no legacy xtables (ip_tables)"
        return "neither python-iptables nor iptables-legacy-restore is installed"
    return "iptables-nft-save/-restore are not installed"

