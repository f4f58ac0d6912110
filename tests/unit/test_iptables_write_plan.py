"""The iptables write plan as pure data (no root): what an initial apply, a re-apply, the rollback
after a partial failure and a repair send to iptables-restore.

A small fake of iptables-restore --noflush (`restore`) carries a script out on a TableDump the
way the kernel does, so each test checks the *result* of the script, not just its text."""

import copy

from ramfw.backends.iptables import render, savetext, write
from ramfw.plan import plan
from ramfw.policy.load import parse_policy

DNS4, DNS6 = "198.51.100.53", "2001:db8:100::53"
FOREIGN = "-p tcp -m tcp --dport 22 -j ACCEPT"


def desired(allow='["reg.test"]', snoop="queue", forward=True):
    text = f"allow = {allow}" + ("\n[scope]\nforward = true" if forward else "")
    cache = {"reg.test": {"198.51.100.10": 1300.0}, "other.test": {"198.51.100.20": 1300.0}}
    return plan(parse_policy(text, "p"), cache, 1000.0, (DNS4, DNS6), snoop)


def parts(d):
    return {f: render.table_part(d, f, "FORWARD", "meta") for f in (4, 6)}


def restore(dump: savetext.TableDump | None, script: list[str]) -> savetext.TableDump:
    """iptables-restore --noflush of one `*filter ... COMMIT` script, on a copy of `dump`."""
    out = copy.deepcopy(dump) if dump is not None else savetext.TableDump()
    for chain in ("INPUT", "FORWARD", "OUTPUT"):
        out.chains.setdefault(chain, "ACCEPT")
        out.rules.setdefault(chain, [])
    assert script[0] == "*filter" and script[-1] == "COMMIT"
    for line in script[1:-1]:
        counts = (0, 0)
        if line.startswith("["):
            head, line = line.split("] ", 1)
            counts = tuple(int(x) for x in head[1:].split(":"))
        op, chain, *rest = line.split(" ", 2)
        if op.startswith(":"):  # declares a chain: created, or emptied
            out.chains[op[1:]] = "-"
            out.rules[op[1:]] = []
        elif op == "-D":
            args = [a for a, _p, _b in out.rules[chain]]
            del out.rules[chain][args.index(rest[0])]  # the first rule with these arguments
        elif op == "-I":
            pos, args = rest[0].split(" ", 1)
            out.rules[chain].insert(int(pos) - 1, (args, 0, 0))
        elif op == "-A":
            assert chain in out.chains, f"-A to a chain that does not exist: {chain}"
            out.rules[chain].append((rest[0], *counts))
        elif op == "-X":
            assert not out.rules[chain], f"-X of a chain that still has rules: {chain}"
            del out.chains[chain], out.rules[chain]
        else:
            raise AssertionError(f"unexpected line {line!r}")
    refs = {render.jump_target(a) for rules in out.rules.values() for a, _p, _b in rules}
    assert not {r for r in refs if render.is_ours(r)} - set(out.chains), "a rule jumps to a chain that is gone"
    return out


def holds(dump: savetext.TableDump, part: render.TablePart) -> bool:
    """The table holds exactly ramfw's part: its chains with their rules, its jumps first."""
    if sorted(dump.ours()) != sorted(part.chains):
        return False
    if any([a for a, _p, _b in dump.rules[c]] != rules for c, rules in part.chains.items()):
        return False
    for anchor, jumps in part.jumps.items():
        have = [a for a, _p, _b in dump.rules.get(anchor, [])]
        if have[: len(jumps)] != jumps or sum(render.is_our_jump(a) for a in have) != len(jumps):
            return False
    return True


def applied(d, before=None):
    """Each family's table after an apply of `d` on `before` (family -> dump)."""
    before = before or {}
    plans = write.plan_apply(parts(d), before)
    return {wp.family: restore(before.get(wp.family), write.restore_script(wp)) for wp in plans}


def test_initial_apply_writes_both_families_in_order_with_zero_counters():
    d = desired()
    plans = write.plan_apply(parts(d), {4: None, 6: None})
    assert [wp.family for wp in plans] == [4, 6]
    script = write.restore_script(plans[0])
    assert ":RAMFW-OUT - [0:0]" in script and not any(l.startswith("-D") or l.startswith("-X") for l in script)
    assert all(l.startswith("[0:0] -A ") for l in script if "-A " in l)
    for family, table in applied(d).items():
        assert holds(table, parts(d)[family])


