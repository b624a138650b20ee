"""Route what gRPC's C core writes to file descriptor 2 into the structured log.

gRPC's C core logs through absl straight to fd 2 (`E1201 20:15:02.123456 4242 handshaker.cc:123]
Handshake failed ...`), bypassing Python: in a JSON log those lines would be the only ones that are not
JSON. `NativeStderr` points fd 2 at a pipe, read by one thread that turns every line into a structlog
event (logger `grpc`, event `grpc`, with `message`, `source` and the severity as the level; a line that
is not absl's format, such as a child process's complaint, becomes event `stderr`). Python's own
`sys.stderr`, and so structlog, keep writing to the original stderr directly.

The lines pass the same `--log-level` filter as every other event: the C core logs at INFO and above by
default (a failed TLS handshake is an INFO line), so `--log-level warning` drops those. For the C core's
debug lines, set `GRPC_VERBOSITY=DEBUG` (and `GRPC_TRACE=...`) in the server's environment: grpc reads
them once, when it is first imported, so they cannot come from a flag.
"""

from __future__ import annotations

import os
import re
import selectors
import sys
import threading
from typing import Any, TextIO

import structlog

#: absl's prefix: severity, MMDD, time, thread id, file:line.
ABSL_LINE = re.compile(
    r"^(?P<severity>[IWEF])\d{4} [\d:.]+\s+\d+ (?P<source>[^\]\s]+:\d+)\] ?(?P<message>.*)$"
)
_LEVEL = {"I": "info", "W": "warning", "E": "error", "F": "critical"}
#: Longest line kept whole; longer ones are cut (a runaway writer must not grow our memory).
MAX_LINE = 16 * 1024


def route_line(log: Any, line: str) -> None:
    """Log one line written to fd 2 as a structured event."""
    match = ABSL_LINE.match(line)
    if match is None:
        log.warning("stderr", message=line)
        return
    level = _LEVEL[match["severity"]]
    getattr(log, level)("grpc", message=match["message"], source=match["source"])


class NativeStderr:
    def __init__(self) -> None:
        self._log = structlog.get_logger("grpc")
        self._saved: int | None = None
        self._read: int | None = None
        self._wake_read: int | None = None
        self._wake_write: int | None = None
        self._thread: threading.Thread | None = None
        self._stream: TextIO | None = None
        self._sys_stderr: TextIO | None = None

    def start(self) -> TextIO:
        """Redirect fd 2; returns a stream on the original stderr, also installed as `sys.stderr`.

        Without a usable fd 2 (closed by whoever started us) nothing is redirected: `sys.stderr`."""
        sys.stderr.flush()
        try:
            self._saved = os.dup(2)
        except OSError:
            return sys.stderr
        self._read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._wake_read, self._wake_write = os.pipe()
        self._stream = open(os.dup(self._saved), "w", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
        self._sys_stderr, sys.stderr = sys.stderr, self._stream
        self._thread = threading.Thread(target=self._pump, name="jobserver-stderr", daemon=True)
        self._thread.start()
        return self._stream

    def _pump(self) -> None:
        assert self._read is not None and self._wake_read is not None
        pending = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self._read, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            stopping = False
            while True:
                ready = {key.fd for key, _ in selector.select(timeout=None if not stopping else 0)}
                if self._wake_read in ready:
                    stopping = True
                if self._read not in ready:
                    if stopping:
                        break
                    continue
                chunk = os.read(self._read, 65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    route_line(self._log, line.decode("utf-8", "replace").rstrip("\r"))
                if len(pending) > MAX_LINE:
                    route_line(self._log, pending[:MAX_LINE].decode("utf-8", "replace"))
                    pending = b""
        if pending:
            route_line(self._log, pending.decode("utf-8", "replace"))

    def stop(self) -> None:
        """Put fd 2 back, log what is left in the pipe, join the thread, close everything."""
        if self._saved is None:
            return
        os.dup2(self._saved, 2)  # our write end of the pipe closes here
        assert self._wake_write is not None
        os.write(self._wake_write, b"x")
        if self._thread is not None:
            self._thread.join(10)
        if self._sys_stderr is not None:
            sys.stderr = self._sys_stderr
        for fd in (self._saved, self._read, self._wake_read, self._wake_write):
            if fd is not None:
                os.close(fd)
        if self._stream is not None:
            self._stream.close()
        self._saved = self._read = self._wake_read = self._wake_write = None
        self._thread = self._stream = self._sys_stderr = None
