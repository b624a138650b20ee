"""The Worker: the one entry point of jobcore, a small facade over its parts (docs/architecture.md):

- `jobcore.records`: the typed records of a job directory, and its status as a function of them;
- `jobcore.watcher`: the table of jobs, the one owner of a running job's fds and state changes;
- `jobcore.launcher_client`: the launcher process that forks every shim;
- `jobcore.recovery`: re-attaching to the jobs of an earlier Worker at start-up;
- `jobcore.output_log`: the output's writer (in the shim) and readers.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import math
import os
import select
import shutil
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType

from jobcore import jobdir, records, recovery
from jobcore.controllers import Capabilities, Handle, ResourceController, handle_from_state, load_controller
from jobcore.errors import (
    InvalidSpec,
    JobNotFound,
    JobStillRunning,
    StateError,
    StopTimeout,
    WorkerError,
)
from jobcore.launcher_client import LauncherClient
from jobcore.output_log import OutputReader
from jobcore.records import ExitRecord, RunRecord, SandboxPlan, SpecRecord, StopRequest
from jobcore.sandbox import is_within
from jobcore.spec import JobSpec, Limits, RunAs
from jobcore.status import JobStatus, ResourceUsage
from jobcore.watcher import VANISHED_REASON, WatchedJob, Watcher, pin, read_or_none, remove_damaged

__all__ = ["DEFAULT_GRACE", "DEFAULT_OUTPUT_CAP", "VANISHED_REASON", "OutputReader", "Worker"]

log = logging.getLogger("jobcore")

#: Stored output per job, by default (see docs/output.md for what happens at the cap).
DEFAULT_OUTPUT_CAP = 1 << 30
DEFAULT_GRACE = 10.0
#: How long start() waits for the shim to report (the exec normally takes milliseconds).
START_TIMEOUT = 30.0
#: How long stop() waits past the grace period for the job to end after SIGKILL.
KILL_TIMEOUT = 15.0
DEFAULT_CHUNK = 256 * 1024
#: How old a running job's usage may be in a listing, in seconds (`Worker.list`).
LIST_USAGE_MAX_AGE = 1.0
#: Working directories that the sandbox's own mounts provide (see `JobSpec.cwd`).
_PRIVATE_CWDS = ("/", "/tmp", "/var/tmp", "/dev/shm")


class Worker:
    """Starts, stops, watches and reports on jobs whose state lives under `state_dir`.

    Thread-safe. Jobs outlive the Worker (and the process that made it): a new Worker on the same
    state directory re-attaches to them. Use as a context manager, or call `close()`.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        controller: str | ResourceController = "auto",
        default_limits: Limits | None = None,
        max_limits: Limits | None = None,
        output_cap: int | None = DEFAULT_OUTPUT_CAP,
        default_grace: float = DEFAULT_GRACE,
        on_job_ended: Callable[[JobStatus], None] | None = None,
        sweep_unknown_cgroups: bool = False,
        hidden_paths: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        if output_cap is not None and output_cap <= 0:
            raise InvalidSpec(f"output_cap must be positive or None, got {output_cap}")
        self.default_grace = _check_grace(default_grace)
        self.state_dir = Path(state_dir).resolve()
        self.default_limits = default_limits or Limits()
        self.max_limits = max_limits or Limits()
        self.output_cap = output_cap
        self._on_job_ended = on_job_ended
        self.closed = False
        #: Guards `closed` and the count of start() calls in flight (close() waits for them).
        self._open = threading.Condition()
        self._starting = 0

        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.state_dir, 0o700)  # its jobs' output, specs and environments are nobody else's
        #: What sandboxed jobs never see: the state directory and the caller's paths (keys, config...).
        self.hidden_paths = _hidden_paths(self.state_dir, hidden_paths)
        self._lock_fd = self._take_lock()
        self._watcher: Watcher | None = None
        self._launcher: LauncherClient | None = None
        try:
            self.controller = load_controller(controller) if isinstance(controller, str) else controller
            self.capabilities: Capabilities = self.controller.probe()
            if self.controller.name == "none":
                log.warning("jobcore: resource-controller backend 'none': NOTHING IS LIMITED (no cgroups)")
            cls = type(self.controller)
            self._controller_class = f"{cls.__module__}:{cls.__qualname__}"
            self._watcher = Watcher(self.state_dir, on_end=self._job_ended)
            self._launcher = LauncherClient(preload=[cls.__module__])
            # The converter's code for every record, built now (~30 ms) rather than in the first start.
            records.prewarm()
            recovery.load_existing(self, self._watcher, sweep_unknown_cgroups)
            self._watcher.start()
        except BaseException:
            self._release_resources()
            raise

    # ------------------------------------------------------------------ lifecycle

    def _take_lock(self) -> int:
        fd = os.open(self.state_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise WorkerError(
                f"state directory {self.state_dir} is in use by another Worker (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd

    @property
    def launcher_pid(self) -> int:
        """The pid of the process that forks every shim (for diagnostics: it is replaced if killed)."""
        assert self._launcher is not None
        return self._launcher.pid

    def close(self) -> None:
        """Stop watching and release every resource. Running jobs keep running. A start() in
        flight finishes first (its job then runs on, unwatched, like every other); later calls raise
        WorkerError."""
        with self._open:
            if self.closed:
                return
            self.closed = True
            self._open.wait_for(lambda: self._starting == 0)
        self._release_resources()

    def _release_resources(self) -> None:
        if self._launcher is not None:
            self._launcher.close()
        if self._watcher is not None:
            self._watcher.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> Worker:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self.closed:
            raise WorkerError("this Worker is closed")

    @property
    def _jobs(self) -> Watcher:
        assert self._watcher is not None
        return self._watcher

    # ------------------------------------------------------------------ public API

    def start(self, spec: JobSpec) -> JobStatus:
        """Start `spec` as a job. Returns once the command has been exec'd, or with state
        FAILED_TO_START and the reason when it could not be. Raises InvalidSpec/InvalidLimit for a
        request that cannot be run here, before anything is created."""
        with self._open:
            self._check_open()
            self._starting += 1
        try:
            return self._start(spec)
        finally:
            with self._open:
                self._starting -= 1
                self._open.notify_all()

    def _start(self, spec: JobSpec) -> JobStatus:
        if not isinstance(spec, JobSpec):
            raise InvalidSpec(f"start() takes a JobSpec, got {type(spec).__name__}")
        limits = spec.limits.resolve(self.default_limits, self.max_limits)
        sandboxed = spec.isolation.sandbox
        given = spec.cwd
        if given is not None:
            if not os.path.isdir(given):
                raise InvalidSpec(f"cwd {given!r} does not exist or is not a directory")
            if sandboxed:
                given = self._sandbox_cwd(given)
        job_id = jobdir.new_job_id()
        directory = self.state_dir / job_id
        scratch = str(directory / jobdir.SCRATCH) if sandboxed and given is None else None
        user = spec.user or RunAs(os.geteuid(), os.getegid())
        self.controller.check(limits, given or str(self.state_dir))
        staging = self.state_dir / f".{job_id}.new"
        handle: Handle | None = None
        try:
            staging.mkdir(mode=0o700)
            if scratch is not None:
                (staging / jobdir.SCRATCH).mkdir(mode=0o700)
                os.chown(staging / jobdir.SCRATCH, user.uid, user.gid)
            handle = self.controller.create(spec.owner, job_id, limits, given or str(self.state_dir))
            state = handle.to_state()
            record = SpecRecord(
                id=job_id,
                owner=spec.owner,
                argv=tuple(spec.argv),
                env=spec.exec_env(),
                cwd=scratch or given or "/",
                user=spec.user,
                uid=user.uid,
                gid=user.gid,
                sandbox=None
                if not sandboxed
                else SandboxPlan(
                    hide=tuple(self.hidden_paths + _unreachable_ancestor(scratch, user, self.hidden_paths)),
                    scratch=scratch,
                    # An explicit cwd is bound in at its own path (visible even under the private
                    # /tmp), writable — except for uid 0, who owns most of the host: its explicit
                    # cwd stays read-only (its scratch directory and /tmp are writable). "/" is
                    # never bound; /tmp, /var/tmp and /dev/shm are the job's own already.
                    cwd_bind=None
                    if given is None or given in _PRIVATE_CWDS
                    else ("ro" if user.uid == 0 else "rw"),
                ),
                namespaces=tuple(spec.isolation.enabled()),
                limits=handle.applied(),
                controller=self.controller.name,
                cgroup=state,
                # A third-party handle whose state names no class is rebuilt through its controller.
                controller_class=None if "handle" in state else self._controller_class,
                output_cap=self.output_cap,
                created_at=time.time(),
            )
            records.write(staging / jobdir.SPEC, record)
            os.rename(staging, directory)
        except BaseException as exc:
            if handle is not None:
                handle.destroy()
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, OSError) and not isinstance(exc, StateError) and exc.errno is not None:
                raise StateError(
                    exc.errno, f"cannot write the state of a new job in {self.state_dir}: {exc.strerror}"
                ) from exc
            raise
        job = self.job_of(record, directory, handle)
        self._launch(job)
        # Listed only once launched: a caller that counts a start in flight itself (the server's
        # per-user cap) must not see it twice, as a start and as a running job.
        self._jobs.add(job)
        return self._status(job)

    def job_of(self, spec: SpecRecord, directory: Path, handle: Handle | None = None) -> WatchedJob:
        """A job known by its spec record (for jobcore.recovery)."""
        return self._jobs.new_job(spec, directory, lambda: self._handle_of(spec), handle)

    def _handle_of(self, spec: SpecRecord) -> Handle:
        return handle_from_state(spec.cgroup, controller_class=spec.controller_class)

    def _sandbox_cwd(self, cwd: str) -> str:
        """A sandboxed job's explicit working directory, resolved (no symlink, no `.`, no `//`: the
        path the shim will bind and check again). It must be on a real file system, not /proc, /sys
        or /dev (their entries lead into other processes' and the host's views), and not in a hidden
        path (its writable bind would show what is hidden)."""
        try:
            real = os.path.realpath(cwd, strict=True)
        except OSError as exc:
            raise InvalidSpec(f"cwd {cwd!r} cannot be resolved: {exc.strerror or exc}") from None
        for kernel in ("/proc", "/sys", "/dev"):
            if is_within(real, kernel) and real != "/dev/shm":
                raise InvalidSpec(f"cwd {cwd!r} is on {kernel}: give a directory of a real file system")
        for hidden in self.hidden_paths:
            if is_within(real, hidden):
                raise InvalidSpec(f"cwd {cwd!r} is inside {hidden}, which jobs may not see")
        return real

    def _launch(self, job: WatchedJob) -> None:
        """Hand the job to the launcher, wait for its shim's report (a JSON line), and watch it."""
        import json

        assert self._launcher is not None
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid_namespace = b"P" if "pid" in job.spec.namespaces else b"-"
            try:
                self._launcher.send(pid_namespace + os.fsencode(job.dir), report_w)
            except (OSError, WorkerError) as exc:
                self._jobs.lose(job, f"the launcher is gone ({exc}); the job was not started")
                raise WorkerError(
                    f"cannot start job {job.id}: the Worker's launcher is gone ({exc})"
                ) from exc
            finally:
                os.close(report_w)
            line = _read_report(report_r, START_TIMEOUT)
        finally:
            os.close(report_r)
        report = json.loads(line) if line else {}
        shim = read_or_none(job.dir / jobdir.SHIM, records.ShimRecord)
        if report.get("ok"):
            with job.cond:
                job.run = records.structure(report["run"], RunRecord, "the shim's report")
            self._jobs.note_change()
        elif report:
            # It failed to start: ended before anyone could watch it (no on_job_ended for it).
            with job.cond:
                job.exit = records.structure(report["exit"], ExitRecord, "the shim's report")
            self._jobs.note_change()
            return
        if shim is not None:
            self._jobs.watch(job, shim.pid, shim.start_ticks)  # ends it, if it ended meanwhile
        else:
            self._jobs.refresh(job)  # the shim died before it recorded itself: what it recorded is all
        if not job.ended and job.run is None:
            # No report, no run.json: the shim died before it could say, or hangs.
            self._jobs.lose(job, f"the job's shim did not report within {START_TIMEOUT:.0f} s of its start")

    def status(self, job_id: str, *, usage_max_age: float = 0.0, with_usage: bool = True) -> JobStatus:
        """The job's current status. A running job's usage and output size are read now (from its
        cgroup, and a stat of its output), or (for a listing) reused if read less than
        `usage_max_age` seconds ago; a missing output makes it check that the job's directory is
        still there (the watcher notices a removed directory by itself too). Without `with_usage`,
        a running job's status carries no usage (an empty ResourceUsage: not measured) and its
        cgroup is not read; an ended job's is its final usage either way. Raises InvalidJobId or
        JobNotFound."""
        return self._status(self._get(job_id), usage_max_age, with_usage)

    def statuses(
        self, job_ids: Iterable[str], *, usage_max_age: float = 0.0, with_usage: bool = True
    ) -> list[JobStatus | None]:
        """`status()` of each of `job_ids` in one call (None for an id it does not know): what a
        listing asks for hundreds of jobs at once."""
        found = self._jobs.get_many(job_ids)
        return [None if job is None else self._status(job, usage_max_age, with_usage) for job in found]

    @property
    def changes(self) -> int:
        """A number that moves whenever any job's status, apart from a running job's live usage and
        output size, may have changed: a job started, removed, ended, asked to stop, or its run
        recorded (and when a status read sees a job's output grown). What was built from statuses
        while it stayed the same is current but for usage and output sizes, which are re-read only
        when a status asks for them."""
        return self._jobs.changes

    def list(self, owner: str | None = None, *, usage_max_age: float = LIST_USAGE_MAX_AGE) -> list[JobStatus]:
        """Every job (or `owner`'s), oldest first. Running jobs' usage and output size may be up to
        `usage_max_age` seconds old (a listing of hundreds of running jobs then reads no cgroup and
        stats no output twice in a second)."""
        jobs = [j for j in self._jobs.jobs() if owner is None or j.spec.owner == owner]
        jobs.sort(key=lambda j: j.spec.created_at)
        return [self._status(j, usage_max_age) for j in jobs]

    def running_count(self, owner: str | None = None) -> int:
        """How many jobs (of `owner`) are running: O(1), whatever number of ended jobs is kept."""
        return self._jobs.running_count(owner)

    def running_output_bytes(self, owner: str | None = None) -> int:
        """The output stored so far by the running jobs (of `owner`): one stat per running job (and
        none for the ended ones the Worker still holds), where `list()` builds every known job's
        status."""
        total = 0
        for job in self._jobs.running(owner):
            try:
                total += os.stat(job.output_path).st_size
            except FileNotFoundError:
                pass  # not started yet, or its directory vanished: no output of it is stored here
        return total

    def wait(self, job_id: str, timeout: float | None = None) -> JobStatus:
        """Wait until the job has ended (or `timeout` seconds passed); return its status."""
        job = self._get(job_id)
        with job.cond:
            job.cond.wait_for(lambda: job.exit is not None or self.closed, timeout)
        return self._status(job)

    def stop(self, job_id: str, grace: float | None = None, *, timeout: float | None = None) -> JobStatus:
        """SIGTERM the job, wait up to `grace` seconds (default: the Worker's, 10 s), then SIGKILL
        every process of the job. Returns the ended status. Stopping an ended job returns its status;
        a second stop with a shorter grace shortens the wait. With `timeout`, waits at most that long
        and returns the status as it is then (RUNNING with stop_requested while the grace period
        lasts): the stop carries on without the caller (the shim owns its timer)."""
        job = self._get(job_id)
        grace = self.default_grace if grace is None else _check_grace(grace)
        if job.exit is not None:
            return self._status(job)
        with job.stop_lock:  # one stop request written at a time; the earliest deadline wins
            request = StopRequest(grace=grace, requested_at=time.time())
            previous = read_or_none(job.dir / jobdir.STOP, StopRequest)
            if previous is None:
                remove_damaged(job.dir / jobdir.STOP)
            elif previous.deadline < request.deadline:
                request = previous
            try:
                records.write(job.dir / jobdir.STOP, request)
                job.stop_requested = True
                self._jobs.note_change()
            except FileNotFoundError:
                if job.dir.is_dir():
                    raise
                self._jobs.check_vanished(job)
                return self._status(job)
        # Through the watcher, which closes a pidfd only under the same lock: never another job's.
        self._jobs.signal(job, signal.SIGTERM)
        deadline = request.deadline + KILL_TIMEOUT
        wait_until = deadline if timeout is None else min(deadline, time.time() + max(0.0, timeout))
        with job.cond:
            job.cond.wait_for(lambda: job.exit is not None or self.closed, max(0.0, wait_until - time.time()))
        if not job.ended:
            if wait_until < deadline:
                return self._status(job)
            raise StopTimeout(f"job {job_id} did not end within {KILL_TIMEOUT:.0f} s of its grace period")
        return self._status(job)

    def remove(self, job_id: str) -> JobStatus:
        """Forget an ended job and delete its directory (records and output); returns its last status.
        Raises JobNotFound, or JobStillRunning while it runs. Readers still open keep what they hold."""
        job = self._get(job_id)
        if job.exit is None:
            raise JobStillRunning(job_id)
        status = self._status(job)
        self._jobs.discard(job_id)
        _wait_shim_gone(job.dir, timeout=5.0)  # it may still be tidying up after writing exit.json
        for attempt in range(3):
            try:
                shutil.rmtree(job.dir)
                break
            except FileNotFoundError:
                if not job.dir.exists():
                    break  # an entry went away under us: look again (bounded)
            except OSError as exc:
                raise StateError(
                    exc.errno or 0, f"cannot delete the directory of job {job_id}: {exc}"
                ) from exc
            if attempt == 2:
                raise StateError(0, f"cannot delete the directory of job {job_id}: it keeps changing")
        return status

    def output(
        self, job_id: str, offset: int = 0, follow: bool = True, chunk_size: int = DEFAULT_CHUNK
    ) -> OutputReader:
        """The job's output from byte `offset`: everything stored, then (with `follow`) new output as
        it arrives, ending once the job has ended and every byte was read."""
        self._check_open()
        job = self._get(job_id)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidSpec(f"offset must be a non-negative integer, got {offset!r}")
        if chunk_size <= 0:
            raise InvalidSpec(f"chunk_size must be positive, got {chunk_size}")
        return OutputReader(
            job.dir / jobdir.OUTPUT, job, offset, follow, chunk_size, closed=lambda: self.closed
        )

    async def aoutput(
        self, job_id: str, offset: int = 0, follow: bool = True, chunk_size: int = DEFAULT_CHUNK
    ) -> AsyncIterator[bytes]:
        """The asyncio twin of `output`: an async iterator of chunks. Cancelling it releases the reader."""
        reader = self.output(job_id, offset, follow, chunk_size)
        try:
            while (chunk := await asyncio.to_thread(reader.next_chunk)) is not None:
                yield chunk
        finally:
            reader.close()

    # ------------------------------------------------------------------ internals

    def _get(self, job_id: str) -> WatchedJob:
        jobdir.check_job_id(job_id)
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def _status(self, job: WatchedJob, usage_max_age: float = 0.0, with_usage: bool = True) -> JobStatus:
        """The status from the job's records, plus (while it runs) its output's size and (with
        `with_usage`) its live usage — each read now, or reused when read less than `usage_max_age`
        seconds ago."""
        with job.cond:
            run, ended = job.run, job.exit
        if ended is not None:
            return records.job_status(job.spec, run, ended, stop_requested=job.stop_requested)
        now = time.monotonic()
        output_bytes = job.output_size
        if usage_max_age <= 0.0 or now - job.output_at > usage_max_age:
            try:
                output_bytes = os.stat(job.output_path).st_size
            except FileNotFoundError:
                # Not made yet, or the job's directory is gone (the watcher notices that by itself
                # too): a running job whose directory vanished is killed and LOST.
                if self._jobs.check_vanished(job):
                    return self._status(job)
                output_bytes = 0
            if output_bytes != job.output_size:
                job.output_size = output_bytes
                self._jobs.note_change()
            job.output_at = now
        # The status is a pure function of these (and the spec): built again only when one changed,
        # so that listings of running jobs get the same JobStatus object while nothing changed.
        if not with_usage:
            inputs: tuple[object, ...] = (run, output_bytes, job.stop_requested)
            built = job.listed_status
            if built is None or built[0] != inputs:
                status = records.job_status(
                    job.spec, run, None, output_bytes=output_bytes, stop_requested=job.stop_requested
                )
                built = job.listed_status = (inputs, status)
            return built[1]
        usage = job.usage
        if usage is None or now - job.usage_at > usage_max_age:
            try:
                usage = job.handle().stats()
            except Exception as exc:  # a cgroup that just went away: report no usage rather than fail
                log.debug("stats of job %s: %s", job.id, exc)
                usage = ResourceUsage()
            job.usage, job.usage_at = usage, now
        inputs = (run, usage, output_bytes, job.stop_requested)
        built = job.running_status
        if built is None or built[0] != inputs:
            status = records.job_status(
                job.spec, run, None, usage=usage, output_bytes=output_bytes, stop_requested=job.stop_requested
            )
            built = job.running_status = (inputs, status)
        return built[1]

    def _job_ended(self, job: WatchedJob) -> None:
        """The watcher's on_end, on its clean-up thread: exactly once per job that ended watched."""
        if self._on_job_ended is not None:
            self._on_job_ended(self._status(job))


def _read_report(fd: int, timeout: float) -> bytes:
    """What the shim reports on its pipe (until it closes it), waiting at most `timeout` seconds."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(int(remaining * 1000) + 1):
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _wait_shim_gone(directory: Path, timeout: float) -> None:
    """Wait (bounded, on a pidfd) until the job's shim, if shim.json names one still alive, exits."""
    shim = read_or_none(directory / jobdir.SHIM, records.ShimRecord)
    pidfd = None if shim is None else pin(shim.pid, shim.start_ticks)
    if pidfd is not None:
        try:
            select.select([pidfd], [], [], timeout)
        finally:
            os.close(pidfd)


def _hidden_paths(state_dir: Path, extra: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The state directory and `extra`, as absolute paths with symlinks resolved (the kernel mounts
    over the target), shortest first."""
    paths = {str(state_dir)}
    for path in extra:
        if not os.path.isabs(path):
            raise InvalidSpec(f"hidden path {os.fspath(path)!r} is relative: give an absolute path")
        paths.add(os.path.realpath(path))
    return sorted(paths, key=lambda p: (len(p), p))


def _unreachable_ancestor(path: str | None, user: RunAs, hidden: Sequence[str]) -> list[str]:
    """The outermost directory above `path` that `user` may not search (a 0700 parent of the state
    directory, say), as a path to hide too: the sandbox's empty tmpfs over it is searchable, so the
    job can reach its scratch directory. The job could not see into that directory anyway."""
    if path is None:
        return []
    current = ""
    for part in Path(path).parent.parts[1:]:
        current += "/" + part
        if any(is_within(current, h) for h in hidden):
            return []  # hidden already: the sandbox makes the path up to it searchable
        try:
            st = os.stat(current)
        except OSError:
            return []
        if st.st_uid == user.uid:
            ok = st.st_mode & 0o100
        elif st.st_gid == user.gid:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return [current]
    return []


def _check_grace(grace: float) -> float:
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not math.isfinite(grace) or grace < 0:
        raise InvalidSpec(f"grace must be a non-negative number of seconds, got {grace!r}")
    return float(grace)
