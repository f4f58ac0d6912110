"""[tls] policy keys, their one-line errors, the digest, and what the plan and the backends
render from them."""

import pytest

from ramfw.backends import sni_rules
from ramfw.backends.iptables.backend import IptablesBackend
from ramfw.backends.iptables.render import is_our_jump
from ramfw.backends.nft.backend import NftBackend
from ramfw.errors import PolicyError
from ramfw.plan import SNI_MASK, plan
from ramfw.policy.load import parse_policy

BASE = 'allow = ["reg.example.test"]\n'


def load(text):
    return parse_policy(BASE + text, "policy.toml")


def test_default_is_off_and_the_digest_of_existing_policies_is_unchanged():
    p = load("")
    assert p.tls.sni == "off" and p.tls.ports == (443,)
    assert "tls" not in p.to_dict()
    assert plan(p, {}, 0.0).sni is None
    assert load('[tls]\nsni = "off"\n').digest == p.digest
    assert load('[tls]\nsni = "enforce"\n').digest != p.digest


def test_keys_are_read():
    p = load('[tls]\nsni = "audit"\nports = [443, 8443]\n')
    assert p.tls.sni == "audit" and p.tls.ports == (443, 8443)


@pytest.mark.parametrize("text, key, words", [
    ('[tls]\nsni = "on"\n', "tls.sni", "must be one of off, audit, enforce"),
    ('[tls]\nports = [0]\n', "tls.ports[0]", "not a port number"),
    ('[tls]\nports = [70000]\n', "tls.ports[0]", "not a port number"),
    ('[tls]\nports = ["443"]\n', "tls.ports[0]", "not a port number"),
    ('[tls]\nports = [443, 443]\n', "tls.ports[1]", "listed twice"),
    ('[tls]\nports = []\n', "tls.ports", "non-empty"),
    ('[tls]\nports = 443\n', "tls.ports", "non-empty list"),
    (f'[tls]\nports = {list(range(1, 34))}\n', "tls.ports", "at most 32"),
    ('[tls]\nsnis = "enforce"\n', "tls.snis", "unknown key"),
    ('mode = "denylist"\nblock = ["x.test"]\n[tls]\nsni = "enforce"\n', "tls.sni", "allowlist"),
])
def test_bad_keys_are_one_line_each(text, key, words):
    with pytest.raises(PolicyError) as err:
        load(text)
    lines = err.value.lines()
    assert any(key in line and words in line for line in lines), lines
    assert all("\n" not in line for line in lines)


def test_audit_mode_only_audits_sni_too():
    p = load('mode = "audit"\n[tls]\nsni = "enforce"\n')
    assert plan(p, {}, 0.0).sni.mode == "audit"


def test_plan_puts_sni_first_and_backends_render_it():
    p = load('[tls]\nsni = "enforce"\nports = [443, 8443]\n[network]\nallow_cidrs = ["198.51.100.70/32"]\n[scope]\nforward = true\n')
    d = plan(p, {"reg.example.test": {"198.51.100.60": 1e9}}, 0.0, ("198.51.100.53",), "queue")
    assert all(c.rules[0].kind == "sni_bind" for c in d.chains)
    assert d.sni.ports == (443, 8443) and d.sni.cidrs4 == ("198.51.100.70/32",)
    native = NftBackend(features={"queue": True}).render(d)
    assert "queue num 3735 bypass" in native and "tcp dport { 443, 8443 }" in native
    assert "ct direction original meta l4proto tcp reject with tcp reset" in native
    fallback = NftBackend(features={"queue": False}).render(d)
    assert "queue num 3735" not in fallback and f"ct mark set ct mark | {SNI_MASK:#x}" in fallback
    # the SNI rules come before established traffic is accepted (a ClientHello is established)
    chain = fallback.split("chain output_filter")[1]
    assert chain.index("tcp dport { 443, 8443 }") < chain.index("ct state established,related accept")
    # packets without payload stay in the kernel: IP length = headers, per TCP data offset
    assert "chain sni_check" in native and "ip hdrlength 5 tcp doff 8 ip length 52 return" in native
    assert "ip6 nexthdr tcp tcp doff 8 ip6 length 32 return" in native
    ipt = IptablesBackend().render(d)
    assert '-p tcp -m length --length 52 -m u32 --u32 "0x0>>0x18&0xf=0x5&&0x20>>0x1c=0x8" -j RETURN' in ipt
    assert "-A RAMFW-SNI-OUT -p tcp -m set --match-set ramfw-allow4 dst -j NFQUEUE --queue-num 3735 --queue-bypass" in ipt
    assert "-A RAMFW-SNI-FWD -d 198.51.100.70/32 -p udp -j REJECT --reject-with icmp-admin-prohibited" in ipt
    jump = "-p tcp -m multiport --dports 443,8443 -m connmark ! --mark 0x10000000/0x30000000 -j RAMFW-SNI-OUT"
    assert f"-I OUTPUT 1 {jump}" in ipt and is_our_jump(jump)


def test_audit_does_not_refuse_quic():
    d = plan(load('[tls]\nsni = "audit"\n'), {}, 0.0)
    assert not d.sni.refuse_quic
    assert "udp dport" not in "\n".join(sni_rules.nft_rules(d, True))
