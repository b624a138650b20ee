"""The Worker: the one entry point of jobcore. See docs/architecture.md for the process model."""

from __future__ import annotations

import array
import asyncio
import fcntl
import logging
import math
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import attrs

from jobcore import jobdir, linux
from jobcore.controllers import Capabilities, Handle, ResourceController, load_controller
from jobcore.errors import (
    CorruptStateFile,
    InvalidSpec,
    JobNotFound,
    JobStillRunning,
    StateError,
    StopTimeout,
    WorkerError,
)
from jobcore.sandbox import is_within
from jobcore.spec import JobSpec, Limits, RunAs
from jobcore.status import JobState, JobStatus, ResourceUsage

log = logging.getLogger("jobcore")

#: Stored output per job, by default (see docs/output.md for what happens at the cap).
DEFAULT_OUTPUT_CAP = 1 << 30
DEFAULT_GRACE = 10.0
#: How long start() waits for the shim to report (the exec normally takes milliseconds).
START_TIMEOUT = 30.0
#: How long stop() waits past the grace period for the job to end after SIGKILL.
KILL_TIMEOUT = 15.0
DEFAULT_CHUNK = 256 * 1024

_WATCH_MASK = linux.IN_MODIFY | linux.IN_MOVED_TO
#: Watched on the state directory: a job directory removed or moved away. (The job directory's own
#: IN_DELETE_SELF comes only once nothing pins it, and the shim's open output files do.)
_IN_MOVED_FROM = 0x00000040
_IN_DELETE = 0x00000200
_STATE_DIR_MASK = _IN_DELETE | _IN_MOVED_FROM
VANISHED_REASON = "the job's directory vanished from the state directory; the job was killed"
#: Working directories that the sandbox's own mounts provide (see `JobSpec.cwd`).
_PRIVATE_CWDS = ("/", "/tmp", "/var/tmp", "/dev/shm")


class _Job:
    """The Worker's in-memory view of one job; its truth is the job directory."""

    def __init__(self, job_id: str, directory: Path, spec: dict[str, Any]) -> None:
        self.id = job_id
        self.dir = directory
        self.spec = spec
        self.cond = threading.Condition()
        #: Bumped on every change seen in the job directory; followers wait for it to move.
        self.generation = 0
        self.run: dict[str, Any] | None = None
        self.exit: dict[str, Any] | None = None
        self.shim_pid: int | None = None
        self.pidfd: int | None = None
        self.wd: int | None = None
        self._handle: Handle | None = None

    def handle(self, controller: ResourceController) -> Handle:
        if self._handle is None:
            self._handle = controller.attach(self.spec["cgroup"])
        return self._handle

    @property
    def ended(self) -> bool:
        return self.exit is not None

    def bump(self) -> None:
        with self.cond:
            self.generation += 1
            self.cond.notify_all()


