"""The cgroup v1 backend: one directory per hierarchy (cpu, cpuacct, memory, pids, blkio, freezer).

Hierarchies are found in /proc/self/mountinfo (co-mounted ones such as "cpu,cpuacct" share a
directory) and the calling process's place in each from /proc/self/cgroup; a job gets
`<that place>/remote-jobs/<owner>/<job_id>` in every hierarchy. Nothing outside that subtree is written.

Killing freezes the job (freezer.state), SIGKILLs every process of every hierarchy and thaws it: a
frozen process cannot fork, so a fork bomb cannot outrun the kill. The v1 freezer has no change
notification, so its FREEZING -> FROZEN transition is the one thing waited for with a (bounded,
backing-off) sleep; process deaths are waited for through pidfds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, ClassVar

import attrs

from jobcore.controllers.base import Capabilities
from jobcore.controllers.block_device import resolve_block_device
from jobcore.controllers.cgroupfs import (
    JOBS_DIR,
    CgroupFiles,
    check_names,
    job_dirs,
    kill_until_empty,
    remove_if_empty,
    rmdir_retrying,
    sigkill_all,
    tree_pids,
)
from jobcore.controllers.conversions import (
    CFS_PERIOD_US,
    blkio_throttle_writes,
    cpu_quota_us,
    limits_from_dict,
    limits_to_dict,
    parse_blkio_service_bytes,
    parse_flat_keyed,
    v1_memory_writes,
)
from jobcore.controllers.mounts import cgroup_dir, parse_mountinfo, parse_proc_cgroup, read_text
from jobcore.errors import ControllerError, InvalidLimit
from jobcore.spec import Limits
from jobcore.status import ResourceUsage

#: The v1 controllers a job gets a directory in. cpuset (needs cpus/mems copied in) and devices
#: (the job's namespaces handle that) are left alone.
CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio", "freezer")
#: Which controller enforces which Limits field.
_LIMIT_CONTROLLER = {
    "cpu": "cpu",
    "memory": "memory",
    "pids": "pids",
    "io_read_bps": "blkio",
    "io_write_bps": "blkio",
    "io_read_iops": "blkio",
    "io_write_iops": "blkio",
}
#: Interface file whose presence in the parent proves the controller can enforce that field (CFS
#: bandwidth and blkio throttling are kernel options of their own). pids.max exists in every cgroup but
#: the root, so the pids hierarchy being there is the proof for pids.
_LIMIT_FILE = {
    "cpu": "cpu.cfs_quota_us",
    "memory": "memory.limit_in_bytes",
    "pids": "cgroup.procs",
    "io_read_bps": "blkio.throttle.read_bps_device",
    "io_write_bps": "blkio.throttle.write_bps_device",
    "io_read_iops": "blkio.throttle.read_iops_device",
    "io_write_iops": "blkio.throttle.write_iops_device",
}
BUFFERED_IO_NOTE = (
    "cgroup v1 throttles only direct IO: buffered writes are flushed later by the kernel's writeback "
    "threads and are not counted against a job's io_write_* limits"
)
FREEZE_TIMEOUT = 1.0


@attrs.frozen
class _Layout:
    #: controller -> the directory of the caller's cgroup in that controller's hierarchy.
    parents: dict[str, str]
    hybrid: bool
    problem: str = ""


class CgroupV1Controller:
    """Resource limits through cgroup v1 hierarchies (hybrid or legacy layouts)."""

    name: ClassVar[str] = "cgroup1"

    def __init__(
        self,
        *,
        mountinfo: str = "/proc/self/mountinfo",
        proc_cgroup: str = "/proc/self/cgroup",
        files: CgroupFiles | None = None,
    ) -> None:
        self._mountinfo = mountinfo
        self._proc_cgroup = proc_cgroup
        self._files = files or CgroupFiles()
        self._layout_cache: _Layout | None = None
        self._caps_cache: Capabilities | None = None

    def _layout(self) -> _Layout:
        if self._layout_cache is None:
            self._layout_cache = self._discover()
        return self._layout_cache

    def _discover(self) -> _Layout:
        try:
            mounts = parse_mountinfo(read_text(self._mountinfo))
            own = parse_proc_cgroup(read_text(self._proc_cgroup))
        except OSError as e:
            return _Layout({}, False, f"cannot read the process's cgroups: {e}")
        hybrid = any(m.fstype == "cgroup2" for m in mounts)
        own_by_controller = {c: path for key, path in own.items() for c in key.split(",") if key}
        parents: dict[str, str] = {}
        for mount in mounts:
            if mount.fstype != "cgroup":
                continue
            for controller in mount.super_options:
                if controller not in CONTROLLERS or controller in parents:
                    continue
                path = own_by_controller.get(controller)
                directory = cgroup_dir(mount, path) if path is not None else None
                if directory is not None:
                    parents[controller] = directory
        problem = ""
        if not parents:
            problem = (
                "no cgroup v1 hierarchy of " + ", ".join(CONTROLLERS) + " is mounted where this process's "
                "cgroups are visible (see /proc/self/mountinfo)"
            )
        else:
            unwritable = sorted({d for d in parents.values() if not os.access(d, os.W_OK)})
            if unwritable:
                problem = f"cannot create cgroups under {', '.join(unwritable)}: not writable (run as root)"
        return _Layout(parents, hybrid, problem)

    def probe(self) -> Capabilities:
        """What this host's v1 hierarchies allow. Never raises."""
        if self._caps_cache is not None:
            return self._caps_cache
        layout = self._layout()
        mode = "cgroup1-hybrid" if layout.hybrid else "cgroup1-legacy"
        if layout.problem:
            return Capabilities(backend=self.name, available=False, reason=layout.problem, mode=mode)
        files = self._files
        p = layout.parents
        enforceable = tuple(
            field
            for field, controller in _LIMIT_CONTROLLER.items()
            if controller in p and files.exists(os.path.join(p[controller], _LIMIT_FILE[field]))
        )
        memory = p.get("memory")
        memsw = memory is not None and files.exists(os.path.join(memory, "memory.memsw.limit_in_bytes"))
        oom_counter = False
        if memory is not None:
            oom_control = files.read_optional(os.path.join(memory, "memory.oom_control")) or ""
            oom_counter = "oom_kill" in parse_flat_keyed(oom_control)
        features = {
            "freezer": "freezer" in p,
            "memory_swap_limit": memsw,
            "oom_kill_counter": oom_counter,
            "cpu_accounting": "cpuacct" in p,
            "cgroup_kill": False,
        }
        notes = [BUFFERED_IO_NOTE]
        if memory is not None and not memsw:
            notes.append(
                "memory.memsw is missing (swap accounting is off; boot with swapaccount=1): memory limits "
                "set memory.swappiness 0, which keeps the job's own reclaim from swapping"
            )
        if not oom_counter:
            notes.append(
                "memory.oom_control has no oom_kill counter (kernel < 4.13): OOM kills go unreported"
            )
        if "freezer" not in p:
            notes.append("no freezer hierarchy: kill() re-kills until empty, a fork bomb may take longer")
        dirs: dict[str, list[str]] = {}
        for controller, directory in p.items():
            dirs.setdefault(directory, []).append(controller)
        roots = tuple(f"{','.join(cs)}={os.path.join(d, JOBS_DIR)}" for d, cs in dirs.items())
        self._caps_cache = Capabilities(
            backend=self.name,
            available=True,
            mode=mode,
            job_roots=roots,
            enforceable=enforceable,
            features=features,
            notes=tuple(notes),
        )
        return self._caps_cache

    def check(self, limits: Limits, cwd: str) -> None:
        """Raise InvalidLimit when a requested limit cannot be enforced here; creates nothing."""
        self._check(limits, cwd)

    def _check(self, limits: Limits, cwd: str) -> tuple[int, int] | None:
        caps = self.probe()
        if not caps.available:
            raise ControllerError(f"the cgroup1 backend cannot run here: {caps.reason}")
        for field in limits.requested():
            if field not in caps.enforceable:
                controller = _LIMIT_CONTROLLER[field]
                raise InvalidLimit(
                    f"{field} cannot be enforced by the cgroup1 backend here: the {controller} hierarchy "
                    f"(file {_LIMIT_FILE[field]}) is not available"
                )
        if limits.has_io():
            return resolve_block_device(limits.io_device or cwd)
        return None

    def create(self, owner: str, job_id: str, limits: Limits, cwd: str) -> CgroupV1Handle:
        """Create the job's directory in every hierarchy and write its limits."""
        check_names(owner, job_id)
        device = self._check(limits, cwd)
        files = self._files
        paths = {
            c: os.path.join(parent, JOBS_DIR, owner, job_id) for c, parent in self._layout().parents.items()
        }
        created: list[str] = []
        try:
            for directory in dict.fromkeys(paths.values()):
                _make_job_dir(files, directory)
                created.append(directory)
            _write_limits(files, paths, limits, device)
        except BaseException:
            for directory in created:
                rmdir_retrying(files, directory, time.monotonic() + 1.0)
                remove_if_empty(files, os.path.dirname(directory))
            raise
        return CgroupV1Handle(files, paths, limits, device)

    def attach(self, state: dict[str, Any]) -> CgroupV1Handle:
        """Rebuild a handle from `CgroupV1Handle.to_state()`."""
        if state.get("backend") != self.name:
            raise ControllerError(f"state of backend {state.get('backend')!r} given to {self.name}")
        device = state.get("io_device_number")
        return CgroupV1Handle(
            self._files,
            dict(state["paths"]),
            limits_from_dict(state["limits"]),
            (int(device[0]), int(device[1])) if device else None,
        )

    def sweep(self, is_live: Callable[[str, str], bool]) -> list[str]:
        """Kill and remove every job cgroup whose (owner, job_id) is not live; return removed paths."""
        if not self.probe().available:
            return []
        files = self._files
        parents = self._layout().parents
        stale: dict[tuple[str, str], None] = {}
        for parent in dict.fromkeys(parents.values()):
            for key in job_dirs(files, os.path.join(parent, JOBS_DIR)):
                if not is_live(*key):
                    stale[key] = None
        removed: list[str] = []
        failed: list[str] = []
        for owner, job_id in stale:
            paths = {c: os.path.join(p, JOBS_DIR, owner, job_id) for c, p in parents.items()}
            paths = {c: d for c, d in paths.items() if files.exists(d)}
            try:
                CgroupV1Handle(files, paths, Limits(), None).destroy()
            except ControllerError as e:
                failed.append(str(e))  # one stuck job must not keep the others alive
                continue
            removed.extend(dict.fromkeys(paths.values()))
        if failed:
            raise ControllerError(f"sweep removed {len(removed)} cgroups but failed: " + "; ".join(failed))
        return removed


