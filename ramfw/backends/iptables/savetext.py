"""iptables-save text, the form in which ramfw reads and compares its rules: parsing
`<tool>-save -c` output into tables of chains and rules (with counters), and comparing one
family's table against what render.py says belongs there. Pure: no I/O.

Rules are compared as iptables-save prints them (its canonical text), so a rule replaced by an
equivalent-looking one with another match, target or address is found by its content, not only
by the number of rules.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from ramfw.backends.meta import parse_meta
from ramfw.backends.iptables.render import DNS_IN, DNS_OUT, DOCKER_USER, MAIN_CHAIN, META, TablePart, is_our_jump, is_ours, jump_target


@dataclass
class TableDump:
    chains: dict[str, str] = field(default_factory=dict)  # chain -> policy ("-" for user chains)
    rules: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)  # chain -> [(args, packets, bytes)]

    def ours(self) -> list[str]:
        return [c for c in self.chains if is_ours(c)]

    def has_content(self) -> bool:
        return any(r for r in self.rules.values()) or any(p == "-" for p in self.chains.values()) or any(
            p not in ("-", "ACCEPT") for p in self.chains.values()
        )

    def meta(self) -> dict[str, str]:
        for args, _p, _b in self.rules.get(META, []):
            toks = shlex.split(args)
            if "--comment" in toks:
                return parse_meta(toks[toks.index("--comment") + 1])
        return {}


def parse_save(text: str) -> dict[str, TableDump]:
    """iptables-save [-c] output -> table -> TableDump."""
    tables: dict[str, TableDump] = {}
    cur: TableDump | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            cur = tables.setdefault(line[1:], TableDump())
        elif cur is None:
            continue
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            cur.chains[name] = policy
            cur.rules.setdefault(name, [])
        elif line == "COMMIT":
            cur = None
        else:
            packets = nbytes = 0
            if line.startswith("["):
                counts, line = line.split("]", 1)
                packets, nbytes = (int(x) for x in counts[1:].split(":"))
                line = line.strip()
            if line.startswith("-A "):
                _, chain, *rest = line.split(" ", 2)
                cur.rules.setdefault(chain, []).append((rest[0] if rest else "", packets, nbytes))
    return tables


def table_problems(part: TablePart, dump: TableDump, tool: str, anchor: str, family: int) -> list[str]:
    """Where one family's filter table (`dump`, as read) differs from `part` (as rendered now):
    missing, resized or edited chains, foreign chains under ramfw's prefix, missing, misplaced,
    outdated or stale jumps, and jumps left in FORWARD once Docker's chain took them over. One
    line each, naming the tool that shows it. META's absence is reported once, by the caller."""
    problems = []
    for chain, rules in part.chains.items():
        have = dump.rules.get(chain)
        if chain not in dump.chains:
            if not (chain == META and family == 4):
                problems.append(f"chain {chain} ({tool}) is missing")
        elif len(have) != len(rules):
            problems.append(f"chain {chain} ({tool}) has {len(have)} rules instead of {len(rules)}")
        elif chain != META:  # META's comment varies with the flavour; its digest is checked apart
            changed = [i + 1 for i, ((args, _p, _b), want) in enumerate(zip(have, rules)) if args != want]
            if changed:
                problems.append(f"chain {chain} ({tool}) was edited: rule(s) {', '.join(map(str, changed))} differ from ramfw's")
    for extra in sorted(set(dump.ours()) - set(part.chains)):
        problems.append(f"chain {extra} ({tool}) is not ramfw's")
    for anchor_chain, jumps in part.jumps.items():
        rules = [a for a, _p, _b in dump.rules.get(anchor_chain, [])]
        found: dict[str, str] = {}  # target -> its first problem (a DNS chain has two jumps)
        for pos, want in enumerate(jumps):
            target = jump_target(want)
            if target in found or (pos < len(rules) and rules[pos] == want):
                continue
            if want in rules:
                found[target] = f"jump from {anchor_chain} to {target} ({tool}) is not rule {pos + 1}"
            elif any(is_our_jump(a) and jump_target(a) == target for a in rules):
                found[target] = f"jump from {anchor_chain} to {target} ({tool}) is not the one ramfw writes (an earlier version's?)"
            else:
                found[target] = f"jump from {anchor_chain} to {target} ({tool}) is missing"
        problems += found.values()
        extra = [a for a in rules if is_our_jump(a) and a not in jumps] + [a for a in set(jumps) if rules.count(a) > 1]
        if extra:
            problems.append(f"{anchor_chain} ({tool}) holds {len(extra)} stale jump(s) to ramfw's chains")
    if anchor == DOCKER_USER:
        stale = [a for a, _p, _b in dump.rules.get("FORWARD", []) if jump_target(a) in (MAIN_CHAIN["forward"], DNS_IN, DNS_OUT)]
        if stale:
            targets = dict.fromkeys(jump_target(a) for a in stale)
            problems.append(f"FORWARD ({tool}) still jumps to {', '.join(targets)}: it belongs in {DOCKER_USER}")
    return problems
