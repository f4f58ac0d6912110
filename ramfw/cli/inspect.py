"""Commands that read what is enforced and recorded: status, explain, check, events, learn."""

from __future__ import annotations

import json
from typing import Optional

import typer

from ramfw.cli.options import JsonOpt, NetnsOpt, PolicyOpt, emit


def status(netns: Optional[str] = NetnsOpt, as_json: bool = JsonOpt):
    """Show what is enforced: backend, policy digest, set sizes, counters, conflicts, controller liveness."""
    from ramfw.report import status as status_mod

    emit(status_mod.collect(netns), as_json, status_mod.print_human)


def explain(
    host_or_ip: str = typer.Argument(..., metavar="HOST_OR_IP", help="A host name, a registry name (docker.io) or an IP address."),
    netns: Optional[str] = NetnsOpt,
    policy: Optional[str] = typer.Option(None, "--policy", "-p", help="Explain against this policy instead of the enforced one."),
    as_json: bool = JsonOpt,
):
    """Give the verdict for a host or IP and why: which policy entry, catalog expansion, learned names."""
    from ramfw.report import explain as explain_mod

    emit(explain_mod.explain(host_or_ip, netns, policy), as_json, explain_mod.print_human)


def check(policy: Optional[str] = PolicyOpt, netns: Optional[str] = NetnsOpt, as_json: bool = JsonOpt):
    """Verify the restrictions by probing from inside the namespace; exit 3 on any mismatch."""
    from ramfw.errors import EXIT_MISMATCH
    from ramfw.report import check as check_mod

    rows = check_mod.check_namespace(netns, policy)
    emit(check_mod.to_json(rows) if as_json else rows, as_json, check_mod.print_human)
    if check_mod.summary(rows)["mismatches"]:
        raise typer.Exit(EXIT_MISMATCH)


def events(
    netns: Optional[str] = NetnsOpt,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new events (JSON lines with --json)."),
    as_json: bool = JsonOpt,
):
    """Show refused attempts (and, in audit mode, would-be refusals) recorded by the controller: time, action, scope, destination, hostname."""
    from ramfw.report import events as events_mod

    if follow:
        for ev in events_mod.follow(netns):
            typer.echo(json.dumps(ev) if as_json else events_mod.line(ev))
        return
    evs = events_mod.recorded(netns)
    if as_json:
        typer.echo(json.dumps(evs, indent=2))
        return
    for ev in evs:
        typer.echo(events_mod.line(ev))
    if not evs:
        typer.echo(events_mod.none_recorded(netns))


def learn(
    netns: Optional[str] = NetnsOpt,
    policy: Optional[str] = PolicyOpt,
    as_json: bool = JsonOpt,
):
    """From audit-mode events: the hosts touched that the policy would refuse, by catalog registry, with a policy fragment to allow them."""
    from ramfw.report import learn as learn_mod

    emit(learn_mod.learn_namespace(netns, policy), as_json, learn_mod.print_human)
