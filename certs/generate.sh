#!/usr/bin/env bash
# Regenerate every certificate and key in certs/ (and the negative-test fixtures in certs/test/), or
# issue single certificates from an existing CA:
#
#   bash certs/generate.sh            # or: make certs   -- regenerates the whole checked-in set
#   bash certs/generate.sh ca DIR                         -- a new CA (DIR/ca.crt, DIR/ca.key) for a deployment
#   bash certs/generate.sh user NAME ROLE [--ca-dir DIR] [--out DIR] [--days N]
#   bash certs/generate.sh server NAME [--dns NAME]... [--ip ADDR]... [--ca-dir DIR] [--out DIR] [--days N]
#
# `user` issues NAME.crt/.key (subject OU=ROLE, CN=NAME; ROLE is user or admin; EKU clientAuth);
# `server` issues NAME.crt/.key (CN=NAME; EKU serverAuth; SAN = every --dns and --ip, at least one).
# Both sign with DIR/ca.crt + ca.key (--ca-dir, default: this folder's CA) and write to --out (default:
# the CA's folder); they never overwrite an existing file. See docs/certificates.md.
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

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -n 's/^#   //p' >&2
  exit 2
}
die() { echo "generate.sh: $*" >&2; exit 1; }

# issue_leaf KIND NAME SUBJECT EKU SAN PURPOSE CA_DIR OUT DAYS: one certificate, verified for PURPOSE.
issue_leaf() {
  local kind="$1" name="$2" subject="$3" eku="$4" san="$5" purpose="$6" cadir="$7" out="$8" days="$9"
  [[ -f "$cadir/ca.crt" && -f "$cadir/ca.key" ]] || die "no CA in $cadir (ca.crt and ca.key); make one: generate.sh ca DIR"
  [[ -d "$out" ]] || die "output folder $out does not exist"
  for f in "$out/$name.crt" "$out/$name.key"; do
    [[ ! -e "$f" ]] || die "$f already exists; remove it first to issue a new $kind certificate"
  done
  LEAF_DAYS="$days" leaf "$out" "$name" "$subject" "$eku" "$san" ca "$cadir"
  chmod 644 "$out/$name.crt"
  openssl verify -CAfile "$cadir/ca.crt" -purpose "$purpose" "$out/$name.crt" >/dev/null \
    || die "$out/$name.crt does not verify against $cadir/ca.crt"
  echo "$kind certificate: $out/$name.crt, key: $out/$name.key (signed by $cadir/ca.crt)"
}

issue() { # issue user|server ARGS...
  local kind="$1" name="${2:-}"; shift 2 || usage
  local cadir="$CERTS" out="" days="$LEAF_DAYS" role="" san=""
  if [[ "$kind" == user ]]; then role="${1:-}"; shift || usage; fi
  while (($#)); do
    case "$1" in
      --ca-dir) cadir="${2:?--ca-dir needs a folder}"; shift 2 ;;
      --out) out="${2:?--out needs a folder}"; shift 2 ;;
      --days) days="${2:?--days needs a number}"; shift 2 ;;
      --dns) [[ "$kind" == server ]] || usage
        [[ "${2:-}" =~ ^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$ ]] \
          || die "--dns ${2:-}: not a DNS name"
        san="${san:+$san, }DNS:$2"; shift 2 ;;
      --ip) [[ "$kind" == server ]] || usage
        [[ "${2:-}" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ || "${2:-}" =~ ^[0-9A-Fa-f:]+:[0-9A-Fa-f:.]*$ ]] \
          || die "--ip ${2:-}: not an IPv4 or IPv6 address"
        san="${san:+$san, }IP:$2"; shift 2 ;;
      *) usage ;;
    esac
  done
  [[ "$days" =~ ^[1-9][0-9]{0,4}$ ]] || die "--days $days: not a number of days (1-99999)"
  out="${out:-$cadir}"
  if [[ "$kind" == user ]]; then
    # The server takes the user name from the CN, lower-cased, as a jobcore owner name.
    [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_.-]{0,63}$ ]] \
      || die "user name '$name': letters, digits, '_', '.', '-' (not first), at most 64"
    [[ "$role" == user || "$role" == admin ]] || die "role '$role': must be user or admin"
    issue_leaf user "$(tr '[:upper:]' '[:lower:]' <<<"$name")" "$SUBJECT_BASE/OU=$role/CN=$name" \
      clientAuth "" sslclient "$cadir" "$out" "$days"
  else
    [[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ ]] || die "server name '$name': letters, digits, '_', '.', '-'"
    [[ -n "$san" ]] || die "server $name: give at least one --dns NAME or --ip ADDR (the names clients connect to)"
    issue_leaf server "$name" "$SUBJECT_BASE/OU=server/CN=$name" serverAuth "$san" sslserver "$cadir" "$out" "$days"
  fi
}

case "${1:-all}" in
  all) [[ $# -le 1 ]] || usage ;;
  ca)
    [[ $# -eq 2 ]] || usage
    mkdir -p "$2"
    [[ ! -e "$2/ca.key" && ! -e "$2/ca.crt" ]] || die "$2 already holds a CA (ca.crt/ca.key); not replacing it"
    new_ca "$2" ca "JobWorker CA"
    chmod 644 "$2/ca.crt"
    echo "CA: $2/ca.crt, key: $2/ca.key (keep ca.key offline; servers and clients need only ca.crt)"
    exit 0 ;;
  user | server) issue "$@"; exit 0 ;;
  -h | --help | help) usage ;;
  *) usage ;;
esac

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
