"""`Client` (blocking) and `AsyncClient` (asyncio): the same methods over a shared base, like httpx.

asyncio and grpc.aio are imported by AsyncClient's methods, not by this module: `Client` needs
neither, and jobctl's console script defers them (`jobclient.cli.console_main`), which saves a
`jobctl run` the ~35-45 ms their import costs (docs/benchmarks.md, "jobctl start-up").
"""

from __future__ import annotations

import builtins
import datetime
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import IO, Any, Self

import grpc

from jobclient import _conversions as conv
from jobclient.config import resolve
from jobclient.credentials import Credentials, credentials_for
from jobclient.errors import JobClientError, Unavailable, from_rpc_error
from jobclient.models import Isolation, Job, JobState, Limits, OutputChunk
from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
from jobclient.proto.jobworker.v1 import jobworker_pb2_grpc as pb_grpc

__all__ = [
    "DEFAULT_TARGET",
    "AsyncClient",
    "AsyncOutputChunkStream",
    "AsyncOutputStream",
    "Client",
    "OutputChunkStream",
    "OutputSink",
    "OutputStream",
]

DEFAULT_TARGET = "localhost:50051"
DEFAULT_TIMEOUT = 30.0
_SERVER_DEFAULT_GRACE = 10.0  # the proto's documented default for StopJob
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

OutputSink = IO[bytes] | Callable[[bytes], object]
"""Where `run`/`wait` write output: a binary file-like object (flushed per chunk) or a callable.

For AsyncClient the callable may also be a coroutine function.
"""

_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    # Output chunks are small (the server sends at most a few hundred KiB); a long job list may be big.
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    # Detect a dead server under a long `follow` stream. gRPC servers by default refuse pings more often
    # than every 5 minutes while they send no data (GOAWAY "too_many_pings"), so do not ping faster.
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.primary_user_agent", "jobclient"),
]


def write_all(out: Any, chunk: bytes) -> None:
    """Write every byte of chunk to a binary file-like object and flush it.

    A pipe write interrupted or cut short (its reader went away) may be partial, and BufferedWriter then
    returns a short count instead of raising: loop, so the next write reports the error.
    """
    view = memoryview(chunk)
    while view:
        written = out.write(view)
        if written is None:  # objects that do not report a count write everything
            break
        view = view[written:]
    flush = getattr(out, "flush", None)
    if callable(flush):
        flush()


def _sync_writer(out: OutputSink | None) -> Callable[[bytes], object]:
    sink: Any = sys.stdout.buffer if out is None else out
    if callable(getattr(sink, "write", None)):
        return lambda chunk: write_all(sink, chunk)
    if callable(sink):
        return sink  # type: ignore[no-any-return]
    raise TypeError(f"out must be a binary file-like object or a callable, not {type(out).__name__}")


#: A bound on ListJobs pages followed (a server that always sends a next token must not loop us forever).
_MAX_PAGES = 100_000
#: The page size `list()` asks for: the largest a server sends (ListJobsRequest.page_size), so that a
#: listing of up to that many jobs is one call rather than one per default page of 100.
_LIST_PAGE_SIZE = 1000


def _discard(_chunk: bytes) -> None:
    """An output sink that keeps nothing (`stop` following a job to its end)."""


#: How long `wait`/`run` keep trying to follow a job while the server is unreachable (a restart).
RECONNECT_SECONDS = 60.0


class _Reconnect:
    """Backoff for following a job again: 50 ms doubling to 2 s, for at most RECONNECT_SECONDS
    without any progress."""

    def __init__(self, limit: float) -> None:
        self._limit = limit
        self.reset()

    def reset(self) -> None:
        self._delay = 0.05
        self._since = time.monotonic()

    def next_delay(self, job_id: str, error: Unavailable | None) -> float:
        """The time to wait before following again; raises once the time without progress is over."""
        if time.monotonic() - self._since > self._limit:
            if error is not None:
                raise error
            raise Unavailable(f"the output of job {job_id} keeps ending before the job does")
        delay = self._delay
        self._delay = min(self._delay * 2, 2.0)
        return delay


