"""The options every command group shares, and the two ways a command shows its result."""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

import typer

from ramfw.policy.load import load_policy

log = logging.getLogger("ramfw")

PolicyOpt = typer.Option(None, "--policy", "-p", help="Policy file (TOML or JSON) or https:// URL. Default: $RAMFW_POLICY, else the embedded default (allow docker.io).")
PolicyCaOpt = typer.Option(None, "--policy-ca", help="CA bundle to trust for an https:// policy URL (default: the system's).")
NetnsOpt = typer.Option(None, "--netns", "-n", help="Network namespace name (under /var/run/netns). Default: the current namespace.")
BackendOpt = typer.Option("auto", "--backend", "-b", help="auto | nft | iptables (auto: nftables where it works, else iptables + ipset)")
JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")
AuditOpt = typer.Option(False, "--audit", help="Audit mode: run everything but refuse nothing; what the policy would refuse becomes a would_refuse event (see 'ramfw learn'). Same as mode = \"audit\" in the policy.")


def policy_spec(path: Optional[str]) -> Optional[str]:
    """--policy, else $RAMFW_POLICY, else None (the embedded default)."""
    return path or os.environ.get("RAMFW_POLICY") or None


def load(path: Optional[str]):
    """The policy named by --policy / $RAMFW_POLICY, validated, its warnings logged."""
    pol = load_policy(policy_spec(path))
    warn(pol)
    return pol


def warn(policy) -> None:
    for warning in policy.warnings:
        log.warning("%s", warning)


def emit(data, as_json: bool, human) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        human(data)
