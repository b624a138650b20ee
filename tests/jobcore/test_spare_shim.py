"""The launcher forks each job's shim ahead of the job (a spare, waiting as PID 1 of a new PID
namespace): a job that gets a PID namespace is handed to it, so the fork is not part of its start.

What must hold: the spare is what runs the next such job; a job without a PID namespace gets a shim
forked for it and leaves the spare waiting; a spare killed while it waits costs nothing but the fork
(the job is forked a shim, and a new spare follows); and a spare never outlives its launcher.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from jobcore_testing import CONTROLLER, wait_until
from support.procfs import is_running, process_start_ticks

from jobcore import Isolation, JobSpec, Worker, records
from jobcore.launcher import LAUNCHER_NAME
from jobcore.records import ShimRecord
from jobcore.shim import SHIM_NAME


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _name(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def _spare(worker: Worker) -> int:
    """The launcher's waiting spare: its one child that runs no job yet (waited for: it is forked
    right after the previous hand-over)."""
    found: list[int] = []

    def one() -> bool:
        shims = set(_shim_pids(worker))
        found[:] = [p for p in _children(worker.launcher_pid) if p not in shims]
        return len(found) == 1

    wait_until(one, 10, "the launcher's spare shim")
    return found[0]


def _shim_pids(worker: Worker) -> list[int]:
    pids = []
    for status in worker.list():
        record = records.read(Path(worker.state_dir) / status.id / "shim.json", ShimRecord)
        if record is not None:
            pids.append(record.pid)
    return pids


def _shim_of(worker: Worker, job_id: str) -> int:
    record = records.read(Path(worker.state_dir) / job_id / "shim.json", ShimRecord)
    assert record is not None
    return record.pid


def test_the_launcher_and_its_shims_are_named(worker: Worker) -> None:
    assert _name(worker.launcher_pid) == LAUNCHER_NAME
    spare = _spare(worker)
    wait_until(lambda: _name(spare) == SHIM_NAME, 10, "the spare to name itself (it does so first)")


def test_a_job_with_a_pid_namespace_is_run_by_the_spare_forked_before_it(worker: Worker) -> None:
    spare = _spare(worker)
    status = worker.start(JobSpec(["sleep", "30"], owner="alice"))
    assert _shim_of(worker, status.id) == spare
    assert _spare(worker) != spare  # the next spare is forked once this one has its job
    worker.stop(status.id, grace=0)


def test_a_job_without_a_pid_namespace_gets_its_own_shim_and_the_spare_waits(worker: Worker) -> None:
    spare = _spare(worker)
    isolation = Isolation(pid=False, sandbox=False)
    status = worker.start(JobSpec(["sleep", "30"], owner="alice", isolation=isolation))
    assert _shim_of(worker, status.id) != spare
    assert _spare(worker) == spare
    worker.stop(status.id, grace=0)


def test_a_spare_killed_while_it_waits_costs_the_next_job_nothing(worker: Worker) -> None:
    spare = _spare(worker)
    os.kill(spare, signal.SIGKILL)
    wait_until(lambda: spare not in _children(worker.launcher_pid), 10, "the killed spare to be reaped")
    status = worker.start(JobSpec(["sh", "-c", "echo ran"], owner="alice"))
    ended = worker.wait(status.id, timeout=30)
    assert ended.exit_code == 0  # type: ignore[attr-defined]
    assert _shim_of(worker, status.id) != spare
    assert b"".join(worker.output(status.id, follow=False)) == b"ran\n"
    _spare(worker)  # and a new spare waits again


def test_a_spare_exits_with_its_launcher(state_dir: Path) -> None:
    worker = Worker(state_dir, controller=CONTROLLER)
    spare = _spare(worker)
    ticks = process_start_ticks(spare)
    worker.close()
    wait_until(lambda: not is_running(spare, ticks), 10, "the spare to exit with its launcher")


def test_a_spare_exits_with_its_launcher_while_a_job_forked_on_demand_runs(worker: Worker) -> None:
    """The shim of a job without a PID namespace (forked while a spare waits) must not keep the spare's
    socket open: the spare would then outlive its launcher for as long as that job runs."""
    status = worker.start(
        JobSpec(["sleep", "30"], owner="alice", isolation=Isolation(pid=False, sandbox=False))
    )
    spare = _spare(worker)
    ticks = process_start_ticks(spare)
    os.kill(worker.launcher_pid, signal.SIGKILL)
    wait_until(lambda: not is_running(spare, ticks), 10, "the spare to exit with its launcher")
    worker.stop(status.id, grace=0)
