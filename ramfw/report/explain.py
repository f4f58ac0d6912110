"""`ramfw explain HOST_OR_IP`: the verdict, and the chain of reasons behind it."""

from __future__ import annotations

import ipaddress
import time

import typer

from ramfw.kernel import netns
from ramfw.daemon import state as state_file
from ramfw.backends.choose import read_installed
from ramfw.policy.catalog import default_catalog
from ramfw.errors import RamfwError, UsageError
from ramfw.policy.names import NameError_, is_ip_literal, normalise_name


def _kernel_sets(netns_name: str | None) -> dict[str, dict[str, int]] | None:
    try:
        state = read_installed(netns_name)
    except PermissionError:
        raise RamfwError("reading the kernel's ruleset needs root (CAP_NET_ADMIN in the namespace): run it with sudo") from None
    return state.sets if state.installed else None


def explain(target: str, netns_name: str | None, policy_path: str | None = None) -> dict:
    if not is_ip_literal(target):  # a bad name is a usage error before anything is read
        try:
            normalise_name(target)
        except NameError_ as exc:
            raise UsageError(f"cannot explain {target!r}: {exc}") from None
    netns.require(netns_name)
    saved = state_file.read_state(netns_name)
    policy = state_file.enforced_policy(saved, policy_path)
    cache: dict[str, dict[str, float]] = saved.get("cache", {})
    sets = _kernel_sets(netns_name)
    out: dict = {"query": target, "policy_digest": policy.digest, "policy_source": policy.source, "mode": policy.mode,
                 "audit": policy.audit, "enforcing": sets is not None}
    now = time.time()
    if is_ip_literal(target):
        ip = str(ipaddress.ip_address(target.strip("[]")))
        fam = ipaddress.ip_address(ip).version
        learned = [{"name": n, "expires_in": round(ips[ip] - now)} for n, ips in sorted(cache.items()) if ip in ips]
        in_allow = sets is not None and ip in sets.get(f"allow{fam}", {})
        in_block = sets is not None and ip in sets.get(f"block{fam}", {})
        in_cidr = [c for c in policy.allow_cidrs if ipaddress.ip_address(ip) in ipaddress.ip_network(c)]
        reasons = []
        if policy.mode == "allowlist":
            verdict = "allowed" if (in_allow or in_cidr) else "refused"
            if in_allow:
                reasons.append(f"{ip} is in set allow{fam}")
            if in_cidr:
                reasons.append(f"{ip} is inside network.allow_cidrs {', '.join(in_cidr)}")
            if verdict == "refused":
                reasons.append(f"{ip} is not in any allowed set: no allowed name resolved to it (recently)")
        else:
            verdict = "refused" if in_block else "allowed"
            reasons.append(f"{ip} is in set block{fam}" if in_block else f"{ip} is not in a blocked set")
        for item in learned:
            v, _ = policy.classify(item["name"])
            reasons.append(f"learned from {item['name']} ({v}), expires in {item['expires_in']}s")
        conflicts = [c for c in saved.get("conflicts", []) if c["ip"] == ip]
        for c in conflicts:
            reasons.append(f"conflict: reached through allowed {', '.join(c['allowed_names'])} and blocked {', '.join(c['blocked_names'])}; allowed")
        if sets is None:
            reasons.append("ramfw enforces nothing in this namespace right now")
        carries = sorted({item["name"] for item in learned} | set(saved.get("remembered", {}).get(ip, [])))
        sni = sni_binding(policy, ip, carries, bool(in_cidr), verdict == "allowed")
        out.update({"kind": "ip", "ip": ip, "verdict": verdict, "reasons": reasons, "learned_from": learned, "conflicts": conflicts,
                    "names": carries, "sni": sni})
        return out

    try:
        name = normalise_name(target)
    except NameError_ as exc:
        raise UsageError(f"cannot explain {target!r}: {exc}") from None
    verdict, sources = policy.classify(name)
    reasons = [s.describe() for s in sources]
    if verdict == "unlisted":
        reasons.append(f"{name} matches no allow or block entry" + (": refused (allowlist)" if policy.mode == "allowlist" else ": allowed (denylist)"))
        effective = "refused" if policy.mode == "allowlist" else "allowed"
    elif verdict == "blocked":
        effective = "refused"
        also = policy.allow_set.match(name)
        if also:
            reasons.append("block entries win over allow entries: " + "; ".join(s.describe() for s in also))
    else:
        effective = "allowed"
    catalog = None
    found = default_catalog().lookup(name)
    if found:
        reg, values = found
        exp = default_catalog().expand(target, name, policy.allow_broad)
        catalog = {"registry": reg.name, "hosts": [{"pattern": str(p), "role": role} for p, role in exp.patterns],
                   "left_out": list(exp.left_out), "note": reg.note, "sources": list(reg.sources), "checked": reg.checked,
                   "generated_from": reg.generated_from}
    learned = [{"ip": ip, "expires_in": round(exp_at - now)} for ip, exp_at in sorted(cache.get(name, {}).items())]
    chains = saved.get("cname_chains", {}).get(name, [])
    out.update({"kind": "host", "name": name, "verdict": effective, "policy_match": verdict, "reasons": reasons,
                "catalog": catalog, "learned_ips": learned, "cname_chains": chains})
    return out


