"""`Jobs`: the server's view of jobs, joining the jobcore Worker and the JobStore.

One source of truth per fact. A job's directory, written by the jobcore Worker, is the truth about the
job (its spec, cwd included, its state, its output); the Worker reads it (`WorkerAPI`). The SQLite
`JobStore` is an *index* of the jobs the server knows: who owns them, in which order they were created,
and their last status, which is what is left to answer from once a job's directory is gone.

Reads never write. GetJob, ListJobs, StreamOutput and `find` read the Worker and the index and write
neither. The index is written in exactly these places:

* `start`: a new job gets its row;
* `record_end`, the Worker's `on_job_ended` callback: a job's final status;
* `delete` (DeleteJob, the retention policy): the row goes, after the job's directory;
* `reconcile`, at start-up, after a crash or a SIGKILL: every job the Worker knows (re-attached or
  ended while the server was down) gets its row refreshed, and a job directory without a row (the
  server died between starting a job and recording it, or the database was lost) is *adopted*: its row
  is rebuilt from the Worker's status, owner included (dropping it would leave a running job nobody
  can see or stop). A row whose job directory vanished (removed by hand, a wiped disk) is kept as
  history; if it says the job was still running, it becomes LOST ("job directory vanished"): its shim
  can no longer be watched, and its output is gone (StreamOutput answers FAILED_PRECONDITION).

Also the one place per-job authorization is decided (`find`): a job the caller may not see is
reported exactly like a job that does not exist.
"""

from __future__ import annotations

import builtins
import collections
import errno
import math
import os
import threading
import time
from pathlib import Path

import attrs
import structlog

from jobcore import jobdir, output_log
from jobcore.errors import JobNotFound
from jobcore.spec import JobSpec
from jobcore.status import JobState, JobStatus
from jobcore.units import format_size
from jobcore.worker import LIST_USAGE_MAX_AGE
from jobserver.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    OutOfRange,
    QuotaExceeded,
    job_not_found,
    output_not_stored,
)
from jobserver.identity import Identity
from jobserver.lifecycle import JobEvents
from jobserver.store import JobRecord, JobStore
from jobserver.worker_api import OutputChunks, WorkerAPI

log = structlog.get_logger("jobserver")

VANISHED_REASON = (
    "the job's directory vanished from the state directory; its output is gone and its processes were killed"
)

#: How old a listed running job's usage and output size may be when a listing is built; the page
#: built may then be served again for as long (`listing.Pages`): together never older than
#: jobcore's LIST_USAGE_MAX_AGE.
LISTED_FIGURES_MAX_AGE = LIST_USAGE_MAX_AGE / 2

#: Errors opening an indexed reader that mean "too many open now", not "broken".
_OUT_OF_HANDLES = (errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.ENOMEM)


@attrs.frozen
class JobView:
    #: The job's status: the Worker's (live), or the index's last one when only that is left.
    status: JobStatus
    #: False when only the index's record is left (the job directory vanished).
    live: bool


@attrs.frozen
class ReconcileReport:
    refreshed: int
    adopted: int
    vanished: int
    running: int


def record_end(store: JobStore, events: JobEvents | None, status: JobStatus) -> None:
    """The Worker's `on_job_ended` callback: index a job's final status, report its end.

    May be called while the Worker is being built (a job found ended at re-attach), before `Jobs`
    exists: it needs the store and the events only."""
    store.put(status)
    if events is not None:
        events.ended(status)


