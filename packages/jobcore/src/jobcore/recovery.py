"""Re-attaching to the jobs of an earlier Worker, at start-up (before the watcher's threads run).

Each job directory is read through `jobcore.records`. A running job's shim is pinned with a pidfd
first and only then checked to be the shim by its start time (`Watcher.watch`); a shim gone without
an exit record makes the job LOST, its leftovers killed. A damaged record makes its job LOST (or,
without a usable spec, moves the directory to `.quarantine/`): one job's problem, never the Worker's.
Then the cgroups of jobs that are not running are swept, by the Worker's policy (`is_live`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from jobcore import jobdir, records
from jobcore.errors import ControllerError, CorruptStateFile
from jobcore.records import ExitRecord, RunRecord, ShimRecord, SpecRecord
from jobcore.watcher import Watcher, kill_recorded_processes

if TYPE_CHECKING:
    from jobcore.worker import Worker

log = logging.getLogger("jobcore")


def load_existing(worker: Worker, watcher: Watcher, sweep_unknown: bool) -> None:
    """Re-attach to the jobs in the Worker's state directory; mark those whose shim vanished LOST;
    remove the cgroups of jobs that are not running (and, with `sweep_unknown`, of unknown ones)."""
    running: set[str] = set()
    abandoned: set[str] = set()
    for entry in sorted(worker.state_dir.iterdir()):
        if entry.name.startswith(".") and entry.name.endswith(".new"):
            # A start interrupted (the Worker's process killed) before its job directory was in
            # place: the job never ran; whatever cgroup it got is removed by the sweep below.
            abandoned.add(entry.name[1:].removesuffix(".new"))
            shutil.rmtree(entry, ignore_errors=True)
            continue
        if not jobdir.JOB_ID_RE.match(entry.name) or not entry.is_dir():
            continue
        try:
            if _load_job(worker, watcher, entry):
                running.add(entry.name)
        except CorruptStateFile as exc:
            # One damaged job must never keep the Worker (and so the server) from starting.
            log.warning("jobcore: job %s is lost: %s", entry.name, exc)
            if not _lose_corrupt_job(worker, watcher, entry, exc):
                abandoned.add(entry.name)  # its cgroup, if any, is killed and removed below

    def is_live(_owner: str, job_id: str) -> bool:
        if job_id in watcher:
            return job_id in running
        if job_id in abandoned:
            return False
        return not sweep_unknown

    try:
        for path in worker.controller.sweep(is_live):
            log.info("removed stale cgroup %s", path)
    except ControllerError as exc:  # a stuck cgroup is the operator's to look at, not a dead Worker
        log.warning("jobcore: %s", exc)


def _load_job(worker: Worker, watcher: Watcher, entry: Path) -> bool:
    """Re-attach to the job in `entry`; True when it is running. Raises CorruptStateFile for a
    damaged record (before the job is registered)."""
    spec = records.read(entry / jobdir.SPEC, SpecRecord)
    if spec is None:
        raise CorruptStateFile(entry / jobdir.SPEC, "is missing")
    if spec.id != entry.name:
        raise CorruptStateFile(entry / jobdir.SPEC, f"names job {spec.id!r}, not {entry.name}")
    job = worker.job_of(spec, entry)
    job.run = records.read(entry / jobdir.RUN, RunRecord)
    job.exit = records.read(entry / jobdir.EXIT, ExitRecord)
    shim = records.read(entry / jobdir.SHIM, ShimRecord) if job.exit is None else None
    if job.exit is None and shim is None:
        raise CorruptStateFile(entry / jobdir.SHIM, "is missing (the shim left no record of itself)")
    watcher.add(job)
    if shim is None:
        return False
    watcher.watch(job, shim.pid, shim.start_ticks)  # pins the shim, checks it, ends the job if gone
    return not job.ended


def _lose_corrupt_job(worker: Worker, watcher: Watcher, entry: Path, error: CorruptStateFile) -> bool:
    """A job with a damaged record: kill whatever runs of it and mark it LOST (its other records
    replaced by a LOST exit.json). Without a usable spec.json the job cannot be described at all:
    its directory is moved to `.quarantine/` and False is returned (the cgroup sweep removes it)."""
    try:
        spec = records.read(entry / jobdir.SPEC, SpecRecord)
    except CorruptStateFile:
        spec = None
    if spec is None or spec.id != entry.name:
        kill_recorded_processes(entry)
        quarantine = worker.state_dir / ".quarantine"
        try:
            quarantine.mkdir(mode=0o700, exist_ok=True)
            os.rename(entry, quarantine / f"{entry.name}.{time.time_ns()}")
            log.warning("jobcore: moved %s to %s", entry, quarantine)
        except OSError as exc:
            log.error("jobcore: cannot move %s to %s: %s", entry, quarantine, exc)
        return False
    job = worker.job_of(spec, entry)
    watcher.add(job)
    watcher.lose(job, f"a file of the job's state is damaged: {error}")
    return True
