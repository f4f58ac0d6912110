"""Read-side commands' logic: status, explain, check (probing from inside the namespace) and
learn (suggestions from audit events). They read what the daemon recorded (state files, events,
the kernel's sets) and never change enforcement. May import `ramfw.daemon`, `ramfw.backends`,
`ramfw.dns`, `ramfw.kernel` and the pure core; not `ramfw.cli`.
"""
