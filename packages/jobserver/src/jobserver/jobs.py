"""`Jobs`: the server's view of jobs, joining the jobcore Worker (live truth) and the JobStore (records).

Also the one place per-job authorization is decided (`find`): a job the caller may not see is
reported exactly like a job that does not exist.

Reconciliation at start (`reconcile`), after a crash or a SIGKILL:

* a job the Worker knows (re-attached or ended while the server was down) gets its record refreshed,
  and a job directory without a record (the server died between starting a job and recording it, or
  the database was lost) is *adopted*: its record is rebuilt from the Worker's status, owner included.
  Dropping it instead would leave a running job nobody can see or stop.
* a record whose job directory vanished (removed by hand, a wiped disk) is kept as history. If the
  record says the job was still running, it becomes LOST ("job directory vanished"): its shim can no
  longer be watched. Its output is gone; StreamOutput answers FAILED_PRECONDITION saying so.
"""

from __future__ import annotations

import builtins
import collections
import threading
import time
from typing import Any

import attrs
import grpc
import structlog

from jobcore.errors import JobNotFound
from jobcore.spec import JobSpec
from jobcore.status import JobState, JobStatus
from jobcore.units import format_size
from jobserver.errors import RpcStatusError, job_not_found
from jobserver.identity import Identity
from jobserver.lifecycle import JobEvents
from jobserver.store import JobRecord, JobStore

log = structlog.get_logger("jobserver")

VANISHED_REASON = (
    "the job's directory vanished from the state directory; its output is gone and its processes were killed"
)


@attrs.frozen
class JobView:
    status: JobStatus
    cwd: str
    #: False when only the record is left (the job directory vanished).
    live: bool


@attrs.frozen
class ReconcileReport:
    refreshed: int
    adopted: int
    vanished: int
    running: int


class Jobs:
    def __init__(
        self,
        worker: Any,
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

    def reconcile(self) -> ReconcileReport:
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
                raise RpcStatusError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"user {spec.owner} already runs {running} jobs, the most allowed at once "
                    f"({self._max_running}); stop one or wait for one to end",
                )
            self._starting[spec.owner] += 1
        try:
            self._check_output_quota(spec.owner)
            status = self._worker.start(spec)
            self._store.put(status, created_at=time.time(), cwd=status.cwd)
            if self._events is not None:
                self._events.started(status)
        finally:
            with self._starting_lock:
                self._starting[spec.owner] -= 1
        return JobView(status=status, cwd=status.cwd, live=True)

    def _check_output_quota(self, owner: str) -> None:
        """RESOURCE_EXHAUSTED when `owner`'s stored output (ended jobs' records plus running jobs'
        output so far) reached the quota: one user must not fill the state disk for everyone."""
        quota = self._output_quota
        if quota is None:
            return
        used = self._store.output_bytes(owner)
        used += sum(s.output_bytes for s in self._worker.list(owner) if not s.state.ended)
        if used >= quota:
            raise RpcStatusError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"user {owner} stores {used} bytes of job output ({format_size(used)}), at or past the "
                f"quota of {quota} bytes ({format_size(quota)}); delete ended jobs (jobctl rm, jobctl "
                "prune) to start new ones",
            )

    def find(self, job_id: str, identity: Identity) -> JobView:
        """The job if `identity` may see it; otherwise NOT_FOUND, the same as for no such job."""
        record = self._store.get(job_id)
        try:
            status = self._worker.status(job_id)
        except JobNotFound:
            if record is None or not identity.may_access(record.owner):
                raise job_not_found(job_id) from None
            return JobView(status=record.status, cwd=record.cwd, live=False)
        if not identity.may_access(status.owner):
            raise job_not_found(job_id)
        if record is None:  # StartJob has not recorded it yet (it will add the cwd)
            self._store.put(status)
        return JobView(status=status, cwd=record.cwd if record else "", live=True)

    def stop(self, view: JobView, grace: float) -> JobView:
        if not view.live:
            return view
        if self._events is not None and not view.status.state.ended:
            self._events.stop_requested(view.status, grace)
        status = self._worker.stop(view.status.id, grace=grace, timeout=self._stop_wait)
        self._store.put(status)
        return attrs.evolve(view, status=status)

    def delete(self, view: JobView) -> JobView:
        """Delete an ended job: its directory (output included) first, then its record, so that a
        crash in between leaves a record of history rather than a job nobody listed."""
        job_id = view.status.id
        if not view.status.state.ended:
            raise RpcStatusError(
                grpc.StatusCode.FAILED_PRECONDITION, f"job {job_id} is still running; stop it first"
            )
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
        record = self._store.get(job_id)
        try:
            view = JobView(status=self._worker.status(job_id), cwd="", live=True)
        except JobNotFound:
            if record is None:
                return False
            view = JobView(status=record.status, cwd=record.cwd, live=False)
        if not view.status.state.ended:
            return False
        self.delete(view)
        return True

    def list(self, owner: str | None) -> list[JobView]:
        """Jobs oldest first; running ones with their live status."""
        return self._views(self._store.list(owner))

    def page(
        self, owner: str | None, after: tuple[float, str] | None, limit: int
    ) -> builtins.list[tuple[JobView, tuple[float, str]]]:
        """Up to `limit` jobs after position `after`, each with its own position (for page tokens)."""
        records: builtins.list[JobRecord] = self._store.page(owner, after, limit)
        return [(view, (r.created_at, r.id)) for view, r in zip(self._views(records), records, strict=True)]

    def _views(self, records: builtins.list[JobRecord]) -> builtins.list[JobView]:
        views = []
        for record in records:
            status, live = record.status, True
            if not status.state.ended:
                try:
                    status = self._worker.status(record.id)
                except JobNotFound:
                    live = False
            views.append(JobView(status=status, cwd=record.cwd, live=live))
        return views
