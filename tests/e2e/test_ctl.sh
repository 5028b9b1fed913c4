#!/usr/bin/env bash
# tidingsctl against a real broker (passwords + ACLs) and a real hub: the
# whole life of a user, a device and a notification from the CLI, every
# command's --json parsed, bad input naming the field, wrong credentials,
# an ACL that allows only read-only commands, and a hub or broker that is
# not there (a clear error and exit code within the timeout, no hang).
#   usage: test_ctl.sh BUILD_DIR SRC_DIR
set -euo pipefail
BUILD=$1
SRC=$2
# shellcheck source=../lib/stack.sh
. "$SRC/tests/lib/stack.sh"
fail() { stack_log "FAIL: $*"; stack_dump_logs; exit 1; }
PY=/usr/bin/python3

stack_init
stack_broker_auth
# The fake APNs answers BadDeviceToken for one token (a sandbox token
# registered as production): that device ends flagged.
BAD_TOKEN=$(printf 'b2%.0s' $(seq 1 32))
GOOD_TOKEN=$(printf 'c3%.0s' $(seq 1 32))
printf 'token %s status 400 reason BadDeviceToken\n' "$BAD_TOKEN" >"$STACK_DIR/apns.script"
APNS_SCRIPT="$STACK_DIR/apns.script"
stack_fake_apns
stack_hub

printf 'port = %s\nusername = admin\npassword = %s\ntimeout = 10s\n' "$BROKER_PORT" \
    "$ADMIN_PASSWORD" >"$STACK_DIR/ctl.conf"
chmod 600 "$STACK_DIR/ctl.conf"
CTLBIN="$BUILD/hub/ctl/tidingsctl"
# Every run is bounded (timeout 60): a hang fails the test, never stalls it.
ctl() { timeout 60 "$CTLBIN" -c "$STACK_DIR/ctl.conf" "$@"; }

# run_rc WANT CMD...: run CMD, its stdout in $OUT and
# stderr in $ERR; fail unless it exits WANT.
run_rc() {
    local want=$1 rc=0
    shift
    "$@" >"$STACK_DIR/out" 2>"$STACK_DIR/err" || rc=$?
    OUT=$(cat "$STACK_DIR/out")
    ERR=$(cat "$STACK_DIR/err")
    [ "$rc" = "$want" ] || fail "exit $rc, wanted $want: $*
stdout: $OUT
stderr: $ERR"
}
# jget EXPR: evaluate a Python expression over the JSON in $OUT (as j).
jget() { printf '%s' "$OUT" | $PY -c "import json,sys; j=json.load(sys.stdin); print($1)"; }
# receipt_is ID AGENT STATE PENDING: status ID shows exactly one receipt, to
# AGENT for STATE, pending (True) or confirmed by the broker (False).
receipt_is() {
    run_rc 0 ctl --json status "$1"
    [ "$(jget "[(r['agent'], r['state'], r['pending']) for r in j['receipts']]")" = "[('$2', '$3', $4)]" ]
}
# refused FIELD CMD...: the hub refuses (exit 1) naming FIELD, in the text
# and in the --json answer.
refused() {
    local field=$1
    shift
    run_rc 1 ctl "$@"
    case "$ERR" in *"field $field"*) ;; *) fail "'$*' did not name field $field: $ERR" ;; esac
    run_rc 1 ctl --json "$@"
    [ "$(jget "j['ok'], j['error']['field']")" = "False $field" ] ||
        fail "'$* --json' error field: $OUT"
}

# --- shipped files: the man page renders cleanly, the completion completes
if command -v groff >/dev/null; then
    w=$(groff -man -ww -z "$SRC/hub/ctl/tidingsctl.1" 2>&1)
    [ -z "$w" ] || fail "man page warnings: $w"
fi
comp=$(PATH="$BUILD/hub/ctl:$PATH" bash -c ". '$SRC/hub/ctl/tidingsctl.bash-completion'
    COMP_WORDS=(tidingsctl device add bob --pl); COMP_CWORD=4; _tidingsctl; echo \"\${COMPREPLY[*]}\"")
[ "$comp" = --platform ] || fail "bash completion of 'device add bob --pl': '$comp'"

