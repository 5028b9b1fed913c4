#!/usr/bin/env bash
# gen-certs.sh DIR [KEYID] — test certificates and an APNs auth key.
# gen-certs.sh --apns-cert DIR BUNDLE_ID PASSWORD [self-signed]
#                          — an APNs provider certificate for BUNDLE_ID.
#
# Makes, in DIR (created if missing):
#   ca.crt ca.key              EC P-256 test CA
#   server.crt server.key      server cert for 127.0.0.1 and localhost, signed by the CA
#   AuthKey_<KEYID>.p8         EC P-256 private key, PKCS#8 PEM, like Apple's download
#   authkey_pub.pem            its public key, for fake-apns --auth-key
# KEYID defaults to ABC123DEFG (Apple's key ids are 10 characters).
# Keys are mode 0600. Idempotent: files that exist and fit together are kept;
# a missing or broken piece is remade (with whatever depends on it).
#
# --apns-cert makes, in DIR, a test "Apple push CA" (push_ca.crt/.key, made
# once; fake-apns --client-ca push_ca.crt) and a client certificate for
# BUNDLE_ID signed by it, subject UID=BUNDLE_ID like Apple's (with
# "self-signed": signed by nobody the fake trusts, for BadCertificate):
#   apns-BUNDLE_ID.pem          certificate and key in one PEM file
#   apns-BUNDLE_ID.crt/.key     the same apart (PEM)
#   apns-BUNDLE_ID.p12          PKCS#12 with PASSWORD
# Always remade.
set -euo pipefail

if [ "${1:-}" = "--apns-cert" ]; then
    if [ $# -lt 4 ] || [ $# -gt 5 ]; then
        echo "usage: gen-certs.sh --apns-cert DIR BUNDLE_ID PASSWORD [self-signed]" >&2
        exit 2
    fi
    dir=$2 bundle=$3 pass=$4 mode=${5:-}
    if ! [[ $bundle =~ ^[A-Za-z0-9.-]{1,200}$ ]]; then
        echo "gen-certs.sh: BUNDLE_ID '$bundle' is not 1..200 of [A-Za-z0-9.-]" >&2
        exit 2
    fi
    mkdir -p "$dir"
    cd "$dir"
    umask 077
    tmp=$(mktemp -d .gen-certs.XXXXXX)
    trap 'rm -rf "$tmp"' EXIT
    if ! [ -s push_ca.key ] || ! [ -s push_ca.crt ]; then
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out push_ca.key 2>/dev/null
        openssl req -x509 -new -key push_ca.key -sha256 -days 3650 \
            -subj "/CN=Tidings test Apple push CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" -out push_ca.crt 2>/dev/null
    fi
    out="apns-$bundle"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/key" 2>/dev/null
    subj="/UID=$bundle/CN=Apple Push Services: $bundle/OU=TESTTEAM01/O=Tidings tests/C=US"
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' \
        > "$tmp/ext.cnf"
    if [ "$mode" = "self-signed" ]; then
        openssl req -x509 -new -key "$tmp/key" -sha256 -days 365 -subj "$subj" \
            -out "$tmp/crt" 2>/dev/null
    else
        openssl req -new -key "$tmp/key" -subj "$subj" -out "$tmp/csr" 2>/dev/null
        openssl x509 -req -in "$tmp/csr" -CA push_ca.crt -CAkey push_ca.key \
            -set_serial "0x$(openssl rand -hex 8)" -days 365 -sha256 \
            -extfile "$tmp/ext.cnf" -out "$tmp/crt" 2>/dev/null
    fi
    # the password goes through the environment, never the command line
    P12PASS=$pass openssl pkcs12 -export -inkey "$tmp/key" -in "$tmp/crt" \
        -passout env:P12PASS -out "$tmp/p12" 2>/dev/null
    cat "$tmp/crt" "$tmp/key" > "$tmp/pem"
    mv -f "$tmp/key" "$out.key"
    mv -f "$tmp/crt" "$out.crt"
    mv -f "$tmp/pem" "$out.pem"
    mv -f "$tmp/p12" "$out.p12"
    chmod 600 push_ca.key "$out.key" "$out.pem" "$out.p12"
    chmod 644 push_ca.crt "$out.crt"
    exit 0
fi

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: gen-certs.sh DIR [KEYID]" >&2
    exit 2
fi
dir=$1
keyid=${2:-ABC123DEFG}
if ! [[ $keyid =~ ^[A-Za-z0-9._-]{1,64}$ ]]; then
    echo "gen-certs.sh: KEYID '$keyid' is not 1..64 of [A-Za-z0-9._-]" >&2
    exit 2
fi
command -v openssl >/dev/null || { echo "gen-certs.sh: openssl not found (run scripts/deps)" >&2; exit 1; }

mkdir -p "$dir"
cd "$dir"
umask 077
tmp=$(mktemp -d .gen-certs.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# newkey FILE: an EC P-256 private key in PKCS#8 PEM, written atomically.
newkey() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/key" 2>/dev/null
    chmod 600 "$tmp/key"
    mv -f "$tmp/key" "$1"
}

# The CA: remade when either half is missing or they do not match.
ca_ok() {
    [ -s ca.key ] && [ -s ca.crt ] &&
        [ "$(openssl pkey -in ca.key -pubout 2>/dev/null)" = \
          "$(openssl x509 -in ca.crt -noout -pubkey 2>/dev/null)" ]
}
if ! ca_ok; then
    newkey ca.key
    openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=Tidings test CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$tmp/ca.crt" 2>/dev/null
    mv -f "$tmp/ca.crt" ca.crt
    rm -f server.crt # signed by the old CA
fi

# The server certificate: remade unless it verifies against this CA and
# matches its key.
server_ok() {
    [ -s server.key ] && [ -s server.crt ] &&
        openssl verify -CAfile ca.crt server.crt >/dev/null 2>&1 &&
        [ "$(openssl pkey -in server.key -pubout 2>/dev/null)" = \
          "$(openssl x509 -in server.crt -noout -pubkey 2>/dev/null)" ]
}
if ! server_ok; then
    [ -s server.key ] || newkey server.key
    openssl req -new -key server.key -subj "/CN=localhost" -out "$tmp/server.csr" 2>/dev/null
    cat > "$tmp/ext.cnf" <<'EXT'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
EXT
    openssl x509 -req -in "$tmp/server.csr" -CA ca.crt -CAkey ca.key \
        -set_serial "0x$(openssl rand -hex 8)" -days 825 -sha256 \
        -extfile "$tmp/ext.cnf" -out "$tmp/server.crt" 2>/dev/null
    mv -f "$tmp/server.crt" server.crt
fi

# The APNs auth key and its public half.
p8="AuthKey_${keyid}.p8"
if ! openssl pkey -in "$p8" -noout 2>/dev/null; then
    newkey "$p8"
fi
openssl pkey -in "$p8" -pubout -out "$tmp/pub.pem" 2>/dev/null
mv -f "$tmp/pub.pem" authkey_pub.pem

chmod 600 ca.key server.key "$p8"
chmod 644 ca.crt server.crt authkey_pub.pem
