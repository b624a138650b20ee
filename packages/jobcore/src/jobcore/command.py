"""The job's command: its process from fork to exec, in the shim's forked child.

Between fork and exec it joins the job's cgroup(s) before anything else, enters new mount/network/
UTS/IPC namespaces, builds its filesystem view (`jobcore.sandbox`, or just fresh /proc and /sys),
brings `lo` up, sets the hostname, drops privileges and enters its working directory (`enter_job`).
A failure at any step reaches the shim as a `StartError` naming the step.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
from typing import TYPE_CHECKING, Any, NoReturn

from jobcore import linux, sandbox
from jobcore.controllers.base import Handle

if TYPE_CHECKING:
    from collections.abc import Callable

    from jobcore.records import SpecRecord


class StartError(Exception):
    """The job cannot start; `stage` says which step failed."""

    def __init__(self, stage: str, message: str, err: int | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.errno = err


def describe(exc: BaseException) -> str:
    """An OS error in words a user can act on: "No such file or directory (ENOENT): /x"."""
    if isinstance(exc, OSError) and exc.errno is not None:
        text = exc.strerror or os.strerror(exc.errno)
        where = f": {exc.filename}" if exc.filename else ""
        return f"{text} ({errno.errorcode.get(exc.errno, exc.errno)}){where}"
    return str(exc)


def enter_job(spec: SpecRecord, handle: Handle) -> None:
    """Everything the command's process does between fork and exec, in this order: join the cgroup,
    enter the namespaces, build the filesystem view (the sandbox, or just fresh /proc and /sys), set
    up the network and hostname, drop privileges, enter the working directory. Raises StartError."""
    try:
        handle.enter(0)
    except Exception as exc:
        raise StartError("cgroup", f"cannot join the job's cgroup: {describe(exc)}") from exc
    namespaces = set(spec.namespaces)
    flags = 0
    for name in namespaces - {"pid"}:  # the PID namespace is the shim's own, made by the launcher
        flags |= linux.NAMESPACE_FLAGS[name]
    if flags:
        try:
            linux.unshare(flags)
        except OSError as exc:
            asked = ", ".join(n for n in linux.NAMESPACE_FLAGS if n in namespaces and n != "pid")
            raise StartError(
                "namespaces", f"the host refused new namespaces ({asked}): {describe(exc)}", exc.errno
            ) from exc
    plan = spec.sandbox
    try:
        if "mount" in namespaces:
            linux.make_mounts_private()
            if plan is None:
                if "pid" in namespaces:
                    linux.mount_proc()
                if "net" in namespaces:
                    linux.mount_sysfs()
        if "net" in namespaces:
            linux.set_interface_up("lo")
        if "uts" in namespaces:
            socket.sethostname(spec.id)
    except OSError as exc:
        raise StartError(
            "namespaces", f"cannot set up the job's namespaces: {describe(exc)}", exc.errno
        ) from exc
    try:
        if plan is not None:
            sandbox.prepare_filesystem(plan, spec.cwd, "pid" in namespaces, "net" in namespaces)
        sandbox.drop_privileges(spec.user, plan is not None)
    except sandbox.SandboxError as exc:
        raise StartError("sandbox", str(exc), exc.errno) from exc
    try:
        # After the uid switch, which clears it; the command must not outlive the shim.
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        os.chdir(spec.cwd)  # as the job's user, in the job's view
    except OSError as exc:
        raise StartError("cwd", f"cannot enter {spec.cwd!r}: {describe(exc)}", exc.errno) from exc


class Command:
    """The command's process as `spawn_command` started it: its pid (the caller reaps it).
    `returncode` is kept for callers written against `subprocess.Popen`."""

    __slots__ = ("pid", "returncode")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None


#: Signals that CPython ignores and a command must get back at their defaults (Popen's restore_signals).
#: Every signal a process can handle or ignore: the command starts with all of them at SIG_DFL, not
#: with what CPython (SIGPIPE, SIGXFSZ) or whatever started the Worker (a background shell ignores
#: SIGINT and SIGQUIT, make -j ignores 32 and 33) left ignored, which exec would keep.
_RESTORED_SIGNALS = tuple(n for n in range(1, signal.NSIG) if n not in (signal.SIGKILL, signal.SIGSTOP))
#: How the child exits when it cannot exec (as subprocess's child does).
_CHILD_FAILED = 255


def spawn_command(
    spec: SpecRecord,
    handle: Handle,
    out_w: int,
    err_w: int,
    meanwhile: Callable[[], object] | None = None,
) -> Command:
    """Fork and exec the command with `enter_job` run in between. The shim is single-threaded, so
    running Python in the forked child is safe here. Raises StartError with the OS error.

    `meanwhile`, if given, runs in the caller right after the fork, while the child sets itself up
    (its cgroup, namespaces, mounts: most of a start), on the other core where there is one; the
    exec's outcome is waited for after it. If the command then fails to start, its StartError is
    raised (the caller undoes what `meanwhile` did); if it started and `meanwhile` raised, that
    exception is raised, and the command, running, is the caller's to stop (the shim kills the job's
    processes; PR_SET_PDEATHSIG kills the command if the shim dies first).

    What `subprocess.Popen(argv, env=..., stdin=DEVNULL, stdout=out_w, stderr=err_w, close_fds=True,
    restore_signals=True, preexec_fn=...)` did, done directly: the same fork, steps and errors, without
    Popen's own work around them, which dirtied ~0.5 MiB more of the shim's inherited pages per job
    (docs/benchmarks.md, "Where a job's start time and memory go")."""
    argv = spec.argv
    env = spec.env
    executables = _executables(argv[0], env)
    error_r, error_w = os.pipe2(os.O_CLOEXEC)
    try:
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(error_r)
        os.close(error_w)
        raise
    try:
        pid = linux.fork()
    except OSError as exc:
        for fd in (error_r, error_w, devnull):
            os.close(fd)
        raise StartError("exec", f"cannot run {argv[0]!r}: {describe(exc)}", exc.errno) from exc
    if pid == 0:  # the child: never returns
        _child(spec, handle, executables, (devnull, out_w, err_w), error_w)
    os.close(error_w)
    os.close(devnull)
    pending: BaseException | None = None
    try:
        if meanwhile is not None:
            try:
                meanwhile()
            except BaseException as exc:  # after the exec's outcome, below
                pending = exc
        detail = _read_all(error_r)
    finally:
        os.close(error_r)
    if not detail:
        if pending is not None:
            raise pending
        return Command(pid)  # exec'd: the close-on-exec error pipe closed without a word
    _reap(pid)
    info = json.loads(detail)
    if "exec_errno" in info:
        err = info["exec_errno"]
        failed = OSError(err, os.strerror(err), argv[0])
        raise StartError("exec", f"cannot run {argv[0]!r}: {describe(failed)}", err)
    raise StartError(info["stage"], info["message"], info["errno"])


def _executables(name: str, env: dict[str, str]) -> list[bytes]:
    """Where exec looks for argv[0]: itself if it has a slash, else each directory of the job's PATH
    (the environment it is given, as subprocess does)."""
    program = os.fsencode(name)
    if b"/" in program:
        return [program]
    # os.get_exec_path(env) and os.path.join, written out: the same list for a str-keyed
    # environment, without their Python code (warnings.catch_warnings...) run cold in every shim.
    found = []
    for directory in os.fsencode(env.get("PATH", os.defpath)).split(b":"):
        found.append(
            directory + program if not directory or directory.endswith(b"/") else directory + b"/" + program
        )
    return found


def _child(
    spec: SpecRecord, handle: Handle, executables: list[bytes], stdio: tuple[int, int, int], error_w: int
) -> NoReturn:
    """From fork to exec, in the order subprocess's child uses: stdio, signals, `enter_job`, close
    every other fd, exec. Any failure goes to the parent on `error_w` as JSON."""
    devnull, out_w, err_w = stdio
    try:
        try:
            # An fd already on its target (only if the shim's stdio was closed) must lose close-on-exec;
            # one that a dup2 below would overwrite is moved out of the way first.
            if out_w == 0:
                out_w = os.dup(out_w)
            if err_w in (0, 1):
                err_w = os.dup(err_w)
            for fd, target in ((devnull, 0), (out_w, 1), (err_w, 2)):
                if fd == target:
                    os.set_inheritable(fd, True)
                else:
                    os.dup2(fd, target)
            # Only those not at SIG_DFL already (a few, not all 62: ~1 ms of Python per start).
            changed = linux.signals_not_at_default()
            for sig in _RESTORED_SIGNALS if changed is None else changed:
                try:
                    signal.signal(sig, signal.SIG_DFL)
                except (OSError, ValueError):  # one glibc keeps for itself (32, 33)
                    linux.default_signal(sig)
            enter_job(spec, handle)
            os.closerange(3, error_w)
            os.closerange(error_w + 1, _max_fd())
            argv = spec.argv
            envp = {os.fsencode(k): os.fsencode(v) for k, v in spec.env.items()}
            first_error, last = 0, errno.ENOENT
            for path in executables:
                try:
                    os.execve(path, argv, envp)
                except OSError as exc:
                    last = exc.errno or errno.ENOENT
                    if last not in (errno.ENOENT, errno.ENOTDIR) and not first_error:
                        first_error = last
            report: dict[str, Any] = {"exec_errno": first_error or last}
        except StartError as exc:
            report = {"stage": exc.stage, "errno": exc.errno, "message": str(exc)}
        except BaseException as exc:  # the child must not return into the shim
            report = {"stage": "setup", "errno": None, "message": f"cannot set up the job: {exc}"}
        os.write(error_w, json.dumps(report).encode())
    finally:
        os._exit(_CHILD_FAILED)


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        return 1 << 20


def _reap(pid: int) -> None:
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except ChildProcessError:
            return  # the shim's SIGCHLD handling reaped it already
        except InterruptedError:
            continue


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)
