#!/usr/bin/env bash
# Graceful shutdown (docs/engine.md): SIGTERM under load.
#  1. With shutdown.grace longer than the provider's answers (1.5 s), the
#     hub stops intake and new sends, lets every in-flight request finish,
#     records the outcomes, exits 0 and logs drained=N abandoned=0; after a
#     restart everything is delivered and the fake APNs saw no duplicate.
#  2. With a grace shorter than the answers, the hub exits after the grace
#     with abandoned=N > 0; those attempts are recovered at the restart:
#     nothing lost, duplicates at most the abandoned ones.
#   usage: test_hub_drain.sh BUILD_DIR SRC_DIR
set -euo pipefail
BUILD=$1
SRC=$2
# shellcheck source=../lib/stack.sh
. "$SRC/tests/lib/stack.sh"
fail() { stack_log "FAIL: $*"; stack_dump_logs; exit 1; }

N=${DRAIN_N:-300}
stack_init
stack_broker
APNS_SCRIPT="$STACK_DIR/apns.script"
echo 'token * delay 1500' >"$APNS_SCRIPT"
stack_fake_apns
stack_metrics
stack_hub
stack_agent

load() { # load PREFIX
    local i
    for ((i = 1; i <= N; i++)); do
        printf '{"id":"%s-%d","to":"user:alice","title":"drain %d","body":"t"}\n' "$1" "$i" "$i"
    done >"$STACK_DIR/load-$1.txt"
    mosquitto_pub -V mqttv5 -q 1 -h 127.0.0.1 -p "$BROKER_PORT" -t tidings/v1/local/notify \
        -l <"$STACK_DIR/load-$1.txt"
}
delivered() { hub_sql "SELECT count(*) FROM notifications WHERE id LIKE '$1-%' AND state = 'delivered'"; }
all_delivered() { [ "$(delivered "$1")" -eq "$N" ]; }
lines() { grep -c "tidings_id[^,]*\\\\\"$1-" "$STACK_DIR/apns-record.jsonl" || true; }
unique() { grep -o "tidings_id[^,]*\\\\\"$1-[0-9]*" "$STACK_DIR/apns-record.jsonl" | sort -u | wc -l; }

# --- 1. everything in flight finishes within the grace --------------------
load g
wait_until 30 "requests in flight" metric_ge tidings_hub_requests_inflight 50
inflight=$(hub_metric tidings_hub_requests_inflight)
kill -TERM "$(stack_pid hub)"
rc=0
wait "$(stack_pid hub)" || rc=$?
[ "$rc" = 0 ] || fail "hub exited with $rc after SIGTERM"
line=$(grep 'shutdown: drained=' "$STACK_DIR/hub.log") || fail "no drain summary logged"
echo "SIGTERM with $inflight in flight: $line"
grep -q 'abandoned=0 ' <<<"$line" || fail "requests abandoned within the grace: $line"
left=$(hub_sql "SELECT count(*) FROM attempts WHERE notification_id LIKE 'g-%' AND state = 'sending'")
ok=$(hub_sql "SELECT count(*) FROM attempts WHERE notification_id LIKE 'g-%' AND state = 'ok'")
echo "after the drain: $ok attempt(s) recorded ok, $left still 'sending' (recorded, never sent)"
stack_hub hub2
wait_until 60 "all g delivered after the restart" all_delivered g
[ "$(unique g)" -eq "$N" ] || fail "$(unique g) of $N at APNs"
[ "$(lines g)" -eq "$N" ] || fail "$(($(lines g) - N)) duplicate(s) after a drain that abandoned nothing"
echo "drain: $N delivered, 0 duplicates"

# --- 2. the grace runs out --------------------------------------------------
stack_stop hub2
echo 'shutdown.grace = 300ms' >>"$STACK_DIR/hub.conf"
stack_hub hub3
load s
wait_until 30 "requests in flight" metric_ge tidings_hub_requests_inflight 50
kill -TERM "$(stack_pid hub3)"
rc=0
wait "$(stack_pid hub3)" || rc=$?
[ "$rc" = 0 ] || fail "hub exited with $rc after SIGTERM"
line=$(grep 'shutdown: drained=' "$STACK_DIR/hub3.log") || fail "no drain summary logged"
echo "SIGTERM, grace 300ms: $line"
grep -q 'shutdown.grace reached' <<<"$line" || fail "grace not reported: $line"
abandoned=$(sed -n 's/.*abandoned=\([0-9]*\).*/\1/p' <<<"$line")
[ "$abandoned" -gt 0 ] || fail "nothing abandoned: $line"
stack_hub hub4
wait_until 60 "all s delivered after the restart" all_delivered s
[ "$(unique s)" -eq "$N" ] || fail "$(unique s) of $N at APNs"
dups=$(($(lines s) - N))
echo "grace exceeded: $abandoned abandoned, recovered at the restart: $N delivered, $dups duplicate(s)"
[ "$dups" -le "$abandoned" ] || fail "$dups duplicates > $abandoned abandoned"
echo "PASS: hub_drain"
