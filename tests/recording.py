"""A real HTTP endpoint on loopback for the tests of what the fetcher sends out (webhooks,
purges): it records each request, answers with planned statuses, and can hold requests."""

from __future__ import annotations

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class RecordingServer(Generic[T]):
    """Records what each ``method`` request carried (``record``), answers with the statuses
    of ``plan`` in turn (then ``default_status``), and while ``hold`` is clear keeps each
    request waiting (after recording it) until it is set again (``holding`` is set once one
    waits)."""

    method = "POST"
    default_status = 200

    def __init__(self, address: str = "127.0.0.1", port: int = 0) -> None:
        self.received: list[T] = []
        self.plan: list[int] = []
        self.hold = threading.Event()
        self.hold.set()
        self.holding = threading.Event()
        self._lock = threading.Lock()
        recording = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                item = recording.record(self)
                with recording._lock:
                    recording.received.append(item)
                    status = recording.plan.pop(0) if recording.plan else recording.default_status
                if not recording.hold.is_set():
                    recording.holding.set()
                    recording.hold.wait(120)
                with contextlib.suppress(OSError):  # the sender may be gone (killed)
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        setattr(Handler, f"do_{self.method}", Handler.answer)
        self.server = ThreadingHTTPServer((address, port), Handler)
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def record(self, request: BaseHTTPRequestHandler) -> T:
        """What one request carried (read its body here, if any)."""
        raise NotImplementedError

    def requests(self) -> list[T]:
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()
