"""The ``stats-fetcher`` command: ``run`` (the service), ``refresh-once``, ``migrate``."""

from __future__ import annotations

import gc

# No cyclic garbage collection while the fetcher's modules load (about 700 of them): the
# collections that ran meanwhile (some 190) found almost nothing to free and cost about 15 %
# of the start-up's CPU, which every `refresh-once` and `migrate` pays. What the imports made
# lives as long as the process: frozen after them, no later collection walks it again.
gc.disable()

import argparse  # noqa: E402
import sys  # noqa: E402

import structlog  # noqa: E402
import uvloop  # noqa: E402
from opentelemetry import trace  # noqa: E402

from covid_stats_contract import schema  # noqa: E402
from covid_stats_runtime import tracing  # noqa: E402
from covid_stats_runtime.logs import configure_logging  # noqa: E402
from stats_fetcher import __version__, commands  # noqa: E402
from stats_fetcher.config import get_settings  # noqa: E402
from stats_fetcher.service import FetcherService  # noqa: E402

gc.freeze()
gc.enable()

log = structlog.get_logger("stats_fetcher")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stats-fetcher", description="Refresh COVID-19 statistics from the upstream API."
    )
    subcommands = parser.add_subparsers(dest="command", required=True)
    subcommands.add_parser("run", help="refresh at start, then every FETCH_INTERVAL_SECONDS")
    subcommands.add_parser(
        "refresh-once",
        help="one refresh, then exit: 0 when Redis then serves a current snapshot, 1 when "
        "it does not (no data, or a store failed), 2 when a running fetcher holds the lease",
    )
    migrate = subcommands.add_parser(
        "migrate",
        help="apply pending PostgreSQL migrations (exit 1, applying nothing, when a newer "
        "release applied one marked breaking)",
    )
    migrate.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for PostgreSQL to accept connections (default 30)",
    )
    args = parser.parse_args(argv)

    settings = get_settings()
    configure_logging(settings.log_level)
    if args.command == "migrate":
        try:
            migrated = uvloop.run(commands.migrate(settings, args.wait))
        except schema.NewerBreakingMigration as exc:
            log.error("migrate_refused", versions=exc.versions, reason=str(exc))
            return 1
        if migrated.newer:
            log.warning(
                "schema_newer_additive",
                versions=[m.version for m in migrated.newer],
                migrations=[m.describe() for m in migrated.newer],
                this_release=schema.LATEST_VERSION,
                action="none: additive migrations of a newer release, this release runs on",
            )
        log.info("migrated", applied=migrated.applied)
        return 0
    provider = tracing.create_tracer_provider("covid-stats-fetcher", __version__)
    if provider is not None:
        trace.set_tracer_provider(provider)
        tracing.instrument_clients(provider, redis=True, asyncpg=True, httpx=True)
    try:
        if args.command == "run":
            uvloop.run(FetcherService(settings, provider).run())
            return 0
        try:
            served = uvloop.run(commands.refresh_once(settings))
        except commands.LeaseHeld as exc:
            log.error("refresh_refused", reason=str(exc))
            return 2
        return 0 if served else 1
    finally:
        if provider is not None:
            provider.shutdown()  # export what is still queued


if __name__ == "__main__":
    sys.exit(main())
