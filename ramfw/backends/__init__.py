"""Turning a planned desired state into kernel rules: the Backend interface (base), the choice
between the backends (choose), what both share (meta: the facts line kept with the rules;
links: route facts; owned: the elements ramfw added), and one package per backend: `nft/` (nftables through
libnftables, with its own xtables queue fallback) and `iptables/` (iptables + ipset). Each owns
its table/chains and tears down only those. May import `ramfw.kernel`, `ramfw.plan`, the pure
core and `ramfw.common`; never `ramfw.dns` (backends do not parse DNS) nor `ramfw.daemon`.
"""
