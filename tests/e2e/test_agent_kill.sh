#!/usr/bin/env bash
# Issue 3 / DESIGN "Delivery guarantees" 1 and 2, "faults": kill -9 the agent
# at random moments while notifications arrive through its unix socket AND
# over local MQTT QoS 1 at the same time; restart it each time; then wait
# until the hub has everything and compare ids.
#
#   - socket: CLIENTS pipelining clients (sock_load) send SOCK_N in all and
#     resend whatever had no reply. Every id the socket acknowledged is at the
#     hub exactly once: zero loss.
#   - MQTT: one device (mqtt_load) publishes MQTT_N at QoS 1 on the local
#     broker and records each id the broker PUBACKed. The agent PUBACKs to
#     the broker only after its commit (platform/mqtt.c manual_ack,
#     mqtt_release_acks in the agent's before-sleep hook), and its session
#     with the local broker is persistent: what a kill interrupts is sent
#     again to the restarted agent. Every id the broker PUBACKed to the
#     device reaches the hub exactly once: zero loss. (Until the agent had
#     its own MQTT client, libmosquitto PUBACKed before on_message and a kill
#     lost up to 256 per kill; docs/delivery.md has both tables.)
#   - providers: the fake APNs records each id once; a second copy needs an
#     unconfirmed hub attempt (interrupted / retry).
#
# Kill points: KILLS (3-5, random) random numbers of acknowledged messages
# (socket + MQTT), spread over the run. KILL_SEED replays a run's choices.
#   usage: test_agent_kill.sh BUILD_DIR SRC_DIR
set -euo pipefail
BUILD=$1
SRC=$2
# shellcheck source=../lib/stack.sh
. "$SRC/tests/lib/stack.sh"

fail() { stack_log "FAIL: $*"; stack_dump_logs; exit 1; }
SEED=${KILL_SEED:-$(od -An -tu2 -N2 /dev/urandom | tr -d ' ')}
SOCK_N=${KILL_N:-10000}
MQTT_N=${KILL_MQTT_N:-10000}
CLIENTS=${KILL_CLIENTS:-4}
# Paced so both loads run side by side for about 5 s and the kills fall
# inside them: per socket client and for the device, per second.
RATE=${KILL_RATE:-500}
MQTT_RATE=${KILL_MQTT_RATE:-2000}
SOCK_LOAD="$BUILD/tests/e2e/sock_load"
MQTT_LOAD="$BUILD/tests/e2e/mqtt_load"
TOPIC=tidings/v1/local/notify

stack_init
stack_broker
stack_fake_apns
stack_hub
stack_agent
SOCK="$STACK_DIR/agent/agent.sock"
wait_until 10 "agent socket" test -S "$SOCK"

RANDOM=$SEED
KILLS=${KILL_KILLS:-$((3 + RANDOM % 3))}
echo "seed $SEED: $KILLS kills; $SOCK_N over the socket ($CLIENTS clients), $MQTT_N over MQTT QoS 1"

# --- the two loads, side by side -------------------------------------------
per=$((SOCK_N / CLIENTS))
pids=()
for ((c = 0; c < CLIENTS; c++)); do
    "$SOCK_LOAD" "$SOCK" k "$((c * per + 1))" "$per" "$STACK_DIR/acked-k-$c.txt" 128 "$RATE" \
        2>"$STACK_DIR/load-k-$c.log" &
    pids+=($!)
    STACK_PIDS+=($!)
done
"$MQTT_LOAD" 127.0.0.1 "$BROKER_PORT" "$TOPIC" m 1 "$MQTT_N" "$STACK_DIR/acked-m.txt" 100 \
    "$MQTT_RATE" 2>"$STACK_DIR/load-m.log" &
mqtt_pid=$!
STACK_PIDS+=("$mqtt_pid")

lines_of() { cat "$@" 2>/dev/null | wc -l; }
acked_total() { lines_of "$STACK_DIR"/acked-k-*.txt "$STACK_DIR/acked-m.txt"; }
reached() { [ "$(acked_total)" -ge "$WANT" ]; }

# The agent is dead: what it had committed is in its outbox (rows leave it
# only once the hub has them). Read a copy, so nothing touches the real file.
snapshot_outbox() {
    local d="$STACK_DIR/snap-$1" f
    mkdir -p "$d"
    for f in outbox.db outbox.db-wal; do
        [ -f "$STACK_DIR/agent/$f" ] && cp "$STACK_DIR/agent/$f" "$d/$f"
    done
    sqlite3 "$d/outbox.db" "SELECT id FROM outbox WHERE id LIKE 'm-%'" >>"$STACK_DIR/committed-m.txt"
    rm -rf "$d"
}

