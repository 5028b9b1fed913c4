#!/usr/bin/env bash
# Desktop notifications against a real notification server.
#
#   test_desktop.sh DRIVER      (DRIVER = the test_desktop binary)
#
# Starts a virtual X server (Xvfb), a private session bus (dbus-daemon with
# its own config: no service activation, so "no server" is deterministic)
# and dbus-monitor; the driver then runs the backend against no server,
# starts dunst itself, and delivers. Afterwards the monitor's record must
# show what the server was given: app name, summary, escaped body, urgency.
# Every process started here is stopped on exit (trap), whatever happens.
# Exit 77 (skipped) when a tool is missing; scripts/deps installs them.
set -euo pipefail

driver="$1"
for tool in Xvfb dbus-daemon dbus-monitor dunst; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "test_desktop: $tool not installed (scripts/deps installs it): skipped" >&2
        exit 77
    fi
done

tmp="$(mktemp -d /tmp/tidings-desktop-XXXXXX)"
pids=()
cleanup() {
    local rc=$?
    # The server the driver started, if the driver did not stop it.
    if [ -s "$tmp/server.pid" ]; then
        kill "$(cat "$tmp/server.pid")" 2>/dev/null || true
    fi
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
    if [ $rc -ne 0 ]; then
        for f in agent.log server.log monitor.log xvfb.log bus.log; do
            [ -s "$tmp/$f" ] && { echo "--- $f"; tail -n 60 "$tmp/$f"; }
        done >&2
    fi
    rm -rf "$tmp"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for DESCRIPTION COMMAND...: poll a condition (not a fixed sleep), 10 s max.
wait_for() {
    local what="$1"
    shift
    for _ in $(seq 200); do
        if "$@"; then
            return 0
        fi
        sleep 0.05
    done
    echo "test_desktop: timed out waiting for $what" >&2
    return 1
}

# A virtual X server on a free display (it picks one and tells us).
Xvfb -displayfd 3 -nolisten tcp -screen 0 1024x768x24 3>"$tmp/display" 2>"$tmp/xvfb.log" &
pids+=($!)
wait_for "Xvfb" test -s "$tmp/display"
export DISPLAY=":$(head -n1 "$tmp/display")"

# A private session bus: own socket, no activation, eavesdropping allowed
# for dbus-monitor.
cat >"$tmp/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=$tmp/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
EOF
dbus-daemon --config-file="$tmp/bus.conf" --nofork --print-address=4 4>"$tmp/address" \
    2>"$tmp/bus.log" &
pids+=($!)
echo $! >"$tmp/bus.pid" # the driver ends the session at the very end
wait_for "dbus-daemon" test -s "$tmp/address"
export DBUS_SESSION_BUS_ADDRESS="$(head -n1 "$tmp/address")"
# Nothing of the user's own session may leak in.
export HOME="$tmp" XDG_CONFIG_HOME="$tmp" XDG_RUNTIME_DIR="$tmp"
unset XDG_DATA_DIRS

dbus-monitor --session "type='method_call',interface='org.freedesktop.Notifications'" \
    "type='signal',interface='org.freedesktop.Notifications'" >"$tmp/monitor.log" 2>&1 &
pids+=($!)
# The monitor is attached once it has reported losing its own name.
wait_for "dbus-monitor" grep -q NameLost "$tmp/monitor.log"

: >"$tmp/dunstrc"
"$driver" "$tmp" dunst -config "$tmp/dunstrc"

# What the server was given (dbus-monitor prints one argument per line).
mon="$tmp/monitor.log"
check() {
    if ! grep -qF -- "$1" "$mon"; then
        echo "test_desktop: not in the Notify calls: $1" >&2
        return 1
    fi
}
check 'member=Notify'
check 'string "Tidings"'
check 'string "Tidings desktop test: <b>not bold</b> & $(echo hi)"'
check 'string "Parcel 4711 &lt;b&gt;arrives&lt;/b&gt; &amp; more"'
check 'string "urgency"'
# high -> 2, low -> 0, normal (the default) -> 1
check 'variant             byte 2'
check 'variant             byte 0'
check 'variant             byte 1'
check 'member=ActionInvoked'
check 'member=NotificationClosed'
# Notify calls as counted by the monitor: 3 without a server, 1 + 1 + 3
# with it, 2 after it stopped, 1 to a silent owner, 1 in flight when the bus
# went (nothing after that reaches a bus).
n=$(grep -c 'member=Notify' "$mon")
if [ "$n" -ne 12 ]; then
    echo "test_desktop: expected 12 Notify calls, the monitor saw $n" >&2
    exit 1
fi
echo "test_desktop: ok ($n Notify calls seen on the bus)"
