"""The retention policy: ended jobs are deleted (record, directory, output) once they are older than
a maximum age, or past the most recent N ended jobs of their owner, by a background thread.

Running jobs are never touched. Deletion goes through `Jobs.delete_ended`, the same path as the
DeleteJob call. Every sweep is logged with the number of jobs it deleted.
"""

from __future__ import annotations

import re
import threading
import time

import attrs
import structlog

from jobserver.jobs import Jobs

log = structlog.get_logger("jobserver")

_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", re.ASCII)


def parse_age(text: str) -> float:
    """Seconds in "90", "90s", "15m", "12h", "30d", "2w"; ValueError otherwise."""
    match = _AGE_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected an age such as 3600, '12h', '30d' or '2w', got {text!r}")
    return float(match.group(1)) * _AGE_UNITS[match.group(2) or "s"]


@attrs.frozen
class RetentionPolicy:
    #: Ended jobs older than this (seconds since they ended) are deleted; None: kept however old.
    max_age_seconds: float | None = 30 * 86400.0
    #: Only the most recently ended jobs of each user are kept; None: no limit.
    max_ended_jobs_per_user: int | None = 1000
    #: Seconds between sweeps (one runs at start).
    interval_seconds: float = 600.0


class RetentionSweeper:
    """Applies a RetentionPolicy every interval in one thread; `close()` stops and joins it."""

    def __init__(self, jobs: Jobs, policy: RetentionPolicy) -> None:
        self._jobs = jobs
        self._policy = policy
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jobserver-retention", daemon=True)

    def start(self) -> None:
        if self._policy.max_age_seconds is None and self._policy.max_ended_jobs_per_user is None:
            return  # nothing to apply
        self._thread.start()

    def sweep_once(self) -> int:
        """Delete what the policy says is past keeping; returns how many jobs were deleted."""
        policy = self._policy
        cutoff = None if policy.max_age_seconds is None else time.time() - policy.max_age_seconds
        deleted = 0
        for job_id in self._jobs.prunable(cutoff, policy.max_ended_jobs_per_user):
            if self._stop.is_set():
                break
            if self._jobs.delete_ended(job_id):
                deleted += 1
        return deleted

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                deleted = self.sweep_once()
                if deleted:
                    log.info("retention: deleted ended jobs", deleted=deleted)
            except Exception as exc:  # a failed sweep is retried at the next interval
                log.error("retention sweep failed", error=str(exc))
            self._stop.wait(self._policy.interval_seconds)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