# --- connection ---------------------------------------------------------
run_rc 0 ctl ping
run_rc 0 ctl --json ping
[ "$(jget "j['ok']")" = True ] || fail "ping --json: $OUT"

# --- usage errors: exit 2, naming the argument ------------------------------
run_rc 2 ctl user add
case "$ERR" in *USER*required*) ;; *) fail "user add without USER: $ERR" ;; esac
run_rc 2 ctl send --ttl soon --title x
case "$ERR" in *--ttl*) ;; *) fail "send --ttl soon: $ERR" ;; esac
run_rc 2 ctl user frobnicate
run_rc 2 ctl device add bob --platform ios --bogus 1
for c in "user add" "user set" "user show" "user list" "user remove" "user export" \
    "device add" "device list" "device remove" "device enable" "pref show" "pref set" \
    "agent add" "agent list" "agent allow" "agent revoke" send status log tail stats \
    "dlq list" "dlq retry"; do
    # shellcheck disable=SC2086
    run_rc 0 ctl $c --help
    case "$OUT" in usage:*) ;; *) fail "$c --help: $OUT" ;; esac
done

# --- a user -----------------------------------------------------------------
run_rc 0 ctl --json user add bob --tz Europe/Berlin --locale de-DE --phone +4915100000001 \
    --email bob@example.com
[ "$(jget "j['user']['id'], j['user']['tz'], j['user']['phone']")" = "bob Europe/Berlin +4915100000001" ] ||
    fail "user add --json: $OUT"
refused user user add bob
refused tz user add carol --tz Mars/Olympus
refused phone user add carol --phone 12345
refused email user add carol --email not-an-address
refused user user add 'bad id'
run_rc 0 ctl user set bob --tz America/New_York
run_rc 0 ctl --json user show bob
[ "$(jget "j['user']['tz']")" = America/New_York ] || fail "user set tz: $OUT"
refused user user show nobody
run_rc 0 ctl --json user list
jget "[u['id'] for u in j['items']]" | grep -q "'bob'" || fail "user list: $OUT"
run_rc 0 ctl user list
grep -q "^bob " <<<"$OUT" || fail "user list table: $OUT"

# --- devices ----------------------------------------------------------------
run_rc 0 ctl --json device add bob --platform ios --token "$GOOD_TOKEN" --app "$APNS_TOPIC"
GOOD_DEV=$(jget "j['device']['id']")
run_rc 0 ctl --json device add bob --platform ios --token "$BAD_TOKEN" --app "$APNS_TOPIC"
BAD_DEV=$(jget "j['device']['id']")
refused platform device add bob --platform windows --token abc
refused environment device add bob --platform ios --token abc --env staging
refused user device add nobody --platform ios --token abc
run_rc 2 ctl device remove notanumber
refused device device remove 999999

# --- preferences --------------------------------------------------------------
# (the cap is never reached: it makes the hub record cap events for bob,
# which his removal must erase)
run_rc 0 ctl pref set bob '{"categories":{"marketing":{"opt_out":true}},"caps":{"orders":{"max":100,"window":"1d"}}}'
run_rc 0 ctl --json pref show bob
[ "$(jget "j['preferences']['categories']['marketing']['opt_out']")" = True ] ||
    fail "pref show: $OUT"
run_rc 1 ctl pref set bob '{"quiet_hours":{"start":"25:00","end":"07:00"}}'
case "$ERR" in *"field prefs.quiet_hours"*) ;; *) fail "pref set bad quiet hours: $ERR" ;; esac
run_rc 2 ctl pref set bob '{not json'

# --- send, dry run, status ----------------------------------------------------
run_rc 0 ctl --json send --to user:bob --title Hello --category marketing --dry-run
[ "$(jget "sorted(set((r['action'], r['rule']) for r in j['plan'] if r['action'] != 'skip'))")" = "[('suppress', 'category_opt_out:marketing')]" ] ||
    fail "dry run (marketing opted out): $OUT"
run_rc 0 ctl --json send --to user:bob --title Hello --category orders --channels push --dry-run
[ "$(jget "sorted(set((r['channel'], r['action']) for r in j['plan'] if r['action'] != 'skip'))")" = "[('apns', 'allow')]" ] ||
    fail "dry run (orders): $OUT"
