"""The DNS snooping mechanism for a policy on this kernel: queue (answers held until their
addresses are programmed), log (copied, programmed right after) or off; see DESIGN "DNS
snooping". Pure: the backend says how it can queue (Backend.queue_mechanism)."""

from __future__ import annotations

from ramfw.backends.base import Backend
from ramfw.errors import BackendError


def choose_snoop_mode(wanted: str, backend: Backend) -> tuple[str, str]:
    """The snooping mechanism for this kernel, and why (probed, per shared/DESIGN.md): the
    backend says how it can hold answers in a queue (Backend.queue_mechanism)."""
    if wanted == "off":
        return "off", "policy says snoop = off: active resolution only"
    queue = backend.queue_mechanism()
    if wanted in ("auto", "queue") and queue:
        return "queue", f"queue via {queue}"
    if wanted == "queue":
        raise BackendError("dns.snoop = queue, but neither nft queue nor iptables-nft NFQUEUE is available; use snoop = log")
    return "log", "log (NFLOG)" + ("" if wanted == "log" else ": no queue mechanism available")
