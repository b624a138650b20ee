"""Client certificates minted at test time with the openssl command, signed by `certs/ca.key`.

Used by the certificate-rule tests (an intermediate CA, a CA:TRUE leaf, awkward CNs): nothing here is
checked in, every key lives in the test's tmp directory.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from server_harness import CERTS

SUBJECT_BASE = "/C=US/ST=CA/L=SF/O=JobWorker"

LEAF_EXT = """[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""
CA_LEAF_EXT = """[ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, digitalSignature, keyCertSign
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""
INTERMEDIATE_EXT = """[ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


def _run(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def mint(
    tmp: Path,
    name: str,
    subject: str | dict[str, str],
    *,
    extensions: str = LEAF_EXT,
    ca_cert: Path = CERTS / "ca.crt",
    ca_key: Path = CERTS / "ca.key",
) -> tuple[Path, Path]:
    """A new P-256 key and a certificate signed by the CA given; (cert, key). `subject` is an
    openssl -subj string, or {attribute: value} written to a config file as UTF-8 (openssl config
    escapes such as \\n work there, so a CN may hold a newline)."""
    key, csr, cert, ext = (tmp / f"{name}.{kind}" for kind in ("key", "csr", "crt", "ext"))
    ext.write_text(extensions)
    _run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
    if isinstance(subject, str):
        _run("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    else:
        config = tmp / f"{name}.cnf"
        fields = "".join(f"{k} = {v}\n" for k, v in subject.items())
        config.write_text(f"[req]\ndistinguished_name = dn\nprompt = no\nutf8 = yes\n[dn]\n{fields}", "utf-8")
        _run("req", "-new", "-key", str(key), "-config", str(config), "-out", str(csr))
    _run(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-set_serial",
        "0x" + name.encode().hex()[:30], "-sha256", "-days", "30", "-extfile", str(ext), "-extensions", "ext",
        "-out", str(cert),
    )  # fmt: skip
    return cert, key


def chained_admin(tmp: Path) -> tuple[Path, Path]:
    """[leaf CN=Carl OU=admin] + [an intermediate CA:TRUE signed by our CA]: a chain file and the key."""
    inter_cert, inter_key = mint(
        tmp, "intermediate", f"{SUBJECT_BASE}/OU=ca/CN=Intermediate", extensions=INTERMEDIATE_EXT
    )
    leaf_cert, leaf_key = mint(
        tmp, "chained-carl", f"{SUBJECT_BASE}/OU=admin/CN=Carl", ca_cert=inter_cert, ca_key=inter_key
    )
    chain = tmp / "chained-carl-chain.crt"
    chain.write_bytes(leaf_cert.read_bytes() + inter_cert.read_bytes())
    return chain, leaf_key
