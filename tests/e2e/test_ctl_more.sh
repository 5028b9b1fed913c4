#!/usr/bin/env bash
# tidingsctl against a real broker (passwords + ACLs, and TLS listeners) and
# a real hub, for what e2e_ctl leaves out, every answer's --json parsed:
#  1. user set of locale, phone and email ("" removes phone/email); phone and
#     email never in plaintext in hub.db nor in the hub's log;
#  2. send with every notification field: --deliver-at (RFC 3339, and a wall
#     time with --tz user), --collapse-key, --ttl, --priority critical in
#     quiet hours, --channels sms, --data, --category, each as the fake
#     provider received it; bad values name the field;
#  3. pref set with caps (the 3rd in the window suppressed, rule cap:<c>)
#     and fallback (printed back by pref show);
#  4. groups: group add/list/member add/remove/remove; an agent bound to the
#     group sends to group:<g> through its broker, every member's device
#     gets it, status shows each member's attempt; an unbound agent gets
#     not_allowed;
#  5. TLS: --cafile (right CA works, a wrong CA fails with exit 3), --cert and
#     --key against a listener that requires a client certificate.
#   usage: test_ctl_more.sh BUILD_DIR SRC_DIR
set -euo pipefail
BUILD=$1
SRC=$2
# shellcheck source=../lib/stack.sh
. "$SRC/tests/lib/stack.sh"
fail() { stack_log "FAIL: $*"; stack_dump_logs; exit 1; }
PY=/usr/bin/python3

stack_init
stack_broker_auth
CENTRAL_PORT=$BROKER_PORT
stack_fake_apns # makes the CA and the server certificate

# --- the broker again, with two TLS listeners beside the plain one: one
# with server authentication only, one that also requires a client
# certificate signed by the CA (passwords and ACLs as on the plain one).
TLS_PORT=$(stack_free_port)
MTLS_PORT=$(stack_free_port)
[ "$TLS_PORT" != "$MTLS_PORT" ] || MTLS_PORT=$(stack_free_port)
C=$STACK_DIR/certs
cat >>"$STACK_DIR/mosquitto.conf" <<CONF
listener $TLS_PORT 127.0.0.1
cafile $C/ca.crt
certfile $C/server.crt
keyfile $C/server.key
listener $MTLS_PORT 127.0.0.1
cafile $C/ca.crt
certfile $C/server.crt
keyfile $C/server.key
require_certificate true
CONF
stack_stop broker
stack_start broker mosquitto -c "$STACK_DIR/mosquitto.conf"
wait_until 10 "broker with TLS listeners" bash -c \
    "(exec 3<>/dev/tcp/127.0.0.1/$CENTRAL_PORT) && (exec 3<>/dev/tcp/127.0.0.1/$TLS_PORT) &&
     (exec 3<>/dev/tcp/127.0.0.1/$MTLS_PORT)" 2>/dev/null
# a client certificate for tidingsctl, and a CA that signed nothing here
(
    umask 077
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$C/ctl.key" 2>/dev/null
    openssl req -new -key "$C/ctl.key" -subj "/CN=tidingsctl admin" -out "$C/ctl.csr" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' \
        >"$C/ctl.ext"
    openssl x509 -req -in "$C/ctl.csr" -CA "$C/ca.crt" -CAkey "$C/ca.key" -set_serial 0x5eed \
        -days 2 -sha256 -extfile "$C/ctl.ext" -out "$C/ctl.crt" 2>/dev/null
) || fail "client certificate"
"$SRC/tests/fakes/gen-certs.sh" "$STACK_DIR/othercerts" >/dev/null 2>&1 || fail "other CA"

stack_fake_sms
stack_hub

printf 'port = %s\nusername = admin\npassword = %s\ntimeout = 10s\n' "$CENTRAL_PORT" \
    "$ADMIN_PASSWORD" >"$STACK_DIR/ctl.conf"
