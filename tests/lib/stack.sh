# shellcheck shell=bash
# stack.sh - start and stop a whole local Tidings stack for tests and the demo:
# a mosquitto broker on a free loopback port, the fake APNs, the hub and an
# agent, each from a generated config inside one private directory.
#
# Source it, then: stack_init; stack_broker; stack_fake_apns; stack_hub;
# stack_agent. Everything started is stopped, and the directory removed, by
# stack_cleanup (installed as an EXIT trap by stack_init).
#
# Needs: BUILD (the CMake build directory) and SRC (the source tree).

STACK_PIDS=()
STACK_DIR=""
# STACK_WRAP: a command the agent and hub run under, e.g.
#   STACK_WRAP="valgrind --leak-check=full --errors-for-leak-kinds=definite"
# (split on spaces; a valgrind error summary in a log fails the test).
read -r -a STACK_WRAP_ARGS <<<"${STACK_WRAP:-}"
STACK_KEEP=${STACK_KEEP:-0}

stack_log() { printf '%s\n' "$*" >&2; }
stack_die() { stack_log "error: $*"; exit 1; }

# wait_until TIMEOUT_S DESCRIPTION CMD...: poll CMD (every 50 ms) until it
# succeeds; fail with DESCRIPTION after TIMEOUT_S. Waiting for a condition,
# not sleeping for a guess.
wait_until() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            stack_log "timed out after ${timeout}s waiting for: $what"
            stack_dump_logs
            return 1
        fi
        sleep 0.05
    done
}

