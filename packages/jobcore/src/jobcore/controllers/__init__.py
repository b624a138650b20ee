"""Resource-controller backends, found through the `jobcore.controllers` entry-point group.

`load_controller("auto")` probes every backend and returns the available one that can enforce the
most kinds of limit, preferring (on a tie) cgroup2, then cgroup1, then third-party ones, then none.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from jobcore.controllers.base import Capabilities, Handle, ResourceController
from jobcore.errors import ControllerError, UnknownController

__all__ = [
    "Capabilities",
    "Handle",
    "ResourceController",
    "available_backends",
    "load_controller",
    "probe_all",
]

ENTRY_POINT_GROUP = "jobcore.controllers"
_PREFERENCE = ("cgroup2", "cgroup1")
_LAST_RESORT = "none"


def available_backends() -> dict[str, type[ResourceController]]:
    """Every registered backend class, by name, in order of preference."""
    found: dict[str, type[ResourceController]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.load()
    ordered = [n for n in _PREFERENCE if n in found]
    ordered += sorted(n for n in found if n not in _PREFERENCE and n != _LAST_RESORT)
    if _LAST_RESORT in found:
        ordered.append(_LAST_RESORT)
    return {n: found[n] for n in ordered}


def probe_all() -> dict[str, Capabilities]:
    """The capability report of every registered backend."""
    return {name: cls().probe() for name, cls in available_backends().items()}


def load_controller(name: str = "auto") -> ResourceController:
    """The backend called `name`, or with "auto" the best available one. Raises UnknownController or
    ControllerError (with the probe's reason) when the named backend cannot run here."""
    backends = available_backends()
    if name == "auto":
        # The available backend that can enforce the most kinds of limit wins; on a tie, the order of
        # preference (on a hybrid host cgroup2 may work yet offer fewer controllers than cgroup1).
        reasons = []
        best: tuple[int, ResourceController] | None = None
        for candidate, cls in backends.items():
            controller = cls()
            caps = controller.probe()
            if not caps.available:
                reasons.append(f"{candidate}: {caps.reason}")
            elif best is None or len(caps.enforceable) > best[0]:
                best = (len(caps.enforceable), controller)
        if best is None:
            raise ControllerError("no resource-controller backend works here: " + "; ".join(reasons))
        return best[1]
    if name not in backends:
        known = ", ".join(["auto", *backends])
        raise UnknownController(f"unknown resource-controller backend {name!r} (known: {known})")
    controller = backends[name]()
    caps = controller.probe()
    if not caps.available:
        raise ControllerError(f"resource-controller backend {name!r} cannot run here: {caps.reason}")
    return controller
