"""`ramfw down`: remove what ramfw installed in a namespace, and nothing else."""

from __future__ import annotations

from ramfw.kernel import netns
from ramfw.daemon import state as state_file
from ramfw.backends.choose import destroy_all


def teardown(netns_name: str | None) -> list[str]:
    """Remove every backend's rules (each backend removes all it installed, the nft backend's
    DNS queue chain included) and the state; return what was removed."""
    netns.require(netns_name)
    created = state_file.read_state(netns_name, "controller.json").get("xtables_created_tables", [])
    created = [t for t in created if isinstance(t, str) and len(t.split()) == 2] if isinstance(created, list) else []
    removed = destroy_all(netns_name, created)
    state_file.remove_state(netns_name)
    return removed
