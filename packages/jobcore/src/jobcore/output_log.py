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
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from jobcore.jobdir import OUTPUT, OUTPUT_INDEX

STDOUT = 1
STDERR = 2

#: offset (u64), length (u32), stream (u8), padding, time_ns (i64)
INDEX_RECORD = struct.Struct("<QIB3xq")
#: `drain_pipe` returns after a chunk smaller than this instead of asking the pipe again.
SHORT_CHUNK = 64 * 1024
_LENGTH = struct.Struct("<I")
_LENGTH_AT = 8
_STREAM_AT = 12
_MAX_LENGTH = (1 << 32) - 1


class Progress(Protocol):
    """What a follower watches of a running job (jobcore.watcher.WatchedJob): a condition, a
    generation that moves on every change of the job's directory, and its exit record once ended."""

    cond: threading.Condition
    generation: int
    exit: Any


class OutputReader(Iterator[bytes]):
    """An iterator over a job's raw output from an offset; see `Worker.output`.

    Each chunk is what is stored past the offset, up to `chunk_size` bytes. With `follow`, it waits
    for the job's generation to move (the watcher's inotify) until the job has ended (or `closed()`
    says its Worker has) and every byte was read. `close()` may be called from any thread: it wakes a
    `next()` that is waiting, which then ends the iteration. Holds one file descriptor and at most one
    chunk in memory.
    """

    def __init__(
        self,
        path: Path,
        job: Progress,
        offset: int,
        follow: bool,
        chunk_size: int,
        *,
        closed: Callable[[], bool] = lambda: False,
    ) -> None:
        self._job = job
        self._worker_closed = closed
        self.offset = offset
        self._follow = follow
        self._chunk = chunk_size
        self._closed = False
        self._fd_lock = threading.Lock()
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._fd = -1  # the job never started: it has no output

    def __iter__(self) -> OutputReader:
        return self

    def _read(self) -> bytes:
        with self._fd_lock:
            if self._fd < 0:
                return b""
            return os.pread(self._fd, self._chunk, self.offset)

    def _over(self) -> bool:
        return self._job.exit is not None or self._worker_closed()

    def __next__(self) -> bytes:
        job = self._job
        while not self._closed:
            with job.cond:
                generation = job.generation
                ended = self._over()
            data = self._read()
            if data:
                self.offset += len(data)
                return data
            if ended or not self._follow:
                break
            with job.cond:
                while job.generation == generation and not self._closed and not self._over():
                    job.cond.wait()
        self.close()
        raise StopIteration

    def next_chunk(self) -> bytes | None:
        """The next chunk, or None at the end (for callers that cannot use StopIteration, e.g. threads)."""
        return next(self, None)

    def close(self) -> None:
        """End the iteration and release the file; safe from any thread, idempotent."""
        self._closed = True
        with self._job.cond:
            self._job.cond.notify_all()
        with self._fd_lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> OutputReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class OutputWriter:
    """Appends chunks to a job's output log, up to `cap` bytes (None = no cap)."""

    def __init__(self, directory: str | os.PathLike[str], cap: int | None) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        where = os.fspath(directory)
        self._out = os.open(f"{where}/{OUTPUT}", flags, 0o600)
        self._idx = os.open(f"{where}/{OUTPUT_INDEX}", flags | os.O_APPEND, 0o600)
        self.size = os.fstat(self._out).st_size
        self.cap = cap
        #: True once output was dropped because the cap was reached.
        self.capped = False
        #: The errno (ENOSPC, EDQUOT, EIO...) once the log could not be written: output is then dropped.
        self.write_error: int | None = None
        self._splice_ok = True
        #: Records not written yet. A chunk of the same stream as the last one extends it rather than
        #: adding one: a round of the shim's loop has a record per stream.
        self._index = bytearray()
        #: The index's size on disk plus what `_index` holds.
        self.index_size = os.fstat(self._idx).st_size
        #: Whether anything was ever written to the files (what close(durable=True) must flush).
        self._wrote_output = self.size > 0
        self._wrote_index = self.index_size > 0

    def _room(self, want: int) -> int:
        if self.write_error is not None:
            return 0
        if self.cap is None:
            return want
        return max(0, min(want, self.cap - self.size))

    def _record(self, stream: int, length: int) -> None:
        # Buffered: one write of the index per round of the shim's loop (flush_index), not per chunk.
        index = self._index
        last = len(index) - INDEX_RECORD.size
        extend = bool(index) and index[last + _STREAM_AT] == stream
        if extend:
            merged = _LENGTH.unpack_from(index, last + _LENGTH_AT)[0] + length
            extend = merged <= _MAX_LENGTH
        if extend:
            _LENGTH.pack_into(index, last + _LENGTH_AT, merged)
        else:
            index.extend(INDEX_RECORD.pack(self.size, length, stream, time.time_ns()))
            self.index_size += INDEX_RECORD.size
        self.size += length

    def flush_index(self) -> None:
        if self._index:
            self._wrote_index = self._wrote_output = True
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
            if moved < SHORT_CHUNK:
                # The pipe held little: the rest comes in the caller's next round (a command writing
                # a byte at a time would otherwise keep this loop splicing a few bytes per call).
                return taken, False
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
        """Close the log; with `durable`, flush what was written to disk first. A file nothing was
        written to is not flushed: there is no data to lose, and its name is made durable with the
        job directory's, which the exit record's durable write flushes after this (the common job that
        prints nothing then ends with two fsyncs instead of four)."""
        self.flush_index()
        for fd, wrote in ((self._out, self._wrote_output), (self._idx, self._wrote_index)):
            try:
                if durable and wrote:
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


