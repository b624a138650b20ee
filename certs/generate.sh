#!/usr/bin/env bash
# Regenerate every certificate and key in certs/ (and the negative-test fixtures in certs/test/).
#
#   bash certs/generate.sh            # or: make certs
#
# ECDSA P-256 keys throughout: the server's TLS 1.3-only setting relies on ECDSA certificates (see
# docs/certificates.md). Needs only openssl (1.1.1 or 3.x). Every run makes a NEW CA, so all certs change
# together; commit the whole folder. See docs/certificates.md for what each file is.
set -euo pipefail

CERTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TEST="$CERTS/test"
CA_DAYS=3650    # 10 years
LEAF_DAYS=1825  # 5 years
SUBJECT_BASE="/C=US/ST=CA/L=SF/O=JobWorker"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
umask 077

new_key() { # new_key FILE
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -pkeyopt ec_param_enc:named_curve \
    -out "$1" 2>/dev/null
  chmod 600 "$1"
}

serial() { echo "0x$(openssl rand -hex 16)"; }

# An extension section for a leaf certificate, written to $WORK/<name>.ext.
leaf_ext() { # leaf_ext NAME EKU [SAN]
  {
    echo "[ext]"
    echo "basicConstraints = critical, CA:FALSE"
    echo "keyUsage = critical, digitalSignature"
    echo "extendedKeyUsage = $2"
    echo "subjectKeyIdentifier = hash"
    echo "authorityKeyIdentifier = keyid, issuer"
    if [[ -n "${3:-}" ]]; then echo "subjectAltName = $3"; fi
  } >"$WORK/$1.ext"
}

new_ca() { # new_ca DIR NAME CN
  new_key "$1/$2.key"
  cat >"$WORK/$2-ca.ext" <<CONF
[req]
distinguished_name = dn
prompt = no
[dn]
[ext]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
CONF
  openssl req -new -x509 -key "$1/$2.key" -sha256 -days "$CA_DAYS" -set_serial "$(serial)" \
    -subj "$SUBJECT_BASE/OU=ca/CN=$3" -config "$WORK/$2-ca.ext" -extensions ext -out "$1/$2.crt"
}

# leaf DIR NAME SUBJECT EKU [SAN] [CA_NAME] [CA_DIR]: a key and a certificate signed by the CA.
leaf() {
  local dir="$1" name="$2" subject="$3" eku="$4" san="${5:-}" ca="${6:-ca}" cadir="${7:-$CERTS}"
  new_key "$dir/$name.key"
  openssl req -new -key "$dir/$name.key" -subj "$subject" -out "$WORK/$name.csr"
  leaf_ext "$name" "$eku" "$san"
  openssl x509 -req -in "$WORK/$name.csr" -CA "$cadir/$ca.crt" -CAkey "$cadir/$ca.key" \
    -set_serial "$(serial)" -sha256 -days "$LEAF_DAYS" -extfile "$WORK/$name.ext" -extensions ext \
    -out "$dir/$name.crt" 2>/dev/null
}

# A client certificate valid only in the past. `openssl x509 -not_before/-not_after` needs OpenSSL 3.4+;
# `openssl ca -startdate/-enddate` works on every version, so use that with a throw-away CA database.
expired_leaf() { # expired_leaf DIR NAME SUBJECT
  local dir="$1" name="$2" subject="$3"
  new_key "$dir/$name.key"
  openssl req -new -key "$dir/$name.key" -subj "$subject" -out "$WORK/$name.csr"
  mkdir -p "$WORK/cadb"
  : >"$WORK/cadb/index.txt"
  cat >"$WORK/$name-ca.cnf" <<CONF
[ca]
default_ca = dflt
[dflt]
database = $WORK/cadb/index.txt
new_certs_dir = $WORK/cadb
serial = $WORK/cadb/serial
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
[any]
commonName = supplied
[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
CONF
  openssl rand -hex 16 >"$WORK/cadb/serial"
  openssl ca -batch -notext -config "$WORK/$name-ca.cnf" -cert "$CERTS/ca.crt" -keyfile "$CERTS/ca.key" \
    -startdate 20200101000000Z -enddate 20200102000000Z -preserveDN -extensions ext \
    -in "$WORK/$name.csr" -out "$dir/$name.crt" 2>"$WORK/ca.log" || { cat "$WORK/ca.log" >&2; exit 1; }
}

rm -f "$CERTS"/*.crt "$CERTS"/*.key "$CERTS"/*.srl
rm -rf "$TEST"
mkdir -p "$TEST"
chmod 755 "$TEST"

# --- the real CA, server and clients -------------------------------------------------------------------
new_ca "$CERTS" ca "JobWorker CA"
leaf "$CERTS" server "$SUBJECT_BASE/OU=server/CN=Worker" serverAuth "DNS:localhost, IP:127.0.0.1"
leaf "$CERTS" alice "$SUBJECT_BASE/OU=user/CN=Alice" clientAuth
leaf "$CERTS" bob "$SUBJECT_BASE/OU=user/CN=Bob" clientAuth
leaf "$CERTS" carl "$SUBJECT_BASE/OU=admin/CN=Carl" clientAuth

# --- negative-test fixtures (all claim to be Alice, so only the defect named by the file differs) ---------
expired_leaf "$TEST" expired "$SUBJECT_BASE/OU=user/CN=Alice"
new_ca "$WORK" untrusted-ca "Untrusted CA"
cp "$WORK/untrusted-ca.crt" "$TEST/untrusted-ca.crt"
leaf "$TEST" untrusted "$SUBJECT_BASE/OU=user/CN=Alice" clientAuth "" untrusted-ca "$WORK"
leaf "$TEST" no-client-auth "$SUBJECT_BASE/OU=user/CN=Alice" serverAuth
leaf "$TEST" no-ou "$SUBJECT_BASE/CN=Alice" clientAuth
leaf "$TEST" unknown-ou "$SUBJECT_BASE/OU=guest/CN=Alice" clientAuth
leaf "$TEST" no-cn "$SUBJECT_BASE/OU=user" clientAuth

chmod 644 "$CERTS"/*.crt "$TEST"/*.crt

# --- self-check ---------------------------------------------------------------------------------------
openssl verify -CAfile "$CERTS/ca.crt" -purpose sslserver "$CERTS/server.crt" >/dev/null
for c in alice bob carl; do openssl verify -CAfile "$CERTS/ca.crt" -purpose sslclient "$CERTS/$c.crt" >/dev/null; done
for c in no-ou unknown-ou no-cn; do openssl verify -CAfile "$CERTS/ca.crt" -purpose sslclient "$TEST/$c.crt" >/dev/null; done
if openssl verify -CAfile "$CERTS/ca.crt" "$TEST/expired.crt" >/dev/null 2>&1; then
  echo "generate.sh: test/expired.crt unexpectedly verifies" >&2; exit 1
fi
if openssl verify -CAfile "$CERTS/ca.crt" "$TEST/untrusted.crt" >/dev/null 2>&1; then
  echo "generate.sh: test/untrusted.crt unexpectedly verifies" >&2; exit 1
fi
if openssl verify -CAfile "$CERTS/ca.crt" -purpose sslclient "$TEST/no-client-auth.crt" >/dev/null 2>&1; then
  echo "generate.sh: test/no-client-auth.crt unexpectedly verifies as a client" >&2; exit 1
fi
echo "certificates written to $CERTS and $TEST"
