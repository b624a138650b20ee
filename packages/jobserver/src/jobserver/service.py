# ruff: noqa: N802 -- the handlers carry the gRPC method names
"""`JobWorkerService`: the handlers of `jobworker.v1.JobWorker`.

Each handler runs under `GuardInterceptor`, which has authenticated the caller (`caller()`) and turns
raised domain errors (`jobserver.errors`) and jobcore errors into statuses. Requests are translated by
`jobserver.convert`; jobs are found, read and changed through `jobserver.jobs.Jobs` only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Protocol

import grpc

from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
from jobclient.proto.jobworker.v1 import jobworker_pb2_grpc as pb_grpc
from jobcore import output_log
from jobcore.spec import RunAs
from jobserver import convert, listing
from jobserver.config import ServerConfig
from jobserver.errors import (
    DataLoss,
    IdentityError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    Unavailable,
)
from jobserver.identities import UserIds
from jobserver.identity import user_name
from jobserver.interceptor import caller, current_call
from jobserver.jobs import LISTED_FIGURES_MAX_AGE, Jobs, JobView
from jobserver.wire import varint

SERVICE_NAME = "jobworker.v1.JobWorker"
#: The most output one StreamOutputResponse carries. gRPC's synchronous server has one message in flight
#: per stream and each costs a hand-off to its C core, so large messages are what makes a stream fast
#: (docs/benchmarks.md); 1 MiB stays well under the 4 MiB that gRPC clients accept by default.
STREAM_CHUNK_BYTES = 1 << 20
#: The trailing metadata in which a follow stream that ended with its job carries the job's final
#: status (a serialized `Job`), so that the SDK's run/wait need no GetJob after it (the same key as
#: jobclient.client.FINAL_JOB_KEY). Left out when larger than FINAL_JOB_MAX_BYTES (a long argv):
#: gRPC clients refuse metadata past 8 KiB by default; the client then asks GetJob, as without it.
FINAL_JOB_KEY = "jobworker-final-job-bin"
FINAL_JOB_MAX_BYTES = 2048


class EncodedOutput:
    """A StreamOutputResponse of `data` at `offset` only (no stream, no time), in its wire form.

    Built by hand because that is one copy of the data (header, data and offset joined), where
    `StreamOutputResponse(data=...)` copies the data into the message and `SerializeToString()` copies
    it again (docs/benchmarks.md, "1 GiB through the stack"). The bytes are those protobuf writes:
    field 1 then field 2, each left out at its default (empty, 0). `output_bytes` is what the
    metrics count, known without reading the data back.
    """

    __slots__ = ("output_bytes", "wire")

    def __init__(self, data: bytes, offset: int) -> None:
        self.output_bytes = len(data)
        parts = [b"\x0a" + varint(len(data)), data] if data else []
        if offset:
            parts.append(b"\x10" + varint(offset))
        self.wire = b"".join(parts)


def serialize_output(response: EncodedOutput | pb.StreamOutputResponse) -> bytes:
    """StreamOutput's response serializer: an `EncodedOutput` is already on the wire form; a message
    (the indexed path's, with stream and time) is serialized by protobuf."""
    if isinstance(response, EncodedOutput):
        return response.wire
    return response.SerializeToString()


class _Reader(Protocol):
    def close(self) -> None: ...


class StreamRegistry:
    """The open output streams: bounded in number, and closed all at once on shutdown."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._readers: set[_Reader] = set()
        self._closed = False

    def add(self, reader: _Reader) -> None:
        with self._lock:
            if self._closed:
                reader.close()
                raise Unavailable("the server is shutting down")
            if len(self._readers) >= self._limit:
                reader.close()
                raise QuotaExceeded(
                    f"the server already serves {self._limit} output streams, the most it allows at once"
                )
            self._readers.add(reader)

    def remove(self, reader: _Reader) -> None:
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
    def __init__(self, jobs: Jobs, config: ServerConfig, user_ids: UserIds) -> None:
        self._jobs = jobs
        self._config = config
        self._user_ids = user_ids
        self.streams = StreamRegistry(config.max_concurrent_streams)
        self._listed = listing.ListedJobs()
        self._pages = listing.Pages(max_age=LISTED_FIGURES_MAX_AGE)

    def StartJob(self, request: pb.StartJobRequest, context: grpc.ServicerContext) -> pb.StartJobResponse:
        identity = caller()
        convert.check_isolation_policy(request.isolation, identity.role.value, self._config)
        user = None if request.isolation.run_as_root else self._run_as(identity.name)
        spec = convert.spec_from_request(request, identity.name, self._config, user)
        view = self._jobs.start(spec)
        current_call().job_id = view.status.id
        return pb.StartJobResponse(job=convert.job_to_proto(view.status))

    def _run_as(self, name: str) -> RunAs:
        try:
            return self._user_ids.run_as(name)
        except IdentityError as exc:
            raise QuotaExceeded(str(exc)) from None

    def StopJob(self, request: pb.StopJobRequest, context: grpc.ServicerContext) -> pb.StopJobResponse:
        job_id = convert.parse_job_id(request.job_id)
        grace = convert.stop_grace(request, self._config)
        view = self._jobs.stop(self._jobs.find(job_id, caller()), grace)
        return pb.StopJobResponse(job=convert.job_to_proto(view.status))

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.GetJobResponse:
        job_id = convert.parse_job_id(request.job_id)
        view = self._jobs.find(job_id, caller())
        return pb.GetJobResponse(job=convert.job_to_proto(view.status))

    def DeleteJob(self, request: pb.DeleteJobRequest, context: grpc.ServicerContext) -> pb.DeleteJobResponse:
        job_id = convert.parse_job_id(request.job_id)
        view = self._jobs.delete(self._jobs.find(job_id, caller()))
        return pb.DeleteJobResponse(job=convert.job_to_proto(view.status))

    def ListJobs(  # type: ignore[override]  # an encoded page: see jobserver.server.add_to_server
        self, request: pb.ListJobsRequest, context: grpc.ServicerContext
    ) -> listing.EncodedPage:
        identity = caller()
        scope = convert.list_scope(request)
        owner: str | None
        if scope == pb.LIST_SCOPE_OWN:
            owner = identity.name
        elif scope == pb.LIST_SCOPE_ALL:
            if not identity.is_admin:
                raise PermissionDenied("listing every user's jobs needs the admin role")
            owner = None
        else:
            if not request.user:
                raise InvalidArgument("scope LIST_SCOPE_USER needs user: whose jobs to list")
            owner = user_name(request.user)
            if owner is None:
                raise InvalidArgument(f"user {request.user[:64]!r} is not a valid user name")
            if owner != identity.name and not identity.is_admin:
                raise PermissionDenied("listing another user's jobs needs the admin role")
        return self._list_page(request, owner)

    def _list_page(self, request: pb.ListJobsRequest, owner: str | None) -> listing.EncodedPage:
        """One bounded page of `owner`'s jobs (everyone's for None); see jobserver.listing. The same
        page asked again while nothing it shows has changed (`Jobs.listing_version`) and within
        LISTED_FIGURES_MAX_AGE is served as built (`listing.Pages`)."""
        limit = listing.page_size(request)
        after = listing.decode_token(request.page_token)
        key = (owner, after, limit, request.include_usage)
        version = self._jobs.listing_version()  # before anything is read: a change meanwhile moves it
        now = time.monotonic()
        kept = self._pages.get(key, version, now)
        if kept is not None:
            return kept
        found = self._jobs.page(owner, after, limit + 1, with_usage=request.include_usage)
        entries: list[listing.ListedJob] = []
        size = 0
        last: tuple[float, str] = (0.0, "")
        token = ""
        for count, (view, position) in enumerate(found):
            entry = self._listed.entry(view.status)
            size += entry.size + 8
            if count == limit or (count and size > listing.MAX_PAGE_BYTES):
                token = listing.encode_token(last)
                break
            entries.append(entry)
            last = position
        page = listing.response(entries, token)
        self._pages.put(key, version, now, page)
        return page

    def StreamOutput(  # type: ignore[override]  # encoded responses: see jobserver.server.add_to_server
        self, request: pb.StreamOutputRequest, context: grpc.ServicerContext
    ) -> Iterator[EncodedOutput | pb.StreamOutputResponse]:
        job_id = convert.parse_job_id(request.job_id)
        view = self._jobs.find(job_id, caller())
        if _selects_by_index(request):
            yield from self._stream_by_index(view, request, context)
            return
        offset = request.offset
        stored = view.status.output_bytes
        reader = self._jobs.output(view, offset, request.follow, chunk_size=STREAM_CHUNK_BYTES)
        try:
            self.streams.add(reader)
            # Runs when the call ends for any reason, the client leaving included; close() wakes a
            # blocked read so the thread is released at once.
            if not context.add_callback(reader.close):
                reader.close()
            try:
                for chunk in reader:
                    yield EncodedOutput(chunk, offset)
                    offset += len(chunk)
            except OSError as exc:
                raise DataLoss(
                    f"the output of job {job_id} cannot be read at offset {offset}: {exc.strerror or exc}"
                ) from None
            if self.streams.closed and context.is_active():
                raise Unavailable(f"the server is shutting down; resume from offset {offset}")
            if offset < stored and context.is_active():
                raise DataLoss(
                    f"the stored output of job {job_id} ends at byte {offset}, short of the {stored} "
                    "bytes it had: the output file was truncated or replaced"
                )
            if request.follow and context.is_active():
                self._send_final_status(job_id, context)
        finally:
            self.streams.remove(reader)
            reader.close()

    def _send_final_status(self, job_id: str, context: grpc.ServicerContext) -> None:
        """A follow stream that reached the end of its job's output: the job's final status in the
        trailing metadata (FINAL_JOB_KEY), which is what GetJob would answer now. Nothing when the
        job has not ended (the stream ended for another reason), is gone meanwhile (deleted: the
        stream still ends OK, and the client's GetJob says so), or the status is too large."""
        try:
            status = self._jobs.find(job_id, caller()).status
        except NotFound:
            return
        if not status.state.ended:
            return
        final = convert.job_to_proto(status).SerializeToString()
        if len(final) <= FINAL_JOB_MAX_BYTES:
            context.set_trailing_metadata(((FINAL_JOB_KEY, final),))

    def _stream_by_index(
        self, view: JobView, request: pb.StreamOutputRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamOutputResponse]:
        """StreamOutput with a stream filter, a start time, a tail or annotations: the output read
        through its index (jobcore.output_log), one response per chunk the command wrote."""
        # The job's state is checked before the request's filter, as for an unfiltered stream.
        self._jobs.check_output(view, request.offset)
        stream = _STREAM_FILTERS.get(request.stream)
        if stream is None:
            raise InvalidArgument(f"unknown output stream {request.stream}")
        reader = self._jobs.indexed_output(
            view,
            request.offset,
            request.follow,
            stream=stream,
            since=request.since if request.HasField("since") else None,
            tail_lines=request.tail_lines if request.HasField("tail_lines") else None,
        )
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
                raise Unavailable(f"the server is shutting down; resume from offset {reader.offset}")
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
