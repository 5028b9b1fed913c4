#!/usr/bin/env bash
# Component test of fake-apns: TLS/ALPN, token auth, Apple's error answers,
# scripted answers (410, 429, delay, drop, GOAWAY), SIGHUP reload, the
# record, argument errors, and a short h2load run.
#
#   test_fake_apns.sh FAKE_APNS JWT_ES256
#
# Needs curl (with HTTP/2), openssl, h2load and nghttp (nghttp2-client);
# scripts/deps installs them. Every fake it starts listens on port 0 and is
# found through --port-file; everything is cleaned up on any exit.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: test_fake_apns.sh FAKE_APNS JWT_ES256" >&2
    exit 2
fi
fake=$1
jwt=$2
here=$(cd "$(dirname "$0")" && pwd)
for tool in curl openssl h2load nghttp; do
    command -v "$tool" >/dev/null || { echo "FAIL: $tool not found (run scripts/deps)" >&2; exit 1; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/test_fake_apns.XXXXXX")
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

keyid=KEYID12345
team=TEAM123456
topic=com.example.app
certs=$tmp/certs
"$here/gen-certs.sh" "$certs" "$keyid"
"$here/gen-certs.sh" "$tmp/other" "$keyid" # a second auth key Apple never saw
p8=$certs/AuthKey_$keyid.p8

# hex32 PAIR: a 64-digit device token, PAIR repeated 32 times.
hex32() {
    local s="" i
    for i in $(seq 32); do s+=$1; done
    printf '%s' "$s"
}
tok_ok=$(hex32 ab)
tok_410=$(hex32 41)
tok_429=$(hex32 42)
tok_delay=$(hex32 de)
tok_drop=$(hex32 d0)
tok_goaway=$(hex32 60)
tok_hup=$(hex32 99)

cat > "$tmp/rules.txt" <<EOF
# answers for the scripted cases
token $tok_410 status 410 reason Unregistered timestamp 1700000000000
token $tok_429 status 429 retry-after 7      # default reason TooManyRequests
token $tok_delay delay 1000 times 1
token $tok_drop drop times 1
token $tok_goaway goaway reason Shutdown times 1
EOF

# start_fake NAME ARGS...: starts a fake, waits for its port file (bounded),
# sets FAKE_PID and FAKE_PORT. Its output goes to $tmp/NAME.out and .err.
start_fake() {
    local name=$1 i
    shift
    rm -f "$tmp/$name.port"
    "$fake" --listen 127.0.0.1:0 --cert "$certs/server.crt" --key "$certs/server.key" \
        --auth-key "$certs/authkey_pub.pem" --key-id "$keyid" --team-id "$team" \
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
    grep -q "^fake-apns listening on 127.0.0.1:$FAKE_PORT\$" "$tmp/$name.out" ||
        fail "$name did not announce its port on stdout"
}

# wait_for FILE PATTERN: bounded wait until FILE has a line matching PATTERN.
wait_for() {
    local i
    for i in $(seq 200); do
        grep -q -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    fail "no '$2' in $1 within 10 s"
}

start_fake main --topic "$topic" --record "$tmp/record.jsonl" --script "$tmp/rules.txt"
main_pid=$FAKE_PID
base=https://127.0.0.1:$FAKE_PORT

now=$(date +%s)
jwt_ok=$("$jwt" "$p8" "$keyid" "$team")
jwt_old=$("$jwt" "$p8" "$keyid" "$team" $((now - 3700)))
jwt_future=$("$jwt" "$p8" "$keyid" "$team" $((now + 600)))
jwt_kid=$("$jwt" "$p8" WRONGKID00 "$team")
jwt_iss=$("$jwt" "$p8" "$keyid" WRONGTEAM0)
jwt_otherkey=$("$jwt" "$tmp/other/AuthKey_$keyid.p8" "$keyid" "$team")
# Flip one character in the middle of the signature.
sig=${jwt_ok##*.}
mid=$(( ${#sig} / 2 ))
c=${sig:$mid:1}
[ "$c" = A ] && r=B || r=A
jwt_badsig=${jwt_ok%.*}.${sig:0:$mid}$r${sig:$((mid + 1))}

printf '{"aps":{"alert":{"title":"Door","body":"Front door opened"}},"id":"n1"}' > "$tmp/payload.json"
pad() { head -c "$1" /dev/zero | tr '\0' a; }
# Exactly 4096 and 4097 bytes of valid JSON: {"aps":{},"x":"aaa..."}.
printf '{"aps":{},"x":"%s"}' "$(pad $((4096 - 17)))" > "$tmp/p4096.json"
printf '{"aps":{},"x":"%s"}' "$(pad $((4097 - 17)))" > "$tmp/p4097.json"
[ "$(wc -c < "$tmp/p4096.json")" -eq 4096 ] || fail "test bug: p4096 size"
[ "$(wc -c < "$tmp/p4097.json")" -eq 4097 ] || fail "test bug: p4097 size"

# post NAME PATH CURL_ARGS...: one HTTP/2 request; sets STATUS, BODY, HDRS.
post() {
    local name=$1 path=$2
    shift 2
    STATUS=$(curl -sS --http2 --cacert "$certs/ca.crt" -o "$tmp/body" -D "$tmp/hdrs" \
        -w '%{http_code}' "$@" "$base$path" 2>"$tmp/curl.log") ||
        fail "$name: curl failed: $(cat "$tmp/curl.log")"
    BODY=$(cat "$tmp/body")
    HDRS=$(tr -d '\r' < "$tmp/hdrs")
}

# expect NAME STATUS REASON PATH CURL_ARGS...: REASON "" means an empty body.
expect() {
    local name=$1 want=$2 reason=$3 path=$4
    shift 4
    post "$name" "$path" "$@"
    [ "$STATUS" = "$want" ] || fail "$name: status $STATUS, want $want (body: $BODY)"
    grep -qiE '^apns-id: [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' <<<"$HDRS" ||
        fail "$name: no apns-id header"
    if [ -z "$reason" ]; then
        [ -z "$BODY" ] || fail "$name: body '$BODY', want none"
    else
        grep -q "^{\"reason\":\"$reason\"" <<<"$BODY" || fail "$name: body '$BODY', want reason $reason"
    fi
    pass "$name -> $want $reason"
}

auth() { printf 'authorization: bearer %s' "$1"; }
std=(-H "apns-topic: $topic" -H "apns-push-type: alert" --data-binary "@$tmp/payload.json")
dev=/3/device/$tok_ok

# --- the happy path and the record ---------------------------------------
expect "valid request" 200 "" "$dev" -H "$(auth "$jwt_ok")" "${std[@]}"
id=$(sed -n 's/^apns-id: //Ip' <<<"$HDRS")
line=$(grep -F "\"apns_id\":\"$id\"" "$tmp/record.jsonl") || fail "no record line for apns-id $id"
for want in '"method":"POST"' "\"path\":\"$dev\"" "\"token\":\"$tok_ok\"" '"jwt":"ok"' \
    '"status":200' '"action":"reply"' '"authorization":"bearer <redacted>"' \
    "\"apns-topic\":\"$topic\"" '"body":"{\"aps\":{\"alert\":'; do
    grep -qF -- "$want" <<<"$line" || fail "record line lacks $want: $line"
done
grep -qF -- "$jwt_ok" "$tmp/record.jsonl" && fail "record holds the provider token"
pass "record line written before the answer, token redacted"

myid=8E5D7C1A-2B3C-4D5E-8F90-A1B2C3D4E5F6
expect "apns-id echoed" 200 "" "$dev" -H "$(auth "$jwt_ok")" -H "apns-id: $myid" "${std[@]}"
grep -qi "^apns-id: $myid\$" <<<"$HDRS" || fail "apns-id not echoed: $HDRS"
expect "4096-byte payload" 200 "" "$dev" -H "$(auth "$jwt_ok")" -H "apns-topic: $topic" \
    --data-binary "@$tmp/p4096.json"
expect "voip topic suffix" 200 "" "$dev" -H "$(auth "$jwt_ok")" -H "apns-topic: $topic.voip" \
    -H "apns-push-type: voip" --data-binary "@$tmp/payload.json"

# --- TLS and ALPN --------------------------------------------------------
if curl -sS --http1.1 --cacert "$certs/ca.crt" -o /dev/null "$base$dev" 2>"$tmp/curl.log"; then
    fail "HTTP/1.1 client was served"
fi
grep -qi "no application protocol" "$tmp/curl.log" || fail "HTTP/1.1: $(cat "$tmp/curl.log")"
pass "HTTP/1.1 refused with no_application_protocol"
if openssl s_client -connect "127.0.0.1:${base##*:}" -CAfile "$certs/ca.crt" </dev/null \
    >"$tmp/s_client.log" 2>&1; then
    grep -q "ALPN protocol: h2" "$tmp/s_client.log" && fail "client without ALPN got h2"
fi
grep -qi "no application protocol" "$tmp/s_client.log" || fail "no-ALPN client: $(tail -3 "$tmp/s_client.log")"
pass "client without ALPN refused"

# --- provider tokens ------------------------------------------------------
expect "no authorization" 403 MissingProviderToken "$dev" "${std[@]}"
expect "bad signature" 403 InvalidProviderToken "$dev" -H "$(auth "$jwt_badsig")" "${std[@]}"
expect "other key" 403 InvalidProviderToken "$dev" -H "$(auth "$jwt_otherkey")" "${std[@]}"
expect "wrong kid" 403 InvalidProviderToken "$dev" -H "$(auth "$jwt_kid")" "${std[@]}"
expect "wrong iss" 403 InvalidProviderToken "$dev" -H "$(auth "$jwt_iss")" "${std[@]}"
expect "not bearer" 403 InvalidProviderToken "$dev" -H "authorization: basic $jwt_ok" "${std[@]}"
expect "garbage token" 403 InvalidProviderToken "$dev" -H "$(auth abc.def.ghi)" "${std[@]}"
expect "iat 3700 s old" 403 ExpiredProviderToken "$dev" -H "$(auth "$jwt_old")" "${std[@]}"
expect "iat 600 s ahead" 403 ExpiredProviderToken "$dev" -H "$(auth "$jwt_future")" "${std[@]}"
grep -qF '"jwt":"expired"' "$tmp/record.jsonl" || fail "record lacks jwt expired"

# --- Apple's request checks -----------------------------------------------
A=(-H "$(auth "$jwt_ok")")
expect "bad path" 404 BadPath "/3/devices/$tok_ok" "${A[@]}" "${std[@]}"
expect "GET" 405 MethodNotAllowed "$dev" "${A[@]}" -H "apns-topic: $topic"
expect "short token" 400 BadDeviceToken "/3/device/abcdef" "${A[@]}" "${std[@]}"
expect "non-hex token" 400 BadDeviceToken "/3/device/$(hex32 zz)" "${A[@]}" "${std[@]}"
expect "empty token" 400 MissingDeviceToken "/3/device/" "${A[@]}" "${std[@]}"
expect "no topic" 400 MissingTopic "$dev" "${A[@]}" --data-binary "@$tmp/payload.json"
expect "other topic" 400 TopicDisallowed "$dev" "${A[@]}" -H "apns-topic: com.other.app" \
    --data-binary "@$tmp/payload.json"
expect "push type" 400 InvalidPushType "$dev" "${A[@]}" -H "apns-topic: $topic" \
    -H "apns-push-type: shout" --data-binary "@$tmp/payload.json"
expect "priority 7" 400 BadPriority "$dev" "${A[@]}" "${std[@]}" -H "apns-priority: 7"
expect "background at 10" 400 BadPriority "$dev" "${A[@]}" -H "apns-topic: $topic" \
    -H "apns-push-type: background" -H "apns-priority: 10" --data-binary "@$tmp/payload.json"
expect "background at 5" 200 "" "$dev" "${A[@]}" -H "apns-topic: $topic" \
    -H "apns-push-type: background" -H "apns-priority: 5" --data-binary "@$tmp/payload.json"
expect "expiration" 400 BadExpirationDate "$dev" "${A[@]}" "${std[@]}" -H "apns-expiration: soon"
expect "collapse id 65" 400 BadCollapseId "$dev" "${A[@]}" "${std[@]}" \
    -H "apns-collapse-id: $(pad 65)"
expect "apns-id" 400 BadMessageId "$dev" "${A[@]}" "${std[@]}" -H "apns-id: not-a-uuid"
expect "duplicate header" 400 DuplicateHeaders "$dev" "${A[@]}" "${std[@]}" \
    -H "apns-priority: 10" -H "apns-priority: 10"
expect "empty body" 400 PayloadEmpty "$dev" "${A[@]}" -H "apns-topic: $topic" -X POST
expect "not JSON" 400 PayloadEmpty "$dev" "${A[@]}" -H "apns-topic: $topic" --data-binary '{"aps":'
expect "no aps" 400 PayloadEmpty "$dev" "${A[@]}" -H "apns-topic: $topic" --data-binary '{"x":1}'
expect "4097-byte payload" 413 PayloadTooLarge "$dev" "${A[@]}" -H "apns-topic: $topic" \
    --data-binary "@$tmp/p4097.json"

# --- scripted answers -----------------------------------------------------
expect "scripted 410" 410 Unregistered "/3/device/$tok_410" "${A[@]}" "${std[@]}"
[ "$BODY" = '{"reason":"Unregistered","timestamp":1700000000000}' ] || fail "410 body: $BODY"
pass "410 body carries the timestamp"
expect "scripted 429" 429 TooManyRequests "/3/device/$tok_429" "${A[@]}" "${std[@]}"
grep -qi '^retry-after: 7$' <<<"$HDRS" || fail "429 without retry-after: 7"
pass "429 carries retry-after"

# A delayed answer must not hold up other requests.
curl -sS --http2 --cacert "$certs/ca.crt" -o /dev/null -w '%{http_code} %{time_total}\n' \
    "${A[@]}" "${std[@]}" "$base/3/device/$tok_delay" >"$tmp/delay.res" 2>&1 &
delay_pid=$!
pids+=("$delay_pid")
t0=$(date +%s%N)
expect "served during a delay" 200 "" "$dev" "${A[@]}" "${std[@]}"
t1=$(date +%s%N)
kill -0 "$delay_pid" 2>/dev/null || fail "delayed request finished before the quick one ($(cat "$tmp/delay.res"))"
wait "$delay_pid" || fail "delayed request failed: $(cat "$tmp/delay.res")"
read -r dstatus dtime < "$tmp/delay.res"
[ "$dstatus" = 200 ] || fail "delayed request: $dstatus"
awk -v t="$dtime" 'BEGIN { exit !(t >= 0.95) }' || fail "delayed answer after ${dtime}s, want >= 1s"
[ $(( (t1 - t0) / 1000000 )) -lt 900 ] || fail "quick request waited for the delayed one"
pass "delay 1000 ms answered after ${dtime}s without blocking the loop"

if curl -sS --http2 --cacert "$certs/ca.crt" -o /dev/null "${A[@]}" "${std[@]}" \
    "$base/3/device/$tok_drop" 2>"$tmp/curl.log"; then
    fail "drop rule answered"
fi
grep -qF "\"token\":\"$tok_drop\"" "$tmp/record.jsonl" || fail "no record of the dropped request"
grep -F "\"token\":\"$tok_drop\"" "$tmp/record.jsonl" | grep -qF '"status":0,' || fail "drop status"
grep -F "\"token\":\"$tok_drop\"" "$tmp/record.jsonl" | grep -qF '"action":"drop"' || fail "drop action"
expect "drop rule spent after times 1" 200 "" "/3/device/$tok_drop" "${A[@]}" "${std[@]}"

# GOAWAY: three requests on one connection, the middle one triggers it.
# nghttp shows the frame; the fake must answer the first, not the third.
tok_after=$(hex32 61)
nghttp -nv -d "$tmp/payload.json" -H "$(auth "$jwt_ok")" -H "apns-topic: $topic" \
    "$base/3/device/$tok_ok" "$base/3/device/$tok_goaway" "$base/3/device/$tok_after" \
    >"$tmp/nghttp.log" 2>&1 || true
gline=$(grep -F "\"token\":\"$tok_goaway\"" "$tmp/record.jsonl") || fail "no record of the goaway request"
grep -qF '"action":"goaway"' <<<"$gline" || fail "goaway record: $gline"
gsid=$(sed -n 's/.*"stream":\([0-9]*\),.*/\1/p' <<<"$gline")
grep -q "last_stream_id=$((gsid - 2)), error_code=NO_ERROR" "$tmp/nghttp.log" ||
    fail "GOAWAY last_stream_id is not $((gsid - 2)): $(grep -A1 GOAWAY "$tmp/nghttp.log")"
grep -qF '{"reason":"Shutdown"}' "$tmp/nghttp.log" || fail "GOAWAY debug data missing"
grep -qF "\"token\":\"$tok_after\"" "$tmp/record.jsonl" && fail "stream after GOAWAY was answered"
pass "GOAWAY with last-stream-id $((gsid - 2)) (trigger on stream $gsid), later streams unanswered"

# --- SIGHUP reloads the script -------------------------------------------
expect "before reload" 200 "" "/3/device/$tok_hup" "${A[@]}" "${std[@]}"
echo "token $tok_hup status 503 reason Shutdown" >> "$tmp/rules.txt"
kill -HUP "$main_pid"
wait_for "$tmp/main.err" "reloaded 6 rules"
expect "after reload" 503 Shutdown "/3/device/$tok_hup" "${A[@]}" "${std[@]}"
echo "token $tok_hup status 999" >> "$tmp/rules.txt"
kill -HUP "$main_pid"
wait_for "$tmp/main.err" "rules.txt:8: status .999. is not .*keeping the old rules"
expect "bad reload keeps old rules" 503 Shutdown "/3/device/$tok_hup" "${A[@]}" "${std[@]}"

# --- load ---------------------------------------------------------------
h2load -n 2000 -c 2 -m 50 -d "$tmp/payload.json" -H "$(auth "$jwt_ok")" \
    -H "apns-topic: $topic" -H "apns-push-type: alert" "$base$dev" >"$tmp/h2load.log" 2>&1 ||
    fail "h2load: $(tail -5 "$tmp/h2load.log")"
grep -q "status codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx" "$tmp/h2load.log" ||
    fail "h2load: $(grep -E 'requests:|status codes:' "$tmp/h2load.log")"
pass "h2load -n 2000 -c 2 -m 50: $(sed -n 's/^finished in [^,]*, \([0-9.]* req\/s\).*/\1/p' "$tmp/h2load.log"), all 2xx"

# --- clean stop and a consistent record -----------------------------------
kill -TERM "$main_pid"
rc=0
wait "$main_pid" || rc=$?
[ "$rc" -eq 0 ] || fail "exit status $rc after SIGTERM"
n=$(wc -l < "$tmp/record.jsonl")
last=$(tail -n 1 "$tmp/record.jsonl" | sed -n 's/^{"seq":\([0-9]*\),.*}$/\1/p')
[ "$last" = "$n" ] || fail "record has $n lines but the last seq is '$last'"
bad=$(grep -cv '^{"seq":[0-9]*,"ts_ms":[0-9]*,"conn":[0-9]*,"stream":[0-9]*,"method":.*"action":"[a-z]*"}$' \
    "$tmp/record.jsonl" || true)
[ "$bad" -eq 0 ] || fail "$bad record lines are not of the documented shape"
[ "$(grep -c '"status":200,' "$tmp/record.jsonl")" -ge 2000 ] || fail "h2load requests missing from the record"
pass "SIGTERM: exit 0, $n record lines, one object per line"

# --- --strict-token-refresh ------------------------------------------------
start_fake strict --strict-token-refresh --no-record
base=https://127.0.0.1:$FAKE_PORT
jwt_new=$("$jwt" "$p8" "$keyid" "$team" $((now - 1)))
expect "first token" 200 "" "$dev" "${A[@]}" "${std[@]}"
expect "new token within 20 min" 429 TooManyProviderTokenUpdates "$dev" -H "$(auth "$jwt_new")" "${std[@]}"
expect "first token still good" 200 "" "$dev" "${A[@]}" "${std[@]}"

# --- argument and script errors --------------------------------------------
common=(--listen 127.0.0.1:0 --cert "$certs/server.crt" --key "$certs/server.key"
    --auth-key "$certs/authkey_pub.pem" --key-id "$keyid" --team-id "$team")
expect_exit2() { # NAME PATTERN ARGS...
    local name=$1 pat=$2 rc=0
    shift 2
    timeout 10 "$fake" "$@" >/dev/null 2>"$tmp/args.log" || rc=$?
    [ "$rc" -eq 2 ] || fail "$name: exit $rc, want 2"
    grep -q -- "$pat" "$tmp/args.log" || fail "$name: message '$(cat "$tmp/args.log")' lacks '$pat'"
    pass "$name: exit 2, names $pat"
}
printf 'token * status 200\n\ntoken %s status 410 reason BadTopic\n' "$tok_ok" > "$tmp/bad.txt"
expect_exit2 "bad script line" "bad.txt:3: reason 'BadTopic' does not go with status 410" \
    "${common[@]}" --script "$tmp/bad.txt"
expect_exit2 "no --listen" "--listen" --cert x --key y --auth-key z --key-id a --team-id b
expect_exit2 "unknown option" "--bogus" "${common[@]}" --bogus
expect_exit2 "missing value" "--topic" "${common[@]}" --topic
expect_exit2 "bad --listen" "--listen" --listen nowhere "${common[@]:2}"
expect_exit2 "unpaired --key-id" "triples" "${common[@]}" --key-id SECOND
expect_exit2 "bad --auth-key" "--auth-key" "${common[@]:0:6}" --auth-key /nonexistent \
    --key-id "$keyid" --team-id "$team"

echo "all fake-apns checks passed"
