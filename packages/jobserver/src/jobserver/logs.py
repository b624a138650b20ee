"""structlog set-up: JSON lines by default, the console renderer on a TTY or when asked.

Everything ends up in the same stream and format: structlog events, the standard `logging` records of
jobcore and other libraries (bridged here), and gRPC's C-core lines (`jobserver.native_logs`).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _ToStructlog(logging.Handler):
    """Hands standard-library log records (jobcore's, for one) to structlog, under the record's logger."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log = structlog.get_logger(record.name)
            method = getattr(log, record.levelname.lower(), log.error)
            method(record.getMessage(), logger=record.name, exc_info=record.exc_info or None)
        except Exception:
            self.handleError(record)


def configure_logging(log_format: str | None, level: str = "info", stream: TextIO | None = None) -> None:
    """Log to `stream` (stderr). `log_format` is "json", "console", or None (console on a TTY, else
    JSON); `level` is the least severe level logged: "debug", "info", "warning" or "error"."""
    out = stream or sys.stderr
    fmt = log_format or ("console" if out.isatty() else "json")
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # No local variables in logged tracebacks: they would copy requests (env values) into logs.
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
            if fmt == "json"
            else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ToStructlog)]:
        root.removeHandler(handler)
    root.addHandler(_ToStructlog())
    root.setLevel(LEVELS[level])
