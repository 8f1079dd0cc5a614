"""Structured logs: one JSON object per line on stdout (journald keeps stdout of a service),
or plain text for a terminal. Every record carries an ``event`` name and its fields."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGER_NAME = "edgekit.runtime"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(time.time(), 6), "level": record.levelname.lower(),
                               "event": getattr(record, "event", record.getMessage())}
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None) or {}
        kv = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{record.levelname.lower():7s} {getattr(record, 'event', record.getMessage())} {kv}".rstrip()


def setup_logging(fmt: str = "json", level: str = "info", stream: Any = None) -> logging.Logger:
    """Configure the runtime logger (idempotent: replaces its handler)."""
    log = logging.getLogger(LOGGER_NAME)
    log.handlers.clear()
    h = logging.StreamHandler(stream or sys.stdout)
    h.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    log.addHandler(h)
    log.setLevel(level.upper())
    log.propagate = False
    return log


def emit(log: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """Log ``event`` with structured ``fields``."""
    log.log(level, event, extra={"event": event, "fields": fields})
