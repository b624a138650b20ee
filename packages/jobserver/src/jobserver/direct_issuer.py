"""The chain rule gRPC does not enforce: a client certificate must be signed *directly* by our CA.

BoringSSL (inside grpc) verifies the client's chain against `--ca` but does not enforce the CA's
`pathlen:0`: a client that sends [leaf CN=carl OU=admin] + [an intermediate CA:TRUE signed by our CA]
is accepted, so any CA:TRUE certificate ever issued could mint admins. gRPC's auth context gives us the
leaf only, not the chain it verified, so the server checks the leaf itself:

* it is not a CA (basicConstraints cA TRUE is refused);
* its issuer is exactly the subject of one of our CA certificates, and
* its signature verifies with that CA's public key (ECDSA P-256/P-384, SHA-256/384/512): a leaf signed
  by an intermediate, even one named like our CA, fails here.

ECDSA verification is done here in plain Python (no new dependency; see certinfo.py for why not
`cryptography`): a few milliseconds, cached per certificate, so each client pays it once.
"""

from __future__ import annotations

import functools
import hashlib
import ssl

import attrs

from jobserver.certinfo import _children, _expect, _read_tlv, decode_oid
from jobserver.errors import CertificateError

_SEQUENCE = 0x30
_OID = 0x06
_BIT_STRING = 0x03
_INTEGER = 0x02
_BOOLEAN = 0x01
_OCTET_STRING = 0x04
_EXTENSIONS_TAG = 0xA3
_VERSION_TAG = 0xA0

OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
OID_BASIC_CONSTRAINTS = "2.5.29.19"
_HASHES = {
    "1.2.840.10045.4.3.2": hashlib.sha256,
    "1.2.840.10045.4.3.3": hashlib.sha384,
    "1.2.840.10045.4.3.4": hashlib.sha512,
}


@attrs.frozen
class Curve:
    """A short-Weierstrass curve y^2 = x^3 + ax + b over GF(p), with generator (gx, gy) of order n."""

    name: str
    p: int
    a: int
    b: int
    gx: int
    gy: int
    n: int

    @property
    def size(self) -> int:
        return (self.p.bit_length() + 7) // 8


P256 = Curve(
    "P-256",
    p=0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF,
    a=0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFC,
    b=0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
    gx=0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    gy=0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
    n=0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
)
P384 = Curve(
    "P-384",
    p=int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFFFF0000000000000000FFFFFFFF", 16
    ),
    a=int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFFFF0000000000000000FFFFFFFC", 16
    ),
    b=int(
        "B3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875AC656398D8A2ED19D2A85C8EDD3EC2AEF", 16
    ),
    gx=int(
        "AA87CA22BE8B05378EB1C71EF320AD746E1D3B628BA79B9859F741E082542A385502F25DBF55296C3A545E3872760AB7", 16
    ),
    gy=int(
        "3617DE4A96262C6F5D9E98BF9292DC29F8F41DBD289A147CE9DA3113B5F0B8C00A60B1CE1D7E819D7A431D7C90EA0E5F", 16
    ),
    n=int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973", 16
    ),
)
_CURVES = {"1.2.840.10045.3.1.7": P256, "1.3.132.0.34": P384}

Point = tuple[int, int] | None  # None: the point at infinity


def _add(curve: Curve, p1: Point, p2: Point) -> Point:
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2), p = p1, p2, curve.p
    if x1 == x2:
        if (y1 + y2) % p == 0:
            return None
        slope = (3 * x1 * x1 + curve.a) * pow(2 * y1, -1, p) % p
    else:
        slope = (y2 - y1) * pow(x2 - x1, -1, p) % p
    x3 = (slope * slope - x1 - x2) % p
    return x3, (slope * (x1 - x3) - y1) % p


