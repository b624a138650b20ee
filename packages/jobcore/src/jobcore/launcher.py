"""The launcher: one small, single-threaded process per Worker that forks a shim per job.

A threaded program must not fork and run Python in the child, and a fresh interpreter per job costs
tens of milliseconds; so the Worker starts this process once, and each job costs one fork() of it.

Protocol on the Unix socket given as argv[1] (SOCK_SEQPACKET, one message per job): the job
directory's path as bytes, with the write end of the job's report pipe attached (SCM_RIGHTS). The
launcher answers nothing: the shim reports on the pipe. The launcher exits when the socket closes.
"""

from __future__ import annotations

import array
import os
import signal
import socket
import sys
from pathlib import Path

# Imported before any fork so that every shim starts with them loaded (a fork shares them for free).
from jobcore import shim
from jobcore.shim import load_controller_class


def _serve(sock: socket.socket) -> None:
    fd_size = array.array("i").itemsize
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
        pid = os.fork()
        if pid == 0:
            sock.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            shim.run_shim(Path(os.fsdecode(data)), report_fd)
        os.close(report_fd)


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    for path in sys.argv[2:]:
        load_controller_class(path)
    # Shims are reaped by the kernel (we never wait for them): they outlive us anyway.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock.send(b"ready")
    try:
        _serve(sock)
    finally:
        sock.close()


if __name__ == "__main__":
    main()
