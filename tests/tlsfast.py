"""A small asyncio TLS server and client for the SNI benchmark (scripts/bench/bench_sni.py).

    python tlsfast.py serve IP PORT CERT KEY
    python tlsfast.py load IP PORT NAME CAFILE CONNECTIONS

serve: answers every connection, once its handshake is done, with one line and closes.
load: CONNECTIONS connections one after the other; prints one JSON object with every
connect-to-first-byte latency (seconds) and the wall time.
"""

import asyncio
import json
import ssl
import sys
import time


async def serve(ip, port, cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    async def handle(reader, writer):
        try:
            writer.write(b"ok\n")
            await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, ip, port, ssl=ctx, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


async def load(ip, port, name, cafile, n):
    ctx = ssl.create_default_context(cafile=cafile)
    lat, errors = [], 0
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection(ip, port, ssl=ctx, server_hostname=name)
            await reader.readexactly(1)
            lat.append(time.perf_counter() - t)
            writer.close()
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            errors += 1
    print(json.dumps({"latencies": lat, "errors": errors, "wall": time.perf_counter() - start}))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        asyncio.run(serve(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]))
    else:
        asyncio.run(load(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6])))
