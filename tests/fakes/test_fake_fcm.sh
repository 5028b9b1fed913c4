#!/usr/bin/env bash
# Component test of fake-fcm: TLS/ALPN (h2, http/1.1, none), the OAuth2
# token endpoint (assertion signature, iss/aud/scope/exp, grant type), the
# v1 send endpoint's checks and Google's error bodies, scripted answers
# (errors, Retry-After, delay, drop, GOAWAY, oauth rules), SIGHUP reload, the
# record (credentials redacted), argument errors and a clean stop.
#
#   test_fake_fcm.sh FAKE_FCM
#
# Needs curl (with HTTP/2) and openssl; assertions are signed with
# `openssl dgst`. Every fake listens on port 0 and is found through
# --port-file; everything is cleaned up on any exit.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: test_fake_fcm.sh FAKE_FCM" >&2
    exit 2
fi
fake=$1
here=$(cd "$(dirname "$0")" && pwd)
for tool in curl openssl; do
    command -v "$tool" >/dev/null || { echo "FAIL: $tool not found (run scripts/deps)" >&2; exit 1; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/test_fake_fcm.XXXXXX")
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    for f in "$tmp"/*.err; do
        [ -s "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }
    done
    exit 1
}
pass() {
    echo "ok - $*"
}

project=fake-proj1
"$here/gen-certs.sh" "$tmp/certs" >/dev/null
"$here/fcm_gen_account.sh" "$tmp/sa" "$project"
"$here/fcm_gen_account.sh" "$tmp/other" "$project" # a key Google never saw
sa=$tmp/sa/service-account.json
email="tidings-fcm@$project.iam.gserviceaccount.com"
tok_ok="dEvIcE1:APA91bGood"
tok_unreg="dEvIcE2:APA91bGone"
tok_quota="dEvIcE3:APA91bBusy"
tok_date="dEvIcE4:APA91bDate"
tok_delay="dEvIcE5:APA91bSlow"
tok_drop="dEvIcE6:APA91bDrop"
tok_goaway="dEvIcE7:APA91bAway"
tok_hup="dEvIcE8:APA91bHup"

cat >"$tmp/rules.txt" <<EOF
# answers for the scripted cases
token $tok_unreg status 404                      # default error UNREGISTERED
token $tok_quota status 429 retry-after 7        # QUOTA_EXCEEDED
token $tok_date status 503 retry-after-date 60   # UNAVAILABLE, an HTTP-date
token $tok_delay delay 1000 times 1
token $tok_drop drop times 1
token $tok_goaway goaway times 1
token dEvIcE9:APA91bMsg status 400 message Invalid value at 'message.data[0].value'
oauth status 503 times 1 message back soon
EOF

# start_fake NAME ARGS...: starts a fake, waits for its port file (bounded),
# sets FAKE_PID and FAKE_PORT. Output goes to $tmp/NAME.out and .err.
start_fake() {
    local name=$1 i
    shift
    rm -f "$tmp/$name.port"
    "$fake" --listen 127.0.0.1:0 --cert "$tmp/certs/server.crt" --key "$tmp/certs/server.key" \
        --port-file "$tmp/$name.port" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
    FAKE_PID=$!
    pids+=("$FAKE_PID")
    for i in $(seq 200); do
        [ -s "$tmp/$name.port" ] && break
        kill -0 "$FAKE_PID" 2>/dev/null || fail "$name exited at start"
        sleep 0.05
    done
    [ -s "$tmp/$name.port" ] || fail "$name wrote no port file within 10 s"
    FAKE_PORT=$(cat "$tmp/$name.port")
    grep -q "^fake-fcm listening on 127.0.0.1:$FAKE_PORT\$" "$tmp/$name.out" ||
        fail "$name did not announce its port on stdout"
}

b64u() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }

# assertion KEY_PEM ISS AUD SCOPE IAT EXP [ALG]: a signed JWT assertion.
assertion() {
    local h c s
    h=$(printf '{"alg":"%s","typ":"JWT"}' "${7:-RS256}" | b64u)
    c=$(printf '{"iss":"%s","scope":"%s","aud":"%s","iat":%s,"exp":%s}' "$2" "$4" "$3" "$5" "$6" | b64u)
    s=$(printf '%s.%s' "$h" "$c" | openssl dgst -sha256 -sign "$1" -binary | b64u)
    printf '%s.%s.%s' "$h" "$c" "$s"
}

scope=https://www.googleapis.com/auth/firebase.messaging
grant='urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer'

start_fake main --service-account "$sa" --record "$tmp/record.jsonl" --script "$tmp/rules.txt"
main_pid=$FAKE_PID
base=https://127.0.0.1:$FAKE_PORT
aud=$base/token
now=$(date +%s)
key=$tmp/sa/service-account.pem

# c ARGS...: curl printing "STATUS\n" then the body to $tmp/body.
c() {
    curl -sS --cacert "$tmp/certs/ca.crt" -o "$tmp/body" -D "$tmp/headers" -w '%{http_code}' "$@"
}

# token ASSERTION: POST it; prints the status.
token() {
    c --http2 "$base/token" -H 'content-type: application/x-www-form-urlencoded' \
        --data "grant_type=$grant&assertion=$1"
}

# --- the token endpoint -------------------------------------------------------

[ "$(token "$(assertion "$key" "$email" "$aud" "$scope" "$now" $((now + 3600)))")" = 503 ] ||
    fail "the scripted oauth 503 (times 1) was not answered first"
grep -q '"error":[[:space:]]*"temporarily_unavailable"' "$tmp/body" || fail "oauth 503 body: $(cat "$tmp/body")"
pass "oauth rule answers 503 temporarily_unavailable once"

[ "$(token "$(assertion "$key" "$email" "$aud" "$scope" "$now" $((now + 3600)))")" = 200 ] ||
    fail "a good assertion was refused: $(cat "$tmp/body")"
access=$(sed -n 's/.*"access_token":[[:space:]]*"\([^"]*\)".*/\1/p' "$tmp/body")
[[ $access == ya29.fake.* ]] || fail "no access token in $(cat "$tmp/body")"
grep -q '"expires_in":[[:space:]]*3599' "$tmp/body" || fail "expires_in is not 3599"
grep -q '"token_type":[[:space:]]*"Bearer"' "$tmp/body" || fail "token_type is not Bearer"
pass "a valid RS256 assertion gets an access token (expires_in 3599, Bearer)"

check_grant() { # WHAT STATUS ERROR ASSERTION
    local st
    st=$(token "$4")
    [ "$st" = "$2" ] || fail "$1: status $st, want $2 ($(cat "$tmp/body"))"
    grep -q "\"error\":[[:space:]]*\"$3\"" "$tmp/body" || fail "$1: body $(cat "$tmp/body")"
    pass "$1 -> $2 $3"
}
check_grant "signature by another key" 400 invalid_grant \
    "$(assertion "$tmp/other/service-account.pem" "$email" "$aud" "$scope" "$now" $((now + 3600)))"
check_grant "unknown iss" 400 invalid_grant \
    "$(assertion "$key" "someone@else.iam.gserviceaccount.com" "$aud" "$scope" "$now" $((now + 3600)))"
check_grant "wrong aud" 400 invalid_grant \
    "$(assertion "$key" "$email" "https://oauth2.googleapis.com/token" "$scope" "$now" $((now + 3600)))"
grep -q "The right audience is $aud" "$tmp/body" || fail "aud message: $(cat "$tmp/body")"
check_grant "expired assertion" 400 invalid_grant \
    "$(assertion "$key" "$email" "$aud" "$scope" $((now - 7200)) $((now - 3600)))"
check_grant "lifetime over an hour" 400 invalid_grant \
    "$(assertion "$key" "$email" "$aud" "$scope" "$now" $((now + 7200)))"
check_grant "iat in the future" 400 invalid_grant \
    "$(assertion "$key" "$email" "$aud" "$scope" $((now + 600)) $((now + 1200)))"
check_grant "scope without firebase.messaging" 400 invalid_scope \
    "$(assertion "$key" "$email" "$aud" "https://www.googleapis.com/auth/userinfo.email" "$now" $((now + 3600)))"
check_grant "alg HS256" 400 invalid_grant \
    "$(assertion "$key" "$email" "$aud" "$scope" "$now" $((now + 3600)) HS256)"
check_grant "not a JWT" 400 invalid_grant "abc.def"
st=$(c --http2 "$base/token" -H 'content-type: application/x-www-form-urlencoded' \
    --data "grant_type=client_credentials&assertion=x")
[ "$st" = 400 ] && grep -q unsupported_grant_type "$tmp/body" || fail "grant_type check: $st"
st=$(c --http2 "$base/token" -H 'content-type: application/x-www-form-urlencoded' --data "grant_type=$grant")
[ "$st" = 400 ] && grep -q "Missing required parameter: assertion" "$tmp/body" || fail "missing assertion: $st"
st=$(c --http2 "$base/token" -H 'content-type: application/json' --data '{}')
[ "$st" = 400 ] && grep -q invalid_request "$tmp/body" || fail "json to /token: $st"
# The raw (unencoded) grant type is accepted too, as Google does.
st=$(token "$(assertion "$key" "$email" "$aud" "$scope" "$now" $((now + 3600)))" >/dev/null;
     c --http2 "$base/token" -H 'content-type: application/x-www-form-urlencoded' \
         --data "grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=$(assertion "$key" "$email" "$aud" "$scope" "$now" $((now + 3600)))")
[ "$st" = 200 ] || fail "raw grant_type: $st"
pass "grant_type, missing assertion and content type are checked"

# --- the send endpoint ----------------------------------------------------------

msg() { # TOKEN -> a valid message for TOKEN
    printf '{"message":{"token":"%s","notification":{"title":"Hi","body":"there"},"data":{"k":"v"},"android":{"priority":"HIGH","ttl":"60s","collapse_key":"c"}}}' "$1"
}
send() { # PROTO BODY [AUTH] [PROJECT] [CONTENT_TYPE] -> status
    c "$1" "$base/v1/projects/${4:-$project}/messages:send" \
        -H "authorization: ${3:-Bearer $access}" -H "content-type: ${5:-application/json}" \
        --data-binary "$2"
}
st=$(send --http2 "$(msg "$tok_ok")")
[ "$st" = 200 ] || fail "valid send: $st $(cat "$tmp/body")"
grep -Eq "\"name\":[[:space:]]*\"projects/$project/messages/0:[0-9]{16}%[0-9a-f]{16}\"" "$tmp/body" ||
    fail "200 body: $(cat "$tmp/body")"
pass "a valid message over h2: 200 with a message name"
st=$(send --http1.1 "$(msg "$tok_ok")")
[ "$st" = 200 ] || fail "valid send over HTTP/1.1: $st"
grep -qi '^HTTP/1.1 200' "$tmp/headers" || fail "not answered over HTTP/1.1"
pass "the same over HTTP/1.1 (ALPN http/1.1)"
st=$(c --http1.1 --no-alpn "$base/v1/projects/$project/messages:send" \
    -H "authorization: Bearer $access" -H 'content-type: application/json' --data-binary "$(msg "$tok_ok")")
[ "$st" = 200 ] || fail "no ALPN: $st"
pass "a client offering no ALPN gets HTTP/1.1"
st=$(send --http2 '{"message":{"token":"a:b","data":{"k":"v"}},"validate_only":true}')
[ "$st" = 200 ] && grep -q "messages/fake_message_id" "$tmp/body" || fail "validate_only: $st"
pass "validate_only answers Google's fake_message_id"

check_send() { # WHAT STATUS STATUS_TEXT ERRORCODE|- BODY [AUTH] [PROJECT] [CT]
    local st
    st=$(send --http2 "$5" "${6:-}" "${7:-}" "${8:-}")
    [ "$st" = "$2" ] || fail "$1: status $st, want $2 ($(cat "$tmp/body"))"
    grep -q "\"status\":[[:space:]]*\"$3\"" "$tmp/body" || fail "$1: body $(cat "$tmp/body")"
    if [ "$4" = - ]; then
        ! grep -q FcmError "$tmp/body" || fail "$1: unexpected FcmError detail"
    else
        grep -q "\"errorCode\":[[:space:]]*\"$4\"" "$tmp/body" || fail "$1: no errorCode $4: $(cat "$tmp/body")"
    fi
    pass "$1 -> $2 $3 ${4/-/(no FcmError)}"
}
check_send "no authorization" 401 UNAUTHENTICATED - "$(msg "$tok_ok")" " "
check_send "an access token never issued" 401 UNAUTHENTICATED - "$(msg "$tok_ok")" "Bearer ya29.fake.999.00"
grep -qi '^www-authenticate: Bearer realm="https://accounts.google.com/", error="invalid_token"' "$tmp/headers" ||
    fail "no www-authenticate on an invalid token"
check_send "another project" 403 PERMISSION_DENIED - "$(msg "$tok_ok")" "" other-project
check_send "form content type" 400 INVALID_ARGUMENT - "$(msg "$tok_ok")" "" "" application/x-www-form-urlencoded
check_send "not JSON" 400 INVALID_ARGUMENT - '{"message":'
check_send "unknown field" 400 INVALID_ARGUMENT - '{"message":{"token":"a:b","priority":"high"}}'
check_send "no recipient" 400 INVALID_ARGUMENT INVALID_ARGUMENT '{"message":{"data":{"k":"v"}}}'
check_send "two recipients" 400 INVALID_ARGUMENT - '{"message":{"token":"a:b","topic":"news"}}'
check_send "bad registration token" 400 INVALID_ARGUMENT INVALID_ARGUMENT '{"message":{"token":"not a token"}}'
grep -q '"field":[[:space:]]*"message.token"' "$tmp/body" || fail "no field violation on message.token"
check_send "number in data" 400 INVALID_ARGUMENT - '{"message":{"token":"a:b","data":{"n":1}}}'
grep -q "message.data\[0\].value" "$tmp/body" || fail "data message: $(cat "$tmp/body")"
check_send "reserved data key" 400 INVALID_ARGUMENT INVALID_ARGUMENT '{"message":{"token":"a:b","data":{"google.x":"1"}}}'
check_send "lowercase priority" 400 INVALID_ARGUMENT - '{"message":{"token":"a:b","android":{"priority":"high"}}}'
check_send "ttl without s" 400 INVALID_ARGUMENT - '{"message":{"token":"a:b","android":{"ttl":"60"}}}'
check_send "ttl over 4 weeks" 400 INVALID_ARGUMENT INVALID_ARGUMENT '{"message":{"token":"a:b","android":{"ttl":"2419201s"}}}'
big=$(head -c 4097 /dev/zero | tr '\0' x)
check_send "payload over 4096" 400 INVALID_ARGUMENT INVALID_ARGUMENT "{\"message\":{\"token\":\"a:b\",\"data\":{\"k\":\"$big\"}}}"
st=$(c --http2 "$base/v1/projects/$project/messages:list" -H "authorization: Bearer $access")
[ "$st" = 404 ] || fail "unknown path: $st"
pass "unknown path -> 404 NOT_FOUND"

# --- scripts ------------------------------------------------------------------------

check_send "script: 404" 404 NOT_FOUND UNREGISTERED "$(msg "$tok_unreg")"
check_send "script: 429 retry-after 7" 429 RESOURCE_EXHAUSTED QUOTA_EXCEEDED "$(msg "$tok_quota")"
grep -qi '^retry-after: 7' "$tmp/headers" || fail "no retry-after: 7"
check_send "script: 503 retry-after-date" 503 UNAVAILABLE UNAVAILABLE "$(msg "$tok_date")"
grep -Eqi '^retry-after: [A-Z][a-z]{2}, [0-9]{2} [A-Z][a-z]{2} [0-9]{4} [0-9:]{8} GMT' "$tmp/headers" ||
    fail "no HTTP-date retry-after: $(cat "$tmp/headers")"
check_send "script: message" 400 INVALID_ARGUMENT INVALID_ARGUMENT "$(msg dEvIcE9:APA91bMsg)"
grep -q "Invalid value at 'message.data\[0\].value'" "$tmp/body" || fail "scripted message"

t0=$(date +%s%N)
st=$(send --http2 "$(msg "$tok_delay")")
t1=$(date +%s%N)
[ "$st" = 200 ] && [ $(((t1 - t0) / 1000000)) -ge 900 ] || fail "delay 1000: $st after $(((t1 - t0) / 1000000)) ms"
pass "script: delay 1000 answers 200 after ~1 s"

if send --http2 "$(msg "$tok_drop")" >/dev/null 2>&1; then
    fail "drop: curl got an answer"
fi
pass "script: drop closes the connection without an answer"
if send --http2 "$(msg "$tok_goaway")" >/dev/null 2>&1; then
    fail "goaway: curl got an answer"
fi
pass "script: goaway leaves the stream unanswered"
[ "$(send --http2 "$(msg "$tok_goaway")")" = 200 ] || fail "goaway rule not spent after times 1"
pass "rules with times 1 are spent"

# Slow answers do not hold up others on the same connection (h2).
curl -sS --http2 --cacert "$tmp/certs/ca.crt" -o /dev/null -w '%{http_code}\n' \
    -H "authorization: Bearer $access" -H 'content-type: application/json' \
    --data-binary "$(msg "$tok_ok")" "$base/v1/projects/$project/messages:send" >/dev/null

# SIGHUP reload.
echo "token $tok_hup status 500" >"$tmp/rules.txt"
kill -HUP "$main_pid"
for i in $(seq 100); do
    grep -q "reloaded 1 rules" "$tmp/main.err" && break
    sleep 0.05
done
check_send "SIGHUP reload: new rule" 500 INTERNAL INTERNAL "$(msg "$tok_hup")"
echo "token * statu 500" >"$tmp/rules.txt"
kill -HUP "$main_pid"
for i in $(seq 100); do
    grep -q "keeping the old rules" "$tmp/main.err" && break
    sleep 0.05
done
grep -q "rules.txt:1:" "$tmp/main.err" || fail "bad reload not reported with file:line"
check_send "bad reload keeps the old rules" 500 INTERNAL INTERNAL "$(msg "$tok_hup")"

# --- the record -------------------------------------------------------------------------

rec=$tmp/record.jsonl
! grep -q "$access" "$rec" || fail "the access token reached the record"
! grep -q '"assertion=ey' "$rec" || fail "an assertion reached the record"
grep -q '"authorization":"Bearer <redacted>"' "$rec" || fail "authorization not redacted"
grep -q 'assertion=<redacted>' "$rec" || fail "assertion not redacted"
grep -q '"endpoint":"token".*"claims":"{\\"iss\\":\\"'"$email" "$rec" || fail "claims not recorded"
grep -q '"proto":"http/1.1"' "$rec" && grep -q '"proto":"h2"' "$rec" || fail "proto not recorded"
grep -q "\"device_token\":\"$tok_drop\".*\"status\":0,.*\"action\":\"drop\"" "$rec" || fail "drop not recorded"
grep -q "\"device_token\":\"$tok_goaway\".*\"action\":\"goaway\"" "$rec" || fail "goaway not recorded"
grep -q "\"device_token\":\"$tok_unreg\".*\"status\":404,\"error\":\"UNREGISTERED\"" "$rec" || fail "404 not recorded"
if command -v python3 >/dev/null; then
    python3 -c 'import json,sys; [json.loads(l) for l in open(sys.argv[1])]' "$rec" ||
        fail "the record is not JSON lines"
fi
pass "record: one JSON line per request, credentials redacted"

# --- ALPN choices, a second fake with a short token life --------------------------------

start_fake h2only --service-account "$sa" --alpn h2 --no-record
if curl -sS --http1.1 --cacert "$tmp/certs/ca.crt" -o /dev/null "https://127.0.0.1:$FAKE_PORT/token" 2>/dev/null; then
    fail "--alpn h2 accepted an HTTP/1.1-only client"
fi
pass "--alpn h2 refuses HTTP/1.1 clients like APNs"

start_fake short --service-account-pub "$tmp/sa/service-account.pub" --client-email "$email" \
    --project "$project" --token-ttl 1 --expires-in 3599 --no-record
base=https://127.0.0.1:$FAKE_PORT
aud=$base/token
[ "$(token "$(assertion "$key" "$email" "$aud" "$scope" "$now" $((now + 3600)))")" = 200 ] ||
    fail "--service-account-pub: token refused: $(cat "$tmp/body")"
grep -q '"expires_in":[[:space:]]*3599' "$tmp/body" || fail "--expires-in not honoured"
access=$(sed -n 's/.*"access_token":[[:space:]]*"\([^"]*\)".*/\1/p' "$tmp/body")
[ "$(send --http2 "$(msg "$tok_ok")")" = 200 ] || fail "fresh token refused"
sleep 1.1
check_send "--token-ttl 1: the token expired server-side" 401 UNAUTHENTICATED - "$(msg "$tok_ok")"

# --- arguments and a clean stop ------------------------------------------------------------

expect_exit2() { # WHAT PATTERN ARGS...
    local what=$1 pat=$2 rc=0
    shift 2
    "$fake" "$@" >/dev/null 2>"$tmp/args.err" || rc=$?
    [ "$rc" = 2 ] || fail "$what: exit $rc, want 2"
    grep -q -- "$pat" "$tmp/args.err" || fail "$what: message $(cat "$tmp/args.err")"
}
common=(--listen 127.0.0.1:0 --cert "$tmp/certs/server.crt" --key "$tmp/certs/server.key")
expect_exit2 "no key" "one of --service-account" "${common[@]}"
expect_exit2 "both keys" "one of --service-account" "${common[@]}" --service-account "$sa" \
    --service-account-pub "$tmp/sa/service-account.pub"
expect_exit2 "pub without email" "needs --client-email" "${common[@]}" \
    --service-account-pub "$tmp/sa/service-account.pub"
expect_exit2 "EC key as account" "RSA" "${common[@]}" --service-account-pub "$tmp/certs/authkey_pub.pem" \
    --client-email a@b.c --project p-1234
expect_exit2 "bad alpn" "--alpn" "${common[@]}" --service-account "$sa" --alpn h3
expect_exit2 "bad token-ttl" "--token-ttl" "${common[@]}" --service-account "$sa" --token-ttl 0
printf 'token * status 404 error SENDER_ID_MISMATCH\n' >"$tmp/bad.txt"
expect_exit2 "error not for status" "bad.txt:1: error 'SENDER_ID_MISMATCH' does not go with status 404" \
    "${common[@]}" --service-account "$sa" --script "$tmp/bad.txt"
printf '# ok\ntoken * drop status 500\n' >"$tmp/bad.txt"
expect_exit2 "drop with status" "bad.txt:2:" "${common[@]}" --service-account "$sa" --script "$tmp/bad.txt"
printf 'token bad\\token status 500\n' >"$tmp/bad.txt"
expect_exit2 "bad registration token" "bad.txt:1:" "${common[@]}" --service-account "$sa" --script "$tmp/bad.txt"
pass "argument and script errors exit 2 naming the option or FILE:LINE"

kill -TERM "$main_pid"
rc=0
wait "$main_pid" || rc=$?
[ "$rc" = 0 ] || fail "SIGTERM: exit $rc"
grep -q "stopping: .* requests" "$tmp/main.err" || fail "no summary line"
pass "SIGTERM stops it cleanly with a summary"