run_rc 0 ctl send --to user:bob --title Hello --category orders --dry-run
grep -q "nothing was sent" <<<"$OUT" || fail "dry run table: $OUT"
refused notification.to send --to user:nobody --title x
refused notification.priority send --to user:bob --title x --priority urgent
refused notification send --to user:bob

run_rc 0 ctl device remove "$BAD_DEV" # first the good device alone
run_rc 0 ctl --json send --to user:bob --id ctl-1 --title "Door" --body "opened" --category orders \
    --priority high --data door=front --ttl 1h
[ "$(jget "j['id'], j['duplicate']")" = "ctl-1 False" ] || fail "send: $OUT"
run_rc 0 ctl --json send --to user:bob --id ctl-1 --title "Door"
[ "$(jget "j['duplicate']")" = True ] || fail "send twice: $OUT"
wait_until 20 "ctl-1 delivered" hub_state_is ctl-1 delivered
run_rc 0 ctl --json status ctl-1
[ "$(jget "j['notification']['state'], j['terminal'], j['attempts'][0]['channel'], j['attempts'][0]['status'], j['attempts'][0]['state']")" = "delivered True apns 200 ok" ] ||
    fail "status ctl-1: $OUT"
apns_id=$(jget "j['attempts'][0]['provider_id']")
[ -n "$apns_id" ] && grep -q "$apns_id" "$STACK_DIR/apns-record.jsonl" ||
    fail "status ctl-1: provider id '$apns_id' is not the fake's apns-id"
[ "$(jget "j['decisions'][0]['action']")" = allow ] || fail "status ctl-1 decisions: $OUT"
[ "$(jget "j['notification']['notification']['data']['door']")" = front ] || fail "status body: $OUT"
run_rc 0 ctl status ctl-1
grep -q "^delivered: apns accepted it" <<<"$OUT" || fail "status table: $OUT"
# Its receipt went to the sending agent ("admin" for tidingsctl) and the
# broker confirmed it: the outbox row is gone, receipt_log keeps the story.
wait_until 20 "ctl-1's receipt confirmed" receipt_is ctl-1 admin delivered False
T='20[0-9-]*T[0-9:.]*Z'
jget "j['receipts'][0]['text']" |
    grep -qE "^receipt to agent admin: delivered \(queued at $T, confirmed by the broker at $T\)$" ||
    fail "status ctl-1 receipt text: $OUT"
[ "$(jget "j['receipts'][0]['queued'] <= j['receipts'][0]['confirmed']")" = True ] ||
    fail "status ctl-1 receipt times: $OUT"
[ "$(hub_sql "SELECT count(*) FROM receipts WHERE notification_id = 'ctl-1'")" = 0 ] ||
    fail "ctl-1's receipt is still in the outbox"
run_rc 0 ctl status ctl-1
grep -qE "^  receipt to agent admin: delivered \(queued at $T, confirmed by the broker at $T\)$" <<<"$OUT" ||
    fail "status table receipts: $OUT"
refused id status no-such-id

# Suppressed: the story names the rule.
run_rc 0 ctl --json send --to user:bob --id ctl-2 --title "Sale" --category marketing
wait_until 20 "ctl-2 suppressed" hub_state_is ctl-2 suppressed
run_rc 0 ctl --json status ctl-2
jget "j['explanation']" | grep -q "category_opt_out:marketing" || fail "status ctl-2: $OUT"

# --- a flagged device and the dead-letter queue --------------------------------
run_rc 0 ctl --json device add bob --platform ios --token "$BAD_TOKEN" --app "$APNS_TOPIC"
BAD_DEV=$(jget "j['device']['id']")
run_rc 0 ctl device remove "$GOOD_DEV"
run_rc 0 ctl --json send --to user:bob --id ctl-3 --title "Alarm" --category orders
wait_until 20 "ctl-3 failed" hub_state_is ctl-3 failed
run_rc 0 ctl --json status ctl-3
[ "$(jget "j['attempts'][-1]['status'], j['attempts'][-1]['reason']")" = "400 BadDeviceToken" ] ||
    fail "status ctl-3 attempt: $OUT"
