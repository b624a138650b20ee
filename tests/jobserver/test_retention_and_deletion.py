"""DeleteJob (ended jobs only; owner or admin), the retention policy applied in the background, and
the per-user quota on stored output."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from server_harness import Client, RunningServer, rpc_error, wait_for

from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
from jobcore import Worker
from jobserver.config import settings_from_file
from jobserver.errors import ConfigError


def _delete(client: Client, job_id: str) -> pb.Job:
    return client.stub.DeleteJob(pb.DeleteJobRequest(job_id=job_id), timeout=30).job


def _ended(client: Client, argv: list[str]) -> pb.Job:
    job = client.start(argv)
    assert client.wait_ended(job.id).state == pb.JOB_STATE_EXITED
    return job


def test_delete_removes_record_directory_and_output(server: RunningServer) -> None:
    alice = server.client("alice")
    job = _ended(alice, ["sh", "-c", "echo bye"])
    directory = server.state_dir / "jobs" / job.id
    assert directory.is_dir()
    deleted = _delete(alice, job.id)
    assert deleted.id == job.id and deleted.state == pb.JOB_STATE_EXITED
    assert not directory.exists()
    assert rpc_error(lambda: alice.get(job.id)).code() == grpc.StatusCode.NOT_FOUND
    assert rpc_error(lambda: alice.output(job.id)).code() == grpc.StatusCode.NOT_FOUND
    assert job.id not in {j.id for j in alice.list()}
    assert rpc_error(lambda: _delete(alice, job.id)).code() == grpc.StatusCode.NOT_FOUND


def test_delete_is_for_ended_jobs_of_the_owner_or_an_admin(server: RunningServer) -> None:
    alice, bob, carl = server.client("alice"), server.client("bob"), server.client("carl")
    running = alice.start(["sleep", "300"])
    exc = rpc_error(lambda: _delete(alice, running.id))
    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert exc.details() == f"job {running.id} is still running; stop it first"
    alice.stop(running.id, grace=0)

    exc = rpc_error(lambda: _delete(bob, running.id))
    assert exc.code() == grpc.StatusCode.NOT_FOUND
    assert exc.details() == f"job {running.id} not found"
    assert alice.get(running.id).id == running.id  # still there
    assert _delete(carl, running.id).owner == "alice"
    assert rpc_error(lambda: alice.get(running.id)).code() == grpc.StatusCode.NOT_FOUND


def test_a_record_whose_directory_vanished_can_be_deleted(server: RunningServer) -> None:
    alice = server.client("alice")
    job = _ended(alice, ["true"])
    server.server.worker.remove(job.id)  # the Worker no longer has it: only the record is left
    assert alice.get(job.id).id == job.id
    _delete(alice, job.id)
    assert rpc_error(lambda: alice.get(job.id)).code() == grpc.StatusCode.NOT_FOUND


def test_retention_keeps_the_most_recent_ended_jobs_of_each_user(
    make_server: Callable[..., RunningServer],
) -> None:
    server = make_server(retention_max_ended_jobs_per_user=2, retention_interval_seconds=0.2)
    alice, bob = server.client("alice"), server.client("bob")
    running = alice.start(["sleep", "300"])
    ended = [_ended(alice, ["true", str(i)]).id for i in range(4)]
    bob_job = _ended(bob, ["true"]).id

    def kept() -> set[str]:
        return {j.id for j in alice.list()}

    assert wait_for(lambda: kept() == {running.id, *ended[2:]}, 30), kept()
    assert not (server.state_dir / "jobs" / ended[0]).exists()
    assert bob.get(bob_job).state == pb.JOB_STATE_EXITED  # bob's one job is within his own limit
    alice.stop(running.id, grace=0)


def test_retention_deletes_ended_jobs_past_the_maximum_age(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(retention_max_age_seconds=1.0, retention_interval_seconds=0.2)
    alice = server.client("alice")
    running = alice.start(["sleep", "300"])
    old = _ended(alice, ["true"])
    assert wait_for(lambda: {j.id for j in alice.list()} == {running.id}, 30)
    assert not (server.state_dir / "jobs" / old.id).exists()
    alice.stop(running.id, grace=0)


def test_the_output_quota_refuses_new_jobs_until_output_is_deleted(
    make_server: Callable[..., RunningServer],
) -> None:
    server = make_server(output_user_quota=1000)
    alice, bob = server.client("alice"), server.client("bob")
    big = _ended(alice, ["sh", "-c", "head -c 2000 /dev/zero"])
    exc = rpc_error(lambda: alice.start(["true"]))
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "user alice stores 2000 bytes of job output" in exc.details()
    assert "quota of 1000 bytes" in exc.details()
    assert bob.start(["true"]).owner == "bob"  # a quota per user
    _delete(alice, big.id)
    assert alice.start(["true"]).owner == "alice"


def test_a_running_jobs_output_counts_and_a_start_lists_no_job(
    make_server: Callable[..., RunningServer],
) -> None:
    """The quota check at each start adds the running jobs' output to the index's sum of ended jobs'
    without building the status of every job the user has (Worker.list): a start's cost must not
    grow with the user's history."""

    class CountingWorker(Worker):
        listed = 0

        def list(self, *args: Any, **kwargs: Any) -> Any:
            CountingWorker.listed += 1
            return super().list(*args, **kwargs)

    server = make_server(output_user_quota=1000, worker_factory=CountingWorker)
    alice = server.client("alice")
    for _ in range(3):
        _ended(alice, ["true"])
    writing = alice.start(["sh", "-c", "head -c 2000 /dev/zero; exec sleep 300"])
    assert wait_for(lambda: alice.get(writing.id).output_bytes == 2000, 30)
    listed = CountingWorker.listed
    exc = rpc_error(lambda: alice.start(["true"]))
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "user alice stores 2000 bytes of job output" in exc.details()
    assert CountingWorker.listed == listed
    alice.stop(writing.id, grace=0)


