"""The drain layer: while a worker stops, every answer asks its client to close the
connection (``serving.server.uvicorn_adapter.DrainingServer`` turns it on)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from covid_stats_api.serving.handoff import CONNECTION_CLOSE


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
