#!/usr/bin/env bash
# One notification through every channel: alice has an iPhone (APNs), an
# Android phone (FCM), a phone number (SMS) and an email address; with no
# "channels" restriction the hub sends to each, through the real protocols
# to the fakes. A "channels" restriction then limits it to one.
#   usage: test_channels.sh BUILD_DIR SRC_DIR
set -euo pipefail
BUILD=$1
SRC=$2
# shellcheck source=../lib/stack.sh
. "$SRC/tests/lib/stack.sh"
fail() { stack_log "FAIL: $*"; stack_dump_logs; exit 1; }

stack_init
stack_broker
stack_fake_apns
stack_fake_fcm
stack_fake_sms
stack_fake_smtp
stack_hub
stack_agent

in_file() { [ -f "$2" ] && grep -q -- "$1" "$2"; }
in_mail() { grep -rqs -- "$1" "$STACK_DIR/mail"; }

id="ch-$$"
stack_publish "{\"id\":\"$id\",\"to\":\"user:alice\",\"priority\":\"high\",\"title\":\"Door\",\"body\":\"opened ($id)\"}"
wait_until 30 "$id at APNs" in_file "$id" "$STACK_DIR/apns-record.jsonl"
wait_until 30 "$id at FCM" in_file "$id" "$STACK_DIR/fcm-record.jsonl"
wait_until 30 "$id at SMS" in_file "$id" "$STACK_DIR/sms-record.jsonl"
wait_until 30 "$id by email" in_mail "$id"
wait_until 10 "$id delivered" hub_state_is "$id" delivered
ok=$(hub_sql "SELECT group_concat(channel, ',') FROM (SELECT channel FROM attempts WHERE notification_id = '$id' AND state = 'ok' ORDER BY channel)")
[ "$ok" = "apns,email,fcm,sms" ] || fail "attempts ok on: $ok"
grep -q "\"device_token\":\"$FCM_TOKEN\"" "$STACK_DIR/fcm-record.jsonl" || fail "FCM request lacks the token"
grep -q "$SMS_TO" "$STACK_DIR/sms-record.jsonl" || fail "SMS request not to $SMS_TO"
grep -rqs "^To: <\?$MAIL_TO>\?" "$STACK_DIR/mail" || grep -rqs "^To: .*$MAIL_TO" "$STACK_DIR/mail" ||
    fail "mail not to $MAIL_TO"

# "channels": ["sms"] reaches the phone number only.
id2="ch2-$$"
stack_publish "{\"id\":\"$id2\",\"to\":\"user:alice\",\"title\":\"Code\",\"body\":\"123456 ($id2)\",\"channels\":[\"sms\"]}"
wait_until 30 "$id2 delivered" hub_state_is "$id2" delivered
n=$(hub_sql "SELECT count(*) || ':' || group_concat(channel) FROM attempts WHERE notification_id = '$id2'")
[ "$n" = "1:sms" ] || fail "$id2 attempts: $n"
echo "PASS: one notification through apns, fcm, sms and email"
