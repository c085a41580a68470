"""The settings both services read the same way: their stores and their logging.

Each service's ``Settings`` subclasses ``StoreSettings`` and adds its own fields. Every field
is an environment variable of the same name in capitals (``redis_url``: ``REDIS_URL``), and
its ``description`` is the text of docs/configuration.md's table, which ``make config-docs``
generates from these classes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from covid_stats_runtime.urls import apply_passwords


class StoreSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # repr=False: a URL may carry a password; it stays out of any printed Settings.
    redis_url: str = Field(
        default="redis://localhost:6379/0",
        repr=False,
        description="Redis server; password and TLS in the URL (see [Secrets and TLS]"
        "(#secrets-and-tls); `make run`: a local throwaway one with a random password unless"
        " set)",
    )
    redis_password: SecretStr | None = Field(
        default=None,
        description="Redis password of any characters, put into `REDIS_URL` percent-encoded"
        " (the chart passes it from its Secret)",
    )
    redis_key_prefix: str = Field(default="covid-stats", description="prefix of every Redis key")
    database_url: str = Field(
        default="postgresql://covid_stats@localhost:5432/covid_stats",
        repr=False,
        description="PostgreSQL database; password and TLS in the URL (`make run`: a local"
        " throwaway one with a random password unless set)",
    )
    database_password: SecretStr | None = Field(
        default=None,
        description="PostgreSQL password of any characters, put into `DATABASE_URL`"
        " percent-encoded (the chart passes it from its Secret)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="the least severe log records written"
    )

    @model_validator(mode="before")
    @classmethod
    def _passwords_into_urls(cls, data: Any) -> Any:
        defaults = {
            name: str(cls.model_fields[name].default) for name in ("redis_url", "database_url")
        }
        return apply_passwords(data, defaults)

    @classmethod
    def env_vars(cls) -> dict[str, str]:
        """{environment variable: field name} of every setting of the class."""
        return {name.upper(): name for name in cls.model_fields}
