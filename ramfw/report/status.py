"""`ramfw status`: what is enforced in a namespace, read from the kernel and the state file."""

from __future__ import annotations

import time

import typer

from ramfw.kernel import netns
from ramfw.daemon import state as state_file
from ramfw.daemon.state import controller_liveness
from ramfw.backends.choose import read_installed

def collect(netns_name: str | None) -> dict:
    netns.require(netns_name)
    ns_ident = netns.ns_id(netns_name)
    kernel = read_installed(netns_name)
    saved = state_file.read_state(netns_name)
    ctl = state_file.read_state(netns_name, "controller.json")
    live = controller_liveness(ctl)
    out = {
        "namespace": netns_name or "(current)",
        "namespace_id": ns_ident,
        "enforcing": kernel.installed,
        "backend": kernel.backend if kernel.installed else None,
        "rules_at": kernel.where if kernel.installed else None,
        "policy_digest": kernel.meta.get("policy"),
        "mode": kernel.meta.get("mode"),
        "audit": kernel.meta.get("audit") == "1",
        "snoop": kernel.meta.get("snoop"),
        "sets": {name: len(elems) for name, elems in kernel.sets.items()},
        "counters": kernel.counters,
        "policy_source": saved.get("policy_source"),
        "backend_reason": saved.get("backend_reason"),
        "dns_servers": saved.get("dns_servers", []),
        "applied_at": saved.get("applied_at"),
        "conflicts": saved.get("conflicts", []),
        "controller": live,
        "snoop_reason": ctl.get("snoop_reason") if live["running"] else None,
        "check_interval": ctl.get("check_interval") if live["running"] else None,
        "controller_counters": ctl.get("counters", {}) if live["running"] else saved.get("counters", {}),
    }
    if kernel.installed and saved.get("policy_digest") not in (None, out["policy_digest"]):
        out["warning"] = "the state file describes another policy than the kernel holds; run 'ramfw up' again"
    return out


def print_human(d: dict) -> None:
    echo = typer.echo
    if d.get("audit"):
        # first line, so nobody mistakes an audit run for enforcement
        echo(f"AUDIT:       nothing is refused; what policy {d['policy_digest']} would refuse is recorded ('ramfw events', 'ramfw learn')")
    echo(f"namespace:   {d['namespace']} {d['namespace_id']}")
    if not d["enforcing"]:
        echo("enforcing:   no (ramfw has nothing installed in this namespace)")
        return
    echo(f"enforcing:   {'no, AUDIT of' if d.get('audit') else 'yes,'} {d['mode']} with {d['backend']} (see: {d['rules_at']})")
    age = f", applied {int(time.time() - d['applied_at'])}s ago" if d.get("applied_at") else ""
    echo(f"policy:      {d['policy_digest']} from {d['policy_source'] or 'unknown source'}{age}")
    if d.get("backend_reason"):
        echo(f"backend:     {d['backend_reason']}")
    echo(f"dns:         snoop {d['snoop_reason'] or d['snoop']}; trusted servers: {', '.join(d['dns_servers']) or 'none recorded'}")
    echo("sets:        " + ", ".join(f"{k} {v}" for k, v in sorted(d["sets"].items())))
    for name, c in sorted(d["counters"].items()):
        echo(f"counter:     {name} {c['packets']} packets, {c['bytes']} bytes")
    ctl = d["controller"]
    echo("controller:  " + (f"running (pid {ctl['pid']}, heartbeat {ctl['heartbeat_age']}s ago)" if ctl["running"] else "not running (rules stay in force; IPs age out by their timeouts)"))
    if ctl["running"] and d.get("check_interval"):
        echo(f"repair:      ruleset compared by content every {d['check_interval']:g}s; "
             f"found tampered {d['controller_counters'].get('tampered', 0)} time(s)")
    counters = d["controller_counters"]
    plain = {k: v for k, v in counters.items() if not k.startswith(("snoop_", "sni_"))}
    snoop = {k[len("snoop_"):]: v for k, v in counters.items() if k.startswith("snoop_") and (v or k == "snoop_answers_seen")}
    sni = {k[len("sni_"):]: v for k, v in counters.items() if k.startswith("sni_") and (v or k == "sni_connections")}
    for title, group in (("counters:", plain), ("snooping:", snoop), ("sni binding:", sni)):
        if group:
            echo(f"{title:<13}" + " ".join(f"{k}={v}" for k, v in sorted(group.items())))
    if d["conflicts"]:
        for c in d["conflicts"]:
            echo(f"conflict:    {c['ip']} allowed via {', '.join(c['allowed_names'])} but also {', '.join(c['blocked_names'])} (blocked): allowed")
    else:
        echo("conflicts:   none")
    if d.get("warning"):
        echo(f"warning:     {d['warning']}")
