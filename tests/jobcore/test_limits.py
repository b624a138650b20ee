"""Limits that provably bite, through the whole Worker stack, with the real `stress` program.

On the build machines this runs against cgroup v1; inside the cgroup v2 VM against cgroup2.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobcore_testing import CONTROLLER, requires_root, wait_until

from jobcore import InvalidLimit, JobSpec, JobState, Limits, RunAs, Worker
from jobcore.controllers.block_device import resolve_block_device

pytestmark = [requires_root, pytest.mark.skipif(shutil.which("stress") is None, reason="needs stress (apt)")]

MiB = 1 << 20


@pytest.fixture
def limited(worker: Worker) -> Worker:
    if worker.controller.name == "none":
        pytest.skip("the none backend enforces no limit")
    return worker


def test_memory_hog_is_oom_killed_and_reported(limited: Worker) -> None:
    status = limited.start(
        JobSpec(
            ["stress", "--vm", "1", "--vm-bytes", "300M", "--vm-keep", "--timeout", "60"],
            limits=Limits(memory=100 * MiB),
        )
    )
    final = limited.wait(status.id, timeout=60)
    assert final.state is JobState.EXITED or final.state is JobState.KILLED
    assert final.oom_killed, final
    assert final.limits.memory == 100 * MiB
    assert final.usage.memory_peak_bytes is not None and final.usage.memory_peak_bytes <= 101 * MiB
    # stress reports its worker's death and exits non-zero; the host and the Worker go on.
    assert final.shell_exit_code != 0
    again = limited.start(JobSpec(["echo", "still fine"]))
    assert b"".join(limited.output(again.id)) == b"still fine\n"


def test_cpu_quota_holds_a_busy_job_to_half_a_core(limited: Worker) -> None:
    status = limited.start(JobSpec(["stress", "--cpu", "2", "--timeout", "30"], limits=Limits(cpu=0.5)))

    def cpu_seconds() -> float:
        used = limited.status(status.id).usage.cpu_seconds
        assert used is not None, "the backend reports no CPU usage"
        return used

    time.sleep(0.5)  # let stress start its workers
    used0, t0 = cpu_seconds(), time.monotonic()
    time.sleep(3)
    used, elapsed = cpu_seconds() - used0, time.monotonic() - t0
    limited.stop(status.id, grace=0)
    # Measured from the cgroup's own usage counter over ~3 s of wall time. Two busy workers would use
    # two cores unlimited; the quota holds them to half of one. (That the job gets its full half-core
    # on an idle host is proven at the controller level, in controllers/test_limits_real.py.)
    assert 0 < used / elapsed <= 0.6, f"{used:.2f} CPU-s in {elapsed:.2f} s = {used / elapsed:.2f} cores"


@pytest.fixture
def io_dir() -> Iterator[Path]:
    """A directory on a real block device (JOBCORE_TEST_IO_DIR, else /var/tmp)."""
    base = Path(os.environ.get("JOBCORE_TEST_IO_DIR", "/var/tmp"))
    try:
        resolve_block_device(str(base))
    except InvalidLimit as exc:
        pytest.skip(f"no block device behind {base}: {exc}")
    path = Path(tempfile.mkdtemp(prefix="jobcore-io-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_direct_io_writes_are_throttled(limited: Worker, io_dir: Path) -> None:
    argv = ["dd", "if=/dev/zero", "of=out", "bs=1M", "count=50", "oflag=direct"]
    # As an unprivileged user who owns the directory: the sandbox binds a uid-0 job's cwd read-only.
    os.chown(io_dir, 500124, 500124)
    spec = JobSpec(argv, cwd=str(io_dir), limits=Limits(io_write_bps=10 * MiB), user=RunAs(500124, 500124))
    status = limited.start(spec)
    final = limited.wait(status.id, timeout=60)
    assert final.exit_code == 0, b"".join(limited.output(status.id))
    assert final.ended_at is not None and final.started_at is not None
    took = final.ended_at - final.started_at
    assert took >= 4.0, f"50 MiB at 10 MiB/s took only {took:.2f} s"
    assert final.limits.io_write_bps == 10 * MiB


def test_an_io_limit_on_a_path_without_a_block_device_is_refused(limited: Worker) -> None:
    with pytest.raises(InvalidLimit, match="/dev/shm"):
        limited.start(JobSpec(["true"], cwd="/dev/shm", limits=Limits(io_write_bps=MiB)))
    assert [p for p in limited.state_dir.iterdir() if p.name != ".lock"] == []


def test_a_fork_bomb_is_contained_by_pids_and_stops_cleanly(limited: Worker) -> None:
    # The job's own shell forks once (the first `bomb &`) and then becomes `sleep` without forking:
    # had it to fork for `sleep` it would race the bomb for the last pid, lose now and then, and the
    # job would exit on its own before the stop below.
    bomb = "bomb() { bomb | bomb & }; bomb; exec sleep 60"
    status = limited.start(JobSpec(["sh", "-c", bomb], limits=Limits(pids=50)))
    # The shells say so once a fork is refused: the bomb has reached the limit, and the job runs on.
    wait_until(lambda: limited.status(status.id).output_bytes > 0, 30, "a fork to be refused")
    assert limited.status(status.id).state is JobState.RUNNING
    # The host can still start processes and jobs.
    ok = limited.start(JobSpec(["true"]))
    assert limited.wait(ok.id, timeout=30).exit_code == 0
    final = limited.stop(status.id, grace=0)
    assert final.state is JobState.KILLED
    assert final.signal in (signal.SIGTERM, signal.SIGKILL)  # grace 0: SIGTERM, then SIGKILL at once
    # the worker fixture asserts that no process or cgroup directory is left


def test_defaults_apply_and_maximums_are_enforced(state_dir: Path) -> None:
    with Worker(
        state_dir,
        controller=CONTROLLER,
        default_limits=Limits(memory=128 * MiB, pids=100),
        max_limits=Limits(memory=256 * MiB, cpu=1),
    ) as worker:
        if worker.controller.name == "none":
            pytest.skip("the none backend enforces no limit")
        status = worker.start(JobSpec(["true"], limits=Limits(pids=20)))
        worker.wait(status.id)
        assert status.limits == Limits(memory=128 * MiB, pids=20, cpu=1)
        assert status.controller == worker.controller.name
        with pytest.raises(InvalidLimit, match="above the maximum allowed here"):
            worker.start(JobSpec(["true"], limits=Limits(memory=512 * MiB)))


def test_the_none_backend_refuses_limits_it_cannot_enforce(state_dir: Path) -> None:
    with Worker(state_dir, controller="none") as worker:
        with pytest.raises(InvalidLimit, match="memory"):
            worker.start(JobSpec(["true"], limits=Limits(memory=64 * MiB)))
        status = worker.start(JobSpec(["true"]))
        assert worker.wait(status.id).exit_code == 0
