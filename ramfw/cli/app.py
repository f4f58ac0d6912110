"""Command line: the stable contract of shared/DESIGN.md, assembled from one module per command
group (enforce, inspect, setup). Every command reports failures as one line on stderr and exits 0
(success), 1 (runtime failure), 2 (bad usage or bad policy) or 3 (`check` found a mismatch).
"""

from __future__ import annotations

import logging
import os

import typer

from ramfw import __version__
from ramfw.cli import enforce, inspect, setup
from ramfw.errors import PolicyError, RamfwError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="ramfw: registry access management enforced in the Linux kernel (nftables/iptables sets fed by DNS).",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
policy_app = typer.Typer(help="Work with policy files.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")

# The order here is the order `ramfw --help` lists them in.
for command in (enforce.up, enforce.run, enforce.down, enforce.reload, inspect.status, inspect.explain, inspect.check,
                inspect.events, inspect.learn):
    app.command()(command)
app.command("dry-run")(enforce.dry_run)
app.command()(setup.install)
policy_app.command("validate")(setup.policy_validate)


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
    import sys

    sys.exit(main())
