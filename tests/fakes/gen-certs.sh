#!/usr/bin/env bash
# gen-certs.sh DIR [KEYID] — test certificates and an APNs auth key.
#
# Makes, in DIR (created if missing):
#   ca.crt ca.key              EC P-256 test CA
#   server.crt server.key      server cert for 127.0.0.1 and localhost, signed by the CA
#   AuthKey_<KEYID>.p8         EC P-256 private key, PKCS#8 PEM, like Apple's download
#   authkey_pub.pem            its public key, for fake-apns --auth-key
# KEYID defaults to ABC123DEFG (Apple's key ids are 10 characters).
# Keys are mode 0600. Idempotent: files that exist and fit together are kept;
# a missing or broken piece is remade (with whatever depends on it).
set -euo pipefail

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
