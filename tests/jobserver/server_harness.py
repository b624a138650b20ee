"""Helpers for jobserver's tests: real certificates, real sockets on 127.0.0.1, real jobs.

Most tests run the server in this process (`server`); the TLS-version, kill/restart, shutdown and
leak tests run it as a subprocess (`ServerProcess`), exactly as an operator would.
"""

from __future__ import annotations

# jobserver first: it pins gRPC's TLS cipher list before grpc is imported (see jobserver/__init__.py).
import jobserver  # noqa: F401  isort: skip

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import grpc
import pytest
import support
from support import (  # noqa: F401  (REPO, processes_with, wait_for: for the test files)
    CERTS,
    IS_ROOT,
    REPO,
    processes_with,
    wait_for,
)

from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
from jobclient.proto.jobworker.v1 import jobworker_pb2_grpc as pb_grpc
from jobserver.config import ServerConfig
from jobserver.server import JobServer

needs_root = pytest.mark.skipif(not IS_ROOT, reason="jobs run in cgroups and namespaces: needs root")


def cert_paths(name: str) -> tuple[Path, Path]:
    """(certificate, key) of a client: alice, bob, carl, or test/<fixture>."""
    return CERTS / f"{name}.crt", CERTS / f"{name}.key"


def channel_credentials(name: str | None, cert: Path | None = None, key: Path | None = None) -> Any:
    ca = (CERTS / "ca.crt").read_bytes()
    if name is None and cert is None:
        return grpc.ssl_channel_credentials(ca)
    if cert is None or key is None:
        cert, key = cert_paths(name or "")
    return grpc.ssl_channel_credentials(ca, key.read_bytes(), cert.read_bytes())


class Client:
    """A raw stub on the generated code (the SDK is not under test here)."""

    def __init__(
        self, port: int, name: str | None, cert: Path | None = None, key: Path | None = None
    ) -> None:
        self.channel = grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(name, cert, key))
        self.stub = pb_grpc.JobWorkerStub(self.channel)

    def start(self, argv: list[str], **kwargs: Any) -> pb.Job:
        return self.stub.StartJob(pb.StartJobRequest(argv=argv, **kwargs), timeout=30).job

    def get(self, job_id: str) -> pb.Job:
        return self.stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10).job

    def stop(self, job_id: str, grace: float | None = 1.0) -> pb.Job:
        req = pb.StopJobRequest(job_id=job_id)
        if grace is not None:
            req.grace_seconds = grace
        return self.stub.StopJob(req, timeout=60).job

    def list(self, scope: int = 0, user: str = "") -> list[pb.Job]:
        return list(self.stub.ListJobs(pb.ListJobsRequest(scope=scope, user=user), timeout=10).jobs)

    def output(self, job_id: str, offset: int = 0, follow: bool = True) -> bytes:
        req = pb.StreamOutputRequest(job_id=job_id, offset=offset, follow=follow)
        return b"".join(r.data for r in self.stub.StreamOutput(req, timeout=60))

    def wait_ended(self, job_id: str, timeout: float = 30) -> pb.Job:
        """Follow the output to its end (which is the job's end), then return the job."""
        self.output(job_id, follow=True)
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.state != pb.JOB_STATE_RUNNING or time.monotonic() > deadline:
                return job
            time.sleep(0.05)

    def close(self) -> None:
        self.channel.close()


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    """The RpcError `call` raises (fails the test if it succeeds)."""
    try:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "ByteSize"):
            list(result)
    except grpc.RpcError as exc:
        return exc
    pytest.fail("the call succeeded; an error was expected")


def test_config(state_dir: Path, **overrides: Any) -> ServerConfig:
    settings: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "cert": CERTS / "server.crt",
        "key": CERTS / "server.key",
        "ca": CERTS / "ca.crt",
        "state_dir": state_dir,
        "controller": "auto",
        "shutdown_grace_seconds": 2.0,
    }
    settings.update(overrides)
    return ServerConfig(**settings)


test_config.__test__ = False  # type: ignore[attr-defined]  (not a test, despite its name)


@attrs.define
class RunningServer:
    server: JobServer
    port: int
    state_dir: Path
    clients: list[Client] = attrs.field(factory=list)

    def client(self, name: str | None = "alice", cert: Path | None = None, key: Path | None = None) -> Client:
        client = Client(self.port, name, cert, key)
        self.clients.append(client)
        return client


class ServerProcess(support.ServerProcess):
    """tests/support's `jobserver` subprocess, with a raw-stub client."""

    def client(self, name: str | None = "alice") -> Client:
        return Client(self.port, name)


def marked_job(marker: str, first_line: str = "") -> list[str]:
    """argv of a job that prints `first_line` (if any) then runs until stopped, and whose shell keeps
    `marker` in its command line (for `processes_with`)."""
    echo = f'echo "{first_line}"; ' if first_line else ""
    return ["sh", "-c", echo + "while :; do sleep 1; done", marker]