jget "j['explanation']" | grep -q "BadDeviceToken" || fail "status ctl-3 explanation: $OUT"
run_rc 0 ctl --json device list bob
[ "$(jget "[(d['id'], d['state']) for d in j['items'] if d['platform'] == 'ios'][0]")" = "($BAD_DEV, 'flagged')" ] ||
    fail "device list after BadDeviceToken: $OUT"
jget "[d['reason'] for d in j['items'] if d['platform'] == 'ios'][0]" | grep -q BadDeviceToken ||
    fail "device list reason: $OUT"
run_rc 0 ctl device list bob
grep -q "flagged" <<<"$OUT" || fail "device list table: $OUT"
run_rc 0 ctl --json dlq list
[ "$(jget "[r['id'] for r in j['items']]")" = "['ctl-3']" ] || fail "dlq list: $OUT"
run_rc 0 ctl dlq list
grep -q "ctl-3" <<<"$OUT" || fail "dlq list table: $OUT"
refused id dlq retry ctl-1 # delivered: not a dead letter
refused id dlq retry nope
run_rc 2 ctl dlq retry --all=yes
# The token is fixed (the sandbox/production mix-up resolved): the fake now
# accepts it, the device is enabled again, the dead letter retried.
: >"$STACK_DIR/apns.script"
kill -HUP "$(stack_pid fake-apns)"
wait_until 10 "fake APNs reloaded" grep -q "reloaded 0 rules" "$STACK_DIR/fake-apns.log"
run_rc 0 ctl device enable "$BAD_DEV"
run_rc 0 ctl --json dlq retry ctl-3
[ "$(jget "j['requeued']")" = "['ctl-3']" ] || fail "dlq retry: $OUT"
wait_until 20 "ctl-3 delivered after retry" hub_state_is ctl-3 delivered
run_rc 0 ctl --json status ctl-3
[ "$(jget "j['admin'][0]['command']")" = dlq/retry ] || fail "status ctl-3 after retry: $OUT"
run_rc 0 ctl --json dlq list
[ "$(jget "len(j['items'])")" = 0 ] || fail "dlq not empty: $OUT"

# --- log, tail, stats -----------------------------------------------------------
run_rc 0 ctl --json log --user bob
[ "$(jget "[r['id'] for r in j['items']]")" = "['ctl-3', 'ctl-2', 'ctl-1']" ] || fail "log --user: $OUT"
run_rc 0 ctl --json log --user bob --state suppressed
[ "$(jget "[r['id'] for r in j['items']]")" = "['ctl-2']" ] || fail "log --state: $OUT"
run_rc 0 ctl --json log --channel apns --since 1h --limit 1
[ "$(jget "len(j['items']), j['next'] is not None")" = "1 True" ] || fail "log page: $OUT"
run_rc 0 ctl --json log --channel apns --before "$(jget "j['next']")"
[ "$(jget "len(j['items'])")" -ge 1 ] || fail "log next page: $OUT"
refused state log --state bogus
refused since log --since yesterday
refused channel log --channel pigeon
run_rc 0 ctl log --user bob
grep -q "ctl-2 .*suppressed" <<<"$OUT" || fail "log table: $OUT"
# tail follows what changes (here: what arrived in the last 10 minutes in
# category "tailing", so it does not matter whether tail or send is first).
timeout 60 "$CTLBIN" -c "$STACK_DIR/ctl.conf" --json tail --category tailing --since 10m \
    --count 1 --for 50s >"$STACK_DIR/tail.out" 2>"$STACK_DIR/tail.err" &
tail_pid=$!
run_rc 0 ctl send --to user:bob --id ctl-4 --title "Tail" --category tailing
wait "$tail_pid" || fail "tail: $(cat "$STACK_DIR/tail.err")"
grep -q '"id":"ctl-4"' "$STACK_DIR/tail.out" || fail "tail output: $(cat "$STACK_DIR/tail.out")"
wait_until 20 "ctl-4 delivered" hub_state_is ctl-4 delivered
run_rc 0 ctl --json stats
[ "$(jget "[c['sent'] for c in j['channels'] if c['channel'] == 'apns'][0] >= 3")" = True ] ||
    fail "stats sent: $OUT"
