#!/usr/bin/env bash
# An idle agent wakes only for its uplink keepalive: with uplink.keepalive
# = 5s, one timer wake-up sends PINGREQ and one socket wake-up reads PINGRESP
# per period, about 10 in 30 s; the local connection (keepalive 0) adds none.
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
pid=$(stack_pid agent)
switches() { awk '/^voluntary_ctxt_switches/ {print $2}' "/proc/$pid/task/$pid/status"; }
# wait for the first PINGREQ period to pass (the bug showed after it)
sleep 7
c0=$(switches)
sleep 30
c1=$(switches)
n=$((c1 - c0))
echo "idle agent, uplink.keepalive 5s: $n wake-ups in 30 s (expected about 10)"
[ "$n" -le 16 ] || fail "$n wake-ups in 30 s: the keepalive timer is re-arming too often"
grep -q "uplink: connected" "$STACK_DIR/agent.log" || fail "uplink not connected"
! grep -q "uplink: .*lost\|disconnected" "$STACK_DIR/agent.log" || fail "uplink dropped while idle (no PINGREQ?)"
echo "PASS: idle agent wakes only for its uplink keepalive"
