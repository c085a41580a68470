"""Structured logs: one JSON object per line on stdout, for our events and for the standard
library's loggers alike (gunicorn, uvicorn, asyncio, the OpenTelemetry exporter).

While a span is active, every line carries its ``trace_id`` and ``span_id`` (the W3C hex
forms a tracing backend searches for), so a log line leads to its trace and back.
"""

from __future__ import annotations

import logging
import logging.config
import sys
from typing import Any

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger


def add_trace_ids(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Add the active span's ids (nothing when no span is recording or tracing is off)."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event["trace_id"] = format(context.trace_id, "032x")
        event["span_id"] = format(context.span_id, "016x")
    return event


# Shared by our loggers and the standard library's (through ProcessorFormatter).
_COMMON: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    add_trace_ids,
]


def logging_config(level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dictionary rendering the standard library's records
    as our JSON lines on stdout (gunicorn takes it as ``logconfig_dict``)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": structlog.stdlib.ProcessorFormatter,
                "foreign_pre_chain": [structlog.stdlib.add_logger_name, *_COMMON],
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(),
                ],
            }
        },
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"handlers": ["stdout"], "level": level},
        "loggers": {
            # gunicorn's and uvicorn's loggers, sent to the root's JSON handler.
            name: {"handlers": [], "propagate": True, "level": level}
            for name in ("gunicorn.error", "uvicorn", "uvicorn.error")
        }
        | {
            # Per-request lines of the servers: the api writes its own (sampled) access log.
            name: {"handlers": [], "propagate": False}
            for name in ("gunicorn.access", "uvicorn.access")
        },
    }


def configure_logging(level: str) -> None:
    logging.config.dictConfig(logging_config(level))
    structlog.configure(
        processors=[
            *_COMMON,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
