"""Fixtures of the whole-stack tests: `jobserver` subprocesses that are always cleaned up.

Every server a test starts is, at teardown and even when the test failed: asked (as the admin carl)
to stop every job still running, stopped, and then any job process it left is SIGKILLed, so no test
leaves a job, a shim or a server behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e_support import IS_ROOT, ServerProcess, kill_job_processes

from jobclient import Client, Credentials, JobClientError


def stop_every_job(server: ServerProcess) -> None:
    """Stop whatever still runs on `server` (best effort: used in teardown)."""
    if not server.running:
        return
    with (
        contextlib.suppress(JobClientError),
        Client(server.target, credentials=Credentials.for_user("carl"), timeout=20) as admin,
    ):
        for job in admin.list(all_users=True):
            if not job.ended:
                with contextlib.suppress(JobClientError):
                    admin.stop(job.id, grace=0)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """`start_server(*args, state_dir=None)` starts a `jobserver` subprocess on 127.0.0.1 (free port)."""
    if not IS_ROOT:
        pytest.skip("the server's jobs run in cgroups and namespaces: needs root")
    started: list[ServerProcess] = []

    def start(*args: str, state_dir: Path | None = None) -> ServerProcess:
        n = len(started)
        work = tmp_path / f"server{n}"
        work.mkdir()
        server = ServerProcess(state_dir or tmp_path / f"state{n}", work, *args)
        started.append(server)
        return server

    yield start
    for server in started:
        try:
            stop_every_job(server)
        finally:
            server.terminate()
            kill_job_processes(server.state_dir / "jobs")


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """One jobserver with the default settings (a module may define its own `server`)."""
    return start_server()
