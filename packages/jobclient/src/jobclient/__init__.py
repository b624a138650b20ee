"""jobclient: the Python SDK of the Remote Job Worker (sync `Client`, asyncio `AsyncClient`).

    from jobclient import Client, Credentials, Limits

    with Client("localhost:50051", credentials=Credentials.for_user("alice")) as client:
        job = client.run(["sh", "-c", "echo hello"], limits=Limits(memory=256 << 20))
        print(job.state, job.exit_code)

Every error is a `jobclient.errors.JobClientError` (re-exported here).

The names below are imported on first use (PEP 562), so that `import jobclient.cli` can configure grpc
(its C core reads GRPC_VERBOSITY once, at import) before anything imports it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jobclient._version import __version__

if TYPE_CHECKING:
    from jobclient.client import (
        DEFAULT_TARGET,
        AsyncClient,
        AsyncOutputStream,
        Client,
        OutputSink,
        OutputStream,
    )
    from jobclient.credentials import Credentials
    from jobclient.errors import (
        ConfigError,
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
    from jobclient.models import Isolation, Job, JobState, Limits, OutputChunk, ResourceUsage

_HOMES = {
    "jobclient.client": [
        "DEFAULT_TARGET",
        "AsyncClient",
        "AsyncOutputStream",
        "Client",
        "OutputSink",
        "OutputStream",
    ],
    "jobclient.credentials": ["Credentials"],
    "jobclient.errors": [
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
    ],
    "jobclient.models": ["Isolation", "Job", "JobState", "Limits", "OutputChunk", "ResourceUsage"],
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "DEFAULT_TARGET",
    "AsyncClient",
    "AsyncOutputStream",
    "Client",
    "ConfigError",
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
    "OutputChunk",
    "OutputSink",
    "OutputStream",
    "PermissionDenied",
    "ResourceExhausted",
    "ResourceUsage",
    "ServerError",
    "Unavailable",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'jobclient' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
