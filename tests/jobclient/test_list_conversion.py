"""`Client.list()` in one call of the largest page, and the listing's conversion of each job: the same
`Job` values and types as a conversion field by field from the message's own list of set fields."""

from __future__ import annotations

import asyncio
import datetime
import itertools
from typing import Any

import pytest
from fake_jobworker import FakeJobWorker, FakeServer

from jobclient import AsyncClient, Client, Credentials, Job, JobState, Limits, ResourceUsage
from jobclient import _conversions as conv
from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb

#: What a server sends at most in one page (ListJobsRequest.page_size's documentation).
LARGEST_PAGE = 1000


def test_list_asks_for_the_largest_page_and_iter_jobs_for_the_default(
    client: Client, servicer: FakeJobWorker
) -> None:
    servicer.list_result = [pb.Job(id=str(i), state=pb.JOB_STATE_RUNNING) for i in range(3)]
    assert [job.id for job in client.list()] == ["0", "1", "2"]
    assert [job.id for job in client.iter_jobs()] == ["0", "1", "2"]
    assert [request.page_size for request in servicer.calls("ListJobs")] == [LARGEST_PAGE, 0]


def test_async_list_asks_for_the_largest_page(
    server: FakeServer, servicer: FakeJobWorker, alice: Credentials
) -> None:
    servicer.list_result = [pb.Job(id="a", state=pb.JOB_STATE_EXITED)]

    async def main() -> tuple[list[Job], list[Job]]:
        async with AsyncClient(server.target, credentials=alice, timeout=10) as client:
            return await client.list(), [job async for job in client.iter_jobs()]

    listed, iterated = asyncio.run(main())
    assert [job.id for job in listed] == [job.id for job in iterated] == ["a"]
    assert [request.page_size for request in servicer.calls("ListJobs")] == [LARGEST_PAGE, 0]


def _by_set_fields(message: pb.Job) -> Job:
    """The reference conversion: from ListFields() (what is set), every other field at its default."""
    present: dict[str, Any] = {field.name: value for field, value in message.ListFields()}
    usage = {field.name: value for field, value in message.usage.ListFields()}
    limits = {field.name: value for field, value in message.limits.ListFields()}
    names = {"memory_bytes": "memory"}
    times = {
        name: datetime.datetime.fromtimestamp(present[name], tz=datetime.UTC)
        for name in ("started_at", "ended_at")
        if name in present
    }
    states = {
        pb.JOB_STATE_RUNNING: JobState.RUNNING,
        pb.JOB_STATE_EXITED: JobState.EXITED,
        pb.JOB_STATE_KILLED: JobState.KILLED,
        pb.JOB_STATE_FAILED_TO_START: JobState.FAILED_TO_START,
        pb.JOB_STATE_LOST: JobState.LOST,
    }
    scalars = {
        k: v for k, v in present.items() if k not in ("argv", "namespaces", "usage", "limits", "state")
    }
    return Job(
        **{**scalars, **times},
        argv=tuple(present.get("argv", ())),
        namespaces=tuple(present.get("namespaces", ())),
        state=states.get(present.get("state", 0), JobState.UNKNOWN),
        usage=ResourceUsage(**usage),
        limits=Limits(**{names.get(k, k): v for k, v in limits.items()}),
    )


OPTIONAL = {"pid": 7, "exit_code": 0, "signal": 9, "started_at": 1.5, "ended_at": 2.25, "uid": 0, "gid": 1000}
USAGE = {"cpu_seconds": 0.0, "memory_peak_bytes": 1 << 20, "io_read_bytes": 0, "io_write_bytes": 5}


@pytest.mark.parametrize("mask", range(0, 128, 3))
def test_each_job_converts_as_its_set_fields_say(mask: int) -> None:
    message = pb.Job(
        id="0b6f3f3e-8f0a-4d8e-9d55-3c1b1b1b1b1b",
        owner="bob",
        argv=["sleep", "600"] if mask & 1 else [],
        state=[pb.JOB_STATE_RUNNING, pb.JOB_STATE_KILLED, 99, pb.JOB_STATE_UNSPECIFIED][mask % 4],
        oom_killed=bool(mask & 2),
        reason="stopped by request" if mask & 4 else "",
        stop_requested=bool(mask & 8),
        controller="cgroup1",
        namespaces=["pid", "net"] if mask & 16 else [],
        output_bytes=mask * 1000,
        output_capped=bool(mask & 32),
        cwd="/tmp",
        argv_truncated=bool(mask & 64),
        sandboxed=bool(mask & 1),
    )
    for bit, (name, value) in enumerate(OPTIONAL.items()):
        if mask >> bit & 1:
            setattr(message, name, value)
    for bit, (name, value) in enumerate(USAGE.items()):
        if mask >> (bit + 2) & 1:
            setattr(message.usage, name, value)
    if mask & 4:
        message.limits.CopyFrom(pb.Limits(cpu=0.5, memory_bytes=512 << 20, pids=mask + 1))
    job = conv.job_from_proto(message)
    assert job == _by_set_fields(message)
    for name in ("started_at", "ended_at"):
        value = getattr(job, name)
        assert value is None or (isinstance(value, datetime.datetime) and value.tzinfo is datetime.UTC)
    assert type(job.argv) is tuple and type(job.namespaces) is tuple
    assert type(job.usage) is ResourceUsage and type(job.limits) is Limits


