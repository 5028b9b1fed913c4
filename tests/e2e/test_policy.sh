#!/usr/bin/env bash
# End to end: the hub's policy and scheduler with the real stack.
#   - alice (Europe/Berlin) is in quiet hours now: a normal notification is
#     held (state 'scheduled', a 'hold/quiet_hours' decision and a durable
#     timer), a critical one reaches the fake APNs marked critical_bypass;
#   - a category she opted out of ends 'suppressed' with the rule;
#   - the agent gets her preferences as a retained policy snapshot;
#   - deliver_at in the near future is delivered after it, also when the
#     hub is killed (-9) while the notification waits;
#   - `tidingsctl pref set` removing the quiet hours releases the held
#     notification at once (decision 'replan|pref_change', then 'allow'),
#     a new retained snapshot with a higher version and the new preferences
#     is published (after the commit) and the agent applies it; opting out
#     suppresses a held one at once with the rule.
# Preferences come from the bootstrap.prefs key (validated like the admin
# API's); a bad one stops the hub with the field named.
#   usage: test_policy.sh BUILD_DIR SRC_DIR
set -euo pipefail
BUILD=$1
SRC=$2
# shellcheck source=../lib/stack.sh
. "$SRC/tests/lib/stack.sh"

fail() { stack_log "FAIL: $*"; stack_dump_logs; exit 1; }

stack_init
stack_broker
stack_fake_apns

# A quiet window around now, in alice's zone (an hour ago to two hours on).
qs=$(TZ=Europe/Berlin date -d '-60 min' +%H:%M)
qe=$(TZ=Europe/Berlin date -d '+120 min' +%H:%M)
prefs="{\"categories\":{\"marketing\":{\"opt_out\":true}},\"quiet_hours\":{\"start\":\"$qs\",\"end\":\"$qe\",\"mode\":\"hold\"}}"
HUB_EXTRA="${HUB_EXTRA:-}bootstrap.prefs = $prefs
"
grep -q 'bootstrap.agents' "$SRC/tests/lib/stack.sh" || HUB_EXTRA+="bootstrap.agents = gw1
"
stack_metrics
stack_hub
stack_agent

SCHEDULED='tidings_hub_queue_depth{state="scheduled"}'
scheduled_is() { [ "$(hub_metric "$SCHEDULED" | cut -d. -f1)" = "$1" ]; }

decision() { # ID -> "action|rule" lines
    hub_sql "SELECT action || '|' || rule FROM decisions WHERE notification_id = '$1' ORDER BY id"
}
has_decision() { decision "$1" | grep -qxF "$2"; }

# 1. Quiet hours: held, with the decision and the timer on disk.
stack_publish '{"id":"pol-held","to":"user:alice","category":"security","title":"held"}'
wait_until 20 "pol-held scheduled" hub_state_is pol-held scheduled
has_decision pol-held 'hold|quiet_hours' || fail "pol-held decisions: $(decision pol-held)"
[ "$(hub_sql "SELECT count(*) FROM timers WHERE notification_id='pol-held' AND kind='hold'")" = 1 ] ||
    fail "no hold timer for pol-held"
until_ms=$(hub_sql "SELECT due_ms FROM timers WHERE notification_id='pol-held'")
now_ms=$(($(date +%s) * 1000))
((until_ms > now_ms + 3600 * 1000)) || fail "hold until $until_ms is not the window's end"
# the queue depth metric counts it (state "scheduled")
curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" | grep -qF "$SCHEDULED" ||
    fail "no $SCHEDULED series in /metrics"
wait_until 10 "1 scheduled in /metrics" scheduled_is 1

# 2. Critical passes quiet hours, marked.
stack_publish '{"id":"pol-crit","to":"user:alice","category":"security","priority":"critical","title":"fire"}'
wait_until 20 "pol-crit at the fake APNs" apns_has_id pol-crit
wait_until 10 "pol-crit delivered" hub_state_is pol-crit delivered
has_decision pol-crit 'allow|critical_bypass' || fail "pol-crit decisions: $(decision pol-crit)"

