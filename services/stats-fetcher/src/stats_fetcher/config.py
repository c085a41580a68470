"""Settings of the stats-fetcher, read from the environment (see the README's table)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, HttpUrl
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    upstream_base_url: HttpUrl = HttpUrl("https://api.covidtracking.com")
    fetch_interval_seconds: float = Field(default=300.0, gt=0)
    upstream_timeout_seconds: float = Field(default=10.0, gt=0)

    redis_url: str = "redis://localhost:6379/0"
    redis_key_prefix: str = "covid-stats"
    snapshot_grace_seconds: int = Field(default=300, ge=1)

    database_url: str = "postgresql://covid_stats@localhost:5432/covid_stats"
    db_pool_max_size: int = Field(default=4, ge=1)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


@lru_cache
def get_settings() -> Settings:
    return Settings()
