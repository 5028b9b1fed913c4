#!/usr/bin/env bash
# The uplink over TLS with username/password: a central broker that only
# takes authenticated TLS clients (as production should), the hub and an
# agent connecting with the CA and their credentials; a notification flows.
# A wrong password is refused (MQTT 5 reason 135) and the agent keeps its
# notifications queued, then sends them once the password is right.
# Then the same with a client certificate instead of a password (a listener
# with require_certificate and use_identity_as_username): an agent without
# one is refused, one with a certificate signed by the CA gets through.
#   usage: test_uplink_tls.sh BUILD_DIR SRC_DIR
set -euo pipefail
BUILD=$1
SRC=$2
# shellcheck source=../lib/stack.sh
. "$SRC/tests/lib/stack.sh"
fail() { stack_log "FAIL: $*"; stack_dump_logs; exit 1; }

stack_init
stack_broker                  # the devices' local broker (anonymous, loopback)
LOCAL_PORT=$BROKER_PORT
stack_fake_apns               # also makes the CA and server certificate

# Central broker: TLS only, passwords only. Credentials made now, never stored.
hub_pw=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
agent_pw=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
mosquitto_passwd -c -b "$STACK_DIR/passwd" hub "$hub_pw" >/dev/null
mosquitto_passwd -b "$STACK_DIR/passwd" gw1 "$agent_pw" >/dev/null
chmod 600 "$STACK_DIR/passwd"
UPLINK_PORT=$(stack_free_port)
MTLS_PORT=$(stack_free_port)
[ "$MTLS_PORT" != "$UPLINK_PORT" ] || MTLS_PORT=$(stack_free_port)
cat >"$STACK_DIR/central.conf" <<CONF
per_listener_settings true
listener $UPLINK_PORT 127.0.0.1
cafile $STACK_DIR/certs/ca.crt
certfile $STACK_DIR/certs/server.crt
keyfile $STACK_DIR/certs/server.key
allow_anonymous false
password_file $STACK_DIR/passwd
persistence false
set_tcp_nodelay true
user $(id -un)
listener $MTLS_PORT 127.0.0.1
cafile $STACK_DIR/certs/ca.crt
certfile $STACK_DIR/certs/server.crt
keyfile $STACK_DIR/certs/server.key
require_certificate true
use_identity_as_username true
allow_anonymous false
CONF
stack_start central mosquitto -c "$STACK_DIR/central.conf"
wait_until 10 "TLS broker on $UPLINK_PORT" port_open "$UPLINK_PORT"
wait_until 10 "mutual-TLS listener on $MTLS_PORT" port_open "$MTLS_PORT"
BROKER_PORT=$LOCAL_PORT

HUB_EXTRA="broker.cafile = $STACK_DIR/certs/ca.crt
broker.username = hub
broker.password = $hub_pw
"
HUB_BOOTSTRAP_AGENTS=gw1,gw2 # gw2: the agent with a client certificate
stack_hub

# A wrong password first: refused, nothing lost.
printf '%s\n' "agent.id = gw1" "state_dir = $STACK_DIR/agent" "local.port = $LOCAL_PORT" \
    "uplink.port = $UPLINK_PORT" "uplink.cafile = $STACK_DIR/certs/ca.crt" \
    "uplink.username = gw1" "uplink.password = wrong" "uplink.reconnect_max = 500ms" \
    >"$STACK_DIR/agent-bad.conf"
stack_start agent-bad "$BUILD/agent/tidings-agent" -c "$STACK_DIR/agent-bad.conf"
wait_until 15 "refused with a wrong password" grep -q "refused the connection" "$STACK_DIR/agent-bad.log"
local_up() { [ "$(grep -c 'local: connected' "$STACK_DIR/agent-bad.log")" -ge 1 ]; }
wait_until 15 "local broker connected" local_up
stack_publish '{"id":"tls-1","to":"user:alice","title":"over TLS"}'
queued() { [ "$(sqlite3 -readonly "$STACK_DIR/agent/outbox.db" "SELECT count(*) FROM outbox WHERE id='tls-1'")" = 1 ]; }
wait_until 15 "tls-1 queued while refused" queued
stack_stop agent-bad

# The right password: the queued notification goes out over TLS.
sed "s/^uplink.password = wrong$/uplink.password = $agent_pw/" "$STACK_DIR/agent-bad.conf" \
    >"$STACK_DIR/agent.conf"
chmod 600 "$STACK_DIR/agent.conf"
stack_start agent "$BUILD/agent/tidings-agent" -c "$STACK_DIR/agent.conf"
wait_until 20 "tls-1 at the fake APNs" apns_has_id tls-1
wait_until 10 "tls-1 delivered" hub_state_is tls-1 delivered
grep -q "uplink: connected to 127.0.0.1:$UPLINK_PORT" "$STACK_DIR/agent.log" || fail "agent not on TLS port"

