"""Small helpers every layer may use and that touch neither the kernel nor the network: logging
setup and repeated-failure summaries, thread-safe counters, and the one subprocess helper
(`proc.run`: always a timeout, a one-line error naming the command). Imports only the standard
library and `ramfw.errors`.
"""
