"""`ramfw events`: the refused (and, in audit mode, would-be refused) attempts the controller
recorded, as one line each."""

from __future__ import annotations

import logging

from ramfw.daemon import audit
from ramfw.daemon.state import controller_liveness, read_state

log = logging.getLogger(__name__)


def line(ev: dict) -> str:
    where = f"{ev['dst']}:{ev['dport']}" if ev.get("dport") is not None else ev["dst"]
    uid = f" uid={ev['uid']}" if ev.get("uid") is not None else ""
    text = (f"{ev['time']}  {ev.get('action', 'refused'):<12} {ev['scope']:<7}{uid}  {ev['proto']:<4} {ev['src']} -> {where}  "
            f"{ev.get('hostname') or '-'}")
    if ev.get("action") == audit.SNI_MISMATCH:  # the server name, and what the address was given for
        text += (f"  (address given for {', '.join(ev.get('names') or []) or 'no remembered name'}; "
                 f"{'reset' if ev.get('refused') else 'let through'}: {ev.get('reason')})")
    return text


def recorded(netns: str | None) -> list[dict]:
    """Every readable event; torn or garbled lines are skipped with one warning."""
    found = audit.load_events(netns)
    if found.torn:
        log.warning("skipped %d unreadable line(s) in %s (torn or garbled); every other event is shown", found.torn, audit.events_path(netns))
    return found.events


def follow(netns: str | None):
    return audit.follow_events(netns)


def none_recorded(netns: str | None) -> str:
    running = controller_liveness(read_state(netns, "controller.json"))["running"]
    return "no blocked attempts recorded" + ("" if running else " (no controller is running here: 'ramfw run' records them; 'ramfw status' shows the refuse counters)")
