"""The per-job shim (the conmon pattern), which is also the job's init (PID 1 of its PID namespace).

The launcher forks — into a fresh PID namespace when the job has one — and the child calls
`run_shim`, which never returns. Each duty is one function:

    detach → record itself → spawn the command → report → copy output → forward signals and handle
    stop requests → reap orphans → kill leftovers → record the exit → destroy the cgroup

The command's process, between fork and exec, joins the job's cgroup(s) before anything else, then
enters its namespaces and the sandbox (`jobcore.command`, `jobcore.sandbox`). The shim itself stays
outside the cgroup and in the host's mount and network namespaces: it must survive `cgroup.kill` and
the OOM killer to record how the job ended. It is non-dumpable: the job cannot reach it through /proc.

The shim talks to the Worker only through files in the job directory, the one-shot report pipe (a
JSON line: started or failed), and signals: SIGTERM with a stop.json present = "stop the job".
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # the C module under `signal` (no stub)
import errno
import json
import os
import select
import signal
import time
from pathlib import Path
from typing import Any, NoReturn

from jobcore import jobdir, linux, records
from jobcore.command import StartError, spawn_command
from jobcore.controllers import Handle, handle_from_state
from jobcore.errors import CorruptStateFile
from jobcore.output_log import STDERR, STDOUT, OutputWriter
from jobcore.records import ExitRecord, RunRecord, ShimRecord, SpecRecord, StopRequest
from jobcore.status import JobState, ResourceUsage

PIPE_SIZE = 1 << 20
#: The name `ps -o comm`, `top` and perf show for a shim (until its command's exec, its child's too).
SHIM_NAME = "jobcore-shim"
#: Where a shim notes its own problems, in the job directory.
SHIM_ERRORS = "shim.err"
#: After the command ends, how long leftovers may keep the output pipes open before they are dropped.
DRAIN_TIMEOUT = 5.0
#: A round of the shim's loop that moved less than this, at less than this per TRICKLE_HOLD, is a
#: trickle: the next round waits TRICKLE_HOLD seconds (what arrives meanwhile waits in the pipe, up to
#: PIPE_SIZE), so that a command writing a few bytes at a time costs one round, one index record per
#: stream and one inotify event of the Worker per hold rather than per write. Its followers see that
#: output, and its index times it, up to that much later; output at 6.5 MB/s or more is never held.
TRICKLE_BYTES = 64 * 1024
TRICKLE_HOLD = 0.01
#: The hold while the index is larger than the output by INDEX_ALLOWANCE (records of a few bytes each):
#: what bounds the index, which neither the output cap nor the server's quota counts, by the output.
SPARSE_HOLD = 1.0
INDEX_ALLOWANCE = 64 * 1024

#: Signals the shim passes on to the command (SIGTERM only when it is not a stop request).
FORWARDED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)

#: What the shim installs its handler for (the signals as plain ints, for `_signal`).
_HANDLED_SIGNALS = tuple(int(sig) for sig in (signal.SIGCHLD, *FORWARDED_SIGNALS))


def trickle_hold(moved: int, elapsed: float, index_size: int, output_size: int) -> float | None:
    """How long the shim's next round waits after one that moved `moved` bytes `elapsed` seconds after
    the round before (None: not at all). A trickle — little moved, at under TRICKLE_BYTES per
    TRICKLE_HOLD (a fast writer caught as it refills the pipe moves little too, but in no time) — waits
    TRICKLE_HOLD, or SPARSE_HOLD while the index is larger than the output by INDEX_ALLOWANCE."""
    if not 0 < moved < TRICKLE_BYTES or moved * TRICKLE_HOLD >= TRICKLE_BYTES * elapsed:
        return None
    return SPARSE_HOLD if index_size > output_size + INDEX_ALLOWANCE else TRICKLE_HOLD


#: A job's spec record and its cgroup handle, rebuilt from the record's state.
Prepared = tuple[SpecRecord, Handle]


def prepare(directory: str) -> Prepared:
    """Read the job's spec and rebuild its cgroup handle (no controller needed). The launcher calls
    this before it forks the shim: what it builds (and the converter's work) is then in pages the
    shim shares with the launcher instead of in the shim's own (docs/benchmarks.md).

    What `records.read` does, on the success path, with the job's paths as strings: the launcher and
    the shim use no pathlib (its code would be more pages of the launcher's for each job to copy).
    When this raises, the shim reads the spec again with `records.read` (`Shim`), whose error it
    records."""
    path = f"{directory}/{jobdir.SPEC}"
    spec = records.structure(json.loads(linux.read_small_file(path)), SpecRecord, path)
    return spec, handle_from_state(spec.cgroup, controller_class=spec.controller_class)


def _prepare_again(directory: str) -> Prepared:
    """`prepare` with `records.read`'s errors: for a shim whose launcher could not prepare its job."""
    spec = records.read(Path(directory, jobdir.SPEC), SpecRecord)
    if spec is None:
        raise RuntimeError(f"{directory}: no spec.json")
    return spec, handle_from_state(spec.cgroup, controller_class=spec.controller_class)


#: The converter's unstructure function of each record the shim writes, looked up once here (in the
#: launcher, which imports this module before any fork): what `records.unstructure` dispatches to,
#: without running the converter's dispatch in every shim.
_UNSTRUCTURE: dict[type[Any], Any] = {
    cls: records.converter.get_unstructure_hook(cls) for cls in (ShimRecord, RunRecord, ExitRecord)
}


def unstructure(record: ShimRecord | RunRecord | ExitRecord) -> dict[str, Any]:
    """`records.unstructure(record)` for the records a shim writes."""
    data: dict[str, Any] = _UNSTRUCTURE[type(record)](record)
    return data


def write_record(path: str, record: ShimRecord | RunRecord | ExitRecord, *, durable: bool = False) -> None:
    """`records.write` for a path given as a string (see `prepare`)."""
    jobdir.write_json(path, unstructure(record), durable=durable)


# ---------------------------------------------------------------------------------------------- shim


class Shim:
    """The supervisor of one job, in its own process (see the module docstring)."""

    def __init__(self, directory: str, report_fd: int, wake_r: int, job: Prepared | None = None) -> None:
        #: The job directory, as a string (see `prepare`).
        self.dir = directory
        self.report_fd = report_fd
        self.wake_r = wake_r
        self.spec, self.handle = job or _prepare_again(directory)
        # kill(-1) is our way to empty the job's PID namespace; it must never run outside one, where it
        # would signal every process of the host. Being PID 1 is the proof.
        self.in_pid_namespace = os.getpid() == 1
        #: The command's pid as the shim sees it (in the job's PID namespace when it has one).
        self.command_pid = 0
        self.command_status: int | None = None
        self.kill_deadline: float | None = None
        self.killed_hard = False
        self.reason: str | None = None
        self.writer: OutputWriter | None = None
        #: The reserve file's path (`_reserve_space`), once made.
        self.reserve: str | None = None
        self._stopping = False

    # -- start

    def record_self(self) -> None:
        # /proc is the host's (we keep the host's mount namespace), so /proc/self is our host pid even
        # when os.getpid() says 1.
        me = int(os.readlink("/proc/self"))
        record = ShimRecord(pid=me, start_ticks=linux.process_start_ticks(me))
        write_record(f"{self.dir}/{jobdir.SHIM}", record)

    def report(self, message: dict[str, Any]) -> None:
        if self.report_fd < 0:
            return
        try:
            os.write(self.report_fd, json.dumps(message).encode() + b"\n")
        except OSError:
            pass  # the Worker went away; the files in the job directory still tell the story
        os.close(self.report_fd)
        self.report_fd = -1

    def start(self) -> tuple[dict[str, int], RunRecord]:
        """Spawn the command, and open the output log and the reserve (`open_output`) while its
        process sets itself up. Returns the output pipes and run.json's content. Raises StartError,
        with neither the log nor the reserve left behind."""
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        linux.set_pipe_size(out_r, PIPE_SIZE)
        try:
            command = spawn_command(self.spec, self.handle, out_w, err_w, meanwhile=self.open_output)
        except StartError as exc:
            for fd in (out_r, err_r):
                os.close(fd)
            if exc.stage == OUTPUT_STAGE:  # the command did start: it, and whatever it forked, must go
                self.kill_leftovers()
            self.discard_output()
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        command.returncode = 0  # we reap it ourselves (waitpid(-1) also collects orphans)
        self.command_pid = command.pid
        host_pid = next(iter(linux.child_pids_of_self()), command.pid)
        run = RunRecord(pid=host_pid, start_ticks=linux.process_start_ticks(host_pid), started_at=time.time())
        return {"out": out_r, "err": err_r}, run

    def open_output(self) -> None:
        """The job's output log, and the space set aside for its exit record. StartError (stage
        "output") when the log cannot be created: a job has nowhere to put its output without it."""
        self.reserve = _reserve_space(self.dir)
        try:
            self.writer = OutputWriter(self.dir, self.spec.output_cap)
        except OSError as exc:
            # No path in the reason: it is the job owner's to read, and the state directory is not.
            raise StartError(
                OUTPUT_STAGE,
                f"the job's output could not be stored ({os.strerror(exc.errno or errno.EIO)}): "
                "the job was stopped as it started",
                exc.errno,
            ) from exc

    def discard_output(self) -> None:
        """Undo `open_output` for a job that did not start: its directory is as before the attempt."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        for path in (f"{self.dir}/{jobdir.OUTPUT}", f"{self.dir}/{jobdir.OUTPUT_INDEX}", self.reserve):
            if path is not None:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        self.reserve = None

    # -- running

    def on_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            return
        if signum == signal.SIGTERM and os.path.exists(f"{self.dir}/{jobdir.STOP}"):
            self.on_stop_request()
        elif self.command_status is None:
            try:
                os.kill(self.command_pid, signum)
            except ProcessLookupError:
                pass

    def on_stop_request(self) -> None:
        try:
            request = records.read(Path(self.dir, jobdir.STOP), StopRequest)
        except CorruptStateFile as exc:
            note(self.dir, f"stop request unreadable, stopping at once: {exc}")
            request = None
        remaining = (request.deadline if request else time.time()) - time.time()
        deadline = time.monotonic() + max(0.0, remaining)
        if self.kill_deadline is None or deadline < self.kill_deadline:
            self.kill_deadline = deadline
        if not self._stopping:
            self._stopping = True
            self.reason = "stopped by request"
            if self.command_status is None:
                try:
                    os.kill(self.command_pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def kill_job(self) -> None:
        """SIGKILL every process of the job (a hard stop)."""
        self.killed_hard = True
        self.kill_leftovers()

    def kill_leftovers(self) -> None:
        """SIGKILL every process of the job: through the cgroup, and through the process tree — as
        PID 1 of the job's PID namespace (kill(-1) reaches everything in it) or as the job's subreaper
        (every orphan re-parents to us) — so even a job without cgroups leaves nothing behind."""
        self.kill_deadline = None
        try:
            self.handle.kill()
        except Exception as exc:
            note(self.dir, f"cgroup kill failed: {exc}")
        if self.in_pid_namespace:
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.reap()
        else:
            kill_descendants(self.reap)

    def reap(self) -> None:
        """Collect every dead child: the command (its status is the job's) and adopted orphans."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.command_pid:
                self.command_status = status

    def supervise(self, pipes: dict[str, int]) -> None:
        """Copy output until the command has ended and the pipes are drained; handle signals.

        A round that moved less than TRICKLE_BYTES, at under TRICKLE_BYTES per TRICKLE_HOLD since the
        round before, holds the next one back for TRICKLE_HOLD seconds (SPARSE_HOLD while the index
        outgrows the output), signals still handled at once: a command writing a byte at a time then
        costs its shim, the Worker's watcher and the index one round per hold, not one per write, and
        output faster than that is never held."""
        assert self.writer is not None
        poller = select.poll()
        streams = {pipes["out"]: STDOUT, pipes["err"]: STDERR}
        for fd in streams:
            poller.register(fd, select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        signals_only = select.poll()
        signals_only.register(self.wake_r, select.POLLIN)
        open_fds = set(streams)
        drain_deadline: float | None = None
        hold_until: float | None = None
        last_round = time.monotonic()
        while open_fds or self.command_status is None:
            now = time.monotonic()
            held = hold_until is not None and now < hold_until and self.command_status is None
            deadlines = [
                d for d in (self.kill_deadline, drain_deadline, hold_until if held else None) if d is not None
            ]
            timeout = None if not deadlines else max(0, int((min(deadlines) - now) * 1000) + 1)
            signalled = False
            moved = 0
            for fd, _event in (signals_only if held else poller).poll(timeout):
                if fd == self.wake_r:
                    signalled = True
                    for signum in os.read(self.wake_r, 512):
                        self.on_signal(signum)
                    continue
                taken, eof = self.writer.drain_pipe(fd, streams[fd])
                moved += taken
                if eof:
                    poller.unregister(fd)
                    open_fds.discard(fd)
                    os.close(fd)
                if not self.killed_hard and (self.writer.capped or self.writer.write_error is not None):
                    self.reason = self._output_stopped_reason()
                    self.kill_job()
            self.writer.flush_index()
            if signalled:
                self.reap()
            now = time.monotonic()
            if not held:
                hold = trickle_hold(moved, now - last_round, self.writer.index_size, self.writer.size)
                hold_until = None if hold is None else now + hold
                last_round = now
            if self.kill_deadline is not None and now >= self.kill_deadline:
                self.kill_job()
            if self.command_status is not None and drain_deadline is None:
                # The command is gone; whatever it left running (still holding the pipes, perhaps) dies.
                self.kill_leftovers()
                drain_deadline = now + DRAIN_TIMEOUT
            if drain_deadline is not None and now >= drain_deadline:
                for fd in open_fds:
                    os.close(fd)
                open_fds.clear()

    def _output_stopped_reason(self) -> str:
        assert self.writer is not None
        if self.writer.write_error is not None:
            return (
                f"the job's output could not be stored ({os.strerror(self.writer.write_error)}): "
                f"it was stopped after {self.writer.size} bytes"
            )
        return f"output reached the cap of {self.writer.cap} bytes"

    # -- end

    def finish(self) -> ExitRecord:
        """Collect the verdict, clean up the cgroup, and return exit.json's content."""
        status = self.command_status
        assert status is not None
        oom = bool(_safe(self.dir, self.handle.oom_killed, False))
        usage = _safe(self.dir, self.handle.stats, None) or ResourceUsage()
        try:
            self.handle.destroy()
        except Exception as exc:
            note(self.dir, f"cgroup cleanup failed: {exc}")
        if self.writer is not None and self.writer.write_error is not None and self.reason is None:
            self.reason = self._output_stopped_reason()
        signalled = os.WIFSIGNALED(status)
        if signalled and oom and self.reason is None:
            self.reason = "killed by the OOM killer (memory limit reached)"
        return ExitRecord(
            state=JobState.KILLED if signalled else JobState.EXITED,
            ended_at=time.time(),
            exit_code=None if signalled else os.WEXITSTATUS(status),
            signal=os.WTERMSIG(status) if signalled else None,
            oom_killed=oom,
            usage=usage,
            output_bytes=self.writer.size if self.writer else 0,
            output_capped=bool(self.writer and self.writer.capped),
            reason=self.reason,
        )

    def fail(self, exc: StartError) -> None:
        _safe(self.dir, self.handle.destroy, None)
        exit_info = ExitRecord(
            state=JobState.FAILED_TO_START,
            ended_at=time.time(),
            reason=str(exc),
            stage=exc.stage,
            errno=exc.errno,
        )
        write_record(f"{self.dir}/{jobdir.EXIT}", exit_info, durable=True)
        self.report({"ok": False, "exit": unstructure(exit_info)})


def kill_descendants(reap: Any) -> None:
    """SIGKILL every descendant of the calling process, repeated until none is left (a process may
    fork while we walk); `reap` collects the dead. For use outside a PID namespace, where /proc's
    pids are the caller's."""
    for _ in range(1000):
        children = linux.child_pids_of_self()
        if not children:
            return
        stack = list(children)
        while stack:
            child = stack.pop()
            stack.extend(linux.child_pids(child))
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        reap()


def note(directory: str | Path, message: str) -> None:
    """Record a problem of the shim's in `<job dir>/shim.err` (the shim has no terminal or log)."""
    try:
        with open(os.path.join(directory, SHIM_ERRORS), "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n")
    except OSError:
        pass  # nowhere left to say it (a full disk): the exit record still tells how the job ended


def _safe(directory: str, fn: Any, default: Any) -> Any:
    try:
        return fn()
    except Exception as exc:
        note(directory, f"{getattr(fn, '__name__', fn)} failed: {exc}")
        return default


def _detach() -> int:
    """New session, no terminal or inherited output (the Worker's stdout may be a pipe that must
    close when the Worker exits); every signal the shim handles arrives on a wake-up fd."""
    os.setsid()
    linux.set_process_name(SHIM_NAME)
    # Nobody but root with CAP_SYS_PTRACE may open our /proc entries (root, ns/*, environ, fd/...):
    # not a job running as root without capabilities, whose init (PID 1) we are.
    linux.prctl(linux.PR_SET_DUMPABLE, 0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    # `_signal`'s functions, not `signal`'s wrappers around them, which convert every argument and
    # result to and from enums: Python code that would run for the first time in each shim.
    _signal.pthread_sigmask(signal.SIG_SETMASK, ())
    _signal.signal(signal.SIGPIPE, _signal.SIG_IGN)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)

    def noop(_signum: int, _frame: object) -> None:
        return None

    # Handlers, not SIG_IGN: the command then starts with default dispositions for all of them.
    for sig in _HANDLED_SIGNALS:
        _signal.signal(sig, noop)
    # Outside a PID namespace, orphans of the job re-parent to us instead of the host's init.
    linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
    return wake_r


#: Space set aside at start so that exit.json can be written even once the state disk is full.
RESERVE_BYTES = 64 * 1024
#: The StartError stage of a job whose output log could not be created (its command had started).
OUTPUT_STAGE = "output"


def _reserve_space(directory: str) -> str | None:
    """Set aside RESERVE_BYTES in `directory`; its path, or None (best effort: without it, a full disk
    may cost the exit record) with no file left behind."""
    path = f"{directory}/.reserve"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        os.posix_fallocate(fd, 0, RESERVE_BYTES)
    except OSError:
        try:
            os.unlink(path)  # an empty reserve would only be a file to clean up
        except OSError:
            pass
        return None
    finally:
        os.close(fd)
    return path


def _write_exit(directory: str, exit_info: ExitRecord, reserve: str | None) -> None:
    """Record how the job ended; on a full disk, give back the reserve and try again."""
    path = f"{directory}/{jobdir.EXIT}"
    try:
        write_record(path, exit_info, durable=True)
    except OSError as exc:
        if reserve is None or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        os.unlink(reserve)
        reserve = None
        write_record(path, exit_info, durable=True)
    finally:
        if reserve is not None:
            try:
                os.unlink(reserve)
            except FileNotFoundError:
                pass


def run_shim(
    directory: str, report_fd: int, launch_error: StartError | None = None, job: Prepared | None = None
) -> NoReturn:
    """Entry point in the launcher's forked child, with the job `prepare`d before the fork (None: the
    launcher could not; the shim tries, and records why it fails). Never returns."""
    code = 0
    try:
        wake_r = _detach()
        shim = Shim(directory, report_fd, wake_r, job)
        shim.record_self()
        try:
            if launch_error is not None:
                raise launch_error
            pipes, run = shim.start()
        except StartError as exc:
            shim.fail(exc)
        else:
            assert shim.writer is not None  # start() opened it
            write_record(f"{directory}/{jobdir.RUN}", run)
            shim.report({"ok": True, "run": unstructure(run)})
            shim.supervise(pipes)
            shim.writer.close()
            exit_info = shim.finish()
            _write_exit(directory, exit_info, shim.reserve)
    except BaseException as exc:  # the shim must never die silently: leave a trace in the job dir
        code = 1
        note(directory, f"the shim failed: {type(exc).__name__}: {exc}")
    os._exit(code)
