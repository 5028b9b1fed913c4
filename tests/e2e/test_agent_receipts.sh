#!/usr/bin/env bash
# Receipts at the edge: notifications sent through the agent reach the hub;
# the hub's receipts come back on tidings/v1/agents/gw1/receipts and the
# agent keeps the last outcome per id, so `tidings-agent status --id` (and
# the socket's lookup) tells a local sender what became of each:
#   delivered (with the apns channel), suppressed (with the preference rule:
#   bootstrap.prefs opts alice out of marketing), unknown ids not found, and
#   bad receipts logged with their field and ignored. The table survives a
#   restart of the agent.
#   usage: test_agent_receipts.sh BUILD_DIR SRC_DIR
set -euo pipefail
BUILD=$1
SRC=$2
# shellcheck source=../lib/stack.sh
. "$SRC/tests/lib/stack.sh"
fail() { stack_log "FAIL: $*"; stack_dump_logs; exit 1; }

PY=/usr/bin/python3
AGENT="$BUILD/agent/tidings-agent"
HUB_EXTRA='bootstrap.prefs = {"categories":{"marketing":{"opt_out":true}}}'
stack_init
stack_broker
stack_fake_apns
stack_hub
stack_agent
CONF="$STACK_DIR/agent.conf"

# outcome ID: "state|reason|channel:result:status:attempts ..." from status --id --json
outcome() {
    "$AGENT" status -c "$CONF" --id "$1" --json 2>/dev/null | "$PY" -c '
import json, sys
h = json.load(sys.stdin)["hub"] or {}
print("|".join([str(h.get("state")), str(h.get("reason")),
    " ".join("%s:%s:%s:%s" % (c["channel"], c["result"], c["status"], c["attempts"])
             for c in h.get("channels", []))]))'
}
outcome_is() { [ "$(outcome "$1")" = "$2" ]; }
state_of() { outcome "$1" | cut -d'|' -f1; }
state_is() { [ "$(state_of "$1")" = "$2" ]; }

# 1. Delivered through APNs: the receipt names the channel and its answer.
"$AGENT" send -c "$CONF" --to user:alice --title "Door open" --category security \
    --id rc-ok >/dev/null || fail "send rc-ok"
wait_until 20 "rc-ok at the fake APNs" apns_has_id rc-ok
wait_until 20 "rc-ok: receipt delivered via apns" outcome_is rc-ok "delivered||apns:ok:200:1" ||
    fail "rc-ok outcome: $(outcome rc-ok)"
"$AGENT" status -c "$CONF" --id rc-ok >"$STACK_DIR/rc-ok.txt" || fail "status --id rc-ok exit $?"
grep -q '^hub *delivered' "$STACK_DIR/rc-ok.txt" || fail "table lacks the hub line: $(cat "$STACK_DIR/rc-ok.txt")"
grep -q '^apns *ok *200' "$STACK_DIR/rc-ok.txt" || fail "table lacks the apns row: $(cat "$STACK_DIR/rc-ok.txt")"

# 2. Suppressed by the user's category opt-out: the receipt carries the rule.
"$AGENT" send -c "$CONF" --to user:alice --title "50% off" --category marketing \
    --id rc-mkt >/dev/null || fail "send rc-mkt"
wait_until 20 "rc-mkt: receipt suppressed" state_is rc-mkt suppressed ||
    fail "rc-mkt outcome: $(outcome rc-mkt)"
reason=$(outcome rc-mkt | cut -d'|' -f2)
case "$reason" in
*category_opt_out*marketing*) ;;
*) fail "rc-mkt suppressed with reason '$reason', not the marketing opt-out rule" ;;
esac
[ "$(outcome rc-mkt | cut -d'|' -f3)" = "" ] || fail "rc-mkt tried a channel: $(outcome rc-mkt)"
[ "$(apns_count_id rc-mkt)" = 0 ] || fail "rc-mkt reached APNs"
"$AGENT" status -c "$CONF" --id rc-mkt | grep -q "suppressed: .*marketing" ||
    fail "table for rc-mkt lacks the rule"

# 3. The socket gives local programs the same answer.
reply=$(printf '{"op":"lookup","id":"rc-ok"}\n' | "$PY" -c '
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.stdin.buffer.read())
print(s.makefile().readline().strip())' "$STACK_DIR/agent/agent.sock")
"$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); assert d["ok"] and d["hub"]["state"]=="delivered" and d["hub"]["channels"][0]["channel"]=="apns", d' "$reply" ||
    fail "socket lookup: $reply"

# 4. Unknown id: not found (exit 3).
rc=0
"$AGENT" status -c "$CONF" --id rc-never >/dev/null 2>&1 || rc=$?
[ "$rc" = 3 ] || fail "status --id of an unknown id: exit $rc, not 3"

# 5. Bad receipts (as a broken hub would send): logged with the field,
#    ignored; the good entry of the same message is kept; a bad envelope is
#    refused whole.
pub_receipts() {
    mosquitto_pub -V mqttv5 -q 1 -h 127.0.0.1 -p "$BROKER_PORT" \
        -t tidings/v1/agents/gw1/receipts -m "$1"
}
pub_receipts '{"v":1,"receipts":[{"id":"rc-bad","state":"lost","at":"2026-11-22T01:00:00Z"},
 {"id":"rc-x","state":"failed","reason":"BadDeviceToken","at":"2026-11-22T01:00:00Z",
  "channels":[{"channel":"apns","result":"drop","status":400,"attempts":1,"reason":"BadDeviceToken"}]}]}'
pub_receipts '{"v":2,"receipts":[]}'
wait_until 10 "rc-x stored" state_is rc-x failed
wait_until 10 "bad entry logged with its field" \
    grep -q "ignored 1 of 2 receipts: first: field=receipts\[0\].state bad_value" "$STACK_DIR/agent.log"
wait_until 10 "bad envelope logged" \
    grep -q "refused a receipts message .*bad_version field=v" "$STACK_DIR/agent.log"
rc=0
"$AGENT" status -c "$CONF" --id rc-bad >/dev/null 2>&1 || rc=$?
[ "$rc" = 3 ] || fail "an invalid receipt was stored (exit $rc)"
# An older outcome (smaller "at") never replaces a newer one; a redelivery is harmless.
pub_receipts '{"v":1,"receipts":[{"id":"rc-x","state":"delivered","at":"2026-11-22T00:00:00Z"}]}'
pub_receipts '{"v":1,"receipts":[{"id":"rc-y","state":"expired","at":"2026-11-22T00:00:00Z"}]}'
wait_until 10 "rc-y stored" state_is rc-y expired
[ "$(state_of rc-x)" = failed ] || fail "an older receipt replaced rc-x's: $(outcome rc-x)"
kill -0 "$(stack_pid agent)" || fail "agent died on bad receipts"
counts=$("$AGENT" status -c "$CONF" --json | "$PY" -c '
import json, sys; r = json.load(sys.stdin)["receipts"]; print(r["invalid"], r["stored"] >= 4)')
[ "$counts" = "2 True" ] || fail "status receipts counters: $counts"

# 6. Kept across a restart of the agent.
stack_stop agent
stack_agent
outcome_is rc-ok "delivered||apns:ok:200:1" || fail "after a restart rc-ok: $(outcome rc-ok)"
echo "PASS: agent receipts"
