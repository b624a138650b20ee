"""`JobEvents`: one log event and one metric update per job lifecycle step.

Events (logger `jobserver.jobs`, each with `job_id` and `user`):

* `job started` — `pid`, `argv0`, `controller`; or `job failed to start` with the `reason` (warning);
* `job stop requested` — `grace`;
* `job exited` — `exit_code`; `job killed` — `signal`, `stop_requested`; `job oom-killed` — the kernel's
  OOM killer ended it (warning); `job lost` — its shim vanished without recording the end (warning);
  each with `duration_s` and `reason` where known;
* at start-up, for jobs that ended while no server ran, the same end events with `while_down=true`.
"""

from __future__ import annotations

from typing import Any

import structlog

from jobcore.status import JobState, JobStatus
from jobserver.metrics import ServerMetrics
from jobserver.store import JobStore


class JobEvents:
    def __init__(self, metrics: ServerMetrics, log: Any = None) -> None:
        self._metrics = metrics
        self._log = log or structlog.get_logger("jobserver.jobs")

    def started(self, status: JobStatus) -> None:
        self._metrics.job_started(status)
        if status.state is JobState.FAILED_TO_START:
            self._log.warning(
                "job failed to start", job_id=status.id, user=status.owner, reason=status.reason
            )
            return
        self._log.info(
            "job started",
            job_id=status.id,
            user=status.owner,
            pid=status.pid,
            argv0=status.argv[0] if status.argv else None,
            controller=status.controller,
        )

    def stop_requested(self, status: JobStatus, grace: float) -> None:
        self._metrics.job_stopped()
        self._log.info("job stop requested", job_id=status.id, user=status.owner, grace=grace)

    def ended(self, status: JobStatus, while_down: bool = False) -> None:
        """Called once per job end (the Worker's `on_job_ended`, or the start-up reconciliation)."""
        if status.state is JobState.FAILED_TO_START:
            return  # already reported by started()
        self._metrics.job_ended(status)
        fields: dict[str, Any] = {"job_id": status.id, "user": status.owner}
        if status.started_at is not None and status.ended_at is not None:
            fields["duration_s"] = round(status.ended_at - status.started_at, 3)
        if status.reason:
            fields["reason"] = status.reason
        if while_down:
            fields["while_down"] = True
        if status.oom_killed:
            self._log.warning("job oom-killed", signal=status.signal, exit_code=status.exit_code, **fields)
        elif status.state is JobState.LOST:
            self._log.warning("job lost", **fields)
        elif status.state is JobState.KILLED:
            self._log.info("job killed", signal=status.signal, stop_requested=status.stop_requested, **fields)
        else:
            self._log.info("job exited", exit_code=status.exit_code, **fields)

    def ended_while_down(self, running_before: set[str], store: JobStore) -> None:
        """Report the end of each job recorded as running before reconciliation that no longer is."""
        for job_id in sorted(running_before):
            record = store.get(job_id)
            if record is not None and record.status.state.ended:
                self.ended(record.status, while_down=True)
