#!/usr/bin/env bash
# A full outbox under the drop_oldest_lowest policy, as an operator sees it:
# an agent with no uplink (uplink.host empty) and room for 5 rows takes 8
# notifications through the socket; every one is acknowledged, the 3 oldest
# are dropped to make room, `tidings-agent status` says how many were
# dropped and why, and `status --id` names each dropped one with its reason.
# A critical notification then pushes out the oldest normal one, never the
# reverse.
#   usage: test_agent_full.sh BUILD_DIR SRC_DIR
set -euo pipefail
BUILD=$1
SRC=$2
# shellcheck source=../lib/stack.sh
. "$SRC/tests/lib/stack.sh"
fail() { stack_log "FAIL: $*"; stack_dump_logs; exit 1; }

PY=/usr/bin/python3
AGENT="$BUILD/agent/tidings-agent"
stack_init
stack_broker
mkdir -p "$STACK_DIR/agent"
CONF="$STACK_DIR/agent.conf"
cat >"$CONF" <<CONF
agent.id = gw1
state_dir = $STACK_DIR/agent
local.host = 127.0.0.1
local.port = $BROKER_PORT
uplink.host =
outbox.max_rows = 5
outbox.full_policy = drop_oldest_lowest
CONF
stack_start agent "$AGENT" -c "$CONF"
wait_until 15 "agent socket" test -S "$STACK_DIR/agent/agent.sock"

for i in 1 2 3 4 5 6 7 8; do
    "$AGENT" send -c "$CONF" --to user:alice --title "n$i" --id "full-$i" >/dev/null ||
        fail "send full-$i was not acknowledged"
done

# outbox_state ID: the outbox part of status --id --json ("dropped:<reason>" or the state)
outbox_state() {
    "$AGENT" status -c "$CONF" --id "$1" --json 2>/dev/null | "$PY" -c '
import json, sys
o = json.load(sys.stdin).get("outbox") or {}
print(o.get("state", "none") + (":" + o["reason"] if o.get("reason") else ""))'
}
for i in 1 2 3; do
    s=$(outbox_state "full-$i")
    case "$s" in dropped:*) ;; *) fail "full-$i: outbox state '$s', expected dropped with a reason" ;; esac
done
for i in 4 5 6 7 8; do
    s=$(outbox_state "full-$i")
    [ "$s" = queued ] || fail "full-$i: outbox state '$s', expected queued"
done

text=$("$AGENT" status -c "$CONF")
echo "$text" | grep -q "dropped to make room (full policy drop_oldest_lowest) 3 since start, 3 on record" ||
    fail "status does not report the 3 drops and their reason: $(echo "$text" | grep outbox)"

# critical pushes out the oldest normal one
"$AGENT" send -c "$CONF" --to user:alice --title crit --priority critical --id full-c >/dev/null ||
    fail "critical send refused"
[ "$(outbox_state full-c)" = queued ] || fail "the critical one is not queued"
case "$(outbox_state full-4)" in dropped:*) ;; *) fail "full-4 was not the one dropped for the critical one" ;; esac
echo "PASS: full outbox (drop_oldest_lowest) reported by status"
