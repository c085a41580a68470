"""Settings of the api, read from the environment (see the README's table)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from covid_stats_runtime.urls import apply_passwords


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    api_host: str = "0.0.0.0"  # noqa: S104 - a container's server listens on all interfaces
    api_port: int = Field(default=8000, ge=1, le=65535)
    # /metrics is served here (by the gunicorn master), never on API_PORT; 0 turns it off.
    api_metrics_port: int = Field(default=9000, ge=0, le=65535)
    web_concurrency: int = Field(default=2, ge=1, description="gunicorn worker processes")

    # repr=False: a URL may carry a password; it stays out of any printed Settings.
    redis_url: str = Field(default="redis://localhost:6379/0", repr=False)
    # Put into REDIS_URL / DATABASE_URL percent-encoded: a password of any characters.
    redis_password: SecretStr | None = None
    redis_key_prefix: str = "covid-stats"
    redis_pool_size: int = Field(default=32, ge=1, description="connections per worker")
    redis_pool_timeout_seconds: float = Field(default=2.0, gt=0)
    redis_socket_timeout_seconds: float = Field(default=1.0, gt=0)

    database_url: str = Field(
        default="postgresql://covid_stats@localhost:5432/covid_stats", repr=False
    )
    database_password: SecretStr | None = None
    db_pool_min_size: int = Field(default=1, ge=0)
    db_pool_max_size: int = Field(default=10, ge=1, description="connections per worker")
    db_command_timeout_seconds: float = Field(default=5.0, gt=0)

    retry_after_seconds: int = Field(default=30, ge=1)
    cache_max_age_seconds: int = Field(default=60, ge=0)
    query_cache_ttl_seconds: int = Field(default=300, ge=1)
    hot_cache_max_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    hot_cache_check_seconds: float = Field(default=0.25, gt=0)
    hot_cache_database_ttl_seconds: float = Field(default=5.0, ge=0)

    gunicorn_timeout_seconds: int = Field(default=30, ge=1)
    gunicorn_graceful_timeout_seconds: int = Field(default=20, ge=1)
    # Longer than the idle timeout of the load balancers in front (60 s for ALB and
    # ingress-nginx's upstream keep-alive): else one closes a connection the other reuses (502).
    gunicorn_keepalive_seconds: int = Field(default=65, ge=1)
    gunicorn_max_requests: int = Field(default=1_000_000, ge=0)
    gunicorn_max_requests_jitter: int = Field(default=100_000, ge=0)
    # Bounds of every connection (see covid_stats_api.http_limits).
    http_max_request_head_bytes: int = Field(default=16384, ge=1024)
    http_request_timeout_seconds: float = Field(default=10.0, gt=0)
    # A new connection that sends nothing is closed after this (keep-alive is for reuse).
    http_new_connection_timeout_seconds: float = Field(default=5.0, gt=0)
    # Peers whose X-Forwarded-For names the client (the rate limit's key); gunicorn's own
    # FORWARDED_ALLOW_IPS, with its default. "*" trusts every peer.
    forwarded_allow_ips: str = "127.0.0.1,::1"
    # Requests per minute per client address, across workers and pods (0: no limit).
    rate_limit_per_minute: int = Field(default=0, ge=0, le=60000)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    access_log_sample_rate: float = Field(
        default=0.0, ge=0, le=1, description="share of requests in the access log, 0 = off"
    )

    @model_validator(mode="after")
    def _ports_differ(self) -> Settings:
        if self.api_metrics_port == self.api_port:
            raise ValueError(
                f"API_METRICS_PORT must differ from API_PORT ({self.api_port}): /metrics is "
                "served on its own port"
            )
        return self

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