chmod 600 "$STACK_DIR/ctl.conf"
CTLBIN="$BUILD/hub/ctl/tidingsctl"
ctl() { timeout 60 "$CTLBIN" -c "$STACK_DIR/ctl.conf" "$@"; }
# run_rc WANT CMD...: run CMD (stdout in $OUT, stderr in $ERR); fail unless
# it exits WANT.
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
# jget EXPR: a Python expression over the JSON in $OUT (as j).
jget() { printf '%s' "$OUT" | $PY -c "import json,sys; j=json.load(sys.stdin); print($1)"; }
# refused FIELD CMD...: the hub refuses (exit 1) naming FIELD, in the
# message and in --json.
refused() {
    local field=$1
    shift
    run_rc 1 ctl "$@"
    case "$ERR" in *"field $field"*) ;; *) fail "'$*' did not name field $field: $ERR" ;; esac
    run_rc 1 ctl --json "$@"
    [ "$(jget "j['ok'], j['error']['field']")" = "False $field" ] ||
        fail "'$* --json' error field: $OUT"
}
# usage FLAG CMD...: a usage error (exit 2) naming FLAG.
usage() {
    local flag=$1
    shift
    run_rc 2 ctl "$@"
    case "$ERR" in *"$flag"*) ;; *) fail "'$*' did not name $flag: $ERR" ;; esac
}
# apns_rec ID EXPR: EXPR (Python, r = the fake APNs' record line of
# notification ID, b = its body parsed) for every line of ID, one a line.
apns_rec() {
    $PY - "$STACK_DIR/apns-record.jsonl" "$1" "$2" <<'PYEOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    try:
        b = json.loads(r["body"])
    except ValueError:
        continue
    if b.get("tidings_id") == sys.argv[2]:
        print(eval(sys.argv[3]))
PYEOF
}
# sms_rec TEXT EXPR: EXPR (p = the params) for each SMS whose Body holds TEXT.
sms_rec() {
    [ -f "$STACK_DIR/sms-record.jsonl" ] || return 0
    $PY - "$STACK_DIR/sms-record.jsonl" "$1" "$2" <<'PYEOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    p = r.get("params") or {}
    if sys.argv[2] in p.get("Body", ""):
        print(eval(sys.argv[3]))
PYEOF
}
sms_has() { [ -n "$(sms_rec "$1" 'p["To"]')" ]; }
token() { printf "$1%.0s" $(seq 1 32); }
run_rc 0 ctl ping

# --- 1. user set: locale, phone, email; "" removes ---------------------------
PHONE=+4915100000042
EMAIL=carol.secret@example.org
run_rc 0 ctl --json user add carol --tz Asia/Kolkata
[ "$(jget "j['user']['locale'], j['user']['phone'], j['user']['email']")" = "  " ] ||
    fail "new user has contact data: $OUT"
run_rc 0 ctl --json user set carol --locale fr-FR
[ "$(jget "j['user']['locale']")" = fr-FR ] || fail "user set --locale answer: $OUT"
run_rc 0 ctl user set carol --phone "$PHONE" --email "$EMAIL"
run_rc 0 ctl --json user show carol
[ "$(jget "j['user']['tz'], j['user']['locale'], j['user']['phone'], j['user']['email']")" = \
    "Asia/Kolkata fr-FR $PHONE $EMAIL" ] || fail "user show after set: $OUT"
run_rc 0 ctl user show carol
grep -q "$EMAIL" <<<"$OUT" || fail "user show table: $OUT"
run_rc 0 ctl user set carol --phone ""
run_rc 0 ctl --json user show carol
[ "$(jget "j['user']['phone'], j['user']['email'], j['user']['locale']")" = " $EMAIL fr-FR" ] ||
    fail "user set --phone '': $OUT"
run_rc 0 ctl user set carol --email ""
run_rc 0 ctl --json user show carol
[ "$(jget "j['user']['phone'], j['user']['email']")" = " " ] || fail "user set --email '': $OUT"
run_rc 0 ctl --json device list carol
[ "$(jget "[d['platform'] for d in j['items'] if d['state'] == 'active']")" = "[]" ] ||
    fail "contact points left after removal: $OUT"
run_rc 0 ctl user set carol --locale ""
run_rc 0 ctl --json user show carol
[ "$(jget "j['user']['locale']")" = "" ] || fail "user set --locale '': $OUT"
run_rc 0 ctl user set carol --locale pt-BR --phone "$PHONE" --email "$EMAIL"
run_rc 0 ctl --json user show carol
[ "$(jget "j['user']['locale'], j['user']['phone'], j['user']['email']")" = \
    "pt-BR $PHONE $EMAIL" ] || fail "user set all three: $OUT"
