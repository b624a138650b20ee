"""`RpcStatusError`: an error the server answers with a gRPC status code and a message for the caller."""

from __future__ import annotations

import grpc


class RpcStatusError(Exception):
    """Raised anywhere under a handler; the interceptor turns it into the call's status and details."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RpcStatusError:
    return RpcStatusError(grpc.StatusCode.INVALID_ARGUMENT, message)


def job_not_found(job_id: str) -> RpcStatusError:
    """The one answer for a job that does not exist and for someone else's job (no existence leak)."""
    return RpcStatusError(grpc.StatusCode.NOT_FOUND, f"job {job_id} not found")
