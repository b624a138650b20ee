"""What the cgroup v1 and v2 backends share: the controller and handle skeletons.

`CgroupController` holds the layout cache, the limit check, job-cgroup creation (mkdir with retry,
rollback of a half-created job), `attach`, the listing of job cgroups and the sweep over it.
`CgroupHandle` holds the state round trip, enter, pids, the refusal to kill the caller's own cgroup
and destroy (bounded wait for empty, then rmdir deepest first). A backend supplies only what differs:
discovery (`_discover`, `probe`, where jobs go), limit writing, the kill strategy, stats and OOM.

A job's cgroup is `<parent>/remote-jobs/<owner>/<job_id>` under each parent of the layout: one parent
per v1 hierarchy (keyed by controller), a single one on v2. A handle's state names its own class
("module:QualName", key "handle") and holds absolute paths, the limits and the IO device, so
`jobcore.controllers.handle_from_state` rebuilds it in any process without the controller.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Generic, Self, TypeVar

from jobcore.controllers.base import class_path
from jobcore.controllers.block_device import resolve_block_device
from jobcore.controllers.cgroupfs import (
    JOBS_DIR,
    CgroupFiles,
    CgroupWriteError,
    check_names,
    job_dirs,
    remove_if_empty,
    rmdir_retrying,
    tree_pids,
)
from jobcore.controllers.conversions import limits_from_dict, limits_to_dict
from jobcore.errors import ControllerError, InvalidLimit
from jobcore.spec import Limits
from jobcore.status import ResourceUsage

#: The Limits fields that throttle IO (enforced by blkio on v1, io on v2).
IO_FIELDS = tuple(f for f in Limits.RESOURCE_FIELDS if f.startswith("io_"))
_MKDIR_ATTEMPTS = 3
_ROLLBACK_TIMEOUT = 1.0
KILL_TIMEOUT = 5.0


def limit_controllers(io_controller: str) -> dict[str, str]:
    """Which controller enforces which Limits field; only the IO controller's name differs."""
    return {"cpu": "cpu", "memory": "memory", "pids": "pids"} | dict.fromkeys(IO_FIELDS, io_controller)


def vanished(e: ControllerError) -> bool:
    """Whether `e` is a directory having disappeared under us (ENOENT)."""
    if isinstance(e, CgroupWriteError):
        return e.errno == errno.ENOENT
    return isinstance(e.__cause__, FileNotFoundError)


def check_job_dir(path: str) -> None:
    """Raise ValueError unless `path` is an absolute, normalised `<parent>/remote-jobs/<owner>/<job_id>`
    with safe names: a damaged state must never make `destroy()` kill and remove a whole hierarchy."""
    owner_dir, job_id = os.path.split(path)
    jobs_root, owner = os.path.split(owner_dir)
    if not os.path.isabs(path) or os.path.normpath(path) != path or os.path.basename(jobs_root) != JOBS_DIR:
        raise ValueError(f"{path!r} is not a job cgroup (<parent>/{JOBS_DIR}/<owner>/<job_id>)")
    try:
        check_names(owner, job_id)
    except ControllerError as e:
        raise ValueError(f"{path!r} is not a job cgroup: {e}") from None


