"""The api's Service as kube-proxy plays it, for the lifecycle suite: one TCP front on this
machine that forwards each NEW connection to the next of its endpoints, round robin, and
leaves every established connection on the backend it was given (removing an endpoint
closes nothing). The endpoints are what the test says they are: it adds a pod once its
readiness probe passes and removes it before stopping it, as the endpoints controller does
(there is no API server here). A TCP relay, not an HTTP proxy: a backend's Connection: close
or FIN reaches the client as it would through kube-proxy."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter

from devstack.procs import free_port


class Front:
    """``with Front() as front:``; ``front.url``; ``add(port)`` / ``remove(port)``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections: Counter[int] = Counter()  # by backend port
        self.refused = 0  # connections that found no endpoint or whose backend refused
        self._endpoints: list[int] = []
        self._next = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="front", daemon=True)

    def __enter__(self) -> Front:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the front did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def endpoints(self) -> list[int]:
        with self._lock:
            return list(self._endpoints)

    def add(self, port: int) -> None:
        with self._lock:
            assert port not in self._endpoints, port
            self._endpoints.append(port)

    def remove(self, port: int) -> None:
        with self._lock:
            self._endpoints.remove(port)

    def _pick(self) -> int | None:
        with self._lock:
            if not self._endpoints:
                return None
            port = self._endpoints[self._next % len(self._endpoints)]
            self._next += 1
            return port

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port, backlog=1024)
        )
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = self._pick()
        try:
            if port is None:
                raise ConnectionRefusedError("no endpoint")
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            self.refused += 1
            writer.close()
            return
        self.connections[port] += 1
        await asyncio.gather(
            _pipe(reader, upstream_writer), _pipe(upstream_reader, writer), return_exceptions=True
        )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF or an error, then close the other side: a connection ends as a whole."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()
