"""Fixtures for jobserver's tests (the helpers live in server_harness.py)."""

from __future__ import annotations

# jobserver first: it pins gRPC's TLS cipher list before grpc is imported (see jobserver/__init__.py).
import jobserver  # noqa: F401  isort: skip

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from server_harness import IS_ROOT, RunningServer, ServerProcess, test_config

from jobcore import Worker
from jobserver.logs import configure_logging
from jobserver.server import JobServer


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    configure_logging("json")


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def make(**overrides: Any) -> RunningServer:
        if not IS_ROOT:
            pytest.skip("the server's jobs run in cgroups and namespaces: needs root")
        state = overrides.pop("state_dir", tmp_path / "state")
        factory = overrides.pop("worker_factory", None)
        config = test_config(state, **overrides)
        server = JobServer(config) if factory is None else JobServer(config, worker_factory=factory)
        port = server.start()
        running = RunningServer(server=server, port=port, state_dir=state)
        started.append(running)
        return running

    yield make
    for running in started:
        for client in running.clients:
            client.close()
        stop_all_jobs(running.server.worker)
        running.server.stop(grace=2)


def stop_all_jobs(worker: Any) -> None:
    """Tests must not leave jobs behind."""
    if worker is None or worker.closed:
        return
    for status in worker.list():
        if not status.state.ended:
            worker.stop(status.id, grace=0)


@pytest.fixture
def server(make_server: Callable[..., RunningServer]) -> RunningServer:
    return make_server()


@pytest.fixture
def server_processes() -> Iterator[list[ServerProcess]]:
    """Collects ServerProcess objects; at the end of the test kills any still running and stops every
    job they left running (also when the test failed half-way)."""
    if not IS_ROOT:
        pytest.skip("the server's jobs run in cgroups and namespaces: needs root")
    procs: list[ServerProcess] = []
    yield procs
    for proc in procs:
        proc.kill()
    for jobs_dir in {proc.state_dir / "jobs" for proc in procs}:
        if jobs_dir.is_dir():
            with Worker(jobs_dir) as worker:
                stop_all_jobs(worker)