class Jobs:
    def __init__(
        self,
        worker: WorkerAPI,
        store: JobStore,
        max_running_per_user: int,
        *,
        events: JobEvents | None = None,
        stop_wait: float | None = None,
        output_quota: int | None = None,
    ) -> None:
        self._worker = worker
        self._events = events
        #: Bytes of stored output one user may have before their new jobs are refused (None: no quota).
        self._output_quota = output_quota
        #: How long `stop` waits for the end (None: until it ended); the stop goes on past it.
        self._stop_wait = stop_wait
        self._store = store
        self._max_running = max_running_per_user
        #: Starts in progress per user, counted against the cap until their job is running.
        self._starting: collections.Counter[str] = collections.Counter()
        self._starting_lock = threading.Lock()

    # ------------------------------------------------------------------ writes of the index

    def reconcile(self) -> ReconcileReport:
        """Bring the index in line with the job directories (at start-up only; see the module doc)."""
        known = self._store.ids()
        live = {status.id: status for status in self._worker.list()}
        for status in live.values():
            self._store.put(status)
        vanished: set[str] = set()
        for job_id in known - live.keys():
            record = self._store.get(job_id)
            if record is None or record.status.state.ended:
                continue
            vanished.add(job_id)
            self._store.put(
                attrs.evolve(
                    record.status,
                    state=JobState.LOST,
                    pid=None,
                    ended_at=record.status.ended_at or time.time(),
                    reason=VANISHED_REASON,
                )
            )
        if vanished:
            self._kill_vanished(vanished)
        running = sum(1 for s in live.values() if s.state is JobState.RUNNING)
        return ReconcileReport(
            refreshed=len(live.keys() & known),
            adopted=len(live.keys() - known),
            vanished=len(vanished),
            running=running,
        )

    def _kill_vanished(self, job_ids: set[str]) -> None:
        """A LOST job must not keep running: kill and remove the cgroups of jobs whose directory
        vanished (the Worker does not know them; only these ids are touched, never anyone else's)."""
        try:
            removed = self._worker.controller.sweep(lambda _owner, job_id: job_id not in job_ids)
        except Exception as exc:  # one stuck cgroup must not keep the server from starting
            log.error("cannot kill every job whose directory vanished", error=str(exc))
            return
        for path in removed:
            log.warning("killed a job whose directory vanished", cgroup=path)

    def start(self, spec: JobSpec) -> JobView:
        """Start a job unless its owner already runs as many as allowed (RESOURCE_EXHAUSTED).

        Only the cap check holds the lock: a start in progress counts as running (a reservation), so
        one user's starts run concurrently without ever exceeding the cap together."""
        with self._starting_lock:
            running = self._worker.running_count(spec.owner) + self._starting[spec.owner]
            if running >= self._max_running:
                raise QuotaExceeded(
                    f"user {spec.owner} already runs {running} jobs, the most allowed at once "
                    f"({self._max_running}); stop one or wait for one to end"
                )
            self._starting[spec.owner] += 1
        try:
            self._check_output_quota(spec.owner)
            status = self._worker.start(spec)
            self._store.put(status, created_at=time.time())
            if self._events is not None:
                self._events.started(status)
        finally:
            with self._starting_lock:
                self._starting[spec.owner] -= 1
        return JobView(status=status, live=True)

    def _check_output_quota(self, owner: str) -> None:
        """RESOURCE_EXHAUSTED when `owner`'s stored output (ended jobs' records plus running jobs'
        output so far) reached the quota: one user must not fill the state disk for everyone."""
        quota = self._output_quota
        if quota is None:
            return
        used = self._store.output_bytes(owner) + self._worker.running_output_bytes(owner)
        if used >= quota:
            raise QuotaExceeded(
                f"user {owner} stores {used} bytes of job output ({format_size(used)}), at or past the "
                f"quota of {quota} bytes ({format_size(quota)}); delete ended jobs (jobctl rm, jobctl "
                "prune) to start new ones"
            )

    def stop(self, view: JobView, grace: float) -> JobView:
        """Stop a job. The index learns the end from the Worker's `on_job_ended` (`record_end`)."""
        if not view.live:
            return view
        if self._events is not None and not view.status.state.ended:
            self._events.stop_requested(view.status, grace)
        status = self._worker.stop(view.status.id, grace=grace, timeout=self._stop_wait)
        return attrs.evolve(view, status=status)

    def delete(self, view: JobView) -> JobView:
        """Delete an ended job: its directory (output included) first, then its record, so that a
        crash in between leaves a record of history rather than a job nobody listed."""
        job_id = view.status.id
        if not view.status.state.ended:
            raise FailedPrecondition(f"job {job_id} is still running; stop it first")
        if view.live:
            try:
                self._worker.remove(job_id)
            except JobNotFound:
                pass  # removed meanwhile by another call
        self._store.delete(job_id)
        return view

    def prunable(self, older_than: float | None, keep_per_owner: int | None) -> builtins.list[str]:
        return self._store.prunable(older_than, keep_per_owner)

    def delete_ended(self, job_id: str) -> bool:
        """Delete `job_id` if it has ended (for the retention policy); False when it runs or is gone."""
        view = self._view(job_id)
        if view is None or not view.status.state.ended:
            return False
        self.delete(view)
        return True

    # ------------------------------------------------------------------ reads (they write nothing)

    def _view(self, job_id: str) -> JobView | None:
        """The job as the Worker knows it, else as the index last recorded it; None if neither does."""
        try:
            return JobView(status=self._worker.status(job_id), live=True)
        except JobNotFound:
            record = self._store.get(job_id)
            return None if record is None else JobView(status=record.status, live=False)

    def find(self, job_id: str, identity: Identity) -> JobView:
        """The job if `identity` may see it; otherwise NOT_FOUND, the same as for no such job."""
        view = self._view(job_id)
        if view is None or not identity.may_access(view.status.owner):
            raise job_not_found(job_id)
        return view

    def list(self, owner: str | None) -> builtins.list[JobView]:
        """Jobs oldest first; running ones with their live status."""
        return self._views(self._store.list(owner))

    def page(
        self, owner: str | None, after: tuple[float, str] | None, limit: int, *, with_usage: bool = True
    ) -> builtins.list[tuple[JobView, tuple[float, str]]]:
        """Up to `limit` jobs after position `after`, each with its own position (for page tokens);
        running ones without their live usage unless `with_usage`."""
        records: builtins.list[JobRecord] = self._store.page(owner, after, limit)
        views = self._views(records, with_usage)
        return [(view, (r.created_at, r.id)) for view, r in zip(views, records, strict=True)]

    def listing_version(self) -> tuple[object, ...]:
        """Moves whenever what a listing shows may have changed, apart from running jobs' usage and
        output sizes (which a listing shows up to LIST_USAGE_MAX_AGE old): the index's rows (written
        here or by anyone else) and the Worker's jobs. Read it before building from them."""
        return (self._store.version(), self._worker.changes)

    def _views(self, records: builtins.list[JobRecord], with_usage: bool = True) -> builtins.list[JobView]:
        running = [record.id for record in records if not record.status.state.ended]
        # A listing reads no job's cgroup twice in a second (GetJob reads it afresh).
        live = dict(
            zip(
                running,
                self._worker.statuses(running, usage_max_age=LISTED_FIGURES_MAX_AGE, with_usage=with_usage),
                strict=True,
            )
        )
        views = []
        for record in records:
            if record.status.state.ended:
                views.append(JobView(status=record.status, live=True))
            else:
                status = live[record.id]
                views.append(
                    JobView(status=record.status, live=False)
                    if status is None
                    else JobView(status=status, live=True)
                )
        return views

    def check_output(self, view: JobView, offset: int) -> None:
        """Refuse to read `view`'s output from `offset` when it cannot be: the job's directory is gone
        (FAILED_PRECONDITION), the offset is past what is stored (OUT_OF_RANGE; for running jobs too:
        an offset is a position in what is stored), or the output file is missing (DATA_LOSS)."""
        job_id = view.status.id
        if not view.live:
            raise output_not_stored(job_id)
        stored = view.status.output_bytes
        if offset > stored:
            raise OutOfRange(
                f"offset {offset} is past the end of job {job_id}'s output ({stored} bytes so far)"
            )
        if view.status.started_at is not None and not os.path.lexists(self._job_dir(job_id) / jobdir.OUTPUT):
            raise DataLoss(f"the output file of job {job_id} is missing from the server")

    def output(self, view: JobView, offset: int, follow: bool, chunk_size: int | None = None) -> OutputChunks:
        """`view`'s raw output from byte `offset` (after `check_output`); with `follow`, new output as
        it arrives until the job has ended; chunks of at most `chunk_size` bytes (None: the Worker's
        default). The caller closes the reader."""
        self.check_output(view, offset)
        try:
            if chunk_size is None:
                return self._worker.output(view.status.id, offset=offset, follow=follow)
            return self._worker.output(view.status.id, offset=offset, follow=follow, chunk_size=chunk_size)
        except JobNotFound:
            raise output_not_stored(view.status.id) from None

    def indexed_output(
        self,
        view: JobView,
        offset: int,
        follow: bool,
        *,
        stream: int,
        since: float | None,
        tail_lines: int | None,
    ) -> output_log.IndexedOutputReader:
        """`view`'s output read through its index (jobcore.output_log), after `check_output`: only
        `stream` (output_log.STDOUT, STDERR, ANY_STREAM or NO_STREAM), from `since` (a Unix time) or
        the last `tail_lines` lines, whichever starts later. The caller closes the reader."""
        self.check_output(view, offset)
        if since is not None and not math.isfinite(since):
            raise InvalidArgument(f"since must be a finite Unix time, got {since}")
        directory = self._job_dir(view.status.id)
        if tail_lines is not None:
            tail_stream = output_log.ANY_STREAM if stream == output_log.NO_STREAM else stream
            offset = max(offset, output_log.tail_offset(directory, tail_lines, tail_stream))
        since_ns = round(since * 1e9) if since is not None else None
        try:
            return output_log.IndexedOutputReader(
                directory, offset, follow=follow, stream=stream, since_ns=since_ns
            )
        except OSError as exc:
            if exc.errno not in _OUT_OF_HANDLES:
                raise
            # Each indexed stream holds an inotify instance: the kernel caps them per user
            # (fs.inotify.max_user_instances, 128 by default), besides the fd limits.
            raise QuotaExceeded(
                f"the server cannot open another filtered output stream now ({exc.strerror}); "
                "retry later, or stream without --stdout/--stderr/--since/--tail/-t"
            ) from None

    def _job_dir(self, job_id: str) -> Path:
        """The job's directory (jobcore's layout: one directory per job, named by its id)."""
        return Path(self._worker.state_dir) / job_id
