#!/usr/bin/env bash
# The hub's fanout engine end to end (docs/engine.md):
#  1. GET /healthz and /metrics: healthy, and counters move with a delivery;
#     a receipt reaches the agent's receipts topic and leaves the outbox.
#  2. A provider token bucket (apns.engine.rate) holds sends back and still
#     delivers everything.
#  3. Circuit breaker: the primary fake APNs answers 503 -> breaker opens ->
#     sends fail over to the backup fake APNs -> primary recovers ->
#     half-open probe -> closed -> sends go to the primary again.
#  3b. Gauges while the provider is slow (in flight per channel, queue
#     depth), and the token-disable counters after 410 / BadDeviceToken.
#  4. Per-agent intake limits: over the rate a batch waits un-acked and is
#     resent; over the daily quota items are rejected with over_quota.
#   usage: test_engine.sh BUILD_DIR SRC_DIR
set -euo pipefail
BUILD=$1
SRC=$2
# shellcheck source=../lib/stack.sh
. "$SRC/tests/lib/stack.sh"
fail() { stack_log "FAIL: $*"; stack_dump_logs; exit 1; }

stack_init
stack_broker
APNS_SCRIPT="$STACK_DIR/primary.script"
: >"$APNS_SCRIPT"
stack_fake_apns
stack_fake_apns_backup
stack_metrics
HUB_EXTRA+="apns.engine.rate = 200
apns.engine.burst = 20
apns.engine.breaker_failures = 3
apns.engine.breaker_window = 10
apns.engine.breaker_open = 1s
"
# debug logs: every provider answer is logged, and no device token (nor a
# part of one) may be among them: PII never reaches the logs
HUB_LOG_LEVEL=debug
stack_hub
AGENT_ACK_TIMEOUT=1s
stack_agent

mosquitto_sub -V mqttv5 -q 1 -h 127.0.0.1 -p "$BROKER_PORT" \
    -t 'tidings/v1/agents/gw1/receipts' >"$STACK_DIR/receipts.txt" 2>/dev/null &
STACK_PIDS+=($!)

publish_ids() { # publish_ids PREFIX FROM TO: one notification per id, QoS 1
    local i
    for ((i = $2; i <= $3; i++)); do
        printf '{"id":"%s-%d","to":"user:alice","title":"engine %d","body":"test"}\n' "$1" "$i" "$i"
    done >"$STACK_DIR/load-$1.txt"
    mosquitto_pub -V mqttv5 -q 1 -h 127.0.0.1 -p "$BROKER_PORT" -t tidings/v1/local/notify \
        -l <"$STACK_DIR/load-$1.txt"
}
count_state() { hub_sql "SELECT count(*) FROM notifications WHERE id LIKE '$1-%' AND state = '$2'"; }
all_state() { [ "$(count_state "$1" "$2")" -eq "$3" ]; }
in_record() { grep -c "tidings_id[^,]*\\\\\"$2-" "$STACK_DIR/$1" || true; }
health() { curl -s "http://127.0.0.1:$METRICS_PORT/healthz"; }

# --- 1. health, metrics, receipts ------------------------------------------
h=$(health)
echo "healthz: $h"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$METRICS_PORT/healthz")" = 200 ] ||
    fail "healthz not 200: $h"
grep -q '"status":"ok"' <<<"$h" || fail "healthz: $h"
grep -q '"channel":"apns","provider":"primary","breaker":"closed"' <<<"$h" || fail "healthz: $h"
grep -q '"provider":"backup","breaker":"closed"' <<<"$h" || fail "healthz has no backup: $h"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$METRICS_PORT/nope")" = 404 ] ||
    fail "unknown path not 404"
OK_PRIMARY='tidings_hub_attempts_total{channel="apns",provider="primary",result="ok"}'
before=$(hub_metric "$OK_PRIMARY")
publish_ids e 1 1
wait_until 20 "e-1 delivered" all_state e delivered 1
wait_until 10 "attempt counted" metric_ge "$OK_PRIMARY" $((before + 1))
metric_ge 'tidings_hub_notifications_total{state="delivered"}' 1 || fail "no delivered count"
metric_ge 'tidings_hub_send_latency_ms_count{channel="apns"}' 1 || fail "no latency sample"
metric_ge 'tidings_hub_intake_items_total{result="accepted"}' 1 || fail "intake not counted"
# (not curl | grep -q: grep leaving early makes curl fail under pipefail)
metrics_text=$(curl -s "http://127.0.0.1:$METRICS_PORT/metrics")
grep -q '^# TYPE tidings_hub_send_latency_ms histogram$' <<<"$metrics_text" ||
    fail "latency is not a histogram"
echo "metrics: $OK_PRIMARY went $before -> $(hub_metric "$OK_PRIMARY")"
wait_until 10 "receipt for e-1" grep -q '"id":"e-1","state":"delivered"' "$STACK_DIR/receipts.txt"
grep '"id":"e-1"' "$STACK_DIR/receipts.txt" | grep -q '"channels":\[{"channel":"apns","result":"ok","status":200,"reason":"","attempts":1}\]' ||
    fail "receipt without the channel outcome: $(grep '"id":"e-1"' "$STACK_DIR/receipts.txt")"
