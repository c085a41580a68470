"""stats-fetcher: refreshes the data from the upstream API and publishes it.

Modules: ``config`` (settings), ``upstream`` (HTTP fetch and validation), ``refresh`` (one
refresh: fetch, store in PostgreSQL, publish a snapshot to Redis), ``service`` (the schedule),
``__main__`` (the ``stats-fetcher`` command).
"""

__version__ = "0.1.0"
