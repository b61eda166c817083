"""Structured logs without PHI.

Every log record the engine writes carries its facts in ``extra`` fields — message ids, control
IDs, message types, routes, destinations, outcomes, error classes — and never field values or
payloads. ``ENGINE_LOG_FORMAT=json`` (the default for ``engine serve``) writes one JSON object a
line with those fields; ``text`` writes them as ``key=value`` after the message, for a terminal.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["configure_logging"]

# attributes every LogRecord has; anything else came from ``extra=``
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, event, and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info and record.exc_info[0] is not None:
            # the exception's class and where, not its text (which may quote data)
            data["error"] = record.exc_info[0].__name__
        return orjson.dumps(data, default=str).decode()


class TextFormatter(logging.Formatter):
    """``time level logger event key=value ...``; an exception as ``error=Class``, no traceback."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        if record.exc_info and record.exc_info[0] is not None:
            # as in JSON: the exception's class, never its text or traceback (either may quote data)
            fields.setdefault("error", record.exc_info[0].__name__)
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S")
        line = f"{stamp} {record.levelname:<7} {record.name} {record.getMessage()}"
        return f"{line} {extra}" if extra else line


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log would print request paths (identifiers in query strings)
    logging.getLogger("uvicorn.access").disabled = True
    # migrations and the scheduler narrate every step at INFO; their warnings still show
    for noisy in ("alembic", "apscheduler"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))
    # httpx logs every request's URL at INFO (httpcore its connections at DEBUG): a patient
    # search's URL carries the MRN (athena's searchterm=, Epic's Patient?identifier=), so
    # neither may log below WARNING whatever the engine's level; the adapters log their own
    # requests with ids and outcomes
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(root.level, logging.WARNING))
