"""A TLS front for the embedded broker, run as its own process by the TLS tests.

The embedded broker (Tansu 0.6.0) cannot serve TLS itself: its ``--cert`` and ``--key``
options exclude each other, so a listener never gets both. This process accepts TLS
connections with a certificate the test made and forwards the bytes to the broker's
plaintext listener; the broker advertises this address, so every connection of every
client (bootstrap, leaders, coordinators) goes through TLS.

    python -m tests.tls_proxy LISTEN_PORT BROKER_PORT CERTFILE KEYFILE
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def main(listen: int, broker: int, certfile: str, keyfile: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)

    async def serve(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            broker_r, broker_w = await asyncio.open_connection("127.0.0.1", broker)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, broker_w), _pipe(broker_r, client_w))

    server = await asyncio.start_server(serve, "127.0.0.1", listen, ssl=context)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]))