[ "$(jget "[c['failed'] for c in j['channels'] if c['channel'] == 'apns'][0]")" = 1 ] ||
    fail "stats failed: $OUT"
[ "$(jget "j['queues']['failed']")" = 0 ] || fail "stats dlq: $OUT"
# the rates: sent / window, sent / (sent + failed)
[ "$(jget "[abs(c['per_second'] - c['sent'] / j['window_s']) < 1e-9 and abs(c['success_rate'] - c['sent'] / (c['sent'] + c['failed'])) < 1e-9 and 0 < c['success_rate'] < 1 for c in j['channels'] if c['channel'] == 'apns'][0]")" = True ] ||
    fail "stats rates: $OUT"
run_rc 0 ctl --json stats --window 10m
[ "$(jget "j['window_s'], [abs(c['per_second'] * 600 - c['sent']) < 1e-6 and c['sent'] >= 3 for c in j['channels'] if c['channel'] == 'apns'][0]")" = "600 True" ] ||
    fail "stats --window 10m: $OUT"
run_rc 0 ctl stats
grep -q "^apns " <<<"$OUT" || fail "stats table: $OUT"
grep -Eq "^  scheduled: +[0-9]+$" <<<"$OUT" || fail "stats scheduled queue: $OUT"
refused window stats --window forever

# --- agents: bindings, and the printed credentials/ACL lines really work ----
run_rc 0 ctl agent add gw7 --user bob --category orders
grep -q "topic write tidings/v1/agents/gw7/up" <<<"$OUT" || fail "agent add ACL lines: $OUT"
gw7_pw=$(sed -n 's/^  password: //p' <<<"$OUT")
[ -n "$gw7_pw" ] || fail "agent add printed no password: $OUT"
sed -n 's/^  \(user gw7\|topic .*\)$/\1/p' <<<"$OUT" >"$STACK_DIR/gw7.acl"
stack_broker_add_user gw7 "$gw7_pw" <"$STACK_DIR/gw7.acl"
stack_broker_reload
refused users[0] agent add gw8 --user nobody
refused agent agent add 'bad/agent'
refused agent agent add admin
run_rc 0 ctl --json agent list gw7
[ "$(jget "[(b['subject'], b['category']) for b in j['items']]")" = "[('user:bob', 'orders')]" ] ||
    fail "agent list: $OUT"
run_rc 0 ctl agent allow gw7 user:bob --category security
run_rc 0 ctl agent revoke gw7 user:bob --category security
refused subject agent revoke gw7 user:bob --category security
refused subject agent allow gw7 bob
# An agent with exactly the printed credentials and ACL sends through the
# central broker; its own local broker is anonymous (as on a gateway).
stack_broker local
LOCAL_PORT=$BROKER_PORT
BROKER_PORT=$(sed -n 's/^listener \([0-9]*\) .*/\1/p' "$STACK_DIR/mosquitto.conf")
printf '%s\n' "agent.id = gw7" "state_dir = $STACK_DIR/agent7" "local.port = $LOCAL_PORT" \
    "uplink.port = $BROKER_PORT" "uplink.username = gw7" "uplink.password = $gw7_pw" \
    >"$STACK_DIR/agent7.conf"
mkdir -p "$STACK_DIR/agent7"
chmod 600 "$STACK_DIR/agent7.conf"
stack_start agent7 "$BUILD/agent/tidings-agent" -c "$STACK_DIR/agent7.conf"
wait_until 15 "agent gw7 connected twice" \
    bash -c "[ \$(grep -c 'connected to' '$STACK_DIR/agent7.log') -ge 2 ]"
mosquitto_pub -V mqttv5 -q 1 -h 127.0.0.1 -p "$LOCAL_PORT" -t tidings/v1/local/notify \
    -m '{"id":"ctl-gw7","to":"user:bob","category":"orders","title":"from gw7"}'
wait_until 30 "ctl-gw7 delivered" hub_state_is ctl-gw7 delivered
run_rc 0 ctl --json status ctl-gw7
[ "$(jget "j['notification']['agent']")" = gw7 ] || fail "status ctl-gw7: $OUT"
wait_until 20 "ctl-gw7's receipt confirmed" receipt_is ctl-gw7 gw7 delivered False
run_rc 0 ctl status ctl-gw7
grep -qE "^  receipt to agent gw7: delivered \(queued at $T, confirmed by the broker at $T\)$" <<<"$OUT" ||
    fail "status ctl-gw7 receipts: $OUT"

