#!/usr/bin/env bash
# End to end: the hub's directory (docs/directory.md).
#  1. the PII key file is created 0600 on first start; hub.db holds no
#     plaintext token, phone number or address;
#  2. agent bindings at intake: a bound agent's notification is delivered, an
#     unbound agent gets not_allowed (field to) in its ack, a category outside
#     the binding gets not_allowed (field category), an unknown user or group
#     still gets unknown_recipient;
#     bad input and duplicates item by item, with the parse thread and
#     without: every item answered in order, each id stored and sent once;
#  3. key rotation: a key appended to the file, the hub restarted: every value
#     is re-encrypted with it and delivery goes on.
#   usage: test_directory.sh BUILD_DIR SRC_DIR
set -euo pipefail
BUILD=$1
SRC=$2
# shellcheck source=../lib/stack.sh
. "$SRC/tests/lib/stack.sh"

fail() { stack_log "FAIL: $*"; stack_dump_logs; exit 1; }

stack_init
stack_broker
stack_fake_apns
stack_fake_sms
stack_fake_smtp
HUB_BOOTSTRAP_AGENTS=gw1 stack_hub

# --- 1. key file and no plaintext at rest -----------------------------------
KEYS=$STACK_DIR/hub/pii.keys
[ -f "$KEYS" ] || fail "no key file $KEYS"
[ "$(stat -c %a "$KEYS")" = 600 ] || fail "key file mode $(stat -c %a "$KEYS")"
grep -q "created PII key file $KEYS" "$STACK_DIR/hub.log" || fail "key file creation not logged"
no_plaintext() {
    local f v
    for f in "$STACK_DIR"/hub/hub.db*; do
        for v in "$APNS_TOKEN" "$SMS_TO" "$MAIL_TO"; do
            if grep -qaF -- "$v" "$f"; then
                fail "$(basename "$f") holds '$v' in plaintext"
            fi
        done
    done
    # control: what is not PII is there in plaintext
    grep -qaF "Europe/Berlin" "$STACK_DIR/hub/hub.db"* || fail "control: time zone not found"
}
no_plaintext
for v in "$APNS_TOKEN" "$SMS_TO" "$MAIL_TO"; do
    if grep -qF -- "$v" "$STACK_DIR/hub.log"; then fail "hub log holds '$v'"; fi
done

# --- 2. bindings at intake ----------------------------------------------------
# Agents are simulated with mosquitto_pub/sub on their own topics (the
# broker's ACL would bind each to its topic; here it is anonymous).
stack_start acks mosquitto_sub -V mqttv5 -q 1 -h 127.0.0.1 -p "$BROKER_PORT" -v \
    -t 'tidings/v1/agents/+/ack' -t 'tidings/v1/test/ready'
sub_ready() {
    mosquitto_pub -V mqttv5 -q 1 -h 127.0.0.1 -p "$BROKER_PORT" -t tidings/v1/test/ready -m x
    grep -q 'tidings/v1/test/ready' "$STACK_DIR/acks.log"
}
wait_until 10 "ack subscriber ready" sub_ready

# up AGENT ITEM_JSON: one batch of one item as agent AGENT.
up() {
    mosquitto_pub -V mqttv5 -q 1 -h 127.0.0.1 -p "$BROKER_PORT" -t "tidings/v1/agents/$1/up" \
        -m "{\"v\":1,\"agent\":\"$1\",\"items\":[$2]}"
}
# ack_of AGENT ID: "ok reason field" of that id's ack on the agent's topic.
ack_of() {
    grep "^tidings/v1/agents/$1/ack " "$STACK_DIR/acks.log" | sed 's/^[^ ]* //' |
        /usr/bin/python3 -c '
import json, sys
for line in sys.stdin:
    for a in json.loads(line)["acks"]:
        if a["id"] == sys.argv[1]:
            print(str(a["ok"]).lower(), a.get("reason", "-"), a.get("field", "-"))
            sys.exit(0)' "$2"
}
has_ack() { [ -n "$(ack_of "$1" "$2")" ]; }
expect_ack() { # AGENT ID OK [REASON FIELD]
    wait_until 20 "ack of $2 to $1" has_ack "$1" "$2"
    local a want="$3"
    a=$(ack_of "$1" "$2")
    [ "$3" = true ] || want="$3 $4 $5"
    [ "${a%% *}" = true ] && [ "$3" = true ] && return 0
    [ "$a" = "$want" ] || fail "ack of $2 to $1: '$a', want '$want'"
}

