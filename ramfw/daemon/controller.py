"""The controller (`ramfw run`): keeps one namespace enforced: apply, snoop DNS, refresh names
before they expire, gc, reload on SIGHUP or policy change, repair an altered ruleset, heartbeat
and sd_notify. The per-namespace work itself is the Enforcer's (enforcer.py); the threads'
concurrency model is written down in Controller's docstring.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time

from ramfw.backends.choose import select_backend
from ramfw.common.counters import Counters
from ramfw.daemon.enforcer import Enforcer
from ramfw.errors import BackendError
from ramfw.common.logs import RepeatedLog, fields
from ramfw.daemon.refresh import RefreshSchedule
from ramfw.daemon.snoop_mode import choose_snoop_mode
from ramfw.daemon.threads import LoopThread, StallGuard, Worker
from ramfw.daemon.sni import SniService

log = logging.getLogger(__name__)


# ---- the long-running controller (`ramfw run`) -----------------------------------------------


class Controller:
    """Keeps one namespace enforced: apply, snoop, refresh, gc, reload, repair, heartbeat.

    Concurrency model (the one the whole daemon follows; README "How it works" repeats it):

    threads   main loop (this class): reload, refresh (resolution), repair, gc, state files,
              heartbeat, sd_notify; `snoop`: reads DNS queries and answers, credits answers,
              programs their addresses and only then releases them; `audit`: records refused
              packets; `sni` (daemon/sni.py, only with [tls] sni on): judges each TLS
              connection's first payload, its assembler owned by it alone, its events through
              the audit log's locked record(); `metrics`: serves scrapes (one short-lived
              thread per connection).
    state     the DNS cache and every counter lock themselves; the policy generation (policy,
              desired state, snoop mode) is replaced whole by Enforcer.commit() and only read
              elsewhere; the refresh schedule has its own lock; the snooper's question tracker,
              TCP streams and counters are written by the snoop thread alone (others read copies
              or single keys: one dict operation, atomic under the GIL); the audit thread's
              per-host counts likewise, copied whole by the metrics thread.
    kernel    Enforcer.kernel_lock serialises ramfw's kernel writes (element batches, ruleset
              transactions) and is held across nothing else: no lock is held across resolution,
              conntrack dumps, state files, HTTP, or commands other than those of a ruleset
              transaction (iptables-restore; the nft backend's queue fallback, installed with
              its table, every command with a timeout). Every netlink receive (nf_tables,
              ipset, NFQUEUE, NFLOG, conntrack) has a timeout.
    failure   every thread runs under a Worker (threads.py): an exception is logged with its
              traceback and counted; a thread that died or stopped making progress ends the
              process with exit status 1 (systemd restarts it; the rules stay in force), and the
              watchdog is fed only while every thread is alive and beating. The snoop, audit and
              sni threads are LoopThreads (threads.py). The main loop's steps (reload, repair,
              refresh, gc) each catch, count and log their own errors (summarised when they
              repeat), so one that keeps failing never starves the others.
    """

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
        audit: bool = False,
    ):
        self.policy_path = policy_path
        self.audit_mode = audit  # --audit: every policy loaded runs in audit mode
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
        self.snoop_thread: LoopThread | None = None
        self.snoop_reason = ""
        self.audit = None
        self.audit_thread: LoopThread | None = None
        self.sni = SniService(netns_name)  # SNI binding's thread, while the policy turns it on
        self.schedule = RefreshSchedule()
        self.counters = Counters("reloads", "reloads_refused", "repairs", "apply_failures", "ips_expired",
                                 "loop_errors", "state_write_failures", "tampered")
        self.started_at = time.time()
        self.policy_loaded_at = time.time()
        self.metrics_spec = metrics
        self.metrics = None
        self.exit_status = 0
        env_limit = os.environ.get("RAMFW_STALL_LIMIT", "")
        self.stall_limit = float(env_limit) if env_limit.replace(".", "", 1).isdigit() else 30.0
        self._complaints = RepeatedLog(log)

    # ---- start ------------------------------------------------------------------------------

    def start(self) -> None:
        from ramfw.daemon.process import tune_for_snooping
        from ramfw.daemon.source import open_source

        tune_for_snooping()

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
        self.enforcer.restore_from_state()  # a restart keeps what it had learned
        staged = self.enforcer.stage(policy, mode)
        self.enforcer.commit(staged)
        self.schedule.record(staged.results, policy.dns.min_ttl, announce=False)
        self._start_snooper()
        self._start_audit()
        self.sni.sync(self.enforcer, self._record_events)
        if self.metrics_spec:
            from ramfw.daemon.metrics import MetricsServer

            self.metrics = MetricsServer(self.metrics_spec, self)
            self.metrics.start()
        log.info(
            "enforcing %s policy %s (%s): %d addresses, snoop %s",
            policy.mode_label, policy.digest, policy.source, self.enforcer.desired.element_count(), self.snoop_reason,
            extra=fields(event="started", policy=policy.digest, backend=backend.name, snoop=self.enforcer.snoop_mode),
        )

    def _load_policy(self):
        policy = self.source.load().with_infrastructure(self.source.hosts(), "policy source")
        return policy.audited() if self.audit_mode else policy

    def _start_snooper(self) -> None:
        from ramfw.plan import DNS_LOG_GROUP, DNS_QUERY_GROUP, DNS_QUEUE_NUM
        from ramfw.dns.snooper import Snooper

        enf = self.enforcer
        if enf.snoop_mode == "off":
            return
        self.snooper = Snooper(
            self.netns_name, enf.trusted_servers(), functools.partial(enf.credit_answer, defer=True), enf.snoop_mode,
            DNS_QUEUE_NUM, DNS_LOG_GROUP, DNS_QUERY_GROUP, fallback=self._resolve_soon, flush=enf.flush,
        )
        self.snoop_thread = LoopThread("snoop", self.snooper).start()

    def names_for(self, ip: str) -> list[str]:
        """Host names an address was recently given for: policy names first, then any name."""
        names = sorted(self.enforcer.cache.names_for(ip))
        seen = self.snooper.recent.get(ip) if self.snooper is not None else None
        if seen and seen not in names:
            names.append(seen)
        return names

    def _start_audit(self) -> None:
        from ramfw.daemon.audit import AuditLog

        self.audit = AuditLog(self.netns_name, self.enforcer.desired.audit_group, self.names_for, lambda: self.enforcer.policy.digest)
        self.audit_thread = LoopThread("audit", self.audit).start()

    def _record_events(self, events: list[dict]) -> None:
        """Events from other threads (the sni thread's mismatches), into the audit log."""
        if self.audit is not None:
            self.audit.record(events)

    def _stop_audit(self) -> None:
        if self.audit_thread is not None:
            self.audit_thread.stop()
            self.audit_thread = None

    def _stop_snooper(self) -> None:
        if self.snoop_thread is not None:
            self.snoop_thread.stop()
            self.snoop_thread = None
        self.snooper = None

    def workers(self) -> list[Worker]:
        threads = (self.snoop_thread, self.audit_thread, self.sni.thread)
        out = [t.worker for t in threads if t is not None and t.worker is not None]
        if self.metrics is not None and getattr(self.metrics, "worker", None) is not None:
            out.append(self.metrics.worker)
        return out

    # ---- refresh ----------------------------------------------------------------------------

    def _resolve_soon(self, name: str) -> None:
        self.schedule.soon(name)
        self.wake.set()

    def _refresh_due(self) -> None:
        from ramfw.dns.resolver import Resolver

        enf = self.enforcer
        due = self.schedule.due()
        if not due:
            return
        policy = enf.policy
        wanted = set(policy.concrete_names("allow") + policy.concrete_names("block"))
        results = Resolver(self.netns_name, list(enf.trusted_servers(policy))).resolve_all(due)
        for res in results:
            if res.error:
                enf.counters.inc("resolve_failures")
            elif res.answers and (res.name in wanted or policy.classify(res.name)[0] != "unlisted"):
                enf.credit_answer(res.name, list(res.chain), res.answers)
        self.schedule.record(results, policy.dns.min_ttl)

    # ---- reload, repair ---------------------------------------------------------------------

    def reload(self, why: str) -> bool:
        """Load, resolve and apply a new policy as one transaction: the old policy, cache,
        schedule and snoop mode are replaced only once the kernel accepted the new ruleset."""
        from ramfw.errors import PolicyError

        enf = self.enforcer
        try:
            policy = self._load_policy()
            new_mode, reason = choose_snoop_mode(policy.dns.snoop, enf.backend)
        except (PolicyError, BackendError) as exc:
            self.counters.inc("reloads_refused")
            detail = "; ".join(exc.lines()) if isinstance(exc, PolicyError) else str(exc)
            log.error("policy reload (%s) refused, still enforcing %s: %s", why, enf.policy.digest, detail,
                      extra=fields(event="reload_refused", policy=enf.policy.digest))
            return False
        old_mode = enf.snoop_mode
        staged = enf.stage(policy, new_mode)  # resolution: no lock held, nothing learned yet
        try:
            enf.commit(staged)
        except BackendError as exc:
            self.counters.inc("apply_failures")
            log.error("applying policy %s failed, the previous ruleset stays in force: %s", policy.digest, exc,
                      extra=fields(event="apply_failed", policy=policy.digest))
            return False
        self.schedule.forget_except(lambda n: policy.classify(n)[0] != "unlisted")
        self.schedule.reset()
        self.schedule.record(staged.results, policy.dns.min_ttl, announce=False)
        if new_mode != old_mode:
            self.snoop_reason = reason
            self._stop_snooper()  # the apply already moved the backend's queue (or its fallback)
            self._start_snooper()
        elif self.snooper is not None:
            self.snooper.set_trusted(enf.trusted_servers())
        self.sni.sync(enf, self._record_events)
        self.counters.inc("reloads")
        self.policy_loaded_at = time.time()
        log.info("reloaded (%s): now enforcing %s policy %s", why, policy.mode_label, policy.digest,
                 extra=fields(event="reloaded", policy=policy.digest, mode=policy.mode, addresses=enf.desired.element_count(),
                              apply_seconds=round(enf.last_apply_seconds, 4)))
        return True

    def repair_if_needed(self) -> None:
        """The backend compares the kernel with what it applied (its rules, sets, and whatever
        else it installed, such as the nft backend's queue fallback); any difference: re-apply."""
        enf = self.enforcer
        problems = enf.backend.check(enf.desired)
        if not problems:
            return
        log.warning("ruleset altered outside ramfw (%s); restoring it", "; ".join(problems), extra=fields(event="repair"))
        self.counters.inc("tampered")  # checks that found the ruleset altered (status, metrics)
        self.counters.inc("repairs")
        try:
            enf.apply()
        except BackendError as exc:
            self.counters.inc("apply_failures")
            log.error("repair failed: %s", exc)

    # ---- the loop ---------------------------------------------------------------------------

    def heartbeat(self) -> None:
        """controller.json: liveness, what is enforced, every counter (status and metrics read it)."""
        from ramfw.daemon import state as state_file
        from ramfw.daemon.heartbeat import controller_record

        state_file.write_state(self.netns_name, controller_record(self), name="controller.json")

    def _write_files(self, now: float, last: dict) -> None:
        """controller.json every 2 s, state.json at most every 2 s and only after a change. A
        full disk or a missing directory is logged (summarised) and survived."""
        enf = self.enforcer
        try:
            if now - last["beat"] >= 2.0:
                last["beat"] = now
                self.heartbeat()
            if now - last["state"] >= 2.0 and enf.cache.version != enf._saved_version:
                last["state"] = now
                enf.save_state()
        except OSError as exc:
            self.counters.inc("state_write_failures")
            self._complaints.error("state", "cannot write the state files (%s); enforcement goes on, status and explain may be stale",
                                   exc.strerror or exc)

    def _one_pass(self, now: float, last: dict) -> None:
        """Reload, repair, refresh, gc: each step on its own, so that one that keeps failing (a
        refresh whose elements a flushed table refuses) does not starve the others (the repair
        that would fix the table). The repair goes before the refresh for the same reason."""
        self._step("reload", self._reload_if_asked)
        if now - last["check"] >= self.check_interval:
            last["check"] = now
            self._step("repair", self.repair_if_needed)
        self._step("refresh", self._refresh_due)
        if now - last["gc"] >= 5.0:
            last["gc"] = now
            self._step("gc", lambda: self.counters.inc("ips_expired", len(self.enforcer.cache.gc())))

    def _step(self, what: str, action) -> None:
        try:
            action()
        except Exception as exc:  # counted and logged; the next pass tries again
            self.counters.inc("loop_errors")
            self._complaints.exception(what, "controller %s failed (%s: %s); the ruleset stays in force, retrying",
                                       what, type(exc).__name__, exc)

    def _reload_if_asked(self) -> None:
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            if hasattr(self.source, "fetch"):
                self.source.fetch()
            self.reload("SIGHUP")
        elif self.source.poll():
            self.reload(f"policy changed at {self.source.description}")

    def run_forever(self) -> int:
        """Serve until SIGTERM/SIGINT (returns 0) or until a thread fails or stalls (returns 1)."""
        import signal

        from ramfw.daemon import notify as sdnotify

        def on_hup(signum, frame):
            self.reload_requested.set()
            self.wake.set()

        def on_term(signum, frame):
            self.stopping.set()
            self.wake.set()

        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        last = {"check": time.monotonic(), "beat": 0.0, "gc": time.monotonic(), "state": 0.0, "dog": 0.0}
        self._write_files(time.monotonic(), last)
        sdnotify.notify("READY=1", f"STATUS=enforcing policy {self.enforcer.policy.digest}")
        watchdog = sdnotify.watchdog_interval()
        guard = StallGuard(self.stall_limit, self._main_loop_stalled)
        guard.start()
        try:
            while not self.stopping.is_set():
                guard.beat()
                self.wake.wait(self.poll_interval)
                self.wake.clear()
                if self.stopping.is_set():
                    break
                now = time.monotonic()
                try:
                    self._one_pass(now, last)
                except Exception as exc:  # counted and logged; the next pass tries again
                    self.counters.inc("loop_errors")
                    self._complaints.exception("loop", "controller loop error (%s: %s); the ruleset stays in force, retrying",
                                               type(exc).__name__, exc)
                self._write_files(now, last)
                problems = [p for p in (w.problem(self.stall_limit) for w in self.workers()) if p]
                if problems:
                    log.critical("%s; exiting so that the service manager restarts ramfw (the ruleset stays in force)",
                                 "; ".join(problems), extra=fields(event="thread_failed"))
                    self.exit_status = 1
                    break
                if now - last["dog"] >= 2.0:
                    sdnotify.notify(f"STATUS=enforcing policy {self.enforcer.policy.digest}; "
                                    f"{self.enforcer.counters['ips_added']} addresses learned")
                if watchdog and now - last["dog"] >= watchdog:
                    last["dog"] = now
                    sdnotify.notify("WATCHDOG=1")
        finally:
            guard.stop()
        sdnotify.notify("STOPPING=1")
        if self.exit_status:
            # a stuck thread may never let go: shut down on the side, and leave after 5 s anyway
            closer = threading.Thread(target=self.shutdown, name="shutdown", daemon=True)
            closer.start()
            closer.join(5.0)
        else:
            self.shutdown()
        return self.exit_status

    def _main_loop_stalled(self, idle: float) -> None:
        log.critical("the controller's main loop made no progress for %.0f s; exiting so that the service manager "
                     "restarts ramfw (the ruleset stays in force)", idle, extra=fields(event="thread_failed"))
        logging.shutdown()
        os._exit(1)

    def shutdown(self) -> None:
        from ramfw.daemon import state as state_file
        from ramfw.daemon.teardown import teardown

        self._stop_snooper()
        self.sni.stop()
        self._stop_audit()
        if self.metrics is not None:
            self.metrics.stop()
        if self.cleanup:
            teardown(self.netns_name)
            log.info("stopped; ruleset removed (--cleanup)")
        else:
            try:
                state_file.write_state(self.netns_name, {"pid": None, "stopped_at": time.time(), "xtables_created_tables": self.enforcer.backend.created_tables()}, name="controller.json")
            except OSError as exc:
                log.error("cannot record the stop in the state files: %s", exc.strerror or exc)
            log.info("stopped; the ruleset stays in force (fail closed); 'ramfw down' removes it")
