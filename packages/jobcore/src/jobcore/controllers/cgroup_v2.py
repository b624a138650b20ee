"""The cgroup v2 backend: one unified hierarchy; a job is `<own>/remote-jobs/<owner>/<job_id>`.

`<own>` is the caller's cgroup (the `0::/path` line of /proc/self/cgroup) on the cgroup2 mount.

**No internal processes.** A non-root v2 cgroup may enable controllers for its children
(cgroup.subtree_control) only while it has no processes of its own; the kernel answers EBUSY
otherwise. jobcore must enable cpu, memory, io and pids in `<own>`, `<own>/remote-jobs` and the owner
directory. `<own>` is usually not empty: the Worker itself runs in it. We then do what systemd asks of
a delegated service (and what docker-in-docker's entrypoint does): move every process of `<own>` into
the leaf `<own>/jobcore-supervisor` and retry. Refusing with an error instead would make the backend
unusable under the most common setup (a service or a test runner sitting in its own cgroup) and only
tell the operator to do the same move by hand; the move stays within the subtree the Worker was given,
touches no cgroup outside it, and happens only when the kernel actually refused (the root cgroup, and a
`<own>` that is already empty, are left as they are). A process found in a cgroup named
`jobcore-supervisor` next to a `remote-jobs` directory is taken to belong to the parent, so a second
controller in the same process (or a restarted Worker placed there) uses the same `<own>`.

Killing uses cgroup.kill (Linux 5.14+), which kills the whole subtree atomically, fork races included;
before that, freeze (cgroup.freeze) + SIGKILL + thaw. Emptiness is awaited through cgroup.events: the
kernel notifies a poll(2)er (POLLPRI) when `populated` changes, so there is no busy polling.
"""

from __future__ import annotations

import errno
import os
import select
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import attrs

from jobcore.controllers.base import Capabilities
from jobcore.controllers.cgroup_common import CgroupController, CgroupHandle, limit_controllers
from jobcore.controllers.cgroupfs import JOBS_DIR, CgroupFiles, CgroupWriteError, sigkill_all
from jobcore.controllers.conversions import cpu_max_value, io_max_value, parse_flat_keyed, parse_io_stat
from jobcore.controllers.mounts import cgroup_dir, parse_mountinfo, parse_proc_cgroup, read_text
from jobcore.errors import ControllerError
from jobcore.spec import Limits
from jobcore.status import ResourceUsage

#: The controllers jobs need, in the order they are enabled.
CONTROLLERS = ("cpu", "memory", "io", "pids")
#: The leaf the processes of `<own>` are moved to (see the module docstring).
SUPERVISOR_LEAF = "jobcore-supervisor"
_LIMIT_CONTROLLER = limit_controllers("io")
#: The one key of a v2 handle's paths (v1's are controller names).
_UNIFIED = "unified"
DEFAULT_MOUNT = "/sys/fs/cgroup"
FREEZE_TIMEOUT = 1.0
_EVACUATE_ROUNDS = 10


@attrs.frozen
class _Layout:
    mount_point: str = ""
    #: The directory of `<own>`.
    own: str = ""
    problem: str = ""