up gw1 '{"id":"dir-1","to":"user:alice","category":"security","title":"bound agent"}'
expect_ack gw1 dir-1 true
wait_until 20 "dir-1 at the fake APNs" apns_has_id dir-1

up gw2 '{"id":"dir-2","to":"user:alice","category":"security","title":"unbound agent"}'
expect_ack gw2 dir-2 false not_allowed to
grep -q "agent gw2: rejected id=dir-2: not_allowed" "$STACK_DIR/hub.log" ||
    fail "hub did not log the refusal of dir-2"
[ -z "$(hub_sql "SELECT id FROM notifications WHERE id = 'dir-2'")" ] || fail "dir-2 was stored"

up gw2 '{"id":"dir-3","to":"user:mallory","title":"unknown user"}'
expect_ack gw2 dir-3 false unknown_recipient to
up gw1 '{"id":"dir-4","to":"group:nobody","title":"unknown group"}'
expect_ack gw1 dir-4 false unknown_recipient to

# A binding for one category only (written as the admin API would: the hub
# reads bindings from its store for every item).
sqlite3 "$STACK_DIR/hub/hub.db" \
    "INSERT INTO agent_bindings(agent, subject, category, created_ms) VALUES ('gw3', 'user:alice', 'orders', 0)"
up gw3 '{"id":"dir-5","to":"user:alice","category":"security","title":"other category"}'
expect_ack gw3 dir-5 false not_allowed category
up gw3 '{"id":"dir-6","to":"user:alice","title":"no category"}'
expect_ack gw3 dir-6 false not_allowed category
up gw3 '{"id":"dir-7","to":"user:alice","category":"orders","title":"its category","channels":["push"]}'
expect_ack gw3 dir-7 true
wait_until 20 "dir-7 at the fake APNs" apns_has_id dir-7

# Bad input at intake, item by item: each gets its answer and the good item
# behind it in the same batch still goes through. Run once with batches
# parsed on the parse thread (the default) and once on the loop (after the
# restart below), since the two paths differ. LOG: the hub's log file.
bad_input() { # TAG LOG
    local t=$1 log=$2
    mosquitto_pub -V mqttv5 -q 1 -h 127.0.0.1 -p "$BROKER_PORT" -t "tidings/v1/agents/gw1/up" \
        -m '{"v":1,"agent":"gw1","items":[{"id":'
    wait_until 20 "bad envelope logged ($t)" grep -q "agent gw1: bad batch" "$log"
    mosquitto_pub -V mqttv5 -q 1 -h 127.0.0.1 -p "$BROKER_PORT" -t "tidings/v1/agents/gw1/up" \
        -m '{"v":1,"agent":"gw9","items":[{"id":"'"$t"'-m","to":"user:alice","title":"x"}]}'
    expect_ack gw1 "$t-m" false bad_value agent
    grep -q "batch on agent gw1's topic names agent 'gw9': refused" "$log" ||
        fail "no log of the envelope naming gw9 ($t)"
    up gw1 '{"id":"'"$t"'-a","to":"user:alice"},{"id":"bad id!","to":"user:alice","title":"x"},
        {"id":"'"$t"'-b","to":"user:alice","title":"x","priority":"urgent"},
        {"id":"'"$t"'-c","to":"user:alice","title":"good one behind them"}'
    expect_ack gw1 "$t-a" false no_content -
    expect_ack gw1 "$t-b" false bad_value priority
    expect_ack gw1 "$t-c" true
    grep -q "agent gw1: item without a valid id dropped" "$log" ||
        fail "no log of the item without a valid id ($t)"
    wait_until 20 "$t-c at the fake APNs" apns_has_id "$t-c"
    [ -z "$(hub_sql "SELECT id FROM notifications WHERE id IN ('$t-a', '$t-b', '$t-m')")" ] ||
        fail "a rejected item was stored ($t)"
    dupes "$t"
}

