"""The nftables backend: render.py turns the desired state into one nft script for table
`inet ramfw`; backend.py applies it in one libnftables transaction (libnft.py: ctypes, one
context per namespace), reads the kernel's ruleset back over netlink for drift checks, and owns
queue_fallback.py, the xtables NFQUEUE chain it installs, checks and removes where the kernel's
nftables lacks `queue`. Imports `ramfw.kernel`, `ramfw.plan`, the pure core and `ramfw.common`.
"""