def _make_job_dir(files: CgroupFiles, directory: str) -> None:
    owner_dir = os.path.dirname(directory)
    for _attempt in range(3):
        files.mkdir(os.path.dirname(owner_dir))
        files.mkdir(owner_dir)
        try:
            if files.mkdir(directory):
                return
        except ControllerError as e:
            # A concurrent destroy() removed the (then empty) owner directory between our mkdirs.
            if isinstance(e.__cause__, FileNotFoundError):
                continue
            raise
        raise ControllerError(
            f"cgroup {directory} already exists: is job {os.path.basename(directory)} running?"
        )
    raise ControllerError(f"cannot create cgroup {directory}: its owner directory keeps disappearing")


def _write_limits(
    files: CgroupFiles, paths: dict[str, str], limits: Limits, device: tuple[int, int] | None
) -> None:
    if limits.cpu is not None:
        files.write(os.path.join(paths["cpu"], "cpu.cfs_period_us"), str(CFS_PERIOD_US))
        files.write(os.path.join(paths["cpu"], "cpu.cfs_quota_us"), str(cpu_quota_us(limits.cpu)))
    if limits.memory is not None:
        memory = paths["memory"]
        memsw_text = files.read_optional(os.path.join(memory, "memory.memsw.limit_in_bytes"))
        current_memsw = int(memsw_text) if memsw_text is not None else None
        for name, value in v1_memory_writes(limits.memory, current_memsw):
            files.write(os.path.join(memory, name), value)
        if current_memsw is None:
            files.write(os.path.join(memory, "memory.swappiness"), "0")
    if limits.pids is not None:
        files.write(os.path.join(paths["pids"], "pids.max"), str(limits.pids))
    if device is not None:
        for name, value in blkio_throttle_writes(device, limits):
            files.write(os.path.join(paths["blkio"], name), value)