refused phone user set carol --phone 0049151
refused email user set carol --email "carol at example"
refused locale user set carol --locale "not a tag!"
refused tz user set carol --tz Mars/Olympus
refused user user set nobody --locale de-DE
refused tz user set carol # nothing to change
# Phone and email sit in hub.db only as ciphertexts (docs/directory.md), and
# the hub never logs them.
sqlite3 -readonly "$STACK_DIR/hub/hub.db" .dump >"$STACK_DIR/dump.sql"
for v in "$PHONE" "$EMAIL" "${PHONE#+}" "carol.secret"; do
    if grep -qF -- "$v" "$STACK_DIR/dump.sql"; then fail "hub.db dump holds '$v'"; fi
    for f in "$STACK_DIR"/hub/hub.db*; do
        if grep -qaF -- "$v" "$f"; then fail "$(basename "$f") holds '$v' in plaintext"; fi
    done
    if grep -qF -- "$v" "$STACK_DIR/hub.log"; then fail "hub log holds '$v'"; fi
done
grep -qF "pt-BR" "$STACK_DIR/dump.sql" || fail "control: the locale is not in the dump"

# --- 2. send with every notification field -----------------------------------
GOOD=$(token c3)
run_rc 0 ctl --json device add carol --platform ios --token "$GOOD" --app "$APNS_TOPIC"
# (carol also has her phone: --channels push keeps these to APNs)

# collapse key, ttl, data, category, priority
before=$(date +%s)
run_rc 0 ctl --json send --to user:carol --id f-all --title "Door" --body "front door" \
    --category orders --priority high --collapse-key door-front --ttl 1h \
    --data door=front --data floor=2 --channels push
after=$(date +%s)
wait_until 20 "f-all at the fake APNs" apns_has_id f-all
wait_until 20 "f-all delivered" hub_state_is f-all delivered
[ "$(apns_rec f-all 'r["headers"].get("apns-collapse-id")')" = door-front ] ||
    fail "apns-collapse-id: $(apns_rec f-all 'r["headers"]')"
exp=$(apns_rec f-all 'r["headers"].get("apns-expiration")')
[[ $exp =~ ^[0-9]+$ ]] && ((exp >= before + 3600 - 1 && exp <= after + 3600 + 1)) ||
    fail "apns-expiration '$exp' is not send time + 3600 (sent $before..$after)"
[ "$(apns_rec f-all '" ".join((b["door"], b["floor"], b["aps"]["thread-id"], r["headers"]["apns-priority"]))')" = \
    "front 2 orders 10" ] || fail "APNs payload of f-all: $(apns_rec f-all 'r')"
[ "$(apns_rec f-all 'b["aps"]["alert"]')" = "{'title': 'Door', 'body': 'front door'}" ] ||
    fail "APNs alert of f-all: $(apns_rec f-all 'b')"
run_rc 0 ctl --json status f-all
[ "$(jget "j['notification']['category'], j['notification']['priority'], j['notification']['notification']['collapse_key'], j['notification']['notification']['ttl']")" = \
    "orders high door-front 3600" ] || fail "status f-all: $OUT"
[ "$(jget "j['notification']['expires'] is not None")" = True ] || fail "status f-all expires: $OUT"

# --channels sms: only the SMS fake gets it
run_rc 0 ctl send --to user:carol --id f-sms --title "Only-by-sms-7731" --channels sms
wait_until 20 "f-sms at the fake SMS" sms_has Only-by-sms-7731
wait_until 20 "f-sms delivered" hub_state_is f-sms delivered
[ "$(sms_rec Only-by-sms-7731 'p["To"]')" = "$PHONE" ] || fail "SMS of f-sms: $(sms_rec Only-by-sms-7731 'p')"
[ "$(apns_count_id f-sms)" = 0 ] || fail "f-sms went to APNs too"
run_rc 0 ctl --json status f-sms
[ "$(jget "[a['channel'] for a in j['attempts']]")" = "['sms']" ] || fail "status f-sms: $OUT"

