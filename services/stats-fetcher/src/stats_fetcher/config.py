"""Settings of the stats-fetcher, read from the environment (docs/configuration.md's table,
which ``make config-docs`` generates from this class and the shared ``PortSettings``)."""

from __future__ import annotations

import base64
from functools import lru_cache
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, HttpUrl, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from covid_stats_runtime.settings import PortSettings

# The COVID Tracking Project's API stopped answering in 2021; its final files stay public in
# the archived repository COVID19Tracking/covid-public-api, at the same `v1/...` paths, served
# by GitHub's raw file host (HEAD: the default branch).
DEFAULT_UPSTREAM_BASE_URL = (
    "https://raw.githubusercontent.com/COVID19Tracking/covid-public-api/HEAD/"
)
# The largest final file (v1/states/daily.json) is tens of MB.
DEFAULT_UPSTREAM_MAX_BYTES = 128 * 1024 * 1024


class Settings(PortSettings):
    # A refused value stays out of the error (WEBHOOK_SECRET, a URL's password).
    model_config = SettingsConfigDict(**PortSettings.model_config, hide_input_in_errors=True)

    upstream_base_url: HttpUrl = Field(
        default=HttpUrl(DEFAULT_UPSTREAM_BASE_URL),
        description="upstream API: the CTP's final files in the archived GitHub repository"
        " COVID19Tracking/covid-public-api (`make run`: the replay upstream unless set)",
    )
    upstream_max_bytes: int = Field(
        default=DEFAULT_UPSTREAM_MAX_BYTES,
        ge=1,
        description="largest upstream body read, in bytes (128 MiB; the final"
        " `v1/states/daily.json` is tens of MB): a larger one fails the fetch (`too_large`)"
        " and the last good data stays",
    )
    upstream_format: Literal["json", "csv"] = Field(
        default="json", description="fetch the `.json` or the `.csv` form of each resource"
    )
    fetch_interval_seconds: float = Field(
        default=300.0,
        gt=0,
        description="seconds between refreshes (the upstream's own refresh period)",
    )
    fetch_jitter_ratio: float = Field(
        default=0.1, ge=0, le=0.5, description="each interval is drawn within +/- this fraction"
    )
    upstream_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="timeout of each upstream request, Redis call and PostgreSQL connect",
    )
    upstream_retries: int = Field(
        default=3, ge=0, description="retries of a transient upstream failure"
    )
    upstream_retry_initial_seconds: float = Field(
        default=0.5, gt=0, description="first backoff; doubles each retry, with jitter"
    )
    upstream_retry_max_seconds: float = Field(default=10.0, gt=0, description="longest backoff")
    min_jurisdictions_ratio: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="reject a payload with fewer jurisdictions or records than this share of"
        " the last good one",
    )
    max_future_days: int = Field(
        default=1, ge=0, description="reject a payload dated more than this many days ahead"
    )

    snapshot_grace_seconds: int = Field(
        default=300, ge=1, description="how long a replaced snapshot stays readable"
    )
    redis_check_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description="how often the leader checks Redis has a snapshot of PostgreSQL's data"
        " (and rebuilds it)",
    )
    leader_lease_seconds: float = Field(
        default=15.0, ge=1, description="leader lease length; renewed every third of it"
    )

    db_pool_max_size: int = Field(default=4, ge=1, description="asyncpg pool size")

    fetcher_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - a container's server listens on all interfaces
        description="address of the fetcher's HTTP port (`make run`: `127.0.0.1`)",
    )
    fetcher_port: int = Field(
        default=8081,
        ge=1,
        le=65535,
        description="the fetcher's HTTP port (`make run`: a free port)",
    )
    refresh_token: SecretStr | None = Field(
        default=None,
        description="bearer token of `POST /refresh`; unset turns it off (`make run`: a random"
        " one in `.local/refresh-token`)",
    )
    shutdown_grace_seconds: float = Field(
        default=20.0, ge=0, description="on SIGTERM, how long a refresh in flight may finish"
    )

    webhook_urls: str = Field(
        default="",
        description="comma-separated http(s) URLs POSTed a signed event after each publish"
        " that changed data (docs/pipeline.md, Webhooks); empty: none",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="the webhooks' signing secret in the Standard Webhooks format (`whsec_` +"
        " base64 of 24 to 64 random bytes); needed with `WEBHOOK_URLS`",
    )
    webhook_timeout_seconds: float = Field(
        default=5.0, gt=0, le=60, description="timeout of one webhook delivery attempt"
    )
    webhook_max_attempts: int = Field(
        default=10, ge=1, description="attempts of one delivery before it is given up"
    )
    webhook_retry_initial_seconds: float = Field(
        default=2.0,
        gt=0,
        description="wait before a delivery's second attempt; doubles each attempt, with jitter",
    )
    webhook_retry_max_seconds: float = Field(
        default=600.0, gt=0, description="longest wait between a delivery's attempts"
    )

    purge_urls: str = Field(
        default="",
        description="comma-separated http URLs of edge caches sent `PURGE` with `xkey-purge:`"
        " the surrogate keys a publish changed, to every address each host resolves to"
        " ([Edge cache](edge-cache.md#purge)); empty: none",
    )
    purge_timeout_seconds: float = Field(
        default=2.0, gt=0, le=60, description="timeout of one `PURGE` request"
    )
    purge_retry_initial_seconds: float = Field(
        default=0.5,
        gt=0,
        description="wait before a failed purge is tried again; doubles each failure, with"
        " jitter (its keys wait, and go with the next publish's)",
    )
    purge_retry_max_seconds: float = Field(
        default=30.0, gt=0, description="longest wait between a failing purge's attempts"
    )
    purge_repeat_seconds: str = Field(
        default="0.5,3",
        description="comma-separated delays (seconds after the first purge) at which a"
        " publish's keys are purged again: the api's workers take up to"
        " `HOT_CACHE_CHECK_SECONDS` and a refill to serve a new snapshot, and an edge that"
        " refetched in between holds the old bytes until a later purge; empty: once",
    )

    @property
    def purge_url_list(self) -> tuple[str, ...]:
        """``PURGE_URLS`` split, each once."""
        return tuple(dict.fromkeys(u.strip() for u in self.purge_urls.split(",") if u.strip()))

    @property
    def purge_repeat_delays(self) -> tuple[float, ...]:
        """``PURGE_REPEAT_SECONDS`` as seconds, ascending, each once."""
        return tuple(sorted({float(d) for d in self.purge_repeat_seconds.split(",") if d.strip()}))

    @field_validator("purge_repeat_seconds")
    @classmethod
    def _check_purge_repeats(cls, value: str) -> str:
        for delay in filter(None, (d.strip() for d in value.split(","))):
            try:
                seconds = float(delay)
            except ValueError:
                raise ValueError(f"not a number of seconds: {delay!r}") from None
            if not 0 < seconds <= 3600:
                raise ValueError(f"a repeat delay must be over 0 and at most 3600: {seconds}")
        return value

    @field_validator("purge_urls")
    @classmethod
    def _check_purge_urls(cls, value: str) -> str:
        for url in value.split(","):
            parts = urlsplit(url.strip())
            if url.strip() and (parts.scheme != "http" or not parts.hostname):
                # Each address of the host is sent its PURGE: no TLS name to check there.
                raise ValueError(f"not an http URL: {url.strip()!r}")
        return value

    @property
    def webhook_url_list(self) -> tuple[str, ...]:
        """``WEBHOOK_URLS`` split, each once."""
        return tuple(dict.fromkeys(u.strip() for u in self.webhook_urls.split(",") if u.strip()))

    @field_validator("webhook_urls")
    @classmethod
    def _check_webhook_urls(cls, value: str) -> str:
        for url in value.split(","):
            parts = urlsplit(url.strip())
            if url.strip() and (parts.scheme not in ("http", "https") or not parts.hostname):
                raise ValueError(f"not an http(s) URL: {url.strip()!r}")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        text = value.get_secret_value()
        try:
            key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
        except ValueError:
            key = b""
        if not text.startswith("whsec_") or not 24 <= len(key) <= 64:
            # The value stays out of the message (it is a secret).
            raise ValueError("expected `whsec_` + base64 of 24 to 64 bytes")
        return value

    @model_validator(mode="after")
    def _webhooks_need_a_secret(self) -> Self:
        if self.webhook_url_list and self.webhook_secret is None:
            raise ValueError("WEBHOOK_URLS needs WEBHOOK_SECRET (the events are signed)")
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
