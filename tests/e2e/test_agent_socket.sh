#!/usr/bin/env bash
# End to end through the agent's unix socket: `tidings-agent send` reaches the
# fake APNs exactly once; invalid input exits 2 naming the field; the socket
# is 0600; `status --json` parses and its counters move; 1,000 pipelined sends
# on one connection get 1,000 replies in order; an oversized line gets
# too_large and the connection keeps working; a socket left by kill -9 is
# replaced, a live one is refused.
#   usage: test_agent_socket.sh BUILD_DIR SRC_DIR
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
stack_hub
stack_agent
CONF="$STACK_DIR/agent.conf"
SOCK="$STACK_DIR/agent/agent.sock"
wait_until 10 "agent socket" test -S "$SOCK"

# 1. Not world-accessible.
[ "$(stat -c %a "$SOCK")" = 600 ] || fail "socket mode is $(stat -c %a "$SOCK"), not 600"
[ "$(stat -c %a "$SOCK.lock")" = 600 ] || fail "lock file mode is $(stat -c %a "$SOCK.lock")"

# status_get EXPR: one value out of `status --json` (EXPR indexes d).
status_get() {
    "$AGENT" status -c "$CONF" --json | "$PY" -c "import json,sys; d=json.load(sys.stdin); print($1)"
}
acc0=$(status_get 'd["ingest"]["socket"]["accepted"]')

# 2. One notification through the CLI, delivered exactly once.
id=$("$AGENT" send -c "$CONF" --to user:alice --title "Socket hello" --body "via the CLI" \
    --priority high --category security --ttl 1h --id sock-1 --data door=front) ||
    fail "send sock-1 exited $?"
[ "$id" = sock-1 ] || fail "send printed '$id', not sock-1"
wait_until 20 "sock-1 at the fake APNs" apns_has_id sock-1
grep 'sock-1' "$STACK_DIR/apns-record.jsonl" | grep -q 'Socket hello' || fail "APNs record lacks the title"

# The same id again: accepted (exit 0). The agent has already handed sock-1
# to the hub (its row is gone), so the hub's dedupe is what keeps it to one
# delivery: checked in step 6.
id=$("$AGENT" send -c "$CONF" --to user:alice --title "Socket hello" --id sock-1) ||
    fail "second send of sock-1 exited $?"
[ "$id" = sock-1 ] || fail "second send printed '$id'"

