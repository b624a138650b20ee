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

import collections
import threading
import time
from typing import Any

import attrs
import grpc

from jobcore.errors import JobNotFound
from jobcore.spec import JobSpec
from jobcore.status import JobState, JobStatus
from jobserver.errors import RpcStatusError, job_not_found
from jobserver.identity import Identity
from jobserver.lifecycle import JobEvents
from jobserver.store import JobStore

VANISHED_REASON = "the job's directory vanished from the state directory; its output is gone"


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
        self, worker: Any, store: JobStore, max_running_per_user: int, events: JobEvents | None = None
    ) -> None:
        self._worker = worker
        self._events = events
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
        vanished = 0
        for job_id in known - live.keys():
            record = self._store.get(job_id)
            if record is None or record.status.state.ended:
                continue
            vanished += 1
            self._store.put(
                attrs.evolve(
                    record.status,
                    state=JobState.LOST,
                    pid=None,
                    ended_at=record.status.ended_at or time.time(),
                    reason=VANISHED_REASON,
                )
            )
        running = sum(1 for s in live.values() if s.state is JobState.RUNNING)
        return ReconcileReport(
            refreshed=len(live.keys() & known),
            adopted=len(live.keys() - known),
            vanished=vanished,
            running=running,
        )

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
            status = self._worker.start(spec)
            self._store.put(status, created_at=time.time(), cwd=status.cwd)
            if self._events is not None:
                self._events.started(status)
        finally:
            with self._starting_lock:
                self._starting[spec.owner] -= 1
        return JobView(status=status, cwd=status.cwd, live=True)

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
        status = self._worker.stop(view.status.id, grace=grace)
        self._store.put(status)
        return attrs.evolve(view, status=status)

    def list(self, owner: str | None) -> list[JobView]:
        """Jobs oldest first; running ones with their live status."""
        views = []
        for record in self._store.list(owner):
            status, live = record.status, True
            if not status.state.ended:
                try:
                    status = self._worker.status(record.id)
                except JobNotFound:
                    live = False
            views.append(JobView(status=status, cwd=record.cwd, live=live))
        return views
