"""`Client.run`/`wait` learn how the job ended from the trailing metadata of the follow stream that
ended with it (jobclient.client.FINAL_JOB_KEY, as jobserver sends it): no GetJob call then. Without a
usable trailer (an older server, one naming another job or a running one, damaged bytes) they ask
GetJob, as before."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable

import pytest
from fake_jobworker import FakeJobWorker, FakeServer, Plan

from jobclient import AsyncClient, Client, Credentials, JobState
from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb


def _as_sent(job: pb.Job) -> bytes:
    return job.SerializeToString()


def test_run_takes_the_end_from_the_stream_and_asks_no_getjob(
    client: Client, servicer: FakeJobWorker
) -> None:
    servicer.final_trailer = _as_sent
    servicer.plan = Plan(chunks=[b"a", b"b"], exit_code=7)
    out = io.BytesIO()
    job = client.run(["x"], out=out)
    assert out.getvalue() == b"ab"
    assert (job.state, job.exit_code, job.output_bytes) == (JobState.EXITED, 7, 2)
    assert job.ended_at is not None
    assert servicer.calls("GetJob") == []
    assert len(servicer.calls("StreamOutput")) == 1


def _other_job(job: pb.Job) -> bytes:
    other = pb.Job()
    other.CopyFrom(job)
    other.id = "someone-else"
    other.exit_code = 99
    return other.SerializeToString()


def _running(job: pb.Job) -> bytes:
    still = pb.Job()
    still.CopyFrom(job)
    still.state = pb.JOB_STATE_RUNNING
    return still.SerializeToString()


@pytest.mark.parametrize(
    "trailer",
    [_other_job, _running, lambda _job: b"\xff\xff not a Job", lambda _job: b""],
    ids=["another-job", "running", "damaged", "empty"],
)
def test_an_unusable_trailer_is_ignored_and_getjob_asked(
    client: Client, servicer: FakeJobWorker, trailer: Callable[[pb.Job], bytes]
) -> None:
    servicer.final_trailer = trailer
    servicer.plan = Plan(chunks=[b"z"], exit_code=3)
    job = client.run(["x"], out=io.BytesIO())
    assert (job.state, job.exit_code) == (JobState.EXITED, 3)
    assert len(servicer.calls("GetJob")) == 1


def test_without_a_trailer_getjob_is_asked(client: Client, servicer: FakeJobWorker) -> None:
    servicer.plan = Plan(chunks=[b"z"], exit_code=4)
    assert client.run(["x"], out=io.BytesIO()).exit_code == 4
    assert len(servicer.calls("GetJob")) == 1


def test_the_async_client_takes_the_end_from_the_stream_too(
    server: FakeServer, alice: Credentials, servicer: FakeJobWorker
) -> None:
    servicer.final_trailer = _as_sent
    servicer.plan = Plan(chunks=[b"q"], exit_code=5)

    async def body() -> int | None:
        async with AsyncClient(server.target, credentials=alice, timeout=10) as client:
            return (await client.run(["x"], out=io.BytesIO())).exit_code

    assert asyncio.run(body()) == 5
    assert servicer.calls("GetJob") == []
