"""`ramfw learn`: what a policy would break, and the allow entries that would fix it.

Reads the namespace's events (an audit run's would_refuse records, and refused ones), keeps the
hosts the policy in force still would refuse, groups them by the catalog registry whose pulls
touch them (or "unknown"), and suggests a policy fragment: the registry's entry when the catalog
knows the host, else the exact host name. A host on a multi-tenant domain (a storage bucket, a
CDN) is flagged: allowing it may reach other tenants' data, so it is suggested, never silently.

Pure apart from reading the events file: `summarise` takes events and a policy, so unit tests
need no root.
"""

from __future__ import annotations

import json

import typer

from ramfw.daemon import audit
from ramfw.policy.catalog import ROLE_BROAD, Catalog, default_catalog
from ramfw.policy.names import NameError_, normalise_name
from ramfw.policy.model import MULTI_TENANT_APEXES, SHARED_HOSTS, Policy

UNKNOWN = "unknown"


def multi_tenant_warning(host: str) -> str | None:
    if host in SHARED_HOSTS:
        return f"{host} serves every tenant of that storage service: allowing it reaches their data too"
    apex = next((a for a in MULTI_TENANT_APEXES if host.endswith("." + a)), None)
    if apex:
        return (f"{host} is a name under {apex}, whose names belong to many tenants: allow this exact host only "
                "(never a wildcard over the apex), and only if you trust its owner")
    return None


def summarise(events: list[dict], policy: Policy, catalog: Catalog | None = None) -> dict:
    catalog = catalog or default_catalog()
    groups: dict[str, dict] = {}
    warnings: list[str] = []
    nameless: list[str] = []
    for h in _collect(events, policy):
        if h["host"] is None:
            nameless += h["addresses"]
            h.update(registry=UNKNOWN, suggest=None, warning=None)
            registry, entry = UNKNOWN, None
        else:
            registry, entry = _place(h, policy, catalog)
        if h["warning"]:
            warnings.append(h["warning"])
        groups.setdefault(registry, {"registry": registry, "entry": entry, "hosts": []})["hosts"].append(h)

    ordered = [groups[k] for k in sorted(groups, key=lambda k: (k == UNKNOWN, k))]
    suggested = _suggestions(ordered, policy, catalog)
    # the entries as written (a port stays: `check` probes it)
    allow_now = [f"{e}:{policy.ports[e]}" if e in policy.ports else e for e in policy.allow]
    allow_new = allow_now + [s for s in suggested if s not in allow_now]
    return {
        "policy_digest": policy.digest,
        "policy_source": policy.source,
        "audit": policy.audit,
        "groups": ordered,
        "suggested_entries": suggested,
        "allow": allow_new,
        "fragment": fragment(suggested, allow_new, warnings, nameless),
        "warnings": warnings,
        "addresses_without_name": nameless,
    }


def _collect(events: list[dict], policy: Policy) -> list[dict]:
    """One summary per host name (or per address when no name was seen), sorted, leaving out
    hosts the policy in force allows (learn's advice already taken)."""
    hosts: dict[str, dict] = {}
    for ev in events:
        action = ev.get("action", audit.REFUSED)
        if action not in (audit.REFUSED, audit.WOULD_REFUSE):
            continue
        name = _name_of(ev)
        if name is not None and policy.classify(name)[0] == "allowed":
            continue
        h = hosts.setdefault(name or f"ip:{ev.get('dst')}", {
            "host": name, "addresses": [], "ports": [], "attempts": 0, "actions": {}, "first": ev.get("time"), "last": None})
        h["attempts"] += 1
        h["actions"][action] = h["actions"].get(action, 0) + 1
        h["last"] = ev.get("time") or h["last"]
        if ev.get("dst") and ev["dst"] not in h["addresses"]:
            h["addresses"].append(ev["dst"])
        if ev.get("dport") is not None and ev["dport"] not in h["ports"]:
            h["ports"].append(ev["dport"])
    return [hosts[k] for k in sorted(hosts)]


