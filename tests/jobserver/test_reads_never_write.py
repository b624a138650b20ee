"""The job directories are the truth; SQLite is an index that a read never writes (issue 13).

A second connection to the server's database watches `PRAGMA data_version`, which changes exactly
when another connection (the server's) commits a write: GetJob, ListJobs and StreamOutput, of running,
ended and unindexed jobs, must leave it where it was. The index is written at start, at a job's end,
at deletion and at start-up only.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import grpc
import pytest
from server_harness import Client, RunningServer, marked_job, rpc_error, wait_for

from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
from jobcore.status import JobState, JobStatus
from jobserver.store import JobStore


class Index:
    """A reader of the server's database, on its own connection."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, timeout=10)

    def version(self) -> int:
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def ended(self, job_id: str) -> bool:
        row = self.db.execute("SELECT ended FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def ids(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT id FROM jobs")}

    def close(self) -> None:
        self.db.close()


@pytest.fixture
def index(server: RunningServer) -> Iterator[Index]:
    reader = Index(server.server.config.database_path)
    yield reader
    reader.close()


def _reads(alice: Client, job_id: str) -> None:
    """Every read a client can make of one job."""
    alice.get(job_id)
    alice.list()
    alice.stub.ListJobs(pb.ListJobsRequest(scope=pb.LIST_SCOPE_OWN, page_size=1), timeout=10)
    alice.output(job_id, follow=False)
    request = pb.StreamOutputRequest(
        job_id=job_id, follow=False, stream=pb.OUTPUT_STREAM_STDOUT, tail_lines=5
    )
    list(alice.stub.StreamOutput(request, timeout=30))


def test_reads_of_running_and_ended_jobs_write_nothing(server: RunningServer, index: Index) -> None:
    alice = server.client("alice")
    running = alice.start(marked_job(f"reads-{uuid.uuid4().hex}", "up"))
    assert wait_for(lambda: alice.output(running.id, follow=False) == b"up\n")
    ended = alice.start(["echo", "done"])
    assert wait_for(lambda: index.ended(ended.id)), "the job's end was never indexed"

    before = index.version()
    for job_id in (running.id, ended.id):
        _reads(alice, job_id)
    assert index.version() == before, "a read wrote to the job database"

    # The watcher can see a write: stopping the running job indexes its end.
    alice.stop(running.id, grace=0)
    assert wait_for(lambda: index.ended(running.id))
    assert index.version() != before


def test_a_job_missing_from_the_index_is_served_from_its_directory_without_writing(
    server: RunningServer, index: Index
) -> None:
    """The window between a job's start and its row (or a row lost): reads answer from the Worker and
    leave the repair to start-up, which re-adopts the job from its directory."""
    alice = server.client("alice")
    job = alice.start(marked_job(f"unindexed-{uuid.uuid4().hex}", "up"), cwd="/tmp")
    assert wait_for(lambda: alice.output(job.id, follow=False) == b"up\n")
    index.db.execute("DELETE FROM jobs WHERE id = ?", (job.id,))
    before = index.version()

    got = alice.get(job.id)
    assert got.state == pb.JOB_STATE_RUNNING and got.cwd == "/tmp"
    assert alice.output(job.id, follow=False) == b"up\n"
    assert job.id not in {j.id for j in alice.list()}  # the index is what lists read
    assert index.version() == before
    assert job.id not in index.ids()
    # Others still cannot see it: authorization reads the Worker's record of the owner.
    bob = server.client("bob")
    assert rpc_error(lambda: bob.get(job.id)).code() == grpc.StatusCode.NOT_FOUND
    assert index.version() == before

    # Its end is indexed (the Worker's on_job_ended), from the job's own records: cwd included.
    alice.stop(job.id, grace=0)
    assert wait_for(lambda: index.ended(job.id))
    assert alice.get(job.id).cwd == "/tmp"


def test_an_old_row_without_cwd_in_its_status_keeps_the_cwd_of_its_column(tmp_path: Path) -> None:
    """Statuses carry cwd now (one way); rows written before they did keep it in the column."""
    with closing(JobStore(tmp_path / "db")) as store:
        store.put(JobStatus(id="1", owner="alice", argv=("true",), state=JobState.EXITED, cwd="/srv"))
        record = store.get("1")
        assert record is not None and record.status.cwd == "/srv"
    db = sqlite3.connect(tmp_path / "db", isolation_level=None)
    db.execute("UPDATE jobs SET status = json_remove(status, '$.cwd'), cwd = '/home/alice' WHERE id = '1'")
    db.close()
    with closing(JobStore(tmp_path / "db")) as store:
        record = store.get("1")
        assert record is not None and record.status.cwd == "/home/alice"