def sni_binding(policy, ip: str, names: list[str], static: bool, allowed: bool) -> dict:
    """Whether SNI binding applies to connections to `ip`, and which server names it accepts."""
    mode = "audit" if policy.tls.sni != "off" and policy.audit else policy.tls.sni
    out = {"mode": mode, "ports": list(policy.tls.ports), "applies": mode != "off" and allowed and policy.mode == "allowlist"}
    if mode == "off":
        out["rule"] = "SNI binding is off ([tls] sni): any server name may be used with this address"
    elif not out["applies"]:
        out["rule"] = "not an allowed address: connections to it are refused before any ClientHello"
    elif static:
        out["rule"] = "admitted by allow_cidrs: the server name must be a name the policy allows"
    elif names:
        out["rule"] = f"the server name must be allowed and one of {', '.join(names)} (or a host of the same catalog registry)"
    else:
        out["rule"] = "no names remembered for it: the server name must be a name the policy allows"
    return out


def print_human(d: dict) -> None:
    echo = typer.echo
    subject = d.get("ip") or d.get("name")
    audit = " in AUDIT mode: let through and recorded as would_refuse" if d.get("audit") and d["verdict"] == "refused" else ""
    echo(f"{subject}: {d['verdict'].upper()}{audit}  (policy {d['policy_digest']}, {d['mode']}, {d['policy_source']})")
    for r in d["reasons"]:
        echo(f"  - {r}")
    cat = d.get("catalog")
    if cat:
        echo(f"  {d['name']} is the catalog registry {cat['registry']}; a policy entry naming it allows:")
        for h in cat["hosts"]:
            echo(f"      {h['pattern']:<60} {h['role']}")
        for h in cat["left_out"]:
            echo(f"      {h:<60} left out (broad; needs allow_broad = true)")
        if cat["note"]:
            echo(f"  note: {cat['note']}")
        echo(f"  checked {cat['checked'] or 'never'} against: " + (", ".join(cat["sources"]) or "no sources recorded"))
        if cat.get("generated_from"):
            echo(f"  generated from: {cat['generated_from']}")
    if d.get("kind") == "ip":
        echo("  names it carries: " + (", ".join(d["names"]) or "none remembered"))
        sni = d["sni"]
        ports = ",".join(map(str, sni["ports"]))
        echo(f"  SNI binding ({sni['mode']}, TCP ports {ports}): {'applies' if sni['applies'] else 'does not apply'}; {sni['rule']}")
    if d.get("kind") == "host":
        if d["learned_ips"]:
            echo("  addresses learned: " + ", ".join(f"{x['ip']} (expires in {x['expires_in']}s)" for x in d["learned_ips"]))
        elif d["enforcing"]:
            echo("  addresses learned: none yet")
        for chain in d.get("cname_chains", []):
            echo(f"  via CNAME chain: {chain}")
    if not d["enforcing"]:
        echo("  (ramfw enforces nothing in this namespace right now)")