# --deliver-at: an RFC 3339 instant, and carol's wall time (Asia/Kolkata)
# with --tz user: both scheduled (a deliver_at decision until that
# instant), then delivered, never before it.
times=$($PY -c '
import datetime as d, zoneinfo
now = d.datetime.now(d.timezone.utc).replace(microsecond=0)
at = now + d.timedelta(seconds=8)
loc = at.astimezone(zoneinfo.ZoneInfo("Asia/Kolkata"))
print(at.strftime("%Y-%m-%dT%H:%M:%SZ"), loc.strftime("%Y-%m-%dT%H:%M:%S"), int(at.timestamp()))')
read -r AT_UTC AT_LOCAL AT_S <<<"$times"
run_rc 0 ctl send --to user:carol --id f-at --title "At" --deliver-at "$AT_UTC" --channels push
run_rc 0 ctl send --to user:carol --id f-wall --title "Wall" --deliver-at "$AT_LOCAL" --tz user \
    --channels push
for id in f-at f-wall; do
    wait_until 6 "$id scheduled" hub_state_is "$id" scheduled
    run_rc 0 ctl --json status "$id"
    [ "$(jget "[(d['action'], d['rule']) for d in j['decisions']]")" = "[('schedule', 'deliver_at')]" ] ||
        fail "status $id decisions: $OUT"
    until=$(jget "j['decisions'][0]['until']")
    $PY -c "import datetime as d,sys; t=d.datetime.fromisoformat(sys.argv[1].replace('Z','+00:00'))
sys.exit(0 if t.timestamp() == $AT_S else 1)" "$until" || fail "$id until $until, want $AT_UTC"
    [ "$(jget "j['notification']['state']")" = scheduled ] || fail "status $id state: $OUT"
done
for id in f-at f-wall; do
    wait_until 30 "$id delivered" hub_state_is "$id" delivered
    sent=$(apns_rec "$id" 'r["ts_ms"]')
    ((sent >= AT_S * 1000)) || fail "$id reached APNs at $sent ms, before its time $AT_S s"
done

# --priority critical inside quiet hours: critical_bypass; a normal one waits
DAVE=$(token d4)
run_rc 0 ctl user add dave --tz UTC
run_rc 0 ctl device add dave --platform ios --token "$DAVE" --app "$APNS_TOPIC"
quiet=$($PY -c 'import datetime as d; n = d.datetime.now(d.timezone.utc)
print((n - d.timedelta(hours=1)).strftime("%H:%M"), (n + d.timedelta(hours=2)).strftime("%H:%M"))')
run_rc 0 ctl pref set dave "{\"quiet_hours\":{\"start\":\"${quiet% *}\",\"end\":\"${quiet#* }\",\"mode\":\"hold\"}}"
run_rc 0 ctl send --to user:dave --id f-crit --title "Smoke" --priority critical
run_rc 0 ctl send --to user:dave --id f-night --title "Newsletter" --priority normal
wait_until 20 "f-crit delivered" hub_state_is f-crit delivered
wait_until 20 "f-night held" hub_state_is f-night scheduled
run_rc 0 ctl --json status f-crit
[ "$(jget "[(d['action'], d['rule']) for d in j['decisions']]")" = "[('allow', 'critical_bypass')]" ] ||
    fail "status f-crit decisions: $OUT"
[ "$(apns_rec f-crit 'r["headers"]["apns-priority"]')" = 10 ] || fail "f-crit apns-priority"
run_rc 0 ctl --json status f-night
[ "$(jget "[(d['action'], d['rule']) for d in j['decisions']]")" = "[('hold', 'quiet_hours')]" ] ||
    fail "status f-night decisions: $OUT"
[ "$(apns_count_id f-night)" = 0 ] || fail "f-night was sent inside quiet hours"

# bad values name the field: the hub's (exit 1) and tidingsctl's own (exit 2)
refused notification.deliver_at send --to user:carol --title x --deliver-at tomorrow
refused notification.deliver_at send --to user:carol --title x --deliver-at 2026-13-01T00:00:00Z
refused notification.deliver_at send --to user:carol --title x --deliver-at 2026-11-22T08:00:00Z --tz user
refused notification.tz send --to user:carol --title x --deliver-at 2026-11-22T08:00:00Z --tz mars
refused notification.tz send --to user:carol --title x --tz user
refused notification.collapse_key send --to user:carol --title x --collapse-key "$(printf 'k%.0s' $(seq 1 65))"
refused notification.channels[0] send --to user:carol --title x --channels pigeon
refused notification.priority send --to user:carol --title x --priority urgent
refused notification.category send --to user:carol --title x --category "Bad Category"
printf '{"to":"user:carol","title":"x","ttl":-5}' >"$STACK_DIR/neg-ttl.json"
refused notification.ttl send --file "$STACK_DIR/neg-ttl.json"
usage --ttl send --to user:carol --title x --ttl soon
usage --data send --to user:carol --title x --data novalue
usage --data send --to user:carol --title x --data k=1 --data k=2
usage --vars send --to user:carol --title x --vars '{oops'
# nothing of the refused ones was stored
[ "$(hub_sql "SELECT count(*) FROM notifications WHERE body LIKE '%\"title\":\"x\"%'")" = 0 ] ||
    fail "a refused notification was stored"

# --- 3. pref set: caps and fallback ------------------------------------------
ERIN=$(token e5)
run_rc 0 ctl user add erin --tz UTC --phone +4915100000077
run_rc 0 ctl device add erin --platform ios --token "$ERIN" --app "$APNS_TOPIC"
run_rc 0 ctl pref set erin '{"caps":{"news":{"max":2,"window":"1h"}},"fallback":[{"channel":"push"},{"channel":"sms","after":"10m"}]}'
run_rc 0 ctl --json pref show erin
[ "$(jget "j['preferences']['fallback']")" = "[{'channel': 'push'}, {'channel': 'sms', 'after': '10m'}]" ] ||
    fail "pref show fallback: $OUT"
[ "$(jget "j['preferences']['caps']['news']['max'], j['preferences']['caps']['news']['window']")" = "2 1h" ] ||
    fail "pref show caps: $OUT"
run_rc 0 ctl --json send --to user:erin --title "cap" --category news --dry-run
[ "$(jget "[(r['channel'], r['step'], r['action']) for r in j['plan']]")" = "[('apns', 0, 'allow'), ('sms', 1, 'fallback')]" ] ||
    fail "dry run of the fallback order: $OUT"
for i in 1 2 3; do
    run_rc 0 ctl send --to user:erin --id "f-cap-$i" --title "News $i" --category news
    wait_until 20 "f-cap-$i done" bash -c "s=\$(sqlite3 -readonly '$STACK_DIR/hub/hub.db' \
        \"SELECT state FROM notifications WHERE id = 'f-cap-$i'\"); [ \"\$s\" = delivered ] || [ \"\$s\" = suppressed ]"
done
for i in 1 2; do
    hub_state_is "f-cap-$i" delivered || fail "f-cap-$i: $(hub_state "f-cap-$i")"
done
run_rc 0 ctl --json status f-cap-3
[ "$(jget "j['notification']['state'], j['notification']['reason']")" = "suppressed cap:news" ] ||
    fail "status f-cap-3: $OUT"
jget "[(d['action'], d['rule']) for d in j['decisions']]" | grep -q "('suppress', 'cap:news')" ||
    fail "f-cap-3 decisions: $OUT"
[ "$(apns_count_id f-cap-3)" = 0 ] || fail "f-cap-3 was sent over the cap"
# push succeeded for f-cap-1: its SMS step was cancelled (fallback_done)
run_rc 0 ctl --json status f-cap-1
jget "[d['rule'] for d in j['decisions']]" | grep -q "fallback_done" ||
    fail "f-cap-1: no fallback_done after the push success: $OUT"
run_rc 1 ctl pref set erin '{"fallback":[{"channel":"push"},{"channel":"sms"}]}'
case "$ERR" in *"field prefs.fallback[1].after"*) ;; *) fail "fallback without after: $ERR" ;; esac
run_rc 1 ctl pref set erin '{"caps":{"news":{"max":2,"window":"forever"}}}'
case "$ERR" in *"field prefs.caps.news.window"*) ;; *) fail "cap window: $ERR" ;; esac
run_rc 0 ctl --json pref show erin # unchanged by the refused ones
[ "$(jget "j['preferences']['caps']['news']['max']")" = 2 ] || fail "refused pref set applied: $OUT"

