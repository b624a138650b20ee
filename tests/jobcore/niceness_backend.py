"""A third party's resource-controller backend with a setting of its own, for the Worker's tests: it
runs every job at a configured CPU niceness. Its handles carry the setting in their state and name
their class, so the shim rebuilds them (`handle_from_state`) with no controller object at all."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

from jobcore.controllers.base import Capabilities
from jobcore.controllers.none import NoneController, NoneHandle
from jobcore.errors import ControllerError


class NicenessController(NoneController):
    name: ClassVar[str] = "niceness"

    def __init__(self, niceness: int = 0) -> None:
        self.niceness = niceness

    def probe(self) -> Capabilities:
        return Capabilities(backend=self.name, available=True, mode="none")

    def create(self, owner: str, job_id: str, limits: Any, cwd: str) -> NicenessHandle:
        self.check(limits, cwd)
        return NicenessHandle(self.niceness)

    def attach(self, state: dict[str, Any]) -> NicenessHandle:
        # What a controller-bound rebuild gives: this object's own setting, not the job's.
        return NicenessHandle(self.niceness)


class NicenessHandle(NoneHandle):
    def __init__(self, niceness: int) -> None:
        self.niceness = niceness

    def to_state(self) -> dict[str, Any]:
        return {
            "backend": NicenessController.name,
            "handle": f"{__name__}:NicenessHandle",
            "niceness": self.niceness,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> NicenessHandle:
        niceness = state.get("niceness")
        if isinstance(niceness, bool) or not isinstance(niceness, int):
            raise ControllerError(f"niceness state without a niceness: {dict(state)!r}")
        return cls(niceness)

    def enter(self, pid: int) -> None:
        os.setpriority(os.PRIO_PROCESS, pid, self.niceness)
