"""Every error the server defines, in one module.

Two kinds:

* **Call errors** (`CallError` and its subclasses): raised anywhere under a handler to refuse the call
  with a message meant for the caller. They say *what* went wrong in the server's own terms (not
  found, quota exceeded, ...); which gRPC status code each one is answered with is decided in one
  place only, `jobserver.interceptor.failure_for`, which also maps jobcore's errors. Nothing in this
  module imports grpc.
* **Server errors**: failures of the server itself (its configuration, its database, start-up, the
  operations endpoint, systemd notification, certificates), reported to the operator, never to a
  caller. The modules that raise them re-export them under their historical names
  (`jobserver.config.ConfigError`, ...).
"""

from __future__ import annotations


class CallError(Exception):
    """A refused call: the interceptor answers it with the status code of its class and `message`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(CallError):
    """The request itself is wrong (a field out of range, a malformed id, an unknown enum value)."""


class NotFound(CallError):
    """No such thing, or one the caller may not see (the two are answered alike: no existence leak)."""


class PermissionDenied(CallError):
    """The caller is known but not allowed to do this."""


class Unauthenticated(CallError):
    """The caller cannot be identified (no, or an unacceptable, client certificate)."""


class QuotaExceeded(CallError):
    """A per-user or server-wide bound is reached (running jobs, stored output, streams, calls)."""


class FailedPrecondition(CallError):
    """The request is valid but the job is not in a state that allows it (still running, output gone)."""


class OutOfRange(CallError):
    """A position past the end (an output offset past what is stored)."""


class DataLoss(CallError):
    """Stored data the server had is missing or damaged (an output file deleted or truncated)."""


class Unavailable(CallError):
    """The server cannot serve this now (shutting down); the caller may retry."""


def job_not_found(job_id: str) -> NotFound:
    """The one answer for a job that does not exist and for someone else's job (no existence leak)."""
    return NotFound(f"job {job_id} not found")


def output_not_stored(job_id: str) -> FailedPrecondition:
    """The answer for the output of a job whose directory (output included) is gone."""
    return FailedPrecondition(f"the output of job {job_id} is no longer stored here")


# ---------------------------------------------------------------------- the server's own failures


class ConfigError(Exception):
    """The configuration (file, environment or flags) is invalid; the message says where and why."""


class StoreError(Exception):
    """The database cannot be used: unreadable, or written by a newer schema."""


class StartupError(Exception):
    """The server cannot start; the message names the file, address or setting at fault."""


class IdentityError(Exception):
    """The uid map cannot be opened, or the range is used up; the message says which and what to do."""


class OperationsError(Exception):
    """An endpoint cannot listen; the message names the flag and the address."""


class ProbeError(Exception):
    """The probe endpoint cannot listen; the message names the address."""


class NotifyError(Exception):
    """`$NOTIFY_SOCKET` is set but the message could not be delivered; the message names the socket."""


class CertificateError(ValueError):
    """The certificate is not well-formed DER of the shape RFC 5280 describes."""


class MalformedMessageError(ValueError):
    """A hand-decoded protobuf message (the health check's) is not well formed."""
