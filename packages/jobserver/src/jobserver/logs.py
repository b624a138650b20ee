"""structlog set-up: JSON lines by default, the console renderer on a TTY or when asked."""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.tracebacks import ExceptionDictTransformer


class _StdlibToStructlog(logging.Handler):
    """jobcore logs with the standard library (it must not need structlog); its records join the
    server's structured log instead of Python's bare last-resort output."""

    def emit(self, record: logging.LogRecord) -> None:
        extra = {"exc_info": record.exc_info} if record.exc_info else {}
        structlog.get_logger(record.name).log(record.levelno, record.getMessage(), **extra)


def configure_logging(log_format: str | None) -> None:
    """Log to stderr. `log_format` is "json", "console", or None (console on a TTY, else JSON)."""
    fmt = log_format or ("console" if sys.stderr.isatty() else "json")
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
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    jobcore_log = logging.getLogger("jobcore")
    if not any(isinstance(h, _StdlibToStructlog) for h in jobcore_log.handlers):
        jobcore_log.addHandler(_StdlibToStructlog())
    jobcore_log.setLevel(logging.INFO)