total=$((SOCK_N + MQTT_N))
step=$((total / (KILLS + 1)))
kill_notes=()
for ((k = 1; k <= KILLS; k++)); do
    WANT=$((k * step - step / 4 + RANDOM % (step / 2)))
    wait_until 60 "$WANT acknowledged before kill $k" reached || fail "loads stalled"
    kill -KILL "$(stack_pid agent)"
    wait "$(stack_pid agent)" 2>/dev/null || true
    kill_notes+=("$(lines_of "$STACK_DIR"/acked-k-*.txt)+$(lines_of "$STACK_DIR/acked-m.txt")")
    snapshot_outbox "$k"
    cp "$STACK_DIR/agent.log" "$STACK_DIR/agent-run$k.log"
    # The same name again: stack_pid agent is the new process.
    stack_agent agent
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
wait "$mqtt_pid" || rc=1
cat "$STACK_DIR"/load-*.log
[ "$rc" = 0 ] || fail "a load did not get every message acknowledged"

# Everything the device published is queued for the agent's session ahead
# of this sentinel (one broker, one session queue, in order): once the
# sentinel is at the hub and the outbox is empty, whatever the agent
# committed has reached the hub, and nothing is still on its way.
stack_publish '{"id":"m-end","to":"user:alice","title":"sentinel","body":"last"}'

sort -u "$STACK_DIR"/acked-k-*.txt >"$STACK_DIR/acked-k.sorted"
sort -u "$STACK_DIR/acked-m.txt" >"$STACK_DIR/acked-m.sorted"
acked_k=$(wc -l <"$STACK_DIR/acked-k.sorted")
acked_m=$(wc -l <"$STACK_DIR/acked-m.sorted")
settled() {
    [ "$(sqlite3 -readonly "$STACK_DIR/agent/outbox.db" 'SELECT count(*) FROM outbox')" = 0 ] &&
        [ "$(hub_sql "SELECT count(*) FROM notifications WHERE id = 'm-end'")" = 1 ] &&
        [ "$(hub_sql "SELECT count(*) FROM notifications WHERE id LIKE 'k-%'")" -ge "$acked_k" ] &&
        [ "$(hub_sql "SELECT count(*) FROM notifications
                      WHERE (id LIKE 'k-%' OR id LIKE 'm-%') AND state IN ('queued','sending')")" = 0 ]
}
wait_until 60 "hub has everything, nothing left to send" settled || fail "not drained"

# --- compare ids ------------------------------------------------------------
hub_ids() { hub_sql "SELECT id FROM notifications WHERE id LIKE '$1-%' AND id <> 'm-end'" | sort; }
hub_ids k >"$STACK_DIR/hub-k.sorted"
hub_ids m >"$STACK_DIR/hub-m.sorted"
sort -u "$STACK_DIR/committed-m.txt" >"$STACK_DIR/committed-m.sorted"
twice=$(hub_sql "SELECT count(*) FROM (SELECT id FROM notifications
                 WHERE id LIKE 'k-%' OR id LIKE 'm-%' GROUP BY id HAVING count(*) > 1)")
at_hub_k=$(wc -l <"$STACK_DIR/hub-k.sorted")
at_hub_m=$(wc -l <"$STACK_DIR/hub-m.sorted")
missing_k=$(comm -23 "$STACK_DIR/acked-k.sorted" "$STACK_DIR/hub-k.sorted" | wc -l)
extra_k=$(comm -13 "$STACK_DIR/acked-k.sorted" "$STACK_DIR/hub-k.sorted" | wc -l)
comm -23 "$STACK_DIR/acked-m.sorted" "$STACK_DIR/hub-m.sorted" >"$STACK_DIR/lost-m.txt"
lost_m=$(wc -l <"$STACK_DIR/lost-m.txt")
extra_m=$(comm -13 "$STACK_DIR/acked-m.sorted" "$STACK_DIR/hub-m.sorted" | wc -l)
committed_m=$(wc -l <"$STACK_DIR/committed-m.sorted")
committed_lost=$(comm -23 "$STACK_DIR/committed-m.sorted" "$STACK_DIR/hub-m.sorted" | wc -l)

# Provider side: one APNs request per id, beyond repeats of unconfirmed attempts.
apns_ids() {
    grep -o "tidings_id[^,]*\\\\\"[km]-[0-9][0-9]*" "$STACK_DIR/apns-record.jsonl" | sed 's/.*"//' || true
}
apns_lines=$(apns_ids | wc -l)
apns_unique=$(apns_ids | sort -u | wc -l)
apns_dups=$((apns_lines - apns_unique))
unconfirmed=$(hub_sql "SELECT count(*) FROM attempts WHERE (notification_id LIKE 'k-%' OR
                       notification_id LIKE 'm-%') AND state IN ('interrupted', 'retry')")
