"""Who is calling: the verified client certificate's CN (lower-cased) and its OU as the role.

gRPC has already verified the chain against the CA (and BoringSSL refuses a client certificate whose
extendedKeyUsage lacks clientAuth). This module checks what the handshake does not:

* the connection is TLS 1.3 (a second line behind the cipher-list trick in `jobserver/__init__.py`);
* the certificate *has* an extendedKeyUsage with clientAuth (BoringSSL accepts a certificate without
  any EKU extension for any purpose);
* exactly one CN that is a valid user name and exactly one OU that is a known role.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

import attrs
import grpc

from jobcore.spec import OWNER_RE
from jobserver.certinfo import (
    OID_CLIENT_AUTH,
    OID_COMMON_NAME,
    OID_ORGANIZATIONAL_UNIT,
    CertificateError,
    parse_pem,
)
from jobserver.errors import RpcStatusError


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


def _unauthenticated(message: str) -> RpcStatusError:
    return RpcStatusError(grpc.StatusCode.UNAUTHENTICATED, message)


def _denied(message: str) -> RpcStatusError:
    return RpcStatusError(grpc.StatusCode.PERMISSION_DENIED, message)


def identity_from_auth_context(auth: Mapping[str, Sequence[bytes]]) -> Identity:
    """The caller's identity from `ServicerContext.auth_context()`, or RpcStatusError saying why not."""
    if auth.get("transport_security_type") != [b"ssl"] or not auth.get("x509_pem_cert"):
        raise _unauthenticated("a client certificate is required")
    version = b"".join(auth.get("ssl_tls_version", []))
    if version != b"TLSv1.3":
        raise _unauthenticated(f"TLS 1.3 is required, this connection uses {version.decode() or 'unknown'}")
    try:
        cert = parse_pem(auth["x509_pem_cert"][0])
    except CertificateError as exc:
        raise _unauthenticated(f"the client certificate cannot be read: {exc}") from None
    usages = cert.extended_key_usages
    if usages is None or OID_CLIENT_AUTH not in usages:
        raise _denied("the client certificate is not for client authentication (no clientAuth usage)")
    names = cert.subject_values(OID_COMMON_NAME)
    if len(names) != 1:
        raise _denied("the client certificate must name exactly one user (CN)")
    name = names[0].lower()
    if not OWNER_RE.match(name):
        raise _denied(f"the client certificate's CN {names[0]!r} is not a valid user name")
    units = cert.subject_values(OID_ORGANIZATIONAL_UNIT)
    if len(units) != 1:
        raise _denied("the client certificate must carry exactly one role (OU)")
    try:
        role = Role(units[0].lower())
    except ValueError:
        raise _denied(f"the client certificate's role (OU) {units[0]!r} is not one of user, admin") from None
    return Identity(name=name, role=role)
