"""Talking to the Linux kernel without policy: entering network namespaces (netns), the one
netlink core every netlink client uses (netlink: framing, request/ack/dump with timeouts), the
NFQUEUE and NFLOG subscriptions (nfqueue, nflog), nf_tables reads and element writes (nftnl),
the one packet-header parser (packet), conntrack (ctnetlink over the same core). Knows packets
and sockets, not registries: imports only `ramfw.errors`, `ramfw.common` and the standard library.
"""
