"""Restart is never blocked by one job: every file kind of a job directory, and the database rows,
damaged in turn (empty, truncated, garbage, wrong JSON type, missing, a directory in its place); each
time the server restarts on that state, serves the other jobs, answers for the damaged one without an
INTERNAL error, and no process of a job it declared lost keeps running."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from server_harness import Client, RunningServer, marked_job, processes_with, rpc_error, wait_for

from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb

JOB_FILES = ("spec.json", "shim.json", "run.json", "exit.json", "stop.json", "output", "output.idx")
#: The records a Worker reads at start: damage to one of them makes the job LOST (its processes killed).
RECORDS = ("spec.json", "shim.json", "run.json", "exit.json")


def _truncate(path: Path) -> None:
    original = path.read_bytes() if path.is_file() else b'{"state": "exited", "exit_co'
    path.write_bytes(original[: max(1, len(original) // 2)])


def _to_directory(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.mkdir()
    (path / "x").write_text("not a file")


DAMAGE: dict[str, Callable[[Path], None]] = {
    "empty": lambda p: p.write_bytes(b""),
    "truncated": _truncate,
    "garbage": lambda p: p.write_bytes(b"\x00\xff\xfe{{not json at all\n" * 8),
    "wrong_type": lambda p: p.write_bytes(b'[1, "two", {"three": 3}]'),
    "missing": lambda p: p.unlink(missing_ok=True),
    "directory": _to_directory,
}
OK_OR_CLEAN = {
    grpc.StatusCode.OK,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
}


def _stream_code(client: Client, job_id: str) -> grpc.StatusCode:
    try:
        client.output(job_id, follow=False)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _declared_lost(file: str, damage: str) -> bool:
    if file not in RECORDS:
        return False
    # A running job without run.json (its shim alive) is one whose start was cut short: kept running.
    return not (damage == "missing" and file in ("run.json", "exit.json"))


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("file", JOB_FILES)
def test_restart_with_a_damaged_job_file_serves_every_job(
    make_server: Callable[..., RunningServer],
    tmp_path: Path,
    file: str,
    damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = tmp_path / "state"
    first = make_server(state_dir=state)
    alice = first.client("alice")
    witness = alice.start(["sh", "-c", "echo witness"])
    assert alice.wait_ended(witness.id).state == pb.JOB_STATE_EXITED
    marker = f"corrupt-{uuid.uuid4().hex}"
    target = alice.start(marked_job(marker, "target"))
    assert wait_for(lambda: alice.output(target.id, follow=False) == b"target\n")
    first.server.stop(grace=1)  # a graceful stop leaves the job running
    assert processes_with(marker)

    DAMAGE[damage](state / "jobs" / target.id / file)
    with caplog.at_level(logging.WARNING):
        second = make_server(state_dir=state)  # must start
    alice = second.client("alice")
    try:
        done = alice.get(witness.id)
        assert done.state == pb.JOB_STATE_EXITED
        assert alice.output(witness.id, follow=False) == b"witness\n"
        job = alice.get(target.id)
        assert {j.id for j in alice.list()} == {witness.id, target.id}
        assert _stream_code(alice, target.id) in OK_OR_CLEAN
        if _declared_lost(file, damage):
            assert job.state == pb.JOB_STATE_LOST, job
            assert file in caplog.text, caplog.text
            assert wait_for(lambda: not processes_with(marker), 30), "a lost job keeps running"
        stopped = alice.stop(target.id, grace=0)
        assert stopped.state != pb.JOB_STATE_RUNNING
        assert wait_for(lambda: not processes_with(marker), 30)
    finally:
        if processes_with(marker):  # never leave the job behind, whatever failed above
            second.server.worker.stop(target.id, grace=0)


ROW_DAMAGE = {
    "empty": "UPDATE jobs SET status = '' WHERE id = ?",
    "truncated": "UPDATE jobs SET status = substr(status, 1, length(status) / 2) WHERE id = ?",
    "garbage": "UPDATE jobs SET status = X'00FFFE7B7B' WHERE id = ?",
    "wrong_type": "UPDATE jobs SET status = '[1, 2, 3]' WHERE id = ?",
    "wrong_fields": """UPDATE jobs SET status = '{"id": 5, "state": "nonsense"}' WHERE id = ?""",
    "bad_created_at": "UPDATE jobs SET created_at = 'yesterday' WHERE id = ?",
    "missing": "DELETE FROM jobs WHERE id = ?",
}


@pytest.mark.parametrize("damage", sorted(ROW_DAMAGE))
def test_restart_with_a_damaged_database_row_serves_every_job(
    make_server: Callable[..., RunningServer], tmp_path: Path, damage: str
) -> None:
    state = tmp_path / "state"
    first = make_server(state_dir=state)
    alice = first.client("alice")
    witness = alice.start(["sh", "-c", "echo witness"])
    kept = alice.start(["sh", "-c", "echo kept"])  # its job directory stays: the Worker knows it
    gone = alice.start(["sh", "-c", "echo gone"])  # its job directory is removed: only the row is left
    for job in (witness, kept, gone):
        assert alice.wait_ended(job.id).state == pb.JOB_STATE_EXITED
    first.server.stop(grace=1)
    shutil.rmtree(state / "jobs" / gone.id)
    db = sqlite3.connect(state / "jobserver.db")
    with db:
        for job_id in (kept.id, gone.id):
            db.execute(ROW_DAMAGE[damage], (job_id,))
    db.close()

    second = make_server(state_dir=state)
    alice = second.client("alice")
    assert alice.get(witness.id).state == pb.JOB_STATE_EXITED
    assert alice.output(witness.id, follow=False) == b"witness\n"
    refreshed = alice.get(kept.id)  # rebuilt from the Worker, whatever the row said
    assert refreshed.state == pb.JOB_STATE_EXITED
    assert alice.output(kept.id, follow=False) == b"kept\n"
    listed = {j.id: j for j in alice.list()}
    assert {witness.id, kept.id} <= listed.keys()
    if damage == "missing":
        assert rpc_error(lambda: alice.get(gone.id)).code() == grpc.StatusCode.NOT_FOUND
    elif damage == "bad_created_at":
        assert alice.get(gone.id).state == pb.JOB_STATE_EXITED
    else:
        lost = alice.get(gone.id)
        assert lost.state == pb.JOB_STATE_LOST
        assert "record of this job is damaged" in lost.reason
        assert gone.id in listed
