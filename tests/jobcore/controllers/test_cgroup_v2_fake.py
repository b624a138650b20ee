"""The cgroup v2 backend against a fake cgroupfs (conftest.FakeCgroup2Kernel): which files it writes
and in what order, how it reads what the kernel reports, how it enables controllers down the tree and
what it does about the no-internal-processes rule. The real-kernel behaviour is proven by the contract
and limit tests in the VM harness."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from conftest import OWNER, FakeCgroup2Kernel

from jobcore.controllers.block_device import resolve_block_device
from jobcore.controllers.cgroup_v2 import SUPERVISOR_LEAF, CgroupV2Controller
from jobcore.errors import ControllerError, InvalidLimit
from jobcore.spec import Limits

MiB = 1 << 20
REPO = str(Path(__file__).resolve().parents[3])
JOB = f"/svc/remote-jobs/{OWNER}/job1"


@pytest.fixture
def fake(tmp_path: Path) -> FakeCgroup2Kernel:
    kernel = FakeCgroup2Kernel(tmp_path)
    kernel.make("/svc")
    return kernel


def controller(fake: FakeCgroup2Kernel, own: str = "/svc") -> CgroupV2Controller:
    return CgroupV2Controller(mount_point=fake.root, self_cgroup=own, files=fake)


def test_create_enables_controllers_down_the_tree_then_writes_the_limits_in_order(
    fake: FakeCgroup2Kernel,
) -> None:
    try:
        device = resolve_block_device(REPO)
    except InvalidLimit:
        pytest.skip("the repository is not on a block device here")
    limits = Limits(cpu=0.5, memory=100 * MiB, pids=50, io_write_bps=10 * MiB, io_read_iops=100)
    handle = controller(fake).create(OWNER, "job1", limits, REPO)
    major, minor = device
    assert fake.writes == [
        ("/svc/cgroup.subtree_control", "+cpu +memory +io +pids"),
        ("/svc/remote-jobs/cgroup.subtree_control", "+cpu +memory +io +pids"),
        (f"/svc/remote-jobs/{OWNER}/cgroup.subtree_control", "+cpu +memory +io +pids"),
        (f"{JOB}/cpu.max", "50000 100000"),
        (f"{JOB}/memory.max", str(100 * MiB)),
        (f"{JOB}/memory.swap.max", "0"),
        (f"{JOB}/pids.max", "50"),
        (f"{JOB}/io.max", f"{major}:{minor} wbps={10 * MiB} riops=100"),
    ]
    assert handle.to_state()["path"] == str(fake.root / JOB.lstrip("/"))
    handle.destroy()


def test_a_second_job_only_writes_its_own_limits(fake: FakeCgroup2Kernel) -> None:
    c = controller(fake)
    first = c.create(OWNER, "job1", Limits(pids=5), REPO)
    fake.writes.clear()
    second = c.create(OWNER, "job2", Limits(pids=7), REPO)
    assert fake.writes == [(f"/svc/remote-jobs/{OWNER}/job2/pids.max", "7")]
    first.destroy()
    second.destroy()


def test_processes_in_the_parent_are_moved_to_a_supervisor_leaf(fake: FakeCgroup2Kernel) -> None:
    # The caller (and a sibling process) sit in /svc: the kernel refuses +memory there with EBUSY.
    fake.make("/app", procs="4242\n4343")
    handle = controller(fake, "/app").create(OWNER, "job1", Limits(memory=64 * MiB), REPO)
    app = fake.root / "app"
    assert (app / "cgroup.procs").read_text().split() == []
    assert (app / SUPERVISOR_LEAF / "cgroup.procs").read_text().split() == ["4242", "4343"]
    assert (app / "cgroup.subtree_control").read_text().split() == ["cpu", "memory", "io", "pids"]
    assert fake.writes[:4] == [
        ("/app/cgroup.subtree_control", "+cpu +memory +io +pids"),  # refused: EBUSY
        (f"/app/{SUPERVISOR_LEAF}/cgroup.procs", "4242"),
        (f"/app/{SUPERVISOR_LEAF}/cgroup.procs", "4343"),
        ("/app/cgroup.subtree_control", "+cpu +memory +io +pids"),
    ]
    handle.destroy()
    # A controller built in the supervisor leaf (where the caller now is) uses the same parent.
    again = controller(fake, f"/app/{SUPERVISOR_LEAF}")
    assert again.probe().job_roots == (str(app / "remote-jobs"),)


def test_an_empty_parent_is_left_as_it_is(fake: FakeCgroup2Kernel) -> None:
    controller(fake).create(OWNER, "job1", Limits(), REPO).destroy()
    assert not (fake.root / "svc" / SUPERVISOR_LEAF).exists()


def test_a_host_whose_controllers_are_all_on_v1_is_unavailable_with_the_reason(tmp_path: Path) -> None:
    fake = FakeCgroup2Kernel(tmp_path, controllers="hugetlb")
    caps = controller(fake, "/").probe()
    assert not caps.available
    assert "cgroup v1" in caps.reason and "cgroup1" in caps.reason


def test_this_hybrid_host_reports_cgroup2_unavailable_unless_it_has_v2_controllers() -> None:
    caps = CgroupV2Controller().probe()
    v2_controllers = Path("/sys/fs/cgroup/cgroup.controllers")
    if v2_controllers.exists() and v2_controllers.read_text().split():
        pytest.skip("this host has a working cgroup v2")
    assert not caps.available
    assert caps.reason


def test_a_limit_whose_controller_is_missing_is_refused(tmp_path: Path) -> None:
    fake = FakeCgroup2Kernel(tmp_path, controllers="cpu pids")
    fake.make("/svc")
    c = controller(fake)
    assert c.probe().available
    assert c.probe().enforceable == ("cpu", "pids")
    with pytest.raises(InvalidLimit, match="memory"):
        c.check(Limits(memory=64 * MiB), REPO)
    with pytest.raises(InvalidLimit, match="io_write_bps"):
        c.create(OWNER, "job1", Limits(io_write_bps=MiB), REPO)
    assert not (fake.root / "svc" / "remote-jobs").exists()


def test_stats_come_from_cpu_stat_memory_peak_and_io_stat(fake: FakeCgroup2Kernel) -> None:
    handle = controller(fake).create(OWNER, "job1", Limits(), REPO)
    job = fake.root / JOB.lstrip("/")
    (job / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    (job / "memory.peak").write_text("73400320\n")
    (job / "io.stat").write_text(
        "254:0 rbytes=4096 wbytes=1048576 rios=1 wios=8 dbytes=0 dios=0\n"
        "7:1 rbytes=10 wbytes=20 rios=1 wios=1 dbytes=0 dios=0\n"
    )
    usage = handle.stats()
    assert usage.cpu_seconds == 2.5
    assert usage.memory_peak_bytes == 73400320
    assert (usage.io_read_bytes, usage.io_write_bytes) == (4106, 1048596)
    (job / "memory.peak").unlink()  # kernels before 5.19
    assert handle.stats().memory_peak_bytes is None
    handle.destroy()


def test_oom_killed_reads_the_oom_kill_counter_of_the_whole_job(fake: FakeCgroup2Kernel) -> None:
    handle = controller(fake).create(OWNER, "job1", Limits(memory=64 * MiB), REPO)
    job = fake.root / JOB.lstrip("/")
    assert handle.oom_killed() is False
    # An OOM kill in a cgroup the job made below its own counts too.
    fake.writes.clear()
    fake.write(str(job / "cgroup.subtree_control"), "+memory")
    fake.mkdir(str(job / "inner"))
    (job / "memory.events").write_text("low 0\nhigh 0\nmax 1\noom 1\noom_kill 0\n")
    assert handle.oom_killed() is False  # "oom" without a kill is not an OOM kill
    (job / "inner" / "memory.events.local").write_text("low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\n")
    assert handle.oom_killed() is True
    handle.destroy()
    assert not job.exists()


def test_kill_uses_cgroup_kill_when_the_kernel_has_it(fake: FakeCgroup2Kernel) -> None:
    handle = controller(fake).create(OWNER, "job1", Limits(), REPO)
    fake.writes.clear()
    handle.kill()
    assert fake.writes == [(f"{JOB}/cgroup.kill", "1")]
    handle.destroy()


def test_without_cgroup_kill_kill_freezes_kills_and_thaws(tmp_path: Path) -> None:
    fake = FakeCgroup2Kernel(tmp_path, cgroup_kill=False)
    fake.make("/svc")
    handle = controller(fake).create(OWNER, "job1", Limits(), REPO)
    fake.writes.clear()
    handle.kill()
    assert fake.writes == [(f"{JOB}/cgroup.freeze", "1"), (f"{JOB}/cgroup.freeze", "0")]
    assert not controller(fake).probe().features["cgroup_kill"]
    handle.destroy()


def test_destroy_waits_for_populated_0_then_removes_the_job_and_its_empty_owner(
    fake: FakeCgroup2Kernel,
) -> None:
    c = controller(fake)
    handle = c.create(OWNER, "job1", Limits(), REPO)
    other = c.create(OWNER, "job2", Limits(), REPO)
    owner_dir = fake.root / "svc" / "remote-jobs" / OWNER
    handle.destroy()
    assert not (owner_dir / "job1").exists()
    assert owner_dir.exists()  # job2 is still there
    other.destroy()
    assert not owner_dir.exists()
    assert (fake.root / "svc" / "remote-jobs").exists()


def test_destroy_gives_up_with_an_error_when_the_cgroup_stays_populated(fake: FakeCgroup2Kernel) -> None:
    handle = controller(fake).create(OWNER, "job1", Limits(), REPO)
    job = fake.root / JOB.lstrip("/")
    (job / "cgroup.kill").unlink()  # a kernel that cannot kill: populated stays 1
    (job / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    with pytest.raises(ControllerError, match="still has processes"):
        handle.destroy(timeout=0.2)
    (job / "cgroup.events").write_text("populated 0\nfrozen 0\n")
    handle.destroy()


def test_enter_writes_the_pid_to_cgroup_procs(fake: FakeCgroup2Kernel) -> None:
    handle = controller(fake).create(OWNER, "job1", Limits(), REPO)
    handle.enter(0)
    assert fake.writes[-1] == (f"{JOB}/cgroup.procs", "0")
    fake.exit(0)
    handle.destroy()


def test_sweep_only_removes_jobs_that_are_not_live(fake: FakeCgroup2Kernel) -> None:
    c = controller(fake)
    c.create(OWNER, "a", Limits(), REPO)
    c.create(OWNER, "b", Limits(), REPO)
    removed = c.sweep(lambda owner, job_id: job_id == "a")
    assert removed == [os.path.join(fake.root, "svc/remote-jobs", OWNER, "b")]
    assert c.sweep(lambda owner, job_id: False) == [os.path.join(fake.root, "svc/remote-jobs", OWNER, "a")]
    assert not (fake.root / "svc" / "remote-jobs" / OWNER).exists()


def test_a_refused_limit_names_the_file_and_value_and_leaves_nothing_behind(fake: FakeCgroup2Kernel) -> None:
    fake.refuse["pids.max"] = errno.EINVAL
    with pytest.raises(ControllerError, match=r"cannot write '50' to .*/job1/pids.max: Invalid argument"):
        controller(fake).create(OWNER, "job1", Limits(memory=64 * MiB, pids=50), REPO)
    assert not (fake.root / "svc" / "remote-jobs" / OWNER).exists()
