"""The per-job output log: a raw payload file plus a fixed-record index.

`output` holds exactly the bytes the command wrote to stdout and stderr, in the order the shim read
them: what a terminal would have shown. Readers address it by byte offset. `output.idx` has one
record per chunk — (offset, length, stream, time in ns) — for stream filtering and timestamps.

The shim moves pipe data into the file with splice(2) (no copy through user space) and is the only
writer, so it tracks the file size itself and never needs O_APPEND (which splice refuses).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time
from pathlib import Path

from jobcore.jobdir import OUTPUT, OUTPUT_INDEX

STDOUT = 1
STDERR = 2

#: offset (u64), length (u32), stream (u8), padding, time_ns (i64)
INDEX_RECORD = struct.Struct("<QIB3xq")


class OutputWriter:
    """Appends chunks to a job's output log, up to `cap` bytes (None = no cap)."""

    def __init__(self, directory: Path, cap: int | None) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        self._out = os.open(directory / OUTPUT, flags, 0o600)
        self._idx = os.open(directory / OUTPUT_INDEX, flags | os.O_APPEND, 0o600)
        self.size = os.fstat(self._out).st_size
        self.cap = cap
        #: True once output was dropped because the cap was reached.
        self.capped = False
        #: The errno (ENOSPC, EDQUOT, EIO...) once the log could not be written: output is then dropped.
        self.write_error: int | None = None
        self._splice_ok = True
        self._index = bytearray()

    def _room(self, want: int) -> int:
        if self.write_error is not None:
            return 0
        if self.cap is None:
            return want
        return max(0, min(want, self.cap - self.size))

    def _record(self, stream: int, length: int) -> None:
        # Buffered: one write of the index per round of the shim's loop (flush_index), not per chunk.
        self._index.extend(INDEX_RECORD.pack(self.size, length, stream, time.time_ns()))
        self.size += length

    def flush_index(self) -> None:
        if self._index:
            try:
                os.write(self._idx, self._index)
            except OSError as exc:
                self.write_error = exc.errno
            self._index.clear()

    def drain_pipe(self, fd: int, stream: int, max_bytes: int = 8 << 20) -> tuple[int, bool]:
        """Move what the pipe `fd` holds into the log, up to `max_bytes` in this call, without
        blocking. Returns (bytes taken, end of file reached). Bytes past the cap are read and
        dropped, and `capped` is set."""
        taken = 0
        while taken < max_bytes:
            room = self._room(max_bytes - taken)
            try:
                if room and self._splice_ok:
                    try:
                        moved = os.splice(
                            fd, self._out, room, offset_dst=self.size, flags=os.SPLICE_F_NONBLOCK
                        )
                    except BlockingIOError:
                        raise
                    except OSError as exc:
                        if exc.errno == errno.EINVAL:
                            self._splice_ok = False  # no splice support here: copy instead
                        else:
                            self.write_error = exc.errno  # e.g. ENOSPC: drop output from now on
                        continue
                    if moved:
                        self._record(stream, moved)
                else:
                    data = _read_nonblocking(fd, max_bytes - taken)
                    moved = len(data)
                    if data:
                        self.append(stream, data)
            except BlockingIOError:
                return taken, False
            if moved == 0:
                return taken, True
            taken += moved
        return taken, False

    def append(self, stream: int, data: bytes) -> None:
        """Append `data`, dropping (and flagging) what does not fit under the cap."""
        keep = self._room(len(data))
        if keep < len(data) and self.write_error is None:
            self.capped = True
        view = memoryview(data)[:keep]
        written = 0
        try:
            while written < keep:
                written += os.pwrite(self._out, view[written:], self.size + written)
        except OSError as exc:
            self.write_error = exc.errno
        if written:
            self._record(stream, written)

    def close(self, *, durable: bool = True) -> None:
        self.flush_index()
        for fd in (self._out, self._idx):
            try:
                if durable:
                    os.fsync(fd)
            except OSError as exc:
                self.write_error = self.write_error or exc.errno
            finally:
                os.close(fd)


def _read_nonblocking(fd: int, size: int) -> bytes:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if not flags & os.O_NONBLOCK:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    return os.read(fd, size)


def read_index(directory: Path) -> list[tuple[int, int, int, int]]:
    """Every index record as (offset, length, stream, time_ns)."""
    try:
        data = (directory / OUTPUT_INDEX).read_bytes()
    except FileNotFoundError:
        return []
    usable = len(data) - len(data) % INDEX_RECORD.size
    return [INDEX_RECORD.unpack_from(data, i) for i in range(0, usable, INDEX_RECORD.size)]
