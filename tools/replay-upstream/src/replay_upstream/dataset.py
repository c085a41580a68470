"""A CTP v1 dataset: its files, typed records, and every API path the data allows.

A dataset is a set of files named after API paths (``us_current.json`` is ``/v1/us/current.json``,
``states_info.csv`` is ``/v1/states/info.csv``, ``status.json`` is ``/v1/status.json``), read from
a directory (:func:`load_dataset`) or generated in memory (``replay_upstream.synthetic``). A
directory may instead hold the website download ``all-states-history.csv``: then the dataset has
no files, only the states daily records converted from it (``replay_upstream.website``).

:func:`api_paths` maps each API path to the bytes to serve: the files themselves, unchanged, plus
what can be derived from their records: a missing JSON or CSV twin of a list
(``/v1/states/daily.json`` from ``states_daily.csv``), the per-state paths
``/v1/states/{st}/current|daily|info|{YYYYMMDD}`` and the per-date ``/v1/us/{YYYYMMDD}``, each as
``.json`` and ``.csv``. Records come from the JSON file of a kind when there is one, else from its
CSV, typed by the table of :mod:`replay_upstream.fields`, refined by what the JSON files of the
same dataset show.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path

from replay_upstream.fields import INFO_TYPES, STATE_TYPES, US_TYPES
from replay_upstream.formats import (
    FieldTypes,
    Record,
    Scalar,
    dump_csv,
    dump_json_array,
    dump_json_object,
    parse_csv,
    parse_json_records,
)
from replay_upstream.website import WEBSITE_FILE, website_records

US_CURRENT = "us_current"
US_DAILY = "us_daily"
STATES_CURRENT = "states_current"
STATES_DAILY = "states_daily"
STATES_INFO = "states_info"
KINDS = (US_CURRENT, US_DAILY, STATES_CURRENT, STATES_DAILY, STATES_INFO)
"""The kinds of record lists, named like their files."""

FILE_PATHS: Mapping[str, str] = {
    f"{stem}.{ext}": f"/v1/{stem.replace('_', '/')}.{ext}"
    for stem in (*KINDS, "status")
    for ext in ("json", "csv")
}
"""File name in a dataset directory -> the API path serving its bytes."""

STATES_DAILY_CSV = f"{STATES_DAILY}.csv"
_STATES_DAILY_4PM = re.compile(r"states_daily_4pm_et(?:__as_of_([0-9]{8}))?\.csv")

V1_LAYOUT = "v1 API files"
WEBSITE_LAYOUT = f"website download {WEBSITE_FILE}, converted"

_GROUPS: tuple[tuple[tuple[str, ...], FieldTypes], ...] = (
    ((US_CURRENT, US_DAILY), US_TYPES),
    ((STATES_CURRENT, STATES_DAILY), STATE_TYPES),
    ((STATES_INFO,), INFO_TYPES),
)


@dataclass(frozen=True)
class Dataset:
    """The files of one dataset and the typed records read from them.

    ``files``: file name (a key of :data:`FILE_PATHS`) -> exact bytes.
    ``records``: kind (one of :data:`KINDS`) -> records, for each kind with a JSON or CSV file
    (or, for the website layout, the states daily records converted from its file).
    ``last_modified``: fixed for the dataset (status.json's buildTime, else the newest file).
    ``layout``: what the folder held (:data:`V1_LAYOUT` or :data:`WEBSITE_LAYOUT`).
    """

    source: str
    files: Mapping[str, bytes]
    records: Mapping[str, Sequence[Record]]
    status: Record | None
    last_modified: datetime
    layout: str = V1_LAYOUT


def load_dataset(path: Path | str) -> Dataset:
    """Read the dataset in directory ``path``, in either of the layouts it recognises.

    - CTP v1 API files, named as in :data:`FILE_PATHS` (``us_daily.json``, ``states_info.csv``,
      ...) or, for the states daily CSV, as in the CTP data repository
      (``states_daily_4pm_et.csv``, ``states_daily_4pm_et__as_of_YYYYMMDD.csv``); other files
      are ignored;
    - else the website download ``all-states-history.csv``, converted to the API's records
      (see :mod:`replay_upstream.website`).
    """
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"dataset directory not found: {directory}")
    found = v1_files(directory)
    website = directory / WEBSITE_FILE
    if not found and website.is_file():
        return Dataset(
            source=str(directory.resolve()),
            files={},
            records={STATES_DAILY: website_records(website.read_bytes())},
            status=None,
            last_modified=_mtime(website),
            layout=WEBSITE_LAYOUT,
        )
    if not found:
        raise ValueError(f"no CTP v1 files (like us_daily.json) nor {WEBSITE_FILE} in {directory}")
    return dataset_from_files(
        {name: file.read_bytes() for name, file in found.items()},
        source=str(directory.resolve()),
        fallback_time=max(_mtime(file) for file in found.values()),
    )


def v1_files(directory: Path) -> dict[str, Path]:
    """File name (a key of :data:`FILE_PATHS`) -> the file of ``directory`` holding it."""
    found = {name: directory / name for name in FILE_PATHS if (directory / name).is_file()}
    if STATES_DAILY_CSV not in found:
        # The data repository's name; the plain one is the live file, else the latest as-of.
        candidates = sorted(
            (match[1] or "99999999", file)
            for file in directory.glob("states_daily_4pm_et*.csv")
            if (match := _STATES_DAILY_4PM.fullmatch(file.name)) and file.is_file()
        )
        if candidates:
            found[STATES_DAILY_CSV] = candidates[-1][1]
    return found


def _mtime(file: Path) -> datetime:
    return datetime.fromtimestamp(file.stat().st_mtime, UTC).replace(microsecond=0)


def dataset_from_files(
    files: Mapping[str, bytes], *, source: str, fallback_time: datetime
) -> Dataset:
    """A dataset from file name -> bytes; ``fallback_time`` is used when no buildTime is given."""
    known = {name: data for name, data in files.items() if name in FILE_PATHS}
    records: dict[str, Sequence[Record]] = {}
    for kinds, defaults in _GROUPS:
        from_json = {
            kind: parse_json_records(known[f"{kind}.json"])
            for kind in kinds
            if f"{kind}.json" in known
        }
        types = defaults.learned_from(chain.from_iterable(from_json.values()))
        for kind in kinds:
            if kind in from_json:
                records[kind] = from_json[kind]
            elif f"{kind}.csv" in known:
                records[kind] = parse_csv(known[f"{kind}.csv"], types)
    status = _status(known.get("status.json"))
    build_time = _build_time(status) or fallback_time
    return Dataset(
        source=source,
        files=known,
        records=records,
        status=status,
        last_modified=build_time.astimezone(UTC).replace(microsecond=0),
    )


def _status(data: bytes | None) -> Record | None:
    if data is None:
        return None
    value = json.loads(data)
    return dict(value) if isinstance(value, dict) else None


def _build_time(status: Record | None) -> datetime | None:
    text = status.get("buildTime") if status else None
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def api_paths(dataset: Dataset) -> dict[str, bytes]:
    """Every API path the dataset allows -> the exact bytes to serve for it."""
    paths = {FILE_PATHS[name]: data for name, data in dataset.files.items()}
    for kind, records in dataset.records.items():
        base = "/v1/" + kind.replace("_", "/")
        paths.setdefault(f"{base}.json", dump_json_array(records))
        paths.setdefault(f"{base}.csv", dump_csv(records))

    def single(base: str, record: Record) -> None:
        if f"{base}.json" not in paths:
            paths[f"{base}.json"] = dump_json_object(record)
            paths[f"{base}.csv"] = dump_csv([record])

    def many(base: str, records: Sequence[Record]) -> None:
        paths.setdefault(f"{base}.json", dump_json_array(records))
        paths.setdefault(f"{base}.csv", dump_csv(records))

    for record in dataset.records.get(STATES_CURRENT, ()):
        if code := state_code(record):
            single(f"/v1/states/{code}/current", record)
    for record in dataset.records.get(STATES_INFO, ()):
        if code := state_code(record):
            single(f"/v1/states/{code}/info", record)
    daily_by_state: dict[str, list[Record]] = {}
    for record in dataset.records.get(STATES_DAILY, ()):
        code, day = state_code(record), record_date(record)
        if code and day:
            daily_by_state.setdefault(code, []).append(record)
            single(f"/v1/states/{code}/{day}", record)
    for code, records in daily_by_state.items():
        many(f"/v1/states/{code}/daily", newest_first(records))
    for record in dataset.records.get(US_DAILY, ()):
        if day := record_date(record):
            single(f"/v1/us/{day}", record)
    return paths


DAILY_KINDS = (US_DAILY, STATES_DAILY)
"""The kinds of record lists that hold one record per date (per state)."""


def file_kind(file_name: str) -> str:
    """The kind of records (or ``status``) a dataset file holds: its name without the
    extension (``states_daily.csv`` -> ``states_daily``)."""
    return file_name.rsplit(".", 1)[0]


def last_days(dataset: Dataset, days: int) -> Dataset:
    """``dataset`` cut to the ``days`` newest dates of its daily records: the us and states
    daily records of those dates only, in their order, and the daily files dropped so that
    :func:`api_paths` renders their paths from the records kept. The current, info and status
    files stay as they are, byte for byte. Real records, fewer of them: a refresh of it costs a
    fraction of the whole archive's."""
    if days < 1:
        raise ValueError(f"last days must be at least 1, not {days}")
    dates = {
        day
        for kind in DAILY_KINDS
        for record in dataset.records.get(kind, ())
        if (day := record_date(record))
    }
    kept = set(sorted(dates, reverse=True)[:days])
    records = {
        kind: (
            [record for record in recs if record_date(record) in kept]
            if kind in DAILY_KINDS
            else recs
        )
        for kind, recs in dataset.records.items()
    }
    files = {
        name: data for name, data in dataset.files.items() if file_kind(name) not in DAILY_KINDS
    }
    return replace(
        dataset,
        source=f"{dataset.source} (its last {len(kept)} days)",
        files=files,
        records=records,
    )


def state_code(record: Mapping[str, Scalar]) -> str | None:
    """The lower-case state code of a record (as in ``/v1/states/ca/...``), if it has one."""
    value = record.get("state")
    return value.lower() if isinstance(value, str) and value.isalpha() else None


def record_date(record: Mapping[str, Scalar]) -> str | None:
    """The ``YYYYMMDD`` date of a record, if it has one."""
    value = record.get("date")
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    text = str(value)
    return text if len(text) == 8 else None


def newest_first(records: Iterable[Record]) -> list[Record]:
    """Records sorted by date descending; records of one date keep their order."""
    return sorted(records, key=lambda record: record_date(record) or "", reverse=True)


ARCHIVE_FROM_REPO_ROOT = Path("..", "shared", "covidtracking", "ctp_v1_api_snapshot_20200902")
"""Where the archived API snapshot lives, relative to the repository root."""


def find_repo_root(start: Path | None = None) -> Path | None:
    """The nearest folder holding both ``libs/`` and ``services/``, from ``start`` upwards.

    Without ``start``, looks above this package's file first (an editable install or a checkout),
    then above the current directory.
    """
    starts = [start] if start else [Path(__file__).resolve().parent, Path.cwd().resolve()]
    for origin in starts:
        for folder in (origin, *origin.parents):
            if (folder / "libs").is_dir() and (folder / "services").is_dir():
                return folder
    return None


def default_archive_dir() -> Path | None:
    """The archived snapshot next to the repository, if this machine has it."""
    root = find_repo_root()
    if root is None:
        return None
    archive = (root / ARCHIVE_FROM_REPO_ROOT).resolve()
    return archive if archive.is_dir() else None
