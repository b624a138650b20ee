"""`GuardInterceptor`: the one place every call goes through.

For each call it (1) establishes the caller's identity from the verified client certificate (refusing
the call when there is none), (2) makes it available to the handler through `current_call()`, (3) turns
the server's call errors (`jobserver.errors`) and jobcore's errors into gRPC statuses, and any other
exception into INTERNAL with a reference to the server log (never a traceback to the client), and (4)
writes exactly one audit record: who, which method, which job, the status code and the duration.

`failure_for` (with `CALL_ERROR_CODES`) is the only place in the server that decides a status code:
handlers and the modules under them raise domain errors and never name a gRPC code.

Per-job authorization (owner or admin) is decided by `jobserver.jobs.Jobs.find`, which every handler
that names a job uses; list scopes by `jobserver.service`. Both read the identity set here.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import grpc
import structlog

from jobcore.errors import (
    ControllerError,
    InvalidJobId,
    InvalidSpec,
    JobNotFound,
    JobStillRunning,
    StopTimeout,
    WorkerError,
)
from jobserver.direct_issuer import DirectIssuers
from jobserver.errors import (
    CallError,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    QuotaExceeded,
    Unauthenticated,
    Unavailable,
)
from jobserver.identity import CertificateIdentities, Identity, identity_from_auth_context
from jobserver.limits_per_user import CallShares
from jobserver.metrics import ServerMetrics

_current: contextvars.ContextVar[CallInfo] = contextvars.ContextVar("jobserver_call")

#: Methods audited at debug level: probes would otherwise drown the audit log.
QUIET_METHODS = frozenset({"/grpc.health.v1.Health/Check"})


@attrs.define
class CallInfo:
    """What the audit record says about one call; handlers fill in `job_id` once they know it."""

    method: str
    identity: Identity | None = None
    job_id: str | None = None


def current_call() -> CallInfo:
    """The call being served on this thread (set by GuardInterceptor)."""
    return _current.get()


def caller() -> Identity:
    """The authenticated identity of the call being served."""
    identity = _current.get().identity
    if identity is None:  # only reachable if a handler were registered without the interceptor
        raise Unauthenticated("no authenticated caller")
    return identity


@attrs.frozen
class Failure:
    """The status a call is answered with: a gRPC code and the message the caller sees."""

    code: grpc.StatusCode
    message: str


#: The one mapping from the server's call errors (jobserver.errors) to gRPC status codes.
CALL_ERROR_CODES: dict[type[CallError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    QuotaExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    DataLoss: grpc.StatusCode.DATA_LOSS,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def failure_for(exc: Exception) -> Failure | None:
    """The status a known error is answered with; None for an unexpected one."""
    if isinstance(exc, CallError):
        for cls, code in CALL_ERROR_CODES.items():
            if isinstance(exc, cls):
                return Failure(code, exc.message)
        return None  # a CallError subclass nobody mapped: a bug, answered INTERNAL
    if isinstance(exc, JobNotFound):
        return Failure(grpc.StatusCode.NOT_FOUND, f"job {exc.job_id} not found")
    if isinstance(exc, InvalidSpec | InvalidJobId):
        return Failure(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, JobStillRunning):
        return Failure(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, ControllerError):
        return Failure(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, StopTimeout):
        return Failure(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
    if isinstance(exc, WorkerError):
        return Failure(grpc.StatusCode.UNAVAILABLE, str(exc))
    if _disk_full(exc):
        return Failure(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "no space left in the server's state directory; try again once space is freed",
        )
    return None


def _disk_full(exc: Exception) -> bool:
    """ENOSPC/EDQUOT from jobcore's state files, or SQLite's "database or disk is full"."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return False


@attrs.frozen
class MalformedRequest:
    """Stands for a request that could not be decoded, so that the guard answers INVALID_ARGUMENT
    (gRPC itself would answer INTERNAL, before any handler or audit)."""

    error: str


def _lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        if deserialize is None:
            return data
        try:
            return deserialize(data)
        except Exception as exc:
            return MalformedRequest(str(exc)[:200] or type(exc).__name__)

    return decode


def _request_job_id(request: Any) -> str | None:
    raw = str(getattr(request, "job_id", "") or "")
    if not raw:
        return None
    return raw if len(raw) <= 64 else raw[:64] + "..."


