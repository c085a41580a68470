"""The server adapter: everything of uvicorn's and uvicorn-worker's this service builds on,
in one module (and the limited protocol it shares with the fetcher,
``covid_stats_runtime.protocol``). Every write to uvicorn's per-connection state and every
use of a private name of theirs is here or there, listed in ``UVICORN_INTERNALS`` (a test
checks each against the installed versions); the app's ASGI layers (``serving.asgi``) know
nothing of uvicorn.

- the protocol (``LimitedHttpToolsProtocol``, ``covid_stats_runtime.protocol``'s): uvicorn's
  httptools protocol with limits on every connection (below);
- direct answers (``DirectAnsweringProtocol``): a hot document's answer, found by the app
  (``serving.asgi.direct``), written by the protocol itself, its request cycle completed as
  uvicorn's ``send`` would; off, with one log line and
  ``covid_stats_api_direct_answers_enabled`` 0, when the installed uvicorn lacks a hook
  (``direct_answer_hooks_missing``);
- the server and the gunicorn worker class (``DrainingServer``, ``DrainingUvicornWorker``):
  an accept loop that empties the listen queue (``serving.server.accept``) and a drain on
  shutdown (below).

Limits on every connection
--------------------------

The protocol is ``covid_stats_runtime.protocol``'s (the fetcher's port serves through it
too): uvicorn's httptools protocol with a bounded head (``HTTP_MAX_REQUEST_HEAD_BYTES``:
414/431), a request deadline (``HTTP_REQUEST_TIMEOUT_SECONDS``: 408) and an idle timer on new
connections (``HTTP_NEW_CONNECTION_TIMEOUT_SECONDS``), its refusals counted in
``covid_stats_api_invalid_requests_total{status}`` and logged sampled. What it relies on of
uvicorn's is listed there and included in ``UVICORN_INTERNALS`` below.

Drain on shutdown
-----------------

The gunicorn worker class: uvicorn's, with a drain that drops no request on shutdown and
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
import inspect
import socket
import sys
from time import perf_counter
from typing import Any, ClassVar

import structlog
import uvicorn_worker
from gunicorn.arbiter import Arbiter
from uvicorn.config import Config
from uvicorn.lifespan.on import LifespanOn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import Server, ServerState

from covid_stats_api.core.config import Settings, get_settings
from covid_stats_api.serving.asgi.drain import Drain
from covid_stats_api.serving.handoff import DIRECT_ANSWERS_KEY, REFUSALS_KEY, DirectAnswerSource
from covid_stats_api.serving.server.accept import AcceptServer
from covid_stats_runtime import protocol as limits
from covid_stats_runtime.http import SERVER_HEADERS

log = structlog.get_logger("covid_stats_api.serving.server.uvicorn_adapter")


# -- what this module relies on, of uvicorn's and uvicorn-worker's internals -------------------
#
# Every attribute, method and keyword of theirs this module reads, writes, calls or
# overrides, by the class that has it: the one list (tests/api/test_uvicorn_compat.py checks
# each against the installed versions, and that this module uses no private name, ``_x``,
# of theirs that is not here), with those of the protocol it shares with the fetcher
# (``covid_stats_runtime.protocol.UVICORN_INTERNALS``, checked against that module's source).
# uvicorn's protocol and cycle keep their state in plain attributes; none of this is public API.
_ADAPTER_INTERNALS: dict[type, tuple[str, ...]] = {
    HttpToolsProtocol: (
        # set by __init__ / connection_made, read here
        "app",
        "app_state",
        "server_state",
        "loop",
        "transport",
        "flow",
        "access_log",
        "scope",  # the request being parsed (a new one per request head begun)
        "cycle",  # the last request whose head was complete
        "url",
        "headers",
        "timeout_keep_alive_task",  # written: the idle timer of a new connection
        # methods overridden
        "connection_made",
        "connection_lost",
        "data_received",
        "on_headers_complete",
        "send_400_response",
        "_start_asgi_task",  # the hook of direct answers
        # methods called
        "timeout_keep_alive_handler",
        "on_response_complete",
        "_unset_keepalive_if_required",
    ),
    RequestResponseCycle: (
        "scope",
        "keep_alive",  # read; written to close after the response
        "more_body",  # read; written: a direct answer ends the request's parsing
        "response_started",  # written by a direct answer
        "response_complete",  # read; written by a direct answer
        "waiting_for_100_continue",  # written by a direct answer
        "message_event",  # set by a direct answer
    ),
    FlowControl: ("read_paused", "write_paused"),
    ServerState: ("connections", "default_headers"),
    LifespanOn: ("state",),  # the app's lifespan state: where it offers direct answers
    Config: ("app", "http_protocol_class", "ssl"),
    Server: (
        "config",
        "server_state",
        "lifespan",
        "servers",
        "started",
        "force_exit",
        "startup",
        "shutdown",
        "serve",
        "on_tick",
    ),
    uvicorn_worker.UvicornWorker: (
        "CONFIG_KWARGS",
        "config",
        "wsgi",
        "cfg",
        "sockets",
        "_serve",  # replaced by DrainingUvicornWorker._serve (UVICORN_WORKER_SERVE below)
        "_install_sigquit_handler",
    ),
}
UVICORN_INTERNALS: dict[type, tuple[str, ...]] = {
    cls: tuple(dict.fromkeys((*limits.UVICORN_INTERNALS.get(cls, ()), *names)))
    for cls, names in _ADAPTER_INTERNALS.items()
}
# The parameters of the methods this module overrides or calls with arguments, as it
# assumes them (``_loop``: the protocol's keyword for its event loop, passed by the server).
UVICORN_SIGNATURES: dict[str, tuple[type, str, tuple[str, ...]]] = {
    "protocol": (
        HttpToolsProtocol,
        "__init__",
        ("self", "config", "server_state", "app_state", "_loop"),
    ),
    "hook": (HttpToolsProtocol, "_start_asgi_task", ("self", "cycle", "app")),
    "refusal": (HttpToolsProtocol, "send_400_response", ("self", "msg")),
    "startup": (Server, "startup", ("self", "sockets")),
    "shutdown": (Server, "shutdown", ("self", "sockets")),
}
# The protocol's methods that start a request's ASGI task through the hook: when uvicorn
# stops calling it there, direct answers would stop silently.
HOOK_CALLERS = ("on_headers_complete", "on_response_complete")
# uvicorn-worker's ``UvicornWorker._serve``, as DrainingUvicornWorker._serve copies it (its
# body, statement for statement, with the drain added): the compatibility test compares it
# with the installed one's, so a change there is seen.
UVICORN_WORKER_SERVE = """
self.config.app = self.wsgi
server = Server(config=self.config)
self._install_sigquit_handler()
await server.serve(sockets=self.sockets)
if not server.started:
    sys.exit(Arbiter.WORKER_BOOT_ERROR)
