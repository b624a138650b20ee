"""The launcher: one small, single-threaded process per Worker that forks a shim per job.

A threaded program must not fork and run Python in the child, and a fresh interpreter per job costs
tens of milliseconds; so the Worker starts this process once, and each job costs one fork() of it.

Protocol on the Unix socket given as argv[1] (SOCK_SEQPACKET, one message per job): b"P" (the job
gets a PID namespace) or b"-", then the job directory's path, with the write end of the job's report
pipe attached (SCM_RIGHTS). The launcher answers nothing: the shim reports on the pipe. The launcher
exits when the socket closes.

For a job with a PID namespace the launcher unshares CLONE_NEWPID before it forks, so that the shim is
PID 1 of the job's namespace — the job's init — and no separate init process is needed.
"""

from __future__ import annotations

import array
import gc
import importlib
import os
import signal
import socket
import sys

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


def _serve(sock: socket.socket) -> None:
    fd_size = array.array("i").itemsize
    namespaces = _PidNamespaces()
    while True:
        try:
            data, ancdata, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(fd_size))
        except InterruptedError:
            continue
        if not data:
            return
        fds = array.array("i")
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fd_size])
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            continue
        report_fd = fds[0]
        directory = os.fsdecode(data[1:])
        error = namespaces.prepare(new=data[:1] == b"P")
        try:
            job: shim.Prepared | None = shim.prepare(directory)
        except Exception:
            job = None  # the shim reads it again and records what is wrong
        pid = linux.fork()
        if pid == 0:
            # The child never returns to this loop: close the fd, not the Python object (whose
            # Python-level close would be more of the launcher's pages to copy); the shim's own
            # SIGCHLD handler replaces the launcher's SIG_IGN before it has any child.
            os.close(sock.fileno())
            shim.run_shim(directory, report_fd, error, job)
        del job
        os.close(report_fd)


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
