"""The few facts the server needs from an X.509 certificate, read with a minimal DER walk.

Why not `cryptography`: it would be a new dependency for three facts (subject attributes, extended key
usages, public-key algorithm), and grpc has already verified the chain, so nothing here has to check a
signature or trust anything. `ssl` in the standard library only decodes certificates of a live
`ssl.SSLSocket`, not a PEM given to us by grpc. The walk below reads DER (X.690) tag-length-value
records, enough of RFC 5280 to find the subject, the extensions and the key algorithm, and rejects
anything malformed with `CertificateError`.
"""

from __future__ import annotations

import ssl

import attrs

from jobserver.errors import CertificateError

OID_COMMON_NAME = "2.5.4.3"
OID_ORGANIZATIONAL_UNIT = "2.5.4.11"
OID_EXTENDED_KEY_USAGE = "2.5.29.37"
OID_CLIENT_AUTH = "1.3.6.1.5.5.7.3.2"
OID_SERVER_AUTH = "1.3.6.1.5.5.7.3.1"
OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"

_SEQUENCE = 0x30
_SET = 0x31
_OID = 0x06
_BOOLEAN = 0x01
_OCTET_STRING = 0x04
_EXTENSIONS_TAG = 0xA3  # [3] EXPLICIT in TBSCertificate
_VERSION_TAG = 0xA0  # [0] EXPLICIT
_STRING_TAGS = {
    0x0C: "utf-8",  # UTF8String
    0x13: "ascii",  # PrintableString
    0x16: "ascii",  # IA5String
    0x14: "latin-1",  # TeletexString (T.61; latin-1 is the usual practical reading)
    0x1E: "utf-16-be",  # BMPString
}


@attrs.frozen
class CertificateInfo:
    """Subject attributes (OID -> values, in order), extended key usages (None = no EKU extension) and
    the public key's algorithm OID."""

    subject: dict[str, tuple[str, ...]]
    extended_key_usages: frozenset[str] | None
    public_key_algorithm: str

    def subject_values(self, oid: str) -> tuple[str, ...]:
        return self.subject.get(oid, ())


def _read_tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """Read one DER record at `pos`: (tag, contents, position after it)."""
    if pos + 2 > len(data):
        raise CertificateError("truncated DER record")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise CertificateError("multi-byte DER tags are not used in certificates")
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise CertificateError("invalid DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(data):
        raise CertificateError("DER record runs past the end of its container")
    return tag, data[pos:end], end


def _children(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    pos = 0
    while pos < len(data):
        tag, value, pos = _read_tlv(data, pos)
        out.append((tag, value))
    return out


def _expect(record: tuple[int, bytes], tag: int, what: str) -> bytes:
    if record[0] != tag:
        raise CertificateError(f"expected {what} (tag 0x{tag:02x}), found tag 0x{record[0]:02x}")
    return record[1]


def decode_oid(value: bytes) -> str:
    """Dotted form of an OBJECT IDENTIFIER's contents."""
    if not value:
        raise CertificateError("empty OBJECT IDENTIFIER")
    arcs: list[int] = []
    acc = 0
    for byte in value:
        acc = (acc << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(acc)
            acc = 0
    if value[-1] & 0x80:
        raise CertificateError("truncated OBJECT IDENTIFIER")
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in head + arcs[1:])


def _decode_string(tag: int, value: bytes) -> str:
    encoding = _STRING_TAGS.get(tag)
    if encoding is None:
        raise CertificateError(f"unsupported string type 0x{tag:02x} in a name")
    try:
        return value.decode(encoding)
    except UnicodeDecodeError as exc:
        raise CertificateError(f"badly encoded string in a name: {exc}") from None


def _parse_name(value: bytes) -> dict[str, tuple[str, ...]]:
    attributes: dict[str, list[str]] = {}
    for rdn in _children(value):
        for atv in _children(_expect(rdn, _SET, "a RelativeDistinguishedName SET")):
            parts = _children(_expect(atv, _SEQUENCE, "an AttributeTypeAndValue"))
            if len(parts) != 2:
                raise CertificateError("an AttributeTypeAndValue must have a type and a value")
            oid = decode_oid(_expect(parts[0], _OID, "an attribute type"))
            attributes.setdefault(oid, []).append(_decode_string(*parts[1]))
    return {oid: tuple(values) for oid, values in attributes.items()}


def _parse_extended_key_usages(extensions: bytes) -> frozenset[str] | None:
    for ext in _children(_expect(_children(extensions)[0], _SEQUENCE, "Extensions")):
        parts = _children(_expect(ext, _SEQUENCE, "an Extension"))
        if not parts:
            raise CertificateError("empty Extension")
        if decode_oid(_expect(parts[0], _OID, "an extension id")) != OID_EXTENDED_KEY_USAGE:
            continue
        payload = parts[-1]
        inner = _children(_expect(payload, _OCTET_STRING, "an extension value"))
        if len(inner) != 1:
            raise CertificateError("malformed extendedKeyUsage extension")
        usages = _children(_expect(inner[0], _SEQUENCE, "the extendedKeyUsage list"))
        return frozenset(decode_oid(_expect(u, _OID, "a key purpose id")) for u in usages)
    return None


def parse_der(der: bytes) -> CertificateInfo:
    """Read a DER certificate's subject, extended key usages and public-key algorithm."""
    top = _children(der)
    if len(top) != 1:
        raise CertificateError("a certificate is exactly one DER SEQUENCE")
    cert = _children(_expect(top[0], _SEQUENCE, "Certificate"))
    if len(cert) != 3:
        raise CertificateError("a Certificate has tbsCertificate, signatureAlgorithm and signature")
    tbs = _children(_expect(cert[0], _SEQUENCE, "TBSCertificate"))
    if tbs and tbs[0][0] == _VERSION_TAG:
        tbs = tbs[1:]
    # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, then optional fields.
    if len(tbs) < 6:
        raise CertificateError("TBSCertificate is missing fields")
    subject = _parse_name(_expect(tbs[4], _SEQUENCE, "the subject Name"))
    spki = _children(_expect(tbs[5], _SEQUENCE, "SubjectPublicKeyInfo"))
    algorithm = _children(_expect(spki[0], _SEQUENCE, "the key AlgorithmIdentifier"))
    key_algorithm = decode_oid(_expect(algorithm[0], _OID, "the key algorithm"))
    usages: frozenset[str] | None = None
    for tag, value in tbs[6:]:
        if tag == _EXTENSIONS_TAG:
            usages = _parse_extended_key_usages(value)
    return CertificateInfo(subject=subject, extended_key_usages=usages, public_key_algorithm=key_algorithm)


def parse_pem(pem: str | bytes) -> CertificateInfo:
    """Like `parse_der`, for the first certificate of a PEM text."""
    text = pem.decode("ascii", "replace") if isinstance(pem, bytes) else pem
    begin = text.find("-----BEGIN CERTIFICATE-----")
    end_marker = "-----END CERTIFICATE-----"
    end = text.find(end_marker, begin)
    if begin < 0 or end < 0:
        raise CertificateError("no PEM certificate found")
    try:
        der = ssl.PEM_cert_to_DER_cert(text[begin : end + len(end_marker)])
    except ValueError as exc:
        raise CertificateError(f"invalid PEM certificate: {exc}") from None
    return parse_der(der)
