"""Which backend enforces a namespace: chosen by probing, found again by looking.

Exactly one backend enforces a namespace at a time: after an apply, whatever another backend
left there is removed, so switching --backend never leaves two rulesets fighting.
"""

from __future__ import annotations

import logging

from ramfw.errors import BackendError, UsageError
from ramfw.backends.base import Backend, KernelState
from ramfw.backends.iptables.backend import IptablesBackend
from ramfw.backends.nft.backend import NftBackend

log = logging.getLogger(__name__)

CHOICES = ("auto", "nft", "iptables")
CLASSES = {"nft": NftBackend, "iptables": IptablesBackend}


def select_backend(netns_name: str | None, choice: str = "auto") -> tuple[Backend, str]:
    """The backend to use in this namespace, and one line saying why."""
    if choice not in CHOICES:
        raise UsageError(f"--backend must be one of {', '.join(CHOICES)}; got {choice!r}")
    if choice != "auto":
        cls = CLASSES[choice]
        probe = cls.probe(netns_name)
        if not probe.usable:
            raise BackendError(f"{choice} backend cannot run here: {probe.reason}")
        return cls(netns_name, probe.features), probe.reason
    ipt = IptablesBackend(netns_name)
    try:
        continuing = ipt.installed() and not NftBackend(netns_name)._table_exists()
    finally:
        ipt.close()
    order = ("iptables", "nft") if continuing else ("nft", "iptables")
    reasons = []
    for name in order:
        probe = CLASSES[name].probe(netns_name)
        if probe.usable:
            why = "ramfw's iptables rules are already here; " if continuing and name == "iptables" else ""
            return CLASSES[name](netns_name, probe.features), f"auto: {why}{probe.reason}"
        reasons.append(f"{name}: {probe.reason}")
    raise BackendError("no backend can run here (" + "; ".join(reasons) + ")")


def installed_backend(netns_name: str | None) -> Backend:
    """The backend whose rules are in the namespace (nft when neither has any)."""
    nft = NftBackend(netns_name)
    if nft._table_exists():
        return nft
    ipt = IptablesBackend(netns_name)
    if ipt.installed():
        nft.close()
        return ipt
    ipt.close()
    return nft


def read_installed(netns_name: str | None, with_elements: bool = True) -> KernelState:
    backend = installed_backend(netns_name)
    try:
        return backend.read_state(with_elements=with_elements)
    finally:
        backend.close()


def retire_others(netns_name: str | None, keep: Backend) -> list[str]:
    """Remove what any other backend installed here; returns their names."""
    removed = []
    for name, cls in CLASSES.items():
        if name == keep.name:
            continue
        other = cls(netns_name)
        try:
            if other.destroy():
                removed.append(name)
                log.info("removed the %s backend's rules: the %s backend enforces this namespace now", name, keep.name)
        finally:
            other.close()
    return removed


def destroy_all(netns_name: str | None, created_tables: list[str] = ()) -> list[str]:
    """`down`: every backend's rules; returns what was removed, in words. `created_tables`: the
    tables the controller recorded (Backend.created_tables) for removal once empty."""
    removed = []
    for cls in CLASSES.values():
        backend = cls(netns_name)
        try:
            removed += backend.teardown(created_tables)
        finally:
            backend.close()
    return removed
