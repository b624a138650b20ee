"""The per-job shim (the conmon pattern) and the job's init.

The launcher forks; the child calls `run_shim`, which never returns. Each duty is one function:

    shim:  detach → unshare namespaces → fork init → wait for exec → copy output → handle stop
           requests → reap → kill leftovers → record exit → destroy cgroup
    init:  join cgroup → private mounts, /proc, lo, hostname → fork+exec the command → forward
           signals → reap orphans → report the command's wait status → exit with it

The shim talks to the Worker only through files in the job directory, the one-shot report pipe
(a JSON line: started or failed), and signals: SIGTERM = "read stop.json and stop the job".
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from jobcore import jobdir, linux
from jobcore.controllers.base import Handle, ResourceController
from jobcore.output_log import STDERR, STDOUT, OutputWriter

PIPE_SIZE = 1 << 20
#: After the command ends, how long leftovers may keep the output pipes open before they are dropped.
DRAIN_TIMEOUT = 5.0
_FORWARDED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


def load_controller_class(path: str) -> type[ResourceController]:
    module, _, name = path.partition(":")
    cls: type[ResourceController] = getattr(importlib.import_module(module), name)
    return cls


class StartError(Exception):
    """The job cannot start; `stage` says which step failed."""

    def __init__(self, stage: str, message: str, err: int | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.errno = err


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        text = exc.strerror or os.strerror(exc.errno)
        where = f": {exc.filename}" if exc.filename else ""
        return f"{text} ({errno.errorcode.get(exc.errno, exc.errno)}){where}"
    return str(exc)


# --------------------------------------------------------------------------------------------- init


def _init_setup(spec: dict[str, Any], handle: Handle) -> None:
    """Everything the job's first process does before the command exists. Raises StartError."""
    try:
        handle.enter(0)
    except Exception as exc:
        raise StartError("cgroup", f"cannot join the job's cgroup: {_describe(exc)}") from exc
    namespaces = set(spec["namespaces"])
    # The PID namespace was made by the shim (it applies to children); the rest we enter ourselves, so
    # that the shim stays in the host's mount namespace and keeps seeing the host's /proc.
    flags = 0
    for name in namespaces - {"pid"}:
        flags |= linux.NAMESPACE_FLAGS[name]
    if flags:
        try:
            linux.unshare(flags)
        except OSError as exc:
            asked = ", ".join(sorted(namespaces - {"pid"}))
            raise StartError(
                "namespaces", f"the host refused new namespaces ({asked}): {_describe(exc)}", exc.errno
            ) from exc
    try:
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        if "pid" not in namespaces:
            # Without a PID namespace, orphans of the command re-parent to us instead of the host's init.
            linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
        if "mount" in namespaces:
            linux.make_mounts_private()
            if "pid" in namespaces:
                linux.mount_proc()
            if "net" in namespaces:
                linux.mount_sysfs()
        if "net" in namespaces:
            linux.set_interface_up("lo")
        if "uts" in namespaces:
            socket.sethostname(spec["id"])
    except OSError as exc:
        raise StartError(
            "namespaces", f"cannot set up the job's namespaces: {_describe(exc)}", exc.errno
        ) from exc


def _spawn_command(spec: dict[str, Any], out_w: int, err_w: int) -> subprocess.Popen[bytes]:
    """Start the command with vfork+exec (subprocess does that when it can): far cheaper than a fork
    of this Python process. Raises StartError with the OS error when it cannot be executed."""
    try:
        return subprocess.Popen(
            spec["argv"],
            env=spec["env"],
            cwd=spec["cwd"],
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            close_fds=True,
            restore_signals=True,
        )
    except OSError as exc:
        if exc.filename == spec["cwd"] and exc.filename != spec["argv"][0]:
            raise StartError("cwd", f"cannot enter {spec['cwd']!r}: {_describe(exc)}", exc.errno) from exc
        raise StartError("exec", f"cannot run {spec['argv'][0]!r}: {_describe(exc)}", exc.errno) from exc