class _BaseClient:
    """What Client and AsyncClient share: the target, credentials, channel options and deadlines."""

    def __init__(
        self,
        target: str,
        credentials: Credentials,
        timeout: float | None,
        reconnect: float = RECONNECT_SECONDS,
        tls_server_name: str | None = None,
    ) -> None:
        if not isinstance(credentials, Credentials):
            raise TypeError("credentials must be a jobclient.Credentials (from_files or for_user)")
        self.target = target
        self.tls_server_name = tls_server_name
        """The name checked against the server's certificate, when not the target's host name."""
        self.credentials = credentials
        self.timeout = timeout
        """Deadline in seconds of each unary call (None = none); output streams have none."""
        self.reconnect = reconnect
        """How long `wait`/`run` keep following a job while the server is unreachable (a restart)."""

    @classmethod
    def from_env(
        cls,
        *,
        context: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        reconnect: float = RECONNECT_SECONDS,
    ) -> Self:
        """A client configured as `jobctl` is: `$JOBCTL_SERVER`, `$JOBCTL_USER` (+ `$JOBCTL_CERTS`) or
        `$JOBCTL_CERT`/`$JOBCTL_KEY`/`$JOBCTL_CA`, `$JOBCTL_TLS_SERVER_NAME`, then the context
        `context` (else `$JOBCTL_CONTEXT`, else `current-context`) of the config file `$JOBCTL_CONFIG`
        (default ~/.config/jobctl/config.toml). See `jobclient.config`.

        Raises ConfigError (bad file, unknown context, no identity) or CredentialsError.
        """
        settings = resolve(context=context)
        return cls(
            settings.target,
            credentials=credentials_for(settings),
            timeout=timeout,
            reconnect=reconnect,
            tls_server_name=settings.tls_server_name,
        )

    def _channel_options(self) -> list[tuple[str, Any]]:
        if self.tls_server_name is None:
            return _CHANNEL_OPTIONS
        return [*_CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", self.tls_server_name)]

    def _stop_timeout(self, grace: float | None) -> float | None:
        # StopJob returns once the job has ended or the server's stop wait (5 s) is over, whichever
        # comes first; the grace bounds both.
        if self.timeout is None:
            return None
        return self.timeout + (grace if grace is not None else _SERVER_DEFAULT_GRACE)

    def _error(self, error: grpc.RpcError, job_id: str | None = None) -> JobClientError:
        return from_rpc_error(error, target=self.target, job_id=job_id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r}, credentials from {self.credentials.source or '?'})"


_STREAM_OUTPUT = "/jobworker.v1.JobWorker/StreamOutput"
#: ListJobs with its response left as bytes: `conv.listed_page` converts it, or reuses the page
#: converted from the same bytes (a server sends an unchanged page byte for byte as before).
_LIST_JOBS = "/jobworker.v1.JobWorker/ListJobs"
#: The trailing metadata of a follow stream that ended with its job: the job's final status, a
#: serialized `Job` (jobserver.service.FINAL_JOB_KEY). `wait` asks GetJob when it is not there (an
#: older server, a status too large for metadata, a stream that ended before the job did).
FINAL_JOB_KEY = "jobworker-final-job-bin"


def _final_job(metadata: Any, job_id: str) -> Job | None:
    """The ended job that a stream's trailing `metadata` carries (FINAL_JOB_KEY), if any."""
    for key, value in metadata or ():
        if key == FINAL_JOB_KEY and isinstance(value, bytes):
            try:
                job = conv.job_from_proto(pb.Job.FromString(value))
            except Exception:  # a damaged trailer: ask GetJob instead
                return None
            return job if job.ended and job.id == job_id else None
    return None


class RawOutput:
    """A StreamOutputResponse's `data` and `offset`, read straight from the wire by `decode_output`."""

    __slots__ = ("data", "offset")

    def __init__(self, data: bytes, offset: int) -> None:
        self.data = data
        self.offset = offset


