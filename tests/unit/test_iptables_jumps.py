"""The iptables backend's jumps, as pure logic: what is rendered, what counts as ramfw's, and the
write plan that replaces the unconditional jumps earlier versions wrote (no root needed)."""

from ramfw.backends.iptables import render, savetext, write
from ramfw.plan import plan
from ramfw.policy.load import parse_policy

DNS4, DNS6 = "198.51.100.53", "2001:db8:100::53"
OUT_JUMP = "-m conntrack ! --ctstate RELATED,ESTABLISHED -j RAMFW-OUT"
FWD_JUMP = "-m conntrack ! --ctstate RELATED,ESTABLISHED -j RAMFW-FWD"
DNS_OUT_JUMPS = ["-p udp -m udp --dport 53 -j RAMFW-DNS-OUT", "-p tcp -m tcp --dport 53 -j RAMFW-DNS-OUT"]
DNS_IN_JUMPS = ["-p udp -m udp --sport 53 -j RAMFW-DNS-IN", "-p tcp -m tcp --sport 53 -j RAMFW-DNS-IN"]


def desired(snoop="queue", forward=True):
    text = 'allow = ["reg.test"]' + ("\n[scope]\nforward = true" if forward else "")
    return plan(parse_policy(text, "p"), {"reg.test": {"198.51.100.10": 1300.0}}, 1000.0, (DNS4, DNS6), snoop)


def dump_of(rules: dict[str, list[str]]) -> savetext.TableDump:
    d = savetext.TableDump()
    for chain, args in rules.items():
        d.chains[chain] = "-" if render.is_ours(chain) else "ACCEPT"
        d.rules[chain] = [(a, 5, 500) for a in args]
    return d


def test_jumps_are_conditioned_and_dns_chains_come_first():
    part = render.table_part(desired(), 4)
    assert part.jumps["OUTPUT"] == [*DNS_OUT_JUMPS, OUT_JUMP]
    assert part.jumps["INPUT"] == DNS_IN_JUMPS
    assert part.jumps["FORWARD"] == [*DNS_OUT_JUMPS, *DNS_IN_JUMPS, FWD_JUMP]
    assert render.table_part(desired(snoop="off", forward=False), 6).jumps == {"OUTPUT": [OUT_JUMP]}


def test_established_traffic_is_still_accepted_inside_the_main_chain():
    assert render.table_part(desired(), 4).chains["RAMFW-OUT"][0] == "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"


def test_what_counts_as_ramfws_jump():
    for args in [OUT_JUMP, FWD_JUMP, *DNS_OUT_JUMPS, *DNS_IN_JUMPS, "-j RAMFW-OUT", "-g RAMFW-DNS-IN", "-j RAMFW-FWD"]:
        assert render.is_our_jump(args), args
    for args in ["-j DOCKER-USER", "-j ACCEPT", "-s 10.0.0.1/32 -j RAMFW-OUT", "-p udp -m udp --dport 53 -j RAMFW-OUT", "-p tcp -j RAMFW-DNS-IN"]:
        assert not render.is_our_jump(args), args


def test_upgrade_plan_replaces_each_old_jump_once():
    old = dump_of({
        "OUTPUT": ["-j RAMFW-DNS-OUT", "-j RAMFW-OUT", "-p tcp -m tcp --dport 9 -j ACCEPT"],
        "INPUT": ["-j RAMFW-DNS-IN"],
        "FORWARD": ["-j RAMFW-DNS-OUT", "-j RAMFW-DNS-IN", "-j RAMFW-FWD"],
        "RAMFW-OUT": ["-j ACCEPT"], "RAMFW-FWD": [], "RAMFW-DNS-OUT": [], "RAMFW-DNS-IN": [],
    })  # fmt: skip
    part = render.table_part(desired(), 4)
    wp = write.plan_write(part, old)
    assert wp.unjump == {"OUTPUT": ["-j RAMFW-DNS-OUT", "-j RAMFW-OUT"], "INPUT": ["-j RAMFW-DNS-IN"],
                         "FORWARD": ["-j RAMFW-DNS-OUT", "-j RAMFW-DNS-IN", "-j RAMFW-FWD"]}  # fmt: skip
    assert wp.jump == part.jumps
    script = write.restore_script(wp)
    assert script.index("-D OUTPUT -j RAMFW-OUT") < script.index(f"-I OUTPUT 1 {OUT_JUMP}")
    # inserted at 1 in reverse, so they end up in order ahead of the foreign rule
    assert [l for l in script if l.startswith("-I OUTPUT")] == [f"-I OUTPUT 1 {j}" for j in reversed(part.jumps["OUTPUT"])]


def test_current_jumps_are_left_alone_and_a_duplicate_is_replaced():
    part = render.table_part(desired(snoop="off", forward=False), 4)
    current = {c: [] for c in part.chains} | {"OUTPUT": [OUT_JUMP, "-j ACCEPT"]}
    assert write.plan_write(part, dump_of(current)).jump == {}
    doubled = current | {"OUTPUT": [OUT_JUMP, "-j RAMFW-OUT", "-j ACCEPT"]}
    wp = write.plan_write(part, dump_of(doubled))
    assert wp.unjump == {"OUTPUT": [OUT_JUMP, "-j RAMFW-OUT"]} and wp.jump == {"OUTPUT": [OUT_JUMP]}


def test_destroy_removes_old_and_new_jumps():
    dump = dump_of({"OUTPUT": [OUT_JUMP, "-j RAMFW-OUT", "-j ACCEPT"], "INPUT": DNS_IN_JUMPS, "RAMFW-OUT": [], "RAMFW-DNS-IN": []})
    wp = write.destroy_plan(4, dump)
    assert wp.unjump == {"OUTPUT": [OUT_JUMP, "-j RAMFW-OUT"], "INPUT": DNS_IN_JUMPS}
    assert sorted(wp.delete_chains) == ["RAMFW-DNS-IN", "RAMFW-OUT"]