"""


def direct_answer_hooks_missing() -> str | None:
    """Why this uvicorn cannot write direct answers (a hook gone, renamed, no longer called,
    or with other parameters), or None when it can. Checked once per worker class."""
    _, name, expected = UVICORN_SIGNATURES["hook"]
    hook = getattr(HttpToolsProtocol, name, None)
    if not callable(hook):
        return f"HttpToolsProtocol.{name} is gone"
    found = tuple(inspect.signature(hook).parameters)
    if found != expected:
        return f"HttpToolsProtocol.{name} takes {found}, not {expected}"
    for caller in HOOK_CALLERS:
        code = getattr(getattr(HttpToolsProtocol, caller, None), "__code__", None)
        if code is None or name not in code.co_names:
            return f"HttpToolsProtocol.{caller} no longer calls {name}"
    cycle_init = RequestResponseCycle.__init__.__code__.co_names
    for attribute in UVICORN_INTERNALS[RequestResponseCycle]:
        if attribute not in cycle_init:
            return f"RequestResponseCycle has no {attribute}"
    return None


class LimitedHttpToolsProtocol(limits.LimitedHttpToolsProtocol):
    """The limited protocol both services share (``covid_stats_runtime.protocol``), as the
    api's workers run it when they cannot write direct answers."""

    # Why this protocol writes no direct answers (``protocol_class``), or None.
    direct_answers_off: ClassVar[str | None] = "not a DirectAnsweringProtocol"

    def count_refusal(self, status: int) -> None:
        """In ``covid_stats_api_invalid_requests_total``, through the counter the app offers
        in its lifespan state (this module imports no module defining metrics)."""
        count = self.app_state.get(REFUSALS_KEY)
        if count is not None:
            count(status)


