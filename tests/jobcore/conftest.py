"""Fixtures for jobcore's tests: a Worker on a temporary state directory, with leak checks."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobcore_testing import CONTROLLER, cgroup_dirs, job_pids, wait_until

from jobcore import Worker
from jobcore.status import JobState


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def small_state_dir(tmp_path: Path) -> Iterator[Path]:
    """A state directory on an 8 MiB tmpfs, to fill up."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture
def worker(state_dir: Path) -> Iterator[Worker]:
    """A Worker; at teardown every job it ran must be over and have left nothing behind."""
    threads_before = threading.active_count()
    w = Worker(state_dir, controller=CONTROLLER, default_grace=2.0)
    try:
        yield w
    finally:
        running = [s.id for s in w.list() if s.state is JobState.RUNNING]
        for job_id in running:
            w.stop(job_id, grace=0)
        ids = {s.id for s in w.list()}
        w.close()
    assert not running, f"test left jobs running: {running}"
    wait_until(lambda: not job_pids(state_dir), 10, "every shim and job process to exit")
    assert not cgroup_dirs(ids), f"cgroups left behind: {cgroup_dirs(ids)}"
    assert threading.active_count() <= threads_before, "the Worker left threads running"
