"""The nftables backend: renders the desired state as one nft script for table `inet ramfw`,
applies it in one libnftables transaction (ctypes, one context per namespace), reads the
kernel's ruleset back over netlink for drift checks, and installs an xtables NFQUEUE rule where
the kernel's nftables lacks `queue`. Imports `ramfw.kernel`, `ramfw.plan`, the pure core.
"""