# Intake stores accepted items 16 to a statement (docs/hub.md): duplicates
# inside one batch (in one statement and in the next), in the batch right
# behind it (published together: usually the same iteration), and a bad
# item between good ones. Every item with an id is acked, in the order of
# the items; each id is stored and delivered once.
dupes_delivered() {
    [ "$(hub_sql "SELECT count(*) FROM notifications WHERE id LIKE '$DUPES_TAG-d%'
        AND state = 'delivered'")" = 19 ]
}
dupes() { # TAG
    local t=$1 i d1="" d2="" want=""
    it() { printf '{"id":"%s-d%s","to":"user:alice","title":"dupes %s","channels":["push"]}' "$t" "$1" "$2"; }
    for i in 01 02 03 04 05 03 06 07 08 x 09 10 11 12 13 14 15 16 17 18 02; do
        if [ "$i" = x ]; then
            d1+='{"id":"'"$t"'-dx","to":"user:alice"},'
        else
            d1+="$(it "$i" "$i"),"
        fi
        want+="$t-d$i "
    done
    d2="$(it 18 "18 again"),$(it 19 19),$(it 19 "19 again")"
    want+="$t-d18 $t-d19 $t-d19 "
    printf '%s\n%s\n' "{\"v\":1,\"agent\":\"gw1\",\"items\":[${d1%,}]}" \
        "{\"v\":1,\"agent\":\"gw1\",\"items\":[$d2]}" |
        mosquitto_pub -V mqttv5 -q 1 -h 127.0.0.1 -p "$BROKER_PORT" -t tidings/v1/agents/gw1/up -l
    expect_ack gw1 "$t-d19" true
    expect_ack gw1 "$t-dx" false no_content -
    # the acks of these items, in the order published (ok or the reason)
    local got
    got=$(grep "^tidings/v1/agents/gw1/ack " "$STACK_DIR/acks.log" | sed 's/^[^ ]* //' |
        /usr/bin/python3 -c '
import json, sys
out = []
for line in sys.stdin:
    for a in json.loads(line)["acks"]:
        if a["id"].startswith(sys.argv[1] + "-d"):
            out.append(a["id"] if a["ok"] else a["id"] + ":" + a.get("reason", "?"))
print(" ".join(out))' "$t")
    [ "$got " = "${want/$t-dx /$t-dx:no_content }" ] || fail "acks ($t): '$got', want '$want'"
    [ "$(hub_sql "SELECT count(*) FROM notifications WHERE id LIKE '$t-d%'")" = 19 ] ||
        fail "not 19 stored ($t): $(hub_sql "SELECT id FROM notifications WHERE id LIKE '$t-d%'")"
    [ "$(hub_sql "SELECT count(*) FROM notifications WHERE id LIKE '$t-d%' AND body LIKE '%again%'")" = 0 ] ||
        fail "a duplicate replaced the first ($t)"
    for i in 01 02 03 04 05 06 07 08 09 10 11 12 13 14 15 16 17 18 19; do
        wait_until 20 "$t-d$i at the fake APNs" apns_has_id "$t-d$i"
    done
    DUPES_TAG=$t wait_until 20 "19 delivered ($t)" dupes_delivered
    for i in 01 02 03 04 05 06 07 08 09 10 11 12 13 14 15 16 17 18 19; do
        [ "$(apns_count_id "$t-d$i")" = 1 ] || fail "$t-d$i sent $(apns_count_id "$t-d$i") times"
    done
}
bad_input thr "$STACK_DIR/hub.log"

# --- 3. key rotation ----------------------------------------------------------
stack_stop hub
printf 'intake.parse_thread = false\n' >>"$STACK_DIR/hub.conf" # for bad_input loop below
n_k1=$(hub_sql "SELECT count(*) FROM devices")
[ "$n_k1" -ge 3 ] || fail "expected >= 3 sealed endpoints, got $n_k1"
printf 'key k2 %s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >>"$KEYS"
stack_hub hub2
grep -q "re-encrypted $n_k1 directory value(s) with PII key k2" "$STACK_DIR/hub2.log" ||
    fail "no re-encryption logged after the new key"
old=$(hub_sql "SELECT count(*) FROM devices WHERE substr(token, 3, 2) != CAST('k2' AS BLOB)")
[ "$old" = 0 ] || fail "$old value(s) still under the old key"
no_plaintext
up gw1 '{"id":"dir-8","to":"user:alice","title":"after rotation"}'
expect_ack gw1 dir-8 true
wait_until 20 "dir-8 at the fake APNs" apns_has_id dir-8
wait_until 20 "dir-8 at the fake SMS" grep -q "after rotation" "$STACK_DIR/sms-record.jsonl"
bad_input loop "$STACK_DIR/hub2.log"

# A key file others can read is refused with its name.
stack_stop hub2
chmod 644 "$KEYS"
if out=$("$BUILD/hub/tidings-hub" -c "$STACK_DIR/hub.conf" 2>&1); then
    fail "hub started with a world-readable key file"
fi
grep -qF "$KEYS: PII key file has mode 0644" <<<"$out" || fail "no clear mode error: $out"
echo "directory e2e: bindings, unknown recipients, no plaintext at rest, rotation ok"
