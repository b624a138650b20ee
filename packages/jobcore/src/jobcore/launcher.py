"""The launcher: one small, single-threaded process per Worker that forks a shim per job.

A threaded program must not fork and run Python in the child, and a fresh interpreter per job costs
tens of milliseconds; so the Worker starts this process once, and each job costs one fork() of it.

Protocol on the Unix socket given as argv[1] (SOCK_SEQPACKET, one message per job): b"P" (the job
gets a PID namespace) or b"-", then the job directory's path, with the write end of the job's report
pipe attached (SCM_RIGHTS). The launcher answers nothing: the shim reports on the pipe. The launcher
exits when the socket closes.

For a job with a PID namespace the launcher unshares CLONE_NEWPID before it forks, so that the shim is
PID 1 of the job's namespace — the job's init — and no separate init process is needed. Such a shim
is forked ahead of its job (a *spare*, `_Spare`): the fork is then not part of the job's start. A spare
exits when the launcher does, having touched nothing.
"""

from __future__ import annotations

import array
import gc
import importlib
import os
import signal
import socket
import sys
from pathlib import Path

# Imported before any fork so that every shim starts with them loaded (a fork shares them for free).
from jobcore import linux, records, shim
from jobcore.command import StartError, describe

#: The name `ps -o comm`, `top` and perf show for the launcher (each shim is `shim.SHIM_NAME`).
LAUNCHER_NAME = "jobcore-launch"


class _PidNamespaces:
    """Makes the launcher's next child PID 1 of a new PID namespace, or of ours again."""

    def __init__(self) -> None:
        self._own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self._changed = False

    def prepare(self, new: bool) -> StartError | None:
        try:
            if self._changed:
                # unshare(CLONE_NEWPID) only works while children still go to our own namespace.
                linux.setns(self._own, linux.CLONE_NEWPID)
                self._changed = False
            if new:
                linux.unshare(linux.CLONE_NEWPID)
                self._changed = True
        except OSError as exc:
            return StartError(
                "namespaces", f"the host refused a new PID namespace: {describe(exc)}", exc.errno
            )
        return None


class _Spare:
    """One shim forked ahead of its job, PID 1 of a new PID namespace, waiting for a job to run
    (`shim.run_spare`): a job that gets a PID namespace — the default — is handed to it, so that the
    fork and the shim's detaching are not part of that job's start. A new spare is forked once the
    job is handed over, while that job starts."""

    def __init__(self, launcher_sock: socket.socket, namespaces: _PidNamespaces) -> None:
        self._launcher_sock = launcher_sock
        self._namespaces = namespaces
        self._conn: socket.socket | None = None

    def fork(self) -> None:
        """Fork a new spare (none if the host refuses a PID namespace: jobs then fork on demand)."""
        if self._conn is not None or self._namespaces.prepare(new=True) is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return
        if pid == 0:
            self._launcher_sock.close()
            ours.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            shim.run_spare(theirs)
        theirs.close()
        self._conn = ours

    def forget(self) -> None:
        """In a shim forked on demand: close our end of the spare's socket, which must close when the
        launcher exits (the spare's cue to exit), not when that shim's job ends."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def hand_over(self, directory: bytes, report_fd: int) -> bool:
        """Give the job to the spare; False if there is none or it died (the caller forks a shim)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return False
        fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [report_fd]))]
        try:
            conn.sendmsg([directory], fds)
            return True
        except OSError:
            return False  # killed while it waited: its end of the socket is closed
        finally:
            conn.close()


def _serve(sock: socket.socket) -> None:
    namespaces = _PidNamespaces()
    spare = _Spare(sock, namespaces)
    spare.fork()
    while True:
        received = shim.receive_message(sock)
        if received is None:
            return
        data, report_fd = received
        new_pid_namespace = data[:1] == b"P"
        if not (new_pid_namespace and spare.hand_over(data[1:], report_fd)):
            directory = Path(os.fsdecode(data[1:]))
            _fork_shim(
                sock,
                namespaces,
                spare,
                directory=directory,
                report_fd=report_fd,
                new_pid_namespace=new_pid_namespace,
            )
        os.close(report_fd)
        spare.fork()


def _fork_shim(
    sock: socket.socket,
    namespaces: _PidNamespaces,
    spare: _Spare,
    *,
    directory: Path,
    report_fd: int,
    new_pid_namespace: bool,
) -> None:
    """Fork a shim for the job in `directory`, prepared here first (its pages are then shared)."""
    error = namespaces.prepare(new=new_pid_namespace)
    try:
        job: shim.Prepared | None = shim.prepare(directory)
    except Exception:
        job = None  # the shim reads it again and records what is wrong
    pid = os.fork()
    if pid == 0:
        sock.close()
        spare.forget()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        shim.run_shim(directory, report_fd, error, job)
    del job


def main() -> None:
    # Received fds must never land on 0-2 (a Worker process may have closed its stdio): the shim
    # points those at /dev/null.
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # takes the lowest free number: this one
    sock = socket.socket(fileno=int(sys.argv[1]))
    linux.set_process_name(LAUNCHER_NAME)
    for module in sys.argv[2:]:  # a backend's modules: its handles are rebuilt in every shim
        importlib.import_module(module)
    # Shims are reaped by the kernel (we never wait for them): they outlive us anyway.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Everything imported so far is shared with every shim; keep the collector from touching (and so
    # copying) those pages in each shim.
    records.prewarm()  # the converter's generated code, compiled once here rather than in every shim
    gc.freeze()
    sock.send(b"ready")
    try:
        _serve(sock)
    finally:
        sock.close()


if __name__ == "__main__":
    main()
