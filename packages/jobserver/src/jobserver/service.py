# ruff: noqa: N802 -- the handlers carry the gRPC method names
"""`JobWorkerService`: the handlers of `jobworker.v1.JobWorker`.

Each handler runs under `GuardInterceptor`, which has authenticated the caller (`caller()`) and turns
raised `RpcStatusError`s and jobcore errors into statuses. Requests are translated by `jobserver.convert`.
"""

from __future__ import annotations

import errno
import math
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from jobclient._proto.jobworker.v1 import jobworker_pb2 as pb
from jobclient._proto.jobworker.v1 import jobworker_pb2_grpc as pb_grpc
from jobcore import jobdir, output_log
from jobcore.errors import JobNotFound
from jobcore.spec import RunAs
from jobserver import convert, listing
from jobserver.config import ServerConfig
from jobserver.errors import RpcStatusError, invalid
from jobserver.identities import IdentityError, UserIds
from jobserver.identity import user_name
from jobserver.interceptor import caller, current_call
from jobserver.jobs import Jobs

SERVICE_NAME = "jobworker.v1.JobWorker"
#: The most output one StreamOutputResponse carries. gRPC's synchronous server has one message in flight
#: per stream and each costs a hand-off to its C core, so large messages are what makes a stream fast
#: (docs/benchmarks.md); 1 MiB stays well under the 4 MiB that gRPC clients accept by default.
STREAM_CHUNK_BYTES = 1 << 20


class StreamRegistry:
    """The open output streams: bounded in number, and closed all at once on shutdown."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._readers: set[Any] = set()
        self._closed = False

    def add(self, reader: Any) -> None:
        with self._lock:
            if self._closed:
                reader.close()
                raise RpcStatusError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            if len(self._readers) >= self._limit:
                reader.close()
                raise RpcStatusError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the server already serves {self._limit} output streams, the most it allows at once",
                )
            self._readers.add(reader)

    def remove(self, reader: Any) -> None:
        with self._lock:
            self._readers.discard(reader)

    @property
    def closed(self) -> bool:
        return self._closed

    def close_all(self) -> None:
        """Refuse new streams and end the open ones (each reader's close() wakes its blocked read)."""
        with self._lock:
            self._closed = True
            readers = list(self._readers)
        for reader in readers:
            reader.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._readers)


