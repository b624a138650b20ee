"""Every exception jobclient raises, in one flat hierarchy: catch by meaning, not by transport error.

All derive from `JobClientError`. Errors the server returns are mapped from their gRPC status code by
`from_rpc_error` (the one place that knows the mapping) and carry the server's message.

This module does not import grpc (codes are matched by name), so that jobctl can name these classes
without paying for grpc's import in commands that never reach the network (`--help`, usage errors).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc

__all__ = [
    "ConfigError",
    "CredentialsError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "JobClientError",
    "JobNotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ServerError",
    "Unavailable",
]


class JobClientError(Exception):
    """Base class of every jobclient error.

    `message` is the human-readable text (the server's own message for server errors); `code` is the
    gRPC status code name (`"NOT_FOUND"`, ...) when the error came from an RPC, else None.
    """

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class CredentialsError(JobClientError):
    """A certificate or key file is missing, unreadable, malformed, or the key does not match."""


class ConfigError(JobClientError):
    """The client configuration is unusable: a bad config file, an unknown context, conflicting or
    incomplete settings (see `jobclient.config`)."""


class JobNotFound(JobClientError):
    """No such job, or it belongs to someone else (the server does not tell the two apart)."""


class PermissionDenied(JobClientError):
    """The server refused the caller's identity or role (PERMISSION_DENIED or UNAUTHENTICATED)."""


class InvalidArgument(JobClientError):
    """The request was malformed, or asked for a limit above the server's maximum."""


class ResourceExhausted(JobClientError):
    """The caller runs as many jobs as the server allows, or a server-side bound was hit."""


class FailedPrecondition(JobClientError):
    """The request cannot be served in the job's or server's current state."""


class Unavailable(JobClientError):
    """The server could not be reached: not running, wrong address, network or TLS handshake failure."""


class DeadlineExceeded(JobClientError):
    """The call did not complete within its timeout."""


class ServerError(JobClientError):
    """The server failed (INTERNAL, UNKNOWN, or any status jobclient does not otherwise map)."""


_BY_CODE: dict[str, type[JobClientError]] = {
    # gRPC status code name: exception
    "NOT_FOUND": JobNotFound,
    "PERMISSION_DENIED": PermissionDenied,
    "UNAUTHENTICATED": PermissionDenied,
    "INVALID_ARGUMENT": InvalidArgument,
    "OUT_OF_RANGE": InvalidArgument,
    "RESOURCE_EXHAUSTED": ResourceExhausted,
    "FAILED_PRECONDITION": FailedPrecondition,
    "UNAVAILABLE": Unavailable,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
}


def from_rpc_error(error: grpc.RpcError, *, target: str, job_id: str | None = None) -> JobClientError:
    """Translate a failed RPC (sync or grpc.aio) into the jobclient exception for its status code.

    The server's message is kept as is; jobclient only adds context where the server gave none, and
    names the target for transport failures (whose gRPC text says little).
    """
    call: Any = error  # every RpcError raised by a call is also a grpc.Call with code() and details()
    code: grpc.StatusCode = call.code()
    details: str = call.details() or ""
    cls = _BY_CODE.get(code.name, ServerError)
    if cls is Unavailable:
        message = f"cannot reach the job server at {target}: {details or 'unavailable'}"
        lowered = details.lower()
        if "socket closed" in lowered:
            message += (
                " (the server closed the connection: if it is a job server, it refused the TLS handshake,"
                " e.g. a client certificate that is expired, from another CA or not for client auth)"
            )
        elif "certificate_verify_failed" in lowered:
            message += " (the server's certificate does not verify against the CA file)"
    elif cls is DeadlineExceeded:
        message = f"the job server at {target} did not answer in time: {details or 'deadline exceeded'}"
    elif details:
        message = details
    elif cls is JobNotFound and job_id is not None:
        message = f"job {job_id} not found"
    else:
        message = f"the job server answered {code.name}"
    return cls(message, code=code.name)
