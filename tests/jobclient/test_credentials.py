"""Credentials: where certificates come from, and clear errors when they are missing or wrong."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from fake_jobworker import CERTS

from jobclient import Credentials, CredentialsError
from jobclient.credentials import default_certs_dir


def test_for_user_reads_the_users_files_and_the_ca() -> None:
    creds = Credentials.for_user("bob", CERTS)
    assert creds.cert == (CERTS / "bob.crt").read_bytes()
    assert creds.key == (CERTS / "bob.key").read_bytes()
    assert creds.ca == (CERTS / "ca.crt").read_bytes()


def test_keys_are_not_shown_in_repr() -> None:
    assert "PRIVATE" not in repr(Credentials.for_user("alice", CERTS))


def test_for_user_defaults_to_jobctl_certs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ca.crt", "carl.crt", "carl.key"):
        shutil.copy(CERTS / name, tmp_path / name)
    monkeypatch.setenv("JOBCTL_CERTS", str(tmp_path))
    assert Credentials.for_user("carl").cert == (tmp_path / "carl.crt").read_bytes()
    with pytest.raises(CredentialsError, match=r"alice\.crt does not exist") as caught:
        Credentials.for_user("alice")
    assert str(tmp_path) in caught.value.message
    assert "$JOBCTL_CERTS" in caught.value.message


def test_without_jobctl_certs_the_checked_in_folder_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBCTL_CERTS", raising=False)
    assert default_certs_dir() == CERTS
    assert Credentials.for_user("alice").cert == (CERTS / "alice.crt").read_bytes()


def test_an_unknown_user_names_the_file_and_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBCTL_CERTS", raising=False)
    with pytest.raises(CredentialsError) as caught:
        Credentials.for_user("mallory")
    assert f"{CERTS / 'mallory.crt'} does not exist" in caught.value.message
    assert "'mallory'" in caught.value.message


def test_a_missing_certs_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        CredentialsError, match=rf"certificates folder {re.escape(str(tmp_path / 'nope'))} .* does not exist"
    ):
        Credentials.for_user("alice", tmp_path / "nope")


@pytest.mark.parametrize("name", ["", "../alice", "a/b", ".hidden"])
def test_user_names_cannot_escape_the_folder(name: str) -> None:
    with pytest.raises(CredentialsError, match="invalid user name"):
        Credentials.for_user(name, CERTS)


def test_from_files_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(
        CredentialsError, match=rf"^private key {re.escape(str(tmp_path / 'x.key'))} does not exist$"
    ):
        Credentials.from_files(cert=CERTS / "alice.crt", key=tmp_path / "x.key", ca=CERTS / "ca.crt")


def test_from_files_names_a_file_that_is_not_pem(tmp_path: Path) -> None:
    junk = tmp_path / "junk.crt"
    junk.write_bytes(b"\x00not a certificate")
    with pytest.raises(CredentialsError, match=rf"CA certificate {re.escape(str(junk))} is not a PEM file"):
        Credentials.from_files(cert=CERTS / "alice.crt", key=CERTS / "alice.key", ca=junk)


def test_from_files_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="is a directory"):
        Credentials.from_files(cert=tmp_path, key=CERTS / "alice.key", ca=CERTS / "ca.crt")


def test_from_files_names_a_file_it_cannot_read() -> None:
    # A path through a regular file fails with ENOTDIR, even for root (who can read any mode).
    bad = CERTS / "alice.key" / "key"
    with pytest.raises(
        CredentialsError, match=rf"^cannot read private key {re.escape(str(bad))}: Not a directory$"
    ):
        Credentials.from_files(cert=CERTS / "alice.crt", key=bad, ca=CERTS / "ca.crt")


def test_a_key_that_does_not_match_the_certificate_is_refused() -> None:
    with pytest.raises(CredentialsError, match="does not match certificate"):
        Credentials.from_files(cert=CERTS / "alice.crt", key=CERTS / "bob.key", ca=CERTS / "ca.crt")
