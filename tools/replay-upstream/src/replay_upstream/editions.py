"""Editions: several datasets served one after the other, so a client sees the upstream revise
its data (``--editions DIR DIR ...``, ``--ctp-editions``; advanced through the control API,
``/_control/edition``).

Each edition is a dataset folder in either layout :func:`~replay_upstream.dataset.load_dataset`
reads (v1 API files, the data repository's ``states_daily_4pm_et__as_of_YYYYMMDD.csv``, or the
website's ``all-states-history.csv`` with ISO dates and its own column order). An edition that
lacks a kind of records the one before it had keeps serving the earlier ones (the upstream kept
serving every path while one file was revised): edition N is edition N-1 with the kinds of
records edition N's folder holds replaced. Its ``Last-Modified`` is its own, and always later
than the previous edition's.

:data:`CTP_EDITIONS` are the three real editions of the COVID Tracking Project's states history
next to the repository (../shared/covidtracking): the v1 API of 2020-09-02, the data
repository's states daily file of 2020-12-06 (with the other v1 CSV files of 2021-03-06), the
website's final download of 2021-03-07.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

from replay_upstream.dataset import Dataset, file_kind, find_repo_root, load_dataset

CTP_EDITIONS_FROM_REPO_ROOT: tuple[Path, ...] = tuple(
    Path("..", "shared", "covidtracking", name)
    for name in (
        "ctp_v1_api_snapshot_20200902",
        "ctp_v1_csv_20210306",
        "ctp_website_final_20210307",
    )
)
"""The real editions, in order, relative to the repository root."""


def ctp_editions() -> list[Path]:
    """The real editions' folders on this machine (FileNotFoundError when absent)."""
    root = find_repo_root()
    if root is None:
        raise FileNotFoundError("no repository root (libs/ and services/) above this package")
    folders = [(root / folder).resolve() for folder in CTP_EDITIONS_FROM_REPO_ROOT]
    missing = [str(folder) for folder in folders if not folder.is_dir()]
    if missing:
        raise FileNotFoundError(f"the real editions are absent: {', '.join(missing)}")
    return folders


def overlay(previous: Dataset, edition: Dataset) -> Dataset:
    """``edition`` served after ``previous``: the kinds of records (and files) it lacks stay
    the previous ones; its ``Last-Modified`` is later than the previous one's."""
    replaced = set(edition.records) | {file_kind(name) for name in edition.files}
    kept = {name: data for name, data in previous.files.items() if file_kind(name) not in replaced}
    records = {kind: recs for kind, recs in previous.records.items() if kind not in edition.records}
    records.update(edition.records)
    return replace(
        edition,
        files={**kept, **edition.files},
        records=records,
        status=edition.status or previous.status,
        last_modified=max(edition.last_modified, previous.last_modified + timedelta(seconds=1)),
    )


@dataclass
class Editions:
    """The folders of the editions and the one being served (``number``: 1-based)."""

    folders: Sequence[Path]
    number: int = 1
    current: Dataset = field(init=False)

    def __post_init__(self) -> None:
        if not self.folders:
            raise ValueError("editions: at least one folder is needed")
        self.current = load_dataset(self.folders[0])
        self.number = 1

    def go_to(self, number: int) -> Dataset:
        """Serve edition ``number`` (1..len): the editions up to it, each over the one
        before. ValueError for a number out of range. Reads the folders (seconds for the
        large files): call it off the event loop."""
        if not 1 <= number <= len(self.folders):
            raise ValueError(f'"edition" must be between 1 and {len(self.folders)}')
        if number < self.number:
            dataset = load_dataset(self.folders[0])
            start = 2
        else:
            dataset, start = self.current, self.number + 1
        for folder in self.folders[start - 1 : number]:
            dataset = overlay(dataset, load_dataset(folder))
        self.current, self.number = dataset, number
        return dataset

    def describe(self) -> dict[str, object]:
        """What ``GET /_control/edition`` answers."""
        return {
            "edition": self.number,
            "editions": len(self.folders),
            "folders": [str(folder) for folder in self.folders],
            "last_modified": self.current.last_modified.isoformat().replace("+00:00", "Z"),
        }
