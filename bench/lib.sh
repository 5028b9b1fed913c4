# shellcheck shell=bash
# bench/lib.sh - helpers for bench/run: processes, ports, configs for broker,
# fake APNs, hub and agent, /proc sampling, and the result rows.
#
# Sourced by bench/run, which sets ROOT (bench/, scripts/), SRC (the tree
# measured), BUILD, TOOLS and RUN_DIR first.
# Every process started with bstart is tracked and stopped by bstop_all
# (bench/run installs it in its EXIT trap). Nothing here binds anything but
# 127.0.0.1.

BNAMES=()
declare -A BPID=()
CLK_TCK=$(getconf CLK_TCK)
PY=/usr/bin/python3 # Debian's Python (a pyenv python3 on PATH may differ)

blog() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
bdie() { blog "error: $*"; exit 1; }

# calc EXPR: floating-point arithmetic through awk ("" in -> 0).
calc() { awk "BEGIN { v = $1; if (v == int(v)) printf \"%d\", v; else printf \"%.6g\", v }"; }

# kv KEY LINE: the value of KEY=value in a tool's key=value output line.
kv() { printf '%s\n' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n1; }

# wait_until TIMEOUT_S DESCRIPTION CMD...: poll CMD every WAIT_STEP seconds
# (default 0.05) until it succeeds; return 1 after TIMEOUT_S (the caller
# decides what that means). Polls during a load use a longer step: each one
# starts a process (sqlite3) that takes CPU from what is measured.
wait_until() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            blog "timed out after ${timeout}s waiting for: $what"
            return 1
        fi
        sleep "${WAIT_STEP:-0.05}"
    done
}

now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }

# bstart NAME CMD...: run CMD in the background, output to $FIG_DIR/NAME.log.
bstart() {
    local name=$1
    shift
    "$@" >"$FIG_DIR/$name.log" 2>&1 &
    BPID[$name]=$!
    BNAMES+=("$name")
}

bpid() { echo "${BPID[$1]}"; }
alive() { kill -0 "$1" 2>/dev/null; }

# bstop NAME [SIGNAL]: stop one process (TERM by default), wait at most 10 s
# for a clean exit, then KILL.
bstop() {
    local pid=${BPID[$1]:-}
    [ -n "$pid" ] || return 0
    kill "-${2:-TERM}" "$pid" 2>/dev/null || true
    local i=0
    while alive "$pid" && ((i < 200)); do
        sleep 0.05
        i=$((i + 1))
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "BPID[$1]"
}