stack_dump_logs() {
    [ -n "$STACK_DIR" ] || return 0
    local f
    for f in "$STACK_DIR"/*.log; do
        [ -f "$f" ] || continue
        stack_log "----- $(basename "$f") (last 30 lines)"
        tail -n 30 "$f" >&2
    done
}

stack_cleanup() {
    local rc=$?
    local pid
    for pid in "${STACK_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STACK_PIDS[@]}"; do
        # bounded wait for a clean exit, then force
        # valgrind needs time for its leak check and summary at exit
        local i=0 limit=100
        [ -n "${STACK_WRAP:-}" ] && limit=600
        while kill -0 "$pid" 2>/dev/null && ((i < limit)); do
            sleep 0.05
            i=$((i + 1))
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    STACK_PIDS=()
    # A sanitizer report in any daemon's log fails the test, whatever else
    # passed: ASan/UBSan/LSan write there, not to the test's output.
    if [ -n "$STACK_DIR" ] &&
        grep -l -E 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|ERROR SUMMARY: [1-9]' \
            "$STACK_DIR"/*.log >/dev/null 2>&1; then
        stack_log "FAIL: sanitizer report in a daemon log:"
        grep -h -B30 -A20 -E 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|ERROR SUMMARY: [1-9]' \
            "$STACK_DIR"/*.log >&2
        rc=1
    fi
    if [ -n "$STACK_DIR" ] && [ "$STACK_KEEP" != 1 ]; then
        rm -rf "$STACK_DIR"
    fi
    exit $rc
}

stack_init() {
    [ -n "${BUILD:-}" ] && [ -n "${SRC:-}" ] || stack_die "BUILD and SRC must be set"
    STACK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/tidings-stack.XXXXXX")
    chmod 700 "$STACK_DIR"
    trap stack_cleanup EXIT
    trap 'exit 130' INT TERM
}

# A free TCP port on 127.0.0.1: bind-test candidates with bash's /dev/tcp
# (a refused connect means nothing listens there).
stack_free_port() {
    local p i
    for i in $(seq 1 200); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# stack_start NAME CMD...: run CMD in the background, logging to NAME.log.
stack_start() {
    local name=$1
    shift
    "$@" >"$STACK_DIR/$name.log" 2>&1 &
    STACK_PIDS+=($!)
    printf -v "STACK_PID_${name//-/_}" %s "$!"
}

stack_pid() { local v="STACK_PID_${1//-/_}"; echo "${!v}"; }

# stack_stop NAME [SIGNAL]: stop one process (default TERM) and wait for it.
stack_stop() {
    local pid
    pid=$(stack_pid "$1")
    kill "-${2:-TERM}" "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# stack_broker [NAME [PORT]]: a broker (default name "broker"); sets
# BROKER_PORT. Given a PORT (a restart), it binds exactly that one.
stack_broker() {
    local name=${1:-broker} fixed=${2:-} tries conf
    # the default broker's config keeps its old name: tests restart from it
    conf="$STACK_DIR/$name.conf"
    [ "$name" = broker ] && conf="$STACK_DIR/mosquitto.conf"
    for tries in 1 2 3 4 5; do
        BROKER_PORT=${fixed:-$(stack_free_port)} || stack_die "no free port"
        cat >"$conf" <<CONF
listener $BROKER_PORT 127.0.0.1
allow_anonymous true
persistence false
user $(id -un)
log_dest stderr
log_type error
log_type warning
log_type notice
max_queued_messages 100000
set_tcp_nodelay true
CONF
        stack_start "$name" mosquitto -c "$conf"
        if wait_until 10 "mosquitto on port $BROKER_PORT" port_open "$BROKER_PORT"; then
            export BROKER_PORT
            return 0
        fi
        stack_stop "$name" KILL
    done
    stack_die "mosquitto did not start"
}

# The fake APNs with freshly generated TLS certificates and an APNs auth key.
APNS_KEY_ID=KEYID12345
APNS_TEAM_ID=TEAMID6789
APNS_TOPIC=com.example.tidings
APNS_TOKEN=${APNS_TOKEN:-$(printf 'a1%.0s' $(seq 1 32))}

stack_fake_apns() {
    "$SRC/tests/fakes/gen-certs.sh" "$STACK_DIR/certs" "$APNS_KEY_ID" >"$STACK_DIR/certs.log" 2>&1 ||
        { cat "$STACK_DIR/certs.log" >&2; stack_die "certificate generation failed"; }
    local script_args=()
    [ -n "${APNS_SCRIPT:-}" ] && script_args=(--script "$APNS_SCRIPT")
    stack_start fake-apns "$BUILD/tests/fakes/fake-apns" --listen 127.0.0.1:0 \
        --cert "$STACK_DIR/certs/server.crt" --key "$STACK_DIR/certs/server.key" \
        --auth-key "$STACK_DIR/certs/authkey_pub.pem" --key-id "$APNS_KEY_ID" \
        --team-id "$APNS_TEAM_ID" --topic "$APNS_TOPIC" \
        --record "$STACK_DIR/apns-record.jsonl" --port-file "$STACK_DIR/apns.port" \
        "${script_args[@]}"
    wait_until 10 "fake APNs port file" test -s "$STACK_DIR/apns.port"
    APNS_PORT=$(cat "$STACK_DIR/apns.port")
    export APNS_PORT
}

# The other providers' fakes, for the channels beyond APNs. Each reuses the
# certificates stack_fake_apns made (call it first).
FCM_PROJECT=tidings-demo
FCM_TOKEN=${FCM_TOKEN:-fcm-demo-registration-token-0001}
SMS_SID=AC00000000000000000000000000000001
SMS_FROM=+15005550006
SMS_TO=${SMS_TO:-+4915112345678}
MAIL_TO=${MAIL_TO:-alice@example.com}

stack_fake_fcm() {
    "$SRC/tests/fakes/fcm_gen_account.sh" "$STACK_DIR/fcm" "$FCM_PROJECT" >/dev/null
    stack_start fake-fcm "$BUILD/tests/fakes/fake-fcm" --listen 127.0.0.1:0 \
        --cert "$STACK_DIR/certs/server.crt" --key "$STACK_DIR/certs/server.key" \
        --service-account "$STACK_DIR/fcm/service-account.json" --project "$FCM_PROJECT" \
        --record "$STACK_DIR/fcm-record.jsonl" --port-file "$STACK_DIR/fcm.port"
    wait_until 10 "fake FCM port file" test -s "$STACK_DIR/fcm.port"
    FCM_PORT=$(cat "$STACK_DIR/fcm.port")
    HUB_CHANNELS="${HUB_CHANNELS:-apns},fcm"
    HUB_EXTRA+="bootstrap.android_token = $FCM_TOKEN
fcm.service_account_file = $STACK_DIR/fcm/service-account.json
fcm.send_url = https://127.0.0.1:$FCM_PORT
fcm.token_url = https://127.0.0.1:$FCM_PORT/token
fcm.ca_file = $STACK_DIR/certs/ca.crt
"
}

stack_fake_sms() {
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STACK_DIR/sms.token"
    chmod 600 "$STACK_DIR/sms.token"
    stack_start fake-sms /usr/bin/python3 "$SRC/tests/fakes/fake_sms.py" --listen 127.0.0.1:0 \
        --cert "$STACK_DIR/certs/server.crt" --key "$STACK_DIR/certs/server.key" \
        --account-sid "$SMS_SID" --auth-token-file "$STACK_DIR/sms.token" \
        --record "$STACK_DIR/sms-record.jsonl" --port-file "$STACK_DIR/sms.port"
    wait_until 10 "fake SMS port file" test -s "$STACK_DIR/sms.port"
    SMS_PORT=$(cat "$STACK_DIR/sms.port")
    HUB_CHANNELS="${HUB_CHANNELS:-apns},sms"
    HUB_EXTRA+="bootstrap.phone = $SMS_TO
sms.api_url = https://127.0.0.1:$SMS_PORT
sms.account_sid = $SMS_SID
sms.auth_token_file = $STACK_DIR/sms.token
sms.from = $SMS_FROM
sms.ca_file = $STACK_DIR/certs/ca.crt
sms.rate = 100
"
}

stack_fake_smtp() {
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STACK_DIR/smtp.password"
    chmod 600 "$STACK_DIR/smtp.password"
    mkdir -p "$STACK_DIR/mail"
    stack_start fake-smtp /usr/bin/python3 "$SRC/tests/fakes/fake_smtp.py" --listen 127.0.0.1:0 \
        --cert "$STACK_DIR/certs/server.crt" --key "$STACK_DIR/certs/server.key" \
        --username tidings --password-file "$STACK_DIR/smtp.password" \
        --record "$STACK_DIR/smtp-record.jsonl" --mail-dir "$STACK_DIR/mail" \
        --port-file "$STACK_DIR/smtp.port"
    wait_until 10 "fake SMTP port file" test -s "$STACK_DIR/smtp.port"
    SMTP_PORT=$(cat "$STACK_DIR/smtp.port")
    HUB_CHANNELS="${HUB_CHANNELS:-apns},email"
    HUB_EXTRA+="bootstrap.email = $MAIL_TO
email.smtp_url = smtp://127.0.0.1:$SMTP_PORT
email.username = tidings
email.password_file = $STACK_DIR/smtp.password
email.from = Tidings <tidings@example.com>
email.ca_file = $STACK_DIR/certs/ca.crt
"
}

# stack_hub [NAME]: start the hub (again, after a crash: same config and
# store, a new log NAME.log).
stack_hub() {
    local name=${1:-hub}
    mkdir -p "$STACK_DIR/hub"
    [ -f "$STACK_DIR/hub.conf" ] || cat >"$STACK_DIR/hub.conf" <<CONF
state_dir = $STACK_DIR/hub
log_level = ${HUB_LOG_LEVEL:-info}
broker.host = 127.0.0.1
broker.port = ${UPLINK_PORT:-$BROKER_PORT}
bootstrap.user = alice
bootstrap.tz = Europe/Berlin
bootstrap.agents = ${HUB_BOOTSTRAP_AGENTS:-${AGENT_ID:-gw1}}
bootstrap.ios_token = $APNS_TOKEN
bootstrap.ios_app = $APNS_TOPIC
apns.url = https://127.0.0.1:$APNS_PORT
apns.key_file = $STACK_DIR/certs/AuthKey_$APNS_KEY_ID.p8
apns.key_id = $APNS_KEY_ID
apns.team_id = $APNS_TEAM_ID
apns.topic = $APNS_TOPIC
apns.ca_file = $STACK_DIR/certs/ca.crt
fanout.retry_base = 100ms
fanout.retry_cap = 2s
channels = ${HUB_CHANNELS:-apns}
${HUB_EXTRA:-}
CONF
    stack_start "$name" "${STACK_WRAP_ARGS[@]}" "$BUILD/hub/tidings-hub" -c "$STACK_DIR/hub.conf"
    wait_until 15 "hub subscribed" grep -q "subscribed to" "$STACK_DIR/$name.log"
}

# stack_agent [NAME]: start the agent (again: same config and outbox).
stack_agent() {
    local name=${1:-agent}
    mkdir -p "$STACK_DIR/agent"
    [ -f "$STACK_DIR/agent.conf" ] || cat >"$STACK_DIR/agent.conf" <<CONF
agent.id = ${AGENT_ID:-gw1}
state_dir = $STACK_DIR/agent
log_level = ${AGENT_LOG_LEVEL:-info}
local.host = 127.0.0.1
local.port = $BROKER_PORT
uplink.host = 127.0.0.1
uplink.port = ${UPLINK_PORT:-$BROKER_PORT}
uplink.ack_timeout = ${AGENT_ACK_TIMEOUT:-5s}
${AGENT_EXTRA:-}
CONF
    stack_start "$name" "${STACK_WRAP_ARGS[@]}" "$BUILD/agent/tidings-agent" -c "$STACK_DIR/agent.conf"
    wait_until 15 "agent connected (local and uplink)" \
        bash -c "[ \$(grep -c 'connected to' '$STACK_DIR/$name.log') -ge 2 ]"
}

# publish JSON as an IoT device does: MQTT 5, QoS 1, on the local topic.
stack_publish() {
    mosquitto_pub -V mqttv5 -q 1 -h 127.0.0.1 -p "$BROKER_PORT" -t tidings/v1/local/notify -m "$1"
}

# Lines of the fake's record naming this notification id.
apns_count_id() {
    [ -f "$STACK_DIR/apns-record.jsonl" ] || { echo 0; return; }
    grep -c "tidings_id[^,]*$1" "$STACK_DIR/apns-record.jsonl" || true
}

# apns_has_id ID [N]: the fake has recorded ID at least N (default 1) times.
# A function, so wait_until re-evaluates it on every poll.
apns_has_id() { [ "$(apns_count_id "$1")" -ge "${2:-1}" ]; }

# hub_sql SQL: a read-only query on the hub's database.
hub_sql() { sqlite3 -readonly "$STACK_DIR/hub/hub.db" "$1"; }

# hub_state_is ID STATE
hub_state_is() { [ "$(hub_sql "SELECT state FROM notifications WHERE id = '$1'")" = "$2" ]; }

hub_state() {
    sqlite3 -readonly "$STACK_DIR/hub/hub.db" \
        "SELECT state || '|' || reason FROM notifications WHERE id = '$1'" 2>/dev/null
}

# --- a broker with passwords and ACLs (tidingsctl, issue 6) ---------------
# stack_secret: a fresh random password (never stored in the repo).
stack_secret() { head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# stack_acl_agent AGENT: the ACL lines an agent needs on the central broker
# (the same lines `tidingsctl agent add` prints).
stack_acl_agent() {
    printf '%s\n' "user $1" "topic write tidings/v1/agents/$1/up" \
        "topic readwrite tidings/v1/agents/$1/status" "topic read tidings/v1/agents/$1/ack" \
        "topic read tidings/v1/agents/$1/down" "topic read tidings/v1/agents/$1/policy" \
        "topic read tidings/v1/agents/$1/receipts" "topic read tidings/v1/hubs/+/status"
}

# stack_broker_auth [NAME]: a broker that takes only the users of a password
# file, each limited by an ACL file, as production should run: "hub" (the
# hub's topics), "admin" (tidingsctl: tidings/v1/admin/#) and "viewer" (only
# the read-only admin commands status and log). Sets BROKER_PORT,
# HUB_PASSWORD and ADMIN_PASSWORD, and makes stack_hub log in as "hub".
# Add agents with stack_broker_add_user + their ACL lines, then
# stack_broker_reload.
stack_broker_auth() {
    local name=${1:-broker} tries conf="$STACK_DIR/mosquitto.conf"
    HUB_PASSWORD=$(stack_secret)
    ADMIN_PASSWORD=$(stack_secret)
    VIEWER_PASSWORD=$(stack_secret)
    mosquitto_passwd -c -b "$STACK_DIR/passwd" hub "$HUB_PASSWORD" >/dev/null
    mosquitto_passwd -b "$STACK_DIR/passwd" admin "$ADMIN_PASSWORD" >/dev/null
    mosquitto_passwd -b "$STACK_DIR/passwd" viewer "$VIEWER_PASSWORD" >/dev/null
    chmod 600 "$STACK_DIR/passwd"
    cat >"$STACK_DIR/acl" <<ACL
user hub
topic readwrite tidings/v1/#
topic read \$share/+/tidings/v1/#

user admin
topic readwrite tidings/v1/admin/#

user viewer
topic write tidings/v1/admin/request/status
topic write tidings/v1/admin/request/log
topic read tidings/v1/admin/reply/#

ACL
    chmod 600 "$STACK_DIR/acl"
    for tries in 1 2 3 4 5; do
        BROKER_PORT=$(stack_free_port) || stack_die "no free port"
        cat >"$conf" <<CONF
listener $BROKER_PORT 127.0.0.1
allow_anonymous false
password_file $STACK_DIR/passwd
acl_file $STACK_DIR/acl
persistence false
user $(id -un)
log_dest stderr
log_type error
log_type warning
log_type notice
max_queued_messages 100000
set_tcp_nodelay true
CONF
        stack_start "$name" mosquitto -c "$conf"
        if wait_until 10 "mosquitto on port $BROKER_PORT" port_open "$BROKER_PORT"; then
            export BROKER_PORT HUB_PASSWORD ADMIN_PASSWORD VIEWER_PASSWORD
            HUB_EXTRA+="broker.username = hub
broker.password = $HUB_PASSWORD
"
            return 0
        fi
        stack_stop "$name" KILL
    done
    stack_die "mosquitto did not start"
}

# stack_broker_add_user USER PASSWORD [ACL lines on stdin]: add a user to the
# password file and append ACL lines; stack_broker_reload applies them.
stack_broker_add_user() {
    mosquitto_passwd -b "$STACK_DIR/passwd" "$1" "$2" >/dev/null
    { echo; cat; } >>"$STACK_DIR/acl"
}

# The broker rereads its password and ACL files on SIGHUP.
stack_broker_reload() { kill -HUP "$(stack_pid "${1:-broker}")"; }

# --- fanout engine: metrics endpoint, a backup APNs (docs/engine.md) -------
# stack_metrics: pick a free port for the hub's metrics.listen (call before
# stack_hub); sets METRICS_PORT.
stack_metrics() {
    METRICS_PORT=$(stack_free_port) || stack_die "no free port"
    export METRICS_PORT
    HUB_EXTRA+="metrics.listen = 127.0.0.1:$METRICS_PORT
"
}

# hub_metric 'name{labels}': that series' value from GET /metrics (0 when
# absent). Labels exactly as the hub prints them.
hub_metric() {
    curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" |
        awk -v k="$1" '$1 == k { v = $2; f = 1 } END { print f ? v : 0 }'
}

# metric_ge 'name{labels}' N: the series is at least N (for wait_until).
metric_ge() { [ "$(hub_metric "$1" | cut -d. -f1)" -ge "$2" ]; }

# stack_fake_apns_backup: a second fake APNs (same keys; own record, port
# and script $APNS2_SCRIPT) as the hub's backup provider for apns. Call
# after stack_fake_apns, before stack_hub. Sets APNS2_PORT.
stack_fake_apns_backup() {
    local script_args=()
    [ -n "${APNS2_SCRIPT:-}" ] && script_args=(--script "$APNS2_SCRIPT")
    stack_start fake-apns2 "$BUILD/tests/fakes/fake-apns" --listen 127.0.0.1:0 \
        --cert "$STACK_DIR/certs/server.crt" --key "$STACK_DIR/certs/server.key" \
        --auth-key "$STACK_DIR/certs/authkey_pub.pem" --key-id "$APNS_KEY_ID" \
        --team-id "$APNS_TEAM_ID" --topic "$APNS_TOPIC" \
        --record "$STACK_DIR/apns2-record.jsonl" --port-file "$STACK_DIR/apns2.port" \
        "${script_args[@]}"
    wait_until 10 "backup fake APNs port file" test -s "$STACK_DIR/apns2.port"
    APNS2_PORT=$(cat "$STACK_DIR/apns2.port")
    export APNS2_PORT
    # credentials never pass from the primary to a backup (docs/engine.md):
    # the backup names its own (here the same key, team)
    HUB_EXTRA+="apns.backup.url = https://127.0.0.1:$APNS2_PORT
apns.backup.key_file = $STACK_DIR/certs/AuthKey_$APNS_KEY_ID.p8
apns.backup.key_id = $APNS_KEY_ID
apns.backup.team_id = $APNS_TEAM_ID
"
}