receipts_gone() { [ "$(hub_sql 'SELECT count(*) FROM receipts')" = 0 ]; }
wait_until 10 "confirmed receipts deleted" receipts_gone
# Straight from intake: its receipt went out from the store's memory, not
# read back (docs/engine.md, "Receipts from memory"), with the bytes above.
[ "$(hub_metric tidings_hub_receipts_from_memory_total)" -ge 1 ] ||
    fail "receipt of e-1 not published from memory"

# --- 2. provider token bucket ----------------------------------------------
publish_ids r 1 300
wait_until 60 "300 delivered under apns.engine.rate" all_state r delivered 300
limited=$(hub_metric 'tidings_hub_rate_limited_total{channel="apns",provider="primary"}')
echo "rate limit: 300 delivered at 200/s (burst 20); sends held back $limited time(s)"
[ "${limited%.*}" -gt 0 ] || fail "the token bucket never held a send back"

# --- 3. breaker, failover, half-open, closed -------------------------------
echo 'token * status 503 reason ServiceUnavailable' >"$APNS_SCRIPT"
kill -HUP "$(stack_pid fake-apns)"
publish_ids b 1 20
wait_until 60 "b-* delivered through the backup" all_state b delivered 20
grep -q 'breaker: apns: closed -> open' "$STACK_DIR/hub.log" || fail "breaker did not open"
backup_n=$(in_record apns2-record.jsonl b)
[ "$backup_n" -ge 1 ] || fail "nothing went to the backup"
metric_ge 'tidings_hub_breaker_opens_total{channel="apns",provider="primary"}' 1 ||
    fail "breaker opening not counted"
metric_ge 'tidings_hub_failover_total{channel="apns"}' 1 || fail "failover not counted"
metric_ge 'tidings_hub_failures_total{channel="apns",reason="ServiceUnavailable"}' 3 ||
    fail "503s not counted by reason"
echo "breaker: primary answered 503, opened; $backup_n of 20 delivered by the backup"
grep -q '"id":"b-1","state":"delivered"' "$STACK_DIR/receipts.txt" ||
    wait_until 10 "receipt for b-1" grep -q '"id":"b-1","state":"delivered"' "$STACK_DIR/receipts.txt"
# primary recovers: keep a trickle going until a half-open probe closes it
: >"$APNS_SCRIPT"
kill -HUP "$(stack_pid fake-apns)"
k=0
probe() {
    k=$((k + 1))
    publish_ids p "$k" "$k"
    grep -q 'breaker: apns: half_open -> closed' "$STACK_DIR/hub.log"
}
wait_until 30 "primary breaker closed again" probe
grep -q 'breaker: apns: open -> half_open' "$STACK_DIR/hub.log" || fail "no half-open state logged"
prim_before=$(in_record apns-record.jsonl d)
publish_ids d 1 5
wait_until 20 "d-* delivered" all_state d delivered 5
[ "$(in_record apns-record.jsonl d)" -ge 5 ] || fail "after closing, sends did not go to the primary"
grep -q 'apns: back on the primary provider' "$STACK_DIR/hub.log" || fail "failback not logged"
[ "$(health | grep -c '"provider":"primary","breaker":"closed"')" = 1 ] || fail "health: $(health)"
echo "breaker: open -> half_open -> closed after the primary recovered; d-* went to the primary ($prim_before before)"

# --- 3b. gauges while the provider is slow; token disables -----------------
# The primary answers alice's next 10 after 5 s: meanwhile they are in
# flight (per channel and provider), their notifications 'sending'.
reload_apns() { # the primary fake rereads $APNS_SCRIPT; wait until it has
    local n
    n=$(grep -c "reloaded" "$STACK_DIR/fake-apns.log" || true)
    kill -HUP "$(stack_pid fake-apns)"
    wait_until 10 "fake APNs reloaded" \
        bash -c "[ \$(grep -c reloaded '$STACK_DIR/fake-apns.log') -gt $n ]"
}
echo "token $APNS_TOKEN delay 5000 times 10" >"$APNS_SCRIPT"
reload_apns
publish_ids w 1 10
wait_until 10 "in flight at the slow provider" \
    metric_ge 'tidings_hub_inflight{channel="apns",provider="primary"}' 1
metric_ge 'tidings_hub_queue_depth{state="sending"}' 1 || fail "queue depth: nothing sending"
metric_ge 'tidings_hub_requests_inflight' 1 || fail "requests_inflight is 0"
metric_ge 'tidings_hub_fanout_jobs' 1 || fail "fanout_jobs is 0"
echo "slow provider: inflight=$(hub_metric 'tidings_hub_inflight{channel="apns",provider="primary"}')" \
    "sending=$(hub_metric 'tidings_hub_queue_depth{state="sending"}')"