# ---------------------------------------------------------------------------- annotated reading
# What `jobctl logs --stderr/--since/--tail/-t` need: the payload cut at its index records, each piece
# with its stream and time. The index is written just after the payload (once per round of the
# shim's loop), so these readers follow the index, never the payload: bytes are sent once their
# record is on disk.

#: Read the index this many records at a time (memory per reader stays bounded).
_INDEX_BLOCK = 4096
#: Largest piece of one record returned at once.
PIECE_BYTES = 256 * 1024
#: Any stream (the default filter), or no data at all (the reader then only waits for the job's end).
ANY_STREAM = 0
NO_STREAM = -1


def _records(data: bytes) -> list[tuple[int, int, int, int]]:
    usable = len(data) - len(data) % INDEX_RECORD.size
    return [INDEX_RECORD.unpack_from(data, i) for i in range(0, usable, INDEX_RECORD.size)]


#: A chunk written up to this long before a `since` time still counts as written at it: clients get
#: times as a double of Unix seconds (about 0.24 us apart at today's dates) and as microsecond
#: datetimes, so "since the time of that chunk" must include that chunk whatever the rounding.
SINCE_SLACK_NS = 2000


def _at_or_after(time_ns: int, since_ns: int) -> bool:
    return time_ns >= since_ns - SINCE_SLACK_NS


def first_offset_since(directory: Path, since_ns: int) -> int | None:
    """The offset of the first chunk written at or after `since_ns` (Unix ns, within SINCE_SLACK_NS),
    or None if there is none yet."""
    try:
        f = (directory / OUTPUT_INDEX).open("rb")
    except FileNotFoundError:
        return None
    with f:
        while block := f.read(INDEX_RECORD.size * _INDEX_BLOCK):
            for offset, _length, _stream, time_ns in _records(block):
                if _at_or_after(time_ns, since_ns):
                    return offset
    return None


def tail_offset(directory: Path, lines: int, stream: int = ANY_STREAM) -> int:
    """Where the last `lines` lines of the stored output (of `stream` only, unless ANY_STREAM) begin.

    A newline that ends the output does not start another line (as `tail -n`). 0 lines: the end.
    """
    try:
        idx = (directory / OUTPUT_INDEX).open("rb")
    except FileNotFoundError:
        return 0
    with idx, (directory / OUTPUT).open("rb") as out:
        size = idx.seek(0, os.SEEK_END)
        end = size - size % INDEX_RECORD.size
        start = 0
        newlines = 0
        last_byte = True
        while end > 0:
            begin = max(0, end - INDEX_RECORD.size * _INDEX_BLOCK)
            idx.seek(begin)
            records = _records(idx.read(end - begin))
            end = begin
            for offset, length, record_stream, _time_ns in reversed(records):
                if stream not in (ANY_STREAM, record_stream):
                    continue
                if lines == 0:
                    return offset + length
                position = offset + length
                while position > offset:  # this record's bytes, backwards, a block at a time
                    block_start = max(offset, position - PIECE_BYTES)
                    out.seek(block_start)
                    data = out.read(position - block_start)
                    cut = len(data)
                    if last_byte:
                        last_byte = False
                        if data.endswith(b"\n"):
                            cut -= 1
                    while (found := data.rfind(b"\n", 0, cut)) >= 0:
                        newlines += 1
                        if newlines == lines:
                            return block_start + found + 1
                        cut = found
                    position = block_start
                start = offset  # fewer lines than asked so far: from this record on
        return start