def test_equal_limits_share_one_value_and_the_shared_values_are_bounded() -> None:
    first = conv.job_from_proto(pb.Job(id="a", limits=pb.Limits(cpu=1.0, memory_bytes=512 << 20, pids=256)))
    second = conv.job_from_proto(pb.Job(id="b", limits=pb.Limits(cpu=1.0, memory_bytes=512 << 20, pids=256)))
    other = conv.job_from_proto(pb.Job(id="c", limits=pb.Limits(cpu=1.0, memory_bytes=512 << 20, pids=255)))
    assert first.limits is second.limits  # converted once (a Limits is immutable)
    assert other.limits == Limits(cpu=1.0, memory=512 << 20, pids=255) != first.limits
    assert conv.job_from_proto(pb.Job(id="d")).limits == Limits()
    for pids in itertools.islice(itertools.count(1), 3 * conv._LIMITS_BY_BYTES.max_entries):
        assert conv.job_from_proto(pb.Job(id="e", limits=pb.Limits(pids=pids))).limits == Limits(pids=pids)
        assert len(conv._LIMITS_BY_BYTES) <= conv._LIMITS_BY_BYTES.max_entries


@pytest.mark.parametrize(
    "message",
    [
        pb.Job(id="a", state=pb.JOB_STATE_RUNNING, pid=1),
        pb.Job(
            id="big", argv=["x" * 3000], state=pb.JOB_STATE_RUNNING, usage=pb.ResourceUsage(cpu_seconds=1)
        ),
        pb.Job(id="e", state=pb.JOB_STATE_EXITED, exit_code=0, ended_at=2.5, limits=pb.Limits(pids=3)),
    ],
)
def test_a_listed_job_is_its_conversion_and_kept_by_its_bytes(message: pb.Job) -> None:
    first = conv.listed_job(message)
    assert first == conv.job_from_proto(message)
    assert conv.listed_job(pb.Job.FromString(message.SerializeToString())) is first  # the same bytes
    changed = pb.Job()
    changed.CopyFrom(message)
    changed.output_bytes += 1
    assert conv.listed_job(changed) == conv.job_from_proto(changed) != first


def test_a_job_listed_again_unchanged_is_not_converted_again_and_a_changed_one_is(
    client: Client, servicer: FakeJobWorker
) -> None:
    running = pb.Job(id="a", owner="alice", state=pb.JOB_STATE_RUNNING, pid=7, output_bytes=0)
    servicer.list_result = [running]
    (first,) = client.list()
    (again,) = client.list()
    assert again is first  # the same bytes: the Job converted before
    servicer.list_result = [pb.Job(id="a", owner="alice", state=pb.JOB_STATE_RUNNING, pid=7, output_bytes=3)]
    (wrote,) = client.list()
    assert wrote.output_bytes == 3 and wrote.state is JobState.RUNNING
    servicer.list_result = [
        pb.Job(id="a", owner="alice", state=pb.JOB_STATE_KILLED, signal=15, stop_requested=True)
    ]
    (ended,) = client.list()
    assert (ended.state, ended.signal, ended.stop_requested, ended.pid) == (JobState.KILLED, 15, True, None)


def test_the_jobs_kept_are_bounded() -> None:
    for i in range(conv._JOBS_BY_BYTES.max_entries + 100):
        assert conv.listed_job(pb.Job(id=str(i), state=pb.JOB_STATE_EXITED)).id == str(i)
        assert len(conv._JOBS_BY_BYTES) <= conv._JOBS_BY_BYTES.max_entries
        assert conv._JOBS_BY_BYTES.kept_bytes <= conv._JOBS_BY_BYTES.max_bytes


def test_a_page_received_again_byte_for_byte_is_not_parsed_again(
    client: Client, servicer: FakeJobWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer.list_result = [
        pb.Job(id="a", owner="alice", state=pb.JOB_STATE_RUNNING, pid=7),
        pb.Job(id="b", owner="alice", state=pb.JOB_STATE_EXITED, exit_code=0),
    ]
    first = client.list()
    parsed: list[bytes] = []
    real = pb.ListJobsResponse.FromString

    def counting(data: bytes) -> pb.ListJobsResponse:
        parsed.append(data)
        return real(data)

    monkeypatch.setattr(pb.ListJobsResponse, "FromString", counting)
    again = client.list()
    assert again == first and all(a is b for a, b in zip(again, first, strict=True))
    assert parsed == []  # the same bytes: the page converted before
    servicer.list_result = [pb.Job(id="a", owner="alice", state=pb.JOB_STATE_KILLED, signal=9)]
    (changed,) = client.list()
    assert len(parsed) == 1 and (changed.id, changed.state, changed.signal) == ("a", JobState.KILLED, 9)


def test_the_pages_kept_are_bounded_and_a_page_over_the_bound_is_not_kept() -> None:
    kept = conv._PAGES_BY_BYTES
    for i in range(kept.max_entries + 10):
        data = pb.ListJobsResponse(jobs=[pb.Job(id=str(i))], next_page_token=f"t{i}").SerializeToString()
        jobs, token = conv.listed_page(data)
        assert [j.id for j in jobs] == [str(i)] and token == f"t{i}"
        assert len(kept) <= kept.max_entries and kept.kept_bytes <= kept.max_bytes
    huge = pb.ListJobsResponse(jobs=[pb.Job(id="h", argv=["x" * (kept.max_bytes + 1)])]).SerializeToString()
    before = kept.kept_bytes
    (job,), _ = conv.listed_page(huge)
    assert job.id == "h" and kept.kept_bytes == before and huge not in kept._values
