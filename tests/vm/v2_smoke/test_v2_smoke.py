"""Smoke tests of the cgroup v2 VM harness: they need real cgroup v2 and only run inside the VM.

Run them with `tests/vm/run_vm.py -- tests/vm/v2_smoke`. On the host they skip with a reason. Each test
makes its own cgroups next to the runner leaf (`/sys/fs/cgroup/harness/<name>`) and removes them.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import wait_until

CGROOT = Path("/sys/fs/cgroup")
IN_VM = os.environ.get("JOBCORE_IN_VM") == "1"
HARNESS = Path(os.environ.get("JOBCORE_VM_CGROUP_ROOT", "/sys/fs/cgroup/harness"))
CONTROLLERS = {"cpu", "memory", "io", "pids"}
MiB = 1 << 20

pytestmark = [
    pytest.mark.cgroup,
    pytest.mark.skipif(
        not IN_VM, reason="cgroup v2 VM-only test (JOBCORE_IN_VM unset): run tests/vm/run_vm.py -- tests/vm"
    ),
    pytest.mark.skipif(
        not (CGROOT / "cgroup.controllers").exists(), reason="no cgroup2 at /sys/fs/cgroup (not the VM)"
    ),
]


def read(p: Path) -> str:
    return p.read_text().strip()


def keyed(p: Path) -> dict[str, int]:
    """A flat-keyed file such as memory.events or cpu.stat."""
    out = {}
    for line in p.read_text().splitlines():
        k, v = line.split()
        out[k] = int(v)
    return out


def populated(cg: Path) -> bool:
    return keyed(cg / "cgroup.events")["populated"] == 1


def start_in(cg: Path, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
    """Start `argv` born inside `cg` (the child moves itself before exec)."""

    def enter() -> None:
        (cg / "cgroup.procs").write_text("0")

    return subprocess.Popen(argv, preexec_fn=enter, **kw)  # type: ignore[call-overload,no-any-return]  # noqa: PLW1509


def run_in(cg: Path, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    p = start_in(cg, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


@pytest.fixture
def make_cgroup(request: pytest.FixtureRequest) -> Iterator[Callable[[str], Path]]:
    made: list[Path] = []

    def make(name: str) -> Path:
        cg = HARNESS / f"smoke-{request.node.name[:40]}-{name}-{os.getpid()}"
        cg.mkdir()
        made.append(cg)
        return cg

    yield make
    for cg in reversed(made):
        if cg.exists():
            (cg / "cgroup.kill").write_text("1")
            wait_until(lambda cg=cg: not populated(cg), 10, f"{cg} to empty")
            cg.rmdir()


def test_cgroup2_is_the_only_hierarchy_with_the_documented_layout() -> None:
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    at_cg = [m for m in mounts if m[1] == "/sys/fs/cgroup"]
    assert [m[2] for m in at_cg] == ["cgroup2"], at_cg
    assert not [m for m in mounts if m[2] == "cgroup"], "a cgroup v1 hierarchy is mounted"
    assert set(read(CGROOT / "cgroup.controllers").split()) >= CONTROLLERS
    assert set(read(CGROOT / "cgroup.subtree_control").split()) >= CONTROLLERS
    # we run in the leaf /harness/runner; /harness delegates the controllers to its children
    assert read(Path("/proc/self/cgroup")) == "0::/harness/runner"
    assert HARNESS == CGROOT / "harness"
    assert set(read(HARNESS / "cgroup.subtree_control").split()) >= CONTROLLERS
    assert str(os.getpid()) in read(HARNESS / "runner" / "cgroup.procs").split()
    # no-internal-processes: the runner leaf holds processes, so it cannot delegate controllers
    with pytest.raises(OSError) as exc:
        (HARNESS / "runner" / "cgroup.subtree_control").write_text("+memory")
    assert exc.value.errno == errno.EBUSY


def test_a_remote_jobs_tree_next_to_the_runner_gets_every_controller(
    make_cgroup: Callable[[str], Path],
) -> None:
    top = make_cgroup("remote-jobs")
    (top / "cgroup.subtree_control").write_text("+cpu +memory +io +pids")
    owner = top / "alice"
    owner.mkdir()
    try:
        (owner / "cgroup.subtree_control").write_text("+cpu +memory +io +pids")
        job = owner / "job1"
        job.mkdir()
        try:
            assert set(read(job / "cgroup.controllers").split()) >= CONTROLLERS
            for f in ("memory.max", "cpu.max", "io.max", "pids.max", "cgroup.kill", "memory.events"):
                assert (job / f).exists(), f
            (job / "memory.max").write_text(str(64 * MiB))
            assert read(job / "memory.max") == str(64 * MiB)
            r = run_in(job, ["cat", "/proc/self/cgroup"])
            assert r.stdout.decode().strip() == f"0::/harness/{top.name}/alice/job1"
        finally:
            job.rmdir()
    finally:
        owner.rmdir()


def test_memory_max_oom_kills_stress_and_counts_it(make_cgroup: Callable[[str], Path]) -> None:
    stress = ["stress", "--vm", "1", "--vm-bytes", "200M", "--vm-keep", "--timeout", "3"]
    # control: with room for 200M, the same stress runs its 3 s and exits 0
    roomy = make_cgroup("roomy")
    (roomy / "memory.max").write_text(str(512 * MiB))
    r = run_in(roomy, stress)
    assert r.returncode == 0, r.stderr
    assert keyed(roomy / "memory.events")["oom_kill"] == 0
    # 64M: the vm worker is OOM-killed, stress reports it, and the cgroup counts it
    tight = make_cgroup("tight")
    (tight / "memory.max").write_text(str(64 * MiB))
    if (tight / "memory.swap.max").exists():
        (tight / "memory.swap.max").write_text("0")
    assert keyed(tight / "memory.events")["oom_kill"] == 0
    r = run_in(tight, stress)
    assert r.returncode != 0
    assert re.search(rb"got signal 9", r.stderr), r.stderr
    events = keyed(tight / "memory.events")
    assert events["oom_kill"] >= 1, events
    assert events["max"] >= 1, events
    if (tight / "memory.peak").exists():
        assert int(read(tight / "memory.peak")) <= 64 * MiB


def test_cgroup_kill_empties_a_cgroup_including_daemonized_processes(
    make_cgroup: Callable[[str], Path],
) -> None:
    cg = make_cgroup("kill")
    script = "sleep 300 & setsid sleep 300 & (sleep 300 &); exec sleep 300"
    p = start_in(cg, ["sh", "-c", script])
    try:
        wait_until(lambda: len(read(cg / "cgroup.procs").split()) >= 4, 15, "4 processes in the cgroup")
        assert populated(cg)
        (cg / "cgroup.kill").write_text("1")
        wait_until(lambda: not populated(cg), 10, "cgroup.events populated 0")
        assert read(cg / "cgroup.procs") == ""
        assert p.wait(timeout=5) == -9
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_pids_max_refuses_forks_beyond_the_limit(make_cgroup: Callable[[str], Path]) -> None:
    cg = make_cgroup("pids")
    (cg / "pids.max").write_text("4")
    r = run_in(cg, ["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 2 & done; wait"], timeout=30)
    assert keyed(cg / "pids.events")["max"] >= 1
    assert b"fork" in r.stderr.lower(), r.stderr


def test_cpu_max_throttles_a_busy_process(make_cgroup: Callable[[str], Path]) -> None:
    cg = make_cgroup("cpu")
    (cg / "cpu.max").write_text("20000 100000")  # 20% of one CPU
    t0 = time.monotonic()
    r = run_in(cg, ["stress", "--cpu", "1", "--timeout", "3"])
    wall_us = (time.monotonic() - t0) * 1e6
    assert r.returncode == 0, r.stderr
    st = keyed(cg / "cpu.stat")
    assert st["nr_throttled"] >= 5, st
    assert st["usage_usec"] < 0.35 * wall_us, (st, wall_us)


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    img = tmp_path / "disk.img"
    with img.open("wb") as fh:
        fh.truncate(32 * MiB)
    dev = subprocess.run(
        ["losetup", "--find", "--show", str(img)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def test_io_max_throttles_direct_writes_to_a_loop_device(
    make_cgroup: Callable[[str], Path], loop_device: str
) -> None:
    """io.max caps a cgroup's direct writes to a block device.

    The VM's loop device is as fast as the host lets the emulated CPU be, which varies by an order of
    magnitude on a shared machine. So the limit is not a fixed number: the device's unthrottled rate
    is measured first and the limit set to a quarter of it. The throttled run's rate is bounded by
    the kernel (a slower machine only makes it lower), so both checks are one-sided and hold however
    slow or noisy the VM is: the throttled rate is at most the limit (with the kernel's first-slice
    allowance), and that is well below the unthrottled rate.
    """
    rdev = os.stat(loop_device).st_rdev
    majmin = f"{os.major(rdev)}:{os.minor(rdev)}"
    block = 64 * 1024

    def timed_dd(cg: Path, nbytes: int) -> float:
        """Seconds to write `nbytes` to the device with O_DIRECT from a process born in `cg`."""
        dd = ["dd", "if=/dev/zero", f"of={loop_device}", f"bs={block}", f"count={nbytes // block}"]
        t0 = time.monotonic()
        r = run_in(cg, [*dd, "oflag=direct"], timeout=120)
        assert r.returncode == 0, r.stderr
        return time.monotonic() - t0

    free = make_cgroup("io-free")
    free_rate = 4 * MiB / timed_dd(free, 4 * MiB)
    # A quarter of what the device just did, in whole blocks, at most 2 MiB/s (so ~2 s of writing
    # stays within the 32 MiB device) and at least one block per second.
    limit = max(block, min(2 * MiB, int(free_rate / 4)) // block * block)
    nbytes = 2 * limit  # about two seconds at the limit: the first slice's allowance is small beside it
    capped = make_cgroup("io-capped")
    (capped / "io.max").write_text(f"{majmin} wbps={limit}")
    assert f"wbps={limit}" in read(capped / "io.max")
    capped_rate = nbytes / timed_dd(capped, nbytes)
    rates = (free_rate / MiB, limit / MiB, capped_rate / MiB)
    print("unthrottled {:.2f} MiB/s; wbps={:.2f} MiB/s -> {:.2f} MiB/s".format(*rates))
    assert capped_rate <= 1.25 * limit, (capped_rate, limit)
    assert capped_rate < 0.5 * free_rate, (capped_rate, free_rate)
    stat = read(capped / "io.stat")
    m = re.search(rf"^{majmin} .*\bwbytes=(\d+)", stat, re.M)
    assert m and int(m.group(1)) >= nbytes, stat


def test_modprobe_finds_the_guest_kernels_modules() -> None:
    release = os.uname().release
    assert Path(f"/lib/modules/{release}/modules.dep").exists()
    assert Path("/sys/module/loop").exists(), "loop is loaded at boot (losetup needs it)"
    subprocess.run(["modprobe", "dummy"], check=True, capture_output=True)
    assert Path("/sys/module/dummy").exists()


def test_loopback_is_up() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv, socket.create_connection(srv.getsockname(), 5) as c:
        conn, _ = srv.accept()
        c.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        conn.close()


def test_the_runner_leaf_can_be_turned_into_a_delegated_parent() -> None:
    """What a library that uses its own cgroup as `<own>` does in the VM: move the processes of
    /harness/runner into a leaf below it, then enable the controllers in runner itself."""
    runner = HARNESS / "runner"
    sup = runner / "jobcore-supervisor"
    jobs = runner / "remote-jobs"
    sup.mkdir()
    try:
        for pid in read(runner / "cgroup.procs").split():
            (sup / "cgroup.procs").write_text(pid)
        assert read(runner / "cgroup.procs") == ""
        assert read(Path("/proc/self/cgroup")) == "0::/harness/runner/jobcore-supervisor"
        (runner / "cgroup.subtree_control").write_text("+cpu +memory +io +pids")
        jobs.mkdir()
        assert set(read(jobs / "cgroup.controllers").split()) >= CONTROLLERS
        (jobs / "pids.max").write_text("7")
        r = run_in(jobs, ["cat", "/proc/self/cgroup"])
        assert r.stdout.decode().strip() == "0::/harness/runner/remote-jobs"
    finally:
        if jobs.exists():
            jobs.rmdir()
        (runner / "cgroup.subtree_control").write_text("-cpu -memory -io -pids")
        for pid in read(sup / "cgroup.procs").split():
            (runner / "cgroup.procs").write_text(pid)
        sup.rmdir()
    assert read(Path("/proc/self/cgroup")) == "0::/harness/runner"
