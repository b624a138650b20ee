"""A job whose directory vanished is still stopped and killed; LOST jobs never keep running; offsets
past the output are OUT_OF_RANGE for running jobs too; missing output is DATA_LOSS; SIGHUP is logged
and survived."""

from __future__ import annotations

import shutil
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
from server_harness import (
    RunningServer,
    ServerProcess,
    marked_job,
    processes_with,
    rpc_error,
    wait_for,
)

from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb


def _running_marked_job(server: RunningServer, marker: str) -> pb.Job:
    alice = server.client("alice")
    job = alice.start(marked_job(marker, "up"))
    assert wait_for(lambda: alice.output(job.id, follow=False) == b"up\n")
    return job


def test_a_running_job_whose_directory_vanished_is_killed_and_lost(server: RunningServer) -> None:
    marker = f"vanish-{uuid.uuid4().hex}"
    job = _running_marked_job(server, marker)
    alice = server.client("alice")
    shutil.rmtree(server.state_dir / "jobs" / job.id)

    # Nobody asks: the Worker sees its directory go and kills the job (cgroup and shim).
    assert wait_for(lambda: not processes_with(marker), 30), "the job runs on without its directory"
    lost = alice.get(job.id)
    assert lost.state == pb.JOB_STATE_LOST
    assert "vanished" in lost.reason
    stopped = alice.stop(job.id, grace=5)  # an answer, not INTERNAL
    assert stopped.state == pb.JOB_STATE_LOST
    exc = rpc_error(lambda: alice.output(job.id, follow=False))
    assert exc.code() in (grpc.StatusCode.DATA_LOSS, grpc.StatusCode.FAILED_PRECONDITION)
    assert job.id in {j.id for j in alice.list() if j.state == pb.JOB_STATE_LOST}


def test_stop_of_a_job_whose_directory_vanished_kills_it(server: RunningServer) -> None:
    """The StopJob path on its own: the directory moved away (no deletion event for the watcher)."""
    marker = f"vanish-{uuid.uuid4().hex}"
    job = _running_marked_job(server, marker)
    (server.state_dir / "jobs" / job.id).rename(server.state_dir / f"moved-{job.id}")
    stopped = server.client("alice").stop(job.id, grace=5)
    assert stopped.state == pb.JOB_STATE_LOST
    assert wait_for(lambda: not processes_with(marker), 30)


def test_a_job_whose_directory_vanished_while_the_server_was_down_is_killed_at_restart(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = make_server(state_dir=state)
    marker = f"vanish-{uuid.uuid4().hex}"
    job = _running_marked_job(first, marker)
    first.server.stop(grace=1)  # jobs keep running
    shutil.rmtree(state / "jobs" / job.id)
    assert processes_with(marker)

    second = make_server(state_dir=state)
    assert wait_for(lambda: not processes_with(marker), 30), "a LOST job keeps running"
    lost = second.client("alice").get(job.id)
    assert lost.state == pb.JOB_STATE_LOST
    assert "processes were killed" in lost.reason


def test_an_offset_past_the_output_of_a_running_job_is_out_of_range(server: RunningServer) -> None:
    marker = f"offset-{uuid.uuid4().hex}"
    job = _running_marked_job(server, marker)
    alice = server.client("alice")
    for offset in (2**63 - 1, 2**64 - 1, 4):
        exc = rpc_error(lambda o=offset: alice.output(job.id, offset=o, follow=True))  # type: ignore[misc]
        assert exc.code() == grpc.StatusCode.OUT_OF_RANGE, (offset, exc.details())
        assert f"offset {offset} is past the end of job {job.id}'s output (3 bytes so far)" in exc.details()
    assert alice.output(job.id, offset=3, follow=False) == b""
    alice.stop(job.id, grace=0)


def test_a_deleted_output_file_is_data_loss(server: RunningServer) -> None:
    alice = server.client("alice")
    ended = alice.start(["sh", "-c", "echo some output"])
    alice.wait_ended(ended.id)
    marker = f"deleted-{uuid.uuid4().hex}"
    running = _running_marked_job(server, marker)
    for job in (ended, running):
        (server.state_dir / "jobs" / job.id / "output").unlink()
        exc = rpc_error(lambda j=job: alice.output(j.id, follow=False))  # type: ignore[misc]
        assert exc.code() == grpc.StatusCode.DATA_LOSS, exc.details()
        assert f"the output file of job {job.id} is missing" in exc.details()
    alice.stop(running.id, grace=0)


def test_a_truncated_output_file_is_data_loss(server: RunningServer) -> None:
    alice = server.client("alice")
    job = alice.start(["sh", "-c", "echo 0123456789"])
    alice.wait_ended(job.id)
    (server.state_dir / "jobs" / job.id / "output").write_bytes(b"0123")
    exc = rpc_error(lambda: alice.output(job.id, follow=False))
    assert exc.code() == grpc.StatusCode.DATA_LOSS
    assert "ends at byte 4, short of the 11 bytes" in exc.details()


def test_sighup_is_logged_and_the_server_keeps_serving(
    server_processes: list[ServerProcess], tmp_path: Path
) -> None:
    proc = ServerProcess(tmp_path / "state", tmp_path)
    server_processes.append(proc)
    alice = proc.client("alice")
    job = alice.start(["sh", "-c", "echo before"])
    proc.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "SIGHUP received and ignored" in proc.log_text(), 10), proc.log_text()
    assert proc.proc.poll() is None
    assert alice.output(job.id, follow=True) == b"before\n"
    alice.close()
    assert proc.terminate() == 0
