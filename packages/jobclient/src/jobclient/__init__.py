"""jobclient: the Python SDK of the Remote Job Worker (sync `Client`, asyncio `AsyncClient`).

    from jobclient import Client, Credentials, Limits

    with Client("localhost:50051", credentials=Credentials.for_user("alice")) as client:
        job = client.run(["sh", "-c", "echo hello"], limits=Limits(memory=256 << 20))
        print(job.state, job.exit_code)

Every error is a `jobclient.errors.JobClientError` (re-exported here).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from jobclient.client import DEFAULT_TARGET, AsyncClient, AsyncOutputStream, Client, OutputSink, OutputStream
from jobclient.credentials import Credentials
from jobclient.errors import (
    CredentialsError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    JobClientError,
    JobNotFound,
    PermissionDenied,
    ResourceExhausted,
    ServerError,
    Unavailable,
)
from jobclient.models import Isolation, Job, JobState, Limits, ResourceUsage

try:
    __version__ = version("jobclient")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "DEFAULT_TARGET",
    "AsyncClient",
    "AsyncOutputStream",
    "Client",
    "Credentials",
    "CredentialsError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "Isolation",
    "Job",
    "JobClientError",
    "JobNotFound",
    "JobState",
    "Limits",
    "OutputSink",
    "OutputStream",
    "PermissionDenied",
    "ResourceExhausted",
    "ResourceUsage",
    "ServerError",
    "Unavailable",
    "__version__",
]
