"""Secrets and TLS: Redis AUTH, PostgreSQL passwords, ``rediss://`` and ``sslmode=verify-full``
end to end, ``make run`` with passwords on, and no secret in any log, metric or error body.

What is real here: the servers' authentication (Redis ``requirepass``, PostgreSQL SCRAM-SHA-256
for every connection), and on the clients' side everything TLS (redis-py's and asyncpg's
handshakes, certificate and host name verification against a CA made by ``trustme``, and
PostgreSQL's ``SSLRequest`` negotiation), in the fetcher and the api as they run. What is a
stand-in: where TLS ends. The local servers' binaries are built without TLS, so a
TLS-terminating proxy (``devstack.tlsproxy``) stands in front of each, as a provider's TLS
endpoint would, and forwards plaintext to it on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import ssl
import stat
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis
import trustme

from devstack.procs import free_port, wait_until
from devstack.servers import LocalPostgres, LocalRedis
from devstack.tlsproxy import TlsProxy
from support import (
    RECENT_DAYS,
    ApiUrl,
    Fetcher,
    Process,
    Upstream,
    clean_env,
    python_module,
    run_fetcher,
    scratch_dir,
    spawn,
)

# Their refreshes go through TLS proxies to stores of their own: the archive's last days (the
# `recent` upstream) are enough to show every connection encrypted and no secret written.
pytestmark = pytest.mark.recent

# Characters a URL must escape, in every password: the URLs must carry them intact.
SPECIAL = "@:/%?# "
REDIS_PASSWORD = "redis-Pw-7f3a9c" + SPECIAL
POSTGRES_PASSWORD = "pg-Pw-51b2e8d0" + SPECIAL
TOKEN = "refresh-Tk-0c9d1e2f7a"
WRONG_REDIS_PASSWORD = "wrong-redis-Pw-88e1" + SPECIAL
WRONG_POSTGRES_PASSWORD = "wrong-pg-Pw-42d7" + SPECIAL
WRONG_TOKEN = "wrong-Tk-77a0b3"
SECRETS = [
    REDIS_PASSWORD,
    POSTGRES_PASSWORD,
    TOKEN,
    WRONG_REDIS_PASSWORD,
    WRONG_POSTGRES_PASSWORD,
    WRONG_TOKEN,
]


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def leaks(text: str, secrets: list[str]) -> list[str]:
    """The secrets found in ``text``, as they are or as a URL carries them; the distinctive
    part of each (before the special characters) counts too."""
    found = []
    for secret in secrets:
        forms = {secret, _q(secret), secret.rstrip(SPECIAL)}
        if any(form in text for form in forms):
            found.append(secret)
    return found


@dataclass
class SecureStores:
    """Password-protected Redis and PostgreSQL, each behind a TLS endpoint."""

    redis: LocalRedis
    postgres: LocalPostgres
    redis_tls: TlsProxy
    postgres_tls: TlsProxy
    ca_file: Path
    state_dir: Path

    def redis_url(self, password: str | None = REDIS_PASSWORD) -> str:
        auth = f":{_q(password)}@" if password is not None else ""
        return (
            f"rediss://{auth}localhost:{self.redis_tls.port}/0"
            f"?ssl_ca_certs={self.ca_file}&ssl_cert_reqs=required"
        )

    def database_url(self, password: str | None = POSTGRES_PASSWORD, ca: Path | None = None) -> str:
        auth = f":{_q(password)}" if password is not None else ""
        return (
            f"postgresql://postgres{auth}@localhost:{self.postgres_tls.port}/"
            f"covid_stats?sslmode=verify-full&sslrootcert={ca or self.ca_file}"
        )

    def server_logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.state_dir / "logs").glob("*"))


@pytest.fixture
def secure() -> Iterator[SecureStores]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    with scratch_dir("secrets") as d:
        state = Path(d)
        ca_file = state / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        with (
            LocalRedis(state, password=REDIS_PASSWORD) as local_redis,
            LocalPostgres(state, password=POSTGRES_PASSWORD) as local_pg,
            TlsProxy(local_redis.port, context, "redis") as redis_tls,
            TlsProxy(local_pg.port, context, "postgres") as postgres_tls,
        ):
            yield SecureStores(local_redis, local_pg, redis_tls, postgres_tls, ca_file, state)


def _env(secure: SecureStores, upstream: Upstream, **overrides: str) -> dict[str, str]:
    settings = {
        "REDIS_URL": secure.redis_url(),
        "DATABASE_URL": secure.database_url(),
        "UPSTREAM_BASE_URL": upstream.url,
        "REFRESH_TOKEN": TOKEN,
        "UPSTREAM_RETRIES": "1",
        "UPSTREAM_RETRY_INITIAL_SECONDS": "0.05",
        "UPSTREAM_TIMEOUT_SECONDS": "2",
    }
    return clean_env(**{**settings, **overrides})


def _refreshes(fetcher: Fetcher) -> float:
    return fetcher.metric("covid_stats_fetcher_refresh_duration_seconds_count")


async def _connect_fails(url: str) -> BaseException:
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except Exception as exc:
        return exc
    await conn.close()
    raise AssertionError("connected")


@pytest.mark.parametrize("passwords", ["in-the-urls", "apart"])
def test_passwords_and_tls_work_end_to_end(
    passwords: str,
    secure: SecureStores,
    upstream: Upstream,
    fetcher_factory: Callable[..., Fetcher],
    api_factory: Callable[[dict[str, str]], ApiUrl],
) -> None:
    """Both services through TLS (verify-full, a private CA) to stores with passwords of
    reserved characters, written percent-encoded into the URLs, or given apart as
    REDIS_PASSWORD / DATABASE_PASSWORD (as the chart passes them) for the services to encode."""
    env = _env(secure, upstream)
    if passwords == "apart":
        env.update(
            REDIS_URL=secure.redis_url(None),
            REDIS_PASSWORD=REDIS_PASSWORD,
            DATABASE_URL=secure.database_url(None),
            DATABASE_PASSWORD=POSTGRES_PASSWORD,
        )
    migrated = run_fetcher("migrate", env)
    assert migrated.returncode == 0, migrated.stderr
    fetcher = fetcher_factory(env)
    wait_until(lambda: _refreshes(fetcher) >= 1, 60, what="a refresh through TLS")
    assert fetcher.ready()["redis"] == "ok"
    assert fetcher.ready()["postgres"] == "ok"
    api = api_factory(env)

    # Redis through rediss://: the snapshot the fetcher published is served.
    us = json.loads(upstream.get("/v1/us/current.json").content)
    assert httpx.get(f"{api}/covid-stats").json() == {"source": "cache", "data": us}
    # PostgreSQL through sslmode=verify-full: a query goes to the database.
    query = httpx.get(f"{api}/v1/states/ca/daily.json?lastdays=2")
    assert query.status_code == 200
    assert len(query.json()) == 2
    ready = httpx.get(f"{api}/readyz").json()
    ready.pop("memory")  # per worker: whether the one answering holds documents yet
    assert ready == {"status": "ready", "redis": "ok", "postgres": "ok"}
    before = _refreshes(fetcher)
    refresh = httpx.post(f"{fetcher.url}/refresh", headers={"Authorization": f"Bearer {TOKEN}"})
    assert refresh.status_code == 202
    wait_until(lambda: _refreshes(fetcher) > before, 60, what="the requested refresh")
    # Every one of those connections was TLS: the endpoints saw them, and no plaintext one.
    assert secure.redis_tls.sessions >= 3  # fetcher + two api workers, at least
    assert secure.postgres_tls.sessions >= 3
    assert secure.postgres_tls.refused == 0

    # The clients verify: another CA's certificate, or no TLS at all, is refused.
    other_ca = secure.state_dir / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    error = asyncio.run(_connect_fails(secure.database_url(ca=other_ca)))
    assert isinstance(error, ssl.SSLCertVerificationError)
    plain = secure.database_url().replace("sslmode=verify-full", "sslmode=disable")
    asyncio.run(_connect_fails(plain))
    assert secure.postgres_tls.refused == 1
    bad_redis = redis.Redis.from_url(secure.redis_url().replace(str(secure.ca_file), str(other_ca)))
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        bad_redis.ping()
    # The servers' passwords are real: without one, or with a wrong one, no way in.
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=secure.redis.port).ping()
    wrong = secure.database_url(WRONG_POSTGRES_PASSWORD)
    assert isinstance(asyncio.run(_connect_fails(wrong)), asyncpg.InvalidPasswordError)


def _logged(log: Path, text: str) -> bool:
    return text in log.read_text(errors="replace")


def _api_log(log_dir: Path, base: str) -> Path:
    """The log of the api ``api_factory`` started at ``base``."""
    return log_dir / f"api-{base.rsplit(':', 1)[1]}.log"


def _collect(response: httpx.Response, into: list[str]) -> httpx.Response:
    into.append(f"{response.status_code} {dict(response.headers)} {response.text}")
    return response


def test_no_secret_reaches_logs_metrics_or_error_bodies(
    secure: SecureStores,
    upstream: Upstream,
    fetcher_factory: Callable[..., Fetcher],
    api_factory: Callable[[dict[str, str]], ApiUrl],
    tmp_path: Path,
) -> None:
    """Passwords and tokens, right and wrong, are given to the fetcher and the api at DEBUG;
    then everything fails that can (wrong passwords, bad tokens, stores down) and every log
    line, metric and answer is searched for them."""
    answers: list[str] = []
    debug = {"LOG_LEVEL": "DEBUG"}
    assert run_fetcher("migrate", _env(secure, upstream)).returncode == 0

    # 1. Wrong passwords everywhere.
    wrong_env = _env(
        secure,
        upstream,
        REDIS_URL=secure.redis_url(WRONG_REDIS_PASSWORD),
        DATABASE_URL=secure.database_url(WRONG_POSTGRES_PASSWORD),
        **debug,
    )
    locked_out = fetcher_factory(wrong_env, name="wrong-passwords")
    locked_api = api_factory(wrong_env)
    assert _collect(httpx.get(f"{locked_out.url}/readyz"), answers).status_code == 503
    for headers in ({}, {"Authorization": f"Bearer {WRONG_TOKEN}"}, {"Authorization": TOKEN}):
        response = _collect(httpx.post(f"{locked_out.url}/refresh", headers=headers), answers)
        assert response.status_code == 401
    # The right token, but Redis refuses the fetcher: 503, saying why without secrets.
    right = {"Authorization": f"Bearer {TOKEN}"}
    assert (
        _collect(httpx.post(f"{locked_out.url}/refresh", headers=right), answers).status_code == 503
    )
    for path in ("/covid-stats", "/v1/us/current.json", "/v1/states/ca/daily.json?lastdays=2"):
        assert _collect(httpx.get(f"{locked_api}{path}"), answers).status_code == 503
    assert _collect(httpx.get(f"{locked_api}/readyz"), answers).status_code == 503
    refusals = [
        (locked_out.process.log, "AuthenticationError"),  # Redis refused the fetcher
        (_api_log(tmp_path, locked_api), "password authentication failed"),  # PostgreSQL
    ]
    for log, evidence in refusals:
        wait_until(partial(_logged, log, evidence), 30, what=f"{evidence!r} in {log.name}")

    # 2. The right passwords, then both stores go down under running services.
    env = _env(secure, upstream, **debug)
    fetcher = fetcher_factory(env)
    wait_until(lambda: _refreshes(fetcher) >= 1, 60, what="a refresh")
    api = api_factory(env)
    assert _collect(httpx.get(f"{api}/v1/us/current.json"), answers).status_code == 200
    secure.redis.stop()
    secure.postgres.stop()
    assert (
        _collect(httpx.get(f"{api}/v1/states/ca/daily.json?lastdays=3"), answers).status_code == 503
    )
    assert _collect(httpx.get(f"{fetcher.url}/readyz"), answers).status_code == 503
    assert _collect(httpx.post(f"{fetcher.url}/refresh", headers=right), answers).status_code == 503
    wait_until(
        lambda: "lease_unavailable" in fetcher.process.output(), 30, what="the fetcher to log"
    )
    for metrics in (
        f"{locked_out.url}/metrics",
        f"{fetcher.url}/metrics",
        locked_api.metrics,
        api.metrics,
    ):
        _collect(httpx.get(metrics), answers)

    logs = {p.name: p.read_text(errors="replace") for p in tmp_path.glob("*.log")}
    assert len(logs) == 4  # two fetchers, two apis (gunicorn and its workers)
    logs["servers"] = secure.server_logs()
    logs["answers"] = "\n".join(answers)
    found = {name: leaks(text, SECRETS) for name, text in logs.items()}
    assert found == {name: [] for name in logs}
    # Not vacuous: the logs do tell what failed.
    assert "password authentication failed" in logs["servers"]
    assert any("AuthenticationError" in text for text in logs.values())


# -- make run ----------------------------------------------------------------------------------


def test_make_run_puts_passwords_on_its_stores_and_prints_none(tmp_path: Path) -> None:
    with scratch_dir("run-secrets") as d:
        state = Path(d)
        port = free_port()
        process: Process = spawn(
            "devstack",
            python_module("devstack", "run", "--state-dir", str(state)),
            # The replay upstream serves the archive's last days, as the `recent` tests' does.
            clean_env(API_PORT=str(port), LOG_LEVEL="DEBUG", REPLAY_LAST_DAYS=str(RECENT_DAYS)),
            tmp_path,
        )
        passwords: list[str] = []
        token = ""
        try:
            base = f"http://127.0.0.1:{port}"
            process.wait_http(f"{base}/covid-stats", timeout=120)
            wait_until(lambda: "Press Ctrl-C to stop" in process.output(), 30, what="the banner")
            wait_until(
                lambda: httpx.get(f"{base}/covid-stats").json()["source"] == "cache",
                60,
                what="the api to serve the fetcher's snapshot",
            )
            stores_env = state / "stores.env"
            assert stat.S_IMODE(stores_env.stat().st_mode) == 0o600
            assert stat.S_IMODE((state / "refresh-token").stat().st_mode) == 0o600
            urls = dict(line.split("=", 1) for line in stores_env.read_text().splitlines())
            redis_url, database_url = urls["REDIS_URL"], urls["DATABASE_URL"]
            passwords = [
                urllib.parse.unquote(urllib.parse.urlsplit(url).password or "")
                for url in (redis_url, database_url)
            ]
            token = (state / "refresh-token").read_text()
            assert all(len(p) >= 24 for p in passwords)

            # The stores refuse whoever lacks the password; the URLs let one in.
            assert redis.Redis.from_url(redis_url).ping()
            plain_redis = urllib.parse.urlsplit(redis_url)._replace(
                netloc=urllib.parse.urlsplit(redis_url).netloc.rpartition("@")[2]
            )
            with pytest.raises(redis.AuthenticationError):
                redis.Redis.from_url(plain_redis.geturl()).ping()
            no_password = re.sub(r"postgres:[^@]*@", "postgres@", database_url)
            error = asyncio.run(_connect_fails(no_password))
            assert isinstance(error, asyncpg.InvalidPasswordError)

            output = process.output()
            assert "postgresql://postgres:***@127.0.0.1" in output  # shown, password hidden
            assert leaks(output, [*passwords, token]) == []
        finally:
            process.proc.send_signal(signal.SIGINT)
            assert process.proc.wait(timeout=60) == 0
        assert leaks(process.output(), [*passwords, token]) == []  # shutdown lines too