def _double_scalar(curve: Curve, u1: int, g: Point, u2: int, q: Point) -> Point:
    """u1*G + u2*Q (Shamir's trick: one pass of doublings)."""
    both = _add(curve, g, q)
    result: Point = None
    for bit in range(max(u1.bit_length(), u2.bit_length()) - 1, -1, -1):
        result = _add(curve, result, result)
        pick = ((u1 >> bit) & 1, (u2 >> bit) & 1)
        if pick == (1, 1):
            result = _add(curve, result, both)
        elif pick == (1, 0):
            result = _add(curve, result, g)
        elif pick == (0, 1):
            result = _add(curve, result, q)
    return result


def ecdsa_verify(curve: Curve, public: tuple[int, int], digest: bytes, r: int, s: int) -> bool:
    """FIPS 186-4 ECDSA verification of (r, s) over `digest` with the public point."""
    n = curve.n
    if not (1 <= r < n and 1 <= s < n):
        return False
    e = int.from_bytes(digest, "big")
    excess = len(digest) * 8 - n.bit_length()
    if excess > 0:
        e >>= excess
    w = pow(s, -1, n)
    point = _double_scalar(curve, e * w % n, (curve.gx, curve.gy), r * w % n, public)
    return point is not None and point[0] % n == r


@attrs.frozen
class _Parsed:
    tbs: bytes
    signature_algorithm: str
    signature: bytes
    issuer: bytes
    subject: bytes
    key_algorithm: str
    key_curve: str | None
    key: bytes
    is_ca: bool


def _span(data: bytes, pos: int) -> tuple[int, bytes, bytes, int]:
    """(tag, contents, the whole record's bytes, position after it)."""
    tag, value, end = _read_tlv(data, pos)
    return tag, value, data[pos:end], end


def _bit_string(value: bytes) -> bytes:
    if not value or value[0] != 0:
        raise CertificateError("a BIT STRING with unused bits where whole bytes are expected")
    return value[1:]


def _is_ca(extensions: bytes) -> bool:
    for ext in _children(_expect(_children(extensions)[0], _SEQUENCE, "Extensions")):
        parts = _children(_expect(ext, _SEQUENCE, "an Extension"))
        if not parts or decode_oid(_expect(parts[0], _OID, "an extension id")) != OID_BASIC_CONSTRAINTS:
            continue
        inner = _children(_expect(parts[-1], _OCTET_STRING, "an extension value"))
        fields = _children(_expect(inner[0], _SEQUENCE, "basicConstraints")) if inner else []
        return bool(fields) and fields[0][0] == _BOOLEAN and fields[0][1] != b"\x00"
    return False


def _parse(der: bytes) -> _Parsed:
    _tag, cert, _raw, end = _span(der, 0)
    if end != len(der):
        raise CertificateError("trailing bytes after the certificate")
    _tag, tbs_value, tbs_raw, pos = _span(cert, 0)
    sig_alg = _children(_expect(_children(cert[pos:])[0], _SEQUENCE, "signatureAlgorithm"))
    signature = _bit_string(_expect(_children(cert[pos:])[1], _BIT_STRING, "the signature"))
    fields: list[tuple[int, bytes, bytes]] = []
    at = 0
    while at < len(tbs_value):
        tag, value, raw, at = _span(tbs_value, at)
        fields.append((tag, value, raw))
    if fields and fields[0][0] == _VERSION_TAG:
        fields = fields[1:]
    if len(fields) < 6:
        raise CertificateError("TBSCertificate is missing fields")
    spki = _children(_expect(fields[5][:2], _SEQUENCE, "SubjectPublicKeyInfo"))
    algorithm = _children(_expect(spki[0], _SEQUENCE, "the key AlgorithmIdentifier"))
    key_algorithm = decode_oid(_expect(algorithm[0], _OID, "the key algorithm"))
    curve = decode_oid(algorithm[1][1]) if len(algorithm) > 1 and algorithm[1][0] == _OID else None
    is_ca = any(tag == _EXTENSIONS_TAG and _is_ca(value) for tag, value, _ in fields[6:])
    return _Parsed(
        tbs=tbs_raw,
        signature_algorithm=decode_oid(_expect(sig_alg[0], _OID, "the signature algorithm")),
        signature=signature,
        issuer=fields[2][2],
        subject=fields[4][2],
        key_algorithm=key_algorithm,
        key_curve=curve,
        key=_bit_string(_expect(spki[1], _BIT_STRING, "the public key")),
        is_ca=is_ca,
    )