# --- receipts the broker refuses stay pending -------------------------------
# The broker now refuses the hub's receipts to "admin" (PUBACK 0x87): they
# stay in the outbox, and status says so.
sed -i 's|^user hub$|user hub\ntopic deny tidings/v1/agents/admin/receipts|' "$STACK_DIR/acl"
stack_broker_reload
hub_denied() { # (mosquitto_pub reports a refused QoS 1 publish, exit 0)
    mosquitto_pub -V mqttv5 -q 1 -h 127.0.0.1 -p "$BROKER_PORT" -u hub -P "$HUB_PASSWORD" \
        -t tidings/v1/agents/admin/receipts -m probe 2>&1 | grep -q "Not authorized"
}
wait_until 10 "broker reloaded its ACL" hub_denied

# --- expired and dropped, and why ---------------------------------------------
# erin's phone answers 503 after 1.5 s; a notification with a ttl of 1 s
# has expired by the time the retry is due. dana is inside her quiet hours
# (mode drop) right now.
EXP_TOKEN=$(printf 'e5%.0s' $(seq 1 32))
DROP_TOKEN=$(printf 'd4%.0s' $(seq 1 32))
printf 'token %s status 503 reason ServiceUnavailable delay 1500\n' "$EXP_TOKEN" >"$STACK_DIR/apns.script"
kill -HUP "$(stack_pid fake-apns)"
wait_until 10 "fake APNs reloaded" grep -q "reloaded 1 rules" "$STACK_DIR/fake-apns.log"
run_rc 0 ctl user add erin --tz UTC
run_rc 0 ctl device add erin --platform ios --token "$EXP_TOKEN" --app "$APNS_TOPIC"
run_rc 0 ctl user add dana --tz UTC
run_rc 0 ctl device add dana --platform ios --token "$DROP_TOKEN" --app "$APNS_TOPIC"
quiet=$($PY -c 'import datetime as d; n = d.datetime.now(d.timezone.utc)
print((n - d.timedelta(hours=1)).strftime("%H:%M"), (n + d.timedelta(hours=2)).strftime("%H:%M"))')
run_rc 0 ctl pref set dana "{\"quiet_hours\":{\"start\":\"${quiet% *}\",\"end\":\"${quiet#* }\",\"mode\":\"drop\"}}"
# (the hub's clock: everything received before T0 is outside "--since T0")
run_rc 0 ctl --json ping
T0=$(jget "j['time']")
run_rc 0 ctl send --to user:erin --id ctl-exp --title "Soon stale" --category orders --ttl 1s
run_rc 0 ctl send --to user:dana --id ctl-drop --title "At night" --category orders
wait_until 20 "ctl-exp expired" hub_state_is ctl-exp expired
wait_until 20 "ctl-drop dropped" hub_state_is ctl-drop dropped
run_rc 0 ctl --json status ctl-exp
jget "j['explanation']" |
    grep -qE "^expired: ttl passed before delivery \(ttl ended at $T\); 1 attempt\(s\), the last on apns ended retry \(status 503, ServiceUnavailable\)$" ||
    fail "status ctl-exp explanation: $OUT"
[ "$(jget "j['terminal'], j['notification']['state'], j['attempts'][0]['status']")" = "True expired 503" ] ||
    fail "status ctl-exp: $OUT"
run_rc 0 ctl --json status ctl-drop
[ "$(jget "j['explanation']")" = "dropped by the recipient's preferences: rule quiet_hours_drop (inside quiet hours in mode drop: not held, not sent)" ] ||
    fail "status ctl-drop explanation: $OUT"
[ "$(jget "[(d['action'], d['rule']) for d in j['decisions']]")" = "[('drop', 'quiet_hours_drop')]" ] ||
    fail "status ctl-drop decisions: $OUT"
[ "$(jget "len(j['attempts'])")" = 0 ] || fail "ctl-drop was sent: $OUT"
wait_until 20 "the broker refused ctl-drop's receipt" \
    grep -q "broker refused .* receipt(s) for agent admin" "$STACK_DIR/hub.log"
receipt_is ctl-drop admin dropped True || fail "status ctl-drop receipt: $OUT"
jget "j['receipts'][0]['text'], j['receipts'][0]['confirmed']" |
    grep -qE "^receipt to agent admin: dropped pending \(queued at $T, not yet confirmed by the broker\) None$" ||
    fail "status ctl-drop receipt text: $OUT"
run_rc 0 ctl status ctl-drop
grep -q "^  receipt to agent admin: dropped pending" <<<"$OUT" || fail "status ctl-drop table: $OUT"
grep -q "^dropped by the recipient's preferences: rule quiet_hours_drop" <<<"$OUT" ||
    fail "status ctl-drop table: $OUT"

# --- log --since / --until: the window is on arrival time ---------------------
run_rc 0 ctl --json log --since "$T0"
[ "$(jget "sorted(r['id'] for r in j['items'])")" = "['ctl-drop', 'ctl-exp']" ] ||
    fail "log --since $T0: $OUT"
run_rc 0 ctl --json log --until "$T0"
ids=$(jget "' '.join(r['id'] for r in j['items'])")
case " $ids " in *" ctl-drop "* | *" ctl-exp "*) fail "log --until $T0 lists later ones: $ids" ;; esac
case " $ids " in *" ctl-gw7 "*) ;; *) fail "log --until $T0 misses ctl-gw7: $ids" ;; esac
run_rc 0 ctl --json log --since 1h --state expired
[ "$(jget "[r['id'] for r in j['items']]")" = "['ctl-exp']" ] || fail "log --since 1h --state expired: $OUT"
refused until log --since "$T0" --until 2000-01-01T00:00:00Z