def _varint(raw: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(raw) or shift > 63:
            raise ValueError("truncated or overlong varint in a StreamOutputResponse")
        byte = raw[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def decode_output(raw: bytes) -> RawOutput:
    """Decode a StreamOutputResponse for `output()`, which needs only `data` (field 1) and `offset`
    (field 2): one copy of the data, where upb's FromString and then reading `.data` make two (each
    read of a bytes field copies it). Other fields are skipped; the last occurrence of a field wins, as
    in protobuf. Raises ValueError on a malformed message."""
    data = b""
    offset = 0
    i, end = 0, len(raw)
    while i < end:
        key, i = _varint(raw, i)
        field, wire = key >> 3, key & 7
        if wire == 2:  # length-delimited
            length, i = _varint(raw, i)
            if i + length > end:
                raise ValueError("truncated field in a StreamOutputResponse")
            if field == 1:
                data = raw[i : i + length]
            i += length
        elif wire == 0:
            value, i = _varint(raw, i)
            if field == 2:
                offset = value
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wire} in a StreamOutputResponse")
    if i != end:
        raise ValueError("truncated field in a StreamOutputResponse")
    return RawOutput(data, offset)


class _StreamCall:
    """What OutputStream and OutputChunkStream share: the call, its cancel and the resume offset."""

    def __init__(self, call: Any, client: Client, job_id: str, offset: int) -> None:
        self._call = call
        self._client = client
        self._closed = False
        self.job_id = job_id
        self.offset = offset
        self._data = b""  # the last response's data, read once

    def _next_response(self) -> Any:
        while True:
            try:
                response: pb.StreamOutputResponse | RawOutput = next(self._call)
            except grpc.RpcError as e:
                if self._closed:
                    raise StopIteration from None
                raise self._client._error(e, self.job_id) from e
            # Each read of a bytes field copies it out of the message (upb): read it once.
            data = response.data
            if data:
                self.offset = response.offset + len(data)
                self._data = data
                return response

    def final_job(self) -> Job | None:
        """Once the stream has ended with its job: the job's final status, when the server sent it."""
        try:
            return _final_job(self._call.trailing_metadata(), self.job_id)
        except Exception:  # no metadata to read (a test double, a call that never started)
            return None

    def close(self) -> None:
        """Stop streaming; safe to call more than once and from another thread."""
        self._closed = True
        self._call.cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OutputStream(_StreamCall, Iterator[bytes]):
    """A job's output as an iterator of byte chunks. `close()` (or leaving a `with` block) cancels it.

    `offset` is the offset just past the last byte returned: pass it to `output()` to resume.
    """

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> bytes:
        self._next_response()
        return self._data


class OutputChunkStream(_StreamCall, Iterator[OutputChunk]):
    """A job's output as `OutputChunk`s (data with its stream and time); otherwise as `OutputStream`."""

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> OutputChunk:
        return conv.chunk_from_proto(self._next_response())


class Client(_BaseClient):
    """A blocking client of the job server. Use as a context manager, or call `close()`.

    >>> with Client("localhost:50051", credentials=Credentials.for_user("alice")) as client:
    ...     job = client.run(["echo", "hi"])
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        credentials: Credentials,
        timeout: float | None = DEFAULT_TIMEOUT,
        reconnect: float = RECONNECT_SECONDS,
        tls_server_name: str | None = None,
    ) -> None:
        super().__init__(target, credentials, timeout, reconnect, tls_server_name)
        self._channel = grpc.secure_channel(
            target, credentials.channel_credentials(), self._channel_options()
        )
        self._stub = pb_grpc.JobWorkerStub(self._channel)
        self._raw_output = self._channel.unary_stream(
            _STREAM_OUTPUT,
            request_serializer=pb.StreamOutputRequest.SerializeToString,
            response_deserializer=decode_output,
        )
        self._raw_list = self._channel.unary_unary(
            _LIST_JOBS, request_serializer=pb.ListJobsRequest.SerializeToString, response_deserializer=None
        )

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        limits: Limits | None = None,
        isolation: Isolation | None = None,
    ) -> Job:
        """Start `argv` (no shell) as a job; returns once it runs (or failed to start: see `Job.state`).

        `env` is the job's whole environment; `cwd` an absolute path ("/" by default).
        """
        request = conv.start_request(argv, env, cwd, limits, isolation)
        try:
            response: pb.StartJobResponse = self._stub.StartJob(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise self._error(e) from e
        return conv.job_from_proto(response.job)

    def stop(self, job_id: str, *, grace: float | None = None) -> Job:
        """SIGTERM the job, SIGKILL it after `grace` seconds (server default 10); return it once ended.

        The server answers within its stop wait (5 s by default) with the stop under way; for a longer
        grace period this then follows the job (discarding its output) until it has ended."""
        request = conv.stop_request(job_id, grace)
        try:
            response: pb.StopJobResponse = self._stub.StopJob(request, timeout=self._stop_timeout(grace))
        except grpc.RpcError as e:
            raise self._error(e, job_id) from e
        job = conv.job_from_proto(response.job)
        if job.ended:
            return job
        return self.wait(job_id, out=_discard, offset=job.output_bytes)

    def delete(self, job_id: str) -> Job:
        """Delete an ended job (its record and stored output); returns it as last seen. The owner or
        an admin may. FailedPrecondition while it runs, JobNotFound for someone else's."""
        try:
            response: pb.DeleteJobResponse = self._stub.DeleteJob(
                pb.DeleteJobRequest(job_id=job_id), timeout=self.timeout
            )
        except grpc.RpcError as e:
            raise self._error(e, job_id) from e
        return conv.job_from_proto(response.job)

    def status(self, job_id: str) -> Job:
        """The job's current status."""
        try:
            response: pb.GetJobResponse = self._stub.GetJob(
                pb.GetJobRequest(job_id=job_id), timeout=self.timeout
            )
        except grpc.RpcError as e:
            raise self._error(e, job_id) from e
        return conv.job_from_proto(response.job)

    def list(
        self, *, all_users: bool = False, user: str | None = None, include_usage: bool = False
    ) -> builtins.list[Job]:
        """The caller's jobs, oldest first; an admin may ask for everyone's or one user's. Every page
        the server returns is fetched, each as large as the server allows; argv may be shortened
        (`Job.argv_truncated`). A running job's `usage` is not measured (all None) unless
        `include_usage` (then up to 1 s old; `status()` reads it afresh); an ended job's is final."""
        jobs = self.iter_jobs(
            all_users=all_users, user=user, page_size=_LIST_PAGE_SIZE, include_usage=include_usage
        )
        return builtins.list(jobs)

    def iter_jobs(
        self,
        *,
        all_users: bool = False,
        user: str | None = None,
        page_size: int = 0,
        include_usage: bool = False,
    ) -> Iterator[Job]:
        """Like `list`, one page at a time (`page_size` 0: the server's default)."""
        request = conv.list_request(all_users, user, include_usage)
        request.page_size = page_size
        for _ in range(_MAX_PAGES):
            try:
                data: bytes = self._raw_list(request, timeout=self.timeout)
            except grpc.RpcError as e:
                raise self._error(e) from e
            jobs, token = conv.listed_page(data)
            yield from jobs
            if not token:
                return
            request.page_token = token
        raise JobClientError(f"the server sent more than {_MAX_PAGES} pages of jobs")

    def output(
        self,
        job_id: str,
        *,
        offset: int = 0,
        follow: bool = True,
        stream: str | None = None,
        since: datetime.datetime | float | None = None,
        tail: int | None = None,
    ) -> OutputStream:
        """The job's output from byte `offset`; with follow, until the job ends and all is sent.

        `stream` ("stdout" or "stderr") keeps one stream only; `since` (an aware datetime or a Unix
        time) starts at the first chunk written then or later; `tail` at the last N lines stored.
        Raises errors (JobNotFound, ...) when iterated.
        """
        request = conv.output_request(job_id, offset, follow, stream=stream, since=since, tail=tail)
        return OutputStream(self._raw_output(request), self, job_id, offset)

    def output_chunks(
        self,
        job_id: str,
        *,
        offset: int = 0,
        follow: bool = True,
        stream: str | None = None,
        since: datetime.datetime | float | None = None,
        tail: int | None = None,
    ) -> OutputChunkStream:
        """As `output`, but each item is an `OutputChunk`: one write of the command with its stream
        and time."""
        request = conv.output_request(
            job_id, offset, follow, stream=stream, since=since, tail=tail, annotate=True
        )
        return OutputChunkStream(self._stub.StreamOutput(request), self, job_id, offset)

    def wait(self, job_id: str, *, out: OutputSink | None = None, offset: int = 0) -> Job:
        """Copy the job's output from `offset` to `out` (default: stdout) until it ends; return the job."""
        write = _sync_writer(out)
        retry = _Reconnect(self.reconnect)
        while True:
            try:
                with self.output(job_id, offset=offset, follow=True) as stream:
                    try:
                        for chunk in stream:
                            write(chunk)
                            retry.reset()
                    finally:
                        offset = stream.offset
                    # The server says how the job ended at the stream's end: no GetJob call then.
                    final = stream.final_job()
                job = final if final is not None else self.status(job_id)
            except Unavailable as exc:
                # The server is restarting (or the network hiccuped): follow again from where we
                # are, for up to RECONNECT_SECONDS without progress.
                time.sleep(retry.next_delay(job_id, exc))
                continue
            if job.ended:
                return job
            time.sleep(retry.next_delay(job_id, None))

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        limits: Limits | None = None,
        isolation: Isolation | None = None,
        out: OutputSink | None = None,
    ) -> Job:
        """Start a job, copy its output to `out` (default: sys.stdout.buffer) live, return it once ended."""
        job = self.start(argv, env=env, cwd=cwd, limits=limits, isolation=isolation)
        if job.state is JobState.FAILED_TO_START:
            return job
        return self.wait(job.id, out=out)

    def close(self) -> None:
        """Close the channel (cancels streams in progress)."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _AsyncStreamCall:
    """What AsyncOutputStream and AsyncOutputChunkStream share (see _StreamCall)."""

    def __init__(self, call: Any, client: AsyncClient, job_id: str, offset: int) -> None:
        self._call = call
        self._client = client
        self._closed = False
        self.job_id = job_id
        self.offset = offset
        self._data = b""

    async def _next_response(self) -> Any:
        import asyncio  # here, not at the top: see the module's docstring

        while True:
            try:
                response: Any = await self._call.read()
            except asyncio.CancelledError:
                if self._closed:  # grpc.aio reports our own cancel() this way
                    raise StopAsyncIteration from None
                self._call.cancel()
                raise
            except grpc.RpcError as e:
                if self._closed:
                    raise StopAsyncIteration from None
                raise self._client._error(e, self.job_id) from e
            if response is grpc.aio.EOF:
                raise StopAsyncIteration
            data = response.data  # copied out of the message on each read (upb): once
            if data:
                self.offset = response.offset + len(data)
                self._data = data
                return response

    async def final_job(self) -> Job | None:
        """See `OutputStream.final_job`."""
        try:
            return _final_job(await self._call.trailing_metadata(), self.job_id)
        except Exception:
            return None

    async def aclose(self) -> None:
        """Stop streaming; safe to call more than once."""
        self._closed = True
        self._call.cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncOutputStream(_AsyncStreamCall, AsyncIterator[bytes]):
    """A job's output as an async iterator of byte chunks; `aclose()` (or `async with`) cancels it."""

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        await self._next_response()
        return self._data


