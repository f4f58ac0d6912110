"""What the running controller writes to controller.json every 2 s: its liveness (pid,
heartbeat), what it enforces (policy digest, snoop mode and why, the tables its backend created
outside its own) and every counter. `ramfw status`, `explain`, the metrics and `ramfw down` read
it; the keys are part of the files-on-disk contract."""

from __future__ import annotations

import os
import time


def controller_record(ctl) -> dict:
    """controller.json's content for a running Controller."""
    snoop = dict(ctl.snooper.counters) if ctl.snooper is not None else {}
    cache = ctl.enforcer.cache.stats()
    return {
        "pid": os.getpid(),
        "heartbeat": time.time(),
        "started_at": ctl.started_at,
        "policy_digest": ctl.enforcer.policy.digest,
        "snoop": ctl.enforcer.snoop_mode,
        "snoop_reason": ctl.snoop_reason,
        "xtables_created_tables": ctl.enforcer.backend.created_tables(),
        "check_interval": ctl.check_interval,
        "counters": {
            **ctl.enforcer.counters.snapshot(),
            **ctl.counters.snapshot(),
            **event_counters(ctl.audit, ctl.enforcer.policy),
            "cache_names": cache["names"],
            "cache_addresses": cache["addresses"],
            "cache_evicted": cache["evicted"],
            "refresh_failing": ctl.schedule.failing(),
            **{f"snoop_{k}": v for k, v in snoop.items()},
            **{f"sni_{k}": v for k, v in ctl.sni.counters.items()},
        },
    }


def event_counters(audit, policy) -> dict:
    """Refused (and, in or after audit mode, would-be-refused) attempts the audit log counted."""
    if audit is None:
        return {"blocked_attempts": 0}
    out = {"blocked_attempts": audit.counts["refused"], "events_dropped": audit.dropped}
    if policy.audit or audit.counts["would_refuse"]:
        out["would_refuse_attempts"] = audit.counts["would_refuse"]
    return out
