"""The resource-controller plugin point: the `ResourceController` protocol and its per-job `Handle`.

Modelled on runc's cgroup `Manager`. A backend is a class registered in the `jobcore.controllers`
entry-point group. The Worker (a possibly threaded process) calls `check` and `create` before the job
exists; the job's first process (its init, inside the shim) calls `attach(state).enter(0)` before it
forks the command, so the command is born inside the cgroup; the shim calls `kill`, `stats`,
`oom_killed` and `destroy` when the job ends. Handles are rebuilt from `to_state()` (plain JSON) in
other processes, so a handle holds no open resources between calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol, runtime_checkable

import attrs

from jobcore.spec import Limits
from jobcore.status import ResourceUsage


@attrs.frozen
class Capabilities:
    """What a backend can do on this host, as found by `probe()`."""

    backend: str
    #: False when the backend cannot run here at all; `reason` says why.
    available: bool
    reason: str = ""
    #: "cgroup2", "cgroup1-hybrid", "cgroup1-legacy" or "none".
    mode: str = "none"
    #: Root of the subtree jobs go in (one per hierarchy on v1: "memory=/sys/fs/cgroup/memory/...").
    job_roots: tuple[str, ...] = ()
    #: Limits fields it can enforce here (names of `Limits` fields).
    enforceable: tuple[str, ...] = ()
    #: Kernel features by name: cgroup_kill, freezer, memory_swap_limit, oom_kill_counter, ...
    features: dict[str, bool] = attrs.field(factory=dict)
    #: Anything a user should know (e.g. "buffered writes are not IO-throttled on cgroup v1").
    notes: tuple[str, ...] = ()


@runtime_checkable
class Handle(Protocol):
    """One job's cgroup(s). Every method is safe to call from any process that has the state dict."""

    def to_state(self) -> dict[str, Any]:
        """A JSON-serialisable description that `ResourceController.attach` turns back into a Handle."""
        ...

    def applied(self) -> Limits:
        """The limits written for this job."""
        ...

    def enter(self, pid: int) -> None:
        """Move `pid` (0 = the calling process) into the job's cgroup(s)."""
        ...

    def pids(self) -> list[int]:
        """Every process currently in the job's cgroup(s)."""
        ...

    def kill(self) -> None:
        """SIGKILL every process in the cgroup(s), including ones that daemonized or called setsid."""
        ...

    def stats(self) -> ResourceUsage:
        """CPU time, peak memory and IO bytes so far."""
        ...

    def oom_killed(self) -> bool:
        """True when the kernel's OOM killer killed a process of this job (from the oom_kill counter)."""
        ...

    def destroy(self, timeout: float = 10.0) -> None:
        """Kill what is left, wait (bounded) for the cgroup(s) to be empty, remove them. Idempotent."""
        ...


@runtime_checkable
class ResourceController(Protocol):
    """A resource-controller backend (cgroup2, cgroup1, none, or a third party's)."""

    #: The name it is registered under and reported as in JobStatus.controller.
    name: ClassVar[str]

    def probe(self) -> Capabilities:
        """Report what this backend can do here. Never raises: unavailability is a report."""
        ...

    def check(self, limits: Limits, cwd: str) -> None:
        """Raise InvalidLimit if `limits` cannot be enforced for a job in `cwd`; create nothing."""
        ...

    def create(self, owner: str, job_id: str, limits: Limits, cwd: str) -> Handle:
        """Create `<parent>/remote-jobs/<owner>/<job_id>` and write the limits. Raises ControllerError."""
        ...

    def attach(self, state: dict[str, Any]) -> Handle:
        """Rebuild a Handle from `Handle.to_state()`."""
        ...

    def sweep(self, is_live: Callable[[str, str], bool]) -> list[str]:
        """Kill and remove job cgroups for which `is_live(owner, job_id)` is False; return their paths."""
        ...