class AsyncOutputChunkStream(_AsyncStreamCall, AsyncIterator[OutputChunk]):
    """The asyncio twin of `OutputChunkStream`."""

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> OutputChunk:
        return conv.chunk_from_proto(await self._next_response())


class AsyncClient(_BaseClient):
    """The asyncio twin of `Client` (grpc.aio): the same methods, awaited. Use `async with` or `aclose()`."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        credentials: Credentials,
        timeout: float | None = DEFAULT_TIMEOUT,
        reconnect: float = RECONNECT_SECONDS,
        tls_server_name: str | None = None,
    ) -> None:
        import grpc.aio  # here, not at the top: see the module's docstring

        super().__init__(target, credentials, timeout, reconnect, tls_server_name)
        self._channel = grpc.aio.secure_channel(
            target, credentials.channel_credentials(), self._channel_options()
        )
        self._stub = pb_grpc.JobWorkerStub(self._channel)
        self._raw_output = self._channel.unary_stream(
            _STREAM_OUTPUT,
            request_serializer=pb.StreamOutputRequest.SerializeToString,
            response_deserializer=decode_output,
        )
        self._raw_list = self._channel.unary_unary(
            _LIST_JOBS, request_serializer=pb.ListJobsRequest.SerializeToString, response_deserializer=None
        )

    async def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        limits: Limits | None = None,
        isolation: Isolation | None = None,
    ) -> Job:
        """See `Client.start`."""
        request = conv.start_request(argv, env, cwd, limits, isolation)
        try:
            response: pb.StartJobResponse = await self._stub.StartJob(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise self._error(e) from e
        return conv.job_from_proto(response.job)

    async def stop(self, job_id: str, *, grace: float | None = None) -> Job:
        """See `Client.stop`."""
        request = conv.stop_request(job_id, grace)
        try:
            response: pb.StopJobResponse = await self._stub.StopJob(
                request, timeout=self._stop_timeout(grace)
            )
        except grpc.RpcError as e:
            raise self._error(e, job_id) from e
        job = conv.job_from_proto(response.job)
        if job.ended:
            return job
        return await self.wait(job_id, out=_discard, offset=job.output_bytes)

    async def delete(self, job_id: str) -> Job:
        """See `Client.delete`."""
        try:
            response: pb.DeleteJobResponse = await self._stub.DeleteJob(
                pb.DeleteJobRequest(job_id=job_id), timeout=self.timeout
            )
        except grpc.RpcError as e:
            raise self._error(e, job_id) from e
        return conv.job_from_proto(response.job)

    async def status(self, job_id: str) -> Job:
        """See `Client.status`."""
        try:
            response: pb.GetJobResponse = await self._stub.GetJob(
                pb.GetJobRequest(job_id=job_id), timeout=self.timeout
            )
        except grpc.RpcError as e:
            raise self._error(e, job_id) from e
        return conv.job_from_proto(response.job)

    async def list(
        self, *, all_users: bool = False, user: str | None = None, include_usage: bool = False
    ) -> builtins.list[Job]:
        """See `Client.list`."""
        jobs = self.iter_jobs(
            all_users=all_users, user=user, page_size=_LIST_PAGE_SIZE, include_usage=include_usage
        )
        return [job async for job in jobs]

    async def iter_jobs(
        self,
        *,
        all_users: bool = False,
        user: str | None = None,
        page_size: int = 0,
        include_usage: bool = False,
    ) -> AsyncIterator[Job]:
        """See `Client.iter_jobs`; iterate with `async for`."""
        request = conv.list_request(all_users, user, include_usage)
        request.page_size = page_size
        for _ in range(_MAX_PAGES):
            try:
                data: bytes = await self._raw_list(request, timeout=self.timeout)
            except grpc.RpcError as e:
                raise self._error(e) from e
            jobs, token = conv.listed_page(data)
            for job in jobs:
                yield job
            if not token:
                return
            request.page_token = token
        raise JobClientError(f"the server sent more than {_MAX_PAGES} pages of jobs")

    def output(
        self,
        job_id: str,
        *,
        offset: int = 0,
        follow: bool = True,
        stream: str | None = None,
        since: datetime.datetime | float | None = None,
        tail: int | None = None,
    ) -> AsyncOutputStream:
        """See `Client.output`; iterate with `async for`."""
        request = conv.output_request(job_id, offset, follow, stream=stream, since=since, tail=tail)
        return AsyncOutputStream(self._raw_output(request), self, job_id, offset)

    def output_chunks(
        self,
        job_id: str,
        *,
        offset: int = 0,
        follow: bool = True,
        stream: str | None = None,
        since: datetime.datetime | float | None = None,
        tail: int | None = None,
    ) -> AsyncOutputChunkStream:
        """See `Client.output_chunks`; iterate with `async for`."""
        request = conv.output_request(
            job_id, offset, follow, stream=stream, since=since, tail=tail, annotate=True
        )
        return AsyncOutputChunkStream(self._stub.StreamOutput(request), self, job_id, offset)

    async def wait(self, job_id: str, *, out: OutputSink | None = None, offset: int = 0) -> Job:
        """See `Client.wait`; `out` may also be a coroutine function."""
        import asyncio
        import inspect

        write = _sync_writer(out)
        retry = _Reconnect(self.reconnect)
        while True:
            try:
                async with self.output(job_id, offset=offset, follow=True) as stream:
                    try:
                        async for chunk in stream:
                            result = write(chunk)
                            if inspect.isawaitable(result):
                                await result
                            retry.reset()
                    finally:
                        offset = stream.offset
                    final = await stream.final_job()
                job = final if final is not None else await self.status(job_id)
            except Unavailable as exc:
                await asyncio.sleep(retry.next_delay(job_id, exc))
                continue
            if job.ended:
                return job
            await asyncio.sleep(retry.next_delay(job_id, None))

    async def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        limits: Limits | None = None,
        isolation: Isolation | None = None,
        out: OutputSink | Callable[[bytes], Awaitable[object]] | None = None,
    ) -> Job:
        """See `Client.run`."""
        job = await self.start(argv, env=env, cwd=cwd, limits=limits, isolation=isolation)
        if job.state is JobState.FAILED_TO_START:
            return job
        return await self.wait(job.id, out=out)

    async def aclose(self) -> None:
        """Close the channel (cancels streams in progress)."""
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
