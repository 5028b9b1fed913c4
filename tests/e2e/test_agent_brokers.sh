#!/usr/bin/env bash
# Broker death on both of the agent's connections. The local connection runs
# without MQTT keepalive (local.keepalive = 0: an idle agent is never woken);
# a dead local broker must still be noticed (the socket closes) and the agent
# must reconnect to its restart and take notifications again. The uplink
# asks for no keepalive either (uplink.keepalive = 0, the default) and must
# notice a killed central broker and reconnect; a central broker that hangs
# with its socket open (SIGSTOP) is found while a batch awaits its PUBACK
# (uplink.busy_keepalive: PINGREQ, no PINGRESP, reconnect), and the batch is
# delivered once it runs again. Also: with uplink.host empty the agent runs
# without an uplink (local delivery only) and says so in its status.
#   usage: test_agent_brokers.sh BUILD_DIR SRC_DIR
set -euo pipefail
BUILD=$1
SRC=$2
# shellcheck source=../lib/stack.sh
. "$SRC/tests/lib/stack.sh"
fail() { stack_log "FAIL: $*"; stack_dump_logs; exit 1; }

PY=/usr/bin/python3
AGENT="$BUILD/agent/tidings-agent"
AGENT_EXTRA="uplink.reconnect_max = 500ms
uplink.busy_keepalive = 2s"
stack_init
stack_broker central
UPLINK_PORT=$BROKER_PORT
stack_broker
LOCAL_PORT=$BROKER_PORT
stack_fake_apns
stack_hub
stack_agent
CONF="$STACK_DIR/agent.conf"
count() { grep -c "$1" "$STACK_DIR/agent.log" || true; }

# The keepalives the brokers were asked for: 0 on both (mosquitto logs
# "(p5, cN, kK)" per client).
grep -q "tidings-agent-gw1-local (p5, c0, k0)" "$STACK_DIR/broker.log" ||
    fail "local connection not made with keepalive 0: $(grep gw1-local "$STACK_DIR/broker.log")"
grep -q "tidings-agent-gw1 (p5, c1, k0)" "$STACK_DIR/central.log" ||
    fail "uplink not made with keepalive 0: $(grep tidings-agent-gw1 "$STACK_DIR/central.log")"

# 1. The local broker is killed: noticed at once, reconnected after its restart.
stack_publish '{"id":"kb-1","to":"user:alice","title":"before"}'
wait_until 20 "kb-1 at the fake APNs" apns_has_id kb-1
stack_stop broker KILL
wait_until 10 "agent noticed the local broker's death" grep -q "local: .*lost" "$STACK_DIR/agent.log"
before=$(count "local: connected to")
stack_broker broker "$LOCAL_PORT"
more_local() { [ "$(count "local: connected to")" -gt "$before" ]; }
wait_until 20 "agent reconnected to the local broker" more_local
stack_publish '{"id":"kb-2","to":"user:alice","title":"after the local broker restart"}'
wait_until 20 "kb-2 at the fake APNs" apns_has_id kb-2

# 2. The central broker is killed: the uplink notices, reconnects, delivers.
stack_stop central KILL
wait_until 10 "agent noticed the central broker's death" grep -q "uplink: .*lost" "$STACK_DIR/agent.log"
stack_publish '{"id":"kb-3","to":"user:alice","title":"during the central outage"}'
before=$(count "uplink: connected to")
stack_broker central "$UPLINK_PORT"
BROKER_PORT=$LOCAL_PORT # stack_publish goes to the devices' broker
more_up() { [ "$(count "uplink: connected to")" -gt "$before" ]; }
wait_until 20 "agent reconnected to the central broker" more_up
wait_until 30 "kb-3 at the fake APNs" apns_has_id kb-3

# 3. The central broker hangs (SIGSTOP): its socket stays open and the
# kernel still acknowledges what the agent writes, so only the missing
# PUBACK tells. The agent pings after busy_keepalive (2 s) and reconnects
# when no PINGRESP comes; once the broker runs again, kb-4 is delivered.
hung_before=$(count "no PINGRESP within 2s while")
kill -STOP "$(stack_pid central)"
stack_publish '{"id":"kb-4","to":"user:alice","title":"while the central broker hangs"}'
more_hung() { [ "$(count "no PINGRESP within 2s while")" -gt "$hung_before" ]; }
wait_until 20 "agent gave up on the hung central broker" more_hung
kill -CONT "$(stack_pid central)"
echo "hung central broker: $(grep "no PINGRESP within 2s while" "$STACK_DIR/agent.log" | tail -n 1)"
wait_until 30 "kb-4 at the fake APNs" apns_has_id kb-4

# 4. No uplink configured: local delivery only, nothing sent anywhere.
stack_stop agent
cat >"$STACK_DIR/agent-solo.conf" <<CONF
agent.id = solo1
state_dir = $STACK_DIR/agent-solo
local.port = $LOCAL_PORT
uplink.host =
deliver.backends = log
CONF
stack_start solo "$AGENT" -c "$STACK_DIR/agent-solo.conf"
wait_until 15 "solo agent connected locally" grep -q "local: connected to" "$STACK_DIR/solo.log"
grep -q "no uplink (uplink.host is empty)" "$STACK_DIR/solo.log" || fail "no-uplink start not logged"
"$AGENT" send -c "$STACK_DIR/agent-solo.conf" --to local --title "solo" --id solo-1 >/dev/null ||
    fail "send to the solo agent"
wait_until 10 "solo-1 delivered by the log backend" grep -q "notify: id=solo-1" "$STACK_DIR/solo.log"
up=$("$AGENT" status -c "$STACK_DIR/agent-solo.conf" --json | "$PY" -c '
import json, sys; u = json.load(sys.stdin)["uplink"]; print(u["configured"], u["connected"])')
[ "$up" = "False False" ] || fail "solo status uplink: $up"
echo "PASS: agent brokers"