class DirectAnsweringProtocol(LimitedHttpToolsProtocol):
    """The limited protocol writing the app's direct answers (``serving.asgi.direct``):
    every write to a request cycle's state outside uvicorn is here."""

    direct_answers_off: ClassVar[str | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # What the app offers to answer here: read once per connection.
        self._direct: DirectAnswerSource | None = self.app_state.get(DIRECT_ANSWERS_KEY)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        """A request whose head is complete: answered here when the app has a direct
        answer for it, else run by the app as uvicorn does."""
        direct = self._direct
        if (
            direct is None
            or app is not self.app  # uvicorn's 503 (limit_concurrency)
            or cycle is not self.cycle  # pipelined: uvicorn runs it after the one before
            or self.flow.write_paused
            or self.access_log  # uvicorn's own access log, when configured
        ):
            super()._start_asgi_task(cycle, app)
            return
        started = perf_counter()
        keep_alive = cycle.keep_alive
        answer = direct.find(cycle.scope, self.server_state.default_headers, keep_alive)
        if answer is None:
            super()._start_asgi_task(cycle, app)
            return
        # As uvicorn's cycle ends a request whose answer is complete (its ``send``).
        cycle.more_body = False  # no body: parsing ends with this head
        cycle.response_started = cycle.response_complete = True
        cycle.waiting_for_100_continue = False
        transport = self.transport
        if answer.body:
            transport.writelines((answer.head, answer.body))
        else:
            transport.write(answer.head)
        cycle.message_event.set()
        if not keep_alive:
            transport.close()
        direct.answered(answer, perf_counter() - started)
        self.on_response_complete()


def protocol_class(settings: Settings) -> type[LimitedHttpToolsProtocol]:
    """The protocol with ``settings``' bounds, writing direct answers unless this uvicorn
    cannot (``direct_answer_hooks_missing``: its reason is the class's
    ``direct_answers_off``)."""
    missing = direct_answer_hooks_missing()
    cls = limits.limited_protocol(
        settings.http_max_request_head_bytes,
        settings.http_request_timeout_seconds,
        settings.http_new_connection_timeout_seconds,
        base=LimitedHttpToolsProtocol if missing else DirectAnsweringProtocol,
        direct_answers_off=missing,
    )
    assert issubclass(cls, LimitedHttpToolsProtocol)  # a subclass of ``base``
    return cls


class UvicornWorker(uvicorn_worker.UvicornWorker):  # type: ignore[misc]  # untyped package
    """gunicorn's uvicorn worker (uvloop, httptools) serving through the limited protocol,
    every answer with ``covid_stats_runtime.http.SERVER_HEADERS`` and without uvicorn's
    ``server`` banner."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.CONFIG_KWARGS = {
            "loop": "auto",
            "http": protocol_class(get_settings()),
            "headers": list(SERVER_HEADERS),
            "server_header": False,
        }
        super().__init__(*args, **kwargs)


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
        self.guard_direct_answers()
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

    def guard_direct_answers(self) -> None:
        """Once per worker: when this uvicorn cannot write direct answers, one log line
        says why, and the app's offer is turned down (the requests take the ASGI path, and
        ``covid_stats_api_direct_answers_enabled`` reads 0)."""
        off = getattr(self.config.http_protocol_class, "direct_answers_off", "not our protocol")
        if off is not None:
            log.warning("direct_answers_off", reason=off)
        direct: DirectAnswerSource | None = self.lifespan.state.get(DIRECT_ANSWERS_KEY)
        if direct is not None:
            direct.served(off is None)

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
    """The request-limited uvicorn worker (``UvicornWorker``), draining before it stops."""

    async def _serve(self) -> None:
        drain = Drain(self.wsgi)
        self.config.app = drain
        seconds = min(float(self.cfg.keepalive), self.cfg.graceful_timeout / 2)
        server = DrainingServer(self.config, drain, seconds)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