# --- 4. groups -----------------------------------------------------------------
T1=$(token 61)
T2=$(token 62)
run_rc 0 ctl user add gm1 --tz UTC
run_rc 0 ctl --json device add gm1 --platform ios --token "$T1" --app "$APNS_TOPIC"
D1=$(jget "j['device']['id']")
run_rc 0 ctl user add gm2 --tz Europe/Berlin
run_rc 0 ctl --json device add gm2 --platform ios --token "$T2" --app "$APNS_TOPIC"
D2=$(jget "j['device']['id']")
run_rc 0 ctl user add gm3 --tz UTC
run_rc 0 ctl --json group add fam --member gm1 --member gm3
[ "$(jget "j['group'], j['members'], j['total']")" = "fam ['gm1', 'gm3'] 2" ] || fail "group add: $OUT"
run_rc 0 ctl --json group member add fam gm2
[ "$(jget "j['members']")" = "['gm1', 'gm2', 'gm3']" ] || fail "group member add: $OUT"
run_rc 0 ctl --json group member remove fam gm3
[ "$(jget "j['members'], j['total']")" = "['gm1', 'gm2'] 2" ] || fail "group member remove: $OUT"
run_rc 0 ctl group add other
run_rc 0 ctl --json group list
[ "$(jget "[(g['id'], g['members']) for g in j['items']]")" = "[('fam', 2), ('other', 0)]" ] ||
    fail "group list: $OUT"
