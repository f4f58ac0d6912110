"""`ramfw down`: remove what ramfw installed in a namespace, and nothing else."""

from __future__ import annotations

from . import state as state_file
from .backends.nft import FAMILY, TABLE, NftBackend


def teardown(netns_name: str | None) -> list[str]:
    """Remove ramfw's table (and state); return what was removed, [] if nothing was there."""
    removed = []
    backend = NftBackend(netns_name)
    try:
        if backend.destroy():
            removed.append(f"table {FAMILY} {TABLE}")
    finally:
        backend.close()
    state_file.remove_state(netns_name)
    return removed
