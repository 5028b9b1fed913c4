#!/usr/bin/env bash
# End to end, desktop delivery by the real agent (docs/delivery.md): Xvfb, a
# private session bus and dunst as the notification server. A "to":"local"
# notification reaches the server (dbus-monitor sees the Notify call with its
# title) and its row records the server's id; a click on its default action
# and its closing come back as receipts on the row ("action:default
# closed:closed"); a category with the desktop channel switched off in the
# hub's snapshot is suppressed on the desktop (channel_off:desktop) but still
# logged; with the server gone the desktop row stays pending (unavailable,
# retried with backoff) while the log backend delivers, and it is delivered
# once the server is back.
# Exit 77 (skipped) without the tools or without desktop support built in.
#   usage: test_local_desktop.sh BUILD_DIR SRC_DIR
set -euo pipefail
BUILD=$1
SRC=$2
AGENT="$BUILD/agent/tidings-agent"
for tool in Xvfb dbus-daemon dbus-monitor dbus-send dunst mosquitto; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "test_local_desktop: $tool not installed (scripts/deps installs it): skipped" >&2
        exit 77
    fi
done
helpcfg=$("$AGENT" --help-config) # captured: grep -q would close the pipe early (pipefail)
if ! grep -q '^#deliver.backends = desktop' <<<"$helpcfg"; then
    echo "test_local_desktop: built without desktop support (TIDINGS_DESKTOP_NOTIFY=OFF): skipped" >&2
    exit 77
fi
# shellcheck source=../lib/stack.sh
. "$SRC/tests/lib/stack.sh"

fail() { stack_log "FAIL: $*"; stack_dump_logs; exit 1; }
PY=/usr/bin/python3

stack_init
# A virtual X server on a free display, a private session bus (no service
# activation, eavesdropping for dbus-monitor), nothing of the user's session.
stack_start xvfb Xvfb -displayfd 3 -nolisten tcp -screen 0 1024x768x24 3>"$STACK_DIR/display"
wait_until 10 "Xvfb" test -s "$STACK_DIR/display"
export DISPLAY=":$(head -n1 "$STACK_DIR/display")"
cat >"$STACK_DIR/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=$STACK_DIR/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
EOF
stack_start bus dbus-daemon --config-file="$STACK_DIR/bus.conf" --nofork --print-address=4 \
    4>"$STACK_DIR/address"
wait_until 10 "dbus-daemon" test -s "$STACK_DIR/address"
export DBUS_SESSION_BUS_ADDRESS="$(head -n1 "$STACK_DIR/address")"
export HOME="$STACK_DIR" XDG_CONFIG_HOME="$STACK_DIR" XDG_RUNTIME_DIR="$STACK_DIR"
unset XDG_DATA_DIRS
stack_start monitor dbus-monitor --session \
    "type='method_call',interface='org.freedesktop.Notifications'"
wait_until 10 "dbus-monitor" grep -q NameLost "$STACK_DIR/monitor.log"
: >"$STACK_DIR/dunstrc"
has_server() {
    dbus-send --session --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
        org.freedesktop.DBus.NameHasOwner string:org.freedesktop.Notifications |
        grep -q 'boolean true'
}
start_dunst() {
    stack_start dunst dunst -config "$STACK_DIR/dunstrc"
    wait_until 10 "dunst owns org.freedesktop.Notifications" has_server
}
start_dunst

stack_broker
mkdir -p "$STACK_DIR/agent"
cat >"$STACK_DIR/agent.conf" <<CONF
agent.id = gw1
state_dir = $STACK_DIR/agent
local.host = 127.0.0.1
local.port = $BROKER_PORT
uplink.host = 127.0.0.1
uplink.port = $BROKER_PORT
deliver.backends = desktop,log
deliver.desktop.bus = $DBUS_SESSION_BUS_ADDRESS
deliver.desktop.expire = 0
deliver.retry_min = 200ms
deliver.retry_max = 1s
policy.local_user = alice
CONF
stack_agent
CONF="$STACK_DIR/agent.conf"

