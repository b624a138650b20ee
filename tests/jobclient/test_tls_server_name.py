"""`Client(..., tls_server_name=)` / `jobctl --tls-server-name`: the name the server's certificate must
carry, instead of the target's host. (Against real servers and a host certificate without an IP
address: tests/e2e/test_fleet.py.)"""

from __future__ import annotations

import asyncio

import pytest
from fake_jobworker import FakeServer

from jobclient import AsyncClient, Client, Credentials, Unavailable
from jobclient.cli import build_parser


def test_the_certificate_must_name_the_given_server_name(server: FakeServer, alice: Credentials) -> None:
    # The server's certificate names localhost and 127.0.0.1, and the target is 127.0.0.1: only the
    # override decides.
    with Client(server.target, credentials=alice, tls_server_name="localhost") as client:
        assert client.list() == []
    with (
        Client(server.target, credentials=alice, tls_server_name="worker-9.example.com") as client,
        pytest.raises(Unavailable),
    ):
        client.list()


def test_the_async_client_honours_the_server_name_too(server: FakeServer, alice: Credentials) -> None:
    async def calls() -> None:
        async with AsyncClient(server.target, credentials=alice, tls_server_name="localhost") as client:
            assert await client.list() == []
        async with AsyncClient(server.target, credentials=alice, tls_server_name="elsewhere") as client:
            with pytest.raises(Unavailable):
                await client.list()

    asyncio.run(calls())


def test_jobctl_takes_tls_server_name() -> None:
    args = build_parser().parse_args(["--tls-server-name", "worker-1.example.com", "list"])
    assert args.tls_server_name == "worker-1.example.com"
    assert "--tls-server-name" in build_parser().format_help()
