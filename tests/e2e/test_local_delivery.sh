#!/usr/bin/env bash
# End to end, local delivery on the box (docs/delivery.md): a "to":"local"
# notification sent with `tidings-agent send --to local` (or published on the
# local broker) is delivered by an exec hook (that appends its stdin to a
# file) and the log backend, and never reaches the hub. The hub's retained preference snapshot on
# tidings/v1/agents/gw1/policy (mosquitto_pub -r) applies: quiet hours in
# Europe/Berlin covering now hold a normal notification (status --id: pending,
# rule quiet_hours) while a critical one is delivered at once
# (critical_bypass); a category opt-out suppresses (category_opt_out:<c>); a
# bad snapshot is refused naming the field and the old one stays; a snapshot
# without quiet hours releases the held one. Notifications the hub sends down
# (.../down, one or a batch) are delivered once per id. With the hub and the
# broker stopped, local delivery keeps working. Killed with -9 while a
# notification is held, the agent restarts with it still held and delivers it
# when the quiet window ends (a real window ending within 30-90 s).
#   usage: test_local_delivery.sh BUILD_DIR SRC_DIR
set -euo pipefail
BUILD=$1
SRC=$2
# shellcheck source=../lib/stack.sh
. "$SRC/tests/lib/stack.sh"

fail() { stack_log "FAIL: $*"; stack_dump_logs; exit 1; }
PY=/usr/bin/python3 # Debian's Python (the pyenv one on PATH may differ)
AGENT="$BUILD/agent/tidings-agent"

stack_init
stack_broker
stack_fake_apns
# This test publishes its own policy snapshots (and expects no_preference
# before the first): the hub's own publishing would race it.
HUB_EXTRA="policy.snapshots = false
" stack_hub

# The agent with an exec hook and the log backend, alice as the box's user.
HOOK="$STACK_DIR/hook.sh"
HOOK_OUT="$STACK_DIR/hook.out"
cat >"$HOOK" <<'SH'
#!/bin/sh
# One line per notification: its JSON as received on stdin.
cat >>"$1"
echo >>"$1"
SH
chmod 755 "$HOOK"
: >"$HOOK_OUT"
mkdir -p "$STACK_DIR/agent"
cat >"$STACK_DIR/agent.conf" <<CONF
agent.id = gw1
state_dir = $STACK_DIR/agent
log_level = info
local.host = 127.0.0.1
local.port = $BROKER_PORT
uplink.host = 127.0.0.1
uplink.port = $BROKER_PORT
uplink.ack_timeout = 5s
uplink.reconnect_min = 100ms
uplink.reconnect_max = 1s
deliver.backends = exec,log
deliver.exec.path = $HOOK
deliver.exec.args = $HOOK_OUT
deliver.exec.timeout = 5s
policy.local_user = alice
CONF
stack_agent
CONF="$STACK_DIR/agent.conf"
SOCK="$STACK_DIR/agent/agent.sock"
wait_until 10 "agent socket" test -S "$SOCK"

status_get() {
    "$AGENT" status -c "$CONF" --json | "$PY" -c "import json,sys; d=json.load(sys.stdin); print($1)"
}
# local_rows ID: "backend:state:rule ..." sorted, from status --id --json.
local_rows() {
    "$AGENT" status -c "$CONF" --id "$1" --json 2>/dev/null | "$PY" -c '
import json, sys
rows = json.load(sys.stdin)["local"]
print(" ".join(sorted("%s:%s:%s" % (r["backend"], r["state"], r["rule"] or "-") for r in rows)))'
}
rows_are() { [ "$(local_rows "$1")" = "$2" ]; }
hook_count() { grep -c "\"id\":\"$1\"" "$HOOK_OUT" || true; }
hook_has() { [ "$(hook_count "$1")" -ge 1 ]; }
send_local() { "$AGENT" send -c "$CONF" --to local --title "$2" --id "$1" "${@:3}" >/dev/null; }
publish_policy() { # JSON [extra mosquitto_pub args]
    mosquitto_pub -V mqttv5 -q 1 -h 127.0.0.1 -p "$BROKER_PORT" \
        -t tidings/v1/agents/gw1/policy -m "$1" "${@:2}"
}
policy_version_is() { [ "$(status_get 'd["policy"]["version"]')" = "$1" ]; }
berlin() { TZ=Europe/Berlin date -d "@$1" +%H:%M; }

# 1. "to":"local" is delivered here by every backend, and never goes to the hub.
send_local loc-1 "Door open" --body "front door" || fail "send loc-1 exited $?"
wait_until 15 "loc-1 delivered by the hook" hook_has loc-1
wait_until 10 "loc-1 delivered on both backends" \
    rows_are loc-1 "exec:delivered:no_preference log:delivered:no_preference"
