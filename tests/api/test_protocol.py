"""The server adapter's protocol in process, as uvicorn's own tests drive theirs: a fake
transport (the one fake here: it stands for the socket, and records what is written), the
real app with its real lifespan (Redis and PostgreSQL from devstack, a snapshot the real
fetcher published), requests fed to ``data_received``.

A hot document is answered by the protocol itself (the app is never called), with the bytes
the ASGI path sends; when the installed uvicorn lacks the hook the adapter relies on, the
start-up guard turns direct answers off with one log line and the gauge at 0, and the same
request is answered by the app with the same bytes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import structlog
from prometheus_client import REGISTRY
from uvicorn.config import Config
from uvicorn.lifespan.on import LifespanOn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from covid_stats_api.core.config import Settings
from covid_stats_api.main import create_app, create_asgi
from covid_stats_api.serving.asgi.drain import Drain
from covid_stats_api.serving.handoff import DIRECT_ANSWERS_KEY
from covid_stats_api.serving.server import uvicorn_adapter
from covid_stats_api.serving.server.uvicorn_adapter import (
    DirectAnsweringProtocol,
    DrainingServer,
    protocol_class,
)
from covid_stats_runtime.http import SERVER_HEADERS

DOCUMENT = "v1/us/current.json"
REQUEST = b"GET /" + DOCUMENT.encode() + b" HTTP/1.1\r\nHost: example.org\r\n\r\n"
GAUGE = "covid_stats_api_direct_answers_enabled"


class FakeTransport(asyncio.Transport):
    """A socket's transport as the protocol uses it: what is written is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Served:
    """The api's served app behind a recorder of the HTTP requests that reach it."""

    def __init__(self, settings: Settings) -> None:
        self.api = create_app(settings)
        self.app = create_asgi(settings, api=self.api)
        self.calls: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.calls.append(scope["path"])
        await self.app(scope, receive, send)


Scenario = Callable[[Served, Config, LifespanOn, ServerState], Awaitable[None]]


def run_app(settings: Settings, scenario: Scenario) -> Served:
    """Start the app's lifespan (as uvicorn's server does), wait until the worker holds the
    hot document in memory, run ``scenario``, stop the lifespan."""
    served = Served(settings)

    async def main() -> None:
        # uvicorn's access log off, as gunicorn's worker sets it (ACCESS_LOG off): the
        # protocol leaves every request to the app while uvicorn logs each one.
        config = Config(app=served, lifespan="on", headers=list(SERVER_HEADERS), log_config=None)
        config.load()
        lifespan = LifespanOn(config)
        await lifespan.startup()
        assert not lifespan.should_exit, "the app did not start"
        try:
            state = ServerState()
            state.default_headers = [(b"date", b"Sat, 05 Dec 2026 00:00:00 GMT")]
            state.default_headers += config.encoded_headers
            # A document enters the worker's memory when first read (from Redis), as in a
            # served worker: read it through uvicorn's own protocol until it is there.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while served.api.state.hot.get(DOCUMENT) is None:
                assert loop.time() < deadline, "the hot document never reached the worker"
                await answer(HttpToolsProtocol, config, lifespan.state, state)
            served.calls.clear()
            await scenario(served, config, lifespan, state)
        finally:
            await lifespan.shutdown()

    asyncio.run(main())
    return served


async def answer(
    protocol_cls: type[HttpToolsProtocol], config: Config, app_state: Any, state: ServerState
) -> bytes:
    """The bytes a protocol of ``protocol_cls`` writes for ``REQUEST`` on a new connection."""
    loop = asyncio.get_running_loop()
    protocol = protocol_cls(config=config, server_state=state, app_state=app_state, _loop=loop)
    transport = FakeTransport()
    protocol.connection_made(transport)
    try:
        protocol.data_received(REQUEST)
        deadline = loop.time() + 10
        while protocol.cycle is None or not protocol.cycle.response_complete:
            assert loop.time() < deadline, "no complete answer"
            await asyncio.sleep(0.005)
        return bytes(transport.written)
    finally:
        protocol.connection_lost(None)


