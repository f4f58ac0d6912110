"""Prometheus metrics for a running controller, on a unix socket or a loopback port.

Figures are read when scraped (no second bookkeeping that could drift): set sizes and refused
packet counts from the kernel, everything else from the controller's own counters. Set sizes
are counted at most every SET_SIZES_TTL seconds (a dump of 100,000 elements is not free), and
from the ipset header where the backend has one.

The listener is local, but any local process can connect: connections are capped
(MAX_CONNECTIONS; more are closed at once, so idle connections cannot exhaust the controller's
file descriptors) and each read times out (CONNECTION_TIMEOUT). Labels never carry secrets: a
policy URL is shown without user info and query (tokens live there).
"""

from __future__ import annotations

import http.server
import ipaddress
import logging
import os
import socket
import socketserver
import threading
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ramfw.errors import UsageError
from ramfw.daemon.source import redact_url

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 16
CONNECTION_TIMEOUT = 5.0  # seconds a client may stay silent (per read) before it is dropped
SET_SIZES_TTL = 10.0


def parse_listen(spec: str) -> tuple[str, object]:
    """'unix:/path' or 'HOST:PORT' (loopback only: metrics name hosts and addresses)."""
    if spec.startswith("unix:"):
        path = spec[5:]
        if not path.startswith("/"):
            raise UsageError(f"--metrics {spec!r}: a unix socket needs an absolute path, e.g. unix:/run/ramfw/metrics.sock")
        return "unix", path
    host, sep, port = spec.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--metrics {spec!r}: expected unix:/path or 127.0.0.1:PORT")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise UsageError(f"--metrics {spec!r}: listen on a loopback address (127.0.0.1, ::1) or a unix socket")
    return "tcp", (host, int(port))


class ControllerCollector:
    def __init__(self, controller, clock=time.monotonic):
        self.ctl = controller
        self.clock = clock
        self._sizes: tuple[float, dict[str, int]] = (float("-inf"), {})
        self._sizes_lock = threading.Lock()

    def set_sizes(self) -> dict[str, int]:
        """Elements per set, recounted at most every SET_SIZES_TTL seconds whatever the scrape rate."""
        with self._sizes_lock:
            at, sizes = self._sizes
            if self.clock() - at >= SET_SIZES_TTL:
                sizes = self.ctl.enforcer.backend.set_sizes()
                self._sizes = (self.clock(), sizes)
            return sizes

    def collect(self):
        ctl = self.ctl
        enf = ctl.enforcer
        kernel = enf.backend.read_state(with_elements=False)
        sets = GaugeMetricFamily("ramfw_set_elements", "Addresses in each of ramfw's kernel sets", labels=["set"])
        for name, count in sorted(self.set_sizes().items()):
            sets.add_metric([name], count)
        yield sets
        refused = CounterMetricFamily("ramfw_refused_packets", "Packets refused by the refuse chains", labels=["scope"])
        for name, c in sorted(kernel.counters.items()):
            if name.startswith("refuse_"):
                refused.add_metric([name[len("refuse_"):]], c["packets"])
        yield refused
        snoop = ctl.snooper.counters if ctl.snooper is not None else {}
        answers = CounterMetricFamily("ramfw_dns_answers", "DNS answers examined by the snooper, by outcome", labels=["outcome"])
        for key in ("answers_used", "not_listed", "blocked_chain", "unsolicited", "mismatched", "untrusted", "malformed"):
            answers.add_metric([key.replace("answers_", "")], snoop.get(key, 0))
        yield answers
        yield CounterMetricFamily("ramfw_dns_answers_seen", "DNS answers seen by the snooper", value=snoop.get("answers_seen", 0))
        yield CounterMetricFamily("ramfw_ips_added", "Set elements added or refreshed", value=enf.counters["ips_added"])
        yield CounterMetricFamily("ramfw_ips_expired", "Learned addresses aged out of the DNS cache", value=ctl.counters["ips_expired"])
        blocked = CounterMetricFamily("ramfw_blocked_attempts", "Blocked connection attempts, by host name", labels=["host"])
        would = CounterMetricFamily("ramfw_would_refuse_attempts", "Attempts audit mode let through but the policy would refuse, by host name", labels=["host"])
        audit = getattr(ctl, "audit", None)
        for (action, host), count in sorted(dict(audit.by_host if audit else {}).items()):  # a copy: the audit thread adds keys
            if action in ("would_refuse", "refused"):
                (would if action == "would_refuse" else blocked).add_metric([host], count)
        yield blocked
        yield would
        sni = ctl.sni.counters if getattr(ctl, "sni", None) is not None else {}
        judged = CounterMetricFamily("ramfw_sni_connections", "TLS connections judged by SNI binding, by outcome", labels=["outcome"])
        for key in ("passed", "mismatched", "no_sni", "refused", "audited"):
            judged.add_metric([key], sni.get(key, 0))
        yield judged
        yield CounterMetricFamily("ramfw_sni_packets", "Packets SNI binding examined in user space", value=sni.get("packets", 0))
        yield CounterMetricFamily("ramfw_events_dropped", "Refused-attempt events dropped by the per-source rate limit",
                                  value=audit.dropped if audit else 0)
        yield GaugeMetricFamily("ramfw_audit_mode", "1 when the policy runs in audit mode (nothing refused)", value=int(enf.policy.audit))
        yield CounterMetricFamily("ramfw_applies", "Rulesets applied", value=enf.counters["applies"])
        yield GaugeMetricFamily("ramfw_apply_duration_seconds", "Duration of the last apply", value=enf.last_apply_seconds)
        yield CounterMetricFamily("ramfw_reloads", "Policy reloads", value=ctl.counters["reloads"])
        yield CounterMetricFamily("ramfw_reloads_refused", "Policy reloads refused (invalid policy)", value=ctl.counters["reloads_refused"])
        yield CounterMetricFamily("ramfw_repairs", "Rulesets restored after outside changes", value=ctl.counters["repairs"])
        yield CounterMetricFamily("ramfw_tampered", "Checks that found ramfw's ruleset altered from outside",
                                  value=ctl.counters["tampered"])
        yield GaugeMetricFamily("ramfw_check_interval_seconds", "Seconds between two comparisons of the ruleset with what was applied",
                                value=ctl.check_interval)
        info = GaugeMetricFamily("ramfw_policy_info", "The enforced policy", labels=["digest", "mode", "source", "backend", "snoop"])
        info.add_metric([enf.policy.digest, enf.policy.mode, redact_url(enf.policy.source), enf.backend.name, enf.snoop_mode], 1)
        yield info
        yield GaugeMetricFamily("ramfw_policy_age_seconds", "Seconds since the enforced policy was loaded", value=time.time() - ctl.policy_loaded_at)
        yield GaugeMetricFamily("ramfw_conflicts", "Addresses reached through both an allowed and a blocked name",
                                value=len(enf.desired.conflicts) if enf.desired else 0)
        cache = enf.cache.stats()
        yield GaugeMetricFamily("ramfw_dns_cache_addresses", "Addresses in the DNS cache", value=cache["addresses"])
        yield CounterMetricFamily("ramfw_dns_cache_evicted", "Cache entries forgotten to stay under dns.max_addresses",
                                  value=cache["evicted"])
        yield CounterMetricFamily("ramfw_loop_errors", "Errors in the controller's main loop (logged)", value=ctl.counters["loop_errors"])


