"""Per-namespace state that outlives one command: what was applied, what DNS taught us, and
the running controller's heartbeat and counters. Read by status, explain and events.

The kernel ruleset is the truth for what is enforced; this file explains it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

from ramfw.common.files import write_atomic
from ramfw.kernel import netns

log = logging.getLogger(__name__)

STATE_ROOT = os.environ.get("RAMFW_STATE_DIR", "/run/ramfw")


def state_dir(netns_name: str | None) -> str:
    ident = netns.ns_id(netns_name)  # "net:[4026531840]": same namespace, same directory
    digits = "".join(ch for ch in ident if ch.isdigit())
    return os.path.join(STATE_ROOT, f"net-{digits}")


# state.json: written at each apply (policy, cache, conflicts); controller.json: the running
# controller's heartbeat and counters, rewritten every few seconds (kept small on purpose).
FILES = ("state.json", "controller.json")
FILE_MODE = 0o600  # what they always had (mkstemp's mode): they name hosts, addresses and uids


def state_path(netns_name: str | None, name: str = "state.json") -> str:
    return os.path.join(state_dir(netns_name), name)


def read_state(netns_name: str | None, name: str = "state.json") -> dict:
    """The file's object, or {} when it is missing or not what ramfw writes (anybody able to
    write the state directory could plant garbage: a damaged file is explained, not trusted)."""
    path = state_path(netns_name, name)
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else getattr(exc, "strerror", None) or "not JSON"
        log.warning("ignoring state file %s: %s", path, reason)
        return {}
    if not isinstance(data, dict):
        log.warning("ignoring state file %s: not a JSON object", path)
        return {}
    return data


class _WriteFailures:
    """Failed state writes, summarised: the first failure of a run of them is logged with its
    reason, then at most one reminder a minute with the count, and the recovery once. A full
    /run or a descriptor shortage must neither end the controller nor flood the journal."""

    REMIND_EVERY = 60.0

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.lock = threading.Lock()
        self.count = 0  # failures since the last success
        self.total = 0
        self.said_at = float("-inf")

    def failed(self, path: str, exc: OSError) -> None:
        with self.lock:
            self.count += 1
            self.total += 1
            if self.count == 1 or self.clock() - self.said_at >= self.REMIND_EVERY:
                self.said_at = self.clock()
                more = f" ({self.count} failed writes so far)" if self.count > 1 else ""
                log.error("cannot write state file %s: %s%s; enforcement goes on, status and explain may be stale until it works again",
                          path, exc.strerror or exc, more)

    def succeeded(self, path: str) -> None:
        with self.lock:
            if self.count:
                log.warning("state file %s written again after %d failed writes", path, self.count)
                self.count = 0


write_failures = _WriteFailures()


def write_state(netns_name: str | None, data: dict, name: str = "state.json") -> bool:
    """Atomic replace, so a reader never sees half a file. Returns False when the write failed
    (ENOSPC, EMFILE, EROFS…): logged, summarised, never raised; the kernel ruleset is the truth
    and this file only explains it."""
    path = state_path(netns_name, name)
    try:
        directory = state_dir(netns_name)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        write_atomic(path, json.dumps(data, indent=1, sort_keys=True), FILE_MODE)
    except OSError as exc:
        write_failures.failed(path, exc)
        return False
    write_failures.succeeded(path)
    return True


def remove_state(netns_name: str | None) -> None:
    directory = state_dir(netns_name)
    for name in FILES:
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(directory)
    except OSError:
        pass


def enforced_policy(saved: dict, policy_path: str | None = None):
    """The policy to reason with: the one given, else the one the namespace enforces (as its
    state file records), else $RAMFW_POLICY or the embedded default."""
    from ramfw.policy.load import load_policy

    if policy_path:
        return load_policy(policy_path)
    policy = _recorded_policy(saved)
    # `--audit` is not in the file: the state records it, so readers see the policy as it runs
    return policy.audited() if saved.get("audit") else policy


def _recorded_policy(saved: dict):
    from ramfw.policy.model import DEFAULT_SOURCE
    from ramfw.policy.load import load_policy

    from ramfw.daemon.source import UrlSource, is_url

    source = saved.get("policy_source")
    if is_url(source):
        return UrlSource(source, None).load()  # the last good copy: no fetch, no network
    if source and source != DEFAULT_SOURCE and os.path.exists(source):
        return load_policy(source)
    if source == DEFAULT_SOURCE:
        return load_policy(None)
    return load_policy(os.environ.get("RAMFW_POLICY") or None)


HEARTBEAT_STALE = 30.0  # seconds without a controller heartbeat before it counts as gone


def controller_liveness(ctl: dict) -> dict:
    """Whether the controller that wrote controller.json still runs: its pid exists and its
    heartbeat is fresh."""
    pid = ctl.get("pid")
    alive = False
    if pid:
        try:
            os.kill(pid, 0)
            alive = time.time() - ctl.get("heartbeat", 0) < HEARTBEAT_STALE
        except (ProcessLookupError, PermissionError):
            alive = False
    return {"running": alive, "pid": pid if alive else None, "heartbeat_age": round(time.time() - ctl["heartbeat"], 1) if alive else None}