# 3. Category opt-out: suppressed with the rule (critical too).
stack_publish '{"id":"pol-opt","to":"user:alice","category":"marketing","priority":"critical","title":"sale"}'
wait_until 20 "pol-opt suppressed" hub_state_is pol-opt suppressed
[ "$(hub_state pol-opt)" = "suppressed|category_opt_out:marketing" ] ||
    fail "pol-opt: $(hub_state pol-opt)"
[ "$(apns_count_id pol-opt)" = 0 ] || fail "pol-opt reached APNs"

# 4. The agent holds alice's preferences (retained snapshot from the hub).
wait_until 20 "agent applied the policy snapshot" grep -q "policy: snapshot version=.* users=1 applied" \
    "$STACK_DIR/agent.log"

# 5. deliver_at a few seconds ahead (critical: quiet hours do not apply).
at=$(date -u -d '+3 sec' +%Y-%m-%dT%H:%M:%SZ)
stack_publish "{\"id\":\"pol-at\",\"to\":\"user:alice\",\"priority\":\"critical\",\"title\":\"later\",\"deliver_at\":\"$at\"}"
wait_until 20 "pol-at scheduled" hub_state_is pol-at scheduled
has_decision pol-at 'schedule|deliver_at' || fail "pol-at decisions: $(decision pol-at)"
[ "$(apns_count_id pol-at)" = 0 ] || fail "pol-at sent before its deliver_at"
scheduled_is 2 || [ "$(apns_count_id pol-at)" != 0 ] ||
    fail "scheduled in /metrics with pol-held and pol-at waiting: $(hub_metric "$SCHEDULED")"
wait_until 20 "pol-at at the fake APNs" apns_has_id pol-at
wait_until 10 "pol-at delivered" hub_state_is pol-at delivered
wait_until 10 "1 scheduled in /metrics after pol-at" scheduled_is 1

# 6. ... and across a hub killed while it waits.
at=$(date -u -d '+5 sec' +%Y-%m-%dT%H:%M:%SZ)
stack_publish "{\"id\":\"pol-at2\",\"to\":\"user:alice\",\"priority\":\"critical\",\"title\":\"later 2\",\"deliver_at\":\"$at\"}"
wait_until 20 "pol-at2 scheduled" hub_state_is pol-at2 scheduled
stack_stop hub KILL
[ "$(apns_count_id pol-at2)" = 0 ] || fail "pol-at2 sent before its deliver_at"
stack_hub hub2
wait_until 30 "pol-at2 at the fake APNs after the restart" apns_has_id pol-at2
wait_until 10 "pol-at2 delivered" hub_state_is pol-at2 delivered
[ "$(apns_count_id pol-at2)" = 1 ] || fail "pol-at2 reached APNs $(apns_count_id pol-at2) times"
# the held one still waits for the end of the quiet hours, its timer intact
hub_state_is pol-held scheduled || fail "pol-held after restart: $(hub_state pol-held)"
[ "$(apns_count_id pol-held)" = 0 ] || fail "pol-held was sent during quiet hours"

# 7. A preference change reaches the held notification now, not when its
#    timer fires (the hold would last two more hours).
printf 'port = %s\ntimeout = 10s\n' "$BROKER_PORT" >"$STACK_DIR/ctl.conf"
chmod 600 "$STACK_DIR/ctl.conf"
ctl() { timeout 60 "$BUILD/hub/ctl/tidingsctl" -c "$STACK_DIR/ctl.conf" "$@"; }
POLICY_TOPIC=tidings/v1/agents/gw1/policy
snapshot() { # the retained snapshot of gw1 (one message)
    timeout 20 mosquitto_sub -V mqttv5 -h 127.0.0.1 -p "$BROKER_PORT" -t "$POLICY_TOPIC" -C 1 -W 15
}
snap_field() { /usr/bin/python3 -c "import json,sys; j=json.load(sys.stdin); print($1)"; }
v1=$(snapshot | snap_field "j['version']")
[ -n "$v1" ] || fail "no retained snapshot on $POLICY_TOPIC"
hub_state_is pol-held scheduled || fail "pol-held before the change: $(hub_state pol-held)"
ctl pref set alice '{"categories":{"marketing":{"opt_out":true}}}' >"$STACK_DIR/ctl.out" 2>&1 ||
    fail "pref set: $(cat "$STACK_DIR/ctl.out")"