grep -q 'notify: id=loc-1 to=local' "$STACK_DIR/agent.log" || fail "log backend did not log loc-1"
# The same through the local broker (an IoT device publishing "to":"local").
stack_publish '{"id":"mq-1","to":"local","title":"via MQTT"}'
wait_until 15 "mq-1 delivered by the hook" hook_has mq-1
"$AGENT" send -c "$CONF" --to user:alice --title "for the hub" --id ref-1 >/dev/null ||
    fail "send ref-1"
wait_until 20 "ref-1 at the fake APNs" apns_has_id ref-1
[ "$(hub_sql "SELECT count(*) FROM notifications WHERE id IN ('loc-1', 'mq-1')")" = 0 ] ||
    fail "a to:local notification reached the hub"
! grep -q -E 'loc-1|mq-1' "$STACK_DIR/hub.log" || fail "the hub log mentions loc-1 or mq-1"
# A hub-bound id has no local rows; its outcome is the hub's receipt.
hub_state_of() {
    "$AGENT" status -c "$CONF" --id "$1" --json 2>/dev/null | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
print("%d:%s" % (len(d["local"]), (d["hub"] or {}).get("state")))'
}
hub_outcome_is() { [ "$(hub_state_of "$1")" = "$2" ]; }
wait_until 20 "ref-1's receipt: no local rows, delivered by the hub" \
    hub_outcome_is ref-1 0:delivered || fail "status --id ref-1: $(hub_state_of ref-1)"
rc=0
"$AGENT" status -c "$CONF" --id never-sent-1 >/dev/null 2>&1 || rc=$?
[ "$rc" = 3 ] || fail "status --id of an unknown id: exit $rc, not 3 (not found)"

# 2. Quiet hours covering now (Europe/Berlin, hold) and a marketing opt-out.
now=$(date +%s)
P1='{"v":1,"version":1,"users":{"alice":{"tz":"Europe/Berlin",
 "categories":{"marketing":{"opt_out":true}},
 "quiet_hours":{"start":"'$(berlin $((now - 7200)))'","end":"'$(berlin $((now + 7200)))'","mode":"hold"}}}}'
publish_policy "$P1" -r
wait_until 10 "snapshot version 1 in force" policy_version_is 1

send_local held-1 "Parcel delivered" || fail "send held-1"
wait_until 10 "held-1 held for quiet hours" \
    rows_are held-1 "exec:pending:quiet_hours log:pending:quiet_hours"
send_local crit-1 "Smoke alarm" --priority critical || fail "send crit-1"
wait_until 10 "crit-1 delivered through quiet hours" hook_has crit-1
wait_until 10 "crit-1 marked critical_bypass" \
    rows_are crit-1 "exec:delivered:critical_bypass log:delivered:critical_bypass"
send_local mkt-1 "50% off" --category marketing || fail "send mkt-1"
wait_until 10 "mkt-1 suppressed" \
    rows_are mkt-1 "exec:suppressed:category_opt_out:marketing log:suppressed:category_opt_out:marketing"
"$AGENT" status -c "$CONF" --id held-1 | grep -q "quiet_hours" || fail "status --id table"
[ "$(hook_count held-1)" = 0 ] || fail "held-1 was delivered during quiet hours"
[ "$(hook_count mkt-1)" = 0 ] || fail "mkt-1 was delivered despite the opt-out"
"$AGENT" status -c "$CONF" >"$STACK_DIR/status.txt"
grep -q "held for quiet hours" "$STACK_DIR/status.txt" || fail "status table: $(cat "$STACK_DIR/status.txt")"
grep -q "snapshot version 1" "$STACK_DIR/status.txt" || fail "status lacks the policy version"

# 3. A bad snapshot is refused as a whole, naming the field; version 1 stays.
publish_policy '{"v":1,"version":7,"users":{"alice":{"opt_out":"yes"}}}'
wait_until 10 "bad snapshot refused" grep -q 'snapshot refused.*field=users.alice.opt_out' \
    "$STACK_DIR/agent.log"
policy_version_is 1 || fail "a refused snapshot replaced version 1"
[ "$(hook_count held-1)" = 0 ] || fail "held-1 released by a refused snapshot"

# 4. No quiet hours any more: the held notification goes out.
P2='{"v":1,"version":2,"users":{"alice":{"tz":"Europe/Berlin","categories":{"marketing":{"opt_out":true}}}}}'
publish_policy "$P2" -r
wait_until 10 "held-1 released" hook_has held-1
wait_until 10 "held-1 delivered" rows_are held-1 "exec:delivered:allow log:delivered:allow"
[ "$(hook_count mkt-1)" = 0 ] || fail "a suppressed notification came back"

