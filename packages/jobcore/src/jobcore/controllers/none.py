"""The `none` backend: nothing is limited, nothing is counted.

For unprivileged use and hosts without usable cgroups. It says so loudly in its probe, and a request
for any limit is an error (InvalidLimit naming the limit), never silently ignored. Process cleanup is
left to the job's init and PID namespace, so kill() has nothing to do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from jobcore.controllers.base import Capabilities, class_path
from jobcore.errors import ControllerError, InvalidLimit
from jobcore.spec import Limits
from jobcore.status import ResourceUsage

NOTHING_LIMITED = (
    "NOTHING IS LIMITED: the none backend enforces no cpu, memory, pids or IO limit and counts no usage; "
    "jobs asking for limits are refused"
)


class NoneController:
    """A backend that limits nothing (and refuses every limit)."""

    name: ClassVar[str] = "none"

    def probe(self) -> Capabilities:
        return Capabilities(backend=self.name, available=True, mode="none", notes=(NOTHING_LIMITED,))

    def check(self, limits: Limits, cwd: str) -> None:
        """Raise InvalidLimit naming the first limit set: none can be enforced."""
        for field, value in limits.requested().items():
            raise InvalidLimit(
                f"{field}={value} cannot be enforced: the resource-controller backend is 'none' "
                "(no cgroups); remove the limit or use a cgroup backend"
            )

    def create(self, owner: str, job_id: str, limits: Limits, cwd: str) -> NoneHandle:
        self.check(limits, cwd)
        return NoneHandle()

    def attach(self, state: dict[str, Any]) -> NoneHandle:
        return NoneHandle.from_state(state)

    def job_cgroups(self) -> list[tuple[str, str, NoneHandle]]:
        """No job has a cgroup."""
        return []

    def sweep(self, is_live: Callable[[str, str], bool]) -> list[str]:
        return []


class NoneHandle:
    """A job without a cgroup: it knows of no process and counts nothing."""

    def to_state(self) -> dict[str, Any]:
        return {"backend": NoneController.name, "handle": class_path(type(self))}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> NoneHandle:
        if state.get("backend") != NoneController.name:
            raise ControllerError(f"state of backend {state.get('backend')!r} given to {NoneController.name}")
        return cls()

    def applied(self) -> Limits:
        return Limits()

    def enter(self, pid: int) -> None:
        """Nothing to enter."""

    def pids(self) -> list[int]:
        return []

    def kill(self) -> None:
        """No-op: the job's init (PID namespace) takes its processes down with it."""

    def stats(self) -> ResourceUsage:
        return ResourceUsage()

    def oom_killed(self) -> bool:
        return False

    def destroy(self, timeout: float = 10.0) -> None:
        """Nothing to remove."""
