"""The exception rules, the answer rules and the repair bookkeeping, as rendered (no kernel).

The real packets are in tests/netns/test_attacks.py; these pin the rendered text so a change
that widens an exception is seen at once."""

from ramfw.backends.nft import queue_fallback as xtqueue
from ramfw.backends.iptables.render import table_part
from ramfw.backends.links import Links, connected_networks
from ramfw.backends.nft.backend import NftBackend
from ramfw.backends.owned import OwnedElements
from ramfw.plan import plan
from ramfw.policy.load import parse_policy

LINKS = Links(("203.0.113.0/25",), ("2001:db8:113::/64",), (("198.51.100.53", "eth0"), ("2001:db8:100::53", "eth0")))
SERVERS = ("198.51.100.53", "2001:db8:100::53", "127.0.0.53")


def chain(text: str, name: str) -> str:
    """The body of one chain of a rendered nft script (its lines up to the closing tab-brace)."""
    return text.split(f"chain {name} {{", 1)[1].split("\n\t}", 1)[0]


def desired(text="", snoop="queue"):
    return plan(parse_policy(text, "p"), {}, 0.0, SERVERS, snoop)


def test_connected_networks_leave_out_gateways_link_local_and_loopback():
    routes = [
        {"dst": "default", "gateway": "203.0.113.1", "dev": "eth0"},
        {"dst": "203.0.113.0/25", "dev": "eth0", "protocol": "kernel", "scope": "link"},
        {"dst": "203.0.113.64/26", "dev": "eth0"},  # inside the one above: collapsed
        {"dst": "198.51.100.0/24", "gateway": "203.0.113.1", "dev": "eth0"},
        {"dst": "203.0.113.200", "dev": "docker0"},
        {"dst": "127.0.0.0/8", "dev": "lo"},
        {"dst": "203.0.113.250", "type": "broadcast", "dev": "eth0"},
    ]
    assert connected_networks(routes, 4) == ("203.0.113.0/25", "203.0.113.200/32")
    routes6 = [{"dst": "fe80::/64", "dev": "eth0"}, {"dst": "2001:db8:113::/64", "dev": "eth0"},
               {"dst": "default", "gateway": "2001:db8:113::1", "dev": "eth0"}]  # fmt: skip
    assert connected_networks(routes6, 6) == ("2001:db8:113::/64",)


def test_nft_exceptions_reach_only_the_link():
    b = NftBackend(None)
    b.links = LINKS
    text = b.render(desired())
    out = chain(text, "output_filter")
    assert "ip6 hoplimit 255 ip6 daddr { fe80::/10, ff02::/16, 2001:db8:113::/64 } accept" in out
    assert "ip6 hoplimit 1 ip6 daddr ff00::/8 accept" in out
    assert "udp sport 68 udp dport 67 ip daddr { 255.255.255.255, 203.0.113.0/25 } accept" in out
    assert "udp sport 546 udp dport 547 ip6 daddr { ff02::1:2, fe80::/10, 2001:db8:113::/64 } accept" in out
    for line in out.splitlines():
        if "icmpv6" in line or "dport 67" in line or "dport 547" in line:
            assert "daddr" in line, f"an exception without a destination limit: {line}"


def test_nft_without_route_facts_admits_only_link_local_and_multicast():
    text = NftBackend(None).render(desired())
    assert "ip6 daddr { fe80::/10, ff02::/16 } accept" in text
    assert "ip daddr { 255.255.255.255 } accept" in text


def test_forward_hook_has_no_link_exceptions():
    d = desired("[scope]\noutput = false\nforward = true")
    kinds = [r.kind for r in d.chains[0].rules]
    assert "accept_link_local" not in kinds and "accept_published" in kinds
    b = NftBackend(None)
    b.links = LINKS
    fwd = chain(b.render(d), "forward_filter")
    assert "icmpv6" not in fwd and "dport 67" not in fwd and "dport 547" not in fwd
    assert "ct status dnat accept" in fwd


