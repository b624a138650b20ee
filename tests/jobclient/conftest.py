"""Fixtures for jobclient's suite: a fake job server over real mTLS, SDK clients, and a jobctl runner."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from fake_jobworker import CERTS, FakeJobWorker, FakeServer
from jobclient import Client, Credentials

JOBCTL = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "jobctl"


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def servicer(server: FakeServer) -> FakeJobWorker:
    return server.servicer


@pytest.fixture
def alice() -> Credentials:
    return Credentials.for_user("alice", CERTS)


@pytest.fixture
def client(server: FakeServer, alice: Credentials) -> Iterator[Client]:
    with Client(server.target, credentials=alice, timeout=10) as c:
        yield c


@pytest.fixture
def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
            [str(JOBCTL), *args], env=self.env(**env), capture_output=True, timeout=60, check=False
        )
        return Result(done.returncode, done.stdout, done.stderr.decode())

    def popen(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(JOBCTL), *args], env=self.env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )


@pytest.fixture
def jobctl(server: FakeServer) -> Jobctl:
    assert JOBCTL.is_file(), f"{JOBCTL} is not installed (pip install -e packages/jobclient)"
    return Jobctl(server.target)
