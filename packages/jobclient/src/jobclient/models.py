"""jobclient's own value types: what the SDK takes and returns (never protobuf messages)."""

from __future__ import annotations

import datetime
import enum
import math

import attrs

__all__ = ["Isolation", "Job", "JobState", "Limits", "OutputChunk", "ResourceUsage"]

_UINT64_MAX = 2**64 - 1


class JobState(enum.Enum):
    """The lifecycle state of a job."""

    RUNNING = "running"
    """The command is running."""
    EXITED = "exited"
    """The command exited on its own; see `Job.exit_code`."""
    KILLED = "killed"
    """The command was ended by a signal; see `Job.signal`."""
    FAILED_TO_START = "failed_to_start"
    """The command never ran; see `Job.reason`."""
    LOST = "lost"
    """The job's supervisor vanished without recording how the job ended."""
    UNKNOWN = "unknown"
    """The server reported a state this version of jobclient does not know."""

    @property
    def ended(self) -> bool:
        """True for every state a job cannot leave."""
        return self in (JobState.EXITED, JobState.KILLED, JobState.FAILED_TO_START, JobState.LOST)


def _positive_int(instance: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an int, not {type(value).__name__}")
    if not 0 < value <= _UINT64_MAX:
        raise ValueError(f"{attribute.name} must be a positive integer, got {value}")


def _positive_cpu(instance: object, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"cpu must be a number of cores, not {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"cpu must be a positive number of cores, got {value}")


@attrs.frozen(kw_only=True)
class Limits:
    """Resource limits of a job. None = the server's default; the server refuses values above its maximum.

    Sizes are bytes and rates bytes per second (parse `512M`, `10M/s` with `jobclient.units`).
    """

    cpu: float | None = attrs.field(default=None, validator=_positive_cpu)
    """CPU in cores, e.g. 0.5."""
    memory: int | None = attrs.field(default=None, validator=_positive_int)
    """Memory in bytes (no swap past it)."""
    pids: int | None = attrs.field(default=None, validator=_positive_int)
    """Most processes and threads at once."""
    io_read_bps: int | None = attrs.field(default=None, validator=_positive_int)
    io_write_bps: int | None = attrs.field(default=None, validator=_positive_int)
    io_read_iops: int | None = attrs.field(default=None, validator=_positive_int)
    io_write_iops: int | None = attrs.field(default=None, validator=_positive_int)


@attrs.frozen(kw_only=True)
class Isolation:
    """Which namespaces a job gets of its own, and its sandbox. All on by default; False shares the
    host's. Every weakening (a False here, or run_as_root) is refused with PermissionDenied unless
    the server's policy allows it for the caller's role (by default admins may, users may not)."""

    pid: bool = True
    mount: bool = True
    net: bool = True
    """False = the host's network; True = only the job's own loopback interface."""
    uts: bool = True
    ipc: bool = True
    sandbox: bool = True
    """False = the host's filesystem as it is, and the job's user keeps its capabilities."""
    run_as_root: bool = False
    """True = uid 0 instead of the caller's own unprivileged uid."""


@attrs.frozen(kw_only=True)
class ResourceUsage:
    """What a job used, as far as the server could measure it (None = not measured)."""

    cpu_seconds: float | None = None
    memory_peak_bytes: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None


@attrs.frozen(kw_only=True)
class Job:
    """A job as the server reported it."""

    id: str
    owner: str
    argv: tuple[str, ...]
    state: JobState
    pid: int | None = None
    """Host pid of the job's top process, while known."""
    exit_code: int | None = None
    """Set when state is EXITED."""
    signal: int | None = None
    """Set when state is KILLED: the signal that ended the command."""
    oom_killed: bool = False
    started_at: datetime.datetime | None = None
    ended_at: datetime.datetime | None = None
    reason: str = ""
    """Why the job is in its state, in words."""
    stop_requested: bool = False
    usage: ResourceUsage = ResourceUsage()
    limits: Limits = Limits()
    """The limits actually applied."""
    controller: str = ""
    """The resource-controller backend that applied them (cgroup2, cgroup1, none)."""
    namespaces: tuple[str, ...] = ()
    output_bytes: int = 0
    output_capped: bool = False
    cwd: str = ""
    argv_truncated: bool = False
    """True when argv was shortened (listings); `Client.status` returns it whole."""
    uid: int | None = None
    """The uid the command ran as."""
    gid: int | None = None
    sandboxed: bool = False
    """True when the job ran in the sandbox."""

    @property
    def ended(self) -> bool:
        """True once the job can no longer change state."""
        return self.state.ended

    @property
    def exit_status(self) -> int | None:
        """The job's outcome as a shell would report it: the exit code, or 128+N when killed by signal N.

        None while running, and for jobs that failed to start, were lost or are in an unknown state.
        """
        if self.state is JobState.EXITED and self.exit_code is not None:
            return self.exit_code
        if self.state is JobState.KILLED and self.signal is not None:
            return 128 + self.signal
        return None


@attrs.frozen(kw_only=True)
class OutputChunk:
    """One piece of a job's output as the command wrote it (from `output_chunks`)."""

    data: bytes
    offset: int
    """Offset of data's first byte in the job's whole (interleaved) output."""
    stream: str | None
    """"stdout" or "stderr" (None when the server did not say)."""
    time: datetime.datetime | None
    """When the job's supervisor read it from the command (UTC)."""
