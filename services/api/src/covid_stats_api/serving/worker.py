"""The gunicorn worker class: uvicorn's, with a drain that drops no request on shutdown and
an accept loop that takes the whole listen queue each turn (``accept``).

uvicorn's own shutdown (SIGTERM from gunicorn's master on stop or ``HUP`` reload, or a worker
recycled after ``GUNICORN_MAX_REQUESTS``) closes every idle keep-alive connection at once. A
client that sent its next request on such a connection just then gets no answer: the classic
keep-alive race, measured at 5 to 10 failed requests per SIGTERM with 16 busy clients.

Here a worker told to stop first drains, until no connection is left open or for at most one
keep-alive period (``GUNICORN_KEEPALIVE_SECONDS``) or half the graceful timeout
(``GUNICORN_GRACEFUL_TIMEOUT_SECONDS``), whichever is shorter: gunicorn's master kills the
worker once the graceful timeout is over, and the other half is for requests still in flight:

- it goes on accepting connections and answering requests, so a connection that arrived
  before the signal (even one still in the listen queue) is served;
- every answer carries ``Connection: close`` (those of requests already in flight when the
  signal came too), so each client closes its connection after that answer and reconnects
  (to another worker, or to another pod once this one has left the endpoints);
- a connection that stays idle is closed by its own keep-alive timer, as at any other time:
  after one keep-alive period no connection from before the signal is left open (when the
  drain ends first, uvicorn's shutdown closes the idle ones; behind a Service the pod has
  left the endpoints by then, so nothing new is sent on them).

Then uvicorn's shutdown runs as usual: it stops accepting, and requests in flight finish
within gunicorn's ``graceful_timeout``.
"""

from __future__ import annotations

import asyncio
import socket
import sys

from gunicorn.arbiter import Arbiter
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.server import Server

from covid_stats_api.serving.accept import AcceptServer
from covid_stats_api.serving.http_limits import (
    CONNECTION_CLOSE,
    DIRECT_ANSWERS_KEY,
    UvicornWorker,
)


class Drain:
    """ASGI layer: while ``active``, every response asks the client to close the connection
    (uvicorn then closes it once the response is sent)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.active = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.active or scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                # A new list: the fast path's header lists are shared between responses.
                message = {**message, "headers": [*message.get("headers", ()), CONNECTION_CLOSE]}
            await send(message)

        await self.app(scope, receive, closing)


class DrainingServer(Server):
    def __init__(self, config: Config, drain: Drain, seconds: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.drain_seconds = seconds

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's start-up, serving gunicorn's sockets through :class:`AcceptServer`
        (a whole listen queue per turn of the loop, not uvloop's one connection)."""
        if sockets is None:
            await super().startup(sockets)
            return
        await super().startup(sockets=[])  # the app's lifespan; no server of uvicorn's
        if not self.started:
            return
        loop = asyncio.get_running_loop()
        config, state, app_state = self.config, self.server_state, self.lifespan.state

        def create_protocol() -> asyncio.Protocol:
            protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=state, app_state=app_state, _loop=loop
            )
            return protocol

        for sock in sockets:
            server = AcceptServer(loop, sock, create_protocol, config.ssl)
            server.start()
            self.servers.append(server)  # type: ignore[arg-type]  # close(), wait_closed()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.drain.active = True
        direct = self.lifespan.state.get(DIRECT_ANSWERS_KEY)
        if direct is not None:  # every answer goes through Drain now
            direct.enabled = False
        # Requests already in the app when the drain began bypass ``Drain``: their answers
        # must close the connection too (uvicorn adds ``Connection: close`` to an answer not
        # yet started and closes after it), else a client sends its next request on a
        # connection that the shutdown then finds idle and closes: a request lost.
        for connection in list(self.server_state.connections):
            cycle = getattr(connection, "cycle", None)
            if cycle is not None and not cycle.response_complete:
                cycle.keep_alive = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_seconds
        ticks = 0
        while True:
            # At least one pass: connections already in the listen queue get accepted.
            await asyncio.sleep(0.05)
            if not self.server_state.connections or loop.time() >= deadline or self.force_exit:
                break
            ticks += 1
            if ticks % 20 == 0:  # keep gunicorn's heartbeat going while draining
                await self.on_tick(0)
        await super().shutdown(sockets)


class DrainingUvicornWorker(UvicornWorker):
    """The request-limited uvicorn worker (``http_limits``), draining before it stops."""

    async def _serve(self) -> None:
        drain = Drain(self.wsgi)
        self.config.app = drain
        seconds = min(float(self.cfg.keepalive), self.cfg.graceful_timeout / 2)
        server = DrainingServer(self.config, drain, seconds)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
