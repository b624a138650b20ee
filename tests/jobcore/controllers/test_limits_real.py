"""The limits are really enforced: real processes in real cgroups (cgroup1 on this host, cgroup2 in
the VM harness). What is measured is the kernel's own accounting of the job: the OOM-kill counter, the
cgroup's CPU usage over elapsed time, the duration of direct IO under a throttle, pids.peak."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from conftest import OWNER, Backend, Children, process_gone

from jobcore.controllers import load_controller
from jobcore.controllers.block_device import resolve_block_device
from jobcore.controllers.cgroup_v2 import SUPERVISOR_LEAF, CgroupV2Controller
from jobcore.errors import InvalidLimit, UnknownController
from jobcore.spec import Limits

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[3]
pytestmark = [pytest.mark.cgroup, pytest.mark.root]

needs_stress = pytest.mark.skipif(shutil.which("stress") is None, reason="stress is not installed")


def cgroup_file(backend: Backend, state: dict[str, object], controller: str, name: str) -> Path:
    """The path of interface file `name` of `controller` for the job described by `state`."""
    if backend.id == "cgroup1":
        paths = state["paths"]
        assert isinstance(paths, dict)
        return Path(paths[controller]) / name
    return Path(str(state["path"])) / name


@needs_stress
def test_memory_hog_is_oom_killed_and_reported(real_backend: Backend, children: Children) -> None:
    handle = real_backend.controller.create(OWNER, "oom1", Limits(memory=100 * MiB), str(REPO))
    try:
        proc = children.spawn_in(
            handle,
            ["stress", "--vm", "1", "--vm-bytes", "300M", "--vm-keep", "--timeout", "10"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # stress exits non-zero once its worker is killed; it never gets to allocate 300M.
        assert proc.wait(timeout=20) != 0
        assert handle.oom_killed() is True
        peak = handle.stats().memory_peak_bytes
        print(f"stress --vm-bytes 300M under 100 MiB: exit {proc.returncode}, oom_killed, peak {peak} bytes")
        assert peak is not None and peak <= 100 * MiB
    finally:
        handle.destroy()


def procs_running() -> int:
    """Runnable tasks on the whole host right now (/proc/stat's procs_running)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("procs_running "):
                return int(line.split()[1])
    return 0


@needs_stress
def test_cpu_is_held_to_half_a_core(real_backend: Backend, children: Children) -> None:
    handle = real_backend.controller.create(OWNER, "cpu1", Limits(cpu=0.5), str(REPO))
    try:
        children.spawn_in(
            handle,
            ["stress", "--cpu", "2", "--timeout", "30"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # let both workers start
        used0, t0 = handle.stats().cpu_seconds, time.monotonic()
        running = []
        for _ in range(30):
            time.sleep(0.1)
            running.append(procs_running())
        used1, t1 = handle.stats().cpu_seconds, time.monotonic()
        assert used0 is not None and used1 is not None
        ratio = (used1 - used0) / (t1 - t0)
        load = sum(running) / len(running)
        print(
            f"cpu limit 0.5: the cgroup used {ratio:.3f} CPU over {t1 - t0:.2f}s (host runnable: {load:.1f})"
        )
        assert ratio <= 0.6, ratio
        ncpus = os.cpu_count() or 1
        if ratio < 0.4 and load > 2 * ncpus:
            # Other work (about as many runnable tasks as CPUs besides ours) saturated the host: the job
            # could not get its quota, so only the upper bound was measurable this time.
            pytest.skip(f"host saturated ({load:.1f} runnable on {ncpus} CPUs): used {ratio:.3f} <= 0.6")
        assert ratio >= 0.4, ratio
    finally:
        handle.destroy()


@attrs.frozen
class IoTarget:
    #: What dd writes to.
    path: Path
    #: The job's working directory, and the io_device limit (None: the disk behind cwd).
    cwd: str
    io_device: str | None = None


@pytest.fixture
def io_target(tmp_path: Path) -> Iterator[IoTarget]:
    """A file on a real disk (/var/tmp or the repo's .cache, never tmpfs); where there is none (the VM:
    its root is 9p + overlay), a loop device over a file, written to directly."""
    for base in ("/var/tmp", str(REPO / ".cache")):
        if not os.path.isdir(base):
            continue
        try:
            resolve_block_device(base)
        except InvalidLimit:
            continue
        path = Path(tempfile.mkdtemp(prefix="ctltest-io-", dir=base))
        try:
            yield IoTarget(path / "blob", str(path))
        finally:
            shutil.rmtree(path, ignore_errors=True)
        return
    if shutil.which("losetup") is None:
        pytest.skip("no directory on a block device and no losetup for a loop device")
    image = tmp_path / "disk.img"
    with image.open("wb") as f:
        f.truncate(64 * MiB)
    made = subprocess.run(
        ["losetup", "--find", "--show", str(image)], check=False, capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"no directory on a block device and no loop device: {made.stderr.strip()}")
    device = made.stdout.strip()
    try:
        yield IoTarget(Path(device), str(tmp_path), io_device=device)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


def test_direct_writes_are_throttled_to_the_write_limit(
    real_backend: Backend, children: Children, io_target: IoTarget
) -> None:
    limits = Limits(io_write_bps=10 * MiB, io_device=io_target.io_device)
    handle = real_backend.controller.create(OWNER, "io1", limits, io_target.cwd)
    try:
        started = time.monotonic()
        proc = children.spawn_in(
            handle,
            ["dd", "if=/dev/zero", f"of={io_target.path}", "bs=1M", "count=50", "oflag=direct"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert proc.wait(timeout=30) == 0
        took = time.monotonic() - started
        print(f"50 MiB of direct writes to {io_target.path} under 10 MiB/s took {took:.2f}s")
        assert took >= 4.0
        written = handle.stats().io_write_bytes
        assert written is not None and written >= 50 * MiB
    finally:
        handle.destroy()


def test_a_fork_bomb_is_contained_by_pids_and_then_killed(real_backend: Backend, children: Children) -> None:
    handle = real_backend.controller.create(OWNER, "bomb1", Limits(pids=50, cpu=1), str(REPO))
    try:
        bomb = children.spawn_in(
            handle,
            ["sh", "-c", "b() { b | b & }; b; sleep 300"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        state = handle.to_state()
        events = cgroup_file(real_backend, state, "pids", "pids.events")
        current = cgroup_file(real_backend, state, "pids", "pids.current")
        seen = 0
        deadline = time.monotonic() + 5
        # Until the kernel has refused a fork, the bomb has not hit the limit yet.
        while "max 0" in events.read_text() and time.monotonic() < deadline:
            seen = max(seen, int(current.read_text()))
            time.sleep(0.01)
        for _ in range(20):
            seen = max(seen, int(current.read_text()))
            time.sleep(0.01)
        assert "max 0" not in events.read_text(), "the fork bomb never reached pids.max"
        peak_file = cgroup_file(real_backend, state, "pids", "pids.peak")
        if peak_file.exists():
            seen = max(seen, int(peak_file.read_text()))
        print(
            f"fork bomb under pids=50: at most {seen} tasks seen; pids.events: {events.read_text().strip()}"
        )
        assert 0 < seen <= 50
        handle.kill()
        assert handle.pids() == []
        assert bomb.wait(timeout=5) == -9
    finally:
        handle.destroy()
    assert not any(Path(p).exists() for p in _paths(state))


def test_kill_reaches_a_daemonized_grandchild(real_backend: Backend, children: Children) -> None:
    handle = real_backend.controller.create(OWNER, "daemon1", Limits(pids=10), str(REPO))
    try:
        proc = children.spawn_in(
            handle,
            ["sh", "-c", "setsid sh -c 'sleep 300' </dev/null >/dev/null 2>&1 & echo $!; exit 0"],
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        daemon = int(proc.stdout.readline())
        assert proc.wait(timeout=5) == 0  # its parent is gone: only the cgroup knows the daemon
        assert daemon in handle.pids()
        handle.kill()
        assert process_gone(daemon)
    finally:
        handle.destroy()


def test_an_io_limit_for_a_tmpfs_path_is_refused_before_anything_is_created(real_backend: Backend) -> None:
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    with pytest.raises(InvalidLimit, match=r"/dev/shm .*tmpfs.*no block device"):
        real_backend.controller.create(OWNER, "shm1", Limits(io_read_bps=MiB), "/dev/shm")
    assert not [d for d in real_backend.owner_dirs if d.exists()]


def test_an_unknown_backend_name_is_refused() -> None:
    with pytest.raises(UnknownController, match=r"'nope'.*cgroup1"):
        load_controller("nope")


def _paths(state: dict[str, object]) -> list[str]:
    if "paths" in state:
        paths = state["paths"]
        assert isinstance(paths, dict)
        return [str(p) for p in paths.values()]
    return [str(state["path"])]


def test_v2_moves_the_parents_processes_to_a_leaf_to_enable_controllers(
    v2_parent: str, children: Children
) -> None:
    """No internal processes: a process sitting in `<own>` is moved to `<own>/jobcore-supervisor`."""
    own = Path("/sys/fs/cgroup") / v2_parent.lstrip("/")
    sitter = subprocess.Popen(["sleep", "300"])
    children.procs.append(sitter)
    (own / "cgroup.procs").write_text(str(sitter.pid))
    controller = CgroupV2Controller(self_cgroup=v2_parent)
    handle = controller.create(OWNER, "evac1", Limits(memory=64 * MiB), str(REPO))
    try:
        assert (own / "cgroup.procs").read_text().split() == []
        assert str(sitter.pid) in (own / SUPERVISOR_LEAF / "cgroup.procs").read_text().split()
        state = handle.to_state()
        assert Path(str(state["path"]), "memory.max").read_text().strip() == str(64 * MiB)
    finally:
        handle.destroy()
