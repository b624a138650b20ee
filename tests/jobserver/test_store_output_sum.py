"""`JobStore.output_bytes`, read at every StartJob for the output quota: each owner's sum over their
ended rows is kept by the store's connection as its rows are written, not summed over the rows at each
start. It must say exactly what summing the rows says, after any sequence of writes, and its cost must
not grow with the owner's history."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import attrs
import pytest

from jobcore.spec import Limits
from jobcore.status import JobState, JobStatus
from jobserver.store import JobStore

#: What the store answered before it kept the sums: every ended row of the owner, summed.
_SUMMED = """SELECT COALESCE(SUM(CASE WHEN json_valid(status)
                 THEN COALESCE(json_extract(status, '$.output_bytes'), 0) ELSE 0 END), 0)
             FROM jobs WHERE owner = ? AND ended"""


def _status(owner: str, output: int, state: JobState = JobState.RUNNING) -> JobStatus:
    ended = state is not JobState.RUNNING
    return JobStatus(
        id=str(uuid.uuid4()),
        owner=owner,
        argv=("/bin/true",),
        state=state,
        exit_code=0 if state is JobState.EXITED else None,
        started_at=time.time(),
        ended_at=time.time() if ended else None,
        limits=Limits(cpu=1.0),
        cwd="/",
        output_bytes=output,
        pid=None if ended else 4242,
    )


def _summed(path: Path, owner: str) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute(_SUMMED, (owner,)).fetchone()[0])
    finally:
        db.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    s = JobStore(tmp_path / "db")
    yield s
    s.close()


def _check(store: JobStore, path: Path, owners: tuple[str, ...] = ("alice", "bob", "carl")) -> None:
    for owner in owners:
        assert store.output_bytes(owner) == _summed(path, owner), owner


def test_the_kept_sums_equal_the_rows_summed_after_every_kind_of_write(
    store: JobStore, tmp_path: Path
) -> None:
    path = tmp_path / "db"
    running = _status("alice", 5)
    store.put(running, created_at=1.0)
    _check(store, path)
    assert store.output_bytes("alice") == 0  # a running job's record is not counted (its output is)
    ended = attrs.evolve(running, state=JobState.EXITED, exit_code=0, output_bytes=700, pid=None)
    store.put(ended)  # its end
    assert store.output_bytes("alice") == 700
    store.put(ended)  # the same end again (start-up reconciliation refreshes every row)
    assert store.output_bytes("alice") == 700
    store.put(running)  # a late running record never replaces the end (nor changes the sum)
    assert store.output_bytes("alice") == 700
    store.put(attrs.evolve(ended, output_bytes=900))  # an end recorded again with other figures
    assert store.output_bytes("alice") == 900
    killed = _status("alice", 30, JobState.KILLED)
    store.put(killed)  # a job indexed only at its end (adopted after a crash)
    bob = _status("bob", 11, JobState.EXITED)
    store.put(bob)
    assert (store.output_bytes("alice"), store.output_bytes("bob")) == (930, 11)
    _check(store, path)
    store.delete(killed.id)
    store.delete(str(uuid.uuid4()))  # no such row
    assert store.output_bytes("alice") == 900
    # Damage written through the store's own connection (its only writer): a status that is not
    # JSON counts nothing, an owner changed moves the bytes, `ended` cleared stops counting.
    db = store._db
    db.execute("UPDATE jobs SET status = 'not json' WHERE id = ?", (ended.id,))
    _check(store, path)
    assert store.output_bytes("alice") == 0
    db.execute("UPDATE jobs SET owner = 'carl' WHERE id = ?", (bob.id,))
    assert (store.output_bytes("bob"), store.output_bytes("carl")) == (0, 11)
    db.execute("UPDATE jobs SET ended = 0 WHERE id = ?", (bob.id,))
    assert store.output_bytes("carl") == 0
    _check(store, path)
    assert store.output_bytes("nobody") == 0


def test_the_sums_are_taken_from_the_rows_when_the_store_opens(tmp_path: Path) -> None:
    """Rows written while no store of this code was open (by another connection, an older server):
    summed when the store opens."""
    path = tmp_path / "db"
    with closing(JobStore(path)) as first:
        for output in (100, 20, 3):
            first.put(_status("alice", output, JobState.EXITED))
        first.put(_status("alice", 4000))  # running: not counted
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute(
        "UPDATE jobs SET status = json_set(status, '$.output_bytes', 50000) WHERE ended AND "
        "json_extract(status, '$.output_bytes') = 3"
    )
    raw.close()
    with closing(JobStore(path)) as reopened:
        assert reopened.output_bytes("alice") == 50120 == _summed(path, "alice")


def _steps(store: JobStore, owner: str) -> int:
    """SQLite virtual-machine steps `store.output_bytes(owner)` takes (counted every 10 instructions)."""
    count = 0

    def tick() -> int:
        nonlocal count
        count += 1
        return 0

    store._db.set_progress_handler(tick, 10)
    try:
        store.output_bytes(owner)
    finally:
        store._db.set_progress_handler(None, 0)
    return count


def test_the_quota_reads_cost_the_same_at_1000_ended_jobs_as_at_10(store: JobStore) -> None:
    """A count of SQLite's instructions, not a time: summing 1000 rows takes ~100x those of 10."""
    for _ in range(10):
        store.put(_status("alice", 1, JobState.EXITED))
    few = _steps(store, "alice")
    for _ in range(990):
        store.put(_status("alice", 1, JobState.EXITED))
    many = _steps(store, "alice")
    assert store.output_bytes("alice") == 1000
    assert many <= few + 2, (few, many)


def test_rows_written_by_another_connection_are_counted_again(store: JobStore, tmp_path: Path) -> None:
    ended = _status("alice", 1000, JobState.EXITED)
    store.put(ended)
    store.put(_status("alice", 50, JobState.EXITED))
    assert store.output_bytes("alice") == 1050
    # An operator's sqlite3 (or a restore) fires no trigger of the store's connection.
    with closing(sqlite3.connect(tmp_path / "db")) as other, other:
        other.execute("UPDATE jobs SET status = 'garbage' WHERE id = ?", (ended.id,))
    assert store.output_bytes("alice") == _summed(tmp_path / "db", "alice") == 50
    with closing(sqlite3.connect(tmp_path / "db")) as other, other:
        other.execute("DELETE FROM jobs WHERE owner = 'alice'")
    assert store.output_bytes("alice") == 0
    store.put(_status("alice", 7, JobState.EXITED))  # and the triggers still count from there
    assert store.output_bytes("alice") == _summed(tmp_path / "db", "alice") == 7
