"""Client TLS credentials: a certificate, its key, and the CA that signed the server's certificate."""

from __future__ import annotations

import os
import ssl
from typing import TYPE_CHECKING

import attrs
import grpc

if TYPE_CHECKING:
    from pathlib import Path

from jobclient.config import CERTS_ENV, Settings
from jobclient.errors import CredentialsError

__all__ = ["CERTS_ENV", "Credentials", "credentials_for", "default_certs_dir"]


# Paths are handled with os.path, not pathlib: jobctl imports this module at every start, and
# pathlib (with urllib.parse) is nothing else on that path needs.


def _path(value: str | os.PathLike[str]) -> str:
    return os.path.normpath(os.fspath(value))


def _repo_certs_dir() -> str | None:
    """The checked-in certs/ of the source tree this package runs from (an editable install), if any."""
    parent = os.path.dirname(os.path.realpath(__file__))
    while True:
        if os.path.isfile(os.path.join(parent, "workspace.toml")) and os.path.isdir(
            os.path.join(parent, "certs")
        ):
            return os.path.join(parent, "certs")
        up = os.path.dirname(parent)
        if up == parent:
            return None
        parent = up


def _default_certs_folder() -> str:
    env = os.environ.get(CERTS_ENV)
    if env:
        return _path(env)
    repo = _repo_certs_dir()
    if repo is None:
        here = os.path.dirname(os.path.realpath(__file__))
        raise CredentialsError(
            f"no certificates folder: ${CERTS_ENV} is not set and jobclient is not installed from a source "
            f"checkout with a certs/ folder (looked upwards from {here}); "
            f"set {CERTS_ENV} or give the certificate, key and CA files explicitly"
        )
    return repo


def default_certs_dir() -> Path:
    """$JOBCTL_CERTS when set, else the repository's certs/ folder; CredentialsError when neither exists."""
    from pathlib import Path

    return Path(_default_certs_folder())


def _read(path: str, what: str, marker: bytes) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CredentialsError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise CredentialsError(f"{what} {path} is a directory, not a file") from None
    except OSError as e:
        raise CredentialsError(f"cannot read {what} {path}: {e.strerror}") from None
    if marker not in data:
        raise CredentialsError(f"{what} {path} is not a PEM file (no '{marker.decode()}' line)")
    return data


def _check_key_matches(cert: str, key: str) -> None:
    # A mismatched pair would otherwise surface only as an opaque handshake failure.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise CredentialsError(
            f"key {key} does not match certificate {cert} (or is unusable): {e.reason}"
        ) from None


@attrs.frozen
class Credentials:
    """PEM bytes of the client certificate, its private key and the CA certificate to trust.

    Build one with `from_files(cert=, key=, ca=)` or `for_user("alice")`.
    """

    cert: bytes = attrs.field(repr=False)
    key: bytes = attrs.field(repr=False)
    ca: bytes = attrs.field(repr=False)
    source: str = ""
    """Where the files came from, for messages."""

    @classmethod
    def from_files(
        cls, *, cert: str | os.PathLike[str], key: str | os.PathLike[str], ca: str | os.PathLike[str]
    ) -> Credentials:
        """Read the three PEM files; CredentialsError naming the file if one is missing or malformed."""
        cert_path, key_path, ca_path = _path(cert), _path(key), _path(ca)
        credentials = cls(
            cert=_read(cert_path, "certificate", b"-----BEGIN CERTIFICATE-----"),
            key=_read(key_path, "private key", b"PRIVATE KEY-----"),
            ca=_read(ca_path, "CA certificate", b"-----BEGIN CERTIFICATE-----"),
            source=f"{cert_path} (CA {ca_path})",
        )
        _check_key_matches(cert_path, key_path)
        return credentials

    @classmethod
    def for_user(cls, name: str, certs_dir: str | os.PathLike[str] | None = None) -> Credentials:
        """`<certs_dir>/<name>.crt`, `<name>.key` and `ca.crt`.

        certs_dir defaults to $JOBCTL_CERTS, else the repository's certs/ folder (for a source checkout).
        """
        if not name or "/" in name or name.startswith("."):
            raise CredentialsError(f"invalid user name {name!r}")
        if certs_dir is not None:
            folder, origin = _path(certs_dir), "given"
        elif os.environ.get(CERTS_ENV):
            folder, origin = _default_certs_folder(), f"from ${CERTS_ENV}"
        else:
            folder, origin = _default_certs_folder(), f"the repository's; set ${CERTS_ENV} to use another"
        if not os.path.isdir(folder):
            raise CredentialsError(f"certificates folder {folder} ({origin}) does not exist")
        try:
            return cls.from_files(
                cert=os.path.join(folder, f"{name}.crt"),
                key=os.path.join(folder, f"{name}.key"),
                ca=os.path.join(folder, "ca.crt"),
            )
        except CredentialsError as e:
            raise CredentialsError(
                f"no usable certificate for user {name!r} in {folder} ({origin}): {e}"
            ) from None

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """The grpc channel credentials for mutual TLS."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def credentials_for(settings: Settings) -> Credentials:
    """The credentials `settings` (from `jobclient.config.resolve`) name: a user's, or three files."""
    if settings.user is not None:
        return Credentials.for_user(settings.user, settings.certs)
    if settings.cert is None or settings.key is None or settings.ca is None:
        raise CredentialsError("no identity: give a user name, or the certificate, key and CA files")
    return Credentials.from_files(cert=settings.cert, key=settings.key, ca=settings.ca)
