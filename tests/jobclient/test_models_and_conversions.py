"""jobclient's own types, and their conversion from/to protobuf and JSON."""

from __future__ import annotations

import datetime
import json

import pytest

from jobclient import Isolation, Job, JobState, Limits, ResourceUsage, _json
from jobclient import _conversions as conv
from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb


def full_proto_job() -> pb.Job:
    return pb.Job(
        id="j1",
        owner="alice",
        argv=["sh", "-c", "exit 3"],
        state=pb.JOB_STATE_EXITED,
        pid=42,
        exit_code=3,
        oom_killed=True,
        started_at=1_700_000_000.5,
        ended_at=1_700_000_002.0,
        reason="exited",
        stop_requested=True,
        usage=pb.ResourceUsage(cpu_seconds=0.25, memory_peak_bytes=1, io_read_bytes=2, io_write_bytes=3),
        limits=pb.Limits(
            cpu=0.5, memory_bytes=4, pids=5, io_read_bps=6, io_write_bps=7, io_read_iops=8, io_write_iops=9
        ),
        controller="cgroup2",
        namespaces=["pid", "net"],
        output_bytes=10,
        output_capped=True,
        cwd="/tmp",
    )


def test_every_job_field_is_converted_from_protobuf() -> None:
    job = conv.job_from_proto(full_proto_job())
    assert job == Job(
        id="j1",
        owner="alice",
        argv=("sh", "-c", "exit 3"),
        state=JobState.EXITED,
        pid=42,
        exit_code=3,
        signal=None,
        oom_killed=True,
        started_at=datetime.datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=datetime.UTC),
        ended_at=datetime.datetime(2023, 11, 14, 22, 13, 22, tzinfo=datetime.UTC),
        reason="exited",
        stop_requested=True,
        usage=ResourceUsage(cpu_seconds=0.25, memory_peak_bytes=1, io_read_bytes=2, io_write_bytes=3),
        limits=Limits(
            cpu=0.5, memory=4, pids=5, io_read_bps=6, io_write_bps=7, io_read_iops=8, io_write_iops=9
        ),
        controller="cgroup2",
        namespaces=("pid", "net"),
        output_bytes=10,
        output_capped=True,
        cwd="/tmp",
    )


def test_unset_optional_fields_become_none() -> None:
    job = conv.job_from_proto(pb.Job(id="j", state=pb.JOB_STATE_RUNNING))
    assert (job.pid, job.exit_code, job.signal, job.started_at, job.ended_at) == (
        None,
        None,
        None,
        None,
        None,
    )
    assert job.limits == Limits()
    assert job.usage == ResourceUsage()


def test_a_state_unknown_to_this_client_is_unknown_not_an_error() -> None:
    from_the_future = pb.Job(id="j", state=99)  # type: ignore[arg-type]  # a newer server's state
    assert conv.job_from_proto(from_the_future).state is JobState.UNKNOWN
    assert conv.job_from_proto(pb.Job(id="j")).state is JobState.UNKNOWN


def test_limits_round_trip_through_protobuf_and_unset_stays_unset() -> None:
    limits = Limits(cpu=1.5, memory=1 << 30, io_write_iops=100)
    message = conv.limits_to_proto(limits)
    assert not message.HasField("pids")
    assert message.memory_bytes == 1 << 30
    assert conv.limits_from_proto(message) == limits


def test_isolation_is_all_on_by_default_and_maps_to_disable_flags() -> None:
    assert conv.isolation_to_proto(Isolation()) == pb.Isolation()
    message = conv.isolation_to_proto(Isolation(pid=False, mount=False, net=False, uts=False, ipc=False))
    assert message == pb.Isolation(
        disable_pid=True, disable_mount=True, host_network=True, disable_uts=True, disable_ipc=True
    )


@pytest.mark.parametrize(
    "kwargs",
    [{"cpu": 0}, {"cpu": -1.0}, {"cpu": float("nan")}, {"memory": 0}, {"pids": -5}, {"memory": 2**64}],
)
def test_limits_refuse_non_positive_or_out_of_range_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be a positive"):
        Limits(**kwargs)  # type: ignore[arg-type]


def test_limits_refuse_wrong_types() -> None:
    with pytest.raises(TypeError):
        Limits(memory="1G")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Limits(pids=True)


@pytest.mark.parametrize(
    ("state", "exit_code", "signal", "expected"),
    [
        (JobState.EXITED, 0, None, 0),
        (JobState.EXITED, 3, None, 3),
        (JobState.KILLED, None, 9, 137),
        (JobState.KILLED, None, 15, 143),
        (JobState.RUNNING, None, None, None),
        (JobState.FAILED_TO_START, None, None, None),
        (JobState.LOST, None, None, None),
    ],
)
def test_exit_status_is_the_shell_convention(
    state: JobState, exit_code: int | None, signal: int | None, expected: int | None
) -> None:
    job = Job(id="j", owner="a", argv=("x",), state=state, exit_code=exit_code, signal=signal)
    assert job.exit_status == expected


def test_job_json_is_plain_data_and_round_trips() -> None:
    job = conv.job_from_proto(full_proto_job())
    data = json.loads(json.dumps(_json.job_to_json(job)))
    assert data["state"] == "exited"
    assert data["started_at"] == "2023-11-14T22:13:20.500000+00:00"
    assert data["limits"]["memory"] == 4
    assert data["exit_status"] == 3
    assert _json.job_from_json(data) == job


def test_argv_must_not_be_a_string() -> None:
    with pytest.raises(TypeError, match="no shell"):
        conv.start_request("ls -l", None, None, None, None)
