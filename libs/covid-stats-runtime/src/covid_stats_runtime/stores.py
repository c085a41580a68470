"""What both services' store clients share."""

from __future__ import annotations

import asyncpg

# What PostgreSQL being down, restarting or slow raises at connect or query time. A connection
# that PostgreSQL's death cut in the middle of an operation can raise asyncpg's
# InternalClientError ("cannot switch to state 11; another operation (2) is in progress"):
# the fault suite saw /readyz answer 500 with it while both stores were down.
DATABASE_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    TimeoutError,
)
