"""The blocking Client against the fake server over real mTLS: every method, streaming, run."""

from __future__ import annotations

import io
import os
import threading

import pytest
from fake_jobworker import FakeJobWorker, FakeServer, Plan

from jobclient import Client, Credentials, Isolation, Job, JobNotFound, JobState, Limits
from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb

NASTY = [b"plain text\n", b"\x00\x00NUL\x00", b"\xff\xfe\xc3(invalid utf-8\x80", b"\r\n\x1b[31mred\x1b[0m"]


def test_start_sends_the_whole_request_and_returns_a_job(client: Client, servicer: FakeJobWorker) -> None:
    servicer.plan = Plan(hold=True)
    job = client.start(
        ["sh", "-c", "echo $A"],
        env={"A": "1", "B": ""},
        cwd="/tmp",
        limits=Limits(
            cpu=0.5, memory=512 << 20, pids=10, io_read_bps=1, io_write_bps=2, io_read_iops=3, io_write_iops=4
        ),
        isolation=Isolation(net=False, pid=False),
    )
    (request,) = servicer.calls("StartJob")
    assert list(request.argv) == ["sh", "-c", "echo $A"]
    assert dict(request.env) == {"A": "1", "B": ""}
    assert request.cwd == "/tmp"
    assert request.limits == pb.Limits(
        cpu=0.5,
        memory_bytes=512 << 20,
        pids=10,
        io_read_bps=1,
        io_write_bps=2,
        io_read_iops=3,
        io_write_iops=4,
    )
    assert request.isolation == pb.Isolation(host_network=True, disable_pid=True)
    assert isinstance(job, Job)
    assert job.state is JobState.RUNNING
    assert job.owner == "alice"
    assert job.limits.memory == 512 << 20
    assert job.pid == 4242


def test_the_server_sees_the_callers_certificate(client: Client, servicer: FakeJobWorker) -> None:
    client.list()
    assert [cn for _, cn, _ in servicer.requests] == ["Alice"]


def test_start_without_options_leaves_limits_unset_and_isolation_on(
    client: Client, servicer: FakeJobWorker
) -> None:
    client.start(["true"])
    (request,) = servicer.calls("StartJob")
    assert request.limits == pb.Limits()
    assert request.isolation == pb.Isolation()
    assert request.cwd == ""
    assert dict(request.env) == {}


def test_status_returns_the_current_job(client: Client, servicer: FakeJobWorker) -> None:
    servicer.add_job(
        pb.Job(id="j1", owner="alice", argv=["x"], state=pb.JOB_STATE_KILLED, signal=9, oom_killed=True)
    )
    job = client.status("j1")
    assert (job.id, job.state, job.signal, job.oom_killed, job.exit_status) == (
        "j1",
        JobState.KILLED,
        9,
        True,
        137,
    )


def test_status_of_an_unknown_job_raises_job_not_found_with_the_servers_message(client: Client) -> None:
    with pytest.raises(JobNotFound, match=r"^job nope not found$") as caught:
        client.status("nope")
    assert caught.value.code == "NOT_FOUND"


def test_stop_sends_the_grace_and_returns_the_ended_job(client: Client, servicer: FakeJobWorker) -> None:
    servicer.plan = Plan(hold=True)
    job = client.start(["sleep", "100"])
    stopped = client.stop(job.id, grace=2.5)
    assert servicer.calls("StopJob")[0].grace_seconds == 2.5
    assert stopped.state is JobState.KILLED
    assert stopped.signal == 15
    assert stopped.stop_requested


def test_stop_without_grace_leaves_it_to_the_server(client: Client, servicer: FakeJobWorker) -> None:
    servicer.add_job(pb.Job(id="j1", state=pb.JOB_STATE_EXITED, exit_code=0))
    client.stop("j1")
    assert not servicer.calls("StopJob")[0].HasField("grace_seconds")


def test_stop_refuses_a_negative_grace_before_calling(client: Client, servicer: FakeJobWorker) -> None:
    with pytest.raises(ValueError, match="grace"):
        client.stop("j1", grace=-1)
    assert servicer.calls("StopJob") == []


@pytest.mark.parametrize(
    ("kwargs", "scope", "user"),
    [
        ({}, pb.LIST_SCOPE_OWN, ""),
        ({"all_users": True}, pb.LIST_SCOPE_ALL, ""),
        ({"user": "bob"}, pb.LIST_SCOPE_USER, "bob"),
    ],
)
def test_list_asks_for_the_right_scope(
    client: Client, servicer: FakeJobWorker, kwargs: dict[str, object], scope: int, user: str
) -> None:
    servicer.list_result = [
        pb.Job(id="a", state=pb.JOB_STATE_RUNNING),
        pb.Job(id="b", state=pb.JOB_STATE_LOST),
    ]
    jobs = client.list(**kwargs)  # type: ignore[arg-type]
    (request,) = servicer.calls("ListJobs")
    assert (request.scope, request.user) == (scope, user)
    assert [(j.id, j.state) for j in jobs] == [("a", JobState.RUNNING), ("b", JobState.LOST)]