class IndexedOutputReader:
    """A job's output from `offset` as (offset, data, stream, time_ns) pieces cut at index records.

    `stream` keeps one stream's pieces only (STDOUT, STDERR; ANY_STREAM for both; NO_STREAM for
    none: the iteration then just ends with the job). `since_ns` skips pieces written earlier (by more
    than SINCE_SLACK_NS), up to the first that is not. With
    `follow`, waits for new records (inotify on the job's directory) until the job has ended (its
    exit record exists) and every record was read. `close()`, from any thread, ends the iteration.
    Holds two file descriptors, an inotify instance, a wake-up pipe and at most one block of records.
    """

    def __init__(
        self,
        directory: Path,
        offset: int = 0,
        *,
        follow: bool = True,
        stream: int = ANY_STREAM,
        since_ns: int | None = None,
    ) -> None:
        from jobcore import linux
        from jobcore.jobdir import EXIT

        self._dir = directory
        self._exit = directory / EXIT
        self.offset = offset
        self._follow = follow
        self._stream = stream
        self._since_ns = since_ns
        self._closed = False
        self._busy = False
        self._lock = threading.Lock()
        self._pending: list[tuple[int, int, int, int]] = []
        self._index_pos = 0
        self._fds: list[int] = []
        self._inotify: linux.Inotify | None = linux.Inotify()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        # Watch before the first read, so no record written in between goes unnoticed.
        self._inotify.add_watch(str(directory), linux.IN_MODIFY | linux.IN_MOVED_TO | linux.IN_CREATE)
        self._idx = self._open(OUTPUT_INDEX)
        self._out = self._open(OUTPUT)

    def _open(self, name: str) -> int:
        try:
            fd = os.open(self._dir / name, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return -1
        self._fds.append(fd)
        return fd

    def __iter__(self) -> IndexedOutputReader:
        return self

    def _refill(self) -> bool:
        """Read the next block of records; False when there is none yet."""
        if self._idx < 0:
            self._idx = self._open(OUTPUT_INDEX)
            self._out = self._open(OUTPUT) if self._out < 0 else self._out
            if self._idx < 0:
                return False
        data = os.pread(self._idx, INDEX_RECORD.size * _INDEX_BLOCK, self._index_pos)
        records = _records(data)
        self._index_pos += len(records) * INDEX_RECORD.size
        self._pending = records[::-1]  # popped from the end
        return bool(records)

    def _next_piece(self) -> tuple[int, bytes, int, int] | None:
        while self._pending or self._refill():
            offset, length, stream, time_ns = self._pending[-1]
            end = offset + length
            if end <= self.offset or self._stream not in (ANY_STREAM, stream):
                self._pending.pop()
                continue
            if self._since_ns is not None:
                if not _at_or_after(time_ns, self._since_ns):
                    self._pending.pop()
                    continue
                self._since_ns = None  # from the first piece at or after `since` on, everything
            start = max(offset, self.offset)
            data = os.pread(self._out, min(end - start, PIECE_BYTES), start) if self._out >= 0 else b""
            if not data:  # cannot happen while the payload precedes its record; do not spin on it
                self._pending.pop()
                continue
            self.offset = start + len(data)
            if self.offset >= end:
                self._pending.pop()
            return start, data, stream, time_ns
        return None

    def _wait(self) -> None:
        import select

        assert self._inotify is not None
        select.select([self._inotify.fd, self._wake_r], [], [])
        for _event in self._inotify.read_events():
            pass

    def __next__(self) -> tuple[int, bytes, int, int]:
        with self._lock:
            if self._closed:
                raise StopIteration
            self._busy = True
        try:
            while not self.closed:
                ended = self._exit.exists()  # before reading: once it exists, the index is complete
                piece = self._next_piece()
                if piece is not None:
                    return piece
                if ended or not self._follow:
                    break
                self._wait()
        finally:
            with self._lock:
                self._busy = False
                done = self.closed
            if done:
                self._release()
        self.close()
        raise StopIteration

    @property
    def closed(self) -> bool:
        """True once `close()` was called (another thread may call it at any time)."""
        return self._closed

    def close(self) -> None:
        """End the iteration and release everything; safe from any thread, idempotent.

        While another thread is inside `next()`, that thread releases the files once woken."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            busy = self._busy
        if busy:
            os.write(self._wake_w, b"x")
        else:
            self._release()

    def _release(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, []
            if self._wake_r >= 0:
                fds += [self._wake_r, self._wake_w]
                self._wake_r = self._wake_w = -1
            inotify, self._inotify = self._inotify, None
        for fd in fds:
            os.close(fd)
        if inotify is not None:
            inotify.close()

    def __enter__(self) -> IndexedOutputReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
