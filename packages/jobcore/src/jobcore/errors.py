"""The exceptions jobcore raises. Users catch them by meaning; every message names what is wrong."""

from __future__ import annotations


class JobError(Exception):
    """Base class of every jobcore error."""


class InvalidSpec(JobError, ValueError):
    """A JobSpec (argv, env, cwd, owner, isolation) is malformed."""


class InvalidLimit(InvalidSpec):
    """A resource limit is negative, zero, absurd, above the allowed maximum or not enforceable."""


class InvalidJobId(JobError, ValueError):
    """A job id is not of the form jobcore issues (a UUID); it is never used as a path."""


class JobNotFound(JobError, LookupError):
    """No job with that id exists in this Worker's state directory."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class ControllerError(JobError):
    """A resource-controller backend cannot be used, or failed while setting up or tearing down a job."""


class UnknownController(ControllerError, ValueError):
    """No resource-controller backend is registered under that name."""


class WorkerError(JobError):
    """The Worker itself cannot run: its state directory is locked or unusable, or its launcher died."""


class StateError(JobError, OSError):
    """The Worker could not write a job's state (e.g. its disk is full). Also an OSError carrying the
    errno (ENOSPC, EDQUOT, EACCES...), so callers can tell a full disk from other failures."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class StopTimeout(WorkerError):
    """A stopped job did not end in time (its processes could not be killed, or its shim hangs)."""


class CorruptStateFile(JobError, ValueError):
    """A file of a job's state directory is unreadable or malformed (empty, truncated, not JSON, not an
    object, a field missing or of the wrong type, a directory in its place). Names the file."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class JobStillRunning(JobError):
    """The operation needs an ended job (e.g. removing it) and this one is still running."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} is still running; stop it first")
        self.job_id = job_id
