"""The kernel half of SNI binding, as rule text for each backend. PURE (no I/O).

What every backend installs, first in its output/forward chain (before established traffic is
accepted, since a ClientHello travels on an established connection):

  1. a verdict the inspector gave in the packet mark (NF_REPEAT) is moved to the connection's
     conntrack mark, under SNI_MASK (the other bits stay);
  2. a connection marked REFUSE is reset (TCP reset at once, no retransmit wait);
  3. TCP to a TLS port of an allowed address (allow set or allow_cidrs) whose connection has no
     verdict yet goes to the SNI queue, with bypass: with no controller listening the packet
     passes and the IP allowlist alone is enforced;
  4. under enforce, UDP to a TLS port of an allowed address (QUIC) is refused.

A connection with a verdict never reaches user space again: after the first payload everything
runs in the kernel. Packets without payload (SYN, the handshake's ACK) are recognised in the kernel
(IP length = IP header + TCP header) and never queued: one trip to user space per connection,
for its ClientHello. What the kernel cannot judge (IP options, IPv6 extension headers) is queued
and the inspector answers a packet without payload with LOOKED (repeat, not queued again).

Where the kernel's nftables lacks `queue` (this project's machines; Debian 12's 6.1 has it),
the nft backend marks the connection PENDING instead, and an xtables chain in iptables-nft's
`filter` table (priority 0, after ramfw's nft chains at filter - 10) does 1–3 with NFQUEUE and
REJECT: see sni_fallback.py.
"""

from __future__ import annotations

from ramfw.plan import SNI_LOOKED, SNI_MASK, SNI_PASS, SNI_PENDING, SNI_REFUSE, DesiredState, SniHook

ADDR = {4: "ip", 6: "ip6"}
SETS = {4: "allow4", 6: "allow6"}
KEEP = ~SNI_MASK & 0xFFFFFFFF
IPT_CHAIN = {"output": "RAMFW-SNI-OUT", "forward": "RAMFW-SNI-FWD"}
IPT_SET = {4: "ramfw-allow4", 6: "ramfw-allow6"}
REJECT_OTHER = {4: "icmp-admin-prohibited", 6: "icmp6-adm-prohibited"}


def _m(value: int) -> str:
    return f"{value:#x}" if value else "0x0"


def _ports_nft(sni: SniHook) -> str:
    return "{ " + ", ".join(str(p) for p in sni.ports) + " }"


def _ports_ipt(sni: SniHook) -> str:
    return ",".join(str(p) for p in sni.ports)


# ---- nftables ---------------------------------------------------------------------------------


def nft_rules(desired: DesiredState, native_queue: bool, cgroup_match: str = "") -> list[str]:
    """The rules of one output/forward chain (the `sni_bind` step). `cgroup_match` narrows
    queueing to the scope's cgroup on output (e.g. `socket cgroupv2 level 2 "a/b"`)."""
    sni = desired.sni
    if sni is None:
        return []
    mask = f"{SNI_MASK:#x}"
    cg = f"{cgroup_match} " if cgroup_match else ""
    out = []
    if native_queue:
        for bit in (SNI_PASS, SNI_REFUSE):
            out.append(f"meta mark & {mask} == {bit:#x} ct mark set ct mark & {KEEP:#x} | {bit:#x}")
    # original direction only: the reset the kernel sends back carries the refused connection's
    # mark too (attached as related-reply), and must not be rejected in its turn
    out.append(f"ct mark & {mask} == {SNI_REFUSE:#x} ct direction original meta l4proto tcp reject with tcp reset")
    # a LOOKED packet (no payload, native queue) comes back marked and goes on
    cond = f"meta mark & {mask} == 0x0 ct mark & {mask} == 0x0" if native_queue else f"ct mark & {mask} == 0x0"
    for family in (4, 6):
        targets = [f"@{SETS[family]}"]
        cidrs = sni.cidrs4 if family == 4 else sni.cidrs6
        if cidrs:
            targets.append("{ " + ", ".join(cidrs) + " }")
        for target in targets:
            out.append(f"{cond} {cg}{ADDR[family]} daddr {target} tcp dport {_ports_nft(sni)} jump {NFT_CHECK_CHAIN}")
            if sni.refuse_quic:
                out.append(f"{cg}{ADDR[family]} daddr {target} udp dport {_ports_nft(sni)} reject with icmpx admin-prohibited")
    return out


NFT_CHECK_CHAIN = "sni_check"
TCP_DOFFS = range(5, 16)  # TCP header length in 32-bit words


