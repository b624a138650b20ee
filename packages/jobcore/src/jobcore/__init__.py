"""jobcore: run Linux commands as isolated, resource-limited jobs; stream, inspect and stop them.

from jobcore import Worker, JobSpec, Limits
with Worker("/var/lib/jobworker/jobs") as worker:
    job = worker.start(JobSpec(["echo", "hello"], limits=Limits(memory=256 << 20)))
    for chunk in worker.output(job.id):
        ...
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobcore.errors import (
        ControllerError,
        InvalidJobId,
        InvalidLimit,
        InvalidSpec,
        JobError,
        JobNotFound,
        StateError,
        StopTimeout,
        UnknownController,
        WorkerError,
    )
    from jobcore.spec import Isolation, JobSpec, Limits, RunAs
    from jobcore.status import JobState, JobStatus, ResourceUsage
    from jobcore.worker import OutputReader, Worker

#: Where each public name lives. They are imported on first use (PEP 562), not here: the launcher
#: (`python -m jobcore.launcher`) imports this package before its own module, and needs none of the
#: Worker's side (threads, asyncio, ssl, shutil...): what it imports is what every shim forks and
#: tears down (docs/benchmarks.md, "The launcher's imports").
_LAZY = {
    **dict.fromkeys(
        (
            "ControllerError",
            "InvalidJobId",
            "InvalidLimit",
            "InvalidSpec",
            "JobError",
            "JobNotFound",
            "StateError",
            "StopTimeout",
            "UnknownController",
            "WorkerError",
        ),
        "jobcore.errors",
    ),
    **dict.fromkeys(("Isolation", "JobSpec", "Limits", "RunAs"), "jobcore.spec"),
    **dict.fromkeys(("JobState", "JobStatus", "ResourceUsage"), "jobcore.status"),
    **dict.fromkeys(("OutputReader", "Worker"), "jobcore.worker"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jobcore' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later look-ups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


#: The version of this distribution (tests/test_workspace.py keeps it equal to pyproject.toml's).
__version__ = "0.1.0"

__all__ = [
    "ControllerError",
    "InvalidJobId",
    "InvalidLimit",
    "InvalidSpec",
    "Isolation",
    "JobError",
    "JobNotFound",
    "JobSpec",
    "JobState",
    "JobStatus",
    "Limits",
    "OutputReader",
    "ResourceUsage",
    "RunAs",
    "StateError",
    "StopTimeout",
    "UnknownController",
    "Worker",
    "WorkerError",
]