# No id: the agent assigns one and the CLI prints it (--socket instead of -c).
gid=$("$AGENT" send --socket "$SOCK" --to user:alice --title "generated id") || fail "send exited $?"
[ ${#gid} = 26 ] || fail "generated id '$gid'"
wait_until 20 "$gid at the fake APNs" apns_has_id "$gid"

# 3. Invalid input: exit 2, the message names the field (or the option).
expect_invalid() { # WHAT PATTERN ARGS...
    local what=$1 pattern=$2 rc=0
    shift 2
    "$AGENT" send -c "$CONF" "$@" >/dev/null 2>"$STACK_DIR/inv.err" || rc=$?
    [ "$rc" = 2 ] || fail "$what: exit $rc, not 2"
    grep -q -- "$pattern" "$STACK_DIR/inv.err" || fail "$what: '$(cat "$STACK_DIR/inv.err")' lacks $pattern"
}
expect_invalid "bad recipient" "field 'to': bad_recipient" --to nobody --title x
expect_invalid "no content" "no_content" --to user:alice
expect_invalid "bad category" "field 'category': bad_value" --to user:alice --title x --category 'A B'
expect_invalid "bad id" "field 'id'" --to user:alice --title x --id 'has space'
expect_invalid "bad priority" "--priority 'urgent'" --to user:alice --title x --priority urgent
expect_invalid "bad ttl" "--ttl" --to user:alice --title x --ttl soon
expect_invalid "bad data" "--data" --to user:alice --title x --data novalue
expect_invalid "bad channel" "--channel" --to user:alice --title x --channel pigeon
expect_invalid "unknown option" "--colour" --to user:alice --title x --colour red
# Not reachable: exit 4, naming the socket path.
rc=0
"$AGENT" send --socket "$STACK_DIR/nowhere.sock" --to user:alice --title x 2>"$STACK_DIR/unr.err" || rc=$?
[ "$rc" = 4 ] || fail "unreachable agent: exit $rc, not 4"
grep -q "$STACK_DIR/nowhere.sock" "$STACK_DIR/unr.err" || fail "unreachable message lacks the path"
# Help for each subcommand.
"$AGENT" send --help | grep -q -- "--collapse-key" || fail "send --help"
"$AGENT" status --help | grep -q -- "--json" || fail "status --help"

# 4. status: JSON for scripts, counters moving, a table for people.
acc1=$(status_get 'd["ingest"]["socket"]["accepted"]')
[ "$acc1" -ge $((acc0 + 2)) ] || fail "socket accepted went $acc0 -> $acc1"
[ "$(status_get 'd["ingest"]["socket"]["invalid"]')" -ge 4 ] || fail "invalid not counted"
[ "$(status_get 'd["uplink"]["connected"]')" = True ] || fail "uplink not connected in status"
synced() { [ "$(status_get 'd["uplink"]["last_sync"] is not None')" = True ]; }
wait_until 10 "a last sync time in status" synced
"$AGENT" status -c "$CONF" >"$STACK_DIR/status.txt" || fail "status exited $?"
grep -q "connected since" "$STACK_DIR/status.txt" || fail "status table: $(cat "$STACK_DIR/status.txt")"

# 5. 1,000 pipelined sends on one connection: 1,000 replies, in order; then an
# oversized line gets too_large and the same connection still works.
"$PY" - "$SOCK" <<'EOF' || fail "pipelining client failed"
import json, socket, sys, threading
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
s.connect(sys.argv[1])
N = 1000
reqs = b"".join(json.dumps({"op": "send", "notification": {
    "id": "pipe-%d" % i, "to": "user:alice", "title": "n%d" % i, "priority": "low"}}).encode() + b"\n"
    for i in range(N))
w = threading.Thread(target=s.sendall, args=(reqs,))
w.start()  # write while reading: neither side waits on a full buffer
buf = b""
def line():
    global buf
    while b"\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("connection closed early")
        buf += chunk
    l, buf = buf.split(b"\n", 1)
    return json.loads(l)
for i in range(N):
    r = line()
    if not r.get("ok") or r.get("id") != "pipe-%d" % i:
        sys.exit("reply %d out of order or failed: %r" % (i, r))
w.join()
s.sendall(b'{"op":"send","notification":{"to":"user:alice","title":"' + b"x" * 10000 + b'"}}\n')
r = line()
if r.get("ok") or r.get("error") != "too_large":
    sys.exit("oversized line: %r" % r)
s.sendall(b'{"op":"send","notification":{"id":"after-big","to":"user:alice","title":"t"}}\n')
r = line()
if not r.get("ok") or r.get("id") != "after-big":
    sys.exit("request after the oversized line: %r" % r)
print("pipelined %d replies in order; too_large then ok" % N)
EOF
outbox_empty() { [ "$(sqlite3 -readonly "$STACK_DIR/agent/outbox.db" 'SELECT count(*) FROM outbox')" = 0 ]; }
wait_until 60 "agent outbox drained to the hub" outbox_empty
n=$(hub_sql "SELECT count(*) FROM notifications WHERE id LIKE 'pipe-%'")
[ "$n" = 1000 ] || fail "hub has $n of the 1000 pipelined notifications"

# 6. Exactly once at the provider for the CLI send, after everything settled.
hub_idle() { [ "$(hub_sql "SELECT count(*) FROM notifications WHERE state IN ('queued','sending')")" = 0 ]; }
wait_until 60 "hub idle" hub_idle
[ "$(apns_count_id sock-1)" = 1 ] || fail "sock-1 reached APNs $(apns_count_id sock-1) times"

# 7. A live agent's socket is refused to a second agent, naming the path.
rc=0
timeout 10 "$AGENT" -c "$CONF" >"$STACK_DIR/second.log" 2>&1 || rc=$?
[ "$rc" = 1 ] || fail "second agent on a live socket: exit $rc, not 1"
grep -q "$SOCK" "$STACK_DIR/second.log" || fail "second agent's error lacks the path: $(cat "$STACK_DIR/second.log")"

# 8. kill -9 leaves the socket file behind; the next agent replaces it.
stack_stop agent KILL
test -S "$SOCK" || fail "expected a stale socket after kill -9"
stack_agent
wait_until 10 "agent socket after restart" test -S "$SOCK"
grep -q "removed stale socket $SOCK" "$STACK_DIR/agent.log" || fail "stale socket not reported"
"$AGENT" send -c "$CONF" --to user:alice --title "after restart" --id sock-2 >/dev/null ||
    fail "send after restart exited $?"
wait_until 20 "sock-2 at the fake APNs" apns_has_id sock-2

echo "PASS: agent socket end to end"