# 5. Downlink: one notification (twice: delivered once) and a batch.
down() { mosquitto_pub -V mqttv5 -q 1 -h 127.0.0.1 -p "$BROKER_PORT" -t tidings/v1/agents/gw1/down -m "$1"; }
down '{"id":"down-1","to":"user:alice","title":"from the hub"}'
down '{"id":"down-1","to":"user:alice","title":"from the hub"}'
down '{"v":1,"agent":"gw1","items":[{"id":"down-2","to":"local","title":"two"},{"id":"down-3","to":"user:alice","title":"three","category":"marketing"},{"to":"nobody"}]}'
wait_until 10 "down-1 and down-2 delivered" bash -c \
    "grep -q '\"id\":\"down-1\"' '$HOOK_OUT' && grep -q '\"id\":\"down-2\"' '$HOOK_OUT'"
wait_until 10 "down-3 suppressed (alice opted out of marketing)" \
    rows_are down-3 "exec:suppressed:category_opt_out:marketing log:suppressed:category_opt_out:marketing"
[ "$(hook_count down-1)" = 1 ] || fail "down-1 delivered $(hook_count down-1) times"
[ "$("$AGENT" status -c "$CONF" --id down-1 --json | "$PY" -c \
    'import json,sys; print(json.load(sys.stdin)["local"][0]["source"])')" = down ] || fail "down-1 source"
[ "$(status_get 'd["ingest"]["down"]["duplicates"]')" -ge 1 ] || fail "down duplicate not counted"
[ "$(status_get 'd["ingest"]["down"]["invalid"]')" -ge 1 ] || fail "bad down item not counted"

# 6. Hub and broker stopped: local delivery keeps working.
stack_stop hub
stack_stop broker
notconnected() { [ "$(status_get 'd["uplink"]["connected"]')" = False ]; }
wait_until 15 "uplink down" notconnected
send_local off-1 "while offline" || fail "send off-1 while offline exited $?"
wait_until 10 "off-1 delivered offline" hook_has off-1

# 7. Broker back; a quiet window ending at a minute boundary 30-90 s away.
stack_start broker mosquitto -c "$STACK_DIR/mosquitto.conf"
wait_until 10 "mosquitto back on $BROKER_PORT" port_open "$BROKER_PORT"
connected() { [ "$(status_get 'd["uplink"]["connected"]')" = True ]; }
wait_until 20 "uplink reconnected" connected
now=$(date +%s)
end=$(((now / 60 + 1) * 60))
[ $((end - now)) -ge 30 ] || end=$((end + 60))
P3='{"v":1,"version":3,"users":{"alice":{"tz":"Europe/Berlin",
 "quiet_hours":{"start":"'$(berlin $((end - 1800)))'","end":"'$(berlin "$end")'"}}}}'
publish_policy "$P3" -r
wait_until 10 "snapshot version 3 in force" policy_version_is 3
send_local held-2 "Held over a crash" || fail "send held-2"
wait_until 10 "held-2 held" rows_are held-2 "exec:pending:quiet_hours log:pending:quiet_hours"
due=$("$AGENT" status -c "$CONF" --id held-2 --json | "$PY" -c \
    'import json,sys; print(int(json.load(sys.stdin)["local"][0]["due_ms"]) // 1000)')
[ "$due" = "$end" ] || fail "held-2 due at $due, not at the window's end $end"

# 8. kill -9 while held; restarted, it is still held, then delivered at the end.
stack_stop agent KILL
stack_agent agent2
wait_until 10 "agent socket after restart" test -S "$SOCK"
[ "$(date +%s)" -lt "$end" ] || fail "the test was too slow: the window ended before the check"
rows_are held-2 "exec:pending:quiet_hours log:pending:quiet_hours" ||
    fail "held-2 after restart: $(local_rows held-2)"
[ "$(hook_count held-2)" = 0 ] || fail "held-2 delivered before the window ended"
wait_until 120 "held-2 delivered when the window ended" hook_has held-2
[ "$(date +%s)" -ge "$end" ] || fail "held-2 delivered before $end"
wait_until 10 "held-2 delivered" rows_are held-2 "exec:delivered:allow log:delivered:allow"
[ "$(hook_count held-2)" = 1 ] || fail "held-2 delivered $(hook_count held-2) times"
for id in loc-1 mq-1 crit-1 held-1 down-1 down-2 off-1; do
    [ "$(hook_count $id)" = 1 ] || fail "$id delivered $(hook_count $id) times by the hook"
done

echo "PASS: local delivery end to end"
