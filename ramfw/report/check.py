"""`ramfw check`: verify the restrictions by probing from inside the namespace.

The "verify the restrictions" step of Docker's RAM, automated: every allowed concrete host must
be reachable (a TCP connection, plus a TLS handshake where the port says TLS), every blocked host
and every catalog registry the policy does not allow must be refused by the policy. A name that
does not resolve is reported, not counted as a mismatch.
"""

from __future__ import annotations

import concurrent.futures
import errno
import logging
import socket
import ssl
import time
from dataclasses import asdict, dataclass

import typer

from ramfw.kernel import netns
from ramfw.policy.catalog import ROLE_API, default_catalog
from ramfw.policy.model import Policy
from ramfw.dns.resolver import Resolver, read_nameservers

log = logging.getLogger(__name__)

TLS_PORTS = (443, 5000, 8443)
CONNECT_TIMEOUT = 3.0


@dataclass
class Probe:
    host: str
    port: int
    expect: str  # "reachable" or "refused"
    why: str  # which policy entry or catalog registry asks for this expectation
    address: str = ""
    result: str = ""  # reachable | refused by policy | refused by the server | no answer | does not resolve | <errno>
    tls: str = ""
    verdict: str = ""  # ok | MISMATCH | unresolved
    elapsed_ms: float = 0.0


def plan_probes(policy: Policy) -> list[Probe]:
    probes: list[Probe] = []
    seen: set[str] = set()
    for pattern, source in policy.allow_set.patterns:
        name = pattern.domain
        if pattern.is_wildcard or name in seen or not policy.is_allowed_name(name):
            continue
        seen.add(name)
        probes.append(Probe(name, policy.ports.get(name, 443), "reachable", source.describe()))
    for pattern, source in policy.block_set.patterns:
        if not pattern.is_wildcard and pattern.domain not in seen:
            seen.add(pattern.domain)
            probes.append(Probe(pattern.domain, policy.ports.get(pattern.domain, 443), "refused", source.describe()))
    if policy.mode == "allowlist":
        # every catalog registry the policy does not allow: its API host must be refused
        for reg in default_catalog().registries:
            exp = default_catalog().expand(reg.id, reg.select[0], False) if reg.select else None
            if exp is None:
                continue
            api = next((str(p) for p, role in exp.patterns if role == ROLE_API and not p.is_wildcard), None)
            if api and api not in seen and not policy.is_allowed_name(api):
                seen.add(api)
                probes.append(Probe(api, 443, "refused", f"catalog registry {reg.name} is not allowed"))
    return probes


def _connect(netns_name, probe: Probe, ip: str, allowed_ips: set[str]) -> None:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with netns.entered(netns_name):
        sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    started = time.monotonic()
    try:
        sock.connect((ip, probe.port))
        probe.result = "reachable"
        if probe.port in TLS_PORTS:
            probe.tls = _tls(sock, probe.host)
    except socket.timeout:
        probe.result = "no answer"
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED:
            # ramfw refuses TCP with a reset, like a closed port does: the set tells them apart
            probe.result = "refused by the server" if ip in allowed_ips else "refused by policy"
        else:
            probe.result = errno.errorcode.get(exc.errno, str(exc))
    finally:
        probe.elapsed_ms = round((time.monotonic() - started) * 1000, 1)
        sock.close()


def _tls(sock: socket.socket, host: str) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # reachability, not trust: the engine has its own CAs
    try:
        with ctx.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=True) as tls:
            return f"tls ok ({tls.version()})"
    except (ssl.SSLError, OSError) as exc:
        return f"no tls ({exc.__class__.__name__})"


def run_check(policy: Policy, netns_name: str | None, allowed_ips: set[str], log_mode: bool) -> list[Probe]:
    probes = plan_probes(policy)
    servers = list(policy.dns.servers) or read_nameservers(netns_name)
    resolutions = {r.name: r for r in Resolver(netns_name, servers).resolve_all(sorted({p.host for p in probes}))}
    rows: list[Probe] = []
    for probe in probes:
        res = resolutions[probe.host]
        if not res.answers:
            probe.result = "does not resolve" if not res.error else f"lookup failed: {res.error}"
            probe.verdict = "unresolved"
            rows.append(probe)
            continue
        for ip, _ttl in res.answers:
            rows.append(Probe(probe.host, probe.port, probe.expect, probe.why, address=ip))
    pending = [r for r in rows if r.address]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, max(1, len(pending)))) as pool:
        list(pool.map(lambda r: _connect(netns_name, r, r.address, allowed_ips), pending))
    for r in pending:
        if r.expect == "reachable":
            ok = r.result in ("reachable", "refused by the server")
        else:
            # in log mode refused packets are dropped (so TCP retries), which looks like silence
            ok = r.result == "refused by policy" or (log_mode and r.result == "no answer" and r.address not in allowed_ips)
        r.verdict = "ok" if ok else "MISMATCH"
    return rows


def summary(rows: list[Probe]) -> dict:
    return {
        "ok": sum(r.verdict == "ok" for r in rows),
        "mismatches": sum(r.verdict == "MISMATCH" for r in rows),
        "unresolved": sum(r.verdict == "unresolved" for r in rows),
    }


def to_json(rows: list[Probe]) -> dict:
    return {"summary": summary(rows), "probes": [asdict(r) for r in rows]}


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width // 2 - 1] + "…" + text[-(width - width // 2):]


def print_human(rows: list[Probe]) -> None:
    host_w = min(40, max([len(r.host) for r in rows] + [4]))
    results = [r.result + (f", {r.tls}" if r.tls else "") for r in rows]
    res_w = max([len(x) for x in results] + [6])
    typer.echo(f"{'HOST':<{host_w}}  PORT   EXPECT     {'ADDRESS':<23}  {'RESULT':<{res_w}}  VERDICT")
    for r, result in zip(rows, results):
        typer.echo(f"{_fit(r.host, host_w):<{host_w}}  {r.port:<5}  {r.expect:<9}  {r.address or '-':<23}  {result:<{res_w}}  {r.verdict}")
    s = summary(rows)
    typer.echo(f"check: {s['ok']} ok, {s['mismatches']} mismatches, {s['unresolved']} names do not resolve")
    for r in rows:
        if r.verdict == "MISMATCH":
            typer.echo(f"  mismatch: {r.host} ({r.address}:{r.port}) expected {r.expect}, got {r.result}; because {r.why}")


def check_namespace(netns_name: str | None, policy_path: str | None) -> list[Probe]:
    """`ramfw check`: probe the enforced policy (or --policy) against what the kernel's sets hold."""
    from ramfw.backends.choose import read_installed
    from ramfw.daemon import state as state_file

    netns.require(netns_name)
    pol = state_file.enforced_policy(state_file.read_state(netns_name), policy_path)
    kernel = read_installed(netns_name)
    allowed = {ip for name, elems in kernel.sets.items() if name.startswith("allow") for ip in elems}
    allowed |= {ip for c in pol.allow_cidrs for ip in ([c.split("/")[0]] if c.endswith(("/32", "/128")) else [])}
    rows = run_check(pol, netns_name, allowed, log_mode=kernel.meta.get("snoop") == "log")
    if not kernel.installed:
        log.warning("ramfw enforces nothing in this namespace: every refused expectation will be a mismatch")
    elif kernel.meta.get("audit") == "1":
        log.warning("ramfw runs in AUDIT mode here: nothing is refused, so every refused expectation will be a mismatch")
    return rows