def _place(h: dict, policy: Policy, catalog: Catalog) -> tuple[str, str | None]:
    """Fill in a named host's registry, suggestion and warning; return its group and entry."""
    host = h["host"]
    warning = multi_tenant_warning(host)
    owner = catalog.owner_of(host)
    if owner is None:
        blocked = policy.classify(host)[0] == "blocked"
        h.update(registry=UNKNOWN, suggest=None if blocked else host,
                 warning=f"{host} is blocked by the policy: learn suggests nothing for it" if blocked else warning)
        return UNKNOWN, None
    reg, role, values = owner
    entry = catalog.entry_for(reg, values)
    h.update(registry=reg.name, role=role)
    if entry is not None and policy.classify(normalise_name(entry))[0] == "blocked":
        h["suggest"] = None
        warning = f"{host} belongs to {reg.name}, which the policy blocks: learn suggests nothing for it"
    elif entry is not None and _entry_covers(policy, entry, host, catalog):
        h["suggest"] = entry
    else:
        # a broad host needs allow_broad, or the account is unknown: the exact host
        h["suggest"] = host
        if role == ROLE_BROAD:
            warning = warning or f"{host} is one of {reg.name}'s broad blob hosts (expanded only with allow_broad = true)"
    h["warning"] = warning
    return reg.name, entry


def _suggestions(groups: list[dict], policy: Policy, catalog: Catalog) -> list[str]:
    """Registry entries first (in group order), then exact hosts no suggested entry covers."""
    hosts = [h for g in groups for h in g["hosts"] if h.get("suggest")]
    is_entry = lambda text: catalog.lookup(normalise_name(text)) is not None  # noqa: E731
    entries = list(dict.fromkeys(h["suggest"] for h in hosts if is_entry(h["suggest"])))
    covered = lambda host: any(_entry_covers(policy, e, host, catalog) for e in entries)  # noqa: E731
    exact = [h["suggest"] for h in hosts if not is_entry(h["suggest"]) and not covered(h["host"])]
    return list(dict.fromkeys(entries + exact))


def _name_of(ev: dict) -> str | None:
    for candidate in [ev.get("hostname")] + list(ev.get("names") or []):
        if candidate:
            try:
                return normalise_name(candidate)
            except NameError_:
                continue
    return None


def _entry_covers(policy: Policy, entry: str, host: str, catalog: Catalog) -> bool:
    """Would adding `entry` (a catalog registry) allow `host` under this policy's allow_broad?"""
    exp = catalog.expand(entry, normalise_name(entry), policy.allow_broad)
    return exp is not None and any(p.matches(host) for p, _ in exp.patterns)


def fragment(suggested: list[str], allow: list[str], warnings: list[str], nameless: list[str]) -> str:
    """A TOML fragment to paste over the policy's allow line."""
    if not suggested and not nameless:
        return "# nothing to add: no host the policy refuses was touched\n"
    lines = ["# ramfw learn: the policy's allow list plus the hosts this run would have refused"]
    lines += [f"# warning: {w}" for w in warnings]
    if suggested:
        lines.append("allow = [" + ", ".join(json.dumps(a) for a in allow) + "]")
    if nameless:
        lines.append("# no DNS name was seen for " + ", ".join(nameless) + "; if they must be reachable:")
        lines.append("# [network]")
        lines.append("# allow_cidrs = [" + ", ".join(json.dumps(f"{a}/{128 if ':' in a else 32}") for a in nameless) + "]")
    return "\n".join(lines) + "\n"


def learn_namespace(netns_name: str | None, policy_path: str | None) -> dict:
    """`ramfw learn`: the report for the enforced policy (or --policy) from the namespace's events."""
    from ramfw.daemon import state as state_file
    from ramfw.kernel.netns import require

    require(netns_name)
    return learn(netns_name, state_file.enforced_policy(state_file.read_state(netns_name), policy_path))


def learn(netns_name: str | None, policy: Policy) -> dict:
    found = audit.load_events(netns_name)
    report = summarise(found.events, policy)
    report["events_read"] = len(found.events)
    report["events_unreadable"] = found.torn
    return report


def print_human(r: dict) -> None:
    echo = typer.echo
    mode = "audit run" if r["audit"] else "enforcing run"
    echo(f"policy {r['policy_digest']} ({r['policy_source']}, {mode}): {r['events_read']} events read"
         + (f", {r['events_unreadable']} unreadable lines skipped" if r["events_unreadable"] else ""))
    if not r["groups"]:
        echo("no host the policy refuses was touched")
        return
    for g in r["groups"]:
        head = g["registry"] + (f" (policy entry {g['entry']})" if g.get("entry") else "")
        echo(f"{head}:")
        for h in g["hosts"]:
            acts = ", ".join(f"{n} {a}" for a, n in sorted(h["actions"].items()))
            what = h["host"] or "(no name seen)"
            ports = ",".join(str(p) for p in h["ports"])
            echo(f"  {what:<50} {', '.join(h['addresses'])}{(' port ' + ports) if ports else ''}: {acts}"
                 + (f" -> allow {h['suggest']!r}" if h.get("suggest") else ""))
    echo("")
    echo("suggested policy fragment:")
    for line in r["fragment"].splitlines():
        echo("  " + line)
