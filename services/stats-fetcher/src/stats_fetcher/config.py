"""Settings of the stats-fetcher, read from the environment (docs/configuration.md's table,
which ``make config-docs`` generates from this class and the shared ``PortSettings``)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, HttpUrl, SecretStr

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


@lru_cache
def get_settings() -> Settings:
    return Settings()
