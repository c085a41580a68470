"""covid-stats api: COVID-19 statistics served from Redis, with PostgreSQL behind it.

Modules: ``core.config`` (settings), ``core.stores`` (the Redis and PostgreSQL pools),
``documents`` (Redis first, PostgreSQL on a miss or outage), ``api.routes.*`` (endpoints),
``api.errors`` (the one error shape), ``main`` (the app), ``gunicorn_conf`` (the server).
"""

__version__ = "0.1.0"