def test_retention_and_quota_settings_in_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "jobserver.toml"
    path.write_text(
        '[output]\nuser_quota = "5G"\n[retention]\nmax_age = "7d"\nmax_ended_jobs_per_user = 50\n'
        "interval_seconds = 60\n"
    )
    settings = settings_from_file(path)
    assert settings["output_user_quota"] == 5 << 30
    assert settings["retention_max_age_seconds"] == 7 * 86400
    assert settings["retention_max_ended_jobs_per_user"] == 50
    assert settings["retention_interval_seconds"] == 60
    path.write_text(
        "[retention]\nmax_age = false\nmax_ended_jobs_per_user = false\n[output]\nuser_quota = false\n"
    )
    settings = settings_from_file(path)
    assert settings["retention_max_age_seconds"] is None
    assert settings["retention_max_ended_jobs_per_user"] is None
    assert settings["output_user_quota"] is None
    path.write_text('[retention]\nmax_age = "soon"\n')
    with pytest.raises(ConfigError, match="max_age: expected an age"):
        settings_from_file(path)


def test_a_damaged_row_does_not_stop_retention(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:

    state = tmp_path / "state"
    first = make_server(state_dir=state)
    alice = first.client("alice")
    jobs = [_ended(alice, ["true", str(i)]).id for i in range(3)]
    first.server.stop(grace=1)
    db = sqlite3.connect(state / "jobserver.db")
    with db:
        db.execute("UPDATE jobs SET status = 'garbage' WHERE id = ?", (jobs[0],))
    db.close()
    shutil.rmtree(state / "jobs" / jobs[1])
    second = make_server(state_dir=state, retention_max_ended_jobs_per_user=1, retention_interval_seconds=0.2)
    alice = second.client("alice")
    assert wait_for(lambda: len(alice.list()) == 1, 30), alice.list()
