"""The worker's accept loop (``covid_stats_api.serving.server.accept``) on a real uvloop loop and
real sockets: a listen queue is emptied in one turn of the loop (uvloop's own server takes
one connection per turn), every connection reaches its protocol, and ``close()`` stops
accepting while the connections already accepted go on."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from typing import cast

import pytest
import uvloop

from covid_stats_api.serving.server.accept import ACCEPT_BATCH, AcceptServer

pytestmark = pytest.mark.unit  # `make test-fast`

QUEUED = 50  # fewer than ACCEPT_BATCH: one turn takes them all
assert QUEUED < ACCEPT_BATCH


class Echo(asyncio.Protocol):
    def __init__(self, made: list[Echo]) -> None:
        self.made = made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: no subclass of it
        self.made.append(self)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)
        self.echoed = True

    echoed = False


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = uvloop.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0), backlog=128)
    yield sock
    sock.close()


def connect(listener: socket.socket, n: int) -> list[socket.socket]:
    """``n`` clients whose connections wait in ``listener``'s queue (the kernel completes
    the handshake before anyone accepts)."""
    return [socket.create_connection(listener.getsockname(), timeout=5) for _ in range(n)]


def queue_empty(listener: socket.socket) -> bool:
    """Whether nothing is left to accept (an accepted straggler is closed)."""
    listener.setblocking(False)
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


def run_until(loop: asyncio.AbstractEventLoop, done: Callable[[], bool]) -> None:
    """Turn the loop until ``done()``, for at most 10 s."""
    deadline = time.monotonic() + 10
    while not done():
        assert time.monotonic() < deadline, "timed out"
        loop.run_until_complete(asyncio.sleep(0))


def test_the_whole_listen_queue_is_accepted_in_one_turn(
    loop: asyncio.AbstractEventLoop, listener: socket.socket
) -> None:
    clients = connect(listener, QUEUED)
    made: list[Echo] = []
    server = AcceptServer(loop, listener, lambda: Echo(made))
    server.start()
    # One step of a task: the loop polls once or twice. uvloop's own server (libuv >= 1.45)
    # accepts one connection per poll and would leave nearly all of them queued.
    loop.run_until_complete(asyncio.sleep(0))
    server.close()
    assert queue_empty(listener), "connections left in the listen queue after one turn"
    # Each connection reaches its own protocol and is served.
    run_until(loop, lambda: len(made) == QUEUED)
    for i, client in enumerate(clients):
        client.sendall(b"ping %d" % i)
    run_until(loop, lambda: all(protocol.echoed for protocol in made))
    answers = [client.recv(64) for client in clients]
    assert answers == [b"ping %d" % i for i in range(QUEUED)]
    loop.run_until_complete(server.wait_closed())
    for client in clients:
        client.close()


def test_close_stops_accepting_and_keeps_the_connections_accepted(
    loop: asyncio.AbstractEventLoop, listener: socket.socket
) -> None:
    made: list[Echo] = []
    server = AcceptServer(loop, listener, lambda: Echo(made))
    server.start()
    before = connect(listener, 3)
    run_until(loop, lambda: len(made) == 3)
    server.close()
    after = connect(listener, 1)
    for _ in range(5):  # turns of the loop: each polls, and would accept if it still listened
        loop.run_until_complete(asyncio.sleep(0))
    assert len(made) == 3, "a connection was accepted after close()"
    assert not queue_empty(listener), "the connection made after close() was taken"
    for client in before:  # still served
        client.sendall(b"still here")
    run_until(loop, lambda: all(protocol.echoed for protocol in made))
    assert [client.recv(64) for client in before] == [b"still here"] * 3
    for client in before + after:
        client.close()