# grpc ships no type stubs, so its base class is Any to mypy.
class GuardInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self,
        log: Any = None,
        metrics: ServerMetrics | None = None,
        shares: CallShares | None = None,
        issuers: DirectIssuers | None = None,
    ) -> None:
        self._log = log or structlog.get_logger("jobserver.audit")
        self._metrics = metrics
        #: Each identity's bounded share of calls and streams in flight (None: unbounded).
        self._shares = shares
        #: Our CA(s): client certificates must be signed by one directly (None: not checked).
        self._issuers = issuers
        #: Each client certificate's identity, worked out on its first call.
        self._certificates = CertificateIdentities(issuers)
        self._errors = structlog.get_logger("jobserver")

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.request_streaming and handler.response_streaming:
            # Server reflection (bidirectional): the same guard; its requests are not ours to decode.
            return handler._replace(stream_stream=self._guard_stream(method, handler.stream_stream))
        if handler.request_streaming:
            # No method of ours streams requests only; refuse rather than let one bypass the guard.
            def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
                context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not served")

            return grpc.unary_unary_rpc_method_handler(refuse)
        deserializer = _lenient(handler.request_deserializer)
        if handler.response_streaming:
            return handler._replace(
                request_deserializer=deserializer,
                unary_stream=self._guard_stream(method, handler.unary_stream),
            )
        return handler._replace(
            request_deserializer=deserializer, unary_unary=self._guard_unary(method, handler.unary_unary)
        )

    def _authenticate(self, call: CallInfo, request: Any, context: grpc.ServicerContext) -> None:
        call.identity = identity_from_auth_context(context.auth_context(), self._issuers, self._certificates)
        if isinstance(request, MalformedRequest):  # only after authentication: no probing without a cert
            raise InvalidArgument(
                f"the request is not a valid {call.method.rsplit('/', 1)[-1]} message: {request.error}"
            )

    def _share(self, call: CallInfo, stream: bool) -> contextlib.AbstractContextManager[None]:
        if self._shares is None or call.identity is None:
            return contextlib.nullcontext()
        return self._shares.held(call.identity.name, stream=stream)

    def _fail(self, exc: Exception, call: CallInfo, context: grpc.ServicerContext) -> None:
        """Abort the call for `exc` (context.abort raises)."""
        if context.code() not in (None, grpc.StatusCode.OK):
            raise exc  # the handler called context.abort() itself: its status stands
        failure = failure_for(exc)
        if failure is None:
            ref = uuid.uuid4().hex[:12]
            self._errors.error("unexpected error", method=call.method, ref=ref, exc_info=exc)
            failure = Failure(grpc.StatusCode.INTERNAL, f"internal error (server log reference {ref})")
        context.abort(failure.code, failure.message)

    def _outcome(self, exc: Exception, context: grpc.ServicerContext) -> tuple[grpc.StatusCode, str]:
        aborted = context.code()
        if aborted not in (None, grpc.StatusCode.OK):
            return aborted, context.details() or ""
        failure = failure_for(exc)
        if failure is None:
            return grpc.StatusCode.INTERNAL, "unexpected error"
        return failure.code, failure.message

    def _audit(
        self, call: CallInfo, code: grpc.StatusCode, started: float, detail: str | None, peer: str
    ) -> None:
        level = self._log.debug if call.method in QUIET_METHODS else self._log.info
        identity = call.identity
        seconds = time.monotonic() - started
        if self._metrics is not None:
            self._metrics.rpc_done(call.method, code.name, seconds)
        level(
            "rpc",
            user=identity.name if identity else None,
            role=identity.role.value if identity else None,
            method=call.method,
            job_id=call.job_id,
            code=code.name,
            duration_ms=round(seconds * 1000, 2),
            peer=peer,
            **({"detail": detail} if detail else {}),
        )

    def _guard_unary(self, method: str, inner: Callable[[Any, grpc.ServicerContext], Any]) -> Any:
        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.monotonic()
            call = CallInfo(method=method, job_id=_request_job_id(request))
            code, detail = grpc.StatusCode.OK, None
            token = _current.set(call)
            try:
                self._authenticate(call, request, context)
                with self._share(call, stream=False):
                    response = inner(request, context)
                if not context.is_active():  # the client left (or its deadline passed) meanwhile
                    code = grpc.StatusCode.CANCELLED
                return response
            except Exception as exc:
                code, detail = self._outcome(exc, context)
                self._fail(exc, call, context)
            finally:
                _current.reset(token)
                self._audit(call, code, started, detail, context.peer())

        return guarded

    def _guard_stream(self, method: str, inner: Callable[[Any, grpc.ServicerContext], Iterator[Any]]) -> Any:
        def guarded(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.monotonic()
            call = CallInfo(method=method, job_id=_request_job_id(request))
            code, detail = grpc.StatusCode.OK, None
            responses: Iterator[Any] | None = None
            if self._metrics is not None:
                self._metrics.stream_opened()
            share = contextlib.ExitStack()
            try:
                token = _current.set(call)
                try:
                    self._authenticate(call, request, context)
                    share.enter_context(self._share(call, stream=True))
                    responses = iter(inner(request, context))
                finally:
                    _current.reset(token)
                while True:
                    token = _current.set(call)
                    try:
                        item = next(responses)
                    except StopIteration:
                        break
                    finally:
                        _current.reset(token)
                    if self._metrics is not None:
                        self._metrics.streamed(item)
                    yield item
                if not context.is_active():
                    code = grpc.StatusCode.CANCELLED
            except GeneratorExit:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                code, detail = self._outcome(exc, context)
                self._fail(exc, call, context)
            finally:
                close = getattr(responses, "close", None)
                if close is not None:
                    close()
                share.close()
                self._audit(call, code, started, detail, context.peer())
                if self._metrics is not None:
                    self._metrics.stream_closed()

        return guarded
