"""Fixtures for jobclient's suite: a fake job server over real mTLS, SDK clients, and a jobctl runner."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import support
from fake_jobworker import CERTS, FakeJobWorker, FakeServer
from jobctl_runner import JOBCTL, Jobctl

from jobclient import Client, Credentials


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
    return support.free_port()


@pytest.fixture
def jobctl(server: FakeServer) -> Jobctl:
    assert JOBCTL.is_file(), f"{JOBCTL} is not installed (pip install -e packages/jobclient)"
    return Jobctl(server.target)