run_rc 0 ctl group list
grep -qE "^fam +2" <<<"$OUT" || fail "group list table: $OUT"
run_rc 0 ctl --json group list fam
[ "$(jget "j['members']")" = "['gm1', 'gm2']" ] || fail "group list fam: $OUT"
run_rc 0 ctl group list fam
grep -q "^group fam: 2 member(s)" <<<"$OUT" && grep -q "^  gm2$" <<<"$OUT" ||
    fail "group list fam table: $OUT"
run_rc 0 ctl --json user export gm1
[ "$(jget "j['groups']")" = "['fam']" ] || fail "user export groups: $OUT"
refused group group add fam
refused group group add 'bad group'
refused 'members[1]' group add g2 --member gm1 --member nobody
refused group group list nosuch
refused group group member add nosuch gm1
refused user group member add fam nobody
refused user group member remove fam gm3
refused group group remove nosuch
run_rc 2 ctl group member add fam
run_rc 2 ctl group frobnicate
for c in "group add" "group remove" "group list" "group member add" "group member remove"; do
    # shellcheck disable=SC2086
    run_rc 0 ctl $c --help
    case "$OUT" in usage:*) ;; *) fail "$c --help: $OUT" ;; esac
done
comp=$(PATH="$BUILD/hub/ctl:$PATH" bash -c ". '$SRC/hub/ctl/tidingsctl.bash-completion'
    COMP_WORDS=(tidingsctl group member a); COMP_CWORD=3; _tidingsctl; echo \"\${COMPREPLY[*]}\"")
[ "$comp" = add ] || fail "bash completion of 'group member a': '$comp'"
comp=$(PATH="$BUILD/hub/ctl:$PATH" bash -c ". '$SRC/hub/ctl/tidingsctl.bash-completion'
    COMP_WORDS=(tidingsctl group add fam --me); COMP_CWORD=4; _tidingsctl; echo \"\${COMPREPLY[*]}\"")
[ "$comp" = --member ] || fail "bash completion of 'group add fam --me': '$comp'"
grep -q '^\.BI "group add ' "$SRC/hub/ctl/tidingsctl.1" || fail "man page lacks group add"

# An agent bound to the group, with the credentials and ACL lines that
# agent add prints, sends to group:fam through its local broker.
run_rc 0 ctl agent add gwg --group fam
gwg_pw=$(sed -n 's/^  password: //p' <<<"$OUT")
[ -n "$gwg_pw" ] || fail "agent add printed no password: $OUT"
sed -n 's/^  \(user gwg\|topic .*\)$/\1/p' <<<"$OUT" >"$STACK_DIR/gwg.acl"
stack_broker_add_user gwg "$gwg_pw" <"$STACK_DIR/gwg.acl"
# and an agent bound to nobody in this group (its ACL lines as stack.sh's)
GWX_PW=$(stack_secret)
stack_acl_agent gwx | stack_broker_add_user gwx "$GWX_PW"
stack_broker_reload
run_rc 0 ctl --json agent list gwg
[ "$(jget "[(b['subject'], b['category']) for b in j['items']]")" = "[('group:fam', '*')]" ] ||
    fail "agent list gwg: $OUT"
