"""jobcore.output_log's index readers: stream filters, start times, tails, following and closing."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from support.waiting import wait_until

from jobcore import jobdir
from jobcore.output_log import (
    ANY_STREAM,
    NO_STREAM,
    STDERR,
    STDOUT,
    IndexedOutputReader,
    OutputWriter,
    first_offset_since,
    read_index,
    tail_offset,
)


def write(directory: Path, *chunks: tuple[int, bytes]) -> OutputWriter:
    writer = OutputWriter(directory, cap=None)
    for stream, data in chunks:
        writer.append(stream, data)
        writer.flush_index()
        time.sleep(0.001)  # chunks a millisecond apart, well past the 2 us `since` slack
    return writer


def pieces(reader: IndexedOutputReader) -> list[tuple[int, bytes, int]]:
    return [(offset, data, stream) for offset, data, stream, _ in reader]


def ended(directory: Path) -> None:
    jobdir.write_json(directory / jobdir.EXIT, {"state": "exited"})


LOG = ((STDOUT, b"o1\no2\n"), (STDERR, b"e1\n"), (STDOUT, b"o3\npartial"), (STDERR, b"e2\ne3\n"))


def test_pieces_follow_the_index_with_their_streams(tmp_path: Path) -> None:
    write(tmp_path, *LOG).close(durable=False)
    everything = pieces(IndexedOutputReader(tmp_path, follow=False))
    assert [(s, d) for _, d, s in everything] == [(s, d) for s, d in LOG]
    assert [o for o, _, _ in everything] == [0, 6, 9, 19]
    assert b"".join(d for _, d, s in pieces(IndexedOutputReader(tmp_path, follow=False, stream=STDERR))) == (
        b"e1\ne2\ne3\n"
    )
    assert pieces(IndexedOutputReader(tmp_path, follow=False, stream=NO_STREAM)) == []
    # From an offset inside a chunk: the rest of that chunk, then the others.
    assert pieces(IndexedOutputReader(tmp_path, 3, follow=False))[0] == (3, b"o2\n", STDOUT)


@pytest.mark.parametrize(
    ("lines", "stream", "expected"),
    [
        (0, ANY_STREAM, b""),
        (1, ANY_STREAM, b"e3\n"),
        # Lines of the interleaved output, as a terminal showed it: "partial" and "e2" are one line.
        (2, ANY_STREAM, b"partiale2\ne3\n"),
        (3, ANY_STREAM, b"o3\npartiale2\ne3\n"),
        (100, ANY_STREAM, b"o1\no2\ne1\no3\npartiale2\ne3\n"),
        (1, STDOUT, b"partial"),
        (2, STDOUT, b"o3\npartial"),
        (1, STDERR, b"e3\n"),
    ],
)
def test_tail_offset_counts_lines_of_the_selected_stream(
    tmp_path: Path, lines: int, stream: int, expected: bytes
) -> None:
    write(tmp_path, *LOG).close(durable=False)
    start = tail_offset(tmp_path, lines, stream)
    reader = IndexedOutputReader(tmp_path, start, follow=False, stream=stream)
    assert b"".join(d for _, d, _ in pieces(reader)) == expected


def test_first_offset_since(tmp_path: Path) -> None:
    write(tmp_path, *LOG).close(durable=False)
    records = read_index(tmp_path)
    assert first_offset_since(tmp_path, records[2][3]) == records[2][0]
    # A time a microsecond past the chunk's (a double's rounding) still finds that chunk.
    assert first_offset_since(tmp_path, records[2][3] + 1000) == records[2][0]
    assert first_offset_since(tmp_path, records[-1][3] + 1_000_000) is None  # a millisecond later


def test_a_follower_gets_new_records_and_ends_with_the_job(tmp_path: Path) -> None:
    writer = write(tmp_path, (STDOUT, b"first\n"))
    reader = IndexedOutputReader(tmp_path, follow=True)
    got: list[bytes] = []
    thread = threading.Thread(target=lambda: got.extend(d for _, d, _, _ in reader))
    thread.start()
    time.sleep(0.2)
    writer.append(STDERR, b"second\n")
    writer.flush_index()
    writer.close(durable=False)
    ended(tmp_path)
    thread.join(10)
    assert not thread.is_alive(), "the follower did not end with the job"
    assert got == [b"first\n", b"second\n"]


def test_close_from_another_thread_wakes_a_waiting_follower(tmp_path: Path) -> None:
    write(tmp_path, (STDOUT, b"x")).close(durable=False)
    reader = IndexedOutputReader(tmp_path, follow=True)
    got: list[bytes] = []
    thread = threading.Thread(target=lambda: got.extend(d for _, d, _, _ in reader))
    thread.start()
    wait_until(lambda: got == [b"x"], 10, "the follower to take what there is (then it waits)")
    assert thread.is_alive()  # waiting for more
    reader.close()
    thread.join(10)
    assert not thread.is_alive()
    assert reader.closed


def _fsynced(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The fds os.fsync is called on from now on (and still flushed)."""
    calls: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_a_log_nothing_was_written_to_closes_without_flushing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fsynced(monkeypatch)
    OutputWriter(tmp_path, cap=None).close(durable=True)
    assert calls == []
    assert (tmp_path / jobdir.OUTPUT).read_bytes() == b"" and read_index(tmp_path) == []


def test_a_log_with_output_is_flushed_output_and_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fsynced(monkeypatch)
    writer = OutputWriter(tmp_path, cap=None)
    writer.append(STDOUT, b"hello\n")
    writer.close(durable=True)
    assert len(calls) == 2
    assert (tmp_path / jobdir.OUTPUT).read_bytes() == b"hello\n"
    assert [(o, n, s) for o, n, s, _ in read_index(tmp_path)] == [(0, 6, STDOUT)]
    calls.clear()
    OutputWriter(tmp_path, cap=None).close(durable=True)  # reopened (a re-attached shim): flushed again
    assert len(calls) == 2


def test_a_rounds_chunks_of_one_stream_share_one_record_and_the_index_size_is_counted(tmp_path: Path) -> None:
    writer = OutputWriter(tmp_path, cap=None)
    for data in (b"a", b"bc", b"def"):  # one round of the shim's loop: three reads of stdout
        writer.append(STDOUT, data)
    writer.append(STDERR, b"E")
    writer.append(STDERR, b"F")
    writer.flush_index()
    writer.append(STDERR, b"G")  # the next round: a record of its own
    assert writer.index_size == 3 * 24
    writer.close(durable=False)
    assert [(offset, length, stream) for offset, length, stream, _ in read_index(tmp_path)] == [
        (0, 6, STDOUT),
        (6, 2, STDERR),
        (8, 1, STDERR),
    ]
    assert (tmp_path / jobdir.OUTPUT_INDEX).stat().st_size == 3 * 24
    assert b"".join(d for _, d, _ in pieces(IndexedOutputReader(tmp_path, follow=False))) == b"abcdefEFG"
    # Reopened (a re-attached shim), it counts the index already on disk.
    assert OutputWriter(tmp_path, cap=None).index_size == 3 * 24
