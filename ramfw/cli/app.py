"""Command line: the stable contract of shared/DESIGN.md.

Every command reports failures as one line on stderr and exits 0 (success), 1 (runtime
failure), 2 (bad usage or bad policy) or 3 (`check` found a mismatch).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Optional

import typer

from ramfw import __version__
from ramfw.report import explain as explain_mod, status as status_mod
from ramfw.errors import PolicyError, RamfwError, UsageError
from ramfw.policy.model import load_policy

log = logging.getLogger("ramfw")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="ramfw: registry access management enforced in the Linux kernel (nftables/iptables sets fed by DNS).",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
policy_app = typer.Typer(help="Work with policy files.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")

PolicyOpt = typer.Option(None, "--policy", "-p", help="Policy file (TOML or JSON) or https:// URL. Default: $RAMFW_POLICY, else the embedded default (allow docker.io).")
PolicyCaOpt = typer.Option(None, "--policy-ca", help="CA bundle to trust for an https:// policy URL (default: the system's).")
NetnsOpt = typer.Option(None, "--netns", "-n", help="Network namespace name (under /var/run/netns). Default: the current namespace.")
BackendOpt = typer.Option("auto", "--backend", "-b", help="auto | nft | iptables (auto: nftables where it works, else iptables + ipset)")
JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")
AuditOpt = typer.Option(False, "--audit", help="Audit mode: run everything but refuse nothing; what the policy would refuse becomes a would_refuse event (see 'ramfw learn'). Same as mode = \"audit\" in the policy.")


def _policy(path: Optional[str]):
    return load_policy(path or os.environ.get("RAMFW_POLICY") or None)


def _emit(data, as_json: bool, human) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        human(data)


def _warn_policy(policy) -> None:
    for warning in policy.warnings:
        log.warning("%s", warning)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"ramfw {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-vv for debug)."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
):
    from ramfw.common.logs import configure

    configure(os.environ.get("RAMFW_LOG_LEVEL", logging.INFO - 10 * min(verbose, 1)))


@app.command()
def up(policy: Optional[str] = PolicyOpt, netns: Optional[str] = NetnsOpt, backend: str = BackendOpt, policy_ca: Optional[str] = PolicyCaOpt,
       audit: bool = AuditOpt):
    """Resolve the policy's names and apply the ruleset once, then exit; the rules stay."""
    from ramfw.backends.choose import select_backend
    from ramfw.daemon.enforcer import Enforcer
    from ramfw.daemon.source import open_source

    source = open_source(policy or os.environ.get("RAMFW_POLICY") or None, netns, policy_ca)
    pol = source.load().with_infrastructure(source.hosts(), "policy source")  # a bad policy stops here
    if audit:
        pol = pol.audited()
    _warn_policy(pol)
    chosen, reason = select_backend(netns, backend)
    log.info("backend %s: %s", chosen.name, reason)
    enforcer = Enforcer(netns, chosen, reason)
    enforcer.set_policy(pol)
    results = enforcer.resolve_policy_names()
    desired = enforcer.apply()
    unresolved = [r.name for r in results if r.missing]
    typer.echo(
        f"ramfw: enforcing {pol.mode_label} policy {pol.digest} ({pol.source}) with {chosen.name}: "
        f"{desired.element_count()} addresses from {sum(1 for r in results if r.answers)} names"
        + (f"; {len(unresolved)} names do not resolve" if unresolved else "")
    )


@app.command()
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
        policy or os.environ.get("RAMFW_POLICY") or None, netns, backend,
        cleanup=cleanup, metrics=metrics, policy_ca=policy_ca, policy_refresh=policy_refresh, audit=audit,
        check_interval=check_interval,
    )
    ctl.start()  # a bad policy or an unusable backend fails here, before anything is touched
    status = ctl.run_forever()
    if status:
        raise typer.Exit(status)


@app.command()
def down(netns: Optional[str] = NetnsOpt):
    """Remove everything ramfw installed in the namespace, and nothing else. Safe to run twice."""
    from ramfw.daemon.teardown import teardown

    removed = teardown(netns)
    typer.echo("ramfw: removed " + (", ".join(removed) if removed else "nothing (ramfw was not installed here)"))


