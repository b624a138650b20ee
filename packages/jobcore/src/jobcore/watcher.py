"""The watcher: the one owner of every running job's file descriptors and of every change of a job's
state, under one lock.

A Worker's jobs live in a table here (`WatchedJob`, one per job). While a job runs, the watcher holds
an inotify watch on its directory and a pidfd of its shim, in one epoll, and one thread (the
*watcher thread*) turns what they report into state: run.json arriving, exit.json arriving, the shim
gone without one (the job is LOST), the job's directory gone (the job is killed, LOST).

What holds, and why it is built this way:

- Every change of `run`, `exit`, `pidfd` and `wd` of a job happens with `lock` held, and so does
  every use of a pidfd: `signal()` cannot send through a pidfd that the watcher closed (and the
  kernel gave to another job) a moment before.
- A job ends exactly once: `end()` sets its exit record only if it has none, under the lock, and only
  that call queues the end's consequences.
- Nothing slow runs on the watcher thread or under the lock: the `on_end` callback (a server writes
  SQLite there), killing what is left of a lost job and removing its cgroup (up to 10 s), and writing
  its LOST record run on a small queue of their own (the *clean-up thread*), in order.
- Every job's `cond` is a condition on the one lock: followers and waiters of a job wait for its
  generation to move, and only that job's notify wakes them.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from jobcore import jobdir, linux, records
from jobcore.controllers import Handle
from jobcore.errors import CorruptStateFile
from jobcore.records import ExitRecord, RunRecord, SpecRecord
from jobcore.status import JobState, JobStatus, ResourceUsage

log = logging.getLogger("jobcore")

_WATCH_MASK = linux.IN_MODIFY | linux.IN_MOVED_TO
#: Watched on the state directory: a job directory removed or moved away. (The job directory's own
#: IN_DELETE_SELF comes only once nothing pins it, and the shim's open output files do.)
_IN_MOVED_FROM = 0x00000040
_IN_DELETE = 0x00000200
_STATE_DIR_MASK = _IN_DELETE | _IN_MOVED_FROM


class WatchedJob:
    """One job as the Worker knows it. Its truth is its directory; what changes while it runs
    (`run`, `exit`, `generation`, the fds) changes under the watcher's lock."""

    def __init__(
        self,
        spec: SpecRecord,
        directory: Path,
        lock: threading.Lock,
        make_handle: Callable[[], Handle],
        handle: Handle | None = None,
    ) -> None:
        self.id = spec.id
        self.dir = directory
        self.spec = spec
        self.cond = threading.Condition(lock)
        #: Bumped on every change seen in the job directory; followers wait for it to move.
        self.generation = 0
        self.run: RunRecord | None = None
        self.exit: ExitRecord | None = None
        self.pidfd: int | None = None
        self.wd: int | None = None
        #: One stop request written at a time (a file write: never under the watcher's lock).
        self.stop_lock = threading.Lock()
        #: Whether stop.json exists (only this Worker writes it: the state directory is locked).
        self.stop_requested = (directory / jobdir.STOP).exists()
        #: The live usage and the output size last read, and when (time.monotonic()): listings reuse
        #: them for a moment.
        self.usage: ResourceUsage | None = None
        self.usage_at = 0.0
        self.output_size = 0
        self.output_at = 0.0
        #: The running job's last status and what it was built from (records, usage, output size,
        #: stop request): the Worker returns the same status while they are equal (`Worker._status`);
        #: and the same without its live usage (what a listing shows).
        self.running_status: tuple[tuple[object, ...], JobStatus] | None = None
        self.listed_status: tuple[tuple[object, ...], JobStatus] | None = None
        #: As strings: a listing stats these for every running job, and pathlib costs more than stat.
        self.dir_path = str(directory)
        self.output_path = str(directory / jobdir.OUTPUT)
        self._make_handle = make_handle
        self._handle = handle

    @property
    def ended(self) -> bool:
        return self.exit is not None

    def handle(self) -> Handle:
        """The job's cgroup handle, rebuilt from its recorded state on first use."""
        if self._handle is None:
            self._handle = self._make_handle()
        return self._handle


