"""The resource-controller plugin point: the `ResourceController` protocol and its per-job `Handle`.

Modelled on runc's cgroup `Manager`. A backend is a class registered in the `jobcore.controllers`
entry-point group. The Worker (a possibly threaded process) calls `check` and `create` before the job
exists; the job's command joins the cgroup with `enter(0)` before it execs, so it is born inside the
cgroup; the shim calls `kill`, `stats`, `oom_killed` and `destroy` when the job ends. Handles are
rebuilt from `to_state()` (plain JSON) in other processes, so a handle holds no open resources between
calls.

**Rebuilding a handle needs no controller.** A handle's state names its class under "handle"
("module:QualName"), and that class has a classmethod `from_state(state) -> Handle`; the state holds
everything the handle needs (absolute cgroup paths, limits, IO device), so a controller configured with
non-default settings gives handles that work in a process that never saw those settings.
`jobcore.controllers.handle_from_state(state)` does this; the Worker and the shim use it.
`ResourceController.attach(state)` stays for third-party backends whose states name no handle class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
        """A JSON-serialisable description that `jobcore.controllers.handle_from_state` turns back into
        a Handle in any process: "backend" (the controller's name), "handle" ("module:QualName" of a
        class with a `from_state(state)` classmethod; optional for third-party backends) and whatever
        the handle needs."""
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
        """Rebuild a Handle from `Handle.to_state()`. The Worker and the shim call
        `jobcore.controllers.handle_from_state` instead, which needs no controller and falls back to
        this (on a controller built with no arguments) for states that name no handle class."""
        ...

    def job_cgroups(self) -> Sequence[tuple[str, str, Handle]]:
        """Every job cgroup found under this backend's root(s), as (owner, job_id, handle): what a
        sweep works on (which of them are stale is the Worker's decision)."""
        ...

    def sweep(self, is_live: Callable[[str, str], bool]) -> list[str]:
        """Kill and remove job cgroups for which `is_live(owner, job_id)` is False; return their paths.
        A thin wrapper over `job_cgroups()` and `Handle.destroy()`."""
        ...


def class_path(cls: type) -> str:
    """The "module:QualName" of `cls`: how a handle's state names its class."""
    return f"{cls.__module__}:{cls.__qualname__}"
