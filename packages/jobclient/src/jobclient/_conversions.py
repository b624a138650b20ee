"""Every conversion between jobclient's types and the wire (protobuf); JSON is in `_json`."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, TypeVar

from jobclient.models import Isolation, Job, JobState, Limits, OutputChunk, ResourceUsage
from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb

_STATE_FROM_PROTO: dict[int, JobState] = {
    pb.JOB_STATE_RUNNING: JobState.RUNNING,
    pb.JOB_STATE_EXITED: JobState.EXITED,
    pb.JOB_STATE_KILLED: JobState.KILLED,
    pb.JOB_STATE_FAILED_TO_START: JobState.FAILED_TO_START,
    pb.JOB_STATE_LOST: JobState.LOST,
}
_LIMIT_FIELDS = {
    # jobclient name: proto field
    "cpu": "cpu",
    "memory": "memory_bytes",
    "pids": "pids",
    "io_read_bps": "io_read_bps",
    "io_write_bps": "io_write_bps",
    "io_read_iops": "io_read_iops",
    "io_write_iops": "io_write_iops",
}


def limits_to_proto(limits: Limits) -> pb.Limits:
    message = pb.Limits()
    for name, field in _LIMIT_FIELDS.items():
        value = getattr(limits, name)
        if value is not None:
            setattr(message, field, value)
    return message


def limits_from_proto(message: pb.Limits) -> Limits:
    values = {
        name: getattr(message, field) for name, field in _LIMIT_FIELDS.items() if message.HasField(field)
    }
    return Limits(**values)


def isolation_to_proto(isolation: Isolation) -> pb.Isolation:
    return pb.Isolation(
        disable_pid=not isolation.pid,
        disable_mount=not isolation.mount,
        host_network=not isolation.net,
        disable_uts=not isolation.uts,
        disable_ipc=not isolation.ipc,
        disable_sandbox=not isolation.sandbox,
        run_as_root=isolation.run_as_root,
    )


def start_request(
    argv: Sequence[str],
    env: Mapping[str, str] | None,
    cwd: str | None,
    limits: Limits | None,
    isolation: Isolation | None,
) -> pb.StartJobRequest:
    if isinstance(argv, str):
        raise TypeError("argv must be a sequence of strings (no shell is involved), not a string")
    return pb.StartJobRequest(
        argv=list(argv),
        env=dict(env or {}),
        cwd=cwd or "",
        limits=limits_to_proto(limits or Limits()),
        isolation=isolation_to_proto(isolation or Isolation()),
    )


def list_request(all_users: bool, user: str | None, include_usage: bool = False) -> pb.ListJobsRequest:
    if all_users and user is not None:
        raise ValueError("pass either all_users=True or user=..., not both")
    if all_users:
        request = pb.ListJobsRequest(scope=pb.LIST_SCOPE_ALL)
    elif user is not None:
        request = pb.ListJobsRequest(scope=pb.LIST_SCOPE_USER, user=user)
    else:
        request = pb.ListJobsRequest(scope=pb.LIST_SCOPE_OWN)
    request.include_usage = include_usage
    return request


def stop_request(job_id: str, grace: float | None) -> pb.StopJobRequest:
    request = pb.StopJobRequest(job_id=job_id)
    if grace is not None:
        if grace < 0:
            raise ValueError(f"grace must be zero or more seconds, got {grace}")
        request.grace_seconds = grace
    return request


_UTC = datetime.UTC
_from_timestamp = datetime.datetime.fromtimestamp

T = TypeVar("T")


class _ByBytes(Generic[T]):
    """Immutable values converted from serialized messages, by those bytes: a value is a pure function
    of its message's bytes, so equal bytes can share one. Bounded in entries and in bytes of keys:
    cleared when either would be passed. Thread-safe."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.kept_bytes = 0
        self._values: dict[bytes, T] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: bytes, convert: Callable[[], T]) -> T:
        """The value kept for `key`, else `convert()`'s, kept (unless `key` alone is over the bytes)."""
        value = self._values.get(key)
        if value is None:
            value = convert()
            if len(key) > self.max_bytes:
                return value
            with self._lock:
                if len(self._values) >= self.max_entries or self.kept_bytes + len(key) > self.max_bytes:
                    self._values.clear()
                    self.kept_bytes = 0
                self._values[key] = value
                self.kept_bytes += len(key)
        return value


#: Limits by their serialized message: the jobs of a listing mostly share a few (the server's
#: defaults).
_LIMITS_BY_BYTES: _ByBytes[Limits] = _ByBytes(max_entries=256, max_bytes=256 * 1024)


def _limits(message: pb.Limits) -> Limits:
    return _LIMITS_BY_BYTES.get(message.SerializeToString(), lambda: limits_from_proto(message))


