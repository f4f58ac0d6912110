"""The name-binding rule: may this ClientHello go to this address? PURE.

    decide(hello, address facts, policy, catalog) -> Decision

A connection passes when its server name is
  1. an allowed name under the policy (allow patterns, block patterns win), and
  2. when the address was learned from DNS (resolution or snooped answers): one of the names
     the address was credited to, or a host of the same catalog registry as one of them
     (Docker Hub's API host and its blob CDN share addresses; both are Docker Hub).
An address admitted by `network.allow_cidrs` (or an infrastructure address) is bound by rule 1
alone: the administrator admitted every name behind it. So is a learned address whose names
ramfw no longer remembers (evicted under a flood of names): rule 1 still holds.

No server name, bytes that are not TLS, a malformed hello, Encrypted Client Hello (the visible
name is only the ECH provider's) and a hello that never completed within the bounds: the
verdict is "no_sni", which the inspector treats as a mismatch under `sni = "enforce"`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from .clienthello import Hello

ALLOW = "allow"
MISMATCH = "mismatch"
NO_SNI = "no_sni"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: str  # "allow" | "mismatch" | "no_sni"
    sni: str | None
    reason: str  # one line, for events and logs
    credited: tuple[str, ...] = ()  # the names the address carries (sorted)


def registry_of(catalog, name: str) -> str | None:
    """The id of the catalog registry whose pulls touch `name`, or None."""
    if catalog is None:
        return None
    found = catalog.owner_of(name)
    return found[0].id if found else None


def decide(hello: Hello, credited: Iterable[str], static: bool, is_allowed: Callable[[str], str],
           registry: Callable[[str], str | None] = lambda name: None, bound: str = "") -> Decision:
    """`credited`: the names the destination address was credited to (empty: none known).
    `static`: the address is admitted by a CIDR of the policy. `is_allowed(name)`: the policy's
    verdict, "allowed" | "blocked" | "unlisted". `registry(name)`: catalog registry id or None.
    `bound`: which assembler bound ended the wait, if one did."""
    names = tuple(sorted(set(credited)))
    if hello.status != "complete":
        if hello.status == "incomplete":
            why = f"ClientHello not complete when the {bound or 'time'} limit was reached"
        elif hello.status == "not_tls":
            why = f"not TLS ({hello.reason})"
        else:
            why = f"malformed ClientHello ({hello.reason})"
        return Decision(NO_SNI, None, why, names)
    if hello.ech:
        return Decision(NO_SNI, hello.sni, "Encrypted Client Hello: the real server name is hidden", names)
    if not hello.sni:
        return Decision(NO_SNI, None, "ClientHello carries no server name", names)
    sni = hello.sni
    verdict = is_allowed(sni)
    if verdict != "allowed":
        return Decision(MISMATCH, sni, f"server name {sni} is {'blocked' if verdict == 'blocked' else 'not allowed'} by the policy", names)
    if static:
        return Decision(ALLOW, sni, "address admitted by allow_cidrs; server name allowed", names)
    if not names:
        return Decision(ALLOW, sni, "no names remembered for the address; server name allowed", names)
    if sni in names:
        return Decision(ALLOW, sni, "server name is a name the address was given for", names)
    own = registry(sni)
    if own is not None:
        for name in names:
            if registry(name) == own:
                return Decision(ALLOW, sni, f"server name and {name} are hosts of catalog registry {own}", names)
    shown = ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
    return Decision(MISMATCH, sni, f"server name {sni} is not a name this address was given for ({shown})", names)
