"""`WorkerAPI`: the jobcore Worker as the server uses it, as a `typing.Protocol`.

The server reaches the Worker only through the members listed here, so mypy checks every use in the
server against them, and checks that `jobcore.Worker` has each of them with a compatible signature
(`_jobcore_worker_is_a_worker_api` below: a typed return that mypy verifies). A test double (or another
worker implementation) only has to provide these members.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from jobcore.spec import JobSpec
from jobcore.status import JobStatus


class OutputChunks(Protocol):
    """What `WorkerAPI.output` returns: the job's output as chunks of bytes; `close()` from any
    thread ends the iteration (it wakes a read that waits for new output) and releases the file."""

    def __iter__(self) -> Iterator[bytes]: ...

    def __next__(self) -> bytes: ...

    def close(self) -> None: ...


class ControllerAPI(Protocol):
    """The Worker's resource controller, as the server uses it."""

    @property
    def name(self) -> str:
        """The backend's name ("cgroup1", "cgroup2", "none")."""
        ...

    def sweep(self, is_live: Callable[[str, str], bool]) -> list[str]:
        """Kill and remove the job cgroups for which `is_live(owner, job_id)` is False; their paths."""
        ...


class WorkerAPI(Protocol):
    """Exactly the members of `jobcore.Worker` the server calls (see jobcore's docs for each)."""

    @property
    def state_dir(self) -> Path:
        """The directory holding one directory per job (named by its id)."""
        ...

    @property
    def controller(self) -> ControllerAPI: ...

    def start(self, spec: JobSpec) -> JobStatus: ...

    def status(self, job_id: str, *, usage_max_age: float = 0.0, with_usage: bool = True) -> JobStatus:
        """Raises jobcore's JobNotFound for a job it does not know. A running job's usage and output
        size may be up to `usage_max_age` seconds old (listings); without `with_usage` it carries no
        usage and none is read."""
        ...

    def statuses(
        self, job_ids: Iterable[str], *, usage_max_age: float = 0.0, with_usage: bool = True
    ) -> list[JobStatus | None]:
        """`status()` of each (None for a job it does not know), in one call."""
        ...

    @property
    def changes(self) -> int:
        """Moves whenever any job's status, apart from live usage and output sizes, may have changed
        (a listing built while it stays the same is current)."""
        ...

    def list(self, owner: str | None = None) -> list[JobStatus]: ...

    def running_count(self, owner: str | None = None) -> int: ...

    def running_output_bytes(self, owner: str | None = None) -> int: ...

    def stop(self, job_id: str, grace: float | None = None, *, timeout: float | None = None) -> JobStatus: ...

    def remove(self, job_id: str) -> JobStatus: ...

    def output(
        self, job_id: str, offset: int = 0, follow: bool = True, chunk_size: int = ...
    ) -> OutputChunks: ...

    def close(self) -> None: ...


#: What builds the server's Worker: `jobcore.Worker` itself, or anything called like it.
WorkerFactory = Callable[..., WorkerAPI]


if TYPE_CHECKING:
    from jobcore import Worker

    def _jobcore_worker_is_a_worker_api(worker: Worker) -> WorkerAPI:
        # mypy fails here, naming the member, when jobcore.Worker stops providing what the server uses.
        return worker

    _jobcore_worker_is_a_worker_factory: WorkerFactory = Worker
