"""What jobcore's tests share: the backend under test, root detection, bounded waits, leak probes.

The backend under test is `auto` (cgroup1 on the build machines) unless JOBCORE_TEST_CONTROLLER names
one (the cgroup v2 VM sets it to cgroup2).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from jobcore import jobdir, linux

CONTROLLER = os.environ.get("JOBCORE_TEST_CONTROLLER", "auto")
IS_ROOT = os.geteuid() == 0
#: A python a sandboxed job can run wherever the checkout is: this venv's may be under the host's
#: /tmp (which a job's private /tmp hides) or link into root's 0700 pyenv.
JOB_PYTHON = "/usr/bin/python3"

requires_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (namespaces and cgroups)")


def job_pids(state_dir: Path) -> list[tuple[str, int]]:
    """(what, pid) of every shim and job init recorded under `state_dir` that is still alive."""
    alive = []
    for entry in state_dir.iterdir():
        for name in (jobdir.SHIM, jobdir.RUN):
            record = jobdir.read_json(entry / name) if entry.is_dir() else None
            if not record:
                continue
            ticks = record.get("start_ticks", record.get("pid_start_ticks"))
            if linux.process_start_ticks(record["pid"]) == ticks:
                alive.append((f"{entry.name}/{name}", record["pid"]))
    return alive


def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    """Wait (bounded) for something another process does; fail the test with `what` otherwise."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def cgroup_dirs(owner_ids: set[str]) -> list[str]:
    """Job cgroup directories (any v1 hierarchy or v2) still present for the given job ids."""
    found = []
    for root, dirs, _files in os.walk("/sys/fs/cgroup"):
        if "remote-jobs" not in root:
            continue
        found.extend(os.path.join(root, d) for d in dirs if d in owner_ids)
    return found
