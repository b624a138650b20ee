"""Who is calling: the verified client certificate's CN (lower-cased) and its OU as the role.

gRPC has already verified the chain against the CA (and BoringSSL refuses a client certificate whose
extendedKeyUsage lacks clientAuth). This module checks what the handshake does not:

* the connection is TLS 1.3 (a second line behind the cipher-list trick in `jobserver/__init__.py`);
* the certificate *has* an extendedKeyUsage with clientAuth (BoringSSL accepts a certificate without
  any EKU extension for any purpose);
* exactly one CN that is a valid user name and exactly one OU that is a known role;
* the certificate is a leaf signed directly by our CA, not through an intermediate (`direct_issuer`).

A user name is the CN lower-cased, and must match `USER_NAME_RE` in full: ASCII only, so that no
Unicode case folding can turn one name into another (the Kelvin sign "\u212aarl" lower-cases to "karl"),
and no trailing newline slips through a `$`.
"""

from __future__ import annotations

import enum
import re
import threading
from collections.abc import Mapping, Sequence

import attrs

from jobserver.certinfo import (
    OID_CLIENT_AUTH,
    OID_COMMON_NAME,
    OID_ORGANIZATIONAL_UNIT,
    parse_pem,
)
from jobserver.direct_issuer import DirectIssuers
from jobserver.errors import CertificateError, PermissionDenied, Unauthenticated

#: What a user name (a certificate's CN, lower-cased) must be, matched in full: jobcore's owner syntax.
USER_NAME_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,63}", re.ASCII)


def user_name(text: str) -> str | None:
    """`text` lower-cased as a user name, or None when it is not one (non-ASCII, bad characters...)."""
    if not text.isascii():
        return None
    name = text.lower()
    return name if USER_NAME_RE.fullmatch(name) else None


class Role(enum.StrEnum):
    USER = "user"
    ADMIN = "admin"


@attrs.frozen
class Identity:
    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def may_access(self, owner: str) -> bool:
        return self.is_admin or owner == self.name


def _unauthenticated(message: str) -> Unauthenticated:
    return Unauthenticated(message)


def _denied(message: str) -> PermissionDenied:
    return PermissionDenied(message)


#: How many certificates' identities a `CertificateIdentities` keeps.
KNOWN_CERTIFICATES = 1024


class CertificateIdentities:
    """The identity each client certificate (its PEM bytes, as verified by the handshake) carries,
    worked out once: parsing a certificate in Python (~0.1 ms) was a share of every call's CPU.
    An identity is a pure function of the certificate's bytes and our CA(s), so a hit is what the
    checks would say; a refused certificate is never kept (each of its calls is checked and refused
    afresh). At most `max_entries` (the oldest one out first). Thread-safe."""

    def __init__(self, issuers: DirectIssuers | None = None, max_entries: int = KNOWN_CERTIFICATES) -> None:
        self._issuers = issuers
        self._max_entries = max_entries
        self._known: dict[bytes, Identity] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._known)

    def identity(self, pem: bytes) -> Identity:
        known = self._known.get(pem)
        if known is not None:
            return known
        identity = identity_from_certificate(pem, self._issuers)
        with self._lock:
            while len(self._known) >= self._max_entries:
                self._known.pop(next(iter(self._known)))
            self._known[pem] = identity
        return identity


def identity_from_auth_context(
    auth: Mapping[str, Sequence[bytes]],
    issuers: DirectIssuers | None = None,
    certificates: CertificateIdentities | None = None,
) -> Identity:
    """The caller's identity from `ServicerContext.auth_context()`, or Unauthenticated (no usable
    certificate) / PermissionDenied (a certificate of no role) saying why not.
    With `issuers`, the certificate must also be signed directly by one of those CAs; `certificates`
    (built with the same issuers) answers for a certificate seen before."""
    if auth.get("transport_security_type") != [b"ssl"] or not auth.get("x509_pem_cert"):
        raise _unauthenticated("a client certificate is required")
    version = b"".join(auth.get("ssl_tls_version", []))
    if version != b"TLSv1.3":
        raise _unauthenticated(f"TLS 1.3 is required, this connection uses {version.decode() or 'unknown'}")
    pem = bytes(auth["x509_pem_cert"][0])
    if certificates is not None:
        return certificates.identity(pem)
    return identity_from_certificate(pem, issuers)


def identity_from_certificate(pem: bytes, issuers: DirectIssuers | None = None) -> Identity:
    """The identity a verified client certificate carries (see `identity_from_auth_context`)."""
    try:
        cert = parse_pem(pem)
    except CertificateError as exc:
        raise _unauthenticated(f"the client certificate cannot be read: {exc}") from None
    if issuers is not None:
        problem = issuers.check(pem)
        if problem is not None:
            raise _unauthenticated(problem)
    usages = cert.extended_key_usages
    if usages is None or OID_CLIENT_AUTH not in usages:
        raise _denied("the client certificate is not for client authentication (no clientAuth usage)")
    names = cert.subject_values(OID_COMMON_NAME)
    if len(names) != 1:
        raise _denied("the client certificate must name exactly one user (CN)")
    name = user_name(names[0])
    if name is None:
        raise _denied(
            f"the client certificate's CN {names[0][:80]!r} is not a valid user name "
            f"(ASCII letters, digits, '_', '.', '-'; up to 64; not starting with a digit, '.' or '-')"
        )
    units = cert.subject_values(OID_ORGANIZATIONAL_UNIT)
    if len(units) != 1:
        raise _denied("the client certificate must carry exactly one role (OU)")
    try:
        role = Role(units[0].lower())
    except ValueError:
        raise _denied(f"the client certificate's role (OU) {units[0]!r} is not one of user, admin") from None
    return Identity(name=name, role=role)
