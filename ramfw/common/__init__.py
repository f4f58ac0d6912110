"""Small helpers every layer may use and that touch neither the kernel nor the network: logging
setup and repeated-failure summaries, thread-safe counters, and the one subprocess helper
(`proc.run`: always a timeout, a one-line error naming the command), and the one atomic file
writer (`files`: temporary file, fsync, rename, explicit mode). Imports only the standard
library and `ramfw.errors`.
"""
