#!/usr/bin/env bash
# Notifications over local MQTT while the agent's disk is full (a file-size
# limit, prlimit --fsize; docs/agent.md "The MQTT QoS 1 window"): a failed
# commit must not PUBACK what it did not store. The agent closes the local
# connection without acknowledging (mqtt_reconnect), the broker keeps those
# notifications in the agent's persistent session and sends them again.
# Once the limit is gone (agent restarted, hub up) every id the broker
# PUBACKed to the device reaches the hub exactly once. (With libmosquitto,
# which PUBACKed before on_message, they were dropped.)
#   usage: test_agent_mqtt_full.sh BUILD_DIR SRC_DIR
set -euo pipefail
BUILD=$1
SRC=$2
# shellcheck source=../lib/stack.sh
. "$SRC/tests/lib/stack.sh"

fail() { stack_log "FAIL: $*"; stack_dump_logs; exit 1; }
AGENT="$BUILD/agent/tidings-agent"
command -v prlimit >/dev/null || { echo "FAIL: prlimit (util-linux, installed by scripts/deps) is missing" >&2; exit 1; }
N=${MQTT_FULL_N:-4000}

stack_init
stack_broker
stack_fake_apns
stack_hub
stack_agent
CONF="$STACK_DIR/agent.conf"
DB="$STACK_DIR/agent/outbox.db"
# The hub stopped: nothing drains, the outbox and its WAL only grow. 1 MiB
# is reached long before SQLite's 1000-page checkpoint would reset the WAL.
stack_stop hub
stack_stop agent
stack_start agentfull prlimit --fsize="${STORAGE_FSIZE:-1048576}" "$AGENT" -c "$CONF"
wait_until 15 "agent under a file-size limit" \
    bash -c "[ \$(grep -c 'connected to' '$STACK_DIR/agentfull.log') -ge 2 ]"

"$BUILD/tests/e2e/mqtt_load" 127.0.0.1 "$BROKER_PORT" tidings/v1/local/notify f 1 "$N" \
    "$STACK_DIR/acked.txt" 100 2000 2>"$STACK_DIR/load.log" || fail "mqtt_load: $(cat "$STACK_DIR/load.log")"
acked=$(wc -l <"$STACK_DIR/acked.txt")
[ "$acked" = "$N" ] || fail "the broker PUBACKed $acked of $N"
wait_until 30 "a failed commit" grep -q "commit of .* failed" "$STACK_DIR/agentfull.log"
wait_until 30 "the local connection closed without PUBACKs" \
    grep -q "local: connection to .* lost: closed by the application" "$STACK_DIR/agentfull.log"
kill -0 "$(stack_pid agentfull)" || fail "the agent died under the file-size limit"
# Logged once per change of state, not per failed commit: a small commit
# may still fit after a failure ("commits work again"), and the next
# failure is a new change, logged again. Never two in a row.
logged=$(grep -c "commit of .* failed" "$STACK_DIR/agentfull.log" || true)
recovered=$(grep -c "commits work again" "$STACK_DIR/agentfull.log" || true)
[ "$logged" -ge 1 ] && { [ "$logged" = "$recovered" ] || [ "$logged" = $((recovered + 1)) ]; } ||
    fail "commit failure logged $logged times with $recovered recoveries: want one per failure episode"
stored=$(sqlite3 -readonly "$DB" "SELECT count(*) FROM outbox WHERE id LIKE 'f-%'")
stack_stop agentfull
reconnects=$(grep -o '[0-9]* reconnects after a failed commit' "$STACK_DIR/agentfull.log" |
    tail -1 | tr -dc 0-9)
echo "disk full: $N published and PUBACKed by the broker; $stored stored before the limit;" \
    "${reconnects:-?} local reconnects after a failed commit"
[ "${reconnects:-0}" -ge 1 ] || fail "no reconnect after a failed commit"
[ "$stored" -lt "$N" ] || fail "all $N stored under the limit: nothing was tested (raise MQTT_FULL_N)"

# The limit gone: the broker sends what the agent never acknowledged.
stack_hub hub2
stack_agent agent2
stack_publish '{"id":"f-end","to":"user:alice","title":"sentinel"}'
settled() {
    [ "$(hub_sql "SELECT count(*) FROM notifications WHERE id = 'f-end'")" = 1 ] &&
        [ "$(sqlite3 -readonly "$DB" 'SELECT count(*) FROM outbox')" = 0 ]
}
wait_until 60 "everything at the hub" settled || fail "not drained"
hub_sql "SELECT id FROM notifications WHERE id LIKE 'f-%' AND id <> 'f-end'" | sort >"$STACK_DIR/hub.txt"
sort -u "$STACK_DIR/acked.txt" >"$STACK_DIR/acked.sorted"
missing=$(comm -23 "$STACK_DIR/acked.sorted" "$STACK_DIR/hub.txt" | wc -l)
extra=$(comm -13 "$STACK_DIR/acked.sorted" "$STACK_DIR/hub.txt" | wc -l)
twice=$(hub_sql "SELECT count(*) FROM (SELECT id FROM notifications WHERE id LIKE 'f-%'
                 GROUP BY id HAVING count(*) > 1)")
echo "after the limit: $N PUBACKed to the device, $(wc -l <"$STACK_DIR/hub.txt") at the hub," \
    "$missing missing, $extra extra, $twice twice"
[ "$missing" = 0 ] ||
    fail "$missing PUBACKed ids never reached the hub: $(comm -23 "$STACK_DIR/acked.sorted" "$STACK_DIR/hub.txt" | head -5 | tr '\n' ' ')"
[ "$extra" = 0 ] || fail "$extra ids at the hub that were never published"
[ "$twice" = 0 ] || fail "$twice ids more than once at the hub"
echo "PASS: agent MQTT ingest under a full disk"