@pytest.fixture
def settings(published_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    access = logging.getLogger("uvicorn.access")
    monkeypatch.setattr(access, "handlers", [])
    monkeypatch.setattr(access, "propagate", False)
    return Settings(
        redis_url=published_env["REDIS_URL"], database_url=published_env["DATABASE_URL"]
    )


def worker_server(app: Any, protocol: type[HttpToolsProtocol]) -> DrainingServer:
    """The server a worker runs, with ``protocol`` (its lifespan: set by the caller)."""
    config = Config(app=app, http=protocol, log_config=None)
    config.load()
    return DrainingServer(config, Drain(app), 1.0)


def _gauge() -> float | None:
    return REGISTRY.get_sample_value(GAUGE)


def test_a_hot_get_is_answered_by_the_protocol_without_the_app(settings: Settings) -> None:
    """The protocol answers the hot GET itself: the app sees no request, and the bytes are
    those the app sends for it (the same request on the ASGI path: uvicorn's protocol)."""
    answers: dict[str, bytes] = {}

    async def scenario(
        served: Served, config: Config, lifespan: LifespanOn, state: ServerState
    ) -> None:
        assert lifespan.state.get(DIRECT_ANSWERS_KEY) is not None, "the app offers none"
        cls = protocol_class(settings)
        assert issubclass(cls, DirectAnsweringProtocol)
        assert cls.direct_answers_off is None
        answers["direct"] = await answer(cls, config, lifespan.state, state)
        assert served.calls == [], "the app was called for a hot document"
        answers["asgi"] = await answer(HttpToolsProtocol, config, lifespan.state, state)
        assert served.calls == ["/" + DOCUMENT]

    run_app(settings, scenario)
    assert answers["direct"].startswith(b"HTTP/1.1 200 OK\r\n")
    assert answers["direct"] == answers["asgi"]


def test_without_the_hook_direct_answers_are_off_said_once_and_the_app_answers(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn's hook with other parameters (as an upgrade could change it): the guard sees
    it, the worker's protocol has no override, one log line says why, the gauge reads 0,
    and the request is answered by the app with the bytes a direct answer has."""
    answers: dict[str, bytes] = {}
    logs: list[Any] = []

    async def scenario(
        served: Served, config: Config, lifespan: LifespanOn, state: ServerState
    ) -> None:
        answers["direct"] = await answer(protocol_class(settings), config, lifespan.state, state)
        assert served.calls == []

        original = HttpToolsProtocol._start_asgi_task

        def changed(self: HttpToolsProtocol, cycle: Any, app: Any, context: Any = None) -> None:
            original(self, cycle, app)

        monkeypatch.setattr(HttpToolsProtocol, "_start_asgi_task", changed)
        cls = protocol_class(settings)
        assert not issubclass(cls, DirectAnsweringProtocol)
        assert cls.direct_answers_off is not None
        assert "_start_asgi_task" in cls.direct_answers_off

        server = worker_server(served, cls)
        server.lifespan = lifespan
        with structlog.testing.capture_logs() as captured:
            server.guard_direct_answers()
        logs.extend(captured)
        answers["asgi"] = await answer(cls, config, lifespan.state, state)
        assert served.calls == ["/" + DOCUMENT]

    run_app(settings, scenario)
    assert [(e["event"], e["log_level"]) for e in logs] == [("direct_answers_off", "warning")]
    assert "_start_asgi_task" in logs[0]["reason"]
    assert _gauge() == 0
    assert answers["asgi"] == answers["direct"]


def test_the_guard_names_a_hook_that_is_gone_or_no_longer_called(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each way uvicorn can lose the hook has its reason (checked without serving: uvicorn
    without the method cannot serve at all)."""
    assert uvicorn_adapter.direct_answer_hooks_missing() is None
    with monkeypatch.context() as patch:
        patch.delattr(HttpToolsProtocol, "_start_asgi_task")
        assert uvicorn_adapter.direct_answer_hooks_missing() == (
            "HttpToolsProtocol._start_asgi_task is gone"
        )
    with monkeypatch.context() as patch:

        def on_response_complete(self: HttpToolsProtocol) -> None:
            pass

        patch.setattr(HttpToolsProtocol, "on_response_complete", on_response_complete)
        assert uvicorn_adapter.direct_answer_hooks_missing() == (
            "HttpToolsProtocol.on_response_complete no longer calls _start_asgi_task"
        )
    assert inspect.signature(HttpToolsProtocol._start_asgi_task).parameters.keys() == {
        "self",
        "cycle",
        "app",
    }


def test_a_guarded_worker_with_the_hook_says_direct_answers_are_on(settings: Settings) -> None:
    """The guard with the installed uvicorn: no log line, the gauge at 1."""
    logs: list[Any] = []

    async def scenario(
        served: Served, config: Config, lifespan: LifespanOn, state: ServerState
    ) -> None:
        server = worker_server(served, protocol_class(settings))
        server.lifespan = lifespan
        with structlog.testing.capture_logs() as captured:
            server.guard_direct_answers()
        logs.extend(captured)

    run_app(settings, scenario)
    assert logs == []
    assert _gauge() == 1
