"""jobcore: run Linux commands as isolated, resource-limited jobs; stream, inspect and stop them.

from jobcore import Worker, JobSpec, Limits
with Worker("/var/lib/jobworker/jobs") as worker:
    job = worker.start(JobSpec(["echo", "hello"], limits=Limits(memory=256 << 20)))
    for chunk in worker.output(job.id):
        ...
"""

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
