"""TLS server-name binding's pure core: the ClientHello parser (clienthello), the per-connection
assembler that holds a connection's first payload until its hello is whole (assembler), and the
binding rule that decides whether a server name may go to an address (binding). No kernel, no
network, no threads, clock injected; imports only `ramfw.errors`, `ramfw.common` and the
standard library. The daemon's `sni` thread feeds it packets; tests/unit covers it without root.
"""
