"""Settings of the stats-fetcher, read from the environment (see the README's table)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from pydantic import Field, HttpUrl, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from covid_stats_runtime.urls import apply_passwords


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    upstream_base_url: HttpUrl = HttpUrl("https://api.covidtracking.com")
    upstream_format: Literal["json", "csv"] = "json"
    fetch_interval_seconds: float = Field(default=300.0, gt=0)
    fetch_jitter_ratio: float = Field(default=0.1, ge=0, le=0.5)
    upstream_timeout_seconds: float = Field(default=10.0, gt=0)
    upstream_retries: int = Field(default=3, ge=0)
    upstream_retry_initial_seconds: float = Field(default=0.5, gt=0)
    upstream_retry_max_seconds: float = Field(default=10.0, gt=0)
    min_jurisdictions_ratio: float = Field(default=0.9, gt=0, le=1)
    max_future_days: int = Field(default=1, ge=0)

    # repr=False: a URL may carry a password; it stays out of any printed Settings.
    redis_url: str = Field(default="redis://localhost:6379/0", repr=False)
    # Put into REDIS_URL / DATABASE_URL percent-encoded: a password of any characters.
    redis_password: SecretStr | None = None
    redis_key_prefix: str = "covid-stats"
    snapshot_grace_seconds: int = Field(default=300, ge=1)
    redis_check_interval_seconds: float = Field(default=5.0, gt=0)
    leader_lease_seconds: float = Field(default=15.0, ge=1)

    database_url: str = Field(
        default="postgresql://covid_stats@localhost:5432/covid_stats", repr=False
    )
    database_password: SecretStr | None = None
    db_pool_max_size: int = Field(default=4, ge=1)

    fetcher_host: str = "0.0.0.0"  # noqa: S104 - a container's server listens on all interfaces
    fetcher_port: int = Field(default=8081, ge=1, le=65535)
    refresh_token: SecretStr | None = None
    shutdown_grace_seconds: float = Field(default=20.0, ge=0)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="before")
    @classmethod
    def _passwords_into_urls(cls, data: Any) -> Any:
        defaults = {
            name: str(cls.model_fields[name].default) for name in ("redis_url", "database_url")
        }
        return apply_passwords(data, defaults)


@lru_cache
def get_settings() -> Settings:
    return Settings()
