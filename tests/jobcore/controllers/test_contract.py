"""One contract suite, run against every resource-controller backend usable here (psutil's
test_contracts.py pattern): the real cgroup1 backend, the real cgroup2 backend (in the VM harness),
the cgroup2 backend over a fake cgroupfs (the parts that need no kernel) and `none`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import OWNER, Backend, Children, process_gone

from jobcore.controllers import Handle, ResourceController, available_backends
from jobcore.controllers.cgroupfs import CgroupFiles
from jobcore.errors import ControllerError, InvalidLimit
from jobcore.spec import Limits

REPO = str(Path(__file__).resolve().parents[3])
pytestmark = pytest.mark.cgroup


def limits_for(backend: Backend) -> Limits:
    """Limits the backend can enforce (none: no limits at all)."""
    if backend.id == "none":
        return Limits()
    return Limits(cpu=1, memory=256 << 20, pids=64)


def need_kernel(backend: Backend) -> None:
    if not backend.real_kernel:
        pytest.skip(f"{backend.id}: needs a kernel that really confines processes")


def test_is_a_registered_resource_controller(backend: Backend) -> None:
    controller = backend.controller
    assert isinstance(controller, ResourceController)
    name = type(controller).name
    assert available_backends()[name] is type(controller)
    # The registry constructs backends with no arguments; the probe never raises.
    caps = type(controller)().probe()
    assert caps.backend == name


def test_probe_reports_a_usable_backend(backend: Backend) -> None:
    caps = backend.controller.probe()
    assert caps.available, caps.reason
    assert caps.mode in ("cgroup2", "cgroup1-hybrid", "cgroup1-legacy", "none")
    assert set(caps.enforceable) <= set(Limits.RESOURCE_FIELDS)
    if backend.id == "none":
        assert caps.enforceable == ()
        assert any("NOTHING IS LIMITED" in n for n in caps.notes)
    else:
        assert {"cpu", "memory", "pids"} <= set(caps.enforceable)
        assert caps.job_roots


def test_state_is_plain_json_and_attaches_to_the_same_job(backend: Backend) -> None:
    limits = limits_for(backend)
    handle = backend.controller.create(OWNER, "state1", limits, REPO)
    try:
        state = json.loads(json.dumps(handle.to_state()))
        again = backend.controller.attach(state)
        assert isinstance(again, Handle)
        assert again.to_state() == handle.to_state()
        assert again.applied() == limits
    finally:
        handle.destroy()


def test_a_process_entered_is_listed_and_the_handle_counts_it(backend: Backend, children: Children) -> None:
    handle = backend.controller.create(OWNER, "enter1", limits_for(backend), REPO)
    try:
        proc = children.spawn_in(handle, ["sleep", "30"])
        if backend.id == "none":
            assert handle.pids() == []
        else:
            assert proc.pid in handle.pids()
    finally:
        handle.destroy()


ENTER_SELF = """
import json, sys
from jobcore.controllers import available_backends
state = json.loads(sys.argv[1])
available_backends()[state["backend"]]().attach(state).enter(0)
sys.stdout.write(open("/proc/self/cgroup").read())
"""


def test_another_process_attaches_the_state_and_enters_itself(backend: Backend) -> None:
    need_kernel(backend)
    handle = backend.controller.create(OWNER, "self1", limits_for(backend), REPO)
    try:
        # What the job's init does: rebuild the handle from JSON in a new process, enter(0).
        out = subprocess.run(
            [sys.executable, "-c", ENTER_SELF, json.dumps(handle.to_state())],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert f"/remote-jobs/{OWNER}/self1" in out
        if backend.id == "cgroup1":
            joined = [line for line in out.splitlines() if line.endswith(f"/remote-jobs/{OWNER}/self1")]
            assert {h for line in joined for h in line.split(":")[1].split(",")} >= {
                "memory",
                "pids",
                "freezer",
            }
    finally:
        handle.destroy()


ENTER_SELF_RECORDED = """
import json, sys, threading
from jobcore.controllers import available_backends
from jobcore.controllers.cgroupfs import CgroupFiles
written = []
class Recording(CgroupFiles):
    def write(self, path, value):
        written.append(path.rsplit("/", 1)[1])
        super().write(path, value)
state = json.loads(sys.argv[1])
handle = type(available_backends()[state["backend"]]().attach(state)).from_state(state, files=Recording())
if sys.argv[2] == "threaded":
    stop = threading.Event()
    threading.Thread(target=stop.wait, daemon=True).start()
