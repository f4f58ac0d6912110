"""Commands that change enforcement: up, run, down, reload, and dry-run (which shows what up would apply)."""

from __future__ import annotations

from typing import Optional

import typer

from ramfw.cli.options import AuditOpt, BackendOpt, NetnsOpt, PolicyCaOpt, PolicyOpt, load, policy_spec


def up(policy: Optional[str] = PolicyOpt, netns: Optional[str] = NetnsOpt, backend: str = BackendOpt, policy_ca: Optional[str] = PolicyCaOpt,
       audit: bool = AuditOpt):
    """Resolve the policy's names and apply the ruleset once, then exit; the rules stay."""
    from ramfw.daemon.oneshot import apply_once

    typer.echo(apply_once(policy_spec(policy), netns, backend, policy_ca, audit))


def run(
    policy: Optional[str] = PolicyOpt,
    netns: Optional[str] = NetnsOpt,
    backend: str = BackendOpt,
    cleanup: bool = typer.Option(False, "--cleanup", help="Remove the ruleset on exit (default: leave it, fail closed)."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Serve Prometheus metrics on unix:/PATH or 127.0.0.1:PORT."),
    policy_ca: Optional[str] = PolicyCaOpt,
    policy_refresh: float = typer.Option(60.0, "--policy-refresh", min=1.0, help="Seconds between fetches of an https:// policy."),
    check_interval: float = typer.Option(5.0, "--check-interval", min=0.5, max=3600.0,
                                         help="Seconds between comparisons of the kernel ruleset with what ramfw applied; a difference is repaired."),
    audit: bool = AuditOpt,
):
    """Run the controller in the foreground: apply, snoop DNS, refresh, reload on SIGHUP or policy change."""
    from ramfw.daemon.controller import Controller

    if metrics:
        from ramfw.daemon.metrics import parse_listen

        parse_listen(metrics)  # a bad address is a usage error before anything is touched
    ctl = Controller(
        policy_spec(policy), netns, backend,
        cleanup=cleanup, metrics=metrics, policy_ca=policy_ca, policy_refresh=policy_refresh, audit=audit,
        check_interval=check_interval,
    )
    ctl.start()  # a bad policy or an unusable backend fails here, before anything is touched
    status = ctl.run_forever()
    if status:
        raise typer.Exit(status)


def down(netns: Optional[str] = NetnsOpt):
    """Remove everything ramfw installed in the namespace, and nothing else. Safe to run twice."""
    from ramfw.daemon.teardown import teardown

    removed = teardown(netns)
    typer.echo("ramfw: removed " + (", ".join(removed) if removed else "nothing (ramfw was not installed here)"))


def reload(
    pid: Optional[int] = typer.Option(None, "--pid", help="The controller's process id (systemd passes $MAINPID). Default: the controller running for --netns."),
    netns: Optional[str] = NetnsOpt,
):
    """Ask a running controller to re-read its policy now (SIGHUP); the unit's ExecReload, so that reload needs no kill(1)."""
    from ramfw.daemon.oneshot import request_reload

    typer.echo(f"ramfw: asked the controller (pid {request_reload(pid, netns)}) to reload")


def dry_run(policy: Optional[str] = PolicyOpt, backend: str = typer.Option("nft", "--backend", "-b", help="nft | iptables")):
    """Print the ruleset the policy renders to, without touching the kernel (sets are filled from DNS at apply time)."""
    from ramfw.report.dryrun import render

    typer.echo(render(load(policy), backend))
