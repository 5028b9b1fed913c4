#!/usr/bin/env bash
# End to end: an IoT publish reaches the fake APNs through agent, broker and
# hub, exactly once; bad input on the local topic is rejected with a reason
# while the notifications behind it still flow.
#   usage: test_skeleton.sh BUILD_DIR SRC_DIR
set -euo pipefail
BUILD=$1
SRC=$2
# shellcheck source=../lib/stack.sh
. "$SRC/tests/lib/stack.sh"

fail() { stack_log "FAIL: $*"; stack_dump_logs; exit 1; }

stack_init
stack_broker
stack_fake_apns
stack_hub
stack_agent

# 1. One notification, published exactly as a device would.
stack_publish '{"id":"e2e-1","to":"user:alice","category":"security","priority":"high",
  "title":"Door open","body":"Front door opened at 22:49","data":{"door":"front"},"ttl":3600,
  "x_vendor":{"kept":true}}'
wait_until 20 "e2e-1 at the fake APNs" apns_has_id e2e-1
wait_until 10 "e2e-1 delivered in the hub" hub_state_is e2e-1 delivered
line=$(grep 'e2e-1' "$STACK_DIR/apns-record.jsonl")
for want in '"path":"/3/device/'"$APNS_TOKEN"'"' '"apns-topic":"com.example.tidings"' \
    '"apns-push-type":"alert"' '"apns-priority":"10"' '"jwt":"ok"' '"status":200' \
    'Door open' 'Front door opened at 22:49' 'apns-expiration'; do
    grep -qF -- "$want" <<<"$line" || fail "fake APNs record lacks $want: $line"
done
# the hub kept the unknown field
sqlite3 -readonly "$STACK_DIR/hub/hub.db" "SELECT body FROM notifications WHERE id='e2e-1'" |
    grep -q x_vendor || fail "unknown field x_vendor was not kept"
# the agent's outbox is empty once the hub acked
outbox_empty() { [ "$(sqlite3 -readonly "$STACK_DIR/agent/outbox.db" 'SELECT count(*) FROM outbox')" = 0 ]; }
wait_until 10 "agent outbox drained" outbox_empty

# 2. Bad input: each is rejected with a logged reason; the agent keeps going.
stack_publish '{"to":"user:alice","title":'                 # malformed JSON
stack_publish '{"to":"user:alice"}'                         # no title/body
stack_publish '{"to":"nobody","title":"x"}'                 # bad recipient
stack_publish "$(printf '{"to":"user:alice","title":"\xc3\x28"}')"   # invalid UTF-8
big=$(head -c 5000 /dev/zero | tr '\0' 'a')
stack_publish "{\"to\":\"user:alice\",\"title\":\"$big\"}"  # over 4096 bytes
stack_publish '{"id":"e2e-2","to":"user:alice","title":"still flowing"}'
wait_until 20 "e2e-2 behind the bad ones" apns_has_id e2e-2
for reason in malformed_json no_content bad_recipient bad_utf8 too_large; do
    grep -q "rejected notification.*$reason" "$STACK_DIR/agent.log" ||
        fail "agent did not log reason $reason"
done
kill -0 "$(stack_pid agent)" || fail "agent died on bad input"

# 3. The same id twice is one notification.
stack_publish '{"id":"e2e-3","to":"user:alice","title":"once"}'
stack_publish '{"id":"e2e-3","to":"user:alice","title":"once"}'
stack_publish '{"id":"e2e-4","to":"user:alice","title":"marker"}'
wait_until 20 "e2e-4 marker" apns_has_id e2e-4
# e2e-4 was published after both copies of e2e-3; once it has arrived and the
# hub has nothing queued or sending, any second e2e-3 would have been sent.
hub_idle() { [ "$(hub_sql "SELECT count(*) FROM notifications WHERE state IN ('queued','sending')")" = 0 ]; }
wait_until 20 "hub idle" hub_idle
n_att=$(sqlite3 -readonly "$STACK_DIR/hub/hub.db" "SELECT count(*) FROM attempts WHERE notification_id='e2e-3'")
[ "$n_att" = 1 ] || fail "e2e-3 has $n_att attempts in the hub"
[ "$(apns_count_id e2e-3)" = 1 ] || fail "e2e-3 reached APNs $(apns_count_id e2e-3) times"
[ "$(apns_count_id e2e-1)" = 1 ] || fail "e2e-1 reached APNs $(apns_count_id e2e-1) times"

# 4. An unknown user is rejected by the hub with a reason, not lost silently.
stack_publish '{"id":"e2e-5","to":"user:mallory","title":"who?"}'
wait_until 20 "hub rejects e2e-5" grep -q "rejected id=e2e-5.*unknown_recipient" "$STACK_DIR/agent.log"

# 5. A bad config value stops start-up with file:line and the reason.
printf 'agent.id = gw9\nuplink.port = 99999\n' >"$STACK_DIR/bad-agent.conf"
if out=$("$BUILD/agent/tidings-agent" -c "$STACK_DIR/bad-agent.conf" 2>&1); then
    fail "agent started with a bad config"
fi
grep -qF "$STACK_DIR/bad-agent.conf:2: uplink.port:" <<<"$out" || fail "agent: no file:line in: $out"
printf 'broker.port = 1883\nfanout.retry_base = soon\n' >"$STACK_DIR/bad-hub.conf"
if out=$("$BUILD/hub/tidings-hub" -c "$STACK_DIR/bad-hub.conf" 2>&1); then
    fail "hub started with a bad config"
fi
grep -qF "$STACK_DIR/bad-hub.conf:2: fanout.retry_base: 'soon' is not a duration" <<<"$out" ||
    fail "hub: no file:line in: $out"
printf 'apns.bogus = 1\n' >"$STACK_DIR/bad-hub2.conf"
out=$("$BUILD/hub/tidings-hub" -c "$STACK_DIR/bad-hub2.conf" 2>&1) && fail "hub accepted an unknown key"
grep -qF "bad-hub2.conf:1: apns.bogus: unknown key" <<<"$out" || fail "hub: unknown key not named: $out"

echo "PASS: skeleton end to end"