@app.command()
def reload(
    pid: Optional[int] = typer.Option(None, "--pid", help="The controller's process id (systemd passes $MAINPID). Default: the controller running for --netns."),
    netns: Optional[str] = NetnsOpt,
):
    """Ask a running controller to re-read its policy now (SIGHUP); the unit's ExecReload, so that reload needs no kill(1)."""
    import signal

    from ramfw.daemon.state import read_state

    if pid is None:
        pid = status_mod.controller_liveness(read_state(netns, "controller.json"))["pid"]
        if not pid:
            raise RamfwError(f"no ramfw controller is running for {netns or 'this namespace'}; start one (ramfw run, or systemctl start ramfw)")
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise RamfwError(f"no process {pid}: the controller is not running") from None
    typer.echo(f"ramfw: asked the controller (pid {pid}) to reload")


@app.command()
def status(netns: Optional[str] = NetnsOpt, as_json: bool = JsonOpt):
    """Show what is enforced: backend, policy digest, set sizes, counters, conflicts, controller liveness."""
    data = status_mod.collect(netns)
    _emit(data, as_json, status_mod.print_human)


@app.command()
def explain(
    host_or_ip: str = typer.Argument(..., metavar="HOST_OR_IP", help="A host name, a registry name (docker.io) or an IP address."),
    netns: Optional[str] = NetnsOpt,
    policy: Optional[str] = typer.Option(None, "--policy", "-p", help="Explain against this policy instead of the enforced one."),
    as_json: bool = JsonOpt,
):
    """Give the verdict for a host or IP and why: which policy entry, catalog expansion, learned names."""
    data = explain_mod.explain(host_or_ip, netns, policy)
    _emit(data, as_json, explain_mod.print_human)


@app.command()
def check(policy: Optional[str] = PolicyOpt, netns: Optional[str] = NetnsOpt, as_json: bool = JsonOpt):
    """Verify the restrictions by probing from inside the namespace; exit 3 on any mismatch."""
    from ramfw.report import check as check_mod
    from ramfw.daemon import state as state_file
    from ramfw.backends.choose import read_installed
    from ramfw.errors import EXIT_MISMATCH

    from ramfw.kernel.netns import require

    require(netns)
    pol = state_file.enforced_policy(state_file.read_state(netns), policy)
    kernel = read_installed(netns)
    allowed = {ip for name, elems in kernel.sets.items() if name.startswith("allow") for ip in elems}
    allowed |= {ip for c in pol.allow_cidrs for ip in ([c.split("/")[0]] if c.endswith(("/32", "/128")) else [])}
    rows = check_mod.run_check(pol, netns, allowed, log_mode=kernel.meta.get("snoop") == "log")
    if not kernel.installed:
        log.warning("ramfw enforces nothing in this namespace: every refused expectation will be a mismatch")
    elif kernel.meta.get("audit") == "1":
        log.warning("ramfw runs in AUDIT mode here: nothing is refused, so every refused expectation will be a mismatch")
    _emit(check_mod.to_json(rows) if as_json else rows, as_json, check_mod.print_human)
    if check_mod.summary(rows)["mismatches"]:
        raise typer.Exit(EXIT_MISMATCH)


@app.command()
def events(
    netns: Optional[str] = NetnsOpt,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new events (JSON lines with --json)."),
    as_json: bool = JsonOpt,
):
    """Show refused attempts (and, in audit mode, would-be refusals) recorded by the controller: time, action, scope, destination, hostname."""
    from ramfw.daemon import audit, state as state_file
    from ramfw.report import status as status_mod

    def line(ev: dict) -> str:
        where = f"{ev['dst']}:{ev['dport']}" if ev.get("dport") is not None else ev["dst"]
        uid = f" uid={ev['uid']}" if ev.get("uid") is not None else ""
        text = (f"{ev['time']}  {ev.get('action', 'refused'):<12} {ev['scope']:<7}{uid}  {ev['proto']:<4} {ev['src']} -> {where}  "
                f"{ev.get('hostname') or '-'}")
        if ev.get("action") == audit.SNI_MISMATCH:  # the server name, and what the address was given for
            text += f"  (address given for {', '.join(ev.get('names') or []) or 'no remembered name'}; " \
                    f"{'reset' if ev.get('refused') else 'let through'}: {ev.get('reason')})"
        return text

    if follow:
        for ev in audit.follow_events(netns):
            typer.echo(json.dumps(ev) if as_json else line(ev))
        return
    found = audit.load_events(netns)
    if found.torn:
        log.warning("skipped %d unreadable line(s) in %s (torn or garbled); every other event is shown", found.torn, audit.events_path(netns))
    evs = found.events
    if as_json:
        typer.echo(json.dumps(evs, indent=2))
        return
    for ev in evs:
        typer.echo(line(ev))
    if not evs:
        running = status_mod.controller_liveness(state_file.read_state(netns, "controller.json"))["running"]
        typer.echo("no blocked attempts recorded" + ("" if running else " (no controller is running here: 'ramfw run' records them; 'ramfw status' shows the refuse counters)"))


