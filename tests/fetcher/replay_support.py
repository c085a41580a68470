"""The replay upstream under test (tools/replay-upstream): starting ``python -m replay_upstream``
on a free port, the archived CTP folders it can serve, and helpers to compare what it serves
with the files (tests/fetcher/test_replay_*.py)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.procs import free_port, wait_until
from support import REPO

SHARED = REPO.parent / "shared" / "covidtracking"
ARCHIVE = SHARED / "ctp_v1_api_snapshot_20200902"
CSV_2021 = SHARED / "ctp_v1_csv_20210306"
WEBSITE = SHARED / "ctp_website_final_20210307"
STATES_DAILY_2021 = "states_daily_4pm_et__as_of_20201206.csv"
archive = pytest.mark.archive


def _needs(folder: Path) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not folder.is_dir(),
        reason=f"archived CTP data absent: no {folder} (../shared/covidtracking from repo root)",
    )


needs_archive = _needs(ARCHIVE)
needs_csv_2021 = _needs(CSV_2021)
needs_website = _needs(WEBSITE)
READY_TIMEOUT = 30.0

Record = dict[str, Any]


@dataclass
class Server:
    """A running replay upstream and a client bound to it."""

    url: str
    process: subprocess.Popen[bytes]
    client: httpx.Client
    stderr: Path

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def json(self, path: str) -> Any:
        response = self.get(path)
        assert response.status_code == 200, (path, response.text)
        return response.json()


@contextmanager
def run_server(
    args: Sequence[str], log_dir: Path, env: Mapping[str, str] | None = None
) -> Iterator[Server]:
    """Start ``python -m replay_upstream ARGS`` and wait (with a deadline) until it answers."""
    port = free_port()
    stderr = log_dir / f"replay-upstream-{port}.err"
    command = [sys.executable, "-m", "replay_upstream", "--port", str(port), *args]
    environment = {k: v for k, v in os.environ.items() if k != "REPLAY_DATASET_DIR"}
    environment.update(env or {})
    with stderr.open("wb") as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=environment)
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=10.0)

    def answers() -> bool:
        if process.poll() is not None:
            pytest.fail(f"replay upstream exited early: {stderr.read_text()}")
        try:
            client.get("/v1/status.json", timeout=1.0)
        except httpx.TransportError:
            return False
        return True

    try:
        try:
            wait_until(answers, READY_TIMEOUT, what="the replay upstream")
        except TimeoutError:
            pytest.fail(f"replay upstream not ready in {READY_TIMEOUT}s: {stderr.read_text()}")
        yield Server(url=url, process=process, client=client, stderr=stderr)
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve_folder(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A replay upstream serving one archived folder (for a module-scoped fixture); skips
    where the folder is absent."""
    if not folder.is_dir():
        pytest.skip(f"archived CTP data absent: no {folder}")
    with run_server(["--dataset", str(folder)], tmp_path_factory.mktemp(folder.name)) as server:
        yield server


def serve_synthetic(tmp_path_factory: pytest.TempPathFactory, *args: str) -> Iterator[Server]:
    """A replay upstream serving the synthetic dataset (``args``: more flags)."""
    with run_server(["--synthetic", *args], tmp_path_factory.mktemp("synthetic")) as server:
        yield server


def archive_json(name: str) -> list[Record]:
    records: list[Record] = json.loads((ARCHIVE / name).read_bytes())
    return records


def compact_array(records: Sequence[Record]) -> bytes:
    text = ",".join(json.dumps(r, separators=(",", ":"), ensure_ascii=False) for r in records)
    return f"[{text}]\n".encode()


def csv_text(value: Any) -> str:
    """How upstream CSV writes a JSON value."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def csv_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(), newline="")))


def assert_csv_matches(data: bytes, records: Sequence[Record]) -> None:
    rows = csv_rows(data)
    assert rows[0] == list(records[0])
    assert rows[1:] == [[csv_text(v) for v in record.values()] for record in records]


def records_of(files: Mapping[str, bytes], name: str) -> list[Record]:
    records: list[Record] = json.loads(files[name])
    return records
