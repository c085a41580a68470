"""Command line: run the replay upstream server, or write the synthetic dataset to a folder.

    replay-upstream [--dataset DIR | --synthetic | --editions DIR... | --ctp-editions]
                    [--last-days N] [--control] [--github-raw] [--host H] [--port P]
                    [--log-level L]
    replay-upstream write-synthetic DIR [--start YYYY-MM-DD] [--end YYYY-MM-DD] [--seed N]

Without ``--dataset``, ``--synthetic`` or editions the server picks, in order:
``$REPLAY_EDITIONS`` (folders served one after the other, ``ctp``: the real editions),
``$REPLAY_DATASET_DIR``, the archive at
``<repo root>/../shared/covidtracking/ctp_v1_api_snapshot_20200902``, synthetic.
``--editions DIR...`` / ``--ctp-editions`` serve editions, moved by ``/_control/edition``.
``--control`` enables the control API under ``/_control/`` (fault injection, request counts).
``--github-raw`` answers in the shape of the default upstream, raw.githubusercontent.com serving
the archived CTP files (``/COVID19Tracking/covid-public-api/HEAD/v1/...``, ``text/plain``).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import uvicorn

from replay_upstream.app import GITHUB_RAW_CONTENT_TYPE, GITHUB_RAW_PREFIX, create_app
from replay_upstream.dataset import Dataset, default_archive_dir, last_days, load_dataset
from replay_upstream.editions import Editions, ctp_editions
from replay_upstream.synthetic import (
    DEFAULT_END,
    DEFAULT_SEED,
    DEFAULT_START,
    synthetic_dataset,
    write_synthetic_dataset,
)

ENV_DATASET_DIR = "REPLAY_DATASET_DIR"
ENV_EDITIONS = "REPLAY_EDITIONS"
ENV_LAST_DAYS = "REPLAY_LAST_DAYS"
CTP_EDITIONS = "ctp"  # $REPLAY_EDITIONS naming the real editions (--ctp-editions)
_PROG = "replay-upstream"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``replay-upstream`` command."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Serve the COVID Tracking Project v1 API offline (GET/HEAD /v1/...).",
        epilog=(
            "A dataset DIR holds CTP v1 API files (us_daily.json, states_info.csv, ...; the "
            "states daily CSV may be named states_daily_4pm_et[__as_of_YYYYMMDD].csv), or else "
            "the website download all-states-history.csv (served, converted, as "
            "/v1/states/daily.json|csv and the per-state paths). "
            f"Dataset choice without --dataset/--synthetic: ${ENV_DATASET_DIR} if set, else "
            "<repo root>/../shared/covidtracking/ctp_v1_api_snapshot_20200902 if present, else "
            "synthetic. 'replay-upstream write-synthetic DIR' writes the synthetic dataset's "
            "files (us_daily.json, states_daily.csv, ...) into DIR and exits."
        ),
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--dataset",
        type=Path,
        metavar="DIR",
        help="serve the CTP v1 files (or the website's all-states-history.csv) in DIR",
    )
    source.add_argument(
        "--synthetic", action="store_true", help="serve the synthetic dataset (in memory)"
    )
    source.add_argument(
        "--editions",
        type=Path,
        nargs="+",
        metavar="DIR",
        help=(
            "serve these dataset folders one after the other, from the first: POST "
            '/_control/edition moves to the next, PUT /_control/edition {"edition": N} to any '
            "(with or without --control); an edition lacking a kind of records keeps the "
            f"previous edition's. Default: ${ENV_EDITIONS} (folders separated by "
            f"'{os.pathsep}', or '{CTP_EDITIONS}': --ctp-editions), when no other source is given"
        ),
    )
    source.add_argument(
        "--ctp-editions",
        action="store_true",
        help=(
            "--editions with the COVID Tracking Project's three real editions of the states "
            "history in <repo root>/../shared/covidtracking: 2020-09-02, 2020-12-06, 2021-03-07"
        ),
    )
    parser.add_argument(
        "--last-days",
        type=int,
        metavar="N",
        default=os.environ.get(ENV_LAST_DAYS) or None,  # a string: argparse converts it
        help=(
            "serve only the N newest dates of the dataset's us and states daily records (their "
            "files rendered from the records kept; current, info and status as they are): a "
            "real dataset a refresh goes through quickly. One dataset only, not editions. "
            f"Default: ${ENV_LAST_DAYS}, else every date"
        ),
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help=(
            "enable the control API for tests: PUT/GET/DELETE /_control/faults (inject "
            "status, delay, truncate, empty, schema, content_type, not_modified or body "
            "faults into GETs of a path), GET/DELETE /_control/requests (request counts); "
            "off by default, /_control/* is then 404"
        ),
    )
    parser.add_argument(
        "--github-raw",
        action="store_true",
        help=(
            "answer like raw.githubusercontent.com serves the archived CTP files (the "
            "fetcher's default upstream): the v1 paths under "
            f"{GITHUB_RAW_PREFIX}/, every file as {GITHUB_RAW_CONTENT_TYPE}, ETag and 304 on "
            "If-None-Match, no Last-Modified (point UPSTREAM_BASE_URL at "
            f"http://HOST:PORT{GITHUB_RAW_PREFIX}/)"
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8001, help="port to bind (8001)")
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="uvicorn log level (warning)",
    )
    _synthetic_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    write = commands.add_parser(
        "write-synthetic",
        help="write the synthetic dataset's files into DIR and exit",
        description="Write the synthetic dataset's files, named like the archive's, into DIR.",
    )
    write.add_argument("directory", type=Path, metavar="DIR", help="folder (created if missing)")
    _synthetic_options(write, defaults=False)
    return parser


def _synthetic_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # The subcommand's copies must not overwrite values given before it: no defaults there.
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--start",
        type=date.fromisoformat,
        default=default(DEFAULT_START),
        metavar="YYYY-MM-DD",
        help=f"synthetic: first day ({DEFAULT_START})",
    )
    parser.add_argument(
        "--end",
        type=date.fromisoformat,
        default=default(DEFAULT_END),
        metavar="YYYY-MM-DD",
        help=f"synthetic: last day ({DEFAULT_END})",
    )
    parser.add_argument(
        "--seed", type=int, default=default(DEFAULT_SEED), help=f"synthetic: seed ({DEFAULT_SEED})"
    )


def choose_editions(args: argparse.Namespace) -> Editions | None:
    """The editions the arguments (or, failing them, ``$REPLAY_EDITIONS``) ask for (None: one
    dataset)."""
    if args.ctp_editions:
        return Editions(ctp_editions())
    if args.editions:
        return Editions(args.editions)
    if args.dataset is None and not args.synthetic:
        from_env = os.environ.get(ENV_EDITIONS, "")
        if from_env == CTP_EDITIONS:
            return Editions(ctp_editions())
        if from_env:
            return Editions([Path(part) for part in from_env.split(os.pathsep) if part])
    return None


def choose_dataset(args: argparse.Namespace) -> Dataset:
    """The dataset the arguments (or, failing them, the environment) ask for."""
    if args.dataset is not None:
        return load_dataset(args.dataset)
    if not args.synthetic:
        from_env = os.environ.get(ENV_DATASET_DIR)
        if from_env:
            return load_dataset(from_env)
        archive = default_archive_dir()
        if archive is not None:
            return load_dataset(archive)
    return synthetic_dataset(start=args.start, end=args.end, seed=args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Tens of thousands of records parsed and every path's bytes built, to be kept while the
    # server runs: no cyclic collection meanwhile (it would walk them again and again for
    # nothing), then frozen.
    gc.disable()
    try:
        if args.command == "write-synthetic":
            written = write_synthetic_dataset(
                args.directory, start=args.start, end=args.end, seed=args.seed
            )
            print(f"{_PROG}: wrote {len(written)} files to {args.directory}", file=sys.stderr)
            return 0
        editions = choose_editions(args)
        if editions is not None and args.last_days is not None:
            raise ValueError("--last-days cuts one dataset, not editions")
        dataset = editions.current if editions is not None else choose_dataset(args)
        if args.last_days is not None:
            dataset = last_days(dataset, args.last_days)
    except (OSError, ValueError) as error:
        print(f"{_PROG}: error: {error}", file=sys.stderr)
        return 2
    app = create_app(dataset, control=args.control, github_raw=args.github_raw, editions=editions)
    gc.freeze()
    gc.enable()
    control = f", control API at http://{args.host}:{args.port}/_control/" if args.control else ""
    print(
        f"{_PROG}: serving {dataset.source} ({dataset.layout}, {len(app.state.paths)} paths) "
        f"at http://{args.host}:{args.port}{app.state.prefix}/v1/{control}",
        file=sys.stderr,
        flush=True,
    )
    # workers=1: uvicorn would otherwise take WEB_CONCURRENCY (the api's setting) from the
    # environment that `make run` shares with every process.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
