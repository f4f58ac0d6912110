"""The interface every enforcement backend implements (nftables, iptables + ipset)."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from ramfw.plan import DesiredState, Element


@dataclass
class Probe:
    usable: bool
    reason: str  # one line: why this backend can or cannot run here
    features: dict[str, bool] = field(default_factory=dict)


@dataclass
class KernelState:
    """What a backend reads back from the kernel (status, check, explain)."""

    installed: bool
    backend: str
    where: str = ""  # where an admin finds the rules, e.g. "nft list table inet ramfw"
    meta: dict[str, str] = field(default_factory=dict)  # policy digest, mode, snoop mode
    sets: dict[str, dict[str, int]] = field(default_factory=dict)  # set -> {ip: seconds left}
    counters: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> {packets, bytes}
    chains: dict[str, int] = field(default_factory=dict)  # chain -> rule count


class Backend(abc.ABC):
    name = "base"

    def __init__(self, netns_name: str | None = None):
        self.netns_name = netns_name

    @classmethod
    @abc.abstractmethod
    def probe(cls, netns_name: str | None) -> Probe: ...

    @abc.abstractmethod
    def render(self, desired: DesiredState) -> str:
        """Pure: the ruleset text apply() would install (dry-run prints it)."""

    @abc.abstractmethod
    def apply(self, desired: DesiredState) -> None:
        """Install the desired state in one transaction, replacing ramfw's previous one.
        On failure the previous state stays in force and BackendError is raised."""

    @abc.abstractmethod
    def add_elements(self, elements: dict[str, list[Element]]) -> None:
        """Add or refresh (extend the timeout of) elements, set name -> elements, atomically."""

    @abc.abstractmethod
    def remove_elements(self, elements: dict[str, list[str]]) -> None:
        """Remove IPs from sets; missing ones are not an error."""

    @abc.abstractmethod
    def read_state(self, with_elements: bool = True) -> KernelState: ...

    @abc.abstractmethod
    def check(self, desired: DesiredState) -> list[str]:
        """Invariants: problems (one line each) where the kernel differs from what this backend
        applied, compared by content (rules, and set elements ramfw did not put there); [] when
        all is in place. A backend that never applied in this process compares what it can."""

    def set_sizes(self) -> dict[str, int]:
        """Elements per set (metrics). Backends with a cheaper count than a full read override it."""
        return {name: len(elems) for name, elems in self.read_state().sets.items()}

    def queue_mechanism(self) -> str:
        """How this backend holds DNS answers in a queue until their addresses are programmed,
        in words for the snoop-mode reason ("" when it cannot: snooping falls back to log)."""
        return ""

    def created_tables(self) -> list[str]:
        """Kernel tables this backend brought into being outside its own (e.g. "ip mangle" for
        the nft backend's queue fallback). The controller records them so that `ramfw down`,
        in another process, can remove them once they are empty."""
        return []

    def close(self) -> None:
        """Release sockets and contexts (kernel state stays)."""

    @abc.abstractmethod
    def destroy(self) -> bool:
        """Remove everything this backend installed in the namespace; True if anything was."""

    def teardown(self, created_tables: list[str] = ()) -> list[str]:
        """`ramfw down`: destroy(), saying what was removed, in words. `created_tables`: what
        created_tables() returned in the process that installed the rules."""
        return [self.described] if self.destroy() else []

    described = "ramfw's rules"  # what teardown() names
