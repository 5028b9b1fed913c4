#!/usr/bin/env bash
# The hub's fanout engine end to end (docs/engine.md):
#  1. GET /healthz and /metrics: healthy, and counters move with a delivery;
#     a receipt reaches the agent's receipts topic and leaves the outbox.
#  2. A provider token bucket (apns.engine.rate) holds sends back and still
#     delivers everything.
#  3. Circuit breaker: the primary fake APNs answers 503 -> breaker opens ->
#     sends fail over to the backup fake APNs -> primary recovers ->
#     half-open probe -> closed -> sends go to the primary again.
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
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -q '^# TYPE tidings_hub_send_latency_ms histogram$' ||
    fail "latency is not a histogram"
echo "metrics: $OK_PRIMARY went $before -> $(hub_metric "$OK_PRIMARY")"
wait_until 10 "receipt for e-1" grep -q '"id":"e-1","state":"delivered"' "$STACK_DIR/receipts.txt"
grep '"id":"e-1"' "$STACK_DIR/receipts.txt" | grep -q '"channels":\[{"channel":"apns","result":"ok","status":200,"reason":"","attempts":1}\]' ||
    fail "receipt without the channel outcome: $(grep '"id":"e-1"' "$STACK_DIR/receipts.txt")"
receipts_gone() { [ "$(hub_sql 'SELECT count(*) FROM receipts')" = 0 ]; }
wait_until 10 "confirmed receipts deleted" receipts_gone

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
echo "PASS: engine"
