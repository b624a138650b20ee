"""Connection and TLS failures surface as Unavailable, naming the server."""

from __future__ import annotations

import pytest
from fake_jobworker import CERTS, FakeJobWorker, FakeServer

from jobclient import Client, Credentials, Unavailable

TEST_CERTS = CERTS / "test"


def test_a_server_that_is_down_is_unavailable(free_port: int, alice: Credentials) -> None:
    target = f"127.0.0.1:{free_port}"
    with Client(target, credentials=alice) as client, pytest.raises(Unavailable) as caught:
        client.list()
    assert caught.value.message.startswith(f"cannot reach the job server at {target}")


@pytest.mark.parametrize("name", ["expired", "untrusted", "no-client-auth"])
def test_the_server_refuses_a_bad_client_certificate(
    server: FakeServer, servicer: FakeJobWorker, name: str
) -> None:
    creds = Credentials.from_files(
        cert=TEST_CERTS / f"{name}.crt", key=TEST_CERTS / f"{name}.key", ca=CERTS / "ca.crt"
    )
    with Client(server.target, credentials=creds) as client, pytest.raises(Unavailable):
        client.list()
    assert servicer.requests == []


def test_a_server_certificate_from_another_ca_is_refused(server: FakeServer, servicer: FakeJobWorker) -> None:
    creds = Credentials.from_files(
        cert=CERTS / "alice.crt", key=CERTS / "alice.key", ca=TEST_CERTS / "untrusted-ca.crt"
    )
    with Client(server.target, credentials=creds) as client, pytest.raises(Unavailable):
        client.list()
    assert servicer.requests == []


def test_the_server_certificate_is_valid_for_localhost(server: FakeServer, alice: Credentials) -> None:
    with Client(f"localhost:{server.port}", credentials=alice) as client:
        assert client.list() == []
