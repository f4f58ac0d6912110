"""Where the policy comes from: a local file, or an HTTPS URL that a fleet shares.

A URL is fetched from inside the enforced namespace (its resolver, its routes), revalidated
with ETag / If-Modified-Since, and every valid copy is kept as the last known good one, so an
offline machine keeps enforcing the policy it last saw. A fetched policy that does not validate
is refused and logged; the last good copy stays in force.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import logging
import os
import socket
import ssl
import time
import urllib.parse

from ramfw.common.files import write_atomic
from ramfw.kernel import netns
from ramfw.errors import PolicyError, RamfwError, UsageError
from ramfw.policy.model import MAX_POLICY_BYTES, Policy
from ramfw.policy.load import load_policy, parse_policy, policy_format
from ramfw.dns.resolver import Resolver, read_nameservers

log = logging.getLogger(__name__)

CACHE_DIR = os.environ.get("RAMFW_CACHE_DIR", "/var/lib/ramfw")
CACHE_FILE_MODE = 0o600  # the last good policy and its fetch metadata, as they always were (mkstemp's mode)


def is_url(spec: str | None) -> bool:
    return bool(spec) and "://" in spec


class FileSource:
    """A local file (or the embedded default when path is None), reloaded when it changes."""

    def __init__(self, path: str | None):
        self.path = path
        self.description = path or "the embedded default policy"
        self._stamp = self._stat()

    def _stat(self):
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
            return (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            return None

    def load(self) -> Policy:
        self._stamp = self._stat()
        return load_policy(self.path)

    def poll(self) -> bool:
        """True when the file changed since the last load."""
        return self.path is not None and self._stat() != self._stamp

    def hosts(self) -> list[str]:
        return []


class UrlSource:
    def __init__(self, url: str, netns_name: str | None, ca_file: str | None = None, refresh: float = 60.0, timeout: float = 10.0):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise UsageError(f"policy URL {url!r}: only https:// URLs are accepted")
        if ca_file and not os.path.exists(ca_file):
            raise UsageError(f"--policy-ca {ca_file!r}: no such file")
        self.url = url
        self.parts = parts
        self.netns_name = netns_name
        self.ca_file = ca_file
        self.refresh = refresh
        self.timeout = timeout
        self.description = url
        key = hashlib.sha256(url.encode()).hexdigest()[:16]
        self.cache_path = os.path.join(CACHE_DIR, f"policy-{key}.toml")
        self.meta_path = os.path.join(CACHE_DIR, f"policy-{key}.json")
        self.next_fetch = 0.0
        self.fetches = {"changed": 0, "unchanged": 0, "unreachable": 0, "invalid": 0}

    def hosts(self) -> list[str]:
        """The policy server must stay reachable whatever the policy says."""
        return [self.parts.hostname]

    # ---- fetching ---------------------------------------------------------------------------

    def _meta(self) -> dict:
        try:
            with open(self.meta_path) as fh:
                meta = json.load(fh)
        except (OSError, ValueError, RecursionError):
            return {}
        return meta if isinstance(meta, dict) else {}  # a planted file is ignored, not trusted

    def _connect(self) -> http.client.HTTPSConnection:
        host = self.parts.hostname
        port = self.parts.port or 443
        try:
            addresses = [host] if _is_ip(host) else [ip for ip, _ in Resolver(self.netns_name, read_nameservers(self.netns_name)).resolve(host).answers]
        except RamfwError:
            addresses = []
        if not addresses:
            raise OSError(f"cannot resolve {host}")
        ctx = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else ssl.create_default_context()
        last: Exception | None = None
        for ip in addresses:
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            with netns.entered(self.netns_name):
                sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect((ip, port))
            except OSError as exc:
                sock.close()
                last = exc
                continue
            conn = http.client.HTTPSConnection(host, port, timeout=self.timeout, context=ctx)
            conn.sock = ctx.wrap_socket(sock, server_hostname=host)
            return conn
        raise last or OSError(f"cannot connect to {host}")

    def fetch(self) -> str:
        """Fetch once: 'changed', 'unchanged', 'unreachable' or 'invalid'."""
        self.next_fetch = time.monotonic() + self.refresh
        meta = self._meta()
        headers = {"User-Agent": "ramfw", "Accept": "application/toml, application/json, text/plain"}
        if os.path.exists(self.cache_path):
            if meta.get("etag"):
                headers["If-None-Match"] = meta["etag"]
            if meta.get("last_modified"):
                headers["If-Modified-Since"] = meta["last_modified"]
        try:
            conn = self._connect()
            try:
                path = self.parts.path or "/"
                conn.request("GET", path + (f"?{self.parts.query}" if self.parts.query else ""), headers=headers)
                resp = conn.getresponse()
                body = resp.read(MAX_POLICY_BYTES + 1)  # more is refused whole by parse_policy, never cut
            finally:
                conn.close()
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            return self._count("unreachable", f"policy source {self.url} unreachable ({exc}); keeping the last good policy")
        if resp.status == 304:
            return self._count("unchanged")
        if resp.status != 200:
            return self._count("unreachable", f"policy source {self.url} answered HTTP {resp.status}; keeping the last good policy")
        try:
            text = body.decode("utf-8")
            fmt = policy_format(text, self.parts.path, resp.getheader("Content-Type") or "")
            parse_policy(text, self.url, fmt=fmt)
        except (UnicodeDecodeError, PolicyError) as exc:
            detail = "; ".join(exc.lines()) if isinstance(exc, PolicyError) else "not UTF-8 text"
            return self._count("invalid", f"policy from {self.url} refused, keeping the last good one: {detail}")
        _write_atomic(self.cache_path, text)
        _write_atomic(self.meta_path, json.dumps({
            "url": self.url, "etag": resp.getheader("ETag"), "last_modified": resp.getheader("Last-Modified"),
            "fetched_at": email.utils.formatdate(usegmt=True), "format": fmt,
        }))
        return self._count("changed")

    def _count(self, outcome: str, message: str = "") -> str:
        self.fetches[outcome] += 1
        if message:
            (log.error if outcome == "invalid" else log.warning)("%s", message)
        return outcome

    def load(self) -> Policy:
        """The last good copy, labelled with its URL."""
        try:
            with open(self.cache_path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError:
            raise RamfwError(
                f"no policy yet: {self.url} could not be fetched and there is no last good copy in {CACHE_DIR}"
            ) from None
        return parse_policy(text, self.url, fmt=self._meta().get("format", "toml"))

    def poll(self) -> bool:
        """Fetch when the refresh interval has passed; True when a new valid policy arrived."""
        return time.monotonic() >= self.next_fetch and self.fetch() == "changed"


def open_source(spec: str | None, netns_name: str | None, ca_file: str | None = None, refresh: float = 60.0):
    if is_url(spec):
        source = UrlSource(spec, netns_name, ca_file, refresh)
        source.fetch()  # a failure is logged; load() then falls back to the last good copy
        return source
    return FileSource(spec)


def redact_url(source: str) -> str:
    """A policy source fit for labels and logs: an https URL without user info, query or
    fragment (where tokens live); anything else unchanged."""
    if not is_url(source):
        return source
    parts = urllib.parse.urlsplit(source)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "…" if parts.query else "", ""))


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return True
    except OSError:
        return False


def _write_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, text, CACHE_FILE_MODE)