# --- ACLs: a viewer may only run status and log -----------------------------
printf 'port = %s\nusername = viewer\npassword = %s\n' "$BROKER_PORT" "$VIEWER_PASSWORD" \
    >"$STACK_DIR/viewer.conf"
chmod 600 "$STACK_DIR/viewer.conf"
run_rc 0 timeout 60 "$CTLBIN" -c "$STACK_DIR/viewer.conf" status ctl-1
run_rc 4 timeout 60 "$CTLBIN" -c "$STACK_DIR/viewer.conf" user remove bob
case "$ERR" in *"not authorized to publish on tidings/v1/admin/request/user/remove"*) ;;
*) fail "viewer user remove: $ERR" ;; esac

# --- GDPR: export everything, then remove and forget ----------------------------
run_rc 0 ctl --json user export bob
[ "$(jget "j['user']['email'], len(j['devices']) >= 2, j['preferences'] is not None, [b['agent'] for b in j['bindings']]")" = "bob@example.com True True ['gw7']" ] ||
    fail "user export: $OUT"
jget "[d['token'] for d in j['devices']]" | grep -q "$BAD_TOKEN" || fail "export lacks the token: $OUT"
[ "$(jget "sorted(n['id'] for n in j['notifications'])")" = "['ctl-1', 'ctl-2', 'ctl-3', 'ctl-4', 'ctl-gw7']" ] ||
    fail "export notifications: $OUT"
# Something still waiting for bob: a timer naming him and a decision.
run_rc 0 ctl --json send --to user:bob --id ctl-5 --title "Later" --body "the safe is open" \
    --category orders --deliver-at 2099-01-01T00:00:00Z
wait_until 20 "ctl-5 scheduled" hub_state_is ctl-5 scheduled
[ "$(hub_sql "SELECT count(*) FROM timers WHERE notification_id = 'ctl-5' AND payload LIKE 'bob%'")" = 1 ] ||
    fail "ctl-5 has no timer for bob"
[ "$(hub_sql "SELECT count(*) FROM cap_events WHERE user_id = 'bob'")" -ge 1 ] ||
    fail "no cap events for bob before his removal"
[ "$(hub_sql "SELECT count(*) FROM decisions WHERE user_id = 'bob'")" -ge 3 ] ||
    fail "no decisions for bob before his removal"
