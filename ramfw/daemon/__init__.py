"""The running controller and what it keeps on disk: the Enforcer (one namespace's policy, cache
and backend, with staged and committed applies), the controller loop and its threads, the
snoop-mode choice, the heartbeat (controller.json), the refresh scheduler, audit events, metrics, state files, policy sources (file and https URL),
sd_notify, the systemd unit installer and teardown. The top of the data flow below the CLI: may
import `ramfw.dns`, `ramfw.backends`, `ramfw.kernel` and the pure core; not `ramfw.cli` or
`ramfw.report`.
"""