class _Handler(http.server.BaseHTTPRequestHandler):
    registry: CollectorRegistry
    timeout = CONNECTION_TIMEOUT  # StreamRequestHandler sets it on the socket: an idle client is dropped

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404, "try /metrics")
            return
        try:
            body = generate_latest(self.registry)
        except Exception as exc:  # a scrape must not kill the controller
            log.error("metrics scrape failed: %s", exc)
            self.send_error(500, "scrape failed")
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self):
        return "unix" if isinstance(self.client_address, (str, bytes)) or not self.client_address else super().address_string()

    def log_message(self, fmt, *args):
        log.debug("metrics: " + fmt, *args)


class _Capped(socketserver.ThreadingMixIn):
    """At most MAX_CONNECTIONS connections at a time, each on its own thread; one more is
    accepted and closed at once (it holds no descriptor and no thread), counted, logged once
    a minute at most."""

    daemon_threads = True
    request_queue_size = 64

    def _cap_init(self) -> None:
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.refused = 0
        self._refused_said = 0.0

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            if time.monotonic() - self._refused_said > 60:
                self._refused_said = time.monotonic()
                log.warning("metrics: more than %d connections at once; closing extra ones (%d so far)", MAX_CONNECTIONS, self.refused)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):
        log.debug("metrics: a connection failed", exc_info=True)  # a client's problem, not ours


class _UnixHTTPServer(_Capped, socketserver.UnixStreamServer):
    def __init__(self, *args, **kw):
        self._cap_init()
        super().__init__(*args, **kw)


class _TCPHTTPServer(_Capped, http.server.HTTPServer):
    def __init__(self, *args, **kw):
        self._cap_init()
        super().__init__(*args, **kw)


class _TCP6HTTPServer(_TCPHTTPServer):
    address_family = socket.AF_INET6


class MetricsServer:
    def __init__(self, spec: str, controller):
        self.kind, self.where = parse_listen(spec)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ControllerCollector(controller))
        handler = type("Handler", (_Handler,), {"registry": self.registry})
        if self.kind == "unix":
            try:
                os.unlink(self.where)
            except FileNotFoundError:
                pass
            os.makedirs(os.path.dirname(self.where), exist_ok=True)
            self.server = _UnixHTTPServer(self.where, handler)
            os.chmod(self.where, 0o600)
        else:
            host, port = self.where
            server_class = _TCP6HTTPServer if ":" in host else _TCPHTTPServer
            self.server = server_class((host, port), handler)
        from ramfw.daemon.threads import Worker

        # serve_forever() calls service_actions() every poll: that is the thread's heartbeat
        self.worker = Worker("metrics", self.server.serve_forever)
        self.server.service_actions = self.worker.beat

    def start(self) -> None:
        self.worker.start()
        log.info("metrics on %s", self.where if self.kind == "unix" else "http://%s:%d/metrics" % self.where)

    def stop(self) -> None:
        self.worker.expected_exit.set()
        self.server.shutdown()
        self.server.server_close()
        if self.kind == "unix":
            try:
                os.unlink(self.where)
            except FileNotFoundError:
                pass
