"""`ramfw dry-run`: the ruleset a policy renders to, with the names resolved and the wildcards
learned at apply time listed above it; touches no kernel."""

from __future__ import annotations

from ramfw.backends.choose import CLASSES
from ramfw.dns.cache import DnsCache
from ramfw.dns.resolver import read_nameservers
from ramfw.errors import UsageError
from ramfw.plan import plan


def render(pol, backend: str) -> str:
    if backend not in CLASSES:
        raise UsageError(f"--backend must be one of {', '.join(CLASSES)}; got {backend!r}")
    servers = tuple(pol.dns.servers) or tuple(read_nameservers(None))
    desired = plan(pol, DnsCache().snapshot(), 0.0, servers, "off")
    names = pol.concrete_names("allow")
    lines = [f"# policy {pol.digest} from {pol.source}: {pol.mode_label}",
             f"# names resolved at apply time ({len(names)}): {', '.join(names)}"]
    wild = [str(p) for p, _ in pol.allow_set.patterns if p.is_wildcard]
    if wild:
        lines.append(f"# wildcards learned by DNS snooping only: {', '.join(wild)}")
    lines.append(CLASSES[backend](None).render(desired))
    return "\n".join(lines)
