"""What jobcore's tests share: the backend under test, root detection, leak probes (bounded waits are
tests/support's, re-exported).

The backend under test is `auto` (cgroup1 on the build machines) unless JOBCORE_TEST_CONTROLLER names
one (the cgroup v2 VM sets it to cgroup2).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.procfs import is_running
from support.waiting import wait_until

from jobcore import JobSpec, JobStatus, Worker, jobdir

CONTROLLER = os.environ.get("JOBCORE_TEST_CONTROLLER", "auto")
IS_ROOT = os.geteuid() == 0
#: A python a sandboxed job can run wherever the checkout is: this venv's may be under the host's
#: /tmp (which a job's private /tmp hides) or link into root's 0700 pyenv.
JOB_PYTHON = "/usr/bin/python3"

__all__ = [
    "CONTROLLER",
    "IS_ROOT",
    "JOB_PYTHON",
    "cgroup_dirs",
    "job_pids",
    "requires_root",
    "run_to_end",
    "wait_until",
]

requires_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (namespaces and cgroups)")


def job_pids(state_dir: Path) -> list[tuple[str, int]]:
    """(what, pid) of every shim and job init recorded under `state_dir` that is still running (a
    zombie is not: it is dead, only its parent's wait is missing)."""
    alive = []
    for entry in state_dir.iterdir():
        for name in (jobdir.SHIM, jobdir.RUN):
            record = jobdir.read_json(entry / name) if entry.is_dir() else None
            if not record:
                continue
            # run.json called it pid_start_ticks before jobcore.records gave each fact one name.
            ticks = record.get("start_ticks", record.get("pid_start_ticks"))
            if is_running(record["pid"], ticks):
                alive.append((f"{entry.name}/{name}", record["pid"]))
    return alive


def run_to_end(worker: Worker, argv: list[str], **kwargs: object) -> tuple[bytes, JobStatus]:
    """Start a job, read all its output, and return it with the job's final status."""
    status = worker.start(JobSpec(argv, **kwargs))  # type: ignore[arg-type]
    out = b"".join(worker.output(status.id))
    return out, worker.wait(status.id, timeout=30)


def cgroup_dirs(owner_ids: set[str]) -> list[str]:
    """Job cgroup directories (any v1 hierarchy or v2) still present for the given job ids."""
    found = []
    for root, dirs, _files in os.walk("/sys/fs/cgroup"):
        if "remote-jobs" not in root:
            continue
        found.extend(os.path.join(root, d) for d in dirs if d in owner_ids)
    return found