wait_until 30 "w-* delivered" all_state w delivered 10
gauges_zero() {
    [ "$(hub_metric 'tidings_hub_inflight{channel="apns",provider="primary"}')" = 0 ] &&
        [ "$(hub_metric 'tidings_hub_queue_depth{state="sending"}')" = 0 ] &&
        [ "$(hub_metric 'tidings_hub_queue_depth{state="queued"}')" = 0 ] &&
        [ "$(hub_metric 'tidings_hub_requests_inflight')" = 0 ]
}
wait_until 10 "gauges back to 0" gauges_zero
# 410 Unregistered disables a token, 400 BadDeviceToken flags one (through
# tidingsctl: agent gw1 may send only to alice).
GONE_TOKEN=$(printf 'a7%.0s' $(seq 1 32))
BAD_TOKEN=$(printf 'b8%.0s' $(seq 1 32))
printf 'token %s status 410 reason Unregistered\ntoken %s status 400 reason BadDeviceToken\n' \
    "$GONE_TOKEN" "$BAD_TOKEN" >"$APNS_SCRIPT"
reload_apns
ctl() { timeout 60 "$BUILD/hub/ctl/tidingsctl" -h 127.0.0.1 -p "$BROKER_PORT" --timeout 10s "$@"; }
DISABLED='tidings_hub_device_actions_total{channel="apns",action="disabled"}'
FLAGGED='tidings_hub_device_actions_total{channel="apns",action="flagged"}'
disabled0=$(hub_metric "$DISABLED")
flagged0=$(hub_metric "$FLAGGED")
ctl user add mel >/dev/null || fail "tidingsctl user add"
gone_dev=$(ctl --json device add mel --platform ios --token "$GONE_TOKEN" --app "$APNS_TOPIC" |
    /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["device"]["id"])')
bad_dev=$(ctl --json device add mel --platform ios --token "$BAD_TOKEN" --app "$APNS_TOPIC" |
    /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["device"]["id"])')
ctl send --to user:mel --id x-1 --title "to two dead tokens" >/dev/null || fail "tidingsctl send"
wait_until 20 "x-1 failed" all_state x failed 1
wait_until 10 "token disable counted" metric_ge "$DISABLED" $((${disabled0%.*} + 1))
wait_until 10 "token flag counted" metric_ge "$FLAGGED" $((${flagged0%.*} + 1))
[ "$(hub_sql "SELECT state FROM devices WHERE id = $gone_dev")" = disabled ] ||
    fail "410 did not disable device $gone_dev"
[ "$(hub_sql "SELECT state FROM devices WHERE id = $bad_dev")" = flagged ] ||
    fail "BadDeviceToken did not flag device $bad_dev"
echo "token disables: $DISABLED=$(hub_metric "$DISABLED"), $FLAGGED=$(hub_metric "$FLAGGED")"
: >"$APNS_SCRIPT"
reload_apns

# --- 4. per-agent intake limits ---------------------------------------------
stack_stop hub
used=$(hub_sql "SELECT coalesce(sum(n), 0) FROM agent_quota WHERE agent = 'gw1'")
[ "$used" = 0 ] || fail "quota counted without a quota set ($used)"
accepted=$(hub_sql "SELECT count(*) FROM notifications WHERE agent = 'gw1'")
cat >>"$STACK_DIR/hub.conf" <<CONF
intake.agent_rate = 2
intake.agent_burst = 1
intake.agent_quota = 33
CONF
stack_hub hub2
for i in $(seq 1 30); do # separate publishes: several uplink batches
    publish_ids s "$i" "$i"
done
wait_until 60 "30 paced notifications stored and delivered" all_state s delivered 30
delayed=$(hub_metric 'tidings_hub_intake_items_total{result="delayed"}')
echo "agent rate: 30 sent in separate batches at 2/s: $delayed item(s) waited un-acked and came again"
[ "${delayed%.*}" -gt 0 ] || fail "no batch was held back by intake.agent_rate"
publish_ids q 1 5
rejected() { [ "$(grep -c 'hub rejected id=q-[0-9]*: over_quota' "$STACK_DIR/agent.log")" -eq 2 ]; }
wait_until 30 "2 rejected over_quota" rejected
wait_until 20 "3 of q delivered" all_state q delivered 3
[ "$(hub_sql "SELECT n FROM agent_quota WHERE agent = 'gw1'")" = 33 ] || fail "quota count: $(hub_sql 'SELECT * FROM agent_quota')"
metric_ge 'tidings_hub_intake_rejected_total{reason="over_quota"}' 2 || fail "over_quota not counted"
echo "agent quota: 33 per day: 30 + 3 accepted, 2 rejected over_quota ($accepted accepted before the limits)"
grep -q 'apns: status=200' "$STACK_DIR/hub.log" || fail "no debug line per provider answer"
if grep -qF "${APNS_TOKEN:0:8}" "$STACK_DIR/hub.log"; then
    fail "the hub's log holds (a part of) a device token: $(grep -F "${APNS_TOKEN:0:8}" "$STACK_DIR/hub.log" | head -3)"
fi
echo "PASS: engine"
