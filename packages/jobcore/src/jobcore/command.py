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
import subprocess
from typing import Any

from jobcore import linux, sandbox
from jobcore.controllers.base import Handle


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


def enter_job(spec: dict[str, Any], handle: Handle) -> None:
    """Everything the command's process does between fork and exec, in this order: join the cgroup,
    enter the namespaces, build the filesystem view (the sandbox, or just fresh /proc and /sys), set
    up the network and hostname, drop privileges, enter the working directory. Raises StartError."""
    try:
        handle.enter(0)
    except Exception as exc:
        raise StartError("cgroup", f"cannot join the job's cgroup: {describe(exc)}") from exc
    namespaces = set(spec["namespaces"])
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
    plan = spec.get("sandbox")
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
            socket.sethostname(spec["id"])
    except OSError as exc:
        raise StartError(
            "namespaces", f"cannot set up the job's namespaces: {describe(exc)}", exc.errno
        ) from exc
    try:
        if plan is not None:
            sandbox.prepare_filesystem(plan, spec["cwd"], "pid" in namespaces, "net" in namespaces)
        sandbox.drop_privileges(spec.get("user"), plan is not None)
    except sandbox.SandboxError as exc:
        raise StartError("sandbox", str(exc), exc.errno) from exc
    try:
        # After the uid switch, which clears it; the command must not outlive the shim.
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        os.chdir(spec["cwd"])  # as the job's user, in the job's view
    except OSError as exc:
        raise StartError("cwd", f"cannot enter {spec['cwd']!r}: {describe(exc)}", exc.errno) from exc


def spawn_command(spec: dict[str, Any], handle: Handle, out_w: int, err_w: int) -> subprocess.Popen[bytes]:
    """Fork and exec the command with `enter_job` run in between. The shim is single-threaded, so
    running Python in the forked child is safe here. Raises StartError with the OS error."""
    error_r, error_w = os.pipe2(os.O_CLOEXEC)

    def in_child() -> None:
        try:
            enter_job(spec, handle)
        except StartError as exc:
            os.write(
                error_w, json.dumps({"stage": exc.stage, "errno": exc.errno, "message": str(exc)}).encode()
            )
            raise

    try:
        return subprocess.Popen(
            spec["argv"],
            env=spec["env"],
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            close_fds=True,
            restore_signals=True,
            preexec_fn=in_child,  # noqa: PLW1509 - single-threaded process, see the docstring
        )
    except subprocess.SubprocessError as exc:
        os.close(error_w)
        error_w = -1
        detail = _read_all(error_r)
        if detail:
            info = json.loads(detail)
            raise StartError(info["stage"], info["message"], info["errno"]) from exc
        raise StartError("setup", f"cannot set up the job: {exc}") from exc
    except OSError as exc:
        raise StartError("exec", f"cannot run {spec['argv'][0]!r}: {describe(exc)}", exc.errno) from exc
    finally:
        if error_w >= 0:
            os.close(error_w)
        os.close(error_r)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)