def _kill_descendants(pid: int, reap: Callable[[], None]) -> None:
    """SIGKILL every descendant of `pid` (children first found, repeated until none is left); `reap`
    collects the dead children of the calling process."""
    for _ in range(1000):
        children = linux.child_pids(pid)
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


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def run_init(spec: dict[str, Any], handle: Handle, pipes: dict[str, int]) -> NoReturn:
    """The job's first process (PID 1 in its PID namespace)."""
    command_pid = 0

    def forward(signum: int, _frame: object) -> None:
        if command_pid:
            try:
                os.kill(command_pid, signum)
            except ProcessLookupError:
                pass

    # Handlers (not SIG_IGN) so that exec gives the command default dispositions for all of them.
    for sig in _FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    try:
        _init_setup(spec, handle)
        command = _spawn_command(spec, pipes["out_w"], pipes["err_w"])
    except StartError as exc:
        os.write(
            pipes["exec_w"],
            json.dumps({"stage": exc.stage, "errno": exc.errno, "message": str(exc)}).encode(),
        )
        os._exit(127)
    command_pid = command.pid
    for name in ("out_w", "err_w", "exec_w"):
        os.close(pipes[name])
    status = 0
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid == command_pid:
            command.returncode = os.waitstatus_to_exitcode(status)
            break
    # Whatever the command left behind dies with it: in a PID namespace the kernel kills the rest when
    # we exit; without one, we are their subreaper and kill them ourselves.
    if "pid" not in spec["namespaces"]:
        _kill_descendants(os.getpid(), _reap_all)
    os.write(pipes["status_w"], str(status).encode())
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


# --------------------------------------------------------------------------------------------- shim


