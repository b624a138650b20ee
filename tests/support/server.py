"""The real `jobserver` entry point as a subprocess, exactly as an operator starts it."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import IO

from support.paths import CERTS, JOBSERVER
from support.waiting import wait_for

#: Settings of the test runner's environment that must not reach a server under test.
FOREIGN_ENV_PREFIXES = ("JOBSERVER_", "GRPC_", "JOBCTL_")
_serial = itertools.count(1)


def server_command(
    state_dir: Path,
    *args: str,
    listen: str = "127.0.0.1:0",
    port_file: Path | None = None,
    cert: Path = CERTS / "server.crt",
    key: Path = CERTS / "server.key",
    ca: Path = CERTS / "ca.crt",
) -> list[str]:
    """The `jobserver` command line with the checked-in certificates (JSON logs when it gets a port
    file, that is when a harness reads its output); `args` come last, so they can add to or override
    any of it."""
    argv = [str(JOBSERVER), "--listen", listen, "--cert", str(cert), "--key", str(key), "--ca", str(ca)]
    argv += ["--state-dir", str(state_dir)]
    if port_file is not None:
        argv += ["--port-file", str(port_file), "--log-format", "json"]
    return [*argv, *args]


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without JOBSERVER_/GRPC_/JOBCTL_ settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV_PREFIXES)}
    env.update(extra or {})
    return env


class ServerProcess:
    """`jobserver` on a state directory that outlives the process; its output goes to a log file in
    `work_dir` (one per start: `log_text()` joins them).

    It is up when its `--port-file` appears (the server writes it once it listens), never after a
    fixed sleep. `restart()` starts a new process on the same state directory and the same port, so
    clients that hold the address keep working once it is back.
    """

    def __init__(
        self, state_dir: Path, work_dir: Path, *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.state_dir = state_dir
        self.work_dir = work_dir
        self.args = args
        self.env = env
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_paths: list[Path] = []
        self.log: IO[bytes] | None = None
        self.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60) -> None:
        """Start the process (on the previous port, if it had one) and wait until it listens."""
        name = f"{os.getpid()}-{next(_serial)}"
        port_file = self.work_dir / f"port-{name}"
        log_path = self.work_dir / f"server-{name}.log"
        self.log_paths.append(log_path)
        self.log = open(log_path, "wb")  # noqa: SIM115 (closed in reap)
        argv = server_command(self.state_dir, *self.args, listen=self.target, port_file=port_file)
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=server_env(self.env),
        )
        proc = self.proc
        if wait_for(lambda: port_file.exists() or proc.poll() is not None, timeout) and port_file.exists():
            # The server writes the port file atomically (rename), so it is never seen half-written.
            self.port = int(port_file.read_text())
            return
        self.kill()
        raise AssertionError(f"jobserver did not start:\n{self.log_text()[-5000:]}")

    def restart(self) -> None:
        """Start again on the same state directory and port (the previous process must be gone)."""
        assert not self.running
        for _attempt in range(4):
            try:
                self.start()
                return
            except AssertionError:
                # The port may not be free again at once (a socket of the dead server lingering).
                if "cannot listen" not in self.log_text():
                    raise
                time.sleep(0.5)
        self.start()

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.log_paths if p.exists())

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.reap()

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM (a graceful stop), SIGKILL after `timeout`; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.reap()
        return self.proc.returncode

    def reap(self) -> None:
        """Wait for the exited process and close its log."""
        if self.proc is not None:
            self.proc.wait(30)
        if self.log is not None:
            self.log.close()
            self.log = None