stack_broker local
LOCAL_PORT=$BROKER_PORT
BROKER_PORT=$CENTRAL_PORT
printf '%s\n' "agent.id = gwg" "state_dir = $STACK_DIR/agentg" "local.port = $LOCAL_PORT" \
    "uplink.port = $CENTRAL_PORT" "uplink.username = gwg" "uplink.password = $gwg_pw" \
    >"$STACK_DIR/agentg.conf"
mkdir -p "$STACK_DIR/agentg"
chmod 600 "$STACK_DIR/agentg.conf"
stack_start agentg "$BUILD/agent/tidings-agent" -c "$STACK_DIR/agentg.conf"
wait_until 15 "agent gwg connected twice" \
    bash -c "[ \$(grep -c 'connected to' '$STACK_DIR/agentg.log') -ge 2 ]"
mosquitto_pub -V mqttv5 -q 1 -h 127.0.0.1 -p "$LOCAL_PORT" -t tidings/v1/local/notify \
    -m '{"id":"grp-1","to":"group:fam","category":"household","title":"Dinner"}'
wait_until 30 "grp-1 delivered" hub_state_is grp-1 delivered
wait_until 10 "grp-1 at both devices" apns_has_id grp-1 2
[ "$(apns_rec grp-1 'r["token"]' | sort | tr '\n' ' ')" = "$T1 $T2 " ] ||
    fail "grp-1 reached tokens: $(apns_rec grp-1 'r["token"]')"
run_rc 0 ctl --json status grp-1
[ "$(jget "j['notification']['agent'], j['notification']['to']")" = "gwg group:fam" ] ||
    fail "status grp-1: $OUT"
[ "$(jget "sorted((a['device'], a['channel'], a['state']) for a in j['attempts'])")" = \
    "[($D1, 'apns', 'ok'), ($D2, 'apns', 'ok')]" ] || fail "status grp-1 attempts: $OUT"
[ "$(jget "sorted((d['user'], d['action']) for d in j['decisions'])")" = \
    "[('gm1', 'allow'), ('gm2', 'allow')]" ] || fail "status grp-1 decisions: $OUT"
run_rc 0 ctl status grp-1
grep -q "^delivered" <<<"$OUT" || fail "status grp-1 table: $OUT"
# the group binding also lets gwg notify a member directly
mosquitto_pub -V mqttv5 -q 1 -h 127.0.0.1 -p "$LOCAL_PORT" -t tidings/v1/local/notify \
    -m '{"id":"grp-m","to":"user:gm2","title":"Just you"}'
wait_until 30 "grp-m delivered" hub_state_is grp-m delivered

# The unbound agent: not_allowed (field to) in its ack, nothing stored.
stack_start acks mosquitto_sub -V mqttv5 -q 1 -h 127.0.0.1 -p "$CENTRAL_PORT" -u gwx -P "$GWX_PW" \
    -v -t tidings/v1/agents/gwx/ack -t tidings/v1/agents/gwx/status
sub_ready() {
    mosquitto_pub -V mqttv5 -q 1 -h 127.0.0.1 -p "$CENTRAL_PORT" -u gwx -P "$GWX_PW" \
        -t tidings/v1/agents/gwx/status -m probe &&
        grep -q "tidings/v1/agents/gwx/status probe" "$STACK_DIR/acks.log"
}
wait_until 15 "gwx's ack subscription" sub_ready
mosquitto_pub -V mqttv5 -q 1 -h 127.0.0.1 -p "$CENTRAL_PORT" -u gwx -P "$GWX_PW" \
    -t tidings/v1/agents/gwx/up \
    -m '{"v":1,"agent":"gwx","items":[{"id":"grp-x","to":"group:fam","title":"intruder"},{"id":"grp-y","to":"user:gm1","title":"intruder"}]}'