@app.command()
def learn(
    netns: Optional[str] = NetnsOpt,
    policy: Optional[str] = PolicyOpt,
    as_json: bool = JsonOpt,
):
    """From audit-mode events: the hosts touched that the policy would refuse, by catalog registry, with a policy fragment to allow them."""
    from ramfw.report import learn as learn_mod
    from ramfw.daemon import state as state_file
    from ramfw.kernel.netns import require

    require(netns)
    pol = state_file.enforced_policy(state_file.read_state(netns), policy)
    report = learn_mod.learn(netns, pol)
    _emit(report, as_json, learn_mod.print_human)


@app.command("dry-run")
def dry_run(policy: Optional[str] = PolicyOpt, backend: str = typer.Option("nft", "--backend", "-b", help="nft | iptables")):
    """Print the ruleset the policy renders to, without touching the kernel (sets are filled from DNS at apply time)."""
    from ramfw.backends.choose import CLASSES
    from ramfw.dns.cache import DnsCache
    from ramfw.plan import plan

    pol = _policy(policy)
    _warn_policy(pol)
    if backend not in CLASSES:
        raise UsageError(f"--backend must be one of {', '.join(CLASSES)}; got {backend!r}")
    from ramfw.dns.resolver import read_nameservers

    servers = tuple(pol.dns.servers) or tuple(read_nameservers(None))
    desired = plan(pol, DnsCache().snapshot(), 0.0, servers, "off")
    names = pol.concrete_names("allow")
    typer.echo(f"# policy {pol.digest} from {pol.source}: {pol.mode_label}")
    typer.echo(f"# names resolved at apply time ({len(names)}): {', '.join(names)}")
    wild = [str(p) for p, _ in pol.allow_set.patterns if p.is_wildcard]
    if wild:
        typer.echo(f"# wildcards learned by DNS snooping only: {', '.join(wild)}")
    typer.echo(CLASSES[backend](None).render(desired))


@app.command()
def install(
    policy: str = typer.Option("/etc/ramfw/policy.toml", "--policy", "-p", help="Policy the service enforces (a file, or an https:// URL)."),
    unit_dir: str = typer.Option("/etc/systemd/system", "--unit-dir", help="Where to write ramfw.service."),
    print_only: bool = typer.Option(False, "--print", help="Print the unit instead of writing anything."),
):
    """Install the systemd unit (Type=notify, ordered before docker.service), drop-ins making docker.service
    and containerd.service require it, and a starting policy."""
    from ramfw.daemon import install as install_mod

    unit = install_mod.render_unit(policy)
    if print_only:
        typer.echo(unit, nl=False)
        return
    for line in install_mod.install(unit, unit_dir, policy):
        typer.echo(line)


@policy_app.command("validate")
def policy_validate(path: str = typer.Argument(..., metavar="FILE", help="Policy file to check.")):
    """Validate a policy file: exit 0, or 2 with every offending key and reason."""
    pol = load_policy(path)
    _warn_policy(pol)
    expanded = sum(len(e.patterns) for e in pol.expansions)
    typer.echo(
        f"{path}: ok: {pol.mode}, {len(pol.allow)} allow and {len(pol.block)} block entries "
        f"({expanded} hosts from the registry catalog), digest {pol.digest}"
    )


def main(argv: list[str] | None = None) -> int:
    try:
        # without standalone mode click hands back typer.Exit's code instead of exiting
        rc = app(args=argv, standalone_mode=False)
    except PolicyError as exc:
        for line in exc.lines():
            typer.echo(f"ramfw: error: {line}", err=True)
        return exc.exit_code
    except RamfwError as exc:
        typer.echo(f"ramfw: error: {exc}", err=True)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo("ramfw: aborted", err=True)
        return 1
    except Exception as exc:  # click usage errors carry their own exit code
        code = getattr(exc, "exit_code", None)
        if code is not None and hasattr(exc, "show"):
            exc.show()
            return code
        if isinstance(exc, KeyboardInterrupt):
            return 130
        raise
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
