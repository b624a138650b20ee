"""`Worker.changes` (what the server's listing pages are valid by) moves with every change a listing
shows, and not with a read of live usage; `status(with_usage=False)` reads no cgroup."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from jobcore_testing import requires_root, wait_until

from jobcore import JobSpec, JobState, Worker, jobdir

pytestmark = requires_root


def _moved(worker: Worker, before: int) -> bool:
    return worker.changes != before


def test_changes_move_with_start_run_stop_end_and_remove_but_not_with_usage_reads(worker: Worker) -> None:
    before = worker.changes
    job_id = worker.start(JobSpec(["sleep", "600"])).id
    assert _moved(worker, before)  # added, and its run recorded

    quiet = worker.changes
    for _ in range(5):
        assert worker.status(job_id).usage.cpu_seconds is not None  # usage read afresh each time
    assert worker.status(job_id, usage_max_age=0.0, with_usage=False).state is JobState.RUNNING
    assert worker.changes == quiet  # nothing a listing shows changed

    worker.stop(job_id, grace=0, timeout=0)
    assert _moved(worker, quiet)  # the stop request (the end may follow)
    wait_until(lambda: worker.status(job_id).state.ended, 30)
    ended = worker.changes
    worker.remove(job_id)
    assert _moved(worker, ended)


def _catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (its SigCgt mask in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        caught = next(line for line in f if line.startswith("SigCgt:")).split()[1]
    return bool(int(caught, 16) >> (signum - 1) & 1)


def test_changes_move_when_a_status_read_sees_the_output_grown(worker: Worker) -> None:
    # It writes only when told to (SIGUSR1), so nothing can be written before the test looks.
    job = worker.start(JobSpec(["sh", "-c", 'trap "echo hi" USR1; while :; do sleep 0.05; done']))
    try:
        assert job.pid is not None
        assert worker.status(job.id).output_bytes == 0
        quiet = worker.changes
        # start() returns once the shell is exec'd, not once it has set its trap: a SIGUSR1 before that
        # would kill it (the default action), so wait until the shell catches the signal.
        wait_until(lambda: _catches(job.pid, signal.SIGUSR1), 30)
        os.kill(job.pid, signal.SIGUSR1)
        output = Path(worker.state_dir) / job.id / jobdir.OUTPUT
        wait_until(lambda: output.stat().st_size == 3, 30)
        assert worker.changes == quiet  # nobody has looked yet
        assert worker.status(job.id, with_usage=False).output_bytes == 3
        assert worker.changes != quiet
    finally:
        worker.stop(job.id, grace=0)


def test_a_status_without_usage_reads_no_cgroup_and_carries_none(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = worker.start(JobSpec(["sleep", "600"])).id
    try:
        job = worker._jobs.get(job_id)
        assert job is not None
        read: list[str] = []
        real = job.handle()

        class Counting:
            def __getattr__(self, name: str) -> object:
                return getattr(real, name)

            def stats(self) -> object:
                read.append(job_id)
                return real.stats()

        monkeypatch.setattr(job, "handle", Counting)
        listed = worker.status(job_id, usage_max_age=0.0, with_usage=False)
        assert read == []
        assert listed.usage.cpu_seconds is None and listed.usage.memory_peak_bytes is None
        assert listed.state is JobState.RUNNING and listed.pid is not None
        assert worker.status(job_id, usage_max_age=0.0, with_usage=False) is listed  # nothing changed
        full = worker.status(job_id)
        assert read == [job_id] and full.usage.cpu_seconds is not None
    finally:
        worker.stop(job_id, grace=0)