# bstop_all: stop everything bstart started, newest first.
bstop_all() {
    local i
    local p
    for p in "${PERF_PID:-}" "${PROF_PID:-}"; do
        [ -n "$p" ] || continue
        kill -INT "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    PERF_PID="" PROF_PID=""
    for ((i = ${#BNAMES[@]} - 1; i >= 0; i--)); do
        [ -n "${BPID[${BNAMES[$i]}]:-}" ] && bstop "${BNAMES[$i]}"
    done
    BNAMES=()
}

# A free TCP port on 127.0.0.1 (nothing answers a connect there).
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p i
    for i in $(seq 1 200); do
        p=$((20000 + RANDOM % 40000))
        if ! port_open "$p"; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# ---- /proc sampling ------------------------------------------------------

# cpu_ticks PID: utime + stime of the whole process (all threads), in ticks.
# Fields counted after the ')' that closes the command name.
cpu_ticks() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    s=${s##*) }
    # shellcheck disable=SC2086
    set -- $s
    echo $((${12} + ${13}))
}
ticks_to_s() { calc "$1 / $CLK_TCK"; }

# status_kb PID FIELD: a kB figure from /proc/PID/status (VmRSS, VmHWM, ...).
status_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# mem_kb PID: "VmRSS RssAnon RssFile RssShmem Pss Private" in kB, from
# /proc/PID/status and /proc/PID/smaps_rollup (Private = Private_Clean +
# Private_Dirty: pages no other process maps, i.e. what stopping it frees).
mem_kb() {
    local st sm
    st=$(awk '$1 ~ /^(VmRSS|RssAnon|RssFile|RssShmem):$/ { v[$1] = $2 }
        END { printf "%d %d %d %d", v["VmRSS:"], v["RssAnon:"], v["RssFile:"], v["RssShmem:"] }' \
        "/proc/$1/status" 2>/dev/null) || st="0 0 0 0"
    sm=$(awk '$1 == "Pss:" { p = $2 } $1 ~ /^Private_(Clean|Dirty):$/ { q += $2 }
        END { printf "%d %d", p, q }' "/proc/$1/smaps_rollup" 2>/dev/null) || sm="0 0"
    echo "$st $sm"
}

# ctx_switches PID: voluntary + involuntary context switches of all threads.
ctx_switches() {
    cat /proc/"$1"/task/*/status 2>/dev/null |
        awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ { n += $2 } END { print n + 0 }'
}

# busy_jiffies: machine-wide busy and total jiffies from /proc/stat ("busy total").
busy_jiffies() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat; }

# background_cpu SECONDS: how busy the machine is without us, in % of one
# core (nproc cores = nproc * 100 %), measured over SECONDS before a figure.
background_cpu() {
    local a b
    read -r -a a <<<"$(busy_jiffies)"
    sleep "$1"
    read -r -a b <<<"$(busy_jiffies)"
    calc "int(100 * $(nproc) * (${b[0]} - ${a[0]}) / ((${b[1]} - ${a[1]}) + 0.0001))"
}

# Per-process CPU over a window: cpu_mark NAME... records ticks and the time;
# cpu_pct NAME prints % of one core since the mark, cpu_sec NAME seconds.
declare -A CPU_MARK=()
CPU_MARK_MS=0
BUSY_MARK=(0 0)
cpu_mark() {
    local n
    CPU_MARK_MS=$(now_ms)
    read -r -a BUSY_MARK <<<"$(busy_jiffies)"
    for n in "$@"; do CPU_MARK[$n]=$(cpu_ticks "$(bpid "$n")"); done
}
# machine_pct: the whole machine's CPU use since cpu_mark, in % of one core
# (ours and everyone else's: other work on the machine shows here).
machine_pct() {
    local b
    read -r -a b <<<"$(busy_jiffies)"
    calc "int(100 * $(nproc) * (${b[0]} - ${BUSY_MARK[0]}) / ((${b[1]} - ${BUSY_MARK[1]}) + 0.0001))"
}
cpu_sec() { ticks_to_s "$(($(cpu_ticks "$(bpid "$1")") - ${CPU_MARK[$1]}))"; }
cpu_pct() {
    local el=$(($(now_ms) - CPU_MARK_MS))
    calc "int(100 * ($(cpu_ticks "$(bpid "$1")") - ${CPU_MARK[$1]}) / $CLK_TCK * 1000 / ($el + 0.001))"
}

# bottleneck "name=pct" ...: which side limits a run, from CPU use in % of
# one core. Every part here is single-threaded (a tool's own thread aside),
# so a process near 100 % is saturated; the whole machine (MACHINE_PCT, from
# machine_pct, when set) near nproc * 100 % means the cores are, and then
# other work on the machine takes its share too.
bottleneck() {
    local best="" bestv=0 total=0 kvp n v
    for kvp in "$@"; do
        n=${kvp%%=*}
        v=${kvp#*=}
        total=$((total + v))
        if ((v > bestv)); then best=$n bestv=$v; fi
    done
    local cores=$(($(nproc) * 100)) m=${MACHINE_PCT:-$total} others
    others=$((m > total ? m - total : 0))
    if ((bestv >= 85)); then
        echo "$best is CPU-bound (${bestv}% of a core; machine ${m}% of ${cores}%, other work ~${others}%)"
    elif ((m >= cores * 85 / 100)); then
        echo "the machine is CPU-bound (${m}% of ${cores}%: ours ${total}%, other work ~${others}%; busiest: $best ${bestv}%)"
    else
        echo "no process saturated (busiest: $best ${bestv}% of a core; machine ${m}% of ${cores}%): bound by waiting (protocol windows, round trips, one commit per message, ...)"
    fi
}

# ---- result rows ---------------------------------------------------------

# add_row FIGURE MEASURE VALUE UNIT LIMIT_LABEL LIMIT_VALUE TARGET_TEXT TARGET_SPEC NOTE
# VALUE and LIMIT_VALUE are numbers or "" (n/a). TARGET_SPEC is checked by
# bench/report.py: "ratio>=0.5", "value>=50000", "value<=50", or "".
add_row() {
    local IFS=$'\t'
    local f=("$@")
    while [ ${#f[@]} -lt 9 ]; do f+=(""); done
    f=("${f[@]//$'\t'/ }")
    f=("${f[@]//$'\n'/ }")
    printf '%s\n' "${f[*]}" >>"$RUN_DIR/rows.tsv"
}

# fig_note FIGURE TEXT: a line for the figure's notes (under the table).
fig_note() { printf '%s\t%s\n' "$1" "${2//$'\n'/ }" >>"$RUN_DIR/notes.tsv"; }

# ---- the system under test -----------------------------------------------

# start_broker: mosquitto on a free loopback port (config as the tests use,
# plus a queue large enough never to drop what a bench publishes).
start_broker() {
    local _
    for _ in 1 2 3 4 5; do
        BROKER_PORT=$(free_port) || bdie "no free port"
        cat >"$FIG_DIR/mosquitto.conf" <<CONF
listener $BROKER_PORT 127.0.0.1
allow_anonymous true
persistence false
user $(id -un)
log_dest stderr
log_type error
log_type warning
max_queued_messages 2000000
set_tcp_nodelay true
CONF
        bstart broker mosquitto -c "$FIG_DIR/mosquitto.conf"
        if wait_until 10 "mosquitto on $BROKER_PORT" port_open "$BROKER_PORT"; then
            return 0
        fi
        bstop broker KILL
    done
    bdie "mosquitto did not start"
}

APNS_KEY_ID=KEYID12345
APNS_TEAM_ID=TEAMID6789
APNS_TOPIC=com.example.tidings
APNS_TOKEN=$(printf 'b2%.0s' $(seq 1 32))

# make_certs: the test CA, server certificate and APNs auth key, once a run
# (not part of any figure).
make_certs() {
    [ -f "$RUN_DIR/certs/ca.crt" ] && return 0
    "$SRC/tests/fakes/gen-certs.sh" "$RUN_DIR/certs" "$APNS_KEY_ID" >"$RUN_DIR/certs.log" 2>&1 ||
        { cat "$RUN_DIR/certs.log" >&2; bdie "certificate generation failed"; }
}

# start_fake [RECORD_FILE]: the fake APNs; without a file it runs --no-record.
start_fake() {
    make_certs
    local rec=(--no-record)
    [ -n "${1:-}" ] && rec=(--record "$1")
    rm -f "$FIG_DIR/apns.port"
    bstart fake "$BUILD/tests/fakes/fake-apns" --listen 127.0.0.1:0 \
        --cert "$RUN_DIR/certs/server.crt" --key "$RUN_DIR/certs/server.key" \
        --auth-key "$RUN_DIR/certs/authkey_pub.pem" --key-id "$APNS_KEY_ID" \
        --team-id "$APNS_TEAM_ID" --topic "$APNS_TOPIC" --port-file "$FIG_DIR/apns.port" "${rec[@]}"
    wait_until 10 "fake APNs port file" test -s "$FIG_DIR/apns.port" || bdie "fake APNs did not start"
    APNS_PORT=$(cat "$FIG_DIR/apns.port")
}

# start_hub: the hub on the figure's broker and fake (log level warn: the hub
# logs two INFO lines per delivered notification). Waits until it acks a
# probe batch unless called with "noprobe".
start_hub() {
    mkdir -p "$FIG_DIR/hub"
    cat >"$FIG_DIR/hub.conf" <<CONF
state_dir = $FIG_DIR/hub
log_level = ${BENCH_HUB_LOG_LEVEL:-warn}
broker.host = 127.0.0.1
broker.port = $BROKER_PORT
bootstrap.user = alice
bootstrap.tz = UTC
bootstrap.ios_token = $APNS_TOKEN
bootstrap.ios_app = $APNS_TOPIC
bootstrap.agents = *
apns.url = https://127.0.0.1:$APNS_PORT
apns.key_file = $RUN_DIR/certs/AuthKey_$APNS_KEY_ID.p8
apns.key_id = $APNS_KEY_ID
apns.team_id = $APNS_TEAM_ID
apns.topic = $APNS_TOPIC
apns.ca_file = $RUN_DIR/certs/ca.crt
CONF
    # Experiments: extra settings from the environment (one per line),
    # recorded in the run's machine notes by bench/run.
    [ -n "${BENCH_HUB_CONF:-}" ] && printf '%s\n' "$BENCH_HUB_CONF" >>"$FIG_DIR/hub.conf"
    # BENCH_HUB_WRAP: a command line the hub runs under, e.g.
    # 'valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p' (instructions
    # per notification: unlike CPU time, not moved by other work on the machine).
    # shellcheck disable=SC2086
    bstart hub ${BENCH_HUB_WRAP:-} "$BUILD/hub/tidings-hub" -c "$FIG_DIR/hub.conf"
    [ "${1:-}" = noprobe ] && return 0
    local out
    out=$("$TOOLS/hub_load" --port "$BROKER_PORT" --probe-only --id-prefix probe --timeout 30) ||
        { tail -n 20 "$FIG_DIR/hub.log" >&2; bdie "the hub did not answer a probe batch: $out"; }
}

# hub_sql SQL: read-only query on the hub's store.
hub_sql() { sqlite3 -readonly "$FIG_DIR/hub/hub.db" "$1"; }
hub_pending() { hub_sql "SELECT count(*) FROM notifications WHERE state IN ('queued','sending')"; }
# hub_busy: 1 while anything is queued or being sent (one index probe; cheap to poll).
hub_busy() { hub_sql "SELECT EXISTS (SELECT 1 FROM notifications WHERE state IN ('queued','sending'))"; }

# start_agent UPLINK_PORT [EXTRA_CONFIG_LINE...]: the agent with a fresh
# outbox, local broker = the figure's broker, the uplink at UPLINK_PORT
# (the broker, or a port nothing listens on). Product defaults otherwise.
# AGENT_BIN runs another build of the agent (default: $BUILD's).
# (UP empty: no uplink configured, uplink.host empty.)
start_agent() {
    local up=$1
    shift
    rm -rf "$FIG_DIR/agent"
    mkdir -p "$FIG_DIR/agent"
    {
        cat <<CONF
agent.id = bench-agent
state_dir = $FIG_DIR/agent
log_level = info
local.host = 127.0.0.1
local.port = $BROKER_PORT
uplink.host = ${up:+127.0.0.1}
uplink.port = ${up:-1883}
CONF
        local l
        for l in "$@"; do echo "$l"; done
        [ -n "${BENCH_AGENT_CONF:-}" ] && printf '%s\n' "$BENCH_AGENT_CONF"
    } >"$FIG_DIR/agent.conf"
    bstart agent "${AGENT_BIN:-$BUILD/agent/tidings-agent}" -c "$FIG_DIR/agent.conf"
    AGENT_SOCK="$FIG_DIR/agent/agent.sock"
    wait_until 15 "agent socket" test -S "$AGENT_SOCK" || bdie "agent did not start"
    wait_until 15 "agent connected to the local broker" \
        grep -q "local: connected to" "$FIG_DIR/agent.log" || bdie "agent did not connect"
    if [ "$up" = "$BROKER_PORT" ]; then
        wait_until 15 "agent uplink connected" grep -q "uplink: connected to" "$FIG_DIR/agent.log" ||
            bdie "agent uplink did not connect"
    fi
}

outbox_count() { sqlite3 -readonly "$FIG_DIR/agent/outbox.db" "SELECT count(*) FROM outbox"; }
outbox_nonempty() { sqlite3 -readonly "$FIG_DIR/agent/outbox.db" "SELECT EXISTS (SELECT 1 FROM outbox)"; }
at_least() { local v; v=$("${@:2}") && [ "${v:-0}" -ge "$1" ]; }

# warm_agent: one notification over local MQTT, waited for in the outbox,
# so the agent's subscription is known to be in place before a figure starts
# (for an agent whose uplink is down; the e2e figure waits at the hub).
warm_agent() {
    "$TOOLS/mqtt_rate" --port "$BROKER_PORT" --count 1 --id-prefix warm --timeout 10 >/dev/null ||
        bdie "warm-up publish failed"
    wait_until 15 "warm-up notification in the outbox" at_least 1 outbox_count ||
        bdie "warm-up notification never reached the outbox"
}

# ---- commit counting (rows per commit) -------------------------------------
# Uprobes on every db_commit* function of the agent binary (platform/db.c:
# db_commit, db_commit_quiet, ...), counted with perf stat for one process.
# Falls back to counting loop iterations (epoll_wait calls; every iteration
# commits what it read) when uprobes are not available. COMMITS_HOW says
# which was used, COMMIT_SYMS which functions were counted.
PROBE_OK=""
PROBE_EVENTS=()
COMMIT_SYMS=""
commit_probe_setup() {
    [ -n "$PROBE_OK" ] && return 0
    PROBE_OK=no
    PROBE_EVENTS=()
    command -v perf >/dev/null || return 0
    perf probe -q -d 'tdgbench:*' >/dev/null 2>&1 || true
    local bin="$BUILD/agent/tidings-agent" sym i=0
    COMMIT_SYMS=$(nm "$bin" 2>/dev/null | awk '$2 ~ /^[Tt]$/ && $3 ~ /^db_commit/ { print $3 }' | sort -u | paste -sd' ' -)
    for sym in $COMMIT_SYMS; do
        if perf probe -q -x "$bin" --add "tdgbench:c$i=$sym" >>"$RUN_DIR/perf-probe.log" 2>&1; then
            PROBE_EVENTS+=(-e "tdgbench:c$i")
            i=$((i + 1))
        fi
    done
    if [ ${#PROBE_EVENTS[@]} -gt 0 ]; then
        PROBE_OK=uprobe
    elif perf stat -e 'syscalls:sys_enter_epoll_wait' -- true >/dev/null 2>&1; then
        PROBE_OK=epoll
        PROBE_EVENTS=(-e 'syscalls:sys_enter_epoll_wait')
    fi
}
# (Figures run in subshells, so the caller's PROBE_OK may not know of a
# probe a figure added: remove by name whenever perf is there.)
commit_probe_cleanup() {
    if command -v perf >/dev/null; then
        perf probe -q -d 'tdgbench:*' >/dev/null 2>&1 || true
    fi
}
# commit_count_start PID ... commit_count_stop: sets COMMITS to the count
# ("" when nothing could count). Not in a $(...): perf must be waited for by
# the shell that started it, and it writes its count when it exits.
commit_count_start() {
    commit_probe_setup
    COMMITS_HOW=$PROBE_OK
    COMMITS=""
    [ ${#PROBE_EVENTS[@]} -gt 0 ] || return 0
    rm -f "$FIG_DIR/perf-commit.csv"
    perf stat -x, "${PROBE_EVENTS[@]}" -p "$1" -o "$FIG_DIR/perf-commit.csv" >/dev/null 2>&1 &
    PERF_PID=$!
    sleep 0.3 # let perf attach before the load starts
}
commit_count_stop() {
    COMMITS=""
    [ -n "${PERF_PID:-}" ] || return 0
    kill -INT "$PERF_PID" 2>/dev/null || true
    wait "$PERF_PID" 2>/dev/null || true
    PERF_PID=""
    COMMITS=$(awk -F, '$1 ~ /^[0-9]+$/ { n += $1; seen = 1 } END { if (seen) print n }' \
        "$FIG_DIR/perf-commit.csv" 2>/dev/null)
}
# commits_how: how COMMITS was counted, for a note.
commits_how() {
    case ${COMMITS_HOW:-no} in
    uprobe) echo "commits (perf uprobes on $COMMIT_SYMS)" ;;
    epoll) echo "loop iterations (perf, epoll_wait): an upper bound on commits" ;;
    *) echo "not counted (no perf)" ;;
    esac
}

# ---- profiles (--profile) ----------------------------------------------------
# profile_start NAME LABEL ... profile_stop: a flat perf profile (999 Hz,
# user and kernel) of one process while a load runs; the top symbols go to
# $RUN_DIR/profiles/LABEL.txt, which bench/run copies beside the results.
PROF_PID=""
profile_start() {
    [ "${PROFILE:-0}" = 1 ] || return 0
    command -v perf >/dev/null || return 0
    mkdir -p "$RUN_DIR/profiles"
    PROF_LABEL=$2
    # BENCH_PERF_ARGS: extra perf record options, e.g. '--call-graph dwarf'
    # (the data stays in the run directory with --keep).
    # shellcheck disable=SC2086
    perf record -q -F 999 ${BENCH_PERF_ARGS:-} -p "$(bpid "$1")" -o "$FIG_DIR/perf-$2.data" \
        >/dev/null 2>&1 &
    PROF_PID=$!
    sleep 0.3
}
profile_stop() {
    [ -n "$PROF_PID" ] || return 0
    kill -INT "$PROF_PID" 2>/dev/null || true
    wait "$PROF_PID" 2>/dev/null || true
    PROF_PID=""
    {
        echo "== $PROF_LABEL: by object"
        perf report -q -i "$FIG_DIR/perf-$PROF_LABEL.data" --stdio --no-children \
            --sort dso 2>/dev/null | grep -v '^$' | head -n 10
        echo "== $PROF_LABEL: top symbols"
        perf report -q -i "$FIG_DIR/perf-$PROF_LABEL.data" --stdio --no-children \
            --sort dso,sym 2>/dev/null | grep -v '^$' | head -n 30
        echo
    } >"$RUN_DIR/profiles/$PROF_LABEL.txt"
}