def job_from_proto(message: pb.Job) -> Job:
    # Written out field by field (no helper call per field): a listing converts hundreds of jobs.
    has = message.HasField
    usage = message.usage
    has_usage = usage.HasField
    return Job(
        id=message.id,
        owner=message.owner,
        argv=tuple(message.argv),
        state=_STATE_FROM_PROTO.get(message.state, JobState.UNKNOWN),
        pid=message.pid if has("pid") else None,
        exit_code=message.exit_code if has("exit_code") else None,
        signal=message.signal if has("signal") else None,
        oom_killed=message.oom_killed,
        started_at=_from_timestamp(message.started_at, tz=_UTC) if has("started_at") else None,
        ended_at=_from_timestamp(message.ended_at, tz=_UTC) if has("ended_at") else None,
        reason=message.reason,
        stop_requested=message.stop_requested,
        usage=ResourceUsage(
            cpu_seconds=usage.cpu_seconds if has_usage("cpu_seconds") else None,
            memory_peak_bytes=usage.memory_peak_bytes if has_usage("memory_peak_bytes") else None,
            io_read_bytes=usage.io_read_bytes if has_usage("io_read_bytes") else None,
            io_write_bytes=usage.io_write_bytes if has_usage("io_write_bytes") else None,
        ),
        limits=_limits(message.limits),
        controller=message.controller,
        namespaces=tuple(message.namespaces),
        output_bytes=message.output_bytes,
        output_capped=message.output_capped,
        cwd=message.cwd,
        argv_truncated=message.argv_truncated,
        uid=message.uid if has("uid") else None,
        gid=message.gid if has("gid") else None,
        sandboxed=message.sandboxed,
    )


#: Jobs of listings by their serialized message (`listed_job`): a job listed again unchanged (an
#: ended job always, a running one until its state, usage or output size moves) is not converted again.
_JOBS_BY_BYTES: _ByBytes[Job] = _ByBytes(max_entries=4096, max_bytes=8 * 1024 * 1024)


def listed_job(message: pb.Job) -> Job:
    """`job_from_proto` of a listed job, or the `Job` converted before from the same bytes."""
    return _JOBS_BY_BYTES.get(message.SerializeToString(), lambda: job_from_proto(message))


#: Whole ListJobs responses by their bytes: a server sends a page in which nothing changed byte for
#: byte as before (jobserver.listing.Pages), so polling an unchanged listing converts nothing.
_PAGES_BY_BYTES: _ByBytes[tuple[tuple[Job, ...], str]] = _ByBytes(max_entries=32, max_bytes=16 * 1024 * 1024)


def listed_page(data: bytes) -> tuple[tuple[Job, ...], str]:
    """A serialized ListJobsResponse as its jobs (each `listed_job`) and its next page token; the
    same bytes again give the same (immutable) result without parsing."""

    def convert() -> tuple[tuple[Job, ...], str]:
        response = pb.ListJobsResponse.FromString(data)
        return tuple(listed_job(job) for job in response.jobs), response.next_page_token

    return _PAGES_BY_BYTES.get(data, convert)


_STREAM_FILTER = {
    None: pb.OUTPUT_STREAM_UNSPECIFIED,
    "stdout": pb.OUTPUT_STREAM_STDOUT,
    "stderr": pb.OUTPUT_STREAM_STDERR,
    "none": pb.OUTPUT_STREAM_NONE,
}
_STREAM_NAME = {pb.OUTPUT_STREAM_STDOUT: "stdout", pb.OUTPUT_STREAM_STDERR: "stderr"}


def output_request(
    job_id: str,
    offset: int,
    follow: bool,
    *,
    stream: str | None = None,
    since: datetime.datetime | float | None = None,
    tail: int | None = None,
    annotate: bool = False,
) -> pb.StreamOutputRequest:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
    if stream not in _STREAM_FILTER:
        raise ValueError(f"stream must be None, 'stdout', 'stderr' or 'none', not {stream!r}")
    request = pb.StreamOutputRequest(
        job_id=job_id, offset=offset, follow=follow, stream=_STREAM_FILTER[stream], annotate=annotate
    )
    if since is not None:
        if isinstance(since, datetime.datetime):
            if since.tzinfo is None:
                raise ValueError("since must be a timezone-aware datetime (or a Unix time)")
            since = since.timestamp()
        request.since = float(since)
    if tail is not None:
        if isinstance(tail, bool) or not isinstance(tail, int) or tail < 0:
            raise ValueError(f"tail must be a non-negative number of lines, got {tail!r}")
        request.tail_lines = tail
    return request


def chunk_from_proto(message: pb.StreamOutputResponse) -> OutputChunk:
    return OutputChunk(
        data=bytes(message.data),
        offset=message.offset,
        stream=_STREAM_NAME.get(message.stream),
        time=(
            datetime.datetime.fromtimestamp(message.time, tz=datetime.UTC)
            if message.HasField("time")
            else None
        ),
    )
