"""The Worker's side of the launcher (jobcore.launcher): start it, hand it jobs, restart it if someone
killed it, and close it — after which nothing starts a new one."""

from __future__ import annotations

import array
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence

from jobcore.errors import WorkerError

log = logging.getLogger("jobcore")

#: How long to wait for a new launcher's imports.
READY_TIMEOUT = 30.0


class LauncherClient:
    """One launcher process and the socket to it. Thread-safe."""

    def __init__(self, preload: Sequence[str] = ()) -> None:
        #: Modules the launcher imports before it forks any shim (a backend's handle module...).
        self._preload = tuple(preload)
        self._lock = threading.Lock()
        self._closed = False
        self._proc, self._sock = self._spawn()

    @property
    def pid(self) -> int:
        """The launcher's pid (it changes when a killed launcher is replaced)."""
        with self._lock:
            return self._proc.pid

    def _spawn(self) -> tuple[subprocess.Popen[bytes], socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "jobcore.launcher", str(theirs.fileno()), *self._preload],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                cwd="/",
                start_new_session=True,
            )
        finally:
            theirs.close()
        # Wait for the launcher's imports, so that a broken installation fails here, clearly.
        ours.settimeout(READY_TIMEOUT)
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

    def send(self, message: bytes, fd: int) -> None:
        """Send one job (`message`, and `fd` for its shim's report); if the launcher died, start a new
        one and send again. Jobs already running are not affected: their shims do not need it. Raises
        WorkerError once closed."""
        fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        with self._lock:
            if self._closed:
                raise WorkerError("this Worker is closed")
            try:
                self._sock.sendmsg([message], fds)
                return
            except OSError:
                if self._proc.poll() is None:
                    raise
            log.warning("jobcore: the launcher (pid %d) died; starting a new one", self._proc.pid)
            self._sock.close()
            self._proc, self._sock = self._spawn()
            self._sock.sendmsg([message], fds)

    def close(self) -> None:
        """Close the socket (the launcher exits when it reads the end) and reap the launcher."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._sock.close()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