def test_reapply_keeps_counters_and_leaves_jumps_in_place():
    d = desired()
    tables = applied(d)
    for family, table in tables.items():  # traffic went through
        table.rules["RAMFW-OUT"] = [(a, 7, 700) for a, _p, _b in table.rules["RAMFW-OUT"]]
        table.rules["OUTPUT"].append((FOREIGN, 1, 1))
    plans = write.plan_apply(parts(d), tables)
    for wp in plans:
        assert wp.jump == {} and wp.unjump == {} and wp.delete_chains == []
        assert all((p, b) == (7, 700) for _a, p, b in wp.chains["RAMFW-OUT"])
        after = restore(tables[wp.family], write.restore_script(wp))
        assert holds(after, parts(d)[wp.family]) and after.rules["OUTPUT"][-1][0] == FOREIGN


def test_a_policy_change_moves_only_what_changed():
    old = applied(desired(snoop="queue", forward=True))
    new = desired(snoop="off", forward=False)
    plans = write.plan_apply(parts(new), old)
    wp4 = plans[0]
    assert sorted(wp4.delete_chains) == ["RAMFW-DNS-IN", "RAMFW-DNS-OUT", "RAMFW-FWD", "RAMFW-REFUSE-FWD"]
    assert "FORWARD" in wp4.unjump and "FORWARD" not in wp4.jump
    for wp in plans:
        assert holds(restore(old[wp.family], write.restore_script(wp)), parts(new)[wp.family])


def test_rollback_after_the_second_family_failed_restores_the_first():
    before = applied(desired(allow='["reg.test"]', snoop="queue"))
    new = desired(allow='["reg.test", "other.test"]', snoop="log", forward=False)
    plans = write.plan_apply(parts(new), before)
    now4 = restore(before[4], write.restore_script(plans[0]))  # IPv4 written, then IPv6 refused
    assert holds(now4, parts(new)[4])
    rollback = write.plan_rollback(4, before[4], now4)
    back = restore(now4, write.restore_script(rollback))
    assert holds(back, parts(desired(allow='["reg.test"]', snoop="queue"))[4])
    assert back.rules["RAMFW-OUT"] == before[4].rules["RAMFW-OUT"]


def test_rollback_of_a_first_apply_removes_everything_it_wrote():
    now = applied(desired())[4]
    now.rules["OUTPUT"].append((FOREIGN, 1, 1))
    rollback = write.plan_rollback(4, None, now)
    back = restore(now, write.restore_script(rollback))
    assert back.ours() == [] and [a for a, _p, _b in back.rules["OUTPUT"]] == [FOREIGN]
    assert write.plan_rollback(4, None, None).empty()


def test_repair_restores_edited_rules_and_missing_or_moved_jumps():
    d = desired()
    part = parts(d)[4]
    table = applied(d)[4]
    table.rules["RAMFW-OUT"][-1] = ("-j ACCEPT", 3, 3)  # the refusal replaced by an accept
    table.rules["OUTPUT"] = [(FOREIGN, 1, 1)] + [r for r in table.rules["OUTPUT"] if render.jump_target(r[0]) != "RAMFW-OUT"]
    table.rules["FORWARD"].reverse()  # jumps out of order
    problems = savetext.table_problems(part, table, "iptables-nft", "FORWARD", 4)
    assert any("RAMFW-OUT (iptables-nft) was edited" in p for p in problems)
    assert "jump from OUTPUT to RAMFW-OUT (iptables-nft) is missing" in problems
    assert any(p.startswith("jump from FORWARD") for p in problems)
    repaired = restore(table, write.restore_script(write.plan_write(part, table)))
    assert holds(repaired, part)
    assert savetext.table_problems(part, repaired, "iptables-nft", "FORWARD", 4) == []
    assert FOREIGN in [a for a, _p, _b in repaired.rules["OUTPUT"]]  # someone else's rule stays


def test_a_foreign_chain_under_our_prefix_and_its_references_go():
    d = desired(forward=False, snoop="off")
    part = parts(d)[4]
    table = applied(d)[4]
    table.chains["RAMFW-EXTRA"], table.rules["RAMFW-EXTRA"] = "-", [("-j ACCEPT", 0, 0)]
    table.rules["INPUT"].append(("-s 203.0.113.5/32 -j RAMFW-EXTRA", 0, 0))
    assert "chain RAMFW-EXTRA (iptables-nft) is not ramfw's" in savetext.table_problems(part, table, "iptables-nft", "FORWARD", 4)
    repaired = restore(table, write.restore_script(write.plan_write(part, table)))
    assert "RAMFW-EXTRA" not in repaired.chains and repaired.rules["INPUT"] == []
