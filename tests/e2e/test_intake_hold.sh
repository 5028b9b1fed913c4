#!/usr/bin/env bash
# Intake backpressure (docs/engine.md, "Backpressure"): while every delivery
# slot is taken, the hub holds uplink batches un-acked, so the backlog waits
# in the agent's outbox; a batch held intake.hold_max is stored and acked
# anyway, so no agent waits near its ack timeout; nothing is lost or doubled.
#  - the fake APNs holds each answer 1 s and the hub has 10 delivery slots
#    (fanout.max_jobs = 10; the first batch of 20 fills them and parks the rest);
#  - 150 notifications arrive through the agent at once;
#  - notifications are parked, batches are held (the metrics move), and with
#    intake.hold_max = 300ms all 150 are stored while the provider has
#    answered only a few of them;
#  - then every one is delivered exactly once, and no batch stays held.
#   usage: test_intake_hold.sh BUILD_DIR SRC_DIR
set -euo pipefail
BUILD=$1
SRC=$2
# shellcheck source=../lib/stack.sh
. "$SRC/tests/lib/stack.sh"
fail() { stack_log "FAIL: $*"; stack_dump_logs; exit 1; }

N=150
stack_init
stack_broker
APNS_SCRIPT="$STACK_DIR/apns.script"
echo 'token * delay 1000' >"$APNS_SCRIPT"
stack_fake_apns
stack_metrics
HUB_EXTRA+="fanout.max_jobs = 10
intake.hold_max = 300ms
"
stack_hub
AGENT_EXTRA+="uplink.batch_max = 20
"
stack_agent

for ((i = 1; i <= N; i++)); do
    printf '{"id":"h-%d","to":"user:alice","title":"hold %d","body":"intake hold test"}\n' "$i" "$i"
done >"$STACK_DIR/load.txt"
mosquitto_pub -V mqttv5 -q 1 -h 127.0.0.1 -p "$BROKER_PORT" -t tidings/v1/local/notify \
    -l <"$STACK_DIR/load.txt" || fail "publish failed"

count() { hub_sql "SELECT count(*) FROM notifications WHERE id LIKE 'h-%' $1"; }
stored_all() { [ "$(count "")" -eq "$N" ]; }
# The first batch (uplink.batch_max = 20) fills the 10 slots and parks the
# other 10 at once; the following ones are held.
wait_until 30 "notifications parked" metric_ge tidings_hub_fanout_parked_total 1
wait_until 30 "batches held back" metric_ge tidings_hub_intake_held_total 1
wait_until 30 "all $N stored (held batches aged out of intake.hold_max)" stored_all
delivered=$(count "AND state = 'delivered'")
echo "all $N stored while $delivered were delivered"
# 10 slots, 1 s per answer: all stored long before most are delivered.
[ "$delivered" -lt $((N / 2)) ] || fail "$delivered delivered before all were stored: nothing was held"
all_delivered() { [ "$(count "AND state = 'delivered'")" -eq "$N" ]; }
wait_until 120 "all $N delivered" all_delivered
rec="$STACK_DIR/apns-record.jsonl"
lines=$(grep -c 'tidings_id[^,]*\\"h-' "$rec" || true)
unique=$(grep -o 'tidings_id[^,]*\\"h-[0-9]*' "$rec" | sort -u | wc -l)
[ "$unique" -eq "$N" ] || fail "$unique of $N reached the fake APNs"
[ "$lines" -eq "$N" ] || fail "$lines requests for $N notifications: some were sent twice"
held=$(hub_metric tidings_hub_intake_held_total)
[ "$(hub_metric tidings_hub_intake_held_bytes)" = 0 ] || fail "batches still held after the end"
echo "intake hold: $N sent, $held batch(es) held at some point, $unique delivered once each"
echo "PASS: intake_hold"
