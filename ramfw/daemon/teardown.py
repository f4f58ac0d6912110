"""`ramfw down`: remove what ramfw installed in a namespace, and nothing else."""

from __future__ import annotations

from ramfw.kernel import netns
from ramfw.daemon import state as state_file
from ramfw.backends.nft import queue_fallback as xtqueue
from ramfw.backends.choose import destroy_all


def teardown(netns_name: str | None) -> list[str]:
    """Remove every backend's rules, the DNS queue chain and the state; return what was removed."""
    netns.require(netns_name)
    removed = destroy_all(netns_name)
    created = state_file.read_state(netns_name, "controller.json").get("xtables_created_tables", [])
    if xtqueue.remove(netns_name, created):
        removed.append(f"chain {xtqueue.CHAIN} (iptables-nft {xtqueue.TABLE})")
    state_file.remove_state(netns_name)
    return removed