def test_list_asks_for_live_usage_only_when_told(client: Client, servicer: FakeJobWorker) -> None:
    client.list()
    client.list(include_usage=True)
    list(client.iter_jobs(all_users=True, include_usage=True))
    assert [request.include_usage for request in servicer.calls("ListJobs")] == [False, True, True]


def test_list_refuses_all_users_with_a_user(client: Client) -> None:
    with pytest.raises(ValueError, match="not both"):
        client.list(all_users=True, user="bob")


def test_output_is_byte_exact_including_nul_and_invalid_utf8(client: Client, servicer: FakeJobWorker) -> None:
    servicer.add_job(pb.Job(id="j1", state=pb.JOB_STATE_EXITED, exit_code=0), output=b"".join(NASTY))
    with client.output("j1", follow=False) as stream:
        data = b"".join(stream)
    assert data == b"".join(NASTY)
    assert stream.offset == len(data)


def test_output_of_a_large_job_is_complete(client: Client, servicer: FakeJobWorker) -> None:
    big = os.urandom(3 * 1024 * 1024 + 17)
    servicer.plan = Plan(chunks=[big[i : i + 65536] for i in range(0, len(big), 65536)])
    job = client.start(["cat", "big"])
    assert b"".join(client.output(job.id)) == big


def test_output_from_an_offset_asks_for_it_and_reports_where_it_ended(
    client: Client, servicer: FakeJobWorker
) -> None:
    servicer.add_job(pb.Job(id="j1", state=pb.JOB_STATE_EXITED, exit_code=0), output=b"0123456789")
    stream = client.output("j1", offset=4, follow=False)
    assert b"".join(stream) == b"456789"
    assert stream.offset == 10
    request = servicer.calls("StreamOutput")[0]
    assert (request.offset, request.follow) == (4, False)


def test_output_follows_by_default_until_the_job_ends(client: Client, servicer: FakeJobWorker) -> None:
    servicer.plan = Plan(chunks=[b"a", b"b"], exit_code=0)
    job = client.start(["x"])
    assert b"".join(client.output(job.id)) == b"ab"
    assert servicer.calls("StreamOutput")[0].follow is True
    assert client.status(job.id).state is JobState.EXITED


def test_output_of_an_unknown_job_raises_job_not_found_when_iterated(client: Client) -> None:
    stream = client.output("nope")
    with pytest.raises(JobNotFound, match="job nope not found"):
        next(stream)


def test_closing_a_followed_stream_from_another_thread_ends_it(
    client: Client, servicer: FakeJobWorker
) -> None:
    servicer.plan = Plan(chunks=[b"first"], hold=True)
    job = client.start(["sleep", "100"])
    stream = client.output(job.id)
    assert next(stream) == b"first"
    timer = threading.Timer(0.2, stream.close)
    timer.start()
    assert list(stream) == []  # the blocked next() returns instead of waiting for the job
    timer.join()


@pytest.mark.parametrize(("plan", "status"), [(Plan(exit_code=3), 3), (Plan(exit_code=0), 0)])
def test_run_copies_output_and_returns_the_ended_job(
    client: Client, servicer: FakeJobWorker, plan: Plan, status: int
) -> None:
    plan.chunks = NASTY
    servicer.plan = plan
    out = io.BytesIO()
    job = client.run(["sh", "-c", "..."], out=out)
    assert out.getvalue() == b"".join(NASTY)
    assert job.ended
    assert job.exit_status == status


def test_run_accepts_a_callback(client: Client, servicer: FakeJobWorker) -> None:
    servicer.plan = Plan(chunks=[b"x", b"y"], state=pb.JOB_STATE_KILLED, exit_code=None, signal=9)
    chunks: list[bytes] = []
    job = client.run(["x"], out=chunks.append)
    assert b"".join(chunks) == b"xy"
    assert (job.state, job.exit_status) == (JobState.KILLED, 137)


def test_run_of_a_command_that_cannot_start_returns_at_once(client: Client, servicer: FakeJobWorker) -> None:
    servicer.plan = Plan(start_state=pb.JOB_STATE_FAILED_TO_START, reason="exec: no such file")
    job = client.run(["nonexistent"], out=io.BytesIO())
    assert job.state is JobState.FAILED_TO_START
    assert job.reason == "exec: no such file"
    assert servicer.calls("StreamOutput") == []


def test_client_is_a_context_manager_that_closes_its_channel(server: FakeServer, alice: Credentials) -> None:
    with Client(server.target, credentials=alice) as c:
        c.list()
    with pytest.raises(ValueError, match="closed channel"):
        c.list()


def test_client_requires_credentials_object(server: FakeServer) -> None:
    with pytest.raises(TypeError, match="Credentials"):
        Client(server.target, credentials="alice")  # type: ignore[arg-type]