def _pem_blocks(pem: bytes) -> list[bytes]:
    text = pem.decode("ascii", "replace")
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    blocks = []
    start = text.find(begin)
    while start >= 0:
        stop = text.find(end, start)
        if stop < 0:
            raise CertificateError("a PEM certificate without its END line")
        try:
            blocks.append(ssl.PEM_cert_to_DER_cert(text[start : stop + len(end)]))
        except ValueError as exc:
            raise CertificateError(f"invalid PEM certificate: {exc}") from None
        start = text.find(begin, stop)
    return blocks


@attrs.frozen
class _Authority:
    subject: bytes
    curve: Curve
    public: tuple[int, int]


class DirectIssuers:
    """Our CA certificate(s); `check(leaf_pem)` says why a client certificate is not a leaf signed
    directly by one of them (None when it is)."""

    def __init__(self, ca_pem: bytes) -> None:
        blocks = _pem_blocks(ca_pem)
        if not blocks:
            raise CertificateError("no PEM certificate found")
        self._authorities = [self._authority(der) for der in blocks]
        self.check = functools.lru_cache(maxsize=4096)(self._check)

    @staticmethod
    def _authority(der: bytes) -> _Authority:
        ca = _parse(der)
        curve = _CURVES.get(ca.key_curve or "")
        if ca.key_algorithm != OID_EC_PUBLIC_KEY or curve is None:
            raise CertificateError(
                "the CA certificate must have an ECDSA P-256 or P-384 key (the server checks that "
                "client certificates are signed by it directly)"
            )
        size = curve.size
        if len(ca.key) != 1 + 2 * size or ca.key[0] != 4:
            raise CertificateError("the CA's public key is not an uncompressed EC point")
        x, y = int.from_bytes(ca.key[1 : 1 + size], "big"), int.from_bytes(ca.key[1 + size :], "big")
        if (y * y - (x * x * x + curve.a * x + curve.b)) % curve.p:
            raise CertificateError("the CA's public key is not a point of its curve")
        return _Authority(subject=ca.subject, curve=curve, public=(x, y))

    def _check(self, leaf_pem: bytes) -> str | None:
        try:
            blocks = _pem_blocks(leaf_pem)
            if not blocks:
                return "no client certificate"
            leaf = _parse(blocks[0])
        except (CertificateError, IndexError) as exc:
            return f"the client certificate cannot be read: {exc}"
        if leaf.is_ca:
            return "the client certificate is a CA certificate (basicConstraints CA:TRUE); a leaf is required"
        hash_function = _HASHES.get(leaf.signature_algorithm)
        if hash_function is None:
            return f"the client certificate's signature algorithm {leaf.signature_algorithm} is not ECDSA"
        try:
            r_s = _children(_expect(_children(leaf.signature)[0], _SEQUENCE, "an ECDSA signature"))
            r = int.from_bytes(_expect(r_s[0], _INTEGER, "r"), "big")
            s = int.from_bytes(_expect(r_s[1], _INTEGER, "s"), "big")
        except (CertificateError, IndexError):
            return "the client certificate's signature is malformed"
        digest = hash_function(leaf.tbs).digest()
        for authority in self._authorities:
            if authority.subject == leaf.issuer and ecdsa_verify(
                authority.curve, authority.public, digest, r, s
            ):
                return None
        return (
            "the client certificate is not signed directly by this server's CA "
            "(intermediate certificates are not accepted)"
        )
