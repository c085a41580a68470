"""Store URLs with a password given on its own (DATABASE_PASSWORD, REDIS_PASSWORD).

A password of any characters cannot be written into a URL as it is: `@ : / % ? #` and spaces
end or change the URL's parts. Both services therefore take it apart from the URL (the chart
passes it from its Secret) and put it into the URL here, percent-encoded, where asyncpg and
redis-py decode it again. One place for both services.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

# Settings field of a store URL -> the field holding its password
PASSWORD_FIELDS = {"database_url": "database_password", "redis_url": "redis_password"}


def with_password(url: str, password: str) -> str:
    """``url`` with its password set to ``password`` (percent-encoded); the user name, host,
    path and query are kept as they are written."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0] if at else ""
    netloc = f"{user}:{quote(password, safe='')}@{hostport}"
    return urlunsplit(parts._replace(netloc=netloc))


def apply_passwords(data: Any, defaults: Mapping[str, str]) -> Any:
    """A settings model's "before" validator: each store URL (given, else its default) gets
    the password given on its own, if any. ``defaults``: {url field: its default}."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for url_field, password_field in PASSWORD_FIELDS.items():
        password = data.get(password_field)
        if password is None or url_field not in defaults:
            continue
        secret = password.get_secret_value() if hasattr(password, "get_secret_value") else password
        data[url_field] = with_password(str(data.get(url_field, defaults[url_field])), str(secret))
    return data