# row ID BACKEND: "state|rule|ref|receipt" of that backend's row.
row() {
    "$AGENT" status -c "$CONF" --id "$1" --json 2>/dev/null | "$PY" -c '
import json, sys
for r in json.load(sys.stdin)["local"]:
    if r["backend"] == sys.argv[1]:
        print("|".join(str(r[k]) if r[k] is not None else "-" for k in ("state", "rule", "ref", "receipt")))' "$2"
}
state_is() { row "$1" "$2" | grep -q "^$3|"; }
dunst_call() { # METHOD ARGS...: org.dunstproject.cmd0 (what dunstctl calls)
    dbus-send --session --print-reply --dest=org.freedesktop.Notifications \
        /org/freedesktop/Notifications "org.dunstproject.cmd0.$1" "${@:2}" >/dev/null
}

# 1. Shown on the desktop; the row keeps the server's id.
"$AGENT" send -c "$CONF" --to local --id dsk-1 --title "Desktop hello" --body "from tidings" \
    >/dev/null || fail "send dsk-1"
wait_until 10 "dsk-1 delivered on the desktop" state_is dsk-1 desktop delivered
wait_until 10 "dsk-1 delivered on the log" state_is dsk-1 log delivered
grep -q 'string "Desktop hello"' "$STACK_DIR/monitor.log" || fail "Notify lacks the title"
ref=$(row dsk-1 desktop | cut -d'|' -f3)
[ "$ref" -gt 0 ] 2>/dev/null || fail "dsk-1 desktop ref '$ref'"

# 2. Clicked (dunst's default action of the notification shown) and closed:
# receipts on the row.
dunst_call NotificationAction uint32:0
receipt_has() { row dsk-1 desktop | cut -d'|' -f4 | grep -q "$1"; }
wait_until 10 "action receipt" receipt_has "action:default"
dbus-send --session --print-reply --dest=org.freedesktop.Notifications \
    /org/freedesktop/Notifications org.freedesktop.Notifications.CloseNotification \
    "uint32:$ref" >/dev/null
wait_until 10 "closed receipt" receipt_has "action:default closed:closed"
grep -q "receipt id=dsk-1 backend=desktop action:default" "$STACK_DIR/agent.log" ||
    fail "receipt not logged"

# 3. The desktop channel off for "chat" in the hub's snapshot.
mosquitto_pub -V mqttv5 -q 1 -r -h 127.0.0.1 -p "$BROKER_PORT" -t tidings/v1/agents/gw1/policy \
    -m '{"v":1,"version":1,"users":{"alice":{"categories":{"chat":{"channels_off":["desktop"]}}}}}'
version_is_1() {
    [ "$("$AGENT" status -c "$CONF" --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["policy"]["version"])')" = 1 ]
}
wait_until 10 "snapshot applied" version_is_1
"$AGENT" send -c "$CONF" --to local --id dsk-2 --title "chat message" --category chat \
    >/dev/null || fail "send dsk-2"
wait_until 10 "dsk-2 logged" state_is dsk-2 log delivered
wait_until 10 "dsk-2 suppressed on the desktop" state_is dsk-2 desktop suppressed
row dsk-2 desktop | grep -q '^suppressed|channel_off:desktop|' || fail "dsk-2: $(row dsk-2 desktop)"
! grep -q 'string "chat message"' "$STACK_DIR/monitor.log" || fail "dsk-2 reached the server"

# 4. No notification server: pending on the desktop (retried), logged at
# once; delivered when the server is back.
stack_stop dunst
no_server() { ! has_server; }
wait_until 10 "dunst gone" no_server
"$AGENT" send -c "$CONF" --to local --id dsk-3 --title "While away" >/dev/null || fail "send dsk-3"
wait_until 10 "dsk-3 logged" state_is dsk-3 log delivered
attempted() { [ "$("$AGENT" status -c "$CONF" --id dsk-3 --json | "$PY" -c '
import json,sys
print([r["attempts"] for r in json.load(sys.stdin)["local"] if r["backend"] == "desktop"][0])')" -ge 2 ]; }
wait_until 15 "dsk-3 tried again on the desktop" attempted
state_is dsk-3 desktop pending || fail "dsk-3 desktop: $(row dsk-3 desktop)"
start_dunst
wait_until 20 "dsk-3 delivered once the server is back" state_is dsk-3 desktop delivered
grep -q 'string "While away"' "$STACK_DIR/monitor.log" || fail "Notify of dsk-3 not seen"

echo "PASS: local desktop delivery end to end"