class CgroupV1Handle:
    """One job's directories in the v1 hierarchies."""

    def __init__(
        self, files: CgroupFiles, paths: dict[str, str], limits: Limits, device: tuple[int, int] | None
    ) -> None:
        self._files = files
        self._paths = paths
        self._limits = limits
        self._device = device

    @property
    def _dirs(self) -> list[str]:
        return list(dict.fromkeys(self._paths.values()))

    def to_state(self) -> dict[str, Any]:
        return {
            "backend": CgroupV1Controller.name,
            "paths": dict(self._paths),
            "limits": limits_to_dict(self._limits),
            "io_device_number": list(self._device) if self._device else None,
        }

    def applied(self) -> Limits:
        return self._limits

    def enter(self, pid: int) -> None:
        """Move `pid` (0: the caller) into the job's directory of every hierarchy. The kernel takes "0"
        as the writer itself in v1 too, which also works from inside a PID namespace."""
        for directory in self._dirs:
            self._files.write(os.path.join(directory, "cgroup.procs"), str(pid))

    def pids(self) -> list[int]:
        return tree_pids(self._files, self._dirs)

    def kill(self) -> None:
        self._kill(time.monotonic() + 5.0)

    def _kill(self, deadline: float) -> list[int]:
        if os.getpid() in self.pids():
            raise ControllerError(f"refusing to kill job cgroup {self._dirs[0]}: the caller is in it")
        freezer = self._paths.get("freezer")
        if freezer is not None and self._files.exists(freezer):
            state = os.path.join(freezer, "freezer.state")
            self._files.write(state, "FROZEN")
            try:
                self._wait_frozen(state, min(deadline, time.monotonic() + FREEZE_TIMEOUT))
                sigkill_all(self.pids())
            finally:
                self._files.write(state, "THAWED")
        return kill_until_empty(self._files, self._dirs, deadline)

    def _wait_frozen(self, state_file: str, deadline: float) -> None:
        backoff = 0.0005
        while (self._files.read_optional(state_file) or "FROZEN").strip() != "FROZEN":
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return  # a task in uninterruptible sleep; kill anyway, kill_until_empty mops up
            time.sleep(min(backoff, remaining))
            backoff = min(backoff * 2, 0.02)

    def stats(self) -> ResourceUsage:
        files = self._files
        cpu = mem = rd = wr = None
        if "cpuacct" in self._paths:
            text = files.read_optional(os.path.join(self._paths["cpuacct"], "cpuacct.usage"))
            cpu = int(text) / 1e9 if text else None
        if "memory" in self._paths:
            text = files.read_optional(os.path.join(self._paths["memory"], "memory.max_usage_in_bytes"))
            mem = int(text) if text else None
        if "blkio" in self._paths:
            for name in (
                "blkio.throttle.io_service_bytes_recursive",
                "blkio.throttle.io_service_bytes",
                "blkio.io_service_bytes_recursive",
            ):
                text = files.read_optional(os.path.join(self._paths["blkio"], name))
                if text is not None:
                    rd, wr = parse_blkio_service_bytes(text)
                    break
        return ResourceUsage(cpu_seconds=cpu, memory_peak_bytes=mem, io_read_bytes=rd, io_write_bytes=wr)

    def oom_killed(self) -> bool:
        memory = self._paths.get("memory")
        if memory is None:
            return False
        for directory in self._files.walk_down(memory):
            text = self._files.read_optional(os.path.join(directory, "memory.oom_control")) or ""
            if parse_flat_keyed(text).get("oom_kill", 0) > 0:
                return True
        return False

    def destroy(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        left = self._kill(deadline)
        if left:
            raise ControllerError(f"job cgroup {self._dirs[0]} still has processes {left} after {timeout}s")
        for directory in self._dirs:
            for path in list(self._files.walk_down(directory)):
                if not rmdir_retrying(self._files, path, deadline):
                    raise ControllerError(f"cgroup {path} is still busy after {timeout}s; not removed")
        for owner_dir in dict.fromkeys(os.path.dirname(d) for d in self._dirs):
            remove_if_empty(self._files, owner_dir)
