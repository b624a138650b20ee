"""Runs the installed `jobctl` executable as a subprocess against a server, as alice by default."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import attrs
from fake_jobworker import CERTS

JOBCTL = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "jobctl"


@attrs.frozen
class Result:
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode()


class Jobctl:
    """Runs the installed jobctl executable against a server, as alice unless told otherwise."""

    def __init__(self, target: str) -> None:
        self.target = target

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBCTL_")}
        env.update({"JOBCTL_SERVER": self.target, "JOBCTL_USER": "alice", "JOBCTL_CERTS": str(CERTS)})
        env.update(extra)
        return {k: v for k, v in env.items() if v != ""}

    def __call__(self, *args: str, **env: str) -> Result:
        done = subprocess.run(
            [str(JOBCTL), *args],
            env=self.env(**env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr.decode())

    def popen(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(JOBCTL), *args], env=self.env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )


# jobctl's Ctrl-C tests need jobctl to start with SIGINT at its default, as in a terminal. A suite run
# in the background (a non-interactive shell's `&`) has SIGINT ignored, and an ignored signal survives
# exec; a handled one is reset to the default. So handle it here (imported in the main thread), rather
# than resetting it in a preexec_fn: forking this gRPC-threaded process to run Python is not safe.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
