"""The Worker's concurrency contract (issue 13): a stop never signals another job, a job ends exactly
once, slow callbacks never stall the watching, close() racing start() leaves no launcher behind, and
records are read as written (not re-checked against today's host)."""

from __future__ import annotations

import collections
import json
import os
import queue
import threading
from pathlib import Path

import pytest
from jobcore_testing import CONTROLLER, job_pids, requires_root, wait_until

from jobcore import JobSpec, JobState, JobStatus, Worker, WorkerError, jobdir
from jobcore.spec import host_cpu_count, host_memory_bytes

pytestmark = requires_root

#: A job that reports a SIGTERM it receives instead of dying of it.
WATCHFUL = ["sh", "-c", "trap 'echo got-term' TERM; echo ready; while :; do sleep 0.05; done"]


def _launchers_of_this_process() -> list[int]:
    """Pids of live `python -m jobcore.launcher` processes whose parent is this process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if b"jobcore.launcher" in cmdline and int(fields[1]) == os.getpid() and fields[0] != b"Z":
            found.append(int(entry.name))
    return found


def test_stops_racing_the_end_of_short_jobs_never_reach_another_job(worker: Worker) -> None:
    """Many short jobs are stopped from several threads just as they end (the watcher closing their
    pidfds), while watchful jobs are started among them (their pidfds may get a closed fd's number):
    no stop fails, and no watchful job ever gets a SIGTERM."""
    watchful: list[str] = []
    errors: list[BaseException] = []
    short_ids: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def stopper() -> None:
        while (job_id := short_ids.get()) is not None:
            try:
                for _ in range(3):
                    worker.stop(job_id, grace=0)
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=stopper) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for round_ in range(50):
            short_ids.put(worker.start(JobSpec(["true"])).id)
            short_ids.put(worker.start(JobSpec(["sleep", "0.01"])).id)
            if round_ % 10 == 0:
                job = worker.start(JobSpec(WATCHFUL))
                watchful.append(job.id)
    finally:
        for _ in threads:
            short_ids.put(None)
        for t in threads:
            t.join()
    assert not errors, f"stop() failed while the job ended: {errors[:3]!r}"
    for job_id in watchful:
        wait_until(lambda j=job_id: worker.status(j).output_bytes >= 6, 10, "a watchful job to start")
        status = worker.status(job_id)
        assert status.state is JobState.RUNNING
        assert b"".join(worker.output(job_id, follow=False)) == b"ready\n", "a stop reached another job"
    for job_id in watchful:
        worker.stop(job_id, grace=0)


def test_on_job_ended_is_called_exactly_once_for_each_of_hundreds_of_jobs(state_dir: Path) -> None:
    calls: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def ended(status: JobStatus) -> None:
        assert status.state.ended
        with lock:
            calls[status.id] += 1

    worker = Worker(state_dir, controller=CONTROLLER, on_job_ended=ended)
    started: list[str] = []
    try:

        def starter() -> None:
            for _ in range(75):
                job_id = worker.start(JobSpec(["true"])).id
                started.append(job_id)
                worker.status(job_id)  # a reader racing the watcher's end of the job

        threads = [threading.Thread(target=starter) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for job_id in started:
            assert worker.wait(job_id, timeout=30).state is JobState.EXITED
        wait_until(lambda: len(calls) == len(started), 30, "every job's on_job_ended")
    finally:
        worker.close()  # runs what is still queued
    assert len(started) == 300
    twice = {job_id: n for job_id, n in calls.items() if n != 1}
    assert not twice, f"on_job_ended called more than once: {twice}"
    assert set(calls) == set(started)


def test_a_slow_on_job_ended_never_stalls_the_watching_of_other_jobs(state_dir: Path) -> None:
    release = threading.Event()
    blocked = threading.Event()
    first_id: list[str] = []

    def ended(status: JobStatus) -> None:
        if status.id in first_id:
            blocked.set()
            release.wait(120)  # a server writing SQLite on a slow disk, say

    worker = Worker(state_dir, controller=CONTROLLER, on_job_ended=ended)
    try:
        first = worker.start(JobSpec(["sh", "-c", "read x"]))  # ends when stopped
        first_id.append(first.id)
        worker.stop(first.id, grace=0)
        assert blocked.wait(30), "the first job's on_job_ended never ran"
        # While that callback blocks, another job runs, is followed to its end, and is seen ending.
        second = worker.start(JobSpec(["sh", "-c", "echo one; sleep 0.2; echo two"]))
        final = worker.wait(second.id, timeout=30)
        assert final.state is JobState.EXITED, "the watcher stalled behind a slow callback"
        assert b"".join(worker.output(second.id)) == b"one\ntwo\n"
        assert not release.is_set()
    finally:
        release.set()
        worker.close()


def test_close_during_concurrent_starts_leaves_no_launcher_and_loses_no_job(state_dir: Path) -> None:
    worker = Worker(state_dir, controller=CONTROLLER)
    started: list[str] = []
    refused: list[Exception] = []
    go = threading.Barrier(5)

    def starter() -> None:
        go.wait()
        for _ in range(40):
            try:
                started.append(worker.start(JobSpec(["sleep", "30"])).id)
            except Exception as exc:  # anything but "closed" (EBADF from a closed fd...) fails below
                refused.append(exc)
                return

    threads = [threading.Thread(target=starter) for _ in range(4)]
    for t in threads:
        t.start()
    go.wait()
    wait_until(lambda: len(started) >= 4, 30, "a few jobs to start")
    worker.close()
    for t in threads:
        t.join()
    assert refused, "no start() was refused after close()"
    assert all(isinstance(exc, WorkerError) and "closed" in str(exc) for exc in refused), refused
    assert not _launchers_of_this_process(), "a launcher outlived close()"
    # Every job that start() returned runs on (jobs outlive their Worker); a new Worker finds them all.
    with Worker(state_dir, controller=CONTROLLER) as again:
        found = {s.id: s.state for s in again.list()}
        assert set(started) <= set(found)
        assert all(found[j] is JobState.RUNNING for j in started)
        for job_id in found:
            again.stop(job_id, grace=0)
    wait_until(lambda: not job_pids(state_dir), 15, "every job to end")


def test_a_job_recorded_with_limits_the_host_no_longer_allows_is_still_listed(state_dir: Path) -> None:
    with Worker(state_dir, controller=CONTROLLER) as first:
        done = first.start(JobSpec(["sh", "-c", "exit 3"]))
        assert first.wait(done.id, timeout=30).exit_code == 3
    # The host shrank since (fewer cores, less memory than the job was given).
    spec_path = state_dir / done.id / jobdir.SPEC
    spec = json.loads(spec_path.read_text())
    spec["limits"]["cpu"] = float(host_cpu_count() * 64)
    spec["limits"]["memory"] = host_memory_bytes() * 64
    spec_path.write_text(json.dumps(spec))
    with Worker(state_dir, controller=CONTROLLER) as second:
        (status,) = second.list()
        assert status.id == done.id
        assert status.state is JobState.EXITED and status.exit_code == 3
        assert status.limits.cpu == host_cpu_count() * 64
        assert status.limits.memory == host_memory_bytes() * 64


@pytest.mark.parametrize("field", ["pid", "started_at"])
def test_run_records_of_the_old_shape_are_read(state_dir: Path, field: str) -> None:
    """run.json named the start time `pid_start_ticks` before records had one name per fact: a job
    of an older Worker is re-attached all the same (and its damaged run record is one job's loss)."""
    with Worker(state_dir, controller=CONTROLLER) as first:
        job = first.start(JobSpec(WATCHFUL))
        wait_until(lambda: first.status(job.id).output_bytes >= 6, 10, "the job to start")
    run_path = state_dir / job.id / jobdir.RUN
    run = json.loads(run_path.read_text())
    run["pid_start_ticks"] = run.pop("start_ticks")
    run_path.write_text(json.dumps(run))
    with Worker(state_dir, controller=CONTROLLER) as second:
        status = second.status(job.id)
        assert status.state is JobState.RUNNING and status.pid == run["pid"]
        if field == "pid":
            assert second.stop(job.id, grace=0).state is JobState.KILLED
            return
    run["started_at"] = "yesterday"
    run_path.write_text(json.dumps(run))
    with Worker(state_dir, controller=CONTROLLER) as third:
        status = third.status(job.id)
        assert status.state is JobState.LOST
        assert status.reason is not None and "run.json" in status.reason
    wait_until(lambda: not job_pids(state_dir), 15, "the lost job's processes to die")