class OutputReader(Iterator[bytes]):
    """An iterator over a job's output from an offset; see `Worker.output`.

    `close()` may be called from any thread: it wakes a `next()` that is waiting for new output, which
    then ends the iteration. Holds one file descriptor and at most one chunk in memory.
    """

    def __init__(self, worker: Worker, job: _Job, offset: int, follow: bool, chunk_size: int) -> None:
        self._worker = worker
        self._job = job
        self.offset = offset
        self._follow = follow
        self._chunk = chunk_size
        self._closed = False
        self._fd_lock = threading.Lock()
        try:
            self._fd = os.open(job.dir / jobdir.OUTPUT, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._fd = -1  # the job never started: it has no output

    def __iter__(self) -> OutputReader:
        return self

    def _read(self) -> bytes:
        with self._fd_lock:
            if self._fd < 0:
                return b""
            return os.pread(self._fd, self._chunk, self.offset)

    def __next__(self) -> bytes:
        job = self._job
        while not self._closed:
            with job.cond:
                generation = job.generation
                ended = job.exit is not None or self._worker.closed
            data = self._read()
            if data:
                self.offset += len(data)
                return data
            if ended or not self._follow:
                break
            with job.cond:
                while (
                    job.generation == generation
                    and not self._closed
                    and job.exit is None
                    and not self._worker.closed
                ):
                    job.cond.wait()
        self.close()
        raise StopIteration

    def next_chunk(self) -> bytes | None:
        """The next chunk, or None at the end (for callers that cannot use StopIteration, e.g. threads)."""
        return next(self, None)

    def close(self) -> None:
        """End the iteration and release the file; safe from any thread, idempotent."""
        self._closed = True
        with self._job.cond:
            self._job.cond.notify_all()
        with self._fd_lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> OutputReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


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
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._by_wd: dict[int, _Job] = {}
        self._by_pidfd: dict[int, _Job] = {}

        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.state_dir, 0o700)  # its jobs' output, specs and environments are nobody else's
        #: What sandboxed jobs never see: the state directory and the caller's paths (keys, config...).
        self.hidden_paths = _hidden_paths(self.state_dir, hidden_paths)
        self._lock_fd = self._take_lock()
        try:
            self.controller = load_controller(controller) if isinstance(controller, str) else controller
            self.capabilities: Capabilities = self.controller.probe()
            if self.controller.name == "none":
                log.warning("jobcore: resource-controller backend 'none': NOTHING IS LIMITED (no cgroups)")
            cls = type(self.controller)
            self._controller_class = f"{cls.__module__}:{cls.__qualname__}"
            self._inotify = linux.Inotify()
            self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            # epoll, not poll: registering a job's pidfd is O(1) from any thread, and a wake-up costs
            # nothing per job watched.
            self._epoll = select.epoll()
            self._epoll.register(self._inotify.fd, select.EPOLLIN)
            self._state_wd = self._inotify.add_watch(str(self.state_dir), _STATE_DIR_MASK)
            self._epoll.register(self._wake_r, select.EPOLLIN)
            self._launcher, self._launcher_sock = self._start_launcher()
            self._load_existing(sweep_unknown_cgroups)
            self._watcher = threading.Thread(target=self._watch, name="jobcore-watcher", daemon=True)
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

    def _start_launcher(self) -> tuple[subprocess.Popen[bytes], socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "jobcore.launcher", str(theirs.fileno()), self._controller_class],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                cwd="/",
                start_new_session=True,
            )
        finally:
            theirs.close()
        # Wait for the launcher's imports, so that a broken installation fails here, clearly.
        ours.settimeout(START_TIMEOUT)
        try:
            ready = ours.recv(16)
        except OSError:
            ready = b""
        ours.settimeout(None)
        if ready != b"ready":
            ours.close()
            proc.kill()
            proc.wait()
            raise WorkerError(f"the job launcher ({sys.executable} -m jobcore.launcher) failed to start")
        return proc, ours

    def close(self) -> None:
        """Stop watching and release every resource. Running jobs keep running."""
        if self.closed:
            return
        self.closed = True
        os.write(self._wake_w, b"x")
        self._watcher.join(timeout=10)
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.bump()
        self._release_resources()

    def _release_resources(self) -> None:
        sock = getattr(self, "_launcher_sock", None)
        if sock is not None:
            sock.close()
        launcher = getattr(self, "_launcher", None)
        if launcher is not None:
            try:
                launcher.wait(timeout=5)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait()
        for fd in list(getattr(self, "_by_pidfd", {})):
            os.close(fd)
        self._by_pidfd = {}
        epoll = getattr(self, "_epoll", None)
        if epoll is not None:
            epoll.close()
        inotify = getattr(self, "_inotify", None)
        if inotify is not None:
            inotify.close()
        for name in ("_wake_r", "_wake_w", "_lock_fd"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def __enter__(self) -> Worker:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self.closed:
            raise WorkerError("this Worker is closed")

    # ------------------------------------------------------------------ public API

    def start(self, spec: JobSpec) -> JobStatus:
        """Start `spec` as a job. Returns once the command has been exec'd, or with state
        FAILED_TO_START and the reason when it could not be. Raises InvalidSpec/InvalidLimit for a
        request that cannot be run here, before anything is created."""
        self._check_open()
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
        cwd = scratch or given or "/"
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
            record = {
                "id": job_id,
                "owner": spec.owner,
                "argv": list(spec.argv),
                "env": spec.exec_env(),
                "cwd": cwd,
                "user": None if spec.user is None else {"uid": user.uid, "gid": user.gid},
                "uid": user.uid,
                "gid": user.gid,
                "sandbox": None
                if not sandboxed
                else {
                    "hide": self.hidden_paths + _unreachable_ancestor(scratch, user, self.hidden_paths),
                    "scratch": scratch,
                    # An explicit cwd is bound in at its own path (visible even under the private
                    # /tmp), writable — except for uid 0, who owns most of the host: its explicit
                    # cwd stays read-only (its scratch directory and /tmp are writable). "/" is
                    # never bound; /tmp, /var/tmp and /dev/shm are the job's own already.
                    "cwd_bind": None
                    if given is None or given in _PRIVATE_CWDS
                    else ("ro" if user.uid == 0 else "rw"),
                },
                "namespaces": list(spec.isolation.enabled()),
                "limits": attrs.asdict(handle.applied()),
                "controller": self.controller.name,
                "controller_class": self._controller_class,
                "cgroup": handle.to_state(),
                "output_cap": self.output_cap,
                "created_at": time.time(),
            }
            jobdir.write_json(staging / jobdir.SPEC, record)
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
        job = _Job(job_id, directory, record)
        report = self._launch(job)
        if report.get("ok"):
            job.run = report["run"]
        else:
            job.exit = report.get("exit") or jobdir.read_json(directory / jobdir.EXIT)
        with self._lock:
            self._jobs[job_id] = job
        if job.exit is None:
            self._watch_job(job)
        return self._status(job)

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

    def _launch(self, job: _Job) -> dict[str, Any]:
        """Hand the job to the launcher and wait for its shim's report (a JSON line)."""
        import json

        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid_namespace = b"P" if "pid" in job.spec["namespaces"] else b"-"
            try:
                self._send_to_launcher(pid_namespace + os.fsencode(job.dir), report_w)
            except (OSError, WorkerError) as exc:
                self._record_lost(job, f"the launcher is gone ({exc}); the job was not started")
                raise WorkerError(
                    f"cannot start job {job.id}: the Worker's launcher is gone ({exc})"
                ) from exc
            finally:
                os.close(report_w)
            poller = select.poll()
            poller.register(report_r, select.POLLIN)
            chunks = []
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not poller.poll(int(remaining * 1000) + 1):
                    break
                chunk = os.read(report_r, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(report_r)
        line = b"".join(chunks)
        if line:
            result: dict[str, Any] = json.loads(line)
            return result
        # The shim died before reporting, or hung: whatever it recorded is the truth, else the job is lost.
        recorded = jobdir.read_json(job.dir / jobdir.EXIT)
        if recorded is not None:
            return {"ok": False, "exit": recorded}
        run = jobdir.read_json(job.dir / jobdir.RUN)
        if run is not None:
            return {"ok": True, "run": run}
        self._record_lost(job, f"the job's shim did not report within {START_TIMEOUT:.0f} s of its start")
        return {"ok": False, "exit": job.exit}

    def _send_to_launcher(self, message: bytes, fd: int) -> None:
        """Send one job to the launcher; if the launcher died (killed by someone), start a new one
        and send again. Jobs already running are not affected: their shims do not need it."""
        fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        with self._send_lock:
            try:
                self._launcher_sock.sendmsg([message], fds)
                return
            except OSError:
                if self._launcher.poll() is None:
                    raise
            log.warning("jobcore: the launcher (pid %d) died; starting a new one", self._launcher.pid)
            self._launcher_sock.close()
            self._launcher, self._launcher_sock = self._start_launcher()
            self._launcher_sock.sendmsg([message], fds)

    def status(self, job_id: str) -> JobStatus:
        """The job's current status. Raises InvalidJobId or JobNotFound."""
        job = self._get(job_id)
        if job.exit is None and not job.dir.is_dir():
            self._job_vanished(job)
        return self._status(job)

    def list(self, owner: str | None = None) -> list[JobStatus]:
        """Every job (or `owner`'s), oldest first."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if owner is None or j.spec["owner"] == owner]
        jobs.sort(key=lambda j: j.spec.get("created_at", 0))
        return [self._status(j) for j in jobs]

    def running_count(self, owner: str | None = None) -> int:
        """How many jobs (of `owner`) are running; cheaper than `list()`, which reads usage."""
        with self._lock:
            return sum(
                1
                for j in self._jobs.values()
                if j.exit is None and (owner is None or j.spec["owner"] == owner)
            )

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
        vanished = False
        with job.cond:  # one stop request written at a time; the earliest deadline wins
            now = time.time()
            previous = _read_or_none(job.dir / jobdir.STOP)
            if previous is None:
                _remove_damaged(job.dir / jobdir.STOP)
            request = {"grace": grace, "requested_at": now}
            if previous is not None and previous["requested_at"] + previous["grace"] < now + grace:
                request = previous
            try:
                jobdir.write_json(job.dir / jobdir.STOP, request)
            except FileNotFoundError:
                vanished = not job.dir.is_dir()
                if not vanished:
                    raise
        if vanished:
            self._job_vanished(job)
            return self._status(job)
        self._signal_shim(job, signal.SIGTERM)
        deadline = request["requested_at"] + request["grace"] + KILL_TIMEOUT
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
        with self._lock:
            self._jobs.pop(job_id, None)
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
        return OutputReader(self, job, offset, follow, chunk_size)

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

    def _get(self, job_id: str) -> _Job:
        jobdir.check_job_id(job_id)
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def _status(self, job: _Job) -> JobStatus:
        spec, run, ended = job.spec, job.run, job.exit
        usage = ResourceUsage()
        if ended is not None:
            state = JobState(ended["state"])
            usage = ResourceUsage(**ended.get("usage") or {})
            output_bytes = ended.get("output_bytes", 0)
        else:
            state = JobState.RUNNING
            try:
                usage = job.handle(self.controller).stats()
            except Exception as exc:  # a cgroup that just went away: report no usage rather than fail
                log.debug("stats of job %s: %s", job.id, exc)
            try:
                output_bytes = os.stat(job.dir / jobdir.OUTPUT).st_size
            except FileNotFoundError:
                output_bytes = 0
        ended = ended or {}
        return JobStatus(
            id=job.id,
            owner=spec["owner"],
            argv=tuple(spec["argv"]),
            state=state,
            cwd=spec["cwd"],
            pid=run["pid"] if run else None,
            exit_code=ended.get("exit_code"),
            signal=ended.get("signal"),
            oom_killed=ended.get("oom_killed", False),
            started_at=run["started_at"] if run else None,
            ended_at=ended.get("ended_at"),
            reason=ended.get("reason"),
            stop_requested=(job.dir / jobdir.STOP).exists(),
            usage=usage,
            limits=Limits(**spec["limits"]),
            controller=spec["controller"],
            namespaces=tuple(spec["namespaces"]) if run else (),
            output_bytes=output_bytes,
            output_capped=ended.get("output_capped", False),
            uid=spec.get("uid"),
            gid=spec.get("gid"),
            sandboxed=spec.get("sandbox") is not None,
        )

    def _signal_shim(self, job: _Job, signum: int) -> None:
        try:
            if job.pidfd is not None:
                signal.pidfd_send_signal(job.pidfd, signum)
        except ProcessLookupError:
            pass  # it is ending; the watcher will see it

    def _record_lost(self, job: _Job, reason: str, *, trust_records: bool = True) -> None:
        """Mark a job whose shim is gone without an exit record (or whose records are damaged) as
        LOST, and kill what is left of it: its shim, its command and everything in its cgroup."""
        _kill_shim_of(job.dir)
        run = _read_or_none(job.dir / jobdir.RUN) if trust_records else None
        if run and linux.process_start_ticks(run["pid"]) == run.get("pid_start_ticks"):
            try:
                os.kill(run["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            job.handle(self.controller).destroy()
        except Exception as exc:
            log.warning("cleanup of lost job %s: %s", job.id, exc)
        recorded = _read_or_none(job.dir / jobdir.EXIT) if trust_records else None
        if recorded is not None:
            job.exit = recorded
            return
        job.exit = {"state": JobState.LOST.value, "ended_at": time.time(), "reason": reason}
        try:
            _remove_damaged(job.dir / jobdir.EXIT)
            jobdir.write_json(job.dir / jobdir.EXIT, job.exit, durable=True)
        except OSError as exc:
            # Known in memory; a later Worker finds the shim gone and decides the same again.
            log.error("cannot record that job %s is lost: %s", job.id, exc)

    def _job_vanished(self, job: _Job) -> None:
        """The directory of a running job is gone (removed by hand, a wiped disk): nothing can be
        recorded for it any more, but it is still ended: its shim is killed through its pidfd and
        everything in its cgroup is killed; the job is LOST (in memory; there is nowhere to write)."""
        with job.cond:
            if job.exit is not None:
                return
            job.exit = {"state": JobState.LOST.value, "ended_at": time.time(), "reason": VANISHED_REASON}
        log.warning("jobcore: the directory of running job %s vanished; killing the job", job.id)
        with self._lock:
            pidfd = job.pidfd
            if pidfd is not None:
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            job.handle(self.controller).destroy()
        except Exception as exc:
            log.warning("cleanup of vanished job %s: %s", job.id, exc)
        self._ended(job)

    def _ended(self, job: _Job) -> None:
        """A job's end is known: stop watching it, wake its waiters, tell the callback."""
        self._unwatch(job)
        job.bump()
        if self._on_job_ended is not None:
            try:
                self._on_job_ended(self._status(job))
            except Exception:
                log.exception("on_job_ended callback failed for job %s", job.id)

    def _load_existing(self, sweep_unknown: bool) -> None:
        """Re-attach to the jobs of an earlier Worker; mark those whose shim vanished as LOST."""
        running: set[str] = set()
        abandoned: set[str] = set()
        for entry in sorted(self.state_dir.iterdir()):
            if entry.name.startswith(".") and entry.name.endswith(".new"):
                # A start interrupted (the Worker's process killed) before its job directory was in
                # place: the job never ran; whatever cgroup it got is removed by the sweep below.
                abandoned.add(entry.name[1:].removesuffix(".new"))
                shutil.rmtree(entry, ignore_errors=True)
                continue
            if not jobdir.JOB_ID_RE.match(entry.name) or not entry.is_dir():
                continue
            try:
                if self._load_job(entry):
                    running.add(entry.name)
            except CorruptStateFile as exc:
                # One damaged job must never keep the Worker (and so the server) from starting.
                log.warning("jobcore: job %s is lost: %s", entry.name, exc)
                if not self._lose_corrupt_job(entry, exc):
                    abandoned.add(entry.name)  # its cgroup, if any, is killed and removed below

        def is_live(_owner: str, job_id: str) -> bool:
            if job_id in self._jobs:
                return job_id in running
            if job_id in abandoned:
                return False
            return not sweep_unknown

        for path in self.controller.sweep(is_live):
            log.info("removed stale cgroup %s", path)

    def _load_job(self, entry: Path) -> bool:
        """Re-attach to the job in `entry`; True when it is running. Raises CorruptStateFile for a
        damaged record (before the job is registered)."""
        spec = jobdir.read_record(entry / jobdir.SPEC)
        if spec is None:
            raise CorruptStateFile(entry / jobdir.SPEC, "is missing")
        if spec["id"] != entry.name:
            raise CorruptStateFile(entry / jobdir.SPEC, f"names job {spec['id']!r}, not {entry.name}")
        job = _Job(entry.name, entry, spec)
        job.run = jobdir.read_record(entry / jobdir.RUN)
        job.exit = jobdir.read_record(entry / jobdir.EXIT)
        shim = jobdir.read_record(entry / jobdir.SHIM) if job.exit is None else None
        if job.exit is None and shim is None:
            raise CorruptStateFile(entry / jobdir.SHIM, "is missing (the shim left no record of itself)")
        try:
            self._status(job)  # every field a status needs, of the right kind
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStateFile(entry, f"its records do not make a job status ({exc!r})") from None
        with self._lock:
            self._jobs[job.id] = job
        if job.exit is not None:
            return False
        alive = shim is not None and linux.process_start_ticks(shim["pid"]) == shim["start_ticks"]
        if alive and self._watch_job(job):
            return True
        if job.exit is None:
            self._record_lost(job, "the job's shim exited without recording how the job ended")
        return False

    def _lose_corrupt_job(self, entry: Path, error: CorruptStateFile) -> bool:
        """A job with a damaged record: kill whatever runs of it and mark it LOST (its other records
        replaced by a LOST exit.json). Without a usable spec.json the job cannot be described at all:
        its directory is moved to `.quarantine/` and False is returned (the cgroup sweep removes it)."""
        try:
            spec = jobdir.read_record(entry / jobdir.SPEC)
        except CorruptStateFile:
            spec = None
        if spec is None or spec.get("id") != entry.name:
            _kill_shim_of(entry)
            quarantine = self.state_dir / ".quarantine"
            try:
                quarantine.mkdir(mode=0o700, exist_ok=True)
                os.rename(entry, quarantine / f"{entry.name}.{time.time_ns()}")
                log.warning("jobcore: moved %s to %s", entry, quarantine)
            except OSError as exc:
                log.error("jobcore: cannot move %s to %s: %s", entry, quarantine, exc)
            return False
        job = _Job(entry.name, entry, spec)
        with self._lock:
            self._jobs[job.id] = job
        self._record_lost(job, f"a file of the job's state is damaged: {error}", trust_records=False)
        return True

    def _watch_job(self, job: _Job) -> bool:
        """Start watching a running job (inotify on its directory, pidfd on its shim). Returns False
        when the job turned out to have ended meanwhile (its status is then final)."""
        shim = jobdir.read_json(job.dir / jobdir.SHIM)
        if shim is None:
            self._record_lost(job, "the job's shim left no record of itself")
            return False
        job.shim_pid = shim["pid"]
        job.wd = self._inotify.add_watch(str(job.dir), _WATCH_MASK)
        try:
            job.pidfd = os.pidfd_open(shim["pid"])
        except ProcessLookupError:
            job.pidfd = None
        with self._lock:
            self._by_wd[job.wd] = job
            if job.pidfd is not None:
                self._by_pidfd[job.pidfd] = job
                self._epoll.register(job.pidfd, select.EPOLLIN)
        # Whatever happened before the watches existed: look once more.
        if jobdir.read_json(job.dir / jobdir.EXIT) is not None or job.pidfd is None:
            self._job_changed(job, shim_gone=job.pidfd is None)
            return job.exit is None
        return True

    def _unwatch(self, job: _Job) -> None:
        with self._lock:
            if job.wd is not None:
                self._by_wd.pop(job.wd, None)
                self._inotify.rm_watch(job.wd)
                job.wd = None
            if job.pidfd is not None:
                self._forget_pidfd(job.pidfd)
                job.pidfd = None

    def _forget_pidfd(self, fd: int) -> None:
        """Stop watching a shim's pidfd and close it (with self._lock held)."""
        if self._by_pidfd.pop(fd, None) is not None:
            self._epoll.unregister(fd)
            os.close(fd)

    def _job_changed(self, job: _Job, shim_gone: bool = False) -> None:
        if job.exit is None:
            recorded = jobdir.read_json(job.dir / jobdir.EXIT)
            if recorded is None and shim_gone:
                self._record_lost(job, "the job's shim exited without recording how the job ended")
            elif recorded is not None:
                with job.cond:
                    if job.run is None:
                        job.run = jobdir.read_json(job.dir / jobdir.RUN)
                    job.exit = recorded
            if job.exit is not None:
                self._ended(job)
                return
        if job.run is None:
            job.run = jobdir.read_json(job.dir / jobdir.RUN)
        job.bump()

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
                    changed: dict[str, _Job] = {}
                    gone: dict[str, _Job] = {}
                    for wd, _mask, name in self._inotify.read_events():
                        with self._lock:
                            job = self._jobs.get(name) if wd == self._state_wd else self._by_wd.get(wd)
                        if job is None:
                            continue
                        if wd == self._state_wd:
                            gone[job.id] = job
                        else:
                            changed[job.id] = job
                    for job in changed.values():
                        self._job_changed_safely(job, shim_gone=False)
                    for job in gone.values():
                        if job.exit is None and not job.dir.is_dir():
                            self._job_vanished(job)
                else:
                    with self._lock:
                        job = self._by_pidfd.get(fd)
                    # The fd may belong to another job by now (closed and reused within this batch):
                    # only a pidfd that is readable right now says its shim is gone.
                    if job is None or job.pidfd != fd or not _readable(fd):
                        continue
                    if not self._job_changed_safely(job, shim_gone=True):
                        with self._lock:  # a pidfd stays readable: never handle it again
                            self._forget_pidfd(fd)
                            job.pidfd = None

    def _job_changed_safely(self, job: _Job, shim_gone: bool) -> bool:
        """`_job_changed`, but one job's trouble (a full disk...) never ends the watching."""
        try:
            self._job_changed(job, shim_gone=shim_gone)
        except Exception:
            log.exception("jobcore watcher: handling a change of job %s failed", job.id)
            return False
        return True


def _read_or_none(path: Path) -> dict[str, Any] | None:
    """A record, or None when it is absent or damaged (for callers that decide without it)."""
    try:
        return jobdir.read_record(path)
    except CorruptStateFile as exc:
        log.warning("jobcore: ignoring %s", exc)
        return None


def _remove_damaged(path: Path) -> None:
    """Remove a directory found where a record file belongs, so that the record can be written."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)


def _wait_shim_gone(directory: Path, timeout: float) -> None:
    """Wait (bounded, on a pidfd) until the job's shim, if shim.json names one still alive, exits."""
    shim = _read_or_none(directory / jobdir.SHIM)
    if shim is None:
        return
    try:
        pidfd = os.pidfd_open(shim["pid"])
    except ProcessLookupError:
        return
    try:
        if linux.process_start_ticks(shim["pid"]) == shim["start_ticks"]:  # not a reused pid
            select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)


def _kill_shim_of(directory: Path) -> None:
    """SIGKILL the job's shim if shim.json names a live one (checked by its start time, so a reused
    pid is never hit). The shim of a job with a PID namespace is its PID 1: the kernel then kills every
    process of the job."""
    shim = _read_or_none(directory / jobdir.SHIM)
    if shim is None or linux.process_start_ticks(shim["pid"]) != shim["start_ticks"]:
        return
    try:
        os.kill(shim["pid"], signal.SIGKILL)
    except ProcessLookupError:
        pass


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


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def _check_grace(grace: float) -> float:
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not math.isfinite(grace) or grace < 0:
        raise InvalidSpec(f"grace must be a non-negative number of seconds, got {grace!r}")
    return float(grace)
