"""Small helpers every layer may use and that touch neither the kernel nor the network: logging
setup and repeated-failure summaries, thread-safe counters, the one atomic file writer (files).
Imports only the standard library.
"""
