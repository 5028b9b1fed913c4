#!/usr/bin/env bash
# After an outage of the central broker (the agent's uplink), the backlog
# drains oldest first at uplink.drain_rate, and a critical notification
# published during the drain does not wait behind it. The local broker (the
# devices') stays up. Measured rates are printed, never asserted.
#   usage: test_drain.sh BUILD_DIR SRC_DIR
set -euo pipefail
BUILD=$1
SRC=$2
# shellcheck source=../lib/stack.sh
. "$SRC/tests/lib/stack.sh"
fail() { stack_log "FAIL: $*"; stack_dump_logs; exit 1; }

N=600
AGENT_EXTRA="uplink.drain_rate = 200
uplink.reconnect_max = 500ms"
stack_init
stack_broker central
UPLINK_PORT=$BROKER_PORT
stack_broker
stack_fake_apns
stack_hub
stack_agent

# The outage: the central broker is gone while devices keep publishing.
stack_stop central
for ((i = 1; i <= N; i++)); do
    printf '{"id":"d-%d","to":"user:alice","title":"backlog %d"}\n' "$i" "$i"
done >"$STACK_DIR/backlog.txt"
mosquitto_pub -V mqttv5 -q 1 -h 127.0.0.1 -p "$BROKER_PORT" -t tidings/v1/local/notify \
    -l <"$STACK_DIR/backlog.txt"
queued() { [ "$(sqlite3 -readonly "$STACK_DIR/agent/outbox.db" 'SELECT count(*) FROM outbox')" -ge "$N" ]; }
wait_until 30 "$N queued in the outbox" queued

start=$(date +%s%N)
LOCAL_PORT=$BROKER_PORT
stack_broker central "$UPLINK_PORT"
BROKER_PORT=$LOCAL_PORT # stack_publish goes to the devices' broker
backlog_at_hub() { hub_sql "SELECT count(*) FROM notifications WHERE id LIKE 'd-%'"; }
some() { [ "$(backlog_at_hub)" -ge 50 ]; }
wait_until 30 "drain started" some
stack_publish '{"id":"crit-1","to":"user:alice","priority":"critical","title":"smoke"}'
crit_in() { [ "$(hub_sql "SELECT count(*) FROM notifications WHERE id = 'crit-1'")" = 1 ]; }
wait_until 30 "critical at the hub" crit_in
seen=$(backlog_at_hub)
echo "critical reached the hub with $seen of $N backlog notifications there"
[ "$seen" -lt "$N" ] || fail "the critical notification waited for the whole backlog"

all() { [ "$(backlog_at_hub)" -eq "$N" ]; }
wait_until 60 "backlog drained" all
ms=$((($(date +%s%N) - start) / 1000000))
echo "drained $N in ${ms} ms (~$((N * 1000 / (ms > 0 ? ms : 1)))/s; drain_rate 200/s, burst one batch)"
# oldest first: no later-numbered notification reached the hub before an earlier one
inversions=$(hub_sql "SELECT count(*) FROM notifications a JOIN notifications b
    ON CAST(substr(a.id, 3) AS INTEGER) < CAST(substr(b.id, 3) AS INTEGER)
    WHERE a.id LIKE 'd-%' AND b.id LIKE 'd-%' AND a.received_ms > b.received_ms")
[ "$inversions" = 0 ] || fail "$inversions pairs arrived newest first"
wait_until 30 "all delivered" bash -c "[ \$(sqlite3 -readonly '$STACK_DIR/hub/hub.db' \"SELECT count(*) FROM notifications WHERE state = 'delivered'\") -eq $((N + 1)) ]"
echo "PASS: drain"