class Shim:
    """The supervisor of one job, in its own process (see the module docstring)."""

    def __init__(self, directory: Path, report_fd: int, wake_r: int) -> None:
        self.dir = directory
        self.report_fd = report_fd
        self.wake_r = wake_r
        spec = jobdir.read_json(directory / jobdir.SPEC)
        if spec is None:
            raise RuntimeError(f"{directory}: no spec.json")
        self.spec: dict[str, Any] = spec
        controller = load_controller_class(spec["controller_class"])()
        self.handle = controller.attach(spec["cgroup"])
        self.init_pid = 0
        self.init_status: int | None = None
        self.command_status: int | None = None
        self.kill_deadline: float | None = None
        self.killed_hard = False
        self.reason: str | None = None
        self.writer: OutputWriter | None = None
        self._stop_seen = False

    # -- start

    def _record_self(self) -> None:
        me = os.getpid()
        jobdir.write_json(self.dir / jobdir.SHIM, {"pid": me, "start_ticks": linux.process_start_ticks(me)})

    def _report(self, message: dict[str, Any]) -> None:
        if self.report_fd < 0:
            return
        try:
            os.write(self.report_fd, json.dumps(message).encode() + b"\n")
        except OSError:
            pass  # the Worker went away; the files in the job directory still tell the story
        os.close(self.report_fd)
        self.report_fd = -1

    def start(self) -> dict[str, int]:
        """Unshare, fork the init, wait for exec. Returns the pipes the shim keeps. Raises StartError."""
        if "pid" in self.spec["namespaces"]:
            # Our next child (the init) becomes PID 1 of a new PID namespace; we stay where we are.
            try:
                linux.unshare(linux.CLONE_NEWPID)
            except OSError as exc:
                raise StartError(
                    "namespaces", f"the host refused a new PID namespace: {_describe(exc)}", exc.errno
                ) from exc
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        exec_r, exec_w = os.pipe2(os.O_CLOEXEC)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        linux.set_pipe_size(out_r, PIPE_SIZE)
        pipes = {"out_w": out_w, "err_w": err_w, "exec_w": exec_w, "status_w": status_w}
        pid = os.fork()
        if pid == 0:
            try:
                # The shim's signal wake-up fd must not hear the init's signals.
                old_wakeup = signal.set_wakeup_fd(-1)
                for fd in (out_r, err_r, exec_r, status_r, old_wakeup, self.wake_r):
                    if fd >= 0:
                        os.close(fd)
                if self.report_fd >= 0:
                    os.close(self.report_fd)
                run_init(self.spec, self.handle, pipes)
            finally:
                os._exit(127)
        self.init_pid = pid
        for fd in (out_w, err_w, exec_w, status_w):
            os.close(fd)
        failure = _read_all(exec_r)
        os.close(exec_r)
        kept = {"out": out_r, "err": err_r, "status": status_r}
        if failure:
            info = json.loads(failure)
            for fd in kept.values():
                os.close(fd)
            _, self.init_status = os.waitpid(pid, 0)
            raise StartError(info["stage"], info["message"], info["errno"])
        return kept

    # -- running

    def _on_stop_request(self) -> None:
        request = jobdir.read_json(self.dir / jobdir.STOP) or {"grace": 0}
        deadline = time.monotonic() + max(0.0, float(request.get("grace", 0)))
        if self.kill_deadline is None or deadline < self.kill_deadline:
            self.kill_deadline = deadline
        if not self._stop_seen:
            self._stop_seen = True
            self.reason = "stopped by request"
            if self.init_status is None:
                try:
                    os.kill(self.init_pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def kill_job(self) -> None:
        """SIGKILL every process of the job: through the cgroup, the init (whose death empties a PID
        namespace) and, as the shim is their subreaper, any orphan that escaped both."""
        self.killed_hard = True
        self.kill_leftovers()

    def kill_leftovers(self) -> None:
        self.kill_deadline = None
        try:
            self.handle.kill()
        except Exception as exc:
            print(f"jobcore shim {self.spec['id']}: cgroup kill failed: {exc}", file=sys.stderr)
        if self.init_status is None:
            try:
                os.kill(self.init_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _kill_descendants(os.getpid(), self._reap)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.init_pid:
                self.init_status = status

    def supervise(self, pipes: dict[str, int]) -> None:
        """Copy output until the command has ended and the pipes are drained; handle stops."""
        assert self.writer is not None
        poller = select.poll()
        streams = {pipes["out"]: STDOUT, pipes["err"]: STDERR}
        for fd in streams:
            poller.register(fd, select.POLLIN)
        wake_r = self.wake_r
        poller.register(wake_r, select.POLLIN)
        open_fds = set(streams)
        drain_deadline: float | None = None
        while open_fds:
            now = time.monotonic()
            deadlines = [d for d in (self.kill_deadline, drain_deadline) if d is not None]
            timeout = None if not deadlines else max(0, int((min(deadlines) - now) * 1000) + 1)
            for fd, _event in poller.poll(timeout):
                if fd == wake_r:
                    for signum in os.read(wake_r, 512):
                        if signum == signal.SIGTERM:
                            self._on_stop_request()
                    continue
                if self.writer.drain_pipe(fd, streams[fd]) == 0:
                    poller.unregister(fd)
                    open_fds.discard(fd)
                    os.close(fd)
                elif self.writer.capped and not self.killed_hard:
                    self.reason = f"output reached the cap of {self.writer.cap} bytes"
                    self.kill_job()
            self._reap()
            now = time.monotonic()
            if self.kill_deadline is not None and now >= self.kill_deadline:
                self.kill_job()
            if self.init_status is not None and drain_deadline is None:
                # The command is gone; whatever it left running (still holding the pipes, perhaps) dies.
                self.kill_leftovers()
                drain_deadline = now + DRAIN_TIMEOUT
            if drain_deadline is not None and now >= drain_deadline:
                for fd in open_fds:
                    os.close(fd)
                open_fds.clear()

    def wait_init(self) -> None:
        while self.init_status is None:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                raise RuntimeError("the job's init was reaped without its status being recorded") from None
            if pid == self.init_pid:
                self.init_status = status

    # -- end

    def finish(self, status_fd: int) -> dict[str, Any]:
        """Collect the verdict, clean up the cgroup, and return exit.json's content."""
        self.wait_init()
        _kill_descendants(os.getpid(), self._reap)
        raw = _read_all(status_fd)
        os.close(status_fd)
        # The init reports the command's exact wait status; if the init itself was killed, its own is it.
        status = int(raw) if raw else self.init_status
        assert status is not None
        oom = _safe(self.handle.oom_killed, False)
        usage = _safe(self.handle.stats, None)
        try:
            self.handle.destroy()
        except Exception as exc:
            print(f"jobcore shim {self.spec['id']}: cgroup cleanup failed: {exc}", file=sys.stderr)
        result: dict[str, Any] = {
            "ended_at": time.time(),
            "oom_killed": bool(oom),
            "usage": _usage_dict(usage),
            "output_bytes": self.writer.size if self.writer else 0,
            "output_capped": bool(self.writer and self.writer.capped),
        }
        if os.WIFSIGNALED(status):
            result.update(state="killed", exit_code=None, signal=os.WTERMSIG(status))
            if oom and self.reason is None:
                self.reason = "killed by the OOM killer (memory limit reached)"
        else:
            result.update(state="exited", exit_code=os.WEXITSTATUS(status), signal=None)
        result["reason"] = self.reason
        return result

    def fail(self, exc: StartError) -> None:
        _safe(self.handle.destroy, None)
        exit_info = {
            "state": "failed_to_start",
            "ended_at": time.time(),
            "reason": str(exc),
            "stage": exc.stage,
            "errno": exc.errno,
        }
        jobdir.write_json(self.dir / jobdir.EXIT, exit_info, durable=True)
        self._report({"ok": False, "exit": exit_info})


def _safe(fn: Any, default: Any) -> Any:
    try:
        return fn()
    except Exception as exc:
        print(f"jobcore shim: {getattr(fn, '__name__', fn)} failed: {exc}", file=sys.stderr)
        return default


def _usage_dict(usage: Any) -> dict[str, Any]:
    if usage is None:
        return {}
    return {
        k: getattr(usage, k) for k in ("cpu_seconds", "memory_peak_bytes", "io_read_bytes", "io_write_bytes")
    }


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _detach() -> int:
    """New session, default signal dispositions, a wake-up fd for the signals the shim handles."""
    os.setsid()
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.detach(), warn_on_full_buffer=False)

    def noop(_signum: int, _frame: object) -> None:
        return None

    signal.signal(signal.SIGCHLD, noop)
    signal.signal(signal.SIGTERM, noop)
    linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
    return wake_r.detach()


def run_shim(directory: Path, report_fd: int) -> NoReturn:
    """Entry point in the launcher's forked child. Never returns."""
    code = 0
    try:
        wake_r = _detach()
        shim = Shim(directory, report_fd, wake_r)
        shim._record_self()
        try:
            pipes = shim.start()
        except StartError as exc:
            shim.fail(exc)
        else:
            shim.writer = OutputWriter(directory, shim.spec.get("output_cap"))
            run = {
                "pid": shim.init_pid,
                "pid_start_ticks": linux.process_start_ticks(shim.init_pid),
                "started_at": time.time(),
            }
            jobdir.write_json(directory / jobdir.RUN, run)
            shim._report({"ok": True, "run": run})
            # A stop may have been requested before the wake-up fd existed: honour it now.
            if (directory / jobdir.STOP).exists():
                shim._on_stop_request()
            shim.supervise(pipes)
            exit_info = shim.finish(pipes["status"])
            shim.writer.close()
            jobdir.write_json(directory / jobdir.EXIT, exit_info, durable=True)
    except BaseException as exc:  # the shim must never die silently: leave a trace in the job dir
        code = 1
        try:
            with open(directory / "shim.err", "a") as f:
                f.write(f"{type(exc).__name__}: {exc}\n")
        except OSError:
            pass
    os._exit(code)
