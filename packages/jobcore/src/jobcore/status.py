"""What a job is: `JobState`, `ResourceUsage` and the `JobStatus` snapshot the Worker reports."""

from __future__ import annotations

import enum

import attrs

from jobcore.spec import Limits


class JobState(enum.StrEnum):
    RUNNING = "running"
    #: The command exited on its own (see exit_code).
    EXITED = "exited"
    #: The command was ended by a signal: a stop request, the OOM killer, or anything else (see signal).
    KILLED = "killed"
    #: The command never ran (see reason: no such file, cgroup or namespace refused, ...).
    FAILED_TO_START = "failed_to_start"
    #: The job's shim vanished without recording how the job ended; its processes were killed.
    LOST = "lost"

    @property
    def ended(self) -> bool:
        return self is not JobState.RUNNING


@attrs.frozen
class ResourceUsage:
    """What a job used, as counted by its resource controller (None where the backend cannot tell)."""

    cpu_seconds: float | None = None
    memory_peak_bytes: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None


@attrs.frozen
class JobStatus:
    """A snapshot of one job. Times are seconds since the epoch (UTC)."""

    id: str
    owner: str
    argv: tuple[str, ...]
    state: JobState
    #: The job's working directory.
    cwd: str = "/"
    #: Host pid of the job's top process (its init when it has a PID namespace); None before exec.
    pid: int | None = None
    exit_code: int | None = None
    #: Number of the signal that ended the command, when state is KILLED.
    signal: int | None = None
    oom_killed: bool = False
    started_at: float | None = None
    ended_at: float | None = None
    #: Why the job is in its state, in words: the start error, "stopped by request", ...
    reason: str | None = None
    stop_requested: bool = False
    usage: ResourceUsage = attrs.field(factory=ResourceUsage)
    #: The limits actually applied (after defaults and maximums).
    limits: Limits = attrs.field(factory=Limits)
    #: Name of the resource-controller backend that applied them.
    controller: str = "none"
    #: Namespaces the job got, e.g. ("pid", "mount", "net", "uts", "ipc").
    namespaces: tuple[str, ...] = ()
    #: Bytes of output stored so far.
    output_bytes: int = 0
    #: True when the stored output hit the per-job cap (the job was then stopped).
    output_capped: bool = False
    #: The uid and gid the command ran as (None: not recorded, a job from before they were).
    uid: int | None = None
    gid: int | None = None
    #: True when the job ran in the sandbox (see `Isolation.sandbox`).
    sandboxed: bool = False

    @property
    def shell_exit_code(self) -> int:
        """The exit code a shell would report: exit_code, 128+N when killed by signal N, 255 otherwise."""
        if self.exit_code is not None:
            return self.exit_code
        if self.signal is not None:
            return 128 + self.signal
        return 255
