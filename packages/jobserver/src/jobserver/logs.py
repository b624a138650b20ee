"""structlog set-up: JSON lines by default, the console renderer on a TTY or when asked.

Everything ends up in one stream, in one format, through one standard-library handler whose
`structlog.stdlib.ProcessorFormatter` renders every line:

* structlog events (the server's own) go to the standard `logging` logger of their name and are
  rendered by that formatter;
* standard `logging` records of any library (jobcore's, grpc's, ...) are rendered by the same
  formatter, with the same processors: `event` (the formatted message), `level`, `logger` (the
  record's logger), `timestamp`, and `exception` for a record with exc_info;
* Python `warnings` are captured into `logging` (logger `py.warnings`), so they are JSON lines too;
* gRPC's C-core lines, which bypass Python, are turned into structlog events by `jobserver.native_logs`.

One level (`--log-level`) filters them all alike.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _ServerHandler(logging.StreamHandler[TextIO]):
    """The one handler on the root logger (its type marks it, so a new configuration replaces it)."""


def configure_logging(log_format: str | None, level: str = "info", stream: TextIO | None = None) -> None:
    """Log to `stream` (stderr). `log_format` is "json", "console", or None (console on a TTY, else
    JSON); `level` is the least severe level logged: "debug", "info", "warning" or "error"."""
    out = stream or sys.stderr
    fmt = log_format or ("console" if out.isatty() else "json")
    threshold = LEVELS[level]
    #: What every line gets, whether it started as a structlog event or a standard logging record.
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: list[structlog.typing.Processor] = (
        [
            # No local variables in logged tracebacks: they would copy requests (env values) into logs.
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            structlog.processors.JSONRenderer(),
        ]
        if fmt == "json"
        else [structlog.dev.ConsoleRenderer()]
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = _ServerHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
        )
    )
    handler.setLevel(threshold)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ServerHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(threshold)
    logging.captureWarnings(True)
