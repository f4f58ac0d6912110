"""The controller (`ramfw run`): keeps one namespace enforced: apply, snoop DNS, refresh names
before they expire, gc, reload on SIGHUP or policy change, repair an altered ruleset, heartbeat
and sd_notify. The per-namespace work itself is the Enforcer's (enforcer.py).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time

from .backends.base import Backend
from .backends.choose import select_backend
from .enforcer import Enforcer
from .errors import BackendError
from .logs import fields

log = logging.getLogger(__name__)


# ---- the long-running controller (`ramfw run`) -----------------------------------------------


def choose_snoop_mode(wanted: str, backend: Backend) -> tuple[str, str]:
    """The snooping mechanism for this kernel, and why (probed, per shared/DESIGN.md)."""
    from . import xtqueue

    if wanted == "off":
        return "off", "policy says snoop = off: active resolution only"
    if getattr(backend, "features", {}).get("queue"):
        native = "nft queue"
    elif xtqueue.available():
        native = "xtables NFQUEUE (this kernel's nftables lacks queue)"
    else:
        native = ""
    if wanted in ("auto", "queue") and native:
        return "queue", f"queue via {native}"
    if wanted == "queue":
        raise BackendError("dns.snoop = queue, but neither nft queue nor iptables-nft NFQUEUE is available; use snoop = log")
    return "log", "log (NFLOG)" + ("" if wanted == "log" else ": no queue mechanism available")


class Controller:
    """Keeps one namespace enforced: apply, snoop, refresh, gc, reload, repair, heartbeat."""

    def __init__(
        self,
        policy_path: str | None,
        netns_name: str | None,
        backend_choice: str = "auto",
        cleanup: bool = False,
        check_interval: float = 5.0,
        poll_interval: float = 0.25,
        metrics: str | None = None,
        policy_ca: str | None = None,
        policy_refresh: float = 60.0,
    ):
        self.policy_path = policy_path
        self.policy_ca = policy_ca
        self.policy_refresh = policy_refresh
        self.source = None
        self.netns_name = netns_name
        self.backend_choice = backend_choice
        self.cleanup = cleanup
        self.check_interval = check_interval
        self.poll_interval = poll_interval
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.reload_requested = threading.Event()
        self.enforcer: Enforcer | None = None
        self.snooper = None
        self.snoop_thread: threading.Thread | None = None
        self.snoop_stop = threading.Event()
        self.snoop_reason = ""
        self.xt_created: list[str] = []
        self.next_refresh: dict[str, float] = {}
        self.refresh_lock = threading.Lock()
        self.counters = {"reloads": 0, "reloads_refused": 0, "repairs": 0, "tampered": 0, "apply_failures": 0, "ips_expired": 0}
        self.started_at = time.time()
        self.policy_loaded_at = time.time()
        self.metrics_spec = metrics
        self.metrics = None

    # ---- start ------------------------------------------------------------------------------

    def start(self) -> None:
        import sys

        from .policysource import open_source

        # The snooper holds DNS answers while it works: when another thread runs Python (a
        # state write, a reload), let the snooper back on the GIL within 0.5 ms, not 5 ms.
        sys.setswitchinterval(0.0005)

        self.source = open_source(self.policy_path, self.netns_name, self.policy_ca, self.policy_refresh)
        policy = self._load_policy()  # PolicyError: nothing touched yet
        for w in policy.warnings:
            log.warning("%s", w)
        backend, reason = select_backend(self.netns_name, self.backend_choice)
        log.info("backend %s: %s", backend.name, reason)
        self.enforcer = Enforcer(self.netns_name, backend, reason)
        self.enforcer.set_policy(policy)
        mode, self.snoop_reason = choose_snoop_mode(policy.dns.snoop, backend)
        self.enforcer.snoop_mode = mode
        self._schedule(self.enforcer.resolve_policy_names())
        self.enforcer.apply()
        self._start_snooper()
        self._start_audit()
        if self.metrics_spec:
            from .metrics import MetricsServer

            self.metrics = MetricsServer(self.metrics_spec, self)
            self.metrics.start()
        log.info(
            "enforcing %s policy %s (%s): %d addresses, snoop %s",
            policy.mode, policy.digest, policy.source, self.enforcer.desired.element_count(), self.snoop_reason,
            extra=fields(event="started", policy=policy.digest, backend=backend.name, snoop=self.enforcer.snoop_mode),
        )

    def _load_policy(self):
        return self.source.load().with_infrastructure(self.source.hosts(), "policy source")

    def _start_snooper(self) -> None:
        from . import xtqueue
        from .plan import DNS_LOG_GROUP, DNS_QUERY_GROUP, DNS_QUEUE_NUM
        from .snoop import Snooper

        enf = self.enforcer
        if enf.snoop_mode == "off":
            return
        if enf.snoop_mode == "queue" and not enf.backend.features.get("queue"):
            d = enf.desired
            self.xt_created = xtqueue.install(self.netns_name, d.dns.servers4, d.dns.servers6, DNS_QUEUE_NUM) or self.xt_created
        self.snooper = Snooper(
            self.netns_name, enf.trusted_servers(), functools.partial(enf.credit_answer, defer=True), enf.snoop_mode,
            DNS_QUEUE_NUM, DNS_LOG_GROUP, DNS_QUERY_GROUP, fallback=self._resolve_soon, flush=enf.flush,
        )
        self.snooper.open()
        self.snoop_stop.clear()
        self.snoop_thread = threading.Thread(target=self.snooper.run, args=(self.snoop_stop,), name="snoop", daemon=True)
        self.snoop_thread.start()

    def names_for(self, ip: str) -> list[str]:
        """Host names an address was recently given for: policy names first, then any name."""
        with self.enforcer.lock:
            names = sorted(self.enforcer.cache.names_for(ip))
        seen = self.snooper.recent.get(ip) if self.snooper is not None else None
        if seen and seen not in names:
            names.append(seen)
        return names

    def _start_audit(self) -> None:
        from .audit import AuditLog

        self.audit = AuditLog(self.netns_name, self.enforcer.desired.audit_group, self.names_for, lambda: self.enforcer.policy.digest)
        self.audit.open()
        self.audit_stop = threading.Event()
        self.audit_thread = threading.Thread(target=self.audit.run, args=(self.audit_stop,), name="audit", daemon=True)
        self.audit_thread.start()

    def _stop_audit(self) -> None:
        if getattr(self, "audit_thread", None) is not None:
            self.audit_stop.set()
            self.audit_thread.join(timeout=5)
            self.audit_thread = None
            self.audit.close()

    def _stop_snooper(self) -> None:
        if self.snoop_thread is not None:
            self.snoop_stop.set()
            self.snoop_thread.join(timeout=5)
            self.snoop_thread = None
        if self.snooper is not None:
            self.snooper.close()

    # ---- refresh ----------------------------------------------------------------------------

    def _schedule(self, results) -> None:
        """When to look each name up again: before its answer expires (80% of its TTL)."""
        now = time.monotonic()
        floor = self.enforcer.policy.dns.min_ttl if self.enforcer else 0
        with self.refresh_lock:
            for res in results:
                if res.answers:
                    ttl = max(min(t for _, t in res.answers), floor, 1)
                    self.next_refresh[res.name] = now + ttl * 0.8
                else:
                    self.next_refresh[res.name] = now + 5.0  # failed or missing: retry soon

    def _resolve_soon(self, name: str) -> None:
        with self.refresh_lock:
            self.next_refresh[name] = 0.0
        self.wake.set()

    def _refresh_due(self) -> None:
        from .resolver import Resolver

        enf = self.enforcer
        now = time.monotonic()
        wanted = set(enf.policy.concrete_names("allow") + enf.policy.concrete_names("block"))
        with self.refresh_lock:
            due = [n for n, t in self.next_refresh.items() if t <= now]
        if not due:
            return
        results = Resolver(self.netns_name, list(enf.trusted_servers())).resolve_all(due)
        for res in results:
            if res.error:
                enf.counters["resolve_failures"] += 1
                log.warning("cannot refresh %s (%s); keeping the last good answer", res.name, res.error,
                            extra=fields(event="resolve_failed", name=res.name))
            elif res.answers and (res.name in wanted or enf.policy.classify(res.name)[0] != "unlisted"):
                enf.credit_answer(res.name, list(res.chain), res.answers)
        self._schedule(results)

    # ---- reload, repair ---------------------------------------------------------------------

    def reload(self, why: str) -> bool:
        from .errors import PolicyError

        enf = self.enforcer
        try:
            policy = self._load_policy()
        except PolicyError as exc:
            self.counters["reloads_refused"] += 1
            log.error("policy reload (%s) refused, still enforcing %s: %s", why, enf.policy.digest, "; ".join(exc.lines()),
                      extra=fields(event="reload_refused", policy=enf.policy.digest))
            return False
        old_mode = enf.snoop_mode
        try:
            new_mode, reason = choose_snoop_mode(policy.dns.snoop, enf.backend)
        except BackendError as exc:
            self.counters["reloads_refused"] += 1
            log.error("policy reload (%s) refused, still enforcing %s: %s", why, enf.policy.digest, exc,
                      extra=fields(event="reload_refused", policy=enf.policy.digest))
            return False
        old_policy = enf.policy
        enf.set_policy(policy)
        with self.refresh_lock:
            self.next_refresh = {}
        self._schedule(enf.resolve_policy_names())
        if new_mode != old_mode:
            self._stop_snooper()
        enf.snoop_mode = new_mode
        try:
            enf.apply()
        except BackendError as exc:
            self.counters["apply_failures"] += 1
            log.error("applying policy %s failed, the previous ruleset stays in force: %s", policy.digest, exc,
                      extra=fields(event="apply_failed", policy=policy.digest))
            enf.set_policy(old_policy)
            enf.snoop_mode = old_mode
            if new_mode != old_mode:
                self._start_snooper()
            return False
        if new_mode != old_mode:
            self.snoop_reason = reason
            self._remove_xtqueue_if_unused()
            self._start_snooper()
        elif self.snooper is not None:
            self.snooper.set_trusted(enf.trusted_servers())
            if new_mode == "queue" and not enf.backend.features.get("queue"):
                from . import xtqueue
                from .plan import DNS_QUEUE_NUM

                d = enf.desired
                xtqueue.install(self.netns_name, d.dns.servers4, d.dns.servers6, DNS_QUEUE_NUM)
        self.counters["reloads"] += 1
        self.policy_loaded_at = time.time()
        log.info("reloaded (%s): now enforcing %s policy %s", why, policy.mode, policy.digest,
                 extra=fields(event="reloaded", policy=policy.digest, mode=policy.mode, addresses=enf.desired.element_count(),
                              apply_seconds=round(enf.last_apply_seconds, 4)))
        return True

    def _remove_xtqueue_if_unused(self) -> None:
        from . import xtqueue

        if self.enforcer.snoop_mode != "queue" or self.enforcer.backend.features.get("queue"):
            xtqueue.remove(self.netns_name, self.xt_created)
            self.xt_created = []

    def repair_if_needed(self) -> None:
        from . import xtqueue

        enf = self.enforcer
        problems = enf.backend.check(enf.desired)
        xt_needed = enf.snoop_mode == "queue" and not enf.backend.features.get("queue")
        if xt_needed:
            from .plan import DNS_QUEUE_NUM

            problems += xtqueue.problems(self.netns_name, enf.desired.dns.servers4, enf.desired.dns.servers6, DNS_QUEUE_NUM)
        if not problems:
            return
        log.warning("ruleset altered outside ramfw (%s); restoring it", "; ".join(problems), extra=fields(event="repair"))
        self.counters["tampered"] += 1  # checks that found the ruleset altered (status, metrics)
        self.counters["repairs"] += 1
        try:
            enf.apply()
            if xt_needed:
                from .plan import DNS_QUEUE_NUM

                d = enf.desired
                xtqueue.install(self.netns_name, d.dns.servers4, d.dns.servers6, DNS_QUEUE_NUM)
        except BackendError as exc:
            self.counters["apply_failures"] += 1
            log.error("repair failed: %s", exc)

    # ---- the loop ---------------------------------------------------------------------------

    def heartbeat(self) -> None:
        from . import state as state_file

        snoop = dict(self.snooper.counters) if self.snooper is not None else {}
        state_file.write_state(
            self.netns_name,
            {
                "pid": os.getpid(),
                "heartbeat": time.time(),
                "started_at": self.started_at,
                "policy_digest": self.enforcer.policy.digest,
                "snoop": self.enforcer.snoop_mode,
                "snoop_reason": self.snoop_reason,
                "xtables_created_tables": self.xt_created,
                "check_interval": self.check_interval,
                "counters": {
                    **self.enforcer.counters,
                    **self.counters,
                    "blocked_attempts": self.audit.count if getattr(self, "audit", None) else 0,
                    **{f"snoop_{k}": v for k, v in snoop.items()},
                },
            },
            name="controller.json",
        )

    def run_forever(self) -> None:
        import signal

        from . import sdnotify

        def on_hup(signum, frame):
            self.reload_requested.set()
            self.wake.set()

        def on_term(signum, frame):
            self.stopping.set()
            self.wake.set()

        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        self.heartbeat()
        sdnotify.notify("READY=1", f"STATUS=enforcing policy {self.enforcer.policy.digest}")
        watchdog = sdnotify.watchdog_interval()
        last = {"check": time.monotonic(), "beat": 0.0, "gc": time.monotonic(), "state": time.monotonic(), "dog": 0.0}
        while not self.stopping.is_set():
            self.wake.wait(self.poll_interval)
            self.wake.clear()
            if self.stopping.is_set():
                break
            now = time.monotonic()
            try:
                if self.reload_requested.is_set():
                    self.reload_requested.clear()
                    if hasattr(self.source, "fetch"):
                        self.source.fetch()
                    self.reload("SIGHUP")
                elif self.source.poll():
                    self.reload(f"policy changed at {self.source.description}")
                self._refresh_due()
                if now - last["check"] >= self.check_interval:
                    last["check"] = now
                    self.repair_if_needed()
                if now - last["gc"] >= 5.0:
                    last["gc"] = now
                    with self.enforcer.lock:
                        self.counters["ips_expired"] += len(self.enforcer.cache.gc())
                # explain reads learned names from state.json: write it soon after a change, less
                # often when the cache is large (it is written whole)
                state_every = 1.0 if len(self.enforcer.cache) < 1000 else 10.0
                if now - last["state"] >= state_every and self.enforcer.cache.version != self.enforcer._saved_version:
                    last["state"] = now
                    self.enforcer.save_state()
            except (BackendError, OSError) as exc:  # EMFILE, ENOMEM…: logged; the loop and the rules stay
                log.error("%s", exc)
            if now - last["beat"] >= 2.0:
                last["beat"] = now
                self.heartbeat()
                sdnotify.notify(f"STATUS=enforcing policy {self.enforcer.policy.digest}; {self.enforcer.counters['ips_added']} addresses learned")
            if watchdog and now - last["dog"] >= watchdog:
                last["dog"] = now
                sdnotify.notify("WATCHDOG=1")
        sdnotify.notify("STOPPING=1")
        self.shutdown()

    def shutdown(self) -> None:
        from . import state as state_file
        from .teardown import teardown

        self._stop_snooper()
        self._stop_audit()
        if self.metrics is not None:
            self.metrics.stop()
        if self.cleanup:
            teardown(self.netns_name)
            log.info("stopped; ruleset removed (--cleanup)")
        else:
            state_file.write_state(self.netns_name, {"pid": None, "stopped_at": time.time(), "xtables_created_tables": self.xt_created}, name="controller.json")
            log.info("stopped; the ruleset stays in force (fail closed); 'ramfw down' removes it")
