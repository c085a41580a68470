"""The FastAPI application. Run it with gunicorn (see ``gunicorn_conf``)::

gunicorn -c python:covid_stats_api.gunicorn_conf covid_stats_api.main:app
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from covid_stats_api import __version__
from covid_stats_api.api.errors import install_error_handlers
from covid_stats_api.api.routes import health, stats
from covid_stats_api.core.config import Settings, get_settings
from covid_stats_api.core.stores import Stores
from covid_stats_api.documents import DocumentReader
from covid_stats_runtime.logs import configure_logging


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stores = Stores(settings)
        await stores.open()
        app.state.stores = stores
        app.state.reader = DocumentReader(stores)
        try:
            yield
        finally:
            await stores.close()

    app = FastAPI(
        title="covid-stats",
        version=__version__,
        summary="COVID-19 statistics (COVID Tracking Project v1 API shape), served from Redis.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(stats.router)
    return app


app = create_app()
