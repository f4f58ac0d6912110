"""The iptables backend: ipset sets (over netlink) and iptables chains written with
iptables-restore (or python-iptables for iptables-legacy) in one transaction per table,
compared by their save text for drift. One job per module: render (desired state to chains and
jumps, pure), savetext (parse and compare save text, pure), flavour (legacy or nft, reading
tables), write (the write plan, pure, and iptables-restore), iptc_writer, sets (ipset staging),
ipset (netlink), backend (the IptablesBackend class). Imports `ramfw.kernel`, `ramfw.plan`, the
pure core and `ramfw.common`.
"""
