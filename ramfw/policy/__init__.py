"""The pure core's input side: the policy model and its validation and loading, host names and
patterns, and the registry catalog (data in ramfw/data). Pure: no kernel, no network, no
threads; imports only `ramfw.errors` and the standard library (tomllib).
"""