wait_until 15 "pol-held at the fake APNs after the change" apns_has_id pol-held
wait_until 10 "pol-held delivered" hub_state_is pol-held delivered
has_decision pol-held 'replan|pref_change' || fail "pol-held decisions: $(decision pol-held)"
[ "$(decision pol-held | tail -n +2 | grep -cxF 'allow|allow')" -ge 1 ] ||
    fail "pol-held: no allow after the change: $(decision pol-held)"
[ "$(hub_sql "SELECT count(*) FROM timers WHERE notification_id='pol-held'")" = 0 ] ||
    fail "pol-held's hold timer left behind"
[ "$(apns_count_id pol-held)" = 1 ] || fail "pol-held reached APNs $(apns_count_id pol-held) times"

# 8. ... and the agent's retained snapshot follows, with a higher version.
snap_new() {
    local s
    s=$(snapshot) || return 1
    [ "$(snap_field "j['version'] > $v1, 'quiet_hours' in j['users']['alice'], j['users']['alice']['categories']['marketing']['opt_out']" <<<"$s")" = "True False True" ]
}
wait_until 15 "a new retained snapshot (version > $v1) without quiet hours" snap_new
v2=$(snapshot | snap_field "j['version']")
[ "$v2" -le "$(hub_sql "SELECT revision FROM policy_meta")" ] ||
    fail "snapshot version $v2 is ahead of the committed revision"
wait_until 20 "the agent applied snapshot version $v2" \
    grep -q "policy: snapshot version=$v2 users=1 applied" "$STACK_DIR/agent.log"

# 9. Opting out while a notification is held suppresses it at once, with the rule.
qs=$(TZ=Europe/Berlin date -d '-60 min' +%H:%M)
qe=$(TZ=Europe/Berlin date -d '+120 min' +%H:%M)
ctl pref set alice "{\"quiet_hours\":{\"start\":\"$qs\",\"end\":\"$qe\",\"mode\":\"hold\"}}" \
    >"$STACK_DIR/ctl.out" 2>&1 || fail "pref set: $(cat "$STACK_DIR/ctl.out")"
stack_publish '{"id":"pol-held2","to":"user:alice","category":"security","title":"held 2"}'
wait_until 20 "pol-held2 scheduled" hub_state_is pol-held2 scheduled
ctl pref set alice '{"opt_out":true}' >"$STACK_DIR/ctl.out" 2>&1 ||
    fail "pref set: $(cat "$STACK_DIR/ctl.out")"
wait_until 15 "pol-held2 suppressed after the opt-out" hub_state_is pol-held2 suppressed
[ "$(hub_state pol-held2)" = "suppressed|opt_out" ] || fail "pol-held2: $(hub_state pol-held2)"
has_decision pol-held2 'replan|pref_change' || fail "pol-held2 decisions: $(decision pol-held2)"
[ "$(apns_count_id pol-held2)" = 0 ] || fail "pol-held2 reached APNs"

# 10. Bad preferences stop the hub with the field named.
printf 'state_dir = %s/badhub\nbootstrap.user = bob\nbootstrap.prefs = {"quiet_hours":{"start":"25:00","end":"07:00"}}\n' \
    "$STACK_DIR" >"$STACK_DIR/bad-hub.conf"
if out=$("$BUILD/hub/tidings-hub" -c "$STACK_DIR/bad-hub.conf" 2>&1); then
    fail "hub started with bad bootstrap.prefs"
fi
grep -qF "bootstrap.prefs: quiet_hours.start" <<<"$out" || fail "no field named in: $out"

stack_log "PASS"
