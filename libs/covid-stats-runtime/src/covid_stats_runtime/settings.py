"""The settings both services read the same way: their stores, their logging
(``StoreSettings``) and the bounds of their HTTP ports (``PortSettings``).

Each service's ``Settings`` subclasses ``PortSettings`` and adds its own fields. Every field
is an environment variable of the same name in capitals (``redis_url``: ``REDIS_URL``), and
its ``description`` is the text of docs/configuration.md's table, which ``make config-docs``
generates from these classes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
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
    def env_var_names(cls, name: str) -> tuple[str, ...]:
        """The environment variables pydantic-settings reads a field from, in capitals (it
        matches them in any case): the field's alias or alias choices when it has them,
        else ``env_prefix`` + its name."""
        field = cls.model_fields[name]
        alias = field.validation_alias or field.alias
        if isinstance(alias, str):
            names = [alias]
        elif isinstance(alias, AliasChoices):
            names = [choice for choice in alias.choices if isinstance(choice, str)]
        else:
            names = [cls.model_config.get("env_prefix", "") + name]
        return tuple(dict.fromkeys(n.upper() for n in names))

    @classmethod
    def env_var(cls, name: str) -> str:
        """The (first) environment variable of a field: ``redis_url``: ``REDIS_URL``."""
        return cls.env_var_names(name)[0]

    @classmethod
    def env_vars(cls) -> dict[str, str]:
        """{environment variable: field name} of every setting of the class."""
        return {env: name for name in cls.model_fields for env in cls.env_var_names(name)}


class PortSettings(StoreSettings):
    """``StoreSettings`` and the bounds of every connection to a service's HTTP port, the
    same for both: the api's traffic port and the fetcher's port (``.protocol``)."""

    # Bounds of every connection (see covid_stats_runtime.protocol).
    http_max_request_head_bytes: int = Field(
        default=16384,
        ge=1024,
        description="longest request head (request line and headers): longer gets 414 or 431"
        " (see [Limits](limits.md#limits-and-hostile-clients))",
    )
    http_request_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="a request must arrive whole within this time of its first byte, else 408",
    )
    # Keep-alive is for reuse, not for connections that never send a request.
    http_new_connection_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="a new connection that sends nothing this long is closed",
    )
