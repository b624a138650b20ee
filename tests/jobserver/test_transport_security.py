"""Mutual TLS 1.3 only, client certificates verified against the CA, identities from CN and OU."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import grpc
import pytest
from server_harness import CERTS, Client, RunningServer, ServerProcess, rpc_error, wait_for
from support.server import server_command

from jobserver.health import ServingStatus, decode_check_response, encode_check_request


def _handshake(port: int, version: ssl.TLSVersion, cert: str = "alice") -> str:
    """A raw TLS handshake with a valid client certificate at exactly `version`; returns the version."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(CERTS / "ca.crt")
    ctx.load_cert_chain(CERTS / f"{cert}.crt", CERTS / f"{cert}.key")
    ctx.minimum_version = version
    ctx.maximum_version = version
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        # In TLS 1.3 the server checks the client certificate after the client's Finished: a read
        # makes sure the server accepted it (it answers with its HTTP/2 SETTINGS frame).
        assert tls.recv(9)
        return str(tls.version())


@pytest.fixture
def server_process(server_processes: list[ServerProcess], tmp_path: Path) -> ServerProcess:
    proc = ServerProcess(tmp_path / "state", tmp_path)
    server_processes.append(proc)
    return proc


def _server_logged_no_shared_cipher(proc: ServerProcess) -> bool:
    # gRPC's C core logs why a handshake failed; TLS 1.2 must fail for want of a cipher suite.
    return wait_for(lambda: "NO_SHARED_CIPHER" in proc.log_text(), timeout=10)


def test_tls12_client_is_refused_and_tls13_is_accepted(server_process: ServerProcess) -> None:
    with pytest.raises(ssl.SSLError):
        _handshake(server_process.port, ssl.TLSVersion.TLSv1_2)
    assert _server_logged_no_shared_cipher(server_process)
    assert _handshake(server_process.port, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_openssl_tls12_handshake_fails_with_no_shared_cipher(server_process: ServerProcess) -> None:
    def s_client(version: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "s_client", version, "-connect", f"127.0.0.1:{server_process.port}",
             "-CAfile", str(CERTS / "ca.crt"), "-cert", str(CERTS / "alice.crt"),
             "-key", str(CERTS / "alice.key"), "-alpn", "h2", "-brief"],
            input="", capture_output=True, text=True, errors="replace", timeout=30, check=False,
        )  # fmt: skip

    tls12 = s_client("-tls1_2")
    assert tls12.returncode != 0
    assert "Protocol version" not in tls12.stderr, tls12.stderr
    assert _server_logged_no_shared_cipher(server_process)
    tls13 = s_client("-tls1_3")
    assert "Protocol version: TLSv1.3" in tls13.stderr, tls13.stderr


def test_server_with_rsa_certificate_refuses_to_start(tmp_path: Path) -> None:
    key, cert = tmp_path / "rsa.key", tmp_path / "rsa.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=rsa"],
        check=True, capture_output=True,
    )  # fmt: skip
    result = subprocess.run(
        server_command(tmp_path / "state", cert=cert, key=key),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "must have an ECDSA key" in result.stderr


def _refused_at_handshake(server: RunningServer, name: str | None, cert: Path | None = None) -> None:
    client = server.client(name, cert, cert.with_suffix(".key") if cert else None)
    exc = rpc_error(client.list)
    # The handshake fails, so the channel never connects: UNAVAILABLE, and no call reaches a handler.
    assert exc.code() == grpc.StatusCode.UNAVAILABLE


def test_client_without_certificate_is_refused(server: RunningServer) -> None:
    _refused_at_handshake(server, None)


@pytest.mark.parametrize("fixture", ["untrusted", "expired", "no-client-auth"])
def test_bad_client_certificates_are_refused_at_the_handshake(server: RunningServer, fixture: str) -> None:
    _refused_at_handshake(server, None, CERTS / "test" / f"{fixture}.crt")


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("no-ou", "exactly one role (OU)"),
        ("unknown-ou", "is not one of user, admin"),
        ("no-cn", "exactly one user (CN)"),
    ],
)
def test_certificates_without_a_usable_identity_are_denied(
    server: RunningServer, fixture: str, message: str
) -> None:
    client = server.client(None, CERTS / "test" / f"{fixture}.crt", CERTS / "test" / f"{fixture}.key")
    exc = rpc_error(client.list)
    assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
    assert message in exc.details()


def test_certificate_without_any_extended_key_usage_is_denied(server: RunningServer, tmp_path: Path) -> None:
    """BoringSSL accepts a client certificate with no EKU extension at all; the server does not."""
    key, csr, cert, ext = (tmp_path / n for n in ("noeku.key", "noeku.csr", "noeku.crt", "noeku.ext"))
    ext.write_text("basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n")
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(csr), "-subj", "/O=JobWorker/OU=user/CN=Alice"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(CERTS / "ca.crt"), "-CAkey",
         str(CERTS / "ca.key"), "-set_serial", "7", "-days", "1", "-extfile", str(ext), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    client = server.client(None, cert, key)
    exc = rpc_error(client.list)
    assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "clientAuth" in exc.details()


def test_health_check_over_mtls(server: RunningServer) -> None:
    client = server.client("bob")
    check = client.channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=encode_check_request,
        response_deserializer=decode_check_response,
    )
    assert check("", timeout=10) == ServingStatus.SERVING
    assert check("jobworker.v1.JobWorker", timeout=10) == ServingStatus.SERVING
    exc = rpc_error(lambda: check("no.such.Service", timeout=10))
    assert exc.code() == grpc.StatusCode.NOT_FOUND


def test_health_check_needs_a_valid_identity_too(server: RunningServer) -> None:
    client = server.client(None, CERTS / "test" / "no-ou.crt", CERTS / "test" / "no-ou.key")
    check = client.channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=encode_check_request,
        response_deserializer=decode_check_response,
    )
    assert rpc_error(lambda: check("", timeout=10)).code() == grpc.StatusCode.PERMISSION_DENIED


def test_unknown_method_and_health_watch_are_unimplemented(server: RunningServer) -> None:
    client: Client = server.client("alice")
    call = client.channel.unary_unary("/jobworker.v1.JobWorker/NoSuchMethod")
    assert rpc_error(lambda: call(b"", timeout=10)).code() == grpc.StatusCode.UNIMPLEMENTED
    watch = client.channel.unary_stream("/grpc.health.v1.Health/Watch")
    assert rpc_error(lambda: list(watch(b"", timeout=10))).code() == grpc.StatusCode.UNIMPLEMENTED
