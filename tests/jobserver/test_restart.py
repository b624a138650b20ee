"""Durable state: a SIGKILLed server restarted on the same state directory serves every job again;
a graceful stop leaves jobs running; the database and the job directories are reconciled at start."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from server_harness import (
    IS_ROOT,
    Client,
    RunningServer,
    ServerProcess,
    marked_job,
    processes_with,
    rpc_error,
    test_config,
    wait_for,
)

from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
from jobcore import Worker
from jobserver.jobs import VANISHED_REASON
from jobserver.server import JobServer


def test_sigkill_and_restart_serves_finished_and_reattaches_running_jobs(
    server_processes: list[ServerProcess], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = ServerProcess(state, tmp_path)
    server_processes.append(first)
    alice = first.client("alice")
    big = "".join(f"line {i}\n" for i in range(20000)).encode()
    finished = alice.start(["sh", "-c", "i=0; while [ $i -lt 20000 ]; do echo line $i; i=$((i+1)); done"])
    assert alice.output(finished.id) == big
    marker = f"restart-{uuid.uuid4().hex}"
    running = alice.start(marked_job(marker, f"started {marker}"))
    assert wait_for(lambda: alice.output(running.id, follow=False) == f"started {marker}\n".encode())
    bob_job = first.client("bob").start(["sleep", "300"])
    alice.close()

    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(30)
    assert processes_with(marker), "the job must survive its server"

    second = ServerProcess(state, tmp_path)
    server_processes.append(second)
    alice = second.client("alice")
    done = alice.get(finished.id)
    assert done.state == pb.JOB_STATE_EXITED
    assert done.exit_code == 0
    assert alice.output(finished.id, follow=False) == big
    job = alice.get(running.id)
    assert job.state == pb.JOB_STATE_RUNNING
    assert alice.output(running.id, offset=0, follow=False) == f"started {marker}\n".encode()
    assert {j.id for j in alice.list()} == {finished.id, running.id}
    exc = rpc_error(lambda: alice.get(bob_job.id))
    assert exc.code() == grpc.StatusCode.NOT_FOUND

    # A follower of the re-attached job sees it end once it is stopped.
    follower = second.client("carl")
    followed: list[bytes] = []
    thread = threading.Thread(target=lambda: followed.append(follower.output(running.id, follow=True)))
    thread.start()
    stopped = alice.stop(running.id, grace=1)
    thread.join(60)
    assert not thread.is_alive()
    assert followed == [f"started {marker}\n".encode()]
    assert stopped.state == pb.JOB_STATE_KILLED
    assert processes_with(marker) == []
    second.client("bob").stop(bob_job.id, grace=0)
    for client in (alice, follower):
        client.close()
    assert second.terminate() == 0


def test_sigterm_ends_streams_finishes_inflight_calls_and_leaves_jobs_running(
    server_processes: list[ServerProcess], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = ServerProcess(state, tmp_path)
    server_processes.append(first)
    alice = first.client("alice")
    marker = f"term-{uuid.uuid4().hex}"
    keeps_running = alice.start(marked_job(marker, marker))
    stubborn = alice.start(["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"])
    assert wait_for(lambda: alice.output(stubborn.id, follow=False) == b"ready\n")
    stream = alice.stub.StreamOutput(pb.StreamOutputRequest(job_id=keeps_running.id, follow=True), timeout=60)
    assert next(iter(stream)).data == f"{marker}\n".encode()

    # A StopJob in flight (the job ignores SIGTERM, so it waits out its 2 s grace) when SIGTERM comes.
    stop_result: list[pb.Job] = []
    stopper = threading.Thread(target=lambda: stop_result.append(alice.stop(stubborn.id, grace=2)))
    stopper.start()
    assert wait_for(lambda: alice.get(stubborn.id).stop_requested)
    first.proc.send_signal(signal.SIGTERM)

    exc = rpc_error(lambda: list(stream))
    assert exc.code() == grpc.StatusCode.UNAVAILABLE
    stopper.join(60)
    assert stop_result and stop_result[0].state == pb.JOB_STATE_KILLED
    assert first.proc.wait(60) == 0
    first.kill()  # closes its log
    log = first.log_text()
    assert '"event": "shutting down"' in log
    assert '"signal": "SIGTERM"' in log
    assert processes_with(marker), "a graceful stop must leave jobs running"

    second = ServerProcess(state, tmp_path)
    server_processes.append(second)
    alice.close()
    alice = second.client("alice")
    assert alice.get(keeps_running.id).state == pb.JOB_STATE_RUNNING
    assert alice.stop(keeps_running.id, grace=1).state == pb.JOB_STATE_KILLED
    assert processes_with(marker) == []
    alice.close()
    assert second.terminate() == 0


def test_record_whose_job_directory_vanished_is_kept_and_marked(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = make_server(state_dir=state)
    alice = first.client("alice")
    ended = alice.start(["echo", "hi"])
    alice.wait_ended(ended.id)
    marker = f"vanish-{uuid.uuid4().hex}"
    running = alice.start(marked_job(marker))
    first.server.stop()
    # While the server is down the running job is stopped and both job directories are removed.
    with Worker(state / "jobs") as worker:
        worker.stop(running.id, grace=0)
    for job_id in (ended.id, running.id):
        shutil.rmtree(state / "jobs" / job_id)

    second = make_server(state_dir=state)
    alice = second.client("alice")
    kept = alice.get(ended.id)
    assert kept.state == pb.JOB_STATE_EXITED
    lost = alice.get(running.id)
    assert lost.state == pb.JOB_STATE_LOST
    assert lost.reason == VANISHED_REASON
    exc = rpc_error(lambda: alice.output(ended.id))
    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no longer stored" in exc.details()
    assert alice.stop(running.id).state == pb.JOB_STATE_LOST
    assert rpc_error(lambda: second.client("bob").get(ended.id)).code() == grpc.StatusCode.NOT_FOUND


def test_job_directory_without_a_record_is_adopted(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = make_server(state_dir=state)
    job = first.client("bob").start(["sh", "-c", "echo adopted; exec sleep 300"])
    first.server.stop()
    for db in state.glob("jobserver.db*"):
        db.unlink()

    second = make_server(state_dir=state)
    bob = second.client("bob")
    assert [j.id for j in bob.list()] == [job.id]
    assert bob.get(job.id).state == pb.JOB_STATE_RUNNING
    assert rpc_error(lambda: second.client("alice").get(job.id)).code() == grpc.StatusCode.NOT_FOUND
    assert bob.output(job.id, follow=False) == b"adopted\n"
    assert bob.stop(job.id, grace=0).state == pb.JOB_STATE_KILLED


def test_sigint_is_a_graceful_stop_too(server_processes: list[ServerProcess], tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path / "state", tmp_path)
    server_processes.append(proc)
    client = proc.client("alice")
    marker = f"sigint-{uuid.uuid4().hex}"
    job = client.start(marked_job(marker))
    client.close()
    proc.proc.send_signal(signal.SIGINT)
    assert proc.proc.wait(60) == 0
    proc.kill()
    assert '"signal": "SIGINT"' in proc.log_text()
    assert processes_with(marker), "a graceful stop must leave jobs running"
    with Worker(tmp_path / "state" / "jobs") as worker:
        worker.stop(job.id, grace=0)
    assert processes_with(marker) == []


def _own_threads_and_fds() -> tuple[list[str], int]:
    tasks = Path("/proc/self/task")
    names = []
    for tid in os.listdir(tasks):
        try:
            name = (tasks / tid / "comm").read_text().strip()
        except OSError:
            continue
        if name != "event_engine":  # gRPC's C-core pool: sized and trimmed by gRPC itself
            names.append(name)
    return sorted(names), len(os.listdir("/proc/self/fd"))


def test_stopped_server_leaves_no_threads_or_fds_behind(tmp_path: Path) -> None:
    if not IS_ROOT:
        pytest.skip("the server's jobs run in cgroups and namespaces: needs root")

    def one_server_lifetime(state: Path) -> None:
        server = JobServer(test_config(state))
        client = Client(server.start(), "alice")
        try:
            job = client.start(["sh", "-c", "echo hi; sleep 0.2; echo bye"])
            assert client.output(job.id) == b"hi\nbye\n"
            client.list()
        finally:
            client.close()
            server.stop(grace=2)

    one_server_lifetime(tmp_path / "warm-up")  # gRPC creates some process-wide resources once
    before = _own_threads_and_fds()
    one_server_lifetime(tmp_path / "state")
    assert wait_for(lambda: _own_threads_and_fds() == before, 30), f"{_own_threads_and_fds()} != {before}"
