"""AsyncClient has the same methods and results as Client (grpc.aio over real mTLS)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from fake_jobworker import FakeJobWorker, FakeServer, Plan

from jobclient import AsyncClient, Client, Credentials, Isolation, JobNotFound, JobState, Limits
from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb

T = TypeVar("T")


def run_with(server: FakeServer, credentials: Credentials, body: Callable[[AsyncClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with AsyncClient(server.target, credentials=credentials, timeout=10) as client:
            return await body(client)

    return asyncio.run(main())


def test_async_client_has_the_same_public_methods_as_client() -> None:
    def public(cls: type) -> set[str]:
        return {name for name in vars(cls) if not name.startswith("_")}

    assert public(AsyncClient) - {"aclose"} == public(Client) - {"close"}


def test_start_status_stop_and_list(server: FakeServer, alice: Credentials, servicer: FakeJobWorker) -> None:
    servicer.plan = Plan(hold=True)

    async def body(client: AsyncClient) -> None:
        job = await client.start(
            ["sleep", "9"],
            env={"A": "b"},
            cwd="/srv",
            limits=Limits(memory=1024),
            isolation=Isolation(net=False),
        )
        assert job.state is JobState.RUNNING
        assert (await client.status(job.id)).id == job.id
        stopped = await client.stop(job.id, grace=1)
        assert stopped.state is JobState.KILLED
        assert [j.id for j in await client.list(user="alice")] == [job.id]

    run_with(server, alice, body)
    (request,) = servicer.calls("StartJob")
    assert (list(request.argv), dict(request.env), request.cwd) == (["sleep", "9"], {"A": "b"}, "/srv")
    assert request.limits.memory_bytes == 1024
    assert request.isolation.host_network
    assert servicer.calls("StopJob")[0].grace_seconds == 1
    assert servicer.calls("ListJobs")[0].scope == pb.LIST_SCOPE_USER


def test_output_is_byte_exact(server: FakeServer, alice: Credentials, servicer: FakeJobWorker) -> None:
    data = b"\x00\xff\xfe text \x80\n" * 1000
    servicer.add_job(pb.Job(id="j1", state=pb.JOB_STATE_EXITED, exit_code=0), output=data)

    async def body(client: AsyncClient) -> tuple[bytes, int]:
        async with client.output("j1", offset=3, follow=False) as stream:
            got = b"".join([chunk async for chunk in stream])
        return got, stream.offset

    assert run_with(server, alice, body) == (data[3:], len(data))


def test_run_with_a_file_or_a_coroutine_callback(
    server: FakeServer, alice: Credentials, servicer: FakeJobWorker
) -> None:
    servicer.plan = Plan(chunks=[b"a\x00", b"b"], exit_code=3)
    out = io.BytesIO()
    received: list[bytes] = []

    async def collect(chunk: bytes) -> None:
        await asyncio.sleep(0)
        received.append(chunk)

    async def body(client: AsyncClient) -> tuple[int | None, int | None]:
        first = await client.run(["x"], out=out)
        second = await client.run(["x"], out=collect)
        return first.exit_status, second.exit_status

    assert run_with(server, alice, body) == (3, 3)
    assert out.getvalue() == b"a\x00b"
    assert b"".join(received) == b"a\x00b"


def test_errors_are_the_same_exceptions(server: FakeServer, alice: Credentials) -> None:
    async def body(client: AsyncClient) -> None:
        await client.status("nope")

    with pytest.raises(JobNotFound, match="job nope not found"):
        run_with(server, alice, body)


def test_closing_a_followed_stream_ends_it(
    server: FakeServer, alice: Credentials, servicer: FakeJobWorker
) -> None:
    servicer.plan = Plan(chunks=[b"first"], hold=True)

    async def body(client: AsyncClient) -> list[bytes]:
        job = await client.start(["sleep", "100"])
        stream = client.output(job.id)
        got = [await stream.__anext__()]
        await stream.aclose()
        got += [chunk async for chunk in stream]
        return got

    assert run_with(server, alice, body) == [b"first"]