def nft_check_chain(desired: DesiredState, native_queue: bool) -> list[str]:
    """The regular chain both hooks jump to for an undecided connection: packets without
    payload (SYN, the handshake's ACK: IP length = headers) go on without a trip to user space;
    the rest is queued (native) or its connection marked PENDING for the xtables fallback. A
    SYN with data (TCP Fast Open) has payload and is queued like any. IPv4 with options and
    IPv6 with extension headers are queued whatever they carry (the inspector tells)."""
    sni = desired.sni
    if sni is None:
        return []
    out = [f"meta nfproto ipv4 ip hdrlength 5 tcp doff {d} ip length {20 + 4 * d} return" for d in TCP_DOFFS]
    out += [f"meta nfproto ipv6 ip6 nexthdr tcp tcp doff {d} ip6 length {4 * d} return" for d in TCP_DOFFS]
    out.append(f"queue num {sni.queue_num} bypass" if native_queue else f"ct mark set ct mark | {SNI_PENDING:#x}")
    return out


def ipt_no_payload(family: int) -> list[str]:
    """RETURN for packets that carry no payload (see nft_check_chain), as iptables-save prints
    them: the IP length equals the headers' (u32 reads the IPv4 header length, the IPv6 next
    header and the TCP data offset)."""
    out = []
    for d in TCP_DOFFS:
        if family == 4:
            u32 = f"0x0>>0x18&0xf=0x5&&0x20>>0x1c={d:#x}"
            length = 20 + 4 * d
        else:
            u32 = f"0x4>>0x8&0xff=0x6&&0x34>>0x1c={d:#x}"
            length = 40 + 4 * d
        out.append(f'-p tcp -m length --length {length} -m u32 --u32 "{u32}" -j RETURN')
    return out


# ---- iptables (chains in the filter table) ---------------------------------------------------


def _mark(value: int) -> str:
    return f"{_m(value)}/{SNI_MASK:#x}"


def ipt_chain(sni: SniHook, hook: str, family: int, cgroup_path: str = "", save_string=str) -> list[str]:
    """RAMFW-SNI-OUT / -FWD, as iptables-save prints each rule."""
    rules = [
        f"-m mark --mark {_mark(SNI_PASS)} -j CONNMARK --set-xmark {_mark(SNI_PASS)}",
        f"-m mark --mark {_mark(SNI_PASS)} -j RETURN",
        f"-m mark --mark {_mark(SNI_REFUSE)} -j CONNMARK --set-xmark {_mark(SNI_REFUSE)}",
        f"-p tcp -m connmark --mark {_mark(SNI_REFUSE)} -m conntrack --ctdir ORIGINAL -j REJECT --reject-with tcp-reset",
        f"-m mark --mark {_mark(SNI_LOOKED)} -j RETURN",
    ]
    if hook == "output":
        rules.append("-o lo -j RETURN")
        if cgroup_path:
            rules.append(f"-m cgroup ! --path {save_string(cgroup_path)} -j RETURN")
    rules += ipt_no_payload(family)
    cidrs = sni.cidrs4 if family == 4 else sni.cidrs6
    targets = [f"-m set --match-set {IPT_SET[family]} dst"] + [f"-d {c}" for c in cidrs]
    for target in targets:
        first, rest = (target, "") if target.startswith("-d") else ("", target)
        rules.append(f"{first + ' ' if first else ''}-p tcp {rest + ' ' if rest else ''}-j NFQUEUE --queue-num {sni.queue_num} --queue-bypass")
    if sni.refuse_quic:
        for target in targets:
            first, rest = (target, "") if target.startswith("-d") else ("", target)
            rules.append(f"{first + ' ' if first else ''}-p udp {rest + ' ' if rest else ''}-j REJECT --reject-with {REJECT_OTHER[family]}")
    return rules


def ipt_jumps(sni: SniHook, hook: str) -> list[str]:
    """Jumps into the chain: connections already passed never enter it (bulk HTTPS costs one
    conntrack-mark compare); QUIC only when it is refused."""
    chain = IPT_CHAIN[hook]
    out = [f"-p tcp -m multiport --dports {_ports_ipt(sni)} -m connmark ! --mark {_mark(SNI_PASS)} -j {chain}"]
    if sni.refuse_quic:
        out.append(f"-p udp -m multiport --dports {_ports_ipt(sni)} -j {chain}")
    return out


def is_sni_jump(args: str) -> bool:
    toks = args.split()
    return any(toks[i] in ("-j", "-g") and toks[i + 1] in IPT_CHAIN.values() for i in range(len(toks) - 1))


def add_to_table_part(part, desired: DesiredState, family: int, forward_anchor: str, cgroup_path: str = "", save_string=str) -> None:
    """Put the SNI chains and their jumps into an iptables TablePart (chains dict, jumps dict)."""
    sni = desired.sni
    if sni is None:
        return
    for chain in desired.chains:
        part.chains[IPT_CHAIN[chain.hook]] = ipt_chain(sni, chain.hook, family, cgroup_path if chain.hook == "output" else "", save_string)
        anchor = "OUTPUT" if chain.hook == "output" else forward_anchor
        part.jumps.setdefault(anchor, []).extend(ipt_jumps(sni, chain.hook))
