"""Facts about the namespace's own links that the exception rules need, read from its routes.

Two things cannot be written as constants in a ruleset:

* which networks are directly connected (a DHCP server or a neighbour on such a network is
  local; anything behind a gateway is the internet, whatever the protocol says);
* which interface the route to each trusted resolver uses (a DNS answer is genuine only if it
  arrived where that resolver really is; the same source address arriving over loopback or
  from a container bridge is a forgery).

Backends read them at every apply and check, so a changed route shows up as a difference and
is repaired. `Links()` (nothing known) is what `dry-run` renders with: the exceptions then
admit only link-local and multicast destinations, the strictest form.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass

from ramfw.common import proc
from ramfw.common.proc import CommandError
from ramfw.kernel import netns

log = logging.getLogger(__name__)


# Where link protocols may go whatever the routes say (both backends' exception rules): IPv6
# link-local unicast and link-scope multicast; DHCPv6's All_DHCP_Relay_Agents_and_Servers and
# link-local servers; the IPv4 limited broadcast.
LINK_LOCAL6 = ("fe80::/10", "ff02::/16")
DHCP6_SERVERS = ("ff02::1:2", "fe80::/10")
DHCP4_BROADCAST = ("255.255.255.255",)


@dataclass(frozen=True)
class Links:
    onlink4: tuple[str, ...] = ()  # directly connected IPv4 networks (no gateway), e.g. 203.0.113.0/25
    onlink6: tuple[str, ...] = ()  # directly connected IPv6 networks, link-local ones left out
    via: tuple[tuple[str, str], ...] = ()  # (resolver address, interface its route uses)

    def onlink(self, family: int) -> tuple[str, ...]:
        return self.onlink4 if family == 4 else self.onlink6

    def iface(self, server: str) -> str | None:
        return dict(self.via).get(server)


def is_loopback(addr: str) -> bool:
    return ipaddress.ip_address(addr).is_loopback


def connected_networks(routes: list[dict], family: int) -> tuple[str, ...]:
    """Pure: the directly connected networks among `ip -j route show` entries."""
    out = set()
    for r in routes:
        dst = r.get("dst", "")
        if not dst or dst == "default" or "gateway" in r or "via" in r or r.get("dev") == "lo":
            continue
        if r.get("type", "unicast") != "unicast":
            continue
        try:
            net = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if net.version != family or net.is_link_local or net.is_multicast or net.is_loopback:
            continue
        out.add(net)
    # one entry per address range: nft refuses overlapping intervals in one set
    return tuple(str(n) for n in ipaddress.collapse_addresses(out))


def _ip_json(argv: list[str]) -> list[dict]:
    try:
        result = proc.run(["ip", "-j", *argv], timeout=10)
    except CommandError as exc:
        log.warning("cannot read routes (%s): exception rules admit link-local destinations only", exc)
        return []
    if result.returncode != 0 or not result.stdout.strip():
        return []
    try:
        data = json.loads(result.stdout)
    except ValueError:
        return []
    return data if isinstance(data, list) else []


def read_links(netns_name: str | None, servers=()) -> Links:
    """The namespace's connected networks and the interface towards each resolver."""
    with netns.entered(netns_name):
        on4 = connected_networks(_ip_json(["-4", "route", "show", "table", "main"]), 4)
        on6 = connected_networks(_ip_json(["-6", "route", "show", "table", "main"]), 6)
        via = []
        for server in servers:
            if is_loopback(server):
                via.append((server, "lo"))
                continue
            found = _ip_json(["route", "get", server])
            dev = found[0].get("dev") if found else None
            if dev:
                via.append((server, dev))
    return Links(on4, on6, tuple(via))
