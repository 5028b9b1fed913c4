#!/usr/bin/env bash
# SMS opt-out / opt-in, delivery status callbacks and status polling across a
# restart, through a running hub with the real stack: broker, agent, hub
# (metrics.listen hosts POST /v1/sms/status and /v1/sms/inbound), and two
# fake Twilio APIs: the primary sender and a backup sender (sms.backup.*,
# another account with another auth token).
#
#  1. a send answered 21610 disables the number; the next notification does
#     not reach the provider;
#  2. an inbound START with a wrong X-Twilio-Signature gets 403 and changes
#     nothing; a signed one re-enables the number; the next notification
#     reaches the fake;
#  3. a status callback is stored; the same callback again changes nothing
#     (idempotent), a lower status never overwrites; a wrong signature gets
#     403 and changes nothing;
#  4. a message whose status is being polled when the hub stops is polled
#     again after the restart (its record in provider_watch);
#  5. with the primary failing (503) the breaker sends through the backup;
#     that message's status callback, signed with the backup's token under
#     the backup's account, is accepted (it got 403 before the fix).
#   usage: test_sms_optout.sh BUILD_DIR SRC_DIR
set -euo pipefail
BUILD=$1
SRC=$2
# shellcheck source=../lib/stack.sh
. "$SRC/tests/lib/stack.sh"
fail() { stack_log "FAIL: $*"; stack_dump_logs; exit 1; }
PY=/usr/bin/python3

stack_init
stack_broker
stack_fake_apns # certificates for every fake, and the hub's APNs settings

SID_A=AC0000000000000000000000000000000a
SID_B=AC0000000000000000000000000000000b
TO=+4915112345678

# start_fake NAME SID: a fake Twilio API with its own token and script
start_fake() {
    local name=$1 sid=$2
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STACK_DIR/$name.token"
    chmod 600 "$STACK_DIR/$name.token"
    : >"$STACK_DIR/$name.script"
    stack_start "$name" "$PY" "$SRC/tests/fakes/fake_sms.py" --listen 127.0.0.1:0 \
        --cert "$STACK_DIR/certs/server.crt" --key "$STACK_DIR/certs/server.key" \
        --account-sid "$sid" --auth-token-file "$STACK_DIR/$name.token" \
        --script "$STACK_DIR/$name.script" \
        --record "$STACK_DIR/$name-record.jsonl" --port-file "$STACK_DIR/$name.port"
    wait_until 10 "$name port file" test -s "$STACK_DIR/$name.port"
}
# set_script NAME TEXT: replace the fake's rules (SIGHUP reloads them)
set_script() {
    local before
    before=$(grep -c "script reloaded" "$STACK_DIR/$1.log" || true)
    printf '%s\n' "$2" >"$STACK_DIR/$1.script"
    kill -HUP "$(stack_pid "$1")"
    wait_until 5 "$1 reloaded its script" \
        bash -c "[ \$(grep -c 'script reloaded' '$STACK_DIR/$1.log') -gt $before ]"
}
start_fake sms-a "$SID_A"
start_fake sms-b "$SID_B"
set_script sms-a "to $TO error 21610 times 1"

HTTP_PORT=$(stack_free_port) || stack_die "no free port"
HOOK=http://127.0.0.1:$HTTP_PORT
HUB_CHANNELS=apns,sms
HUB_EXTRA="metrics.listen = 127.0.0.1:$HTTP_PORT
bootstrap.phone = $TO
sms.api_url = https://127.0.0.1:$(cat "$STACK_DIR/sms-a.port")
sms.account_sid = $SID_A
sms.auth_token_file = $STACK_DIR/sms-a.token
sms.from = +15005550006
sms.ca_file = $STACK_DIR/certs/ca.crt
sms.rate = 100
sms.status_callback_url = $HOOK/v1/sms/status
sms.inbound_url = $HOOK/v1/sms/inbound
sms.status_poll = 1h
sms.backup.api_url = https://127.0.0.1:$(cat "$STACK_DIR/sms-b.port")
sms.backup.account_sid = $SID_B
sms.backup.auth_token_file = $STACK_DIR/sms-b.token
sms.backup.from = +15005550006
sms.engine.breaker_failures = 1
sms.engine.breaker_open = 1h
"
stack_hub
stack_agent
wait_until 10 "hub HTTP listener" port_open "$HTTP_PORT"

