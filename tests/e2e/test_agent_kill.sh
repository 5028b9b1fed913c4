#!/usr/bin/env bash
# kill -9 the agent while local programs send through its unix socket
# (DESIGN "Delivery guarantees" 1 and 2): CLIENTS pipelining clients
# (sock_load) send KILL_N notifications in all; the agent is killed -9 at
# KILLS random moments (a random number of acknowledged ids) and restarted;
# the clients reconnect and send again whatever had no reply. Then: every id
# the socket acknowledged is at the hub exactly once - zero loss.
#   usage: test_agent_kill.sh BUILD_DIR SRC_DIR
set -euo pipefail
BUILD=$1
SRC=$2
# shellcheck source=../lib/stack.sh
. "$SRC/tests/lib/stack.sh"

fail() { stack_log "FAIL: $*"; stack_dump_logs; exit 1; }
N=${KILL_N:-10000}
CLIENTS=${KILL_CLIENTS:-4}
KILLS=${KILL_KILLS:-3}
# Paced (per client, per second) so the kills fall inside the run: about 5 s.
RATE=${KILL_RATE:-500}
LOAD="$BUILD/tests/e2e/sock_load"

stack_init
stack_broker
stack_fake_apns
stack_hub
stack_agent
SOCK="$STACK_DIR/agent/agent.sock"
wait_until 10 "agent socket" test -S "$SOCK"

per=$((N / CLIENTS))
pids=()
for ((c = 0; c < CLIENTS; c++)); do
    "$LOAD" "$SOCK" k "$((c * per + 1))" "$per" "$STACK_DIR/acked-$c.txt" 128 "$RATE" \
        2>"$STACK_DIR/load-$c.log" &
    pids+=($!)
    STACK_PIDS+=($!)
done
acked_count() { cat "$STACK_DIR"/acked-*.txt 2>/dev/null | wc -l; }
reached() { [ "$(acked_count)" -ge "$WANT" ]; }

# Kill points: KILLS random counts of acknowledged ids, spread over the run.
step=$((N / (KILLS + 1)))
kills_at=()
for ((k = 1; k <= KILLS; k++)); do
    WANT=$((k * step - step / 4 + RANDOM % (step / 2)))
    wait_until 120 "$WANT acknowledged before kill $k" reached || fail "clients stalled"
    kill -KILL "$(stack_pid agent)"
    wait "$(stack_pid agent)" 2>/dev/null || true
    kills_at+=("$(acked_count)")
    # The same name again: stack_pid agent is the new process.
    stack_agent agent
    cp "$STACK_DIR/agent.log" "$STACK_DIR/agent-run$k.log"
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
cat "$STACK_DIR"/load-*.log
[ "$rc" = 0 ] || fail "a client did not get every id acknowledged"

sort "$STACK_DIR"/acked-*.txt | uniq >"$STACK_DIR/acked.sorted"
acked=$(wc -l <"$STACK_DIR/acked.sorted")
# Drained: the outbox empty and every acknowledged id at the hub.
settled() {
    [ "$(sqlite3 -readonly "$STACK_DIR/agent/outbox.db" 'SELECT count(*) FROM outbox')" = 0 ] &&
        [ "$(hub_sql "SELECT count(*) FROM notifications WHERE id LIKE 'k-%'")" -ge "$acked" ]
}
wait_until 180 "hub has every acknowledged id" settled || fail "not drained"
hub_sql "SELECT id FROM notifications WHERE id LIKE 'k-%'" | sort >"$STACK_DIR/hub.sorted"
twice=$(hub_sql "SELECT count(*) FROM (SELECT id FROM notifications WHERE id LIKE 'k-%' GROUP BY id HAVING count(*) > 1)")
missing=$(comm -23 "$STACK_DIR/acked.sorted" "$STACK_DIR/hub.sorted" | wc -l)
extra=$(comm -13 "$STACK_DIR/acked.sorted" "$STACK_DIR/hub.sorted" | wc -l)
at_hub=$(wc -l <"$STACK_DIR/hub.sorted")
echo "agent kill -9 (socket): $N sent by $CLIENTS clients, killed at ${kills_at[*]} acknowledged;" \
    "$acked acknowledged, $at_hub at the hub, $missing lost, $twice more than once, $extra unacknowledged at the hub"
[ "$acked" = "$N" ] || fail "only $acked of $N acknowledged"
[ "$missing" = 0 ] || fail "$missing acknowledged ids lost: $(comm -23 "$STACK_DIR/acked.sorted" "$STACK_DIR/hub.sorted" | head -5 | tr '\n' ' ')"
[ "$twice" = 0 ] || fail "$twice ids more than once at the hub"
echo "PASS: agent kill"
