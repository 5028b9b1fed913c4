#!/usr/bin/env bash
# fcm_gen_account.sh DIR [PROJECT] [TOKEN_URI] — a Google-style service-account
# key for fake-fcm and the hub's FCM channel, made fresh at test time.
#
# Makes, in DIR (created if missing):
#   service-account.json   like the Firebase console's download: type,
#                          project_id, private_key_id, private_key (RSA 2048,
#                          PKCS#8 PEM), client_email, client_id, auth_uri,
#                          token_uri, ... (mode 0600)
#   service-account.pem    the private key alone (mode 0600)
#   service-account.pub    its public half, for fake-fcm --service-account-pub
# PROJECT defaults to tidings-test; TOKEN_URI to Google's
# https://oauth2.googleapis.com/token (tests pass the fake's URL, or set
# fcm.token_url instead). Always makes a new key: nothing here is a secret
# worth keeping, and nothing is ever committed.
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 3 ]; then
    echo "usage: fcm_gen_account.sh DIR [PROJECT] [TOKEN_URI]" >&2
    exit 2
fi
dir=$1
project=${2:-tidings-test}
token_uri=${3:-https://oauth2.googleapis.com/token}
if ! [[ $project =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]]; then
    echo "fcm_gen_account.sh: PROJECT '$project' is not a project id (6..30 of [a-z0-9-])" >&2
    exit 2
fi
if ! [[ $token_uri =~ ^https://[^\"\\[:space:]]+$ ]]; then
    echo "fcm_gen_account.sh: TOKEN_URI '$token_uri' is not an https URL" >&2
    exit 2
fi
command -v openssl >/dev/null || { echo "fcm_gen_account.sh: openssl not found (run scripts/deps)" >&2; exit 1; }

mkdir -p "$dir"
cd "$dir"
umask 077
tmp=$(mktemp -d .fcm-gen.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/key.pem" 2>/dev/null
openssl pkey -in "$tmp/key.pem" -pubout -out "$tmp/pub.pem" 2>/dev/null
key_id=$(openssl rand -hex 20)
client_id=$(printf '1%020d' "$(( $(od -An -N4 -tu4 /dev/urandom) ))")
email="tidings-fcm@${project}.iam.gserviceaccount.com"
# PEM lines joined with \n, as JSON needs them (base64 has no characters
# JSON would have to escape otherwise).
pem_json=$(awk 'BEGIN { ORS = "" } { print $0 "\\n" }' "$tmp/key.pem")

cat >"$tmp/sa.json" <<JSON
{
  "type": "service_account",
  "project_id": "$project",
  "private_key_id": "$key_id",
  "private_key": "$pem_json",
  "client_email": "$email",
  "client_id": "$client_id",
  "auth_uri": "https://accounts.google.com/o/oauth2/auth",
  "token_uri": "$token_uri",
  "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
  "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/tidings-fcm%40${project}.iam.gserviceaccount.com",
  "universe_domain": "googleapis.com"
}
JSON
mv -f "$tmp/sa.json" service-account.json
mv -f "$tmp/key.pem" service-account.pem
mv -f "$tmp/pub.pem" service-account.pub
chmod 600 service-account.json service-account.pem
chmod 644 service-account.pub
