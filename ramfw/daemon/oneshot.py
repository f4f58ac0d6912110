"""One-shot actions on a namespace that need no running controller: apply once (`ramfw up`) and
ask a running controller to reload (`ramfw reload`)."""

from __future__ import annotations

import logging
import os
import signal

from ramfw.backends.choose import select_backend
from ramfw.daemon.enforcer import Enforcer
from ramfw.daemon.source import open_source
from ramfw.daemon.state import controller_liveness, read_state
from ramfw.errors import RamfwError

log = logging.getLogger(__name__)


def apply_once(policy_spec: str | None, netns: str | None, backend: str, policy_ca: str | None, audit: bool) -> str:
    """Resolve the policy's names and apply the ruleset; returns the one-line summary. A bad policy
    raises before the kernel is touched."""
    source = open_source(policy_spec, netns, policy_ca)
    pol = source.load().with_infrastructure(source.hosts(), "policy source")
    if audit:
        pol = pol.audited()
    for warning in pol.warnings:
        log.warning("%s", warning)
    chosen, reason = select_backend(netns, backend)
    log.info("backend %s: %s", chosen.name, reason)
    enforcer = Enforcer(netns, chosen, reason)
    enforcer.set_policy(pol)
    results = enforcer.resolve_policy_names()
    desired = enforcer.apply()
    unresolved = [r.name for r in results if r.missing]
    return (
        f"ramfw: enforcing {pol.mode_label} policy {pol.digest} ({pol.source}) with {chosen.name}: "
        f"{desired.element_count()} addresses from {sum(1 for r in results if r.answers)} names"
        + (f"; {len(unresolved)} names do not resolve" if unresolved else "")
    )


def request_reload(pid: int | None, netns: str | None) -> int:
    """SIGHUP the controller (by pid, or the one recorded for the namespace); returns its pid."""
    if pid is None:
        pid = controller_liveness(read_state(netns, "controller.json"))["pid"]
        if not pid:
            raise RamfwError(f"no ramfw controller is running for {netns or 'this namespace'}; start one (ramfw run, or systemctl start ramfw)")
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise RamfwError(f"no process {pid}: the controller is not running") from None
    return pid