n_decisions=$(hub_sql "SELECT count(*) FROM decisions")
run_rc 0 ctl user remove bob
refused user user export bob
refused user user remove bob
run_rc 0 ctl --json status ctl-1
[ "$(jget "j['notification']['to'], j['notification']['notification']")" = "erased {'redacted': True}" ] ||
    fail "status after remove: $OUT"
# Nothing about bob is left in the hub's database: no row names him, and
# his phone, email and tokens appear nowhere (in plaintext or otherwise).
dump=$(sqlite3 -readonly "$STACK_DIR/hub/hub.db" .dump)
for secret in bob@example.com +4915100000001 "$GOOD_TOKEN" "$BAD_TOKEN" "user:bob" "Door" \
    "the safe is open"; do
    if grep -qF -- "$secret" <<<"$dump"; then
        fail "after user remove the database still holds '$secret'"
    fi
done
[ "$(hub_sql "SELECT count(*) FROM users WHERE id = 'bob'")" = 0 ] || fail "users row left"
# Decisions stay (the delivery log of each notification: rules, times),
# naming no one; cap events and preferences are gone; the timer still
# fires (ctl-5 is dropped already) but names no one; the provider's
# answers about his endpoints are redacted; ids and states are kept.
[ "$(hub_sql "SELECT count(*) FROM decisions")" = "$n_decisions" ] || fail "decisions deleted"
[ "$(hub_sql "SELECT count(*) FROM decisions WHERE user_id = 'bob'")" = 0 ] ||
    fail "decisions still name bob"
[ "$(hub_sql "SELECT count(*) FROM cap_events WHERE user_id = 'bob'")" = 0 ] || fail "cap events left"
[ "$(hub_sql "SELECT count(*) FROM prefs WHERE user_id = 'bob'")" = 0 ] || fail "prefs left"
[ "$(hub_sql "SELECT count(*) FROM timers WHERE payload LIKE 'bob%'")" = 0 ] || fail "timer names bob"
[ "$(hub_sql "SELECT state || ' ' || reason FROM notifications WHERE id = 'ctl-5'")" = "dropped recipient removed" ] ||
    fail "ctl-5 after remove: $(hub_sql "SELECT state, reason FROM notifications WHERE id = 'ctl-5'")"
[ "$(hub_sql "SELECT count(*) FROM attempts WHERE notification_id = 'ctl-3' AND status = 400 AND reason = 'redacted'")" -ge 1 ] ||
    fail "ctl-3's attempts after remove: $(hub_sql "SELECT status, reason FROM attempts WHERE notification_id = 'ctl-3'")"
[ "$(hub_sql "SELECT count(*) FROM attempts WHERE reason LIKE '%BadDeviceToken%'")" = 0 ] ||
    fail "attempts still hold the provider's answers about bob's devices"
# and no row names him at all: his id appears in no value of the dump
# (a word of the user id's characters)
if grep -qE "(^|[^A-Za-z0-9._@+/=-])bob([^A-Za-z0-9._@+/=-]|$)" <<<"$dump"; then
    fail "after user remove the database still names bob: $(grep -E "(^|[^A-Za-z0-9._@+/=-])bob([^A-Za-z0-9._@+/=-]|$)" <<<"$dump" | head -5)"
fi

# --- failures: wrong password, no hub, no broker --------------------------------
run_rc 4 timeout 60 "$CTLBIN" -c "$STACK_DIR/ctl.conf" -P wrong-password ping
case "$ERR" in *"refused the connection"*) ;; *) fail "wrong password: $ERR" ;; esac
stack_stop hub
start=$SECONDS
run_rc 3 ctl --timeout 2s ping
case "$ERR" in *"no answer from a hub within 2"*"is tidings-hub running"*) ;;
*) fail "hub down: $ERR" ;; esac
((SECONDS - start < 30)) || fail "no answer took $((SECONDS - start)) s"
run_rc 3 ctl --timeout 2s --json status ctl-1
stack_stop broker
run_rc 3 ctl --timeout 2s ping
case "$ERR" in *"cannot connect to broker"*|*"cannot reach broker"*) ;; *) fail "broker down: $ERR" ;; esac
echo "PASS: tidingsctl drives users, devices, preferences, agents and notifications"
