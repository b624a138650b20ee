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
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from jobcore.controllers.base import Capabilities
from jobcore.controllers.cgroup_common import CgroupController, CgroupHandle, limit_controllers
from jobcore.controllers.cgroupfs import JOBS_DIR, CgroupFiles, kill_until_empty, sigkill_all
from jobcore.controllers.conversions import (
    CFS_PERIOD_US,
    blkio_throttle_writes,
    cpu_quota_us,
    parse_blkio_service_bytes,
    parse_flat_keyed,
    v1_memory_writes,
)
from jobcore.controllers.mounts import cgroup_dir, parse_mountinfo, parse_proc_cgroup, read_text
from jobcore.spec import Limits
from jobcore.status import ResourceUsage

#: The v1 controllers a job gets a directory in. cpuset (needs cpus/mems copied in) and devices
#: (the job's namespaces handle that) are left alone.
CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio", "freezer")
#: Which controller enforces which Limits field.
_LIMIT_CONTROLLER = limit_controllers("blkio")
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


class CgroupV1Handle(CgroupHandle):
    """One job's directories in the v1 hierarchies (`paths`: controller -> directory)."""

    backend: ClassVar[str] = "cgroup1"

    def _paths_state(self) -> dict[str, Any]:
        return {"paths": dict(self._paths)}

    @classmethod
    def _paths_from_state(cls, state: Mapping[str, Any]) -> dict[str, str]:
        return {str(c): str(d) for c, d in dict(state["paths"]).items()}

    def _membership_file(self, pid: int) -> str:
        """`tasks` when a single-threaded caller moves itself (the job's command between fork and exec
        does), `cgroup.procs` otherwise. The kernel moves a whole process (cgroup.procs) under its one
        global cgroup_threadgroup_rwsem, whose write side waits out an RCU grace period unless another
        migration took it just before: 5-13 ms per start measured here (6.18, hybrid v1). Writing "0"
        to `tasks` moves the writing thread alone and skips that lock — and the one thread of a
        single-threaded process is the process (docs/benchmarks.md, "Joining a cgroup")."""
        if pid == 0 and _single_threaded():
            return "tasks"
        return "cgroup.procs"

    def _kill_all(self, deadline: float, pids: list[int]) -> bool:
        """Freeze, SIGKILL everything, thaw; then re-kill until every hierarchy is empty."""
        if not pids:
            # Already empty — what kill_until_empty would find at once — and it stays so: only a
            # process inside forks into these cgroups, and only root may move one in. The usual end
            # of a job (its command exited, nothing left behind) then costs no freeze and thaw
            # (5-10 ms per job measured here, twice: the shim's clean-up and destroy()).
            return True
        freezer = self._paths.get("freezer")
        if freezer is not None and self._files.exists(freezer):
            state = os.path.join(freezer, "freezer.state")
            self._files.write(state, "FROZEN")
            try:
                self._wait_frozen(state, min(deadline, time.monotonic() + FREEZE_TIMEOUT))
                sigkill_all(self.pids())
            finally:
                self._files.write(state, "THAWED")
        return not kill_until_empty(self._files, self.dirs, deadline)

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


class CgroupV1Controller(CgroupController[_Layout, CgroupV1Handle]):
    """Resource limits through cgroup v1 hierarchies (hybrid or legacy layouts)."""

    name: ClassVar[str] = "cgroup1"
    handle_class = CgroupV1Handle

    def __init__(
        self,
        *,
        mountinfo: str = "/proc/self/mountinfo",
        proc_cgroup: str = "/proc/self/cgroup",
        files: CgroupFiles | None = None,
    ) -> None:
        """`mountinfo` and `proc_cgroup` stand for /proc/self/mountinfo and /proc/self/cgroup: the
        hierarchies, and the place in each that jobs are created under (default: the caller's own)."""
        super().__init__(files)
        self._mountinfo = mountinfo
        self._proc_cgroup = proc_cgroup
        self._caps_cache: Capabilities | None = None

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

    def _problem(self) -> str:
        caps = self.probe()
        return "" if caps.available else caps.reason

    def _parents(self) -> dict[str, str]:
        return dict(self._layout().parents)

    def _enforceable(self) -> tuple[str, ...]:
        return self.probe().enforceable

    def _unenforceable(self, field: str) -> str:
        return f"the {_LIMIT_CONTROLLER[field]} hierarchy (file {_LIMIT_FILE[field]}) is not available"

    def _write_limits(self, paths: dict[str, str], limits: Limits, device: tuple[int, int] | None) -> None:
        files = self._files
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


def _single_threaded() -> bool:
    """True when the calling process has one thread (what a fork() leaves in the child)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False
