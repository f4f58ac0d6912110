"""Commands that prepare a machine: install (the systemd unit and drop-ins) and policy validate."""

from __future__ import annotations

import typer

from ramfw.cli.options import warn
from ramfw.policy.load import load_policy


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


def policy_validate(path: str = typer.Argument(..., metavar="FILE", help="Policy file to check.")):
    """Validate a policy file: exit 0, or 2 with every offending key and reason."""
    pol = load_policy(path)
    warn(pol)
    typer.echo(f"{path}: ok: {pol.summary()}")
