"""Fetching one upstream resource: conditional, retried, and bounded in time.

Every request has the client's timeout. Transient failures (a timeout, a dropped or truncated
connection, 429 and 5xx answers) are retried with exponential backoff and jitter; anything
else fails at once. The validators of the last stored response (``ETag``, ``Last-Modified``)
go out as ``If-None-Match`` / ``If-Modified-Since``, so an unchanged upstream answers 304.

A body is read as it streams in and abandoned (``too_large``) as soon as it exceeds
``max_bytes`` (``UPSTREAM_MAX_BYTES``): a failure like any other, the last good data stays.
The content type must name the format (``json``, ``csv``) or be ``text/plain``: a static file
host (raw.githubusercontent.com, the default upstream) serves every file as
``text/plain; charset=utf-8``, and the parser and the payload checks judge the bytes anyway.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from covid_stats_contract.records import UpstreamState
from covid_stats_contract.resources import Format, Resource

_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
_CONTENT_TYPES: dict[Format, tuple[str, ...]] = {
    "json": ("json", "text/plain"),
    "csv": ("csv", "text/plain"),
}


class FetchFailed(Exception):
    """The resource could not be fetched; ``reason`` is a short label (for metrics)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _TooLarge(Exception):
    pass


class _Transient(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.status_code = response.status_code


@dataclass(frozen=True, slots=True)
class Fetched:
    not_modified: bool
    body: bytes
    etag: str | None
    last_modified: str | None
    attempts: int
    seconds: float


class UpstreamClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        fmt: Format,
        retries: int,
        retry_initial_seconds: float,
        retry_max_seconds: float,
        max_bytes: int,
    ) -> None:
        self.http = http
        self.max_bytes = max_bytes
        self.fmt = fmt
        self.retries = retries
        self.retry_initial_seconds = retry_initial_seconds
        self.retry_max_seconds = retry_max_seconds

    async def fetch(self, resource: Resource, last: UpstreamState | None) -> Fetched:
        headers = {}
        if last is not None and last.etag:
            headers["If-None-Match"] = last.etag
        if last is not None and last.last_modified:
            headers["If-Modified-Since"] = last.last_modified
        path = resource.upstream_path(self.fmt)
        started = time.perf_counter()
        attempts = 0
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.retries + 1),
                wait=wait_exponential_jitter(
                    multiplier=self.retry_initial_seconds, max=self.retry_max_seconds
                ),
                retry=retry_if_exception_type((httpx.TransportError, _Transient)),
                reraise=True,
            ):
                with attempt:
                    attempts += 1
                    response, body = await self._get(path, headers)
                    if response.status_code in _TRANSIENT_STATUS:
                        raise _Transient(response)
        except _TooLarge as exc:
            raise FetchFailed(
                "too_large", f"{path}: the body exceeds UPSTREAM_MAX_BYTES={self.max_bytes}"
            ) from exc
        except httpx.TimeoutException as exc:
            raise FetchFailed("timeout", f"{path}: {exc!r} after {attempts} attempts") from exc
        except httpx.RemoteProtocolError as exc:
            raise FetchFailed("truncated", f"{path}: {exc!r} after {attempts} attempts") from exc
        except httpx.TransportError as exc:
            raise FetchFailed("connection", f"{path}: {exc!r} after {attempts} attempts") from exc
        except _Transient as exc:
            raise FetchFailed(
                f"http_{exc.status_code}",
                f"{path}: HTTP {exc.status_code} after {attempts} attempts",
            ) from exc
        seconds = time.perf_counter() - started
        etag = response.headers.get("etag")
        last_modified = response.headers.get("last-modified")
        if response.status_code == httpx.codes.NOT_MODIFIED:
            return Fetched(True, b"", etag, last_modified, attempts, seconds)
        if response.status_code != httpx.codes.OK:
            raise FetchFailed(
                f"http_{response.status_code}", f"{path}: HTTP {response.status_code}"
            )
        content_type = response.headers.get("content-type", "")
        if not any(kind in content_type for kind in _CONTENT_TYPES[self.fmt]):
            raise FetchFailed("content_type", f"{path}: unexpected content type {content_type!r}")
        return Fetched(False, body, etag, last_modified, attempts, seconds)

    async def _get(self, path: str, headers: dict[str, str]) -> tuple[httpx.Response, bytes]:
        """GET ``path``: the response and its body, read as it streams in and abandoned as
        soon as it exceeds ``max_bytes`` (:class:`_TooLarge`)."""
        async with self.http.stream("GET", path, headers=headers) as response:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_bytes:
                    raise _TooLarge
                chunks.append(chunk)
        return response, b"".join(chunks)
