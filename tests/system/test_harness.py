"""The test harness's own shortcuts (tests/conftest.py), checked against the installed
libraries: if one stops holding, the suite gets slower or wrong without any other test saying
why."""

from __future__ import annotations

import asyncio
import ssl

import httpx
import httpx._transports.default as httpx_transports
import pytest

pytestmark = pytest.mark.unit  # unit: `make test-fast`


def test_plain_http_clients_share_one_default_ssl_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """conftest shares httpx's default SSL context: a Client (so each httpx.get()) builds none
    after the first, which still verifies certificates; any other verify gets its own."""
    httpx.Client().close()  # the shared context exists from here on
    built: list[object] = []
    real = ssl.create_default_context

    def counting(*args: object, **kwargs: object) -> ssl.SSLContext:
        built.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl, "create_default_context", counting)
    for _ in range(3):
        httpx.Client().close()
        asyncio.run(httpx.AsyncClient().aclose())
    assert built == [], "each httpx Client built an SSL context of its own again"

    create = httpx_transports.create_ssl_context  # type: ignore[attr-defined]
    shared = create()
    assert create(verify=True) is shared
    assert shared.verify_mode == ssl.CERT_REQUIRED
    assert shared.check_hostname
    unverified = create(verify=False)
    assert unverified is not shared
    assert unverified.verify_mode == ssl.CERT_NONE
    own = ssl.create_default_context()
    assert create(verify=own) is own
    assert shared.verify_mode == ssl.CERT_REQUIRED  # untouched by the others
