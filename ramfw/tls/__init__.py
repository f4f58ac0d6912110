"""TLS server-name binding: the ClientHello parser, the decision, the per-connection assembler.

Everything here except `inspector` is pure (no I/O, no root) and unit-tested in tests/unit.
"""
