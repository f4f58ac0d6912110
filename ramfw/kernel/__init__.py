"""Talking to the Linux kernel without policy: entering network namespaces, netlink (nfnetlink
queue and log, nf_tables reads), conntrack. Knows packets and sockets, not registries: imports
only `ramfw.errors`, `ramfw.common` and the standard library (plus pyroute2).
"""
