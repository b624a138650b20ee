"""Resource-controller backends, found through the `jobcore.controllers` entry-point group.

`load_controller("auto")` probes every backend and returns the available one that can enforce the
most kinds of limit, preferring (on a tie) cgroup2, then cgroup1, then third-party ones, then none.
`handle_from_state(state)` rebuilds a job's handle from its `to_state()` in any process, without the
controller that created it.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from typing import Any, cast

from jobcore.controllers.base import Capabilities, Handle, ResourceController
from jobcore.errors import ControllerError, UnknownController

__all__ = [
    "Capabilities",
    "Handle",
    "ResourceController",
    "available_backends",
    "handle_from_state",
    "load_controller",
    "probe_all",
]

ENTRY_POINT_GROUP = "jobcore.controllers"
_PREFERENCE = ("cgroup2", "cgroup1")
_LAST_RESORT = "none"
_CLASS_PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$")
#: The handle classes of the built-in backends, for their states written before states named their
#: class (scanning the entry points instead costs milliseconds per handle).
_BUILTIN_HANDLES = {
    "cgroup2": "jobcore.controllers.cgroup_v2:CgroupV2Handle",
    "cgroup1": "jobcore.controllers.cgroup_v1:CgroupV1Handle",
    "none": "jobcore.controllers.none:NoneHandle",
}


def available_backends() -> dict[str, type[ResourceController]]:
    """Every registered backend class, by name, in order of preference."""
    # Imported here, not at the top: the launcher imports this package (shims rebuild handles through
    # it) and never looks up a backend; importlib.metadata and what it pulls in (email, zipfile,
    # csv...) would be ~1.5 MiB more of the launcher for every shim to fork and tear down.
    from importlib.metadata import entry_points

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


def handle_from_state(state: Mapping[str, Any], *, controller_class: str | None = None) -> Handle:
    """Rebuild a job's Handle from its `Handle.to_state()`, in any process, with no controller object.

    The state's "handle" names the handle class ("module:QualName"); its `from_state(state)` rebuilds
    the handle from the paths, limits and device the state holds. A state that names no handle class
    (one written before handles named theirs, or a third-party backend's) is attached the way the shim
    always did: by `controller_class` ("module:QualName", what spec.json's "controller_class" holds)
    when given, else by the backend of the state's "backend" name (a built-in one's handle class, or
    a registered backend constructed with no arguments). The class path comes first because it is
    what created the state (a subclass may share its parent's backend name). Raises ControllerError
    when nothing usable is named.
    """
    if not isinstance(state, Mapping):
        raise ControllerError(f"a handle state is a JSON object, not {type(state).__name__}")
    named = state.get("handle")
    if named is None and controller_class is None:
        named = _BUILTIN_HANDLES.get(str(state.get("backend")))
    if named is not None:
        cls = _import_class(named, "handle")
        from_state = getattr(cls, "from_state", None)
        if not callable(from_state):
            raise ControllerError(f"handle class {named!r} named by the state has no from_state()")
        handle = from_state(state)
    elif controller_class is not None:
        handle = _import_class(controller_class, "controller")().attach(dict(state))
    else:
        backend = state.get("backend")
        backends = available_backends()
        if not isinstance(backend, str) or backend not in backends:
            known = ", ".join(backends)
            raise ControllerError(
                f"the state names no handle class and its backend {backend!r} is not registered "
                f"(registered: {known}); pass the controller class that created it"
            )
        handle = backends[backend]().attach(dict(state))
    if type(handle) not in _HANDLE_TYPES:
        # A runtime Protocol check looks up every member (~0.1 ms); once per class is enough.
        if not isinstance(handle, Handle):
            raise ControllerError(f"the state of backend {state.get('backend')!r} did not rebuild a Handle")
        _HANDLE_TYPES.add(type(handle))
    return cast(Handle, handle)


#: Classes whose instances passed `isinstance(handle, Handle)` in `handle_from_state`.
_HANDLE_TYPES: set[type] = set()


def _import_class(path: object, what: str) -> type[Any]:
    if not isinstance(path, str) or not _CLASS_PATH_RE.fullmatch(path):
        raise ControllerError(f"{what} class {path!r} is not of the form 'module:QualName'")
    module_name, _, qualname = path.partition(":")
    try:
        found: object = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as e:
        raise ControllerError(f"cannot load {what} class {path!r}: {e}") from e
    if not isinstance(found, type):
        raise ControllerError(f"{what} class {path!r} names {type(found).__name__}, not a class")
    return found