class CgroupHandle:
    """One job's cgroup directories (`paths`: key -> directory; one key per v1 hierarchy, one on v2)."""

    #: The backend name written into, and required of, the state.
    backend: ClassVar[str]

    def __init__(
        self,
        files: CgroupFiles,
        paths: Mapping[str, str],
        limits: Limits,
        device: tuple[int, int] | None,
    ) -> None:
        self._files = files
        self._paths = dict(paths)
        self._limits = limits
        self._device = device

    # -- state

    def _paths_state(self) -> dict[str, Any]:
        """The state keys naming the directories (v1: "paths", v2: "path")."""
        raise NotImplementedError

    @classmethod
    def _paths_from_state(cls, state: Mapping[str, Any]) -> dict[str, str]:
        """The inverse of `_paths_state`; raises KeyError, TypeError or ValueError when malformed."""
        raise NotImplementedError

    def to_state(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "handle": class_path(type(self)),
            **self._paths_state(),
            "limits": limits_to_dict(self._limits),
            "io_device_number": list(self._device) if self._device else None,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], files: CgroupFiles | None = None) -> Self:
        """Rebuild a handle from `to_state()` (also from states written before it named its class).

        `files` is for tests (a fake cgroupfs); any process rebuilds a working handle without it.
        """
        if state.get("backend") != cls.backend:
            raise ControllerError(f"state of backend {state.get('backend')!r} given to {cls.backend}")
        try:
            paths = cls._paths_from_state(state)
            for path in paths.values():
                check_job_dir(path)
            device = state.get("io_device_number")
            number = (int(device[0]), int(device[1])) if device else None
            limits = limits_from_dict(dict(state.get("limits") or {}))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ControllerError(f"malformed {cls.backend} handle state ({e!r}): {dict(state)!r}") from e
        return cls(files or CgroupFiles(), paths, limits, number)

    # -- the job

    @property
    def dirs(self) -> list[str]:
        """The job's cgroup directories (co-mounted v1 hierarchies share one)."""
        return list(dict.fromkeys(self._paths.values()))

    def applied(self) -> Limits:
        return self._limits

    def enter(self, pid: int) -> None:
        """Move `pid` (0: the caller) into the job's directory of every hierarchy. The kernel takes "0"
        as the writer itself (v1 too), which also works from inside a PID namespace."""
        name = self._membership_file(pid)
        for directory in self.dirs:
            self._files.write(os.path.join(directory, name), str(pid))

    def _membership_file(self, pid: int) -> str:
        """The interface file `enter(pid)` writes in each of the job's directories."""
        return "cgroup.procs"

    def pids(self) -> list[int]:
        return tree_pids(self._files, self.dirs)

    def kill(self) -> None:
        self._kill(time.monotonic() + KILL_TIMEOUT)

    def _kill(self, deadline: float) -> bool:
        """Kill everything in the job's cgroups; True once they are empty (by `deadline`)."""
        pids = self.pids()
        if os.getpid() in pids:
            raise ControllerError(f"refusing to kill job cgroup {self.dirs[0]}: the caller is in it")
        return self._kill_all(deadline, pids)

    def _kill_all(self, deadline: float, pids: list[int]) -> bool:
        """The backend's kill strategy (`pids`: what the job's cgroups held just now); True once the
        job's cgroups are empty."""
        raise NotImplementedError

    def stats(self) -> ResourceUsage:
        raise NotImplementedError

    def oom_killed(self) -> bool:
        raise NotImplementedError

    def destroy(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        if not self._kill(deadline):
            raise ControllerError(
                f"job cgroup {self.dirs[0]} still has processes {self.pids()} after {timeout}s; not removed"
            )
        for directory in self.dirs:
            for path in list(self._files.walk_down(directory)):
                if not rmdir_retrying(self._files, path, deadline):
                    raise ControllerError(f"cgroup {path} is still busy after {timeout}s; not removed")
        for owner_dir in dict.fromkeys(os.path.dirname(d) for d in self.dirs):
            remove_if_empty(self._files, owner_dir)


LayoutT = TypeVar("LayoutT")
HandleT = TypeVar("HandleT", bound=CgroupHandle)


class CgroupController(Generic[LayoutT, HandleT]):
    """The skeleton of a cgroup backend; see the module docstring for what a subclass supplies."""

    name: ClassVar[str]
    #: The handle class this backend creates.
    handle_class: type[HandleT]

    def __init__(self, files: CgroupFiles | None) -> None:
        self._files = files or CgroupFiles()
        self._layout_cache: LayoutT | None = None

    # -- discovery (the backend's)

    def _layout(self) -> LayoutT:
        if self._layout_cache is None:
            self._layout_cache = self._discover()
        return self._layout_cache

    def _discover(self) -> LayoutT:
        raise NotImplementedError

    def _problem(self) -> str:
        """Why jobs cannot be created here ("" when they can)."""
        raise NotImplementedError

    def _parents(self) -> dict[str, str]:
        """Key (controller on v1) -> the directory whose `remote-jobs` holds job cgroups."""
        raise NotImplementedError

    def _enforceable(self) -> tuple[str, ...]:
        """The Limits fields a job created now can be limited by."""
        raise NotImplementedError

    def _unenforceable(self, field: str) -> str:
        """Why `field` cannot be enforced here (the end of the InvalidLimit message)."""
        raise NotImplementedError

    def _delegated(self) -> list[str]:
        """Controllers to enable for children on the way down to a job (v2); none on v1."""
        return []

    def _delegate(self, directory: str, controllers: list[str]) -> None:
        """Make `controllers` available to the children of `directory` (v2's subtree_control)."""

    def _write_limits(self, paths: dict[str, str], limits: Limits, device: tuple[int, int] | None) -> None:
        raise NotImplementedError

    # -- the shared part

    def check(self, limits: Limits, cwd: str) -> None:
        """Raise InvalidLimit when a requested limit cannot be enforced here; creates nothing."""
        self._check(limits, cwd)

    def _check(self, limits: Limits, cwd: str) -> tuple[int, int] | None:
        problem = self._problem()
        if problem:
            raise ControllerError(f"the {self.name} backend cannot run here: {problem}")
        requested = limits.requested()
        if requested:
            enforceable = self._enforceable()
            for field in requested:
                if field not in enforceable:
                    raise InvalidLimit(
                        f"{field} cannot be enforced by the {self.name} backend here: "
                        f"{self._unenforceable(field)}"
                    )
        if limits.has_io():
            return resolve_block_device(limits.io_device or cwd)
        return None

    def create(self, owner: str, job_id: str, limits: Limits, cwd: str) -> HandleT:
        """Create `<parent>/remote-jobs/<owner>/<job_id>` under every parent and write the limits; on
        any failure remove what was created."""
        check_names(owner, job_id)
        device = self._check(limits, cwd)
        paths = {
            key: os.path.join(parent, JOBS_DIR, owner, job_id) for key, parent in self._parents().items()
        }
        controllers = self._delegated()
        created: list[str] = []
        try:
            for directory in dict.fromkeys(paths.values()):
                self._make_job_dir(directory, controllers)
                created.append(directory)
            self._write_limits(paths, limits, device)
        except BaseException:
            for directory in created:
                rmdir_retrying(self._files, directory, time.monotonic() + _ROLLBACK_TIMEOUT)
                remove_if_empty(self._files, os.path.dirname(directory))
            raise
        return self.handle_class(self._files, paths, limits, device)

    def _make_job_dir(self, directory: str, controllers: list[str]) -> None:
        files = self._files
        owner_dir = os.path.dirname(directory)
        jobs_root = os.path.dirname(owner_dir)
        for _attempt in range(_MKDIR_ATTEMPTS):
            try:
                self._delegate(os.path.dirname(jobs_root), controllers)
                files.mkdir(jobs_root)
                self._delegate(jobs_root, controllers)
                files.mkdir(owner_dir)
                self._delegate(owner_dir, controllers)
                created = files.mkdir(directory)
            except ControllerError as e:
                # A concurrent destroy() removed the (then empty) owner directory between our steps.
                if vanished(e):
                    continue
                raise
            if not created:
                raise ControllerError(
                    f"cgroup {directory} already exists: is job {os.path.basename(directory)} running?"
                )
            return
        raise ControllerError(f"cannot create cgroup {directory}: its owner directory keeps disappearing")

    def attach(self, state: dict[str, Any]) -> HandleT:
        """Rebuild a handle from its `to_state()`. The Worker and the shim use
        `jobcore.controllers.handle_from_state`, which needs no controller; this stays for callers
        that have one (it keeps this controller's file operations, e.g. a test's fake cgroupfs)."""
        return self.handle_class.from_state(state, files=self._files)

    def job_cgroups(self) -> list[tuple[str, str, HandleT]]:
        """Every job cgroup found under this backend's roots, as (owner, job_id, handle). A handle
        found this way knows its directories, not the limits it was created with."""
        if self._problem():
            return []
        files = self._files
        parents = self._parents()
        found: dict[tuple[str, str], None] = {}
        for parent in dict.fromkeys(parents.values()):
            for key in job_dirs(files, os.path.join(parent, JOBS_DIR)):
                found[key] = None
        listed: list[tuple[str, str, HandleT]] = []
        for owner, job_id in found:
            paths = {c: os.path.join(p, JOBS_DIR, owner, job_id) for c, p in parents.items()}
            paths = {c: d for c, d in paths.items() if files.exists(d)}
            if not paths:
                continue  # removed since it was listed
            listed.append((owner, job_id, self.handle_class(files, paths, Limits(), None)))
        return listed

    def sweep(self, is_live: Callable[[str, str], bool]) -> list[str]:
        """Kill and remove every job cgroup whose (owner, job_id) is not live; return removed paths.
        (The policy of what is live is the caller's; this is `job_cgroups` + `destroy`.)"""
        removed: list[str] = []
        failed: list[str] = []
        for owner, job_id, handle in self.job_cgroups():
            if is_live(owner, job_id):
                continue
            try:
                handle.destroy()
            except ControllerError as e:
                failed.append(str(e))  # one stuck job must not keep the others alive
                continue
            removed.extend(handle.dirs)
        if failed:
            raise ControllerError(f"sweep removed {len(removed)} cgroups but failed: " + "; ".join(failed))
        return removed
