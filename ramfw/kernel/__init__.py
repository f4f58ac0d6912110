"""Talking to the Linux kernel without policy: entering network namespaces, netlink (nfnetlink
queue and log, nf_tables reads), conntrack. Knows packets and sockets, not registries: imports
only `ramfw.errors`, `ramfw.common` and the standard library.

One netlink core (netlink: framing, request/ack/dump, every receive with a timeout) serves every
netlink client: NFQUEUE and NFLOG (nfqueue, nflog over subscription), nf_tables reads and element
writes (nftnl), conntrack, and ipset in backends/iptables. One packet-header parser (packet)
serves the DNS snooper and audit events.
"""
