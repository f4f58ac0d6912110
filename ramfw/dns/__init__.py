"""Everything about DNS: the wire parser (checked against dnspython), the TCP stream reassembly,
the self-locking cache of learned addresses (clock injected), active resolution (dnspython) and
the snooper that credits trusted answers and hands their addresses to a callback before it
releases them. May import `ramfw.kernel`, the pure core and `ramfw.common`; never a backend
(the snooper does not know how addresses are enforced) and never `ramfw.daemon`.
"""