# --- A client certificate instead of a password (CN = the agent id).
C=$STACK_DIR/certs
(
    umask 077
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$C/gw2.key" 2>/dev/null
    openssl req -new -key "$C/gw2.key" -subj "/CN=gw2" -out "$C/gw2.csr" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' \
        >"$C/gw2.ext"
    openssl x509 -req -in "$C/gw2.csr" -CA "$C/ca.crt" -CAkey "$C/ca.key" -set_serial 0x6702 \
        -days 2 -sha256 -extfile "$C/gw2.ext" -out "$C/gw2.crt" 2>/dev/null
) || fail "cannot make the agent's client certificate"
mkdir -p "$STACK_DIR/agent2"
base=("agent.id = gw2" "state_dir = $STACK_DIR/agent2" "local.port = $LOCAL_PORT"
    "local.topic = tidings/v1/local/gw2" "uplink.port = $MTLS_PORT"
    "uplink.cafile = $STACK_DIR/certs/ca.crt" "uplink.reconnect_max = 500ms")
# without a certificate: the handshake is refused, the notification stays queued
printf '%s\n' "${base[@]}" >"$STACK_DIR/agent2-nocert.conf"
stack_start agent2-nocert "$BUILD/agent/tidings-agent" -c "$STACK_DIR/agent2-nocert.conf"
wait_until 15 "agent2 local broker connected" grep -q "local: connected" "$STACK_DIR/agent2-nocert.log"
mosquitto_pub -V mqttv5 -q 1 -h 127.0.0.1 -p "$LOCAL_PORT" -t tidings/v1/local/gw2 \
    -m '{"id":"mtls-1","to":"user:alice","title":"over mutual TLS"}'
queued2() { [ "$(sqlite3 -readonly "$STACK_DIR/agent2/outbox.db" "SELECT count(*) FROM outbox WHERE id='mtls-1'")" = 1 ]; }
wait_until 15 "mtls-1 queued while the broker refuses" queued2
uplink_failed() { grep -qiE "uplink.*(refused|error|lost|cannot)" "$STACK_DIR/agent2-nocert.log"; }
wait_until 15 "agent without a certificate refused" uplink_failed
! grep -q "uplink: connected" "$STACK_DIR/agent2-nocert.log" || fail "connected without a client certificate"
stack_stop agent2-nocert
# with the certificate: connected as gw2, the queued notification delivered
printf '%s\n' "${base[@]}" "uplink.certfile = $C/gw2.crt" "uplink.keyfile = $C/gw2.key" \
    >"$STACK_DIR/agent2.conf"
chmod 600 "$STACK_DIR/agent2.conf"
stack_start agent2 "$BUILD/agent/tidings-agent" -c "$STACK_DIR/agent2.conf"
wait_until 20 "mtls-1 at the fake APNs" apns_has_id mtls-1
wait_until 10 "mtls-1 delivered" hub_state_is mtls-1 delivered
grep -q "uplink: connected to 127.0.0.1:$MTLS_PORT" "$STACK_DIR/agent2.log" || fail "agent2 not on the mutual-TLS port"

# --- The broker's certificate is verified (platform/mqtt.c, mbedtls): by a
# CA that did not sign it, the handshake is refused; by its DNS name
# (localhost, which also tries each address of the name) it is accepted.
stack_stop agent
stack_stop agent2
O=$STACK_DIR/otherca
mkdir -p "$O" "$STACK_DIR/agent3" "$STACK_DIR/agent4"
(
    umask 077
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$O/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$O/ca.key" -sha256 -days 2 -subj "/CN=Another CA" \
        -out "$O/ca.crt" 2>/dev/null
) || fail "cannot make the other CA"
grep -v -e '^state_dir' -e '^uplink.cafile' "$STACK_DIR/agent.conf" >"$STACK_DIR/agent3.conf"
printf '%s\n' "state_dir = $STACK_DIR/agent3" "uplink.cafile = $O/ca.crt" >>"$STACK_DIR/agent3.conf"
stack_start agent3 "$BUILD/agent/tidings-agent" -c "$STACK_DIR/agent3.conf"
wait_until 15 "an untrusted broker certificate refused" \
    grep -q "uplink: cannot connect to .*TLS handshake failed" "$STACK_DIR/agent3.log"
! grep -q "uplink: connected" "$STACK_DIR/agent3.log" || fail "connected to a broker signed by another CA"
stack_stop agent3
grep -v -e '^state_dir' "$STACK_DIR/agent.conf" >"$STACK_DIR/agent4.conf"
printf '%s\n' "state_dir = $STACK_DIR/agent4" "uplink.host = localhost" >>"$STACK_DIR/agent4.conf"
stack_start agent4 "$BUILD/agent/tidings-agent" -c "$STACK_DIR/agent4.conf"
wait_until 15 "connected by the broker's DNS name" \
    grep -q "uplink: connected to localhost:$UPLINK_PORT" "$STACK_DIR/agent4.log"
mosquitto_pub -V mqttv5 -q 1 -h 127.0.0.1 -p "$LOCAL_PORT" -t tidings/v1/local/notify \
    -m '{"id":"tls-dns-1","to":"user:alice","title":"by name"}'
wait_until 20 "tls-dns-1 at the fake APNs" apns_has_id tls-dns-1
stack_stop agent4
echo "PASS: uplink over TLS with a password, and with a client certificate; untrusted CA refused, DNS name verified"
