"""The write plan: which changes turn a family's filter table as read into one holding ramfw's
part, as data (WritePlan), and the iptables-restore input that carries them out in one atomic
commit. Everything but write_restore() is pure, so the order of an apply, its rollback after a
partial failure and a repair are unit-tested without root.

An apply writes IPv4 then IPv6 (plan_apply). A family that fails leaves its table as it was
(one commit); a family already written is put back with plan_rollback(), computed from the table
as read before the apply and as it is now. A repair is an apply against a table somebody edited:
plan_write() re-fills every ramfw chain and re-inserts the jumps that are missing or misplaced.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field

from ramfw.errors import BackendError
from ramfw.backends.iptables.flavour import TOOL, run_in
from ramfw.backends.iptables.render import TablePart, is_our_jump, is_ours, jump_target
from ramfw.backends.iptables.savetext import TableDump


@dataclass
class WritePlan:
    family: int
    chains: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)  # (re)create + fill
    delete_chains: list[str] = field(default_factory=list)
    unjump: dict[str, list[str]] = field(default_factory=dict)  # chain -> rules (args) to delete
    jump: dict[str, list[str]] = field(default_factory=dict)  # anchor -> jump rules (args), inserted first

    def empty(self) -> bool:
        return not (self.chains or self.delete_chains or self.unjump or self.jump)


def plan_write(part: TablePart, dump: TableDump | None) -> WritePlan:
    """The changes that turn `dump` (None: no table yet) into one holding `part`; counters of
    unchanged rules are carried over."""
    dump = dump or TableDump()
    wp = WritePlan(part.family)
    for chain, rules in part.chains.items():
        old: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        for args, p, b in dump.rules.get(chain, []):
            old[args].append((p, b))
        wp.chains[chain] = [(a, *(old[a].popleft() if old[a] else (0, 0))) for a in rules]
    wp.delete_chains = [c for c in dump.ours() if c not in part.chains]
    for chain, rules in dump.rules.items():
        if is_ours(chain):
            continue
        mine = [a for a, _p, _b in rules if is_our_jump(a)]
        want = part.jumps.get(chain, [])
        head = [a for a, _p, _b in rules[: len(want)]]
        if head == want and len(mine) == len(want):
            continue
        if mine:
            wp.unjump[chain] = mine
        if want:
            wp.jump[chain] = want
    for anchor, want in part.jumps.items():
        if anchor not in dump.rules:
            wp.jump[anchor] = want
    # A foreign rule referencing a chain we delete would make the commit fail: drop those too.
    doomed = set(wp.delete_chains)
    for chain, rules in dump.rules.items():
        if not is_ours(chain):
            extra = [a for a, _p, _b in rules if jump_target(a) in doomed and a not in wp.unjump.get(chain, [])]
            if extra:
                wp.unjump.setdefault(chain, []).extend(extra)
    return wp


def destroy_plan(family: int, dump: TableDump) -> WritePlan:
    wp = WritePlan(family)
    wp.delete_chains = dump.ours()
    for chain, rules in dump.rules.items():
        if not is_ours(chain):
            refs = [a for a, _p, _b in rules if is_ours(jump_target(a))]
            if refs:
                wp.unjump[chain] = refs
    return wp



def plan_apply(parts: dict[int, TablePart], dumps: dict[int, TableDump | None]) -> list[WritePlan]:
    """The writes of one apply, in order (IPv4, then IPv6); a family already as wanted is left out."""
    plans = [plan_write(parts[family], dumps.get(family)) for family in sorted(parts)]
    return [wp for wp in plans if not wp.empty()]


def plan_rollback(family: int, before: TableDump | None, now: TableDump | None) -> WritePlan:
    """What puts ramfw's part of a family's table back as it was `before` an apply (None or
    nothing of ramfw's: remove what the apply wrote), given the table as it is `now`."""
    if before is None or not before.ours():
        return destroy_plan(family, now) if now else WritePlan(family)
    part = TablePart(family, {c: [a for a, _p, _b in before.rules.get(c, [])] for c in before.ours()})
    for chain, rules in before.rules.items():
        if not is_ours(chain):
            jumps = [a for a, _p, _b in rules if is_our_jump(a)]
            if jumps:
                part.jumps[chain] = jumps
    return plan_write(part, now)


def restore_script(wp: WritePlan) -> list[str]:
    lines = ["*filter"]
    lines += [f":{c} - [0:0]" for c in list(wp.chains) + wp.delete_chains]  # creates, or empties
    for chain, specs in wp.unjump.items():
        lines += [f"-D {chain} {s}" for s in specs]
    for anchor, targets in wp.jump.items():
        lines += [f"-I {anchor} 1 {j}" for j in reversed(targets)]
    for chain, rules in wp.chains.items():
        lines += [f"[{p}:{b}] -A {chain} {a}" for a, p, b in rules]
    lines += [f"-X {c}" for c in wp.delete_chains]
    lines.append("COMMIT")
    return lines


def write_restore(netns_name, flavour: str, wp: WritePlan) -> None:
    """One <tool>-restore --noflush run: one atomic commit of the filter table."""
    tool = TOOL[(flavour, wp.family)]
    lines = restore_script(wp)
    result = run_in(netns_name, [f"{tool}-restore", "--noflush", "--counters"], "\n".join(lines) + "\n")
    if result.returncode == 0:
        return
    err = [l.strip() for l in result.stderr.strip().splitlines() if l.strip() and not l.startswith("Try `")]
    detail = err[-1] if err else f"exit status {result.returncode}"
    for l in err:
        m = re.search(r"\bline (\d+)", l)
        if m and 0 < int(m.group(1)) <= len(lines):
            detail = f"{l} (`{lines[int(m.group(1)) - 1]}`)"
            break
    raise BackendError(f"{tool}-restore refused ramfw's rules: {detail}")