# sign TOKEN_FILE URL NAME=VALUE...: X-Twilio-Signature as Twilio computes it
# (base64 HMAC-SHA1 of the URL and the parameters sorted by name), in Python,
# independently of the hub's C.
sign() {
    "$PY" - "$@" <<'PYEOF'
import base64, hashlib, hmac, sys
token = open(sys.argv[1]).readline().strip().encode()
url = sys.argv[2]
params = sorted(a.split("=", 1) for a in sys.argv[3:])
msg = url + "".join(k + v for k, v in params)
print(base64.b64encode(hmac.new(token, msg.encode(), hashlib.sha1).digest()).decode())
PYEOF
}
# post PATH SIGNATURE NAME=VALUE...: form post to the hub; prints the HTTP status
post() {
    local path=$1 sig=$2 args=() kv
    shift 2
    for kv in "$@"; do args+=(--data-urlencode "$kv"); done
    curl -s -o "$STACK_DIR/post.out" -w '%{http_code}' -H "X-Twilio-Signature: $sig" \
        "${args[@]}" "$HOOK$path"
}
# signed_post PATH TOKEN_FILE NAME=VALUE...
signed_post() {
    local path=$1 tok=$2
    shift 2
    post "$path" "$(sign "$tok" "$HOOK$path" "$@")" "$@"
}

sms_device() { hub_sql "SELECT state || '|' || state_reason FROM devices WHERE platform = 'sms'"; }
device_is() { [ "$(sms_device)" = "$1" ]; }
sent_to() { grep -c "\"To\": \"$TO\"" "$STACK_DIR/$1-record.jsonl" 2>/dev/null || true; }
terminal() { local s; s=$(hub_sql "SELECT state FROM notifications WHERE id = '$1'"); [ "$s" = delivered ] || [ "$s" = failed ]; }
sms_only() { stack_publish "{\"id\":\"$1\",\"to\":\"user:alice\",\"title\":\"Code\",\"body\":\"$1\",\"channels\":[\"sms\"]}"; }
sid_of() { hub_sql "SELECT provider_id FROM attempts WHERE notification_id = '$1' AND state = 'ok' AND channel = 'sms'"; }
pstatus() { hub_sql "SELECT status || '|' || error_code || '|' || updates FROM provider_status WHERE channel = 'sms' AND provider_id = '$1'"; }

# 1. 21610: the number is disabled; the next notification does not go out.
n1="opt1-$$"
sms_only "$n1"
wait_until 30 "$n1 failed" hub_state_is "$n1" failed
wait_until 10 "number disabled by 21610" device_is "disabled|opted_out:21610"
[ "$(sent_to sms-a)" = 1 ] || fail "21610 send not recorded once"
n2="opt2-$$"
sms_only "$n2"
wait_until 30 "$n2 terminal" terminal "$n2"
hub_state_is "$n2" failed || fail "$n2 to an opted-out number: $(hub_state "$n2")"
[ "$(sent_to sms-a)" = 1 ] || fail "a notification reached the provider for an opted-out number"

# 2. START: a wrong signature is refused and changes nothing; a signed one re-enables.
start=(AccountSid=$SID_A MessageSid=SMin0001 From=$TO To=+15005550006 Body=START)
code=$(post /v1/sms/inbound "$(sign "$STACK_DIR/sms-b.token" "$HOOK/v1/sms/inbound" "${start[@]}")" "${start[@]}")
[ "$code" = 403 ] || fail "START with a wrong signature answered $code"
code=$(post /v1/sms/inbound "" "${start[@]}")
[ "$code" = 403 ] || fail "START without a signature answered $code"
device_is "disabled|opted_out:21610" || fail "a refused START changed the number: $(sms_device)"
code=$(signed_post /v1/sms/inbound "$STACK_DIR/sms-a.token" "${start[@]}")
[ "$code" = 200 ] || fail "signed START answered $code: $(cat "$STACK_DIR/post.out")"
grep -q "<Response></Response>" "$STACK_DIR/post.out" || fail "START not answered with TwiML"
wait_until 10 "number enabled by START" device_is "active|"
n3="opt3-$$"
sms_only "$n3"
wait_until 30 "$n3 delivered" hub_state_is "$n3" delivered
[ "$(sent_to sms-a)" = 2 ] || fail "$n3 did not reach the fake after START"
sid3=$(sid_of "$n3")
[ -n "$sid3" ] || fail "$n3 has no message SID"

# 3. status callbacks: stored once, replay idempotent, never backwards, bad signature refused.
cb=(AccountSid=$SID_A MessageSid=$sid3 SmsSid=$sid3 MessageStatus=delivered SmsStatus=delivered
    To=$TO From=+15005550006 ApiVersion=2010-04-01)