class JobWorkerService(pb_grpc.JobWorkerServicer):
    def __init__(self, worker: Any, jobs: Jobs, config: ServerConfig, user_ids: UserIds) -> None:
        self._worker = worker
        self._jobs = jobs
        self._config = config
        self._user_ids = user_ids
        self.streams = StreamRegistry(config.max_concurrent_streams)

    def StartJob(self, request: pb.StartJobRequest, context: grpc.ServicerContext) -> pb.StartJobResponse:
        identity = caller()
        convert.check_isolation_policy(request.isolation, identity.role.value, self._config)
        user = None if request.isolation.run_as_root else self._run_as(identity.name)
        spec = convert.spec_from_request(request, identity.name, self._config, user)
        view = self._jobs.start(spec)
        current_call().job_id = view.status.id
        return pb.StartJobResponse(job=convert.job_to_proto(view.status, view.cwd))

    def _run_as(self, name: str) -> RunAs:
        try:
            return self._user_ids.run_as(name)
        except IdentityError as exc:
            raise RpcStatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None

    def StopJob(self, request: pb.StopJobRequest, context: grpc.ServicerContext) -> pb.StopJobResponse:
        job_id = convert.parse_job_id(request.job_id)
        grace = convert.stop_grace(request, self._config)
        view = self._jobs.stop(self._jobs.find(job_id, caller()), grace)
        return pb.StopJobResponse(job=convert.job_to_proto(view.status, view.cwd))

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.GetJobResponse:
        job_id = convert.parse_job_id(request.job_id)
        view = self._jobs.find(job_id, caller())
        return pb.GetJobResponse(job=convert.job_to_proto(view.status, view.cwd))

    def DeleteJob(self, request: pb.DeleteJobRequest, context: grpc.ServicerContext) -> pb.DeleteJobResponse:
        job_id = convert.parse_job_id(request.job_id)
        view = self._jobs.delete(self._jobs.find(job_id, caller()))
        return pb.DeleteJobResponse(job=convert.job_to_proto(view.status, view.cwd))

    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> pb.ListJobsResponse:
        identity = caller()
        scope = convert.list_scope(request)
        owner: str | None
        if scope == pb.LIST_SCOPE_OWN:
            owner = identity.name
        elif scope == pb.LIST_SCOPE_ALL:
            if not identity.is_admin:
                raise RpcStatusError(
                    grpc.StatusCode.PERMISSION_DENIED, "listing every user's jobs needs the admin role"
                )
            owner = None
        else:
            if not request.user:
                raise invalid("scope LIST_SCOPE_USER needs user: whose jobs to list")
            owner = user_name(request.user)
            if owner is None:
                raise invalid(f"user {request.user[:64]!r} is not a valid user name")
            if owner != identity.name and not identity.is_admin:
                raise RpcStatusError(
                    grpc.StatusCode.PERMISSION_DENIED, "listing another user's jobs needs the admin role"
                )
        return self._list_page(request, owner)

    def _list_page(self, request: pb.ListJobsRequest, owner: str | None) -> pb.ListJobsResponse:
        """One bounded page of `owner`'s jobs (everyone's for None); see jobserver.listing."""
        limit = listing.page_size(request)
        found = self._jobs.page(owner, listing.decode_token(request.page_token), limit + 1)
        response = pb.ListJobsResponse()
        size = 0
        last: tuple[float, str] = (0.0, "")
        view: Any
        for count, (view, position) in enumerate(found):
            job = convert.job_to_proto(view.status, view.cwd)
            listing.shorten_argv(job)
            size += job.ByteSize() + 8
            if count == limit or (count and size > listing.MAX_PAGE_BYTES):
                response.next_page_token = listing.encode_token(last)
                break
            response.jobs.append(job)
            last = position
        return response

    def StreamOutput(
        self, request: pb.StreamOutputRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamOutputResponse]:
        job_id = convert.parse_job_id(request.job_id)
        view = self._jobs.find(job_id, caller())
        if not view.live:
            raise RpcStatusError(
                grpc.StatusCode.FAILED_PRECONDITION, f"the output of job {job_id} is no longer stored here"
            )
        offset = request.offset
        stored = view.status.output_bytes
        if offset > stored:  # running jobs too: an offset is a position in what is stored
            raise RpcStatusError(
                grpc.StatusCode.OUT_OF_RANGE,
                f"offset {offset} is past the end of job {job_id}'s output ({stored} bytes so far)",
            )
        if view.status.started_at is not None and not self._output_present(job_id):
            raise RpcStatusError(
                grpc.StatusCode.DATA_LOSS, f"the output file of job {job_id} is missing from the server"
            )
        if _selects_by_index(request):
            yield from self._stream_by_index(job_id, request, context)
            return
        try:
            reader = self._worker.output(
                job_id, offset=offset, follow=request.follow, chunk_size=STREAM_CHUNK_BYTES
            )
        except JobNotFound:
            raise RpcStatusError(
                grpc.StatusCode.FAILED_PRECONDITION, f"the output of job {job_id} is no longer stored here"
            ) from None
        try:
            self.streams.add(reader)
            # Runs when the call ends for any reason, the client leaving included; close() wakes a
            # blocked read so the thread is released at once.
            if not context.add_callback(reader.close):
                reader.close()
            try:
                for chunk in reader:
                    yield pb.StreamOutputResponse(data=chunk, offset=offset)
                    offset += len(chunk)
            except OSError as exc:
                raise RpcStatusError(
                    grpc.StatusCode.DATA_LOSS,
                    f"the output of job {job_id} cannot be read at offset {offset}: {exc.strerror or exc}",
                ) from None
            if self.streams.closed and context.is_active():
                raise RpcStatusError(
                    grpc.StatusCode.UNAVAILABLE, f"the server is shutting down; resume from offset {offset}"
                )
            if offset < stored and context.is_active():
                raise RpcStatusError(
                    grpc.StatusCode.DATA_LOSS,
                    f"the stored output of job {job_id} ends at byte {offset}, short of the {stored} "
                    "bytes it had: the output file was truncated or replaced",
                )
        finally:
            self.streams.remove(reader)
            reader.close()

    def _output_present(self, job_id: str) -> bool:
        """Whether the job's output file is in the Worker's state directory (jobcore's layout)."""
        return os.path.lexists(os.path.join(self._worker.state_dir, job_id, jobdir.OUTPUT))

    def _stream_by_index(
        self, job_id: str, request: pb.StreamOutputRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamOutputResponse]:
        """StreamOutput with a stream filter, a start time, a tail or annotations: the output read
        through its index (jobcore.output_log), one response per chunk the command wrote."""
        directory = Path(self._worker.state_dir) / job_id
        stream = _STREAM_FILTERS.get(request.stream)
        if stream is None:
            raise invalid(f"unknown output stream {request.stream}")
        if request.HasField("since") and not math.isfinite(request.since):
            raise invalid(f"since must be a finite Unix time, got {request.since}")
        offset = request.offset
        if request.HasField("tail_lines"):
            tail_stream = output_log.ANY_STREAM if stream == output_log.NO_STREAM else stream
            offset = max(offset, output_log.tail_offset(directory, request.tail_lines, tail_stream))
        since_ns = round(request.since * 1e9) if request.HasField("since") else None
        try:
            reader = output_log.IndexedOutputReader(
                directory, offset, follow=request.follow, stream=stream, since_ns=since_ns
            )
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.ENOMEM):
                raise
            # Each indexed stream holds an inotify instance: the kernel caps them per user
            # (fs.inotify.max_user_instances, 128 by default), besides the fd limits.
            raise RpcStatusError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server cannot open another filtered output stream now ({exc.strerror}); "
                "retry later, or stream without --stdout/--stderr/--since/--tail/-t",
            ) from None
        try:
            self.streams.add(reader)
            if not context.add_callback(reader.close):
                reader.close()
            for start, data, chunk_stream, time_ns in reader:
                yield pb.StreamOutputResponse(
                    data=data,
                    offset=start,
                    stream=_STREAM_NAMES.get(chunk_stream, pb.OUTPUT_STREAM_UNSPECIFIED),
                    time=time_ns / 1e9,
                )
            if self.streams.closed and context.is_active():
                raise RpcStatusError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the server is shutting down; resume from offset {reader.offset}",
                )
        finally:
            self.streams.remove(reader)
            reader.close()


def _selects_by_index(request: pb.StreamOutputRequest) -> bool:
    return bool(
        request.stream or request.annotate or request.HasField("since") or request.HasField("tail_lines")
    )


_STREAM_FILTERS = {
    pb.OUTPUT_STREAM_UNSPECIFIED: output_log.ANY_STREAM,
    pb.OUTPUT_STREAM_STDOUT: output_log.STDOUT,
    pb.OUTPUT_STREAM_STDERR: output_log.STDERR,
    pb.OUTPUT_STREAM_NONE: output_log.NO_STREAM,
}
_STREAM_NAMES = {output_log.STDOUT: pb.OUTPUT_STREAM_STDOUT, output_log.STDERR: pb.OUTPUT_STREAM_STDERR}
