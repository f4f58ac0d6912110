"""Small helpers every layer may use and that touch neither the kernel nor the network: logging
setup and repeated-failure summaries, thread-safe counters. Imports only the standard library.
"""
