#!/usr/bin/env bash
# An idle agent wakes only for its uplink keepalive: with uplink.keepalive
# = 5s, one timer wake-up sends PINGREQ and one socket wake-up reads PINGRESP
# per period, about 10 in 30 s; the local connection (keepalive 0) adds none.
# With the defaults (uplink.keepalive 0, busy_keepalive only while batches
# are in flight) an agent connected on both sides wakes never, and neither
# does one with no uplink.
# Regression: the housekeeping timer once re-armed every second forever after
# the first PINGREQ (libmosquitto writes it from inside loop_misc, past our
# write path), about 30 wake-ups in 30 s.
#   usage: test_agent_idle.sh BUILD_DIR SRC_DIR
set -euo pipefail
BUILD=$1
SRC=$2
# shellcheck source=../lib/stack.sh
. "$SRC/tests/lib/stack.sh"
fail() { stack_log "FAIL: $*"; stack_dump_logs; exit 1; }

stack_init
stack_broker
AGENT_EXTRA="uplink.keepalive = 5s
" stack_agent
# A second agent with no uplink, started at the same time: it must not wake
# at all, not even once at the MQTT client's 30 s connect deadline (it once
# did: the deadline's timer stayed armed after CONNACK and fired to re-arm).
mkdir -p "$STACK_DIR/solo"
cat >"$STACK_DIR/solo.conf" <<CONF
agent.id = solo1
state_dir = $STACK_DIR/solo
socket.path = $STACK_DIR/solo/agent.sock
local.host = 127.0.0.1
local.port = $BROKER_PORT
uplink.host =
CONF
stack_start solo "$BUILD/agent/tidings-agent" -c "$STACK_DIR/solo.conf"
# A third with the uplink at the product defaults (no keepalive asked for).
mkdir -p "$STACK_DIR/dflt"
cat >"$STACK_DIR/dflt.conf" <<CONF
agent.id = dflt1
state_dir = $STACK_DIR/dflt
socket.path = $STACK_DIR/dflt/agent.sock
local.host = 127.0.0.1
local.port = $BROKER_PORT
uplink.host = 127.0.0.1
uplink.port = $BROKER_PORT
CONF
stack_start dflt "$BUILD/agent/tidings-agent" -c "$STACK_DIR/dflt.conf"
wait_until 15 "solo agent connected" grep -q 'local: connected to' "$STACK_DIR/solo.log"
wait_until 15 "default agent's uplink connected" grep -q 'uplink: connected to' "$STACK_DIR/dflt.log"
pid=$(stack_pid agent)
spid=$(stack_pid solo)
dpid=$(stack_pid dflt)
switches() { awk '/^voluntary_ctxt_switches/ {print $2}' "/proc/$1/task/$1/status"; }
# wait for the first PINGREQ period to pass (the bug showed after it), and
# for the solo agent's start-up work (its heap trim runs 2 s after it)
sleep 7
c0=$(switches "$pid")
s0=$(switches "$spid")
d0=$(switches "$dpid")
sleep 30
c1=$(switches "$pid")
s1=$(switches "$spid")
d1=$(switches "$dpid")
n=$((c1 - c0))
sn=$((s1 - s0))
dn=$((d1 - d0))
echo "idle agent, uplink.keepalive 5s: $n wake-ups in 30 s (expected about 10)"
echo "idle agent, no uplink: $sn wake-ups in the 30 s around its connect deadline (expected 0)"
echo "idle agent, uplink at the defaults (keepalive 0): $dn wake-ups in 30 s (expected 0)"
[ "$n" -le 16 ] || fail "$n wake-ups in 30 s: the keepalive timer is re-arming too often"
[ "$sn" -eq 0 ] || fail "an agent with nothing to do woke $sn time(s) in 30 s"
[ "$dn" -eq 0 ] || fail "an agent with its uplink at the defaults woke $dn time(s) in 30 s"
grep -q "uplink: connected" "$STACK_DIR/agent.log" || fail "uplink not connected"
! grep -q "uplink: .*lost\|disconnected" "$STACK_DIR/agent.log" || fail "uplink dropped while idle (no PINGREQ?)"
echo "PASS: idle agent wakes only for its uplink keepalive"