class Watcher:
    """The table of a Worker's jobs, the watches of the running ones, and the threads that act on
    them (see the module docstring)."""

    def __init__(self, state_dir: Path, on_end: Callable[[WatchedJob], None]) -> None:
        self.lock = threading.Lock()
        self.closed = False
        #: Moves (under the lock) whenever any job's status apart from its live usage may have changed:
        #: a job added or dropped, its run or its end recorded, a stop requested, its output seen to
        #: grow. Something built from the table's statuses while it stays the same is still current,
        #: except for output sizes, which are only re-read when asked for (`Worker.changes`).
        self.changes = 0
        self._on_end = on_end
        self._jobs: dict[str, WatchedJob] = {}
        #: The running jobs of each owner (in `_jobs` and without an exit record), kept as they start
        #: and end: a start's per-user checks read these, never the whole table, which also holds every
        #: ended job not yet removed (a server keeps up to a thousand per user).
        self._running: dict[str, dict[str, WatchedJob]] = {}
        self._by_wd: dict[int, WatchedJob] = {}
        self._by_pidfd: dict[int, WatchedJob] = {}
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._cleaner: threading.Thread | None = None
        self._inotify = linux.Inotify()
        try:
            self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            # epoll, not poll: registering a job's pidfd is O(1) from any thread, and a wake-up costs
            # nothing per job watched.
            self._epoll = select.epoll()
            self._epoll.register(self._inotify.fd, select.EPOLLIN)
            self._epoll.register(self._wake_r, select.EPOLLIN)
            self._state_wd = self._inotify.add_watch(str(state_dir), _STATE_DIR_MASK)
        except BaseException:
            self._release()
            raise

    def new_job(
        self,
        spec: SpecRecord,
        directory: Path,
        make_handle: Callable[[], Handle],
        handle: Handle | None = None,
    ) -> WatchedJob:
        return WatchedJob(spec, directory, self.lock, make_handle, handle)

    def start(self) -> None:
        """Start the watcher and clean-up threads (after the jobs found at start-up are in)."""
        self._cleaner = threading.Thread(target=self._clean, name="jobcore-cleanup", daemon=True)
        self._cleaner.start()
        self._thread = threading.Thread(target=self._watch, name="jobcore-watcher", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop both threads (the clean-up thread after it ran what is queued) and close every fd."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join()
        self._tasks.put(None)
        if self._cleaner is not None:
            self._cleaner.join()
        with self.lock:
            for job in self._jobs.values():
                job.cond.notify_all()
        self._release()

    def _release(self) -> None:
        with self.lock:
            for fd in list(self._by_pidfd):
                os.close(fd)
                self._by_pidfd[fd].pidfd = None
            self._by_pidfd.clear()
            self._by_wd.clear()
        epoll = getattr(self, "_epoll", None)
        if epoll is not None:
            epoll.close()
        self._inotify.close()
        for name in ("_wake_r", "_wake_w"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    # -- the table

    def add(self, job: WatchedJob) -> None:
        with self.lock:
            self._jobs[job.id] = job
            if job.exit is None:
                self._running.setdefault(job.spec.owner, {})[job.id] = job
            self.changes += 1

    def get(self, job_id: str) -> WatchedJob | None:
        with self.lock:
            return self._jobs.get(job_id)

    def get_many(self, job_ids: Iterable[str]) -> list[WatchedJob | None]:
        with self.lock:
            get = self._jobs.get
            return [get(job_id) for job_id in job_ids]

    def discard(self, job_id: str) -> None:
        with self.lock:
            job = self._jobs.pop(job_id, None)
            if job is not None:
                self._not_running(job)
                self.changes += 1

    def _not_running(self, job: WatchedJob) -> None:
        """Drop the job from its owner's running jobs (with the lock held)."""
        mine = self._running.get(job.spec.owner)
        if mine is not None and mine.pop(job.id, None) is not None and not mine:
            del self._running[job.spec.owner]

    def note_change(self) -> None:
        """A job's status changed in a way the table does not see (a stop requested, output grown)."""
        with self.lock:
            self.changes += 1

    def jobs(self) -> list[WatchedJob]:
        with self.lock:
            return list(self._jobs.values())

    def running(self, owner: str | None = None) -> list[WatchedJob]:
        """The running jobs (of `owner`): O(those jobs), however many ended ones the table holds."""
        with self.lock:
            if owner is not None:
                return list(self._running.get(owner, {}).values())
            return [job for mine in self._running.values() for job in mine.values()]

    def running_count(self, owner: str | None = None) -> int:
        with self.lock:
            if owner is not None:
                return len(self._running.get(owner, ()))
            return sum(len(mine) for mine in self._running.values())

    def __contains__(self, job_id: str) -> bool:
        with self.lock:
            return job_id in self._jobs

    # -- a running job

    def watch(self, job: WatchedJob, shim_pid: int, shim_start_ticks: int | None) -> None:
        """Watch a running job: its directory, and its shim through a pidfd. The pid is pinned first
        (pidfd_open), then checked to be the shim by its start time: a pid reused by another process
        after the shim exited is never taken for the shim. Ends the job if it ended meanwhile."""
        pidfd = pin(shim_pid, shim_start_ticks)
        with self.lock:
            if self.closed or job.exit is not None:
                if pidfd is not None:
                    os.close(pidfd)
                return
            job.wd = self._inotify.add_watch(str(job.dir), _WATCH_MASK)
            self._by_wd[job.wd] = job
            if pidfd is not None:
                job.pidfd = pidfd
                self._by_pidfd[pidfd] = job
                self._epoll.register(pidfd, select.EPOLLIN)
        # Whatever happened before the watches existed: look once more.
        self.refresh(job, shim_gone=pidfd is None)

    def signal(self, job: WatchedJob, signum: int) -> bool:
        """Send `signum` to the job's shim, if it is still watched; False when it is not (ended)."""
        with self.lock:
            if job.pidfd is None:
                return False
            try:
                signal.pidfd_send_signal(job.pidfd, signum)
            except ProcessLookupError:
                return False  # it is exiting: the watcher sees it next
            return True

    def end(
        self,
        job: WatchedJob,
        exit: ExitRecord,
        *,
        kill_shim: bool = False,
        cleanup: Callable[[], None] | None = None,
    ) -> bool:
        """Record that the job ended with `exit`, exactly once: False (and nothing done) when it had
        ended already. Closes its watches (after SIGKILLing its shim through the pidfd if
        `kill_shim`), wakes its waiters, and queues `cleanup` and then the on_end callback."""
        with self.lock:
            if job.exit is not None:
                return False
            job.exit = exit
            self._not_running(job)
            if job.pidfd is not None and kill_shim:
                try:
                    signal.pidfd_send_signal(job.pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._unwatch(job)
            job.generation += 1
            self.changes += 1
            job.cond.notify_all()
        if cleanup is not None:
            self._queue(cleanup, job, "clean-up")
        self._queue(lambda: self._on_end(job), job, "on_job_ended callback")
        return True

    def _queue(self, task: Callable[[], None], job: WatchedJob, what: str) -> None:
        def run() -> None:
            try:
                task()
            except Exception:
                log.exception("jobcore: %s of job %s failed", what, job.id)

        if self._cleaner is None or not self._cleaner.is_alive():
            run()  # before start() (jobs found at start-up) or after close(): here and now
        else:
            self._tasks.put(run)

    def _unwatch(self, job: WatchedJob) -> None:
        """Close the job's watches (with the lock held)."""
        if job.wd is not None:
            self._by_wd.pop(job.wd, None)
            self._inotify.rm_watch(job.wd)
            job.wd = None
        if job.pidfd is not None:
            self._by_pidfd.pop(job.pidfd, None)
            self._epoll.unregister(job.pidfd)
            os.close(job.pidfd)
            job.pidfd = None

    def refresh(self, job: WatchedJob, shim_gone: bool = False) -> None:
        """Read what the job's directory says now (run.json, exit.json) into its state; `shim_gone`:
        its shim has exited, so no exit.json means none will come (the job is LOST)."""
        if job.exit is not None:
            return
        run = job.run or read_or_none(job.dir / jobdir.RUN, RunRecord)
        recorded = read_or_none(job.dir / jobdir.EXIT, ExitRecord)
        with self.lock:
            if job.run is None and run is not None:
                job.run = run
                self.changes += 1
            job.generation += 1
            job.cond.notify_all()
        if recorded is not None:
            self.end(job, recorded)
        elif shim_gone:
            self.lose(job, "the job's shim exited without recording how the job ended")

    def lose(self, job: WatchedJob, reason: str) -> bool:
        """The job is LOST (its shim gone without an exit record, or not reporting): end it, and on
        the clean-up thread kill what is left of it (its shim and command as their records name them,
        then everything in its cgroup) and write the LOST record."""
        lost = ExitRecord(state=JobState.LOST, ended_at=time.time(), reason=reason)

        def cleanup() -> None:
            kill_recorded_processes(job.dir)
            try:
                job.handle().destroy()
            except Exception as exc:
                log.warning("jobcore: clean-up of lost job %s: %s", job.id, exc)
            write_lost(job.dir, lost)

        return self.end(job, lost, cleanup=cleanup)

    # -- the threads

    def _watch(self) -> None:
        """The watcher thread: one epoll over inotify, the shims' pidfds and a wake-up pipe."""
        while not self.closed:
            for fd, _events in self._epoll.poll():
                if fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                elif fd == self._inotify.fd:
                    self._on_inotify()
                else:
                    # The event may be for a pidfd closed since (its job ended in this batch) whose
                    # number the kernel gave to another job's new pidfd: only a pidfd readable now
                    # says its shim is gone. Checked under the lock, which every close of a pidfd
                    # takes, so it is this job's pidfd; a gone shim never comes back.
                    with self.lock:
                        job = self._by_pidfd.get(fd)
                        gone = job is not None and _readable(fd)
                    if job is not None and gone and not self._safely(self.refresh, job, True):
                        self._forget_pidfd(job, fd)  # a pidfd stays readable: never spin on it

    def _on_inotify(self) -> None:
        changed: dict[str, WatchedJob] = {}
        gone: dict[str, WatchedJob] = {}
        for wd, _mask, name in self._inotify.read_events():
            with self.lock:
                job = self._jobs.get(name) if wd == self._state_wd else self._by_wd.get(wd)
            if job is None:
                continue
            (gone if wd == self._state_wd else changed)[job.id] = job
        for job in changed.values():
            self._safely(self.refresh, job, False)
        for job in gone.values():
            self._safely(self.check_vanished, job)

    def check_vanished(self, job: WatchedJob) -> bool:
        """If the directory of a running job is gone (removed by hand, a wiped disk), the job is
        killed — its shim through its pidfd, everything in its cgroup — and LOST (in memory: there
        is nowhere to write). True when that happened."""
        if job.exit is not None or os.path.isdir(job.dir_path):
            return False
        log.warning("jobcore: the directory of running job %s vanished; killing the job", job.id)
        lost = ExitRecord(state=JobState.LOST, ended_at=time.time(), reason=VANISHED_REASON)

        def cleanup() -> None:
            try:
                job.handle().destroy()
            except Exception as exc:
                log.warning("jobcore: clean-up of vanished job %s: %s", job.id, exc)

        return self.end(job, lost, kill_shim=True, cleanup=cleanup)

    def _safely(self, fn: Callable[..., Any], *args: Any) -> bool:
        """One job's trouble (a full disk, a damaged record...) never ends the watching."""
        try:
            fn(*args)
        except Exception:
            log.exception("jobcore watcher: handling a change of a job failed")
            return False
        return True

    def _forget_pidfd(self, job: WatchedJob, fd: int) -> None:
        with self.lock:
            if job.pidfd == fd:
                self._by_pidfd.pop(fd, None)
                self._epoll.unregister(fd)
                os.close(fd)
                job.pidfd = None

    def _clean(self) -> None:
        while (task := self._tasks.get()) is not None:
            task()


VANISHED_REASON = "the job's directory vanished from the state directory; the job was killed"


def write_lost(directory: Path, lost: ExitRecord) -> None:
    """Write a LOST exit record (what the Worker told already), unless the job's directory is gone."""
    if not directory.is_dir():
        return
    try:
        path = directory / jobdir.EXIT
        remove_damaged(path)
        records.write(path, lost, durable=True)
    except OSError as exc:
        # Known in memory; a later Worker finds the shim gone and decides the same again.
        log.error("jobcore: cannot record that job %s is lost: %s", directory.name, exc)


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def kill_recorded_processes(directory: Path) -> None:
    """SIGKILL the job's shim and command if shim.json and run.json name live ones. Each pid is
    pinned with a pidfd before its start time is checked, so a reused pid is never hit. The shim of a
    job with a PID namespace is its PID 1: the kernel then kills every process of the job."""
    shim = read_or_none(directory / jobdir.SHIM, records.ShimRecord)
    run = read_or_none(directory / jobdir.RUN, RunRecord)
    for record in (shim, run):
        if record is not None and record.start_ticks is not None:
            kill_pinned(record.pid, record.start_ticks)


def pin(pid: int, start_ticks: int | None) -> int | None:
    """A pidfd of `pid` if it is still the process that started at `start_ticks`, else None. The pid
    is pinned first (pidfd_open), then checked: a pid reused by another process after ours exited is
    never taken for ours, and once pinned it cannot be reused under us. The caller closes the fd."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    if linux.process_start_ticks(pid) != start_ticks:
        os.close(pidfd)
        return None
    return pidfd


def kill_pinned(pid: int, start_ticks: int) -> None:
    """SIGKILL `pid` if it is still the process that started at `start_ticks`."""
    pidfd = pin(pid, start_ticks)
    if pidfd is None:
        return
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


def remove_damaged(path: Path) -> None:
    """Remove a directory found where a record file belongs, so that the record can be written."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)


def read_or_none(path: Path, cls: type[records.R]) -> records.R | None:
    """A record, or None when it is absent or damaged (for callers that decide without it)."""
    try:
        return records.read(path, cls)
    except CorruptStateFile as exc:
        log.warning("jobcore: ignoring %s", exc)
        return None
