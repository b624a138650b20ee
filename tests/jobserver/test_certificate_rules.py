"""Certificate rules gRPC does not enforce, against the real server with certificates minted here
(signed by certs/ca.key): the chain must be exactly leaf -> our CA, a leaf must not be a CA, and a user
name is a full match of an ASCII pattern (no trailing newline, no Unicode case folding)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from cert_minting import CA_LEAF_EXT, INTERMEDIATE_EXT, SUBJECT_BASE, chained_admin, mint
from server_harness import CERTS, Client, RunningServer, rpc_error

from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
from jobserver.direct_issuer import DirectIssuers
from jobserver.errors import CertificateError

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")

CA_SUBJECT = f"{SUBJECT_BASE}/OU=ca/CN=JobWorker CA"  # what certs/generate.sh names our CA


def _list_error(server: RunningServer, cert: Path, key: Path) -> grpc.RpcError:
    client = Client(server.port, None, cert, key)
    server.clients.append(client)
    return rpc_error(lambda: client.stub.ListJobs(pb.ListJobsRequest(scope=pb.LIST_SCOPE_ALL), timeout=10))


def test_a_leaf_signed_by_an_intermediate_ca_is_refused(server: RunningServer, tmp_path: Path) -> None:
    chain, key = chained_admin(tmp_path)
    # openssl enforces the CA's pathlen:0 on the same chain; BoringSSL in gRPC does not.
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(CERTS / "ca.crt"), "-untrusted",
         str(tmp_path / "intermediate.crt"), str(tmp_path / "chained-carl.crt")],
        check=False, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert verify.returncode != 0 and "path length constraint exceeded" in verify.stderr
    exc = _list_error(server, chain, key)
    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not signed directly by this server's CA" in exc.details()


def test_an_intermediate_named_like_our_ca_is_refused(server: RunningServer, tmp_path: Path) -> None:
    """The leaf's issuer name then equals our CA's subject: only the signature tells them apart."""
    inter_cert, inter_key = mint(tmp_path, "lookalike", CA_SUBJECT, extensions=INTERMEDIATE_EXT)
    leaf, key = mint(
        tmp_path, "lookalike-carl", f"{SUBJECT_BASE}/OU=admin/CN=Carl", ca_cert=inter_cert, ca_key=inter_key
    )
    chain = tmp_path / "lookalike-chain.crt"
    chain.write_bytes(leaf.read_bytes() + inter_cert.read_bytes())
    exc = _list_error(server, chain, key)
    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not signed directly" in exc.details()


def test_a_client_certificate_that_is_a_ca_is_refused(server: RunningServer, tmp_path: Path) -> None:
    cert, key = mint(tmp_path, "ca-leaf", f"{SUBJECT_BASE}/OU=admin/CN=Carl", extensions=CA_LEAF_EXT)
    exc = _list_error(server, cert, key)
    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "CA:TRUE" in exc.details()


@pytest.mark.parametrize(
    ("cn", "shown"),
    [
        ("alice\\n", "'alice\\n'"),  # an openssl config escape: the CN ends in a newline
        ("\u212aarl", "'\u212aarl'"),  # KELVIN SIGN: "\u212aarl".lower() == "karl"
        ("al ice", "'al ice'"),
    ],
)
def test_a_cn_that_is_not_exactly_an_ascii_user_name_is_refused(
    server: RunningServer, tmp_path: Path, cn: str, shown: str
) -> None:
    cert, key = mint(tmp_path, "odd-cn", {"O": "JobWorker", "OU": "admin", "CN": cn})
    exc = _list_error(server, cert, key)
    assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"CN {shown} is not a valid user name" in exc.details()


def test_certificates_signed_directly_by_the_ca_are_accepted(server: RunningServer) -> None:
    jobs = server.client("carl").stub.ListJobs(pb.ListJobsRequest(scope=pb.LIST_SCOPE_ALL), timeout=10)
    assert list(jobs.jobs) == []


def _p384_ca(tmp: Path, name: str) -> tuple[Path, Path]:
    key, cert, ext = tmp / f"{name}.key", tmp / f"{name}.crt", tmp / f"{name}.ext"
    ext.write_text(
        "[req]\ndistinguished_name = dn\n[dn]\n[ext]\nbasicConstraints = critical, CA:TRUE, pathlen:0\n"
        "keyUsage = critical, keyCertSign\nsubjectKeyIdentifier = hash\n"
    )
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-subj", CA_SUBJECT, "-days", "30", "-sha384",
         "-config", str(ext), "-extensions", "ext"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


def test_direct_issuer_check_with_a_p384_ca(tmp_path: Path) -> None:
    ca_cert, ca_key = _p384_ca(tmp_path, "p384-ca")
    other_cert, other_key = _p384_ca(tmp_path, "p384-other")  # same name, another key
    good, _ = mint(tmp_path, "p384-alice", f"{SUBJECT_BASE}/OU=user/CN=Alice", ca_cert=ca_cert, ca_key=ca_key)
    forged, _ = mint(
        tmp_path, "p384-forged", f"{SUBJECT_BASE}/OU=user/CN=Alice", ca_cert=other_cert, ca_key=other_key
    )
    issuers = DirectIssuers(ca_cert.read_bytes())
    assert issuers.check(good.read_bytes()) is None
    assert "not signed directly" in (issuers.check(forged.read_bytes()) or "")
    # Our real certificates are not this CA's.
    assert "not signed directly" in (issuers.check((CERTS / "alice.crt").read_bytes()) or "")


def test_a_ca_without_an_ecdsa_key_is_refused_at_start(tmp_path: Path) -> None:
    key, cert = tmp_path / "rsa.key", tmp_path / "rsa.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-subj", "/CN=RSA CA", "-days", "30"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    with pytest.raises(CertificateError, match="ECDSA P-256 or P-384"):
        DirectIssuers(cert.read_bytes())