delivered=$(hub_sql "SELECT count(*) FROM notifications WHERE (id LIKE 'k-%' OR id LIKE 'm-%')
                     AND id <> 'm-end' AND state = 'delivered'")

# The last run's uplink: batches whose ack did not come in time (resent).
ack_timeouts=$("$BUILD/agent/tidings-agent" status --json -c "$STACK_DIR/agent.conf" |
    grep -o '"ack_timeouts":[[:space:]]*[0-9]*' | tr -dc 0-9 || true)
# The last run ends cleanly: its own measure of the PUBACK delay.
stack_stop agent TERM
qos1_delay=$(grep -o 'MQTT QoS 1 window.*' "$STACK_DIR/agent.log" | tail -1 || true)
# Messages the local broker sent again to a restarted agent (DUP) are
# duplicates the outbox absorbs by id.
dups_in=$(cat "$STACK_DIR"/agent-run*.log "$STACK_DIR/agent.log" 2>/dev/null |
    grep -o 'mqtt received=[0-9]* accepted=[0-9]* duplicates=[0-9]*' | tail -1 || true)

pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f%%", b ? 100 * a / b : 0 }'; }
echo "agent kill -9 x$KILLS (seed $SEED) at socket+MQTT acknowledged: ${kill_notes[*]}"
echo "  socket: sent $SOCK_N, acknowledged $acked_k, at the hub $at_hub_k, lost $missing_k," \
    "unacknowledged at the hub $extra_k"
echo "  MQTT QoS 1: sent $MQTT_N, PUBACKed $acked_m, at the hub $at_hub_m, lost $lost_m" \
    "($(pct "$lost_m" "$acked_m"))," \
    "committed at a kill and lost $committed_lost (of $committed_m seen in the outbox)"
echo "  hub: $twice id(s) more than once, $delivered delivered; APNs: $apns_lines requests," \
    "$apns_unique ids, $apns_dups duplicate(s), $unconfirmed unconfirmed attempt(s)"
echo "  last run: uplink ack timeouts ${ack_timeouts:-?}; ${qos1_delay:-no QoS 1 window logged}; ${dups_in:-}"

[ "$acked_k" = "$SOCK_N" ] || fail "socket: only $acked_k of $SOCK_N acknowledged"
[ "$missing_k" = 0 ] ||
    fail "socket: $missing_k acknowledged ids lost: $(comm -23 "$STACK_DIR/acked-k.sorted" "$STACK_DIR/hub-k.sorted" | head -5 | tr '\n' ' ')"
[ "$extra_k" = 0 ] || fail "socket: $extra_k ids at the hub that were never acknowledged"
[ "$acked_m" = "$MQTT_N" ] || fail "MQTT: only $acked_m of $MQTT_N PUBACKed by the broker"
[ "$extra_m" = 0 ] || fail "MQTT: $extra_m ids at the hub that were never published"
[ "$committed_lost" = 0 ] ||
    fail "MQTT: $committed_lost ids the agent had committed never reached the hub: $(comm -23 "$STACK_DIR/committed-m.sorted" "$STACK_DIR/hub-m.sorted" | head -5 | tr '\n' ' ')"
[ "$twice" = 0 ] || fail "$twice ids more than once at the hub"
[ "$lost_m" = 0 ] ||
    fail "MQTT: $lost_m ids PUBACKed to the device never reached the hub: $(tr '\n' ' ' <"$STACK_DIR/lost-m.txt" | head -c 400)"
[ "$at_hub_m" = "$MQTT_N" ] || fail "MQTT: $at_hub_m of $MQTT_N at the hub"
[ "$delivered" = $((at_hub_k + at_hub_m)) ] ||
    fail "$((at_hub_k + at_hub_m)) at the hub but $delivered delivered"
[ "$apns_unique" = $((at_hub_k + at_hub_m)) ] ||
    fail "$((at_hub_k + at_hub_m)) at the hub but $apns_unique ids at APNs"
[ "$apns_dups" -le "$unconfirmed" ] ||
    fail "$apns_dups duplicate requests at APNs, only $unconfirmed unconfirmed attempts"
# One hub ack can cover several batches (the hub acks all it took in one
# loop iteration together): each must be released, not waited out.
[ "${ack_timeouts:-0}" = 0 ] ||
    fail "the last agent run waited out $ack_timeouts ack(s) from a healthy hub"
echo "PASS: agent kill"