class CgroupV2Handle(CgroupHandle):
    """One job's cgroup in the unified hierarchy."""

    backend: ClassVar[str] = "cgroup2"

    @property
    def _path(self) -> str:
        return self._paths[_UNIFIED]

    def _paths_state(self) -> dict[str, Any]:
        return {"path": self._path}

    @classmethod
    def _paths_from_state(cls, state: Mapping[str, Any]) -> dict[str, str]:
        path = state["path"]
        if not isinstance(path, str):
            raise TypeError(f"path is {path!r}, not a string")
        return {_UNIFIED: path}

    def _kill_all(self, deadline: float, pids: list[int]) -> bool:
        """cgroup.kill (or freeze, SIGKILL, thaw); True once cgroup.events says it is unpopulated."""
        files = self._files
        if not files.exists(self._path):
            return True
        kill_file = os.path.join(self._path, "cgroup.kill")
        if files.exists(kill_file):
            files.write(kill_file, "1")
        else:
            freeze = os.path.join(self._path, "cgroup.freeze")
            files.write(freeze, "1")
            try:
                self._wait_events(lambda ev: ev.get("frozen", 0) == 1, min(deadline, time.monotonic() + 1.0))
                sigkill_all(self.pids())
            finally:
                files.write(freeze, "0")
        return self._wait_events(lambda ev: ev.get("populated", 0) == 0, deadline, rekill=True)

    def _wait_events(
        self, done: Callable[[dict[str, int]], bool], deadline: float, rekill: bool = False
    ) -> bool:
        """Wait until `done(cgroup.events)`; the kernel wakes a POLLPRI poller on every change."""
        events = os.path.join(self._path, "cgroup.events")
        try:
            fd = os.open(events, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return True
        try:
            poller = select.poll()
            poller.register(fd, select.POLLPRI | select.POLLERR)
            while True:
                values = parse_flat_keyed(os.pread(fd, 4096, 0).decode())
                if done(values):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if rekill:
                    # Without cgroup.kill a process can slip past the freeze (one in transit between
                    # cgroups); with it this finds nothing.
                    sigkill_all(self.pids())
                poller.poll(remaining * 1000)
        finally:
            os.close(fd)

    def stats(self) -> ResourceUsage:
        files = self._files
        cpu_stat = files.read_optional(os.path.join(self._path, "cpu.stat"))
        usage = parse_flat_keyed(cpu_stat).get("usage_usec") if cpu_stat is not None else None
        peak = files.read_optional(os.path.join(self._path, "memory.peak"))
        io_stat = files.read_optional(os.path.join(self._path, "io.stat"))
        rd, wr = parse_io_stat(io_stat) if io_stat is not None else (None, None)
        return ResourceUsage(
            cpu_seconds=usage / 1e6 if usage is not None else None,
            memory_peak_bytes=int(peak) if peak else None,
            io_read_bytes=rd,
            io_write_bytes=wr,
        )

    def oom_killed(self) -> bool:
        files = self._files
        # memory.events counts the whole subtree, except under the memory_localevents mount option;
        # summing memory.events.local over the subtree is right under both.
        if files.exists(os.path.join(self._path, "memory.events.local")):
            for path in files.walk_down(self._path):
                text = files.read_optional(os.path.join(path, "memory.events.local")) or ""
                if parse_flat_keyed(text).get("oom_kill", 0) > 0:
                    return True
            return False
        text = files.read_optional(os.path.join(self._path, "memory.events")) or ""
        return parse_flat_keyed(text).get("oom_kill", 0) > 0


class CgroupV2Controller(CgroupController[_Layout, CgroupV2Handle]):
    """Resource limits through the cgroup v2 unified hierarchy."""

    name: ClassVar[str] = "cgroup2"
    handle_class = CgroupV2Handle

    def __init__(
        self,
        *,
        mount_point: str | os.PathLike[str] | None = None,
        self_cgroup: str | None = None,
        files: CgroupFiles | None = None,
        mountinfo: str = "/proc/self/mountinfo",
        proc_cgroup: str = "/proc/self/cgroup",
    ) -> None:
        """All arguments are for tests (a fake cgroupfs tree): the registry constructs with none.

        `mount_point` is where cgroup2 is mounted (default: found in `mountinfo`), `self_cgroup` the
        caller's cgroup path as /proc/self/cgroup shows it (default: read from `proc_cgroup`).
        """
        super().__init__(files)
        self._mount_point = os.fspath(mount_point) if mount_point is not None else None
        self._self_cgroup = self_cgroup
        self._mountinfo = mountinfo
        self._proc_cgroup = proc_cgroup

    def _discover(self) -> _Layout:
        own_path = self._self_cgroup
        if own_path is None:
            try:
                own_path = parse_proc_cgroup(read_text(self._proc_cgroup)).get("")
            except OSError as e:
                return _Layout(problem=f"cannot read {self._proc_cgroup}: {e.strerror or e}")
            if own_path is None:
                return _Layout(problem=f"{self._proc_cgroup} has no cgroup v2 (0::) line")
        if self._mount_point is not None:
            own = os.path.join(self._mount_point, own_path.lstrip("/"))
            mount_point = self._mount_point
        else:
            try:
                mounts = [m for m in parse_mountinfo(read_text(self._mountinfo)) if m.fstype == "cgroup2"]
            except OSError as e:
                return _Layout(problem=f"cannot read {self._mountinfo}: {e.strerror or e}")
            if not mounts:
                return _Layout(problem="no cgroup2 file system is mounted")
            mounts.sort(key=lambda m: m.mount_point != DEFAULT_MOUNT)
            found = [(m, d) for m in mounts if (d := cgroup_dir(m, own_path)) is not None]
            if not found:
                return _Layout(
                    problem=f"this process's cgroup {own_path} is not visible in any cgroup2 mount"
                )
            mount_point, own = found[0][0].mount_point, found[0][1]
        own = own.rstrip("/") or "/"
        if os.path.basename(own) == SUPERVISOR_LEAF and self._files.exists(
            os.path.join(os.path.dirname(own), JOBS_DIR)
        ):
            own = os.path.dirname(own)
        return _Layout(mount_point=mount_point, own=own)

    def _available_controllers(self, own: str) -> list[str]:
        text = self._files.read_optional(os.path.join(own, "cgroup.controllers")) or ""
        present = set(text.split())
        return [c for c in CONTROLLERS if c in present]

    def _has_feature_file(self, name: str) -> bool:
        # Files such as cgroup.kill and memory.swap.max exist in every cgroup but the root.
        layout = self._layout()
        candidates = [layout.own] if layout.own != layout.mount_point else []
        candidates += [os.path.join(layout.own, n) for n in self._files.subdirs(layout.own)[:1]]
        return any(self._files.exists(os.path.join(c, name)) for c in candidates)

    def probe(self) -> Capabilities:
        """What the unified hierarchy allows here. Never raises."""
        layout = self._layout()
        if layout.problem:
            return Capabilities(backend=self.name, available=False, reason=layout.problem, mode="cgroup2")
        try:
            controllers = self._available_controllers(layout.own)
        except ControllerError as e:
            return Capabilities(backend=self.name, available=False, reason=str(e), mode="cgroup2")
        if not controllers:
            return Capabilities(
                backend=self.name,
                available=False,
                mode="cgroup2",
                reason=(
                    f"cgroup2 at {layout.mount_point} offers none of {', '.join(CONTROLLERS)} to this "
                    f"process's cgroup ({layout.own}): they are bound to cgroup v1 hierarchies (a hybrid "
                    "layout) or not delegated; use the cgroup1 backend"
                ),
            )
        if not os.access(layout.own, os.W_OK):
            return Capabilities(
                backend=self.name,
                available=False,
                mode="cgroup2",
                reason=f"cannot create cgroups under {layout.own}: not writable (run as root or delegate it)",
            )
        enforceable = tuple(f for f, c in _LIMIT_CONTROLLER.items() if c in controllers)
        cgroup_kill = self._has_feature_file("cgroup.kill")
        swap = "memory" in controllers and self._has_feature_file("memory.swap.max")
        notes = [
            f"processes of {layout.own} are moved to {SUPERVISOR_LEAF}/ below it when the kernel's "
            "no-internal-processes rule keeps controllers from being enabled for jobs"
        ]
        missing = [c for c in CONTROLLERS if c not in controllers]
        if missing:
            notes.append(f"controllers {', '.join(missing)} are not available here: those limits are refused")
        if not cgroup_kill:
            notes.append("no cgroup.kill (Linux < 5.14): kill() freezes, SIGKILLs and thaws")
        return Capabilities(
            backend=self.name,
            available=True,
            mode="cgroup2",
            job_roots=(os.path.join(layout.own, JOBS_DIR),),
            enforceable=enforceable,
            features={
                "cgroup_kill": cgroup_kill,
                "freezer": True,
                "memory_swap_limit": swap,
                "oom_kill_counter": "memory" in controllers,
            },
            notes=tuple(notes),
        )

    def _problem(self) -> str:
        return self._layout().problem

    def _parents(self) -> dict[str, str]:
        return {_UNIFIED: self._layout().own}

    def _enforceable(self) -> tuple[str, ...]:
        controllers = self._available_controllers(self._layout().own)
        return tuple(f for f, c in _LIMIT_CONTROLLER.items() if c in controllers)

    def _unenforceable(self, field: str) -> str:
        own = self._layout().own
        return f"the {_LIMIT_CONTROLLER[field]} controller is not in {own}/cgroup.controllers"

    def _delegated(self) -> list[str]:
        return self._available_controllers(self._layout().own)

    def _delegate(self, directory: str, controllers: list[str]) -> None:
        self._enable(directory, controllers)

    def _enable(self, directory: str, controllers: list[str]) -> None:
        control = os.path.join(directory, "cgroup.subtree_control")
        enabled = set(self._files.read(control).split())
        missing = [c for c in controllers if c not in enabled]
        if not missing:
            return
        value = " ".join(f"+{c}" for c in missing)
        try:
            self._files.write(control, value)
        except CgroupWriteError as e:
            if e.errno != errno.EBUSY:
                raise
            self._evacuate(directory)
            self._files.write(control, value)

    def _evacuate(self, directory: str) -> None:
        """Move every process of `directory` into its SUPERVISOR_LEAF child (no-internal-processes)."""
        leaf = os.path.join(directory, SUPERVISOR_LEAF)
        self._files.mkdir(leaf)
        procs = os.path.join(directory, "cgroup.procs")
        for _round in range(_EVACUATE_ROUNDS):
            pids = (self._files.read(procs)).split()
            if not pids:
                return
            for pid in pids:
                try:
                    self._files.write(os.path.join(leaf, "cgroup.procs"), pid)
                except CgroupWriteError as e:
                    if e.errno != errno.ESRCH:  # exited meanwhile
                        raise
        raise ControllerError(
            f"cannot empty {directory} to enable controllers for jobs (processes keep appearing); run the "
            f"Worker in a leaf cgroup"
        )

    def _write_limits(self, paths: dict[str, str], limits: Limits, device: tuple[int, int] | None) -> None:
        files = self._files
        path = paths[_UNIFIED]
        if limits.cpu is not None:
            files.write(os.path.join(path, "cpu.max"), cpu_max_value(limits.cpu))
        if limits.memory is not None:
            files.write(os.path.join(path, "memory.max"), str(limits.memory))
            # "swap is never allowed past it"; the file is absent without swap accounting (then no swap
            # can be charged to the job anyway... or none is configured), so its absence is not an error.
            swap_max = os.path.join(path, "memory.swap.max")
            if files.exists(swap_max):
                files.write(swap_max, "0")
        if limits.pids is not None:
            files.write(os.path.join(path, "pids.max"), str(limits.pids))
        if device is not None:
            line = io_max_value(device, limits)
            if line is not None:
                files.write(os.path.join(path, "io.max"), line)
