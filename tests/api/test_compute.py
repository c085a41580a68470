"""Where a worker's large query answers are computed (issue 23 item 1: hot documents must not
wait on hostile questions): in ``QUERY_COMPUTE_SLOTS`` processes of the worker's own, at a
lower CPU priority (``reads.compute``), never on the worker's interpreter, whose event loop
answers the hot documents. Real gunicorn, Redis and PostgreSQL; the processes are read with
psutil. No timing is asserted: where the CPU time goes, and how many processes hold it."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil  # type: ignore[import-untyped]  # no stubs in the venv
import pytest
import redis

from covid_stats_api.reads.compute import APPLICATION_NAME, COMPUTE_NICE
from covid_stats_api.reads.queries import RENDER_INLINE_MAX, SEPARATOR
from support import Process, sql, start_api

# Every state's daily series, sorted by fields other than its own order: each one a large
# computation (every record parsed: a CSV, a projection) that no cache has seen.
HEAVY = [
    "/v1/states/daily.csv?sort=-positive",
    "/v1/states/daily.csv?sort=death",
    "/v1/states/daily.json?sort=-totalTestResults&fields=date,state,positive,death",
    "/v1/states/daily.csv?sort=-hospitalizedCurrently",
    "/v1/states/daily.json?sort=negative&fields=date,state,negative",
    "/v1/states/daily.csv?sort=-deathIncrease",
]


def _worker(process: Process) -> psutil.Process:
    (worker,) = psutil.Process(process.proc.pid).children()
    return worker


def _niced(worker: psutil.Process) -> list[psutil.Process]:
    """The worker's descendants that run at its priority lowered by ``COMPUTE_NICE`` (19 at
    most: the lowest)."""
    return [
        child
        for child in worker.children(recursive=True)
        if child.nice() == min(worker.nice() + COMPUTE_NICE, 19)
    ]


async def _ask_all(base: str, paths: list[str]) -> list[int]:
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        answers = await asyncio.gather(*(client.get(path) for path in paths))
    return [answer.status_code for answer in answers]


def _start(
    env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, slots: int
) -> tuple[Process, str]:
    """The api, one worker, ``slots`` computation slots, no answer too large to compute."""
    api_env = {
        **env,
        "QUERY_ANSWER_MAX_BYTES": str(64 * 2**20),
        "QUERY_COMPUTE_SLOTS": str(slots),
    }
    return start_api(api_env, tmp_path_factory.mktemp("api"), workers=1)


def test_large_answers_are_computed_in_idle_processes_not_the_worker(
    published_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    process, base = _start(published_env, tmp_path_factory, 2)
    try:
        worker = _worker(process)
        before = worker.cpu_times()
        statuses = asyncio.run(_ask_all(base, HEAVY))
        assert statuses == [200] * len(HEAVY)
        after = worker.cpu_times()
        computers = _niced(worker)
        assert len(computers) == 2  # QUERY_COMPUTE_SLOTS
        # Each at idle CPU priority, in the worker's own CPU group (its session, where the
        # kernel groups by session): there a waking worker preempts it at once.
        for computer in computers:
            assert os.sched_getscheduler(computer.pid) == os.SCHED_IDLE
            assert os.getsid(computer.pid) == os.getsid(worker.pid)
        spent = sum(c.cpu_times().user + c.cpu_times().system for c in computers)
        in_worker = (after.user + after.system) - (before.user + before.system)
        # The rendering (every record parsed) and the compression are the bulk of a large
        # answer's CPU: it went to the processes, not to the interpreter of the event loop.
        assert spent > in_worker, (spent, in_worker)
    finally:
        process.stop()


def _read_bytes(process: psutil.Process) -> int:
    """What ``process`` has read with read(2): files, pipes, and the sockets of a uvloop
    worker (libuv reads with read(2); ``/proc/<pid>/io``'s rchar, which recv(2) skips)."""
    return int(process.io_counters().read_chars)


def test_large_questions_texts_are_fetched_by_the_processes_never_the_worker(
    published_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A large question's records' texts (the whole daily series: 13.5 MB) are fetched by the
    computation process over a PostgreSQL connection of its own: receiving and handing them
    on held the worker's event loop for 15-25 ms per question. The worker reads back the
    answers only: what it reads is under half the texts; each process holds one connection,
    named ``APPLICATION_NAME``, from a port of its own (and the answers are right: the other
    tests compare them)."""
    database = published_env["DATABASE_URL"]
    ((texts,),) = sql(database, "SELECT sum(octet_length(record::text)) FROM states_daily")
    process, base = _start(published_env, tmp_path_factory, 2)
    try:
        worker = _worker(process)
        read_before = _read_bytes(worker)
        assert asyncio.run(_ask_all(base, HEAVY)) == [200] * len(HEAVY)
        in_worker = _read_bytes(worker) - read_before
        computers = _niced(worker)
        # Every HEAVY question selects every record of the states' daily series; the worker
        # reads their answers (and gzip bodies) from the processes' pipe, and no texts.
        assert in_worker < len(HEAVY) * texts / 2, (in_worker, texts)
        # ... and rchar does count what it reads: the answers, megabytes from the pipe (were
        # it blind to the worker's reads, the bound above would hold whatever they were).
        assert in_worker > 1_000_000, in_worker
        named = sql(
            database,
            "SELECT client_port FROM pg_stat_activity"
            " WHERE application_name = $1 AND datname = current_database()",
            APPLICATION_NAME,
        )
        postgres_port = urlsplit(database).port
        theirs = {
            c.laddr.port
            for p in computers
            for c in p.net_connections(kind="tcp")
            if c.raddr and c.raddr.port == postgres_port
        }
        assert len(computers) == 2  # QUERY_COMPUTE_SLOTS
        assert len(theirs) == 2, theirs  # one connection each
        assert theirs <= {port for (port,) in named}, (named, theirs)
    finally:
        process.stop()


def _written_bytes(process: psutil.Process) -> int:
    """What ``process`` has written with write(2) and writev(2): the sockets of a uvloop
    worker included (``/proc/<pid>/io``'s wchar)."""
    return int(process.io_counters().write_chars)


def test_the_processes_store_their_answers_in_redis_not_the_worker(
    published_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Each computation process stores the answer it made in Redis over a connection of its
    own, named ``APPLICATION_NAME``: the answers' bytes (megabytes each, and their gzip
    bodies) never cross the worker's connection to Redis, which was the largest part of a
    question's time on the worker's event loop. The worker writes only what it answers (gzip
    bodies here), well under the answers' size."""
    budget = {**published_env, "QUERY_CACHE_MAX_BYTES": str(512 * 2**20)}  # every answer kept
    process, base = _start(budget, tmp_path_factory, 2)
    client = redis.Redis.from_url(published_env["REDIS_URL"])
    try:
        worker = _worker(process)
        written_before = _written_bytes(worker)
        assert asyncio.run(_ask_all(base, HEAVY)) == [200] * len(HEAVY)
        written = _written_bytes(worker) - written_before
        stored = {
            key: client.hget(key, "body") or b""
            for key in client.scan_iter(match="*:query:*")
            if not key.endswith(b":fill")
        }
        assert len(stored) == len(HEAVY), stored.keys()
        answers = sum(len(body) for body in stored.values())
        assert answers > 5_000_000, answers  # megabytes: what the worker used to send Redis
        assert written < answers / 2, (written, answers)
        named = [c for c in client.client_list() if c.get("name") == APPLICATION_NAME]
        assert len(named) == 2, named  # one connection per computation process
        assert not client.keys("*:fill")  # each process released the fill lock it stored
    finally:
        client.close()
        process.stop()


def test_computations_are_bounded_by_the_slots_setting(
    published_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    process, base = _start(published_env, tmp_path_factory, 1)
    try:
        worker = _worker(process)
        statuses = asyncio.run(_ask_all(base, HEAVY))
        assert statuses == [200] * len(HEAVY)
        assert len(_niced(worker)) == 1  # six questions at once, one process
    finally:
        process.stop()


def test_a_killed_computation_process_degrades_to_503_then_is_replaced(
    published_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The kernel's OOM killer taking a computation process: the question it held answers
    503 (the error shape, Retry-After), the worker lives on, and the next questions are
    computed in new processes."""
    process, base = _start(published_env, tmp_path_factory, 1)
    try:
        worker = _worker(process)
        assert asyncio.run(_ask_all(base, HEAVY[:1])) == [200]
        (computer,) = _niced(worker)
        computer.kill()
        computer.wait(10)
        first = httpx.get(f"{base}{HEAVY[1]}", timeout=120)
        assert first.status_code in (200, 503), first.text[:300]
        if first.status_code == 503:
            assert first.json()["error"]["status"] == 503
            assert "retry-after" in first.headers
        assert asyncio.run(_ask_all(base, HEAVY[2:4])) == [200, 200]
        assert _worker(process).pid == worker.pid  # the same worker
        assert [p.pid for p in _niced(worker)] != [computer.pid]
    finally:
        process.stop()


def test_computation_processes_write_no_metrics_and_end_with_their_worker(
    published_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The processes count nothing in the workers' metrics directory (their zero gauges
    would join the workers' values), and a worker killed outright (no shutdown of its own)
    takes its processes and their fork server with it."""
    process, base = _start(published_env, tmp_path_factory, 2)
    try:
        worker = _worker(process)
        assert asyncio.run(_ask_all(base, HEAVY[:2])) == [200, 200]
        descendants = worker.children(recursive=True)
        assert _niced(worker)
        # The metrics directory (gunicorn_conf makes one per master): where the worker's
        # own metrics files are open.
        (directory,) = {Path(f.path).parent for f in worker.open_files() if f.path.endswith(".db")}
        writers = {int(f.stem.rsplit("_", 1)[1]) for f in directory.glob("*.db")}
        assert writers.isdisjoint(p.pid for p in descendants), sorted(writers)
        worker.kill()
        _, alive = psutil.wait_procs(descendants, timeout=30)
        assert alive == [], alive
    finally:
        process.stop()


def _json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def test_a_stop_after_computations_ends_the_processes_and_logs_only_json(
    published_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Structured logs to the end: after computations, the api's stop (SIGTERM to the
    master) ends the processes, and everything the api wrote, its stop included, is JSON
    lines. The pool shut down without joining its processes left its queues' semaphores to
    the resource tracker, which warned of them in plain text at every stop. At INFO, so that
    gunicorn's own lines from the start to the stop are there too."""
    process, base = _start({**published_env, "LOG_LEVEL": "INFO"}, tmp_path_factory, 2)
    try:
        worker = _worker(process)
        assert asyncio.run(_ask_all(base, HEAVY[:2])) == [200, 200]
        assert _niced(worker)
        descendants = worker.children(recursive=True)
    finally:
        code = process.stop()
    assert code == 0
    _, alive = psutil.wait_procs(descendants, timeout=30)
    assert alive == [], alive
    lines = [line for line in process.output().splitlines() if line.strip()]
    assert len(lines) > 3
    assert [line for line in lines if not _json_object(line)] == []


def test_record_texts_reach_the_answer_whole_through_the_joined_fetch(
    published_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """PostgreSQL returns a question's records as one buffer, their texts joined by
    ``queries.SEPARATOR`` (the event loop decodes one value, not a row per record): a record
    whose strings hold the separator (escaped, as JSON writes it), a newline and the other
    characters a splitter could trip on comes back whole, on both paths (a small answer
    split in the worker, a large one in a computation process), and no record is lost."""
    tricky = f'a{SEPARATOR}b\nc,"d"\\e\u00e9\U0001f600'
    database = published_env["DATABASE_URL"]

    sql(
        database,
        "UPDATE states_daily SET record = json_build_object("
        "'date', date, 'state', state, 'positive', 1, 'notes', $1::text) "
        "WHERE state IN ('MI', 'NY')",
        tricky,
    )
    ((planted,),) = sql(database, "SELECT count(*) FROM states_daily WHERE state IN ('MI', 'NY')")
    recent = 2 * 3  # lastdays=3 of each
    assert planted > RENDER_INLINE_MAX, "MI's and NY's series must take the processes"
    process, base = _start(published_env, tmp_path_factory, 1)
    try:
        for params, count in [("", planted), ("&lastdays=3", recent)]:
            for fmt in ("json", "csv"):
                url = f"{base}/v1/states/daily.{fmt}?states=mi,ny&fields=date,notes{params}"
                answer = httpx.get(url, timeout=60)
                assert answer.status_code == 200, answer.text
                if fmt == "json":
                    notes = [record["notes"] for record in answer.json()]
                else:
                    notes = [row["notes"] for row in csv.DictReader(io.StringIO(answer.text))]
                assert notes == [tricky] * count, (url, notes[:2], len(notes))
    finally:
        process.stop()


@pytest.mark.parametrize(
    ("paths", "computed"),
    [
        (["/v1/us/derived.json", "/v1/states/mi/derived.csv?lastdays=9"], True),
        (
            ["/v1/states/mi/daily.csv?lastdays=30", "/v1/states/daily.json?lastdays=2&fields=date"],
            True,
        ),
        (["/v1/states/mi/daily.json?lastdays=30"], False),
    ],
    ids=["derived", "parsed", "joined"],
)
def test_answers_that_parse_records_are_computed_in_the_processes(
    published_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    paths: list[str],
    computed: bool,
) -> None:
    """A derived series parses a whole daily document, a CSV or a projection parses each
    record (more than ``PARSE_INLINE_MAX`` of them here): on the event loop or in a thread,
    that held the interpreter the hot reads need. The processes start on first use, so with
    only such questions asked they exist only if the answers were computed there; a JSON
    answer that only joins its records' texts (``RENDER_INLINE_MAX``) stays in the worker."""
    process, base = _start(published_env, tmp_path_factory, 1)
    try:
        worker = _worker(process)
        assert _niced(worker) == []
        assert asyncio.run(_ask_all(base, paths)) == [200] * len(paths)
        assert len(_niced(worker)) == (1 if computed else 0)  # QUERY_COMPUTE_SLOTS
    finally:
        process.stop()
