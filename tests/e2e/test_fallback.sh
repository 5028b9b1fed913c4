#!/usr/bin/env bash
# End to end: provider retries in the durable timer store, and the channel
# fallback (push, then SMS) through the fanout, with the real stack.
#   1. APNs answers 503 with Retry-After: 3; the retry is a durable timer.
#      The hub is killed (-9) while it waits and restarted: the retry is not
#      sent before its stored due time, and is sent (and delivered) after.
#      1b. Without a restart the durable retry resumes the waiting delivery
#      (not before Retry-After: 1).
#   2. alice's preferences become push, then SMS after 2s (`tidingsctl pref
#      set`): a push that succeeds cancels the SMS step (decision
#      'allow|fallback_done', no timer left, the fake SMS never sees it);
#   3. a push that fails (400) leaves the SMS step to its timer: the SMS
#      arrives after it with a 'fallback|fallback:sms' decision, and the
#      notification ends delivered.
#   usage: test_fallback.sh BUILD_DIR SRC_DIR
set -euo pipefail
BUILD=$1
SRC=$2
# shellcheck source=../lib/stack.sh
. "$SRC/tests/lib/stack.sh"

fail() { stack_log "FAIL: $*"; stack_dump_logs; exit 1; }

stack_init
stack_broker
# Rules in order, each spent after its "times": 503 with Retry-After (case
# 1), 200 (its retry), 503 again and 200 twice (case 1b, case 2), then 400.
cat >"$STACK_DIR/apns.script" <<'SCRIPT'
token * status 503 reason ServiceUnavailable retry-after 3 times 1
token * delay 1 times 1
token * status 503 reason ServiceUnavailable retry-after 1 times 1
token * delay 1 times 2
token * status 400 reason BadPriority
SCRIPT
APNS_SCRIPT="$STACK_DIR/apns.script"
stack_fake_apns
stack_fake_sms
stack_hub
stack_agent

decision() { # ID -> "action|rule" lines
    hub_sql "SELECT action || '|' || rule FROM decisions WHERE notification_id = '$1' ORDER BY id"
}
has_decision() { decision "$1" | grep -qxF "$2"; }
sms_count() { # how many SMS requests carry TEXT
    [ -f "$STACK_DIR/sms-record.jsonl" ] || { echo 0; return; }
    grep -c "$1" "$STACK_DIR/sms-record.jsonl" || true
}
sms_has() { [ "$(sms_count "$1")" -ge 1 ]; }
retry_timers() { hub_sql "SELECT count(*) FROM timers WHERE notification_id='$1' AND kind='retry'"; }
retry_stored() { [ "$(retry_timers "$1")" = 1 ]; }
apns_ts() { # ID N -> ts_ms of the Nth request for ID at the fake APNs
    grep "tidings_id[^,]*$1" "$STACK_DIR/apns-record.jsonl" | sed -n "${2}p" |
        /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['ts_ms'])"
}

# 1. A provider retry waits for its time across a kill -9 of the hub.
stack_publish '{"id":"fb-retry","to":"user:alice","title":"retry me","channels":["push"]}'
wait_until 20 "fb-retry answered 503 by the fake APNs" apns_has_id fb-retry
wait_until 10 "fb-retry's retry timer on disk" retry_stored fb-retry
due=$(hub_sql "SELECT due_ms FROM timers WHERE notification_id='fb-retry' AND kind='retry'")
first=$(apns_ts fb-retry 1)
((due >= first + 2900)) || fail "retry due $due is not Retry-After (3s) after the 503 at $first"
stack_stop hub KILL
stack_hub hub2
grep -q "wait for their provider retry time" "$STACK_DIR/hub2.log" ||
    fail "hub2 did not keep fb-retry waiting"
wait_until 20 "fb-retry retried after the restart" apns_has_id fb-retry 2
wait_until 10 "fb-retry delivered" hub_state_is fb-retry delivered
second=$(apns_ts fb-retry 2)
((second >= due)) || fail "the retry was sent at $second, before its due time $due"
[ "$(apns_count_id fb-retry)" = 2 ] || fail "fb-retry reached APNs $(apns_count_id fb-retry) times"
[ "$(retry_timers fb-retry)" = 0 ] || fail "fb-retry's retry timer left behind"

# 1b. Without a restart: the durable timer resumes the delivery in memory.
stack_publish '{"id":"fb-retry2","to":"user:alice","title":"retry me too","channels":["push"]}'
wait_until 20 "fb-retry2 retried" apns_has_id fb-retry2 2
wait_until 10 "fb-retry2 delivered" hub_state_is fb-retry2 delivered
(($(apns_ts fb-retry2 2) >= $(apns_ts fb-retry2 1) + 900)) ||
    fail "fb-retry2 retried before its Retry-After (1s)"
[ "$(apns_count_id fb-retry2)" = 2 ] || fail "fb-retry2 reached APNs $(apns_count_id fb-retry2) times"
[ "$(retry_timers fb-retry2)" = 0 ] || fail "fb-retry2's retry timer left behind"
if grep -q "id=fb-retry2: retry time reached" "$STACK_DIR/hub2.log"; then
    fail "fb-retry2 was requeued instead of resumed"
fi

# 2. Fallback push -> SMS after 2s: a push success cancels the SMS step.
printf 'port = %s\ntimeout = 10s\n' "$BROKER_PORT" >"$STACK_DIR/ctl.conf"
chmod 600 "$STACK_DIR/ctl.conf"
timeout 60 "$BUILD/hub/ctl/tidingsctl" -c "$STACK_DIR/ctl.conf" pref set alice \
    '{"fallback":[{"channel":"push"},{"channel":"sms","after":"2s"}]}' >"$STACK_DIR/ctl.out" 2>&1 ||
    fail "pref set: $(cat "$STACK_DIR/ctl.out")"
stack_publish '{"id":"fb-ok","to":"user:alice","title":"fallback-not-needed"}'
wait_until 20 "fb-ok delivered" hub_state_is fb-ok delivered
has_decision fb-ok 'allow|fallback_done' || fail "fb-ok decisions: $(decision fb-ok)"
[ "$(hub_sql "SELECT count(*) FROM timers WHERE notification_id='fb-ok'")" = 0 ] ||
    fail "fb-ok's SMS step still scheduled"

# 3. A push that fails leaves the SMS step to its timer.
stack_publish '{"id":"fb-sms","to":"user:alice","title":"fallback-to-sms"}'
wait_until 20 "fb-sms refused by the fake APNs" apns_has_id fb-sms
wait_until 20 "fb-sms at the fake SMS" sms_has fallback-to-sms
wait_until 10 "fb-sms delivered" hub_state_is fb-sms delivered
has_decision fb-sms 'fallback|fallback:sms' || fail "fb-sms decisions: $(decision fb-sms)"
step0=$(hub_sql "SELECT min(started_ms) FROM attempts WHERE notification_id='fb-sms' AND channel='apns'")
step1=$(hub_sql "SELECT min(started_ms) FROM attempts WHERE notification_id='fb-sms' AND channel='sms'")
((step1 >= step0 + 2000)) || fail "SMS attempt at $step1, less than 2s after the push at $step0"
# fb-ok's SMS step would have run (2s) before fb-sms's: it never reached the fake.
[ "$(sms_count fallback-not-needed)" = 0 ] || fail "fb-ok was sent by SMS too"
[ "$(sms_count fallback-to-sms)" = 1 ] || fail "fb-sms sent $(sms_count fallback-to-sms) times by SMS"

stack_log "PASS"