handle.enter(0)
tids = __import__("os").listdir("/proc/self/task")
cgroups = {t: open(f"/proc/self/task/{t}/cgroup").read() for t in tids}
print(json.dumps({"written": written, "cgroups": cgroups}))
"""


def test_a_process_entering_itself_is_moved_whole_with_all_its_threads(backend: Backend) -> None:
    """A single-threaded process moves itself through v1's `tasks` (which skips the kernel's global
    threadgroup lock); one with threads through `cgroup.procs`. Either way every thread ends up in the
    job's cgroup of every hierarchy."""
    need_kernel(backend)
    handle = backend.controller.create(OWNER, "self2", limits_for(backend), REPO)
    try:
        for mode in ("single", "threaded"):
            out = subprocess.run(
                [sys.executable, "-c", ENTER_SELF_RECORDED, json.dumps(handle.to_state()), mode],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
            report = json.loads(out)
            expected = "tasks" if backend.id == "cgroup1" and mode == "single" else "cgroup.procs"
            assert set(report["written"]) == {expected}, (mode, report["written"])
            assert len(report["cgroups"]) == (1 if mode == "single" else 2)
            for text in report["cgroups"].values():
                lines = [line for line in text.splitlines() if line and not line.startswith("0::/")]
                if backend.id == "cgroup1":
                    joined = {
                        h
                        for line in lines
                        if line.endswith(f"/remote-jobs/{OWNER}/self2")
                        for h in line.split(":")[1].split(",")
                    }
                    assert joined >= {"memory", "pids", "freezer", "cpu", "blkio"}, (mode, text)
                else:
                    assert f"/remote-jobs/{OWNER}/self2" in text, (mode, text)
    finally:
        handle.destroy()


def test_kill_kills_a_daemonized_grandchild(backend: Backend, children: Children) -> None:
    need_kernel(backend)
    handle = backend.controller.create(OWNER, "kill1", limits_for(backend), REPO)
    try:
        # The grandchild leaves the session and the process group; only the cgroup still holds it.
        proc = children.spawn_in(
            handle,
            ["sh", "-c", "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!; wait"],
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        grandchild = int(proc.stdout.readline())
        assert grandchild in handle.pids()
        handle.kill()
        assert process_gone(grandchild)
        assert proc.wait(timeout=5) == -9
        assert handle.pids() == []
    finally:
        handle.destroy()


def test_destroy_removes_every_directory_and_is_idempotent(backend: Backend, children: Children) -> None:
    handle = backend.controller.create(OWNER, "destroy1", limits_for(backend), REPO)
    if backend.id != "none":
        # On the fake, cgroup.kill SIGKILLs the pids listed in cgroup.procs, as the kernel would.
        children.spawn_in(handle, ["sleep", "300"])
    paths = [p for p in _state_paths(handle) if p]
    assert all(os.path.isdir(p) for p in paths)
    handle.destroy()
    assert not [p for p in paths if os.path.exists(p)]
    handle.destroy()
    backend.controller.attach(handle.to_state()).destroy()


def test_stats_are_numbers_from_the_cgroup(backend: Backend, children: Children) -> None:
    handle = backend.controller.create(OWNER, "stats1", limits_for(backend), REPO)
    try:
        if backend.real_kernel:
            spin = "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"
            proc = children.spawn_in(handle, ["sh", "-c", spin])
            assert proc.wait(timeout=30) == 0
        usage = handle.stats()
        if backend.id == "none":
            assert usage.cpu_seconds is None and usage.memory_peak_bytes is None
            return
        assert isinstance(usage.cpu_seconds, float)
        assert isinstance(usage.io_read_bytes, int) and isinstance(usage.io_write_bytes, int)
        if backend.real_kernel:
            assert usage.cpu_seconds > 0.01
            assert isinstance(usage.memory_peak_bytes, int) and usage.memory_peak_bytes > 0
        assert handle.oom_killed() is False
    finally:
        handle.destroy()


def test_sweep_removes_stale_job_cgroups_and_keeps_live_ones(backend: Backend, children: Children) -> None:
    controller = backend.controller
    live = controller.create(OWNER, "live1", limits_for(backend), REPO)
    stale = controller.create(OWNER, "stale1", limits_for(backend), REPO)
    try:
        if backend.real_kernel:
            proc = children.spawn_in(stale, ["sleep", "300"])
        # Only this test's owner is ever judged stale: other jobs on this host are not ours.
        removed = controller.sweep(lambda owner, job_id: owner != OWNER or job_id == "live1")
        if backend.id == "none":
            assert removed == []
            return
        assert sorted(removed) == sorted(p for p in _state_paths(stale) if p)
        assert not [p for p in removed if os.path.exists(p)]
        assert all(os.path.isdir(p) for p in _state_paths(live))
        if backend.real_kernel:
            assert proc.wait(timeout=5) == -9
    finally:
        live.destroy()
        stale.destroy()


def test_an_io_limit_on_tmpfs_is_refused_before_anything_exists(backend: Backend) -> None:
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    limits = Limits(io_write_bps=10 << 20)
    with pytest.raises(InvalidLimit) as exc:
        backend.controller.check(limits, "/dev/shm")
    if backend.id != "none":
        assert "/dev/shm" in str(exc.value) and "tmpfs" in str(exc.value)
    with pytest.raises(InvalidLimit):
        backend.controller.create(OWNER, "tmpfs1", limits, "/dev/shm")
    assert not [d for d in backend.owner_dirs if d.exists()]


def test_a_second_job_with_the_same_id_is_refused(backend: Backend) -> None:
    if backend.id == "none":
        pytest.skip("none keeps no per-job state to collide")
    handle = backend.controller.create(OWNER, "dup1", limits_for(backend), REPO)
    try:
        with pytest.raises(ControllerError, match="already exists"):
            backend.controller.create(OWNER, "dup1", limits_for(backend), REPO)
    finally:
        handle.destroy()


def test_unsafe_names_never_become_paths(backend: Backend) -> None:
    if backend.id == "none":
        pytest.skip("none creates no paths")
    for owner, job_id in ((OWNER, "../escape"), (OWNER, ".."), ("../x", "j"), (OWNER, "a/b")):
        with pytest.raises(ControllerError):
            backend.controller.create(owner, job_id, Limits(), REPO)


def _state_paths(handle: Handle) -> list[str]:
    state = handle.to_state()
    if "paths" in state:
        return list(dict.fromkeys(state["paths"].values()))
    return [state["path"]] if "path" in state else []


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


class _RecordingFiles(CgroupFiles):
    """The real cgroupfs, with every write recorded as (path, value)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str, str]] = []

    def write(self, path: str, value: str) -> None:
        self.writes.append((path, value))
        super().write(path, value)


def _recorded_handle(backend: Backend, handle: Handle) -> tuple[Handle, list[tuple[str, str]]]:
    """`handle` rebuilt over files that record its writes (the fake kernel records its own)."""
    files = backend.fake if backend.fake is not None else _RecordingFiles()
    rebuilt = type(handle).from_state(handle.to_state(), files=files)  # type: ignore[attr-defined]
    return rebuilt, files.writes


def test_killing_a_job_whose_processes_all_ended_writes_nothing(backend: Backend, children: Children) -> None:
    """v1: the usual end of a job (its command exited, nothing left behind) costs no freeze and thaw;
    a job with a process left is still killed through them. (v2's kill is one write, kept.)"""
    if backend.id != "cgroup1":
        pytest.skip("the freezer dance is cgroup v1's")
    handle = backend.controller.create(OWNER, "kill-empty", limits_for(backend), REPO)
    try:
        ended = children.spawn_in(handle, ["true"])
        assert ended.wait(timeout=10) == 0
        recorded, writes = _recorded_handle(backend, handle)
        before = len(writes)
        recorded.kill()
        assert writes[before:] == []
        left = children.spawn_in(handle, ["sleep", "300"])
        before = len(writes)
        recorded.kill()
        assert writes[before:], "a live process must be killed through the cgroup"
        assert left.wait(timeout=10) == -9
    finally:
        handle.destroy()


def test_a_cgroup_made_below_the_jobs_own_is_walked_killed_and_removed(
    backend: Backend, children: Children
) -> None:
    """A job's cgroups are walked with one stat each when they have no child cgroup (a directory's link
    count says so); one made below them (as a job run as root could) is still found, killed, removed."""
    need_kernel(backend)
    handle = backend.controller.create(OWNER, "nested1", limits_for(backend), REPO)
    dirs = list(handle.dirs)  # type: ignore[attr-defined]
    try:
        proc = children.spawn_in(handle, ["sleep", "300"])
        for directory in dirs:
            inner = os.path.join(directory, "inner")
            os.mkdir(inner)
            with open(os.path.join(inner, "cgroup.procs"), "w") as f:
                f.write(str(proc.pid))
        assert os.stat(dirs[0]).st_nlink == 3
        assert handle.pids() == [proc.pid]
        handle.kill()
        assert proc.wait(timeout=10) == -9
    finally:
        handle.destroy()
    assert not [d for d in dirs if os.path.exists(d)]
