"""Audit mode and `ramfw learn` with the real client (issue 13): a team rolls a policy out
without breaking anyone.

api.cdn-reg.test redirects its blob downloads to blobs.cdn-reg.test, a host no catalog entry
and no policy entry names (test_docker_pull.test_redirect_registry_needs_the_blob_host shows
that an enforcing policy naming only the API host fails the pull at the first blob). In audit
mode the same policy lets the pull succeed, records the blob host as would_refuse, and `ramfw
learn` names it; the policy plus learn's suggestion, enforcing, pulls while another registry
stays refused.
"""

from __future__ import annotations

import json

import pytest

import dockerbed as db
from dockerbed import BLOCKED_IP, CDN_API, CDN_BLOBS, CDN_BLOBS_IP, PORT
from test_docker_pull import assert_refused_pull
from wait import poll

pytestmark = pytest.mark.e2e


def test_audit_pull_learn_then_enforce(ramfw, dockerd, e2e_net):
    blob_lines = lambda: [l for l in e2e_net.cdn.log_lines() if l.startswith("blobs GET ")]  # noqa: E731
    policy = f'allow = ["{CDN_API}:{PORT}"]\n'

    run = ramfw('mode = "audit"\n' + policy)
    assert run.cli("status", "--netns", run.ns).stdout.startswith("AUDIT"), "status must say AUDIT first"
    served = len(blob_lines())
    pull = dockerd.pull(e2e_net.cdn_ref)
    assert pull.downloaded, f"audit mode must not break the pull:\n{pull}\n{run.log_tail()}"
    assert any(l.endswith(" 200") for l in blob_lines()[served:]), "the blobs did not come from the redirect host"

    evs = []

    def blob_host_events():
        evs[:] = run.events()
        return [e for e in evs if e.get("dst") == CDN_BLOBS_IP]

    hits = poll(blob_host_events, 5, interval=0.2)
    assert hits, f"no event for the blob host {CDN_BLOBS_IP}: {evs}\n{run.log_tail()}"
    assert all(e["action"] == "would_refuse" and e["hostname"] == CDN_BLOBS and e["dport"] == PORT for e in hits), hits
    assert not [e for e in evs if e.get("action") == "refused"], evs

    p = run.cli("learn", "--netns", run.ns, "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["suggested_entries"] == [CDN_BLOBS], report
    assert [h["host"] for g in report["groups"] for h in g["hosts"]] == [CDN_BLOBS], report
    human = run.cli("learn", "--netns", run.ns).stdout
    assert CDN_BLOBS in human, human
    run.assert_alive()
    run.stop()

    # the same policy plus learn's suggestion, enforcing
    allow_line = next(l for l in report["fragment"].splitlines() if l.startswith("allow = "))
    run = ramfw(allow_line + "\n")
    assert not run.cli("status", "--netns", run.ns).stdout.startswith("AUDIT")
    served = len(blob_lines())
    pull = dockerd.pull(e2e_net.cdn_ref)
    assert pull.downloaded, f"the policy plus learn's suggestion should pull:\n{pull}\n{run.log_tail()}"
    assert any(l.endswith(" 200") for l in blob_lines()[served:]), "the blobs did not come from the redirect host"
    bad = dockerd.pull(e2e_net.blocked.ref())
    assert_refused_pull(bad, BLOCKED_IP)
    refused = poll(lambda: [e for e in run.events() if e.get("dst") == BLOCKED_IP and e.get("action") == "refused"], 5,
                   interval=0.2)
    assert refused, f"the refused pull left no refused event: {run.events()}"
    db.log(f"{run.backend}: audit pull ok, learn suggested {report['suggested_entries']}, enforcing pull {pull.elapsed:.2f}s, "
           f"other registry refused in {bad.elapsed:.2f}s")
    run.assert_alive()