code=$(signed_post /v1/sms/status "$STACK_DIR/sms-a.token" "${cb[@]}")
[ "$code" = 200 ] || fail "status callback answered $code: $(cat "$STACK_DIR/post.out")"
wait_until 10 "status stored" bash -c "[ \"\$(sqlite3 -readonly '$STACK_DIR/hub/hub.db' \"SELECT status FROM provider_status WHERE provider_id = '$sid3'\")\" = delivered ]"
before=$(pstatus "$sid3")
[ "$before" = "delivered|0|1" ] || fail "after one callback: $before"
code=$(signed_post /v1/sms/status "$STACK_DIR/sms-a.token" "${cb[@]}")
[ "$code" = 200 ] || fail "the same callback again answered $code"
late=(AccountSid=$SID_A MessageSid=$sid3 MessageStatus=sent To=$TO)
code=$(signed_post /v1/sms/status "$STACK_DIR/sms-a.token" "${late[@]}")
[ "$code" = 200 ] || fail "a late 'sent' callback answered $code"
bad=(AccountSid=$SID_A MessageSid=$sid3 MessageStatus=read To=$TO)
code=$(post /v1/sms/status "$(sign "$STACK_DIR/sms-b.token" "$HOOK/v1/sms/status" "${bad[@]}")" "${bad[@]}")
[ "$code" = 403 ] || fail "a callback with a wrong signature answered $code"
# one more signed request after them: once it is stored, the earlier ones are too
mark=(AccountSid=$SID_A MessageSid=SMmark$$ MessageStatus=queued To=$TO)
[ "$(signed_post /v1/sms/status "$STACK_DIR/sms-a.token" "${mark[@]}")" = 200 ] || fail "marker callback refused"
wait_until 10 "marker stored" bash -c "[ -n \"\$(sqlite3 -readonly '$STACK_DIR/hub/hub.db' \"SELECT status FROM provider_status WHERE provider_id = 'SMmark$$'\")\" ]"
after=$(pstatus "$sid3")
[ "$after" = "$before" ] || fail "replayed / late / forged callbacks changed the status: $before -> $after"

# 4. status polling survives a restart: sms.status_poll = 1h, so nothing is
# polled before the hub stops; after the restart the watched message is
# polled at once (the fake's first step: "sent").
n4="opt4-$$"
sms_only "$n4"
wait_until 30 "$n4 delivered" hub_state_is "$n4" delivered
sid4=$(sid_of "$n4")
wait_until 10 "$n4 watched" bash -c "[ \"\$(sqlite3 -readonly '$STACK_DIR/hub/hub.db' \"SELECT account FROM provider_watch WHERE provider_id = '$sid4'\")\" = $SID_A ]"
[ -z "$(pstatus "$sid4")" ] || fail "$n4 polled before the restart: $(pstatus "$sid4")"
grep -q "\"method\": \"GET\"" "$STACK_DIR/sms-a-record.jsonl" && fail "a status GET before the restart"
stack_stop hub
stack_hub hub2
wait_until 20 "$n4 polled after the restart" bash -c "[ \"\$(sqlite3 -readonly '$STACK_DIR/hub/hub.db' \"SELECT status FROM provider_status WHERE provider_id = '$sid4'\")\" = sent ]"
grep -q "polling the status of 1 message(s) again" "$STACK_DIR/hub2.log" || fail "no resume line in the log"
grep -q "\"method\": \"GET\".*$sid4" "$STACK_DIR/sms-a-record.jsonl" ||
    grep -q "$sid4.*\"method\": \"GET\"" "$STACK_DIR/sms-a-record.jsonl" || fail "no status GET for $sid4 at the fake"

# 5. the primary fails: the breaker opens and the backup sends; its status
# callback is signed with the backup's token under the backup's account.
set_script sms-a "to * status 503"
n5="opt5-$$"
sms_only "$n5"
wait_until 30 "$n5 delivered through the backup" hub_state_is "$n5" delivered
[ "$(sent_to sms-b)" -ge 1 ] || fail "$n5 did not go through the backup"
sid5=$(sid_of "$n5")
grep -q "\"sid\": \"$sid5\"" "$STACK_DIR/sms-b-record.jsonl" || fail "$sid5 is not the backup's message"
cb5=(AccountSid=$SID_B MessageSid=$sid5 MessageStatus=delivered To=$TO)
code=$(signed_post /v1/sms/status "$STACK_DIR/sms-b.token" "${cb5[@]}")
[ "$code" = 200 ] || fail "backup's status callback answered $code: $(cat "$STACK_DIR/post.out")"
wait_until 10 "backup's status stored" bash -c "[ \"\$(sqlite3 -readonly '$STACK_DIR/hub/hub.db' \"SELECT status FROM provider_status WHERE provider_id = '$sid5'\")\" = delivered ]"
# the primary's token does not sign for the backup's account
cb5b=(AccountSid=$SID_B MessageSid=$sid5 MessageStatus=read To=$TO)
code=$(signed_post /v1/sms/status "$STACK_DIR/sms-a.token" "${cb5b[@]}")
[ "$code" = 403 ] || fail "backup's account signed with the primary's token answered $code"
echo "PASS: 21610 disables, signed START re-enables, idempotent signed status callbacks (primary and backup), polling resumed after a restart"
