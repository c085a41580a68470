"""What both services' store clients share."""

from __future__ import annotations

import asyncpg

# What PostgreSQL being down, restarting or slow raises at connect or query time.
DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
