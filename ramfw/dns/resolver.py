"""Active resolution of the policy's concrete names (dnspython), inside the target namespace.

Snooping learns what clients are told; active lookups make sure the allowed sets are filled
before the first client asks, and keep them fresh. A failed lookup keeps the last good answer
(the cache simply is not refreshed) and says which name failed and why.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import logging
from dataclasses import dataclass, field

import dns.exception
import dns.resolver
import dns.rdatatype

from ramfw.kernel import netns

log = logging.getLogger(__name__)


@dataclass
class Resolution:
    name: str
    answers: list[tuple[str, int]] = field(default_factory=list)  # (ip, ttl)
    chain: tuple[str, ...] = ()  # queried name, then CNAME targets
    error: str = ""  # one line when a lookup failed ("" when NXDOMAIN/NODATA: not a failure)
    missing: bool = False  # the name does not exist (NXDOMAIN) or has no address


_warned_nameservers: set[tuple[str, str]] = set()  # (file, bad value): each said once, not at every apply


def read_nameservers(netns_name: str | None) -> list[str]:
    """The `nameserver` addresses of the namespace's resolv.conf. A line whose value is not an
    IP address (a host name, garbage) is skipped with one warning: resolv.conf is outside
    ramfw's control, and a bad line must not stop every apply."""
    path = netns.resolv_conf_path(netns_name)
    servers = []
    try:
        with open(path, errors="replace") as fh:
            lines = fh.read(1 << 16).splitlines()  # resolv.conf is small; a huge one is cut here, not trusted more
    except OSError:
        return servers
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            value = parts[1].split("%")[0]
            try:
                servers.append(ipaddress.ip_address(value).compressed)
            except ValueError:
                if (path, value) not in _warned_nameservers:
                    _warned_nameservers.add((path, value))
                    log.warning("%s: nameserver %r is not an IP address; ignored", path, value[:80])
    return list(dict.fromkeys(servers))


class Resolver:
    def __init__(self, netns_name: str | None, servers: list[str], timeout: float = 2.0, workers: int = 8):
        self.netns_name = netns_name
        self.servers = servers
        self.timeout = timeout
        self.workers = workers

    def _resolver(self) -> dns.resolver.Resolver:
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = list(self.servers)
        r.lifetime = self.timeout
        r.timeout = self.timeout / 2
        r.cache = None
        return r

    def resolve(self, name: str) -> Resolution:
        """A and AAAA for one name, following CNAMEs. Runs inside the target namespace."""
        result = Resolution(name, chain=(name,))
        errors = []
        found_any = False
        with netns.entered(self.netns_name):
            resolver = self._resolver()
            for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                try:
                    answer = resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
                except dns.resolver.NXDOMAIN:
                    result.missing = True
                    break
                except (dns.exception.DNSException, OSError) as exc:
                    errors.append(f"{dns.rdatatype.to_text(rdtype)}: {exc.__class__.__name__}: {exc}".strip())
                    continue
                cnames = getattr(answer.chaining_result, "cnames", [])
                if cnames:
                    # each CNAME rrset holds one target: the chain the client would follow
                    result.chain = (name,) + tuple(c[0].target.to_text(omit_final_dot=True).lower() for c in cnames)
                if answer.rrset is not None:
                    found_any = True
                    result.answers += [(r.address, answer.rrset.ttl) for r in answer.rrset]
        if errors and not found_any:
            result.error = "; ".join(errors)
        elif not found_any and not errors:
            result.missing = True
        return result

    def resolve_all(self, names: list[str]) -> list[Resolution]:
        if not names:
            return []
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(self.workers, len(names))) as pool:
            return list(pool.map(self.resolve, names))
