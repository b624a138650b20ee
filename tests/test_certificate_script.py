"""`certs/generate.sh ca|user|server`: certificates for new users and real host names, from a CA.

(The certificates these issue are used against real servers in tests/e2e/test_fleet.py.)
"""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "certs" / "generate.sh"
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def generate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def x509(cert: Path, *fields: str) -> str:
    return subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", *fields], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    made = generate("ca", tmp_path / "pki")
    assert made.returncode == 0, made.stderr
    return tmp_path / "pki"


def test_a_new_ca_is_made_in_its_own_folder_and_never_replaced(pki: Path) -> None:
    assert "CA:TRUE" in x509(pki / "ca.crt", "-ext", "basicConstraints")
    assert stat.S_IMODE((pki / "ca.key").stat().st_mode) == 0o600
    again = generate("ca", pki)
    assert again.returncode == 1 and "already holds a CA" in again.stderr
    assert not (ROOT / "certs" / "pki").exists()


def test_a_user_certificate_carries_name_role_and_client_auth_only(pki: Path) -> None:
    made = generate("user", "Dave", "admin", "--ca-dir", pki)
    assert made.returncode == 0, made.stderr
    cert = pki / "dave.crt"  # named like Credentials.for_user("dave") expects
    assert (
        x509(cert, "-subject").strip()
        == "subject=C = US, ST = CA, L = SF, O = JobWorker, OU = admin, CN = Dave"
    )
    eku = x509(cert, "-ext", "extendedKeyUsage,keyUsage,basicConstraints")
    assert "TLS Web Client Authentication" in eku and "Server Authentication" not in eku
    assert "CA:FALSE" in eku and "Digital Signature" in eku
    assert stat.S_IMODE((pki / "dave.key").stat().st_mode) == 0o600
    for purpose, ok in (("sslclient", True), ("sslserver", False)):
        verify = subprocess.run(
            ["openssl", "verify", "-CAfile", str(pki / "ca.crt"), "-purpose", purpose, str(cert)],
            capture_output=True,
            check=False,
        )
        assert (verify.returncode == 0) is ok, purpose


def test_a_server_certificate_names_every_dns_name_and_ip_with_server_auth_only(
    pki: Path, tmp_path: Path
) -> None:
    out = tmp_path / "hosts"
    out.mkdir()
    made = generate(
        "server", "worker-1", "--dns", "worker-1.example.com", "--dns", "worker-1",
        "--ip", "192.0.2.10", "--ip", "::1", "--ca-dir", pki, "--out", out, "--days", "30",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    cert = out / "worker-1.crt"
    text = x509(cert, "-ext", "subjectAltName,extendedKeyUsage")
    assert "DNS:worker-1.example.com, DNS:worker-1, IP Address:192.0.2.10, IP Address:0:0:0:0:0:0:0:1" in text
    assert "TLS Web Server Authentication" in text and "Client Authentication" not in text
    assert "CN = worker-1" in x509(cert, "-subject")
    assert x509(cert, "-checkend", str(29 * 86400)).strip() == "Certificate will not expire"
    assert "will expire" in subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-checkend", str(31 * 86400)],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["user", "Dave", "root"], "role 'root': must be user or admin"),
        (["user", "../x", "user"], "user name '../x'"),
        (["user", "a/b", "user"], "user name 'a/b'"),
        (["server", "w1"], "give at least one --dns NAME or --ip ADDR"),
        (["server", "w1", "--dns", "bad name"], "--dns bad name: not a DNS name"),
        (["server", "w1", "--ip", "10.0.0.x"], "--ip 10.0.0.x: not an IPv4 or IPv6 address"),
        (["user", "eve", "user", "--days", "0"], "--days 0"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(pki: Path, args: list[str], message: str) -> None:
    refused = generate(*args, "--ca-dir", pki)
    assert refused.returncode == 1 and message in refused.stderr, refused.stderr
    assert sorted(p.name for p in pki.iterdir()) == ["ca.crt", "ca.key"]


def test_nothing_is_overwritten_and_a_missing_ca_is_named(pki: Path, tmp_path: Path) -> None:
    assert generate("user", "erin", "user", "--ca-dir", pki).returncode == 0
    before = (pki / "erin.crt").read_bytes()
    again = generate("user", "erin", "user", "--ca-dir", pki)
    assert again.returncode == 1 and f"{pki}/erin.crt already exists" in again.stderr
    assert (pki / "erin.crt").read_bytes() == before
    missing = generate("user", "erin", "user", "--ca-dir", tmp_path / "nowhere")
    assert missing.returncode == 1 and "no CA in" in missing.stderr
    usage = generate("bogus")
    assert usage.returncode == 2 and "generate.sh user NAME ROLE" in usage.stderr
