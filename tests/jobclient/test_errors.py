"""Every gRPC status the server may answer maps to one jobclient exception, for every method."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from fake_jobworker import FakeJobWorker, FakeServer

from jobclient import (
    AsyncClient,
    Client,
    Credentials,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    JobClientError,
    JobNotFound,
    PermissionDenied,
    ResourceExhausted,
    ServerError,
    Unavailable,
)
from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb

MAPPING: list[tuple[grpc.StatusCode, type[JobClientError]]] = [
    (grpc.StatusCode.NOT_FOUND, JobNotFound),
    (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
    (grpc.StatusCode.UNAUTHENTICATED, PermissionDenied),
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
    (grpc.StatusCode.OUT_OF_RANGE, InvalidArgument),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted),
    (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
    (grpc.StatusCode.UNAVAILABLE, Unavailable),
    (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
    (grpc.StatusCode.INTERNAL, ServerError),
    (grpc.StatusCode.UNKNOWN, ServerError),
    (grpc.StatusCode.UNIMPLEMENTED, ServerError),
    (grpc.StatusCode.DATA_LOSS, ServerError),
]

SYNC_CALLS: dict[str, Callable[[Client], Any]] = {
    "StartJob": lambda c: c.start(["true"]),
    "StopJob": lambda c: c.stop("j1"),
    "GetJob": lambda c: c.status("j1"),
    "ListJobs": lambda c: c.list(),
    "StreamOutput": lambda c: b"".join(c.output("j1")),
}


async def _drain(stream: Any) -> bytes:
    return b"".join([chunk async for chunk in stream])


ASYNC_CALLS: dict[str, Callable[[AsyncClient], Any]] = {
    "StartJob": lambda c: c.start(["true"]),
    "StopJob": lambda c: c.stop("j1"),
    "GetJob": lambda c: c.status("j1"),
    "ListJobs": lambda c: c.list(),
    "StreamOutput": lambda c: _drain(c.output("j1")),
}


@pytest.fixture
def with_job(servicer: FakeJobWorker) -> FakeJobWorker:
    servicer.add_job(pb.Job(id="j1", owner="alice", state=pb.JOB_STATE_EXITED, exit_code=0))
    return servicer


@pytest.mark.parametrize("method", sorted(SYNC_CALLS))
@pytest.mark.parametrize(("code", "exception"), MAPPING, ids=[c.name for c, _ in MAPPING])
def test_sync_client_maps_each_status_code(
    client: Client,
    with_job: FakeJobWorker,
    method: str,
    code: grpc.StatusCode,
    exception: type[JobClientError],
) -> None:
    with_job.fail[method] = (code, f"scripted {code.name} for {method}")
    with pytest.raises(exception) as caught:
        SYNC_CALLS[method](client)
    assert type(caught.value) is exception
    assert caught.value.code == code.name
    assert f"scripted {code.name} for {method}" in caught.value.message


@pytest.mark.parametrize("method", sorted(ASYNC_CALLS))
@pytest.mark.parametrize(("code", "exception"), MAPPING, ids=[c.name for c, _ in MAPPING])
def test_async_client_maps_each_status_code(  # noqa: PLR0917  (pytest fixtures)
    server: FakeServer,
    alice: Credentials,
    with_job: FakeJobWorker,
    method: str,
    code: grpc.StatusCode,
    exception: type[JobClientError],
) -> None:
    with_job.fail[method] = (code, f"scripted {code.name}")

    async def call() -> None:
        async with AsyncClient(server.target, credentials=alice) as c:
            await ASYNC_CALLS[method](c)

    with pytest.raises(exception) as caught:
        asyncio.run(call())
    assert type(caught.value) is exception
    assert caught.value.code == code.name


def test_every_error_is_a_job_client_error_and_the_hierarchy_is_flat() -> None:
    for _, exception in MAPPING:
        assert exception.__mro__[1] is JobClientError


def test_a_servicer_crash_is_a_server_error(client: Client, servicer: FakeJobWorker) -> None:
    servicer.crash.add("GetJob")
    with pytest.raises(ServerError) as caught:
        client.status("j1")
    assert caught.value.code == "UNKNOWN"


def test_a_slow_server_raises_deadline_exceeded_naming_the_target(
    server: FakeServer, alice: Credentials, with_job: FakeJobWorker
) -> None:
    with_job.delay["GetJob"] = 1.0
    with (
        Client(server.target, credentials=alice, timeout=0.2) as c,
        pytest.raises(DeadlineExceeded) as caught,
    ):
        c.status("j1")
    assert server.target in caught.value.message


def test_not_found_without_a_server_message_names_the_job(client: Client, servicer: FakeJobWorker) -> None:
    servicer.fail["GetJob"] = (grpc.StatusCode.NOT_FOUND, "")
    with pytest.raises(JobNotFound, match=r"^job j9 not found$"):
        client.status("j9")
