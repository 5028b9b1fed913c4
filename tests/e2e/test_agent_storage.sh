#!/usr/bin/env bash
# The agent's storage failing under it (docs/agent.md, "When storage fails"):
#  1. a corrupt outbox.db: the agent refuses to start (exit 1), the message
#     names the file and --reset-corrupt-db, the file is left as it was;
#     with --reset-corrupt-db it (and a corrupt policy.db) is moved to
#     <name>.corrupt-<time> (0600, same bytes), the agent starts fresh and
#     a notification flows.
#  2. disk full (a file-size limit, prlimit --fsize): sends are answered
#     "storage" naming the lack of space, the agent keeps running; restarted
#     without the limit (hub up) every acknowledged id reaches the hub.
#   usage: test_agent_storage.sh BUILD_DIR SRC_DIR
set -euo pipefail
BUILD=$1
SRC=$2
# shellcheck source=../lib/stack.sh
. "$SRC/tests/lib/stack.sh"

fail() { stack_log "FAIL: $*"; stack_dump_logs; exit 1; }
AGENT="$BUILD/agent/tidings-agent"
command -v prlimit >/dev/null || { echo "FAIL: prlimit (util-linux, installed by scripts/deps) is missing" >&2; exit 1; }

stack_init
stack_broker
stack_fake_apns
stack_hub
stack_agent
CONF="$STACK_DIR/agent.conf"
DB="$STACK_DIR/agent/outbox.db"
connected() { [ "$(grep -c 'connected to' "$STACK_DIR/$1.log")" -ge 2 ]; }

# --- 1. corrupt database ---------------------------------------------------
stack_stop agent
for i in $(seq 1 200); do printf 'this is not an SQLite database, block %04d\n' "$i"; done >"$DB"
rm -f "$DB-wal" "$DB-shm"
cp "$DB" "$STACK_DIR/corrupt.copy"
# policy.db too: the same option moves it aside.
PDB="$STACK_DIR/agent/policy.db"
cp "$DB" "$PDB"
rm -f "$PDB-wal" "$PDB-shm"
rc=0
timeout 20 "$AGENT" -c "$CONF" >"$STACK_DIR/refused.log" 2>&1 || rc=$?
[ "$rc" = 1 ] || fail "agent on a corrupt outbox exited $rc, not 1"
grep -qF "$DB" "$STACK_DIR/refused.log" || fail "the error does not name $DB: $(cat "$STACK_DIR/refused.log")"
grep -qF -- "--reset-corrupt-db" "$STACK_DIR/refused.log" || fail "the error does not mention --reset-corrupt-db"
cmp -s "$DB" "$STACK_DIR/corrupt.copy" || fail "the corrupt file was changed without the option"
ls "$DB".corrupt-* >/dev/null 2>&1 && fail "moved aside without the option"
echo "corrupt outbox, no option: exit 1: $(grep -F "$DB" "$STACK_DIR/refused.log" | head -1)"

stack_start agent2 "$AGENT" -c "$CONF" --reset-corrupt-db
wait_until 15 "agent started with --reset-corrupt-db" connected agent2
moved=$(ls "$DB".corrupt-*) || fail "no $DB.corrupt-* after --reset-corrupt-db"
[ "$(echo "$moved" | wc -l)" = 1 ] || fail "more than one moved file: $moved"
[[ "$moved" =~ \.corrupt-[0-9]+$ ]] || fail "moved to '$moved'"
[ "$(stat -c %a "$moved")" = 600 ] || fail "$moved has mode $(stat -c %a "$moved")"
cmp -s "$moved" "$STACK_DIR/corrupt.copy" || fail "$moved is not the old file"
grep -qF "moved $DB (and its -wal/-shm) to $moved" "$STACK_DIR/agent2.log" || fail "the move is not logged"
pmoved=$(ls "$PDB".corrupt-*) || fail "policy.db not moved aside"
cmp -s "$pmoved" "$STACK_DIR/corrupt.copy" || fail "$pmoved is not the old policy.db"
"$AGENT" send -c "$CONF" --to user:alice --title "after reset" --id reset-1 >/dev/null ||
    fail "send after the reset exited $?"
wait_until 20 "reset-1 at the fake APNs" apns_has_id reset-1
echo "corrupt outbox, --reset-corrupt-db: moved to $(basename "$moved"), reset-1 delivered"

# --- 2. disk full ----------------------------------------------------------
# The hub stopped: nothing drains, the outbox and its WAL only grow. 1 MiB
# is reached long before SQLite's 1000-page checkpoint would reset the WAL.
stack_stop hub
stack_stop agent2
LIMIT=${STORAGE_FSIZE:-1048576}
stack_start agent3 prlimit --fsize="$LIMIT" "$AGENT" -c "$CONF"
wait_until 15 "agent under a file-size limit" connected agent3
acked="$STACK_DIR/acked.txt"
: >"$acked"
refusals=0
for i in $(seq 1 3000); do
    out=$("$AGENT" send -c "$CONF" --to user:alice --title "full $i" --body "disk full test" \
        --id "full-$i" 2>&1) && rc=0 || rc=$?
    if [ "$rc" = 0 ]; then
        echo "full-$i" >>"$acked"
        continue
    fi
    [ "$rc" = 3 ] || fail "send full-$i exited $rc: $out"
    echo "$out" | grep -q "storage" || fail "refusal without 'storage': $out"
    echo "$out" | grep -qi "full" || fail "refusal does not say full: $out"
    refusals=$((refusals + 1))
    [ "$refusals" -lt 5 ] || break
done
n=$(wc -l <"$acked")
[ "$refusals" -ge 5 ] || fail "never refused under a $LIMIT-byte file-size limit ($n accepted)"
kill -0 "$(stack_pid agent3)" || fail "the agent died under the file-size limit"
# Still answers (reads work) and has logged the outage once, not per commit.
"$AGENT" status -c "$CONF" >/dev/null || fail "status failed while full"
logged=$(grep -c "commit of .* failed" "$STACK_DIR/agent3.log" || true)
[ "$logged" = 1 ] || fail "commit failure logged $logged times, want once"
dblogged=$(grep -c "ERROR db:.*COMMIT" "$STACK_DIR/agent3.log" || true)
[ "$dblogged" = 0 ] || fail "each failed commit logged by db.c too ($dblogged)"
echo "disk full: $n accepted, then refused: $out"

stack_stop agent3
stack_hub hub2
stack_agent agent4
settled() { [ "$(sqlite3 -readonly "$DB" 'SELECT count(*) FROM outbox')" = 0 ]; }
wait_until 60 "outbox drained after the limit is gone" settled
hub_sql "SELECT id FROM notifications WHERE id LIKE 'full-%'" | sort >"$STACK_DIR/at-hub.txt"
sort "$acked" >"$STACK_DIR/acked.sorted"
missing=$(comm -23 "$STACK_DIR/acked.sorted" "$STACK_DIR/at-hub.txt" | wc -l)
extra=$(comm -13 "$STACK_DIR/acked.sorted" "$STACK_DIR/at-hub.txt" | wc -l)
echo "disk full: $n acknowledged, $missing missing at the hub, $extra unacknowledged at the hub"
[ "$missing" = 0 ] || fail "$missing acknowledged ids never reached the hub"
[ "$extra" = 0 ] || fail "$extra refused ids reached the hub"
echo "PASS: agent storage"
