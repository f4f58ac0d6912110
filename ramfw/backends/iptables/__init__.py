"""The iptables backend: ipset sets (over netlink) and iptables chains written with
iptables-restore in one transaction per table, compared by their save text for drift. Imports
`ramfw.kernel`, `ramfw.plan`, the pure core.
"""