gwx_acked() { grep -q '"grp-y"' "$STACK_DIR/acks.log"; }
wait_until 20 "gwx's ack" gwx_acked
acks=$(grep "^tidings/v1/agents/gwx/ack " "$STACK_DIR/acks.log" | sed 's/^[^ ]* //' | $PY -c '
import json, sys
for line in sys.stdin:
    for a in json.loads(line)["acks"]:
        print(a["id"], str(a["ok"]).lower(), a.get("reason"), a.get("field"))' | sort | tr '\n' ';')
[ "$acks" = "grp-x false not_allowed to;grp-y false not_allowed to;" ] || fail "gwx's acks: $acks"
[ "$(hub_sql "SELECT count(*) FROM notifications WHERE id IN ('grp-x', 'grp-y')")" = 0 ] ||
    fail "the unbound agent's notifications were stored"

# A member taken out no longer gets the group's notifications.
run_rc 0 ctl group member remove fam gm2
run_rc 0 ctl --json send --to group:fam --id grp-2 --title "Only gm1"
wait_until 30 "grp-2 delivered" hub_state_is grp-2 delivered
[ "$(apns_rec grp-2 'r["token"]')" = "$T1" ] || fail "grp-2 reached: $(apns_rec grp-2 'r["token"]')"
run_rc 0 ctl --json status grp-2
[ "$(jget "[a['device'] for a in j['attempts']]")" = "[$D1]" ] || fail "status grp-2: $OUT"
# Removing the group removes the bindings naming it.
run_rc 0 ctl group remove fam
run_rc 0 ctl --json agent list gwg
[ "$(jget "j['items']")" = "[]" ] || fail "agent list gwg after group remove: $OUT"
refused notification.to send --to group:fam --title "gone"
run_rc 0 ctl --json group list
[ "$(jget "[g['id'] for g in j['items']]")" = "['other']" ] || fail "group list after remove: $OUT"

# --- 5. TLS: --cafile, --cert/--key -----------------------------------------
run_rc 0 ctl -p "$TLS_PORT" --cafile "$C/ca.crt" --json ping
[ "$(jget "j['ok']")" = True ] || fail "ping over TLS: $OUT"
run_rc 0 ctl -p "$TLS_PORT" --cafile "$C/ca.crt" --json user show carol
[ "$(jget "j['user']['phone']")" = "$PHONE" ] || fail "user show over TLS: $OUT"
run_rc 3 ctl -p "$TLS_PORT" --cafile "$STACK_DIR/othercerts/ca.crt" --timeout 5s ping
case "$ERR" in *"cannot connect to broker 127.0.0.1:$TLS_PORT: TLS handshake failed"*"certificate verify failed"*--cafile*) ;;
*) fail "wrong CA: $ERR" ;; esac
run_rc 3 ctl -p "$TLS_PORT" --timeout 3s ping # TLS listener, plain client
run_rc 0 ctl -p "$MTLS_PORT" --cafile "$C/ca.crt" --cert "$C/ctl.crt" --key "$C/ctl.key" ping
grep -q "^a hub answered" <<<"$OUT" || fail "ping with a client certificate: $OUT"
run_rc 3 ctl -p "$MTLS_PORT" --cafile "$C/ca.crt" --timeout 5s ping # no client certificate
# (TLS 1.3: the broker's alert comes in the handshake or just after it)
case "$ERR" in *"cannot connect to broker 127.0.0.1:$MTLS_PORT"*"client certificate"*) ;;
*) fail "no client cert: $ERR" ;; esac
run_rc 2 ctl -p "$MTLS_PORT" --cafile "$C/ca.crt" --cert "$STACK_DIR/nonexistent.crt" \
    --key "$C/ctl.key" ping
case "$ERR" in *"TLS setup"*nonexistent.crt*) ;; *) fail "missing cert file: $ERR" ;; esac
# the same from the config file (cafile/certfile/keyfile keys)
printf 'port = %s\nusername = admin\npassword = %s\ncafile = %s\ncertfile = %s\nkeyfile = %s\n' \
    "$MTLS_PORT" "$ADMIN_PASSWORD" "$C/ca.crt" "$C/ctl.crt" "$C/ctl.key" >"$STACK_DIR/tls.conf"
chmod 600 "$STACK_DIR/tls.conf"
run_rc 0 timeout 60 "$CTLBIN" -c "$STACK_DIR/tls.conf" --json ping
# a wrong password over TLS is still "not authorized"
run_rc 4 timeout 60 "$CTLBIN" -c "$STACK_DIR/tls.conf" -P wrong ping
echo "PASS: tidingsctl user fields, every send field, caps/fallback, groups, TLS"