def test_nft_answers_need_the_reverse_path_and_loopback_only_for_loopback_resolvers():
    text = NftBackend(None).render(desired())
    answers = chain(text, "dns_input")
    assert 'ip saddr { 198.51.100.53 } iifname != "lo" fib saddr . iif oif exists' in answers
    assert 'ip saddr { 127.0.0.53 } iifname "lo" meta l4proto' in answers
    assert 'ip6 saddr { 2001:db8:100::53 } iifname != "lo" fib saddr . iif oif exists' in answers


def test_iptables_exceptions_and_answer_interfaces():
    d = desired()
    v4 = table_part(d, 4, links=LINKS)
    v6 = table_part(d, 6, links=LINKS)
    assert "-d 255.255.255.255/32 -p udp -m udp --sport 68 --dport 67 -j ACCEPT" in v4.chains["RAMFW-OUT"]
    assert "-d 203.0.113.0/25 -p udp -m udp --sport 68 --dport 67 -j ACCEPT" in v4.chains["RAMFW-OUT"]
    assert not [r for r in v4.chains["RAMFW-OUT"] if "--dport 67" in r and "-d " not in r]
    assert "-d 2001:db8:113::/64 -p ipv6-icmp -m icmp6 --icmpv6-type 135 -m hl --hl-eq 255 -j ACCEPT" in v6.chains["RAMFW-OUT"]
    assert not [r for r in v6.chains["RAMFW-OUT"] if ("icmp6" in r or "547" in r) and "-d " not in r]
    assert "-s 198.51.100.53/32 -i eth0 -p udp -m udp --sport 53 -j NFQUEUE --queue-num 3733 --queue-bypass" in v4.chains["RAMFW-DNS-IN"]
    assert "-s 127.0.0.53/32 -i lo -p tcp -m tcp --sport 53 -j NFQUEUE --queue-num 3733 --queue-bypass" in v4.chains["RAMFW-DNS-IN"]
    # no route known: at least never over loopback
    assert "-s 198.51.100.53/32 ! -i lo -p udp" in " ".join(table_part(d, 4).chains["RAMFW-DNS-IN"])


def test_xtqueue_rules_check_the_reverse_path():
    specs = xtqueue.rule_specs(["198.51.100.53", "127.0.0.53"], 3733)
    assert specs[0] == "-s 198.51.100.53/32 ! -i lo -p udp -m rpfilter -m udp --sport 53 -j NFQUEUE --queue-num 3733 --queue-bypass"
    assert specs[2] == "-s 127.0.0.53/32 -i lo -p udp -m udp --sport 53 -j NFQUEUE --queue-num 3733 --queue-bypass"


def test_owned_elements_flag_foreign_ones_and_forget_expired_ones():
    now = [100.0]
    owned = OwnedElements(clock=lambda: now[0])
    assert owned.foreign("allow4", {"198.51.100.9"}) == []  # never applied here: knows nothing
    owned.reset({"allow4": ["198.51.100.1"]})
    owned.add("allow4", ["198.51.100.2"])
    assert owned.foreign("allow4", {"198.51.100.1", "198.51.100.2", "198.51.100.9"}) == ["198.51.100.9"]
    owned.remove("allow4", ["198.51.100.2"])
    assert owned.foreign("allow4", {"198.51.100.2"}) == ["198.51.100.2"]  # removed by ramfw, back by somebody else
    now[0] += 3600  # 198.51.100.1 expired from the kernel long ago: forgotten, so a re-add is foreign
    assert owned.foreign("allow4", set()) == []
    assert owned.foreign("allow4", {"198.51.100.1"}) == ["198.51.100.1"]


def test_owned_elements_are_bounded():
    """A flood fills the sets far past what is worth recording: the record is dropped (and the
    comparison pauses) past the limit, and the next whole apply starts it again."""
    from ramfw.backends import owned as owned_mod

    owned = OwnedElements(clock=lambda: 0.0)
    owned.reset({"allow6": []})
    owned.add("allow6", [f"2001:db8:100::{i:x}" for i in range(owned_mod.LIMIT + 1)])
    assert not owned.known and owned.foreign("allow6", {"2001:db8:100::ffff:1"}) == []
    owned.reset({"allow6": ["2001:db8:100::1"]})
    assert owned.known and owned.foreign("allow6", {"2001:db8:100::1", "2001:db8:100::2"}) == ["2001:db8:100::2"]
