"""`CertificateIdentities`: each client certificate is parsed and checked once, not at every call, and
its identity is exactly what the checks give; a refused certificate is refused at every call."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from server_harness import CERTS, RunningServer, rpc_error

import jobserver.identity as identity_module
from jobserver.certinfo import parse_pem
from jobserver.direct_issuer import DirectIssuers
from jobserver.errors import PermissionDenied, Unauthenticated
from jobserver.identity import CertificateIdentities, Identity, Role, identity_from_auth_context


def _auth(cert: Path | bytes, version: bytes = b"TLSv1.3") -> dict[str, list[bytes]]:
    pem = cert if isinstance(cert, bytes) else cert.read_bytes()
    return {"transport_security_type": [b"ssl"], "x509_pem_cert": [pem], "ssl_tls_version": [version]}


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every certificate identity.py parses, in order."""
    seen: list[bytes] = []

    def counting(pem: str | bytes) -> object:
        seen.append(bytes(pem) if isinstance(pem, bytes) else pem.encode())
        return parse_pem(pem)

    monkeypatch.setattr(identity_module, "parse_pem", counting)
    return seen


def test_a_certificate_is_parsed_once_and_each_gets_its_own_identity(parses: list[bytes]) -> None:
    issuers = DirectIssuers((CERTS / "ca.crt").read_bytes())
    known = CertificateIdentities(issuers)
    for _ in range(5):
        assert identity_from_auth_context(_auth(CERTS / "alice.crt"), issuers, known) == Identity(
            "alice", Role.USER
        )
        assert identity_from_auth_context(_auth(CERTS / "carl.crt"), issuers, known) == Identity(
            "carl", Role.ADMIN
        )
        assert identity_from_auth_context(_auth(CERTS / "bob.crt"), issuers, known) == Identity(
            "bob", Role.USER
        )
    assert len(parses) == 3
    assert len(known) == 3


def test_the_connection_checks_still_run_at_every_call(parses: list[bytes]) -> None:
    known = CertificateIdentities()
    assert identity_from_auth_context(_auth(CERTS / "alice.crt"), None, known).name == "alice"
    with pytest.raises(Unauthenticated, match=r"TLS 1\.3 is required"):
        identity_from_auth_context(_auth(CERTS / "alice.crt", b"TLSv1.2"), None, known)
    with pytest.raises(Unauthenticated, match="a client certificate is required"):
        identity_from_auth_context({"transport_security_type": [b"ssl"]}, None, known)


@pytest.mark.parametrize(
    ("cert", "error"),
    [
        (CERTS / "test" / "no-client-auth.crt", PermissionDenied),
        (CERTS / "test" / "unknown-ou.crt", PermissionDenied),
        (CERTS / "test" / "untrusted.crt", Unauthenticated),  # not signed by our CA
    ],
)
def test_a_refused_certificate_is_refused_at_every_call_and_never_kept(
    parses: list[bytes], cert: Path, error: type[Exception]
) -> None:
    issuers = DirectIssuers((CERTS / "ca.crt").read_bytes())
    known = CertificateIdentities(issuers)
    for _ in range(3):
        with pytest.raises(error):
            identity_from_auth_context(_auth(cert), issuers, known)
    assert len(known) == 0
    assert len(parses) == 3


def test_at_most_max_entries_are_kept_the_oldest_out_first(parses: list[bytes]) -> None:
    known = CertificateIdentities(max_entries=2)
    alice, bob, carl = (
        identity_from_auth_context(_auth(CERTS / f"{n}.crt"), None, known) for n in ("alice", "bob", "carl")
    )
    assert [alice.name, bob.name, carl.name] == ["alice", "bob", "carl"]
    assert len(known) == 2
    identity_from_auth_context(_auth(CERTS / "carl.crt"), None, known)  # kept
    assert len(parses) == 3
    assert identity_from_auth_context(_auth(CERTS / "alice.crt"), None, known) == alice  # was dropped
    assert len(parses) == 4


def test_a_servers_calls_parse_each_certificate_once(
    parses: list[bytes], make_server: Callable[..., RunningServer]
) -> None:
    server = make_server()
    alice, bob = server.client("alice"), server.client("bob")
    for _ in range(4):
        alice.list()
        bob.list()
    job = alice.start(["true"])
    assert rpc_error(lambda: bob.get(job.id)).code() == grpc.StatusCode.NOT_FOUND  # still bob, not alice
    assert alice.get(job.id).owner == "alice"
    assert sorted(parses) == sorted([(CERTS / "alice.crt").read_bytes(), (CERTS / "bob.crt").read_bytes()])
