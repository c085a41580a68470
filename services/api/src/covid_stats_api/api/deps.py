"""Dependencies the routes declare: the document reader and the settings."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from covid_stats_api.core.config import Settings
from covid_stats_api.core.stores import Stores
from covid_stats_api.documents import DocumentReader


def get_stores(request: Request) -> Stores:
    stores: Stores = request.app.state.stores
    return stores


def get_reader(request: Request) -> DocumentReader:
    reader: DocumentReader = request.app.state.reader
    return reader


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


StoresDep = Annotated[Stores, Depends(get_stores)]
ReaderDep = Annotated[DocumentReader, Depends(get_reader)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
