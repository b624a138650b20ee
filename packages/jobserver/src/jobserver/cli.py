"""`jobserver`: the daemon's entry point (flags, environment, config file, signals)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

# Importing the package first pins gRPC's TLS cipher list before grpc is imported (see __init__).
import jobserver  # noqa: F401  isort: skip

import structlog

from jobserver.config import ServerConfig, load_config
from jobserver.errors import ConfigError, StartupError
from jobserver.logs import configure_logging
from jobserver.native_logs import NativeStderr
from jobserver.server import JobServer


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"jobserver: error: {exc}", file=sys.stderr)
        return 2
    native = NativeStderr()  # gRPC's C-core lines into the structured log
    configure_logging(config.log_format, config.log_level, native.start())
    try:
        return _serve(config)
    finally:
        native.stop()


def _serve(config: ServerConfig) -> int:
    log = structlog.get_logger("jobserver")
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    def on_hangup(_signum: int, _frame: FrameType | None) -> None:
        # SIGHUP's default action would end the server silently. There are no log files to reopen
        # (logs go to stderr) and the configuration is read once: logged and otherwise ignored.
        log.warning("SIGHUP received and ignored: restart the server to apply a new configuration")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    server = JobServer(config)
    try:
        server.start()
    except StartupError as exc:
        log.error("cannot start", error=str(exc))
        print(f"jobserver: error: {exc}", file=sys.stderr)
        return 1
    # Python runs signal handlers in the main thread only, between bytecodes; a main thread parked in
    # a one-hour wait may run them late (a SIGHUP once went unlogged for 10 s under load), so it
    # comes round every second: any signal is handled within about a second.
    while not stop.wait(1.0):
        pass
    log.info("shutting down", signal=received[0] if received else None, grace=config.shutdown_grace_seconds)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
