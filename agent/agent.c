/* agent.c - wiring of ingest, outbox, uplink, policy and local delivery on
 * one loop (see agent.h). */
#include "agent.h"

#include "deliver.h"
#include "error.h"
#include "ingest.h"
#include "localq.h"
#include "log.h"
#include "memc.h"
#include "mqtt.h"
#include "outbox.h"
#include "policy.h"
#include "receipts.h"
#include "socket.h"
#include "tz.h"
#include "uplink.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#define OFF(f) offsetof(struct agent_config, f), sizeof(((struct agent_config *)0)->f)

static const char *const log_levels[] = {"error", "warn", "info", "debug", NULL};
static const char *const sync_modes[] = {"normal", "full", NULL};
/* In the order of enum outbox_full_policy. */
static const char *const full_policies[] = {"reject", "drop_oldest_lowest", NULL};

const struct config_entry agent_config_table[] = {
    {"agent.id", CONFIG_STRING, "agent1", OFF(id),
     "This agent's id: one MQTT topic level of [A-Za-z0-9._-]", NULL, 0, 0},
    {"state_dir", CONFIG_STRING, "/var/lib/tidings", OFF(state_dir),
     "Directory for the outbox database (created 0700)", NULL, 0, 0},
    {"log_level", CONFIG_ENUM, "info", OFF(log_level), "Log level", log_levels, 0, 0},
    {"local.host", CONFIG_STRING, "127.0.0.1", OFF(local_host),
     "Local broker that IoT devices publish to", NULL, 0, 0},
    {"local.port", CONFIG_INT, "1883", OFF(local_port), "Local broker port", NULL, 1, 65535},
    {"local.topic", CONFIG_STRING, "tidings/v1/local/notify", OFF(local_topic),
     "Topic (filter) notifications arrive on", NULL, 0, 0},
    {"local.username", CONFIG_STRING, "", OFF(local_username), "Local broker user", NULL, 0, 0},
    {"local.password", CONFIG_STRING, "", OFF(local_password), "Local broker password", NULL, 0,
     0},
    {"local.session_expiry", CONFIG_DURATION, "7d", OFF(local_session_expiry_ms),
     "How long the local broker keeps queueing for a stopped agent (0: clean sessions; the "
     "local broker's max_queued_messages bounds the queue)",
     NULL, 0, 0},
    {"local.keepalive", CONFIG_DURATION, "0", OFF(local_keepalive_ms),
     "MQTT keepalive to the local broker (0: off; it runs on this box, so a dead broker closes "
     "the socket and an idle agent is never woken). Set it (>= 5s) when local.host is another "
     "machine",
     NULL, 0, 65535000},
    {"local.receive_max", CONFIG_INT, "1000", OFF(local_receive_max),
     "QoS 1 notifications the local broker may send before the agent acknowledges them (MQTT 5 "
     "Receive Maximum). The agent PUBACKs only after its commit, so this bounds one commit's "
     "batch (mosquitto may briefly send up to twice as many when the session resumes)",
     NULL, 1, 65535},
    {"uplink.host", CONFIG_STRING, "127.0.0.1", OFF(uplink_host),
     "Central broker the hub listens on (empty: no uplink; local delivery only, notifications "
     "for the hub stay in the outbox)",
     NULL, 0, 0},
    {"uplink.port", CONFIG_INT, "1883", OFF(uplink_port), "Central broker port", NULL, 1, 65535},
    {"uplink.username", CONFIG_STRING, "", OFF(uplink_username), "Central broker user", NULL, 0,
     0},
    {"uplink.password", CONFIG_STRING, "", OFF(uplink_password), "Central broker password", NULL,
     0, 0},
    {"uplink.cafile", CONFIG_STRING, "", OFF(uplink_cafile),
     "CA certificate for TLS to the central broker (empty: no TLS)", NULL, 0, 0},
    {"uplink.certfile", CONFIG_STRING, "", OFF(uplink_certfile), "Client certificate (TLS)",
     NULL, 0, 0},
    {"uplink.keyfile", CONFIG_STRING, "", OFF(uplink_keyfile), "Client key (TLS)", NULL, 0, 0},
    {"uplink.keepalive", CONFIG_DURATION, "0", OFF(uplink_keepalive_ms),
     "MQTT keepalive asked of the central broker (0: none, so an idle agent is never woken; "
     "an MQTT 5 broker may impose its own, e.g. mosquitto's max_keepalive, and the agent "
     "follows it); else one PINGREQ/PINGRESP per period when idle (two wake-ups), at least "
     "5s, and the broker marks the agent offline after 1.5x this without a packet",
     NULL, 0, 65535000},
    {"uplink.busy_keepalive", CONFIG_DURATION, "60s", OFF(uplink_busy_keepalive_ms),
     "While batches await the broker's PUBACK: a PINGREQ after this long without a packet "
     "from the broker, and a reconnect if its PINGRESP does not come within as long (finds a "
     "broker that hangs with its socket open; no timer when nothing is in flight; 0: off)",
     NULL, 0, 65535000},
    {"uplink.tcp_keepalive", CONFIG_DURATION, "30s", OFF(uplink_tcp_keepalive_ms),
     "TCP keepalive idle time on the uplink (probes every third of it, 3 of them; also the "
     "TCP_USER_TIMEOUT for unacknowledged data): the kernel finds a dead link without waking "
     "the agent (0: off)",
     NULL, 0, 86400000},
    {"uplink.reconnect_min", CONFIG_DURATION, "500ms", OFF(reconnect_min_ms),
     "First reconnect backoff (full jitter)", NULL, 1, 3600000},
    {"uplink.reconnect_max", CONFIG_DURATION, "60s", OFF(reconnect_max_ms),
     "Reconnect backoff cap", NULL, 1, 86400000},
    {"uplink.batch_max", CONFIG_INT, "256", OFF(batch_max), "Notifications per batch", NULL, 1,
     1024},
    {"uplink.batch_bytes", CONFIG_SIZE, "256K", OFF(batch_bytes), "Bytes per batch", NULL, 8192,
     16 * 1024 * 1024},
    {"uplink.window", CONFIG_INT, "8", OFF(window), "Unacknowledged batches at once", NULL, 1,
     64},
    {"uplink.ack_timeout", CONFIG_DURATION, "30s", OFF(ack_timeout_ms),
     "Resend a batch the hub has not acked within this time", NULL, 100, 3600000},
    {"uplink.require_hub", CONFIG_BOOL, "true", OFF(require_hub),
     "Send only while a hub's retained status (tidings/v1/hubs/+/status) says online; the "
     "broker ACL must let the agent read it",
     NULL, 0, 0},
    {"uplink.drain_rate", CONFIG_INT, "0", OFF(drain_rate),
     "Notifications per second sent to the hub, e.g. to drain a backlog gently after an "
     "outage (0: as fast as acks allow); critical ones are never held back by it",
     NULL, 0, 10000000},
    {"outbox.synchronous", CONFIG_ENUM, "normal", OFF(synchronous),
     "normal survives a killed process; full also survives power loss (slower)", sync_modes, 0,
     0},
    {"outbox.max_rows", CONFIG_INT, "2000000", OFF(outbox_max_rows),
     "Outbox budget in notifications; new ones are rejected beyond it (0: none)", NULL, 0,
     INT64_MAX},
    {"outbox.max_bytes", CONFIG_SIZE, "1G", OFF(outbox_max_bytes),
     "Outbox budget in bytes (0: none)", NULL, 0, 0},
    {"outbox.full_policy", CONFIG_ENUM, "reject", OFF(outbox_full_policy),
     "Over budget: reject new notifications, or drop_oldest_lowest: drop the oldest of the "
     "lowest priority <= the new one's (recorded, counted in status queue.dropped)",
     full_policies, 0, 0},
    {"outbox.cache_size", CONFIG_SIZE, "128K", OFF(outbox_cache_size),
     "SQLite page cache of the outbox (PRAGMA cache_size); it is written at its end and read at "
     "its front, so a small cache keeps memory flat however deep the queue",
     NULL, 32 * 1024, 1024 * 1024 * 1024},
    {"outbox.reset_corrupt", CONFIG_BOOL, "false", OFF(reset_corrupt_db),
     "At start, move an outbox.db or policy.db that is not a database or is corrupt (and its "
     "-wal/-shm) aside to <name>.corrupt-<unix time> and start fresh (also: "
     "--reset-corrupt-db); false: refuse to start",
     NULL, 0, 0},
    {"socket.path", CONFIG_STRING, "", OFF(socket_path),
     "Unix socket for local programs and the CLI, created 0600 (empty: <state_dir>/agent.sock)",
     NULL, 0, 0},
    {"socket.max_clients", CONFIG_INT, "64", OFF(socket_max_clients),
     "Socket connections at once; one more is answered busy and closed", NULL, 1, 4096},
    {"socket.write_timeout", CONFIG_DURATION, "10s", OFF(socket_write_timeout_ms),
     "Disconnect a socket client that reads none of its replies for this long", NULL, 100,
     3600000},
    DELIVER_CONFIG_ENTRIES(struct agent_config, deliver),
    {"deliver.max_rows", CONFIG_INT, "10000", OFF(local_max_rows),
     "Local delivery queue budget in rows (one per notification and backend, every state); "
     "at the budget the oldest finished rows go first, then new local notifications are "
     "rejected",
     NULL, 1, 100000000},
    {"deliver.retention", CONFIG_DURATION, "7d", OFF(local_retention_ms),
     "How long the outcome of a finished local delivery stays queryable (status --id)", NULL,
     60000, 31536000000},
    {"deliver.retry_min", CONFIG_DURATION, "1s", OFF(local_retry_min_ms),
     "First backoff when a backend answers retry or unavailable (capped full jitter)", NULL,
     10, 3600000},
    {"deliver.retry_max", CONFIG_DURATION, "5m", OFF(local_retry_max_ms),
     "Backoff cap for local delivery retries", NULL, 10, 86400000},
    {"deliver.retry_for", CONFIG_DURATION, "1d", OFF(local_retry_for_ms),
     "A local delivery still answered retry/unavailable this long after acceptance fails "
     "(0: until its ttl)",
     NULL, 0, 31536000000},
    {"receipts.max_rows", CONFIG_INT, "10000", OFF(receipts_max_rows),
     "Hub receipts kept (the last outcome per notification id, for status --id); about the "
     "newest this many",
     NULL, 1, 10000000},
    {"receipts.retention", CONFIG_DURATION, "7d", OFF(receipts_retention_ms),
     "How long a hub receipt stays queryable after it arrived", NULL, 60000, 31536000000},
    {"policy.local_user", CONFIG_STRING, "", OFF(policy_local_user),
     "The user whose preferences (the hub's snapshot) apply to \"to\":\"local\" "
     "notifications (empty: none, delivered without preferences)",
     NULL, 0, 0},
};
const size_t agent_config_table_len = sizeof(agent_config_table) / sizeof(agent_config_table[0]);

/* How long the local queue's counted breakdown is reused: counting walks an
 * index (bounded by deliver.max_rows), and a client asking for status in a
 * tight loop must not stall the loop with it. The outbox's breakdown is kept
 * in memory (outbox_get_stats), never counted. */
#define STATUS_COUNT_TTL_MS 1000

/* After a burst of work (notifications committed, rows acked), once the
 * agent has been quiet this long, freed heap is handed back to the system
 * (malloc_trim): glibc keeps free chunks between live ones, which after
 * filling 1M rows is about 200 KiB of RSS (docs/bench.md, agent-footprint).
 * One timer per burst, none while idle. */
#define TRIM_QUIET_MS 2000

struct agent {
    loop_t *loop;
    struct agent_config cfg;
    char db_path[512];
    char sock_path[108];
    int64_t started_ms;
    outbox_t *ob;
    uplink_t *up;
    mqtt_t *local;
    socket_server_t *sock;
    struct ingest_stats ist; /* the MQTT way in; the socket counts its own */
    unsigned mqtt_pending;   /* MQTT adds not yet carried by an explicit commit */
    uint64_t mqtt_reconnects; /* local connection closed after a failed commit */
    /* local delivery and the offline preferences */
    char policy_path[512];
    policy_store_t *ps;
    policy_snapshot_t *snap; /* in force; NULL: none received yet */
    int64_t policy_applied_ms;
    uint64_t policy_refused;
    deliver_t *dl;
    localq_t *lq;
    receipts_t *rc;          /* the hub's receipts (status --id) */
    struct ingest_stats down; /* notifications the hub sent down */
    unsigned down_pending;
    uint64_t lcounted_at_ms;
    bool lcounted;
    int lcount_rc;
    struct localq_counts lcounts;
    bool commit_failed_logged; /* in a commit outage, logged once */
    uint64_t commit_failures;  /* failed commits in this outage */
    /* The MQTT QoS 1 ack delay: the PUBACK for a local notification is
     * held until it is committed at the end of the loop iteration (manual
     * acks). Measured from the first message read to the commit that
     * releases its PUBACK. */
    uint64_t window_start_us;
    uint64_t window_max_us, window_sum_us, window_commits;
    /* heap trim after a burst of work (TRIM_QUIET_MS) */
    uint64_t trim_timer;
    uint64_t last_work_ms;
    uint64_t work_mark; /* outbox accepted + rows at the last look */
};

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int agent_socket_path(const struct agent_config *cfg, char *buf, size_t len)
{
    size_t max = sizeof(((struct sockaddr_un *)0)->sun_path);
    int n = cfg->socket_path[0] ? snprintf(buf, len, "%s", cfg->socket_path)
                                : snprintf(buf, len, "%s/agent.sock", cfg->state_dir);
    if (n < 0 || (size_t)n >= len || (size_t)n >= max) {
        return -ENAMETOOLONG;
    }
    return 0;
}

/*
 * Once per loop iteration: make what was read durable with one commit, answer
 * the socket clients, then sync. Socket sends are added here, right before
 * the commit, so their replies state exactly this commit's outcome; MQTT
 * messages were added as they arrived (an ack or a take in between may
 * already have committed some of them).
 */
static void on_trim(loop_t *loop, uint64_t timer_id, void *arg)
{
    (void)timer_id;
    agent_t *a = arg;
    a->trim_timer = 0;
    uint64_t quiet = loop_now_ms(loop) - a->last_work_ms;
    if (quiet < TRIM_QUIET_MS) {
        /* more work came since the timer was set: wait for its end */
        a->trim_timer = loop_timer_add(loop, TRIM_QUIET_MS - quiet, on_trim, a);
        return;
    }
    /* The blocks memc keeps for SQLite's next statement run (up to 128
     * KiB) go back to malloc first, so that the trim can return their
     * pages: after a burst they are what keeps it from finding whole free
     * pages (docs/agent.md, "Memory"). The next burst takes them from
     * malloc again. */
    memc_trim();
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

/* Note work done in this iteration (rows committed or deleted) and make
 * sure a trim follows once it is over. Keepalives and status requests are
 * not work: an idle agent sets no timer. The first look after a start with
 * rows queued counts as work too: opening the outbox read the whole table. */
static void note_work(agent_t *a)
{
    struct outbox_stats os;
    outbox_get_stats(a->ob, &os);
    uint64_t mark = os.accepted + os.rows;
    if (mark == a->work_mark) {
        return;
    }
    a->work_mark = mark;
    a->last_work_ms = loop_now_ms(a->loop);
    if (!a->trim_timer) {
        a->trim_timer = loop_timer_add(a->loop, TRIM_QUIET_MS, on_trim, a);
    }
}

static void before_sleep(loop_t *loop, void *arg)
{
    (void)loop;
    agent_t *a = arg;
    unsigned from_socket = a->sock ? socket_server_store(a->sock) : 0;
    unsigned n = outbox_pending(a->ob) + localq_pending(a->lq);
    /* Also closes a transaction that only saw duplicates (nothing pending),
     * and carries the local queue's state changes. */
    int rc = outbox_commit(a->ob);
    if (rc < 0) {
        unsigned rest = n > from_socket ? n - from_socket : 0;
        unsigned lost_down = rest < a->down_pending ? rest : a->down_pending;
        rest -= lost_down;
        unsigned lost = rest < a->mqtt_pending ? rest : a->mqtt_pending;
        a->ist.errors += lost;
        a->ist.accepted -= lost <= a->ist.accepted ? lost : a->ist.accepted;
        a->down.errors += lost_down;
        a->down.accepted -= lost_down <= a->down.accepted ? lost_down : a->down.accepted;
        /* Once per outage (disk full, I/O error): the MQTT way in has no
         * reply to carry it, and a log line per commit would fill the disk
         * the error is about. */
        a->commit_failures++;
        if (!a->commit_failed_logged) {
            LOG_ERROR("agent", "commit of %u notifications failed: %s; new notifications are "
                      "not accepted (socket: \"storage\" replies; MQTT: not acknowledged, "
                      "counted as errors, the local broker sends them again after a reconnect) "
                      "until a commit succeeds; what is stored stays and drains",
                      n, tdg_strerror(rc));
            a->commit_failed_logged = true;
        }
        /* What this iteration read over MQTT is not stored: never PUBACK
         * it. Closing the connection makes the broker resend it (the
         * session is persistent) once we are back, after the backoff. */
        if (a->local && mqtt_held_acks(a->local) > 0) {
            a->mqtt_reconnects++;
            mqtt_reconnect(a->local);
        }
    } else if (a->commit_failed_logged && n > 0) {
        LOG_INFO("agent", "commits work again: committed %u after %llu failed commits", n,
                 (unsigned long long)a->commit_failures);
        a->commit_failed_logged = false;
        a->commit_failures = 0;
    } else if (n > 0) {
        LOG_DEBUG("agent", "committed %u (socket %u)", n, from_socket);
    }
    if (rc == 0 && a->local) {
        /* Durable now: PUBACK what was read (sent before the loop sleeps,
         * by the client's hook, registered after this one). */
        mqtt_release_acks(a->local);
    }
    a->mqtt_pending = 0;
    a->down_pending = 0;
    if (a->window_start_us) {
        uint64_t w = now_us() - a->window_start_us;
        a->window_max_us = w > a->window_max_us ? w : a->window_max_us;
        a->window_sum_us += w;
        a->window_commits++;
        a->window_start_us = 0;
    }
    if (a->sock) {
        socket_server_committed(a->sock, rc);
    }
    if (a->up) {
        uplink_pump(a->up);
    }
    note_work(a);
}

/* Store a prepared notification in the open transaction: "to":"local" in
 * the local delivery queue (it never goes to the hub), everything else in
 * the outbox. ingest_queue's results, counted in st (may be NULL). */
static int agent_store(agent_t *a, const char *source, const struct ingest_item *it,
                       struct ingest_stats *st)
{
    if (!it->local) {
        return ingest_queue(a->ob, source, it, st);
    }
    int rc = localq_add(a->lq, "local", it);
    ingest_count(source, it->id, rc, st);
    return rc;
}

/* A notification from the local broker: stored in the open transaction.
 * Its PUBACK is held (manual_ack) until before_sleep has committed it. */
static void on_local_message(void *arg, const struct mqtt_msg *msg)
{
    agent_t *a = arg;
    struct ingest_result res;
    struct ingest_item it;
    if (!a->window_start_us && msg->qos > 0) {
        a->window_start_us = now_us();
    }
    if (ingest_prepare("mqtt", msg->payload, msg->len, &it, &res, &a->ist) == 0) {
        if (agent_store(a, "mqtt", &it, &a->ist) == 0) {
            a->mqtt_pending++;
        }
        ingest_item_free(&it);
    }
}

/* --- from the hub: preferences and notifications for this box ----------- */

static void on_policy(void *arg, const char *payload, size_t len)
{
    agent_t *a = arg;
    policy_snapshot_t *s = NULL;
    bool changed = false;
    struct policy_error e;
    memset(&e, 0, sizeof(e));
    long long cur = a->snap ? (long long)policy_snapshot_version(a->snap) : -1;
    int rc = policy_store_accept(a->ps, payload, len, clock_wall_ms(), &s, &changed, &e);
    if (rc == TDG_EINVAL_INPUT || rc == TDG_ETOOBIG) {
        a->policy_refused++;
        if (rc == TDG_ETOOBIG) {
            snprintf(e.detail, sizeof(e.detail), "over %d bytes", POLICY_SNAPSHOT_MAX);
        }
        LOG_WARN("policy", "snapshot refused (%zu bytes): field=%s: %s; keeping version=%lld",
                 len, e.field[0] ? e.field : "\"\"", e.detail, cur);
        return;
    }
    if (rc < 0) {
        LOG_ERROR("policy", "cannot store the snapshot: %s; keeping version=%lld",
                  tdg_strerror(rc), cur);
        return;
    }
    if (!changed && a->snap) {
        /* The retained message again after a reconnect: nothing new. */
        LOG_DEBUG("policy", "snapshot version=%lld unchanged", cur);
        policy_snapshot_free(s);
        return;
    }
    policy_snapshot_t *old = a->snap;
    a->snap = s;
    a->policy_applied_ms = clock_wall_ms();
    localq_set_policy(a->lq, s);
    policy_snapshot_free(old);
    LOG_INFO("policy", "snapshot version=%lld users=%zu applied (was %lld, %zu bytes)",
             (long long)policy_snapshot_version(s), policy_snapshot_user_count(s), cur, len);
}

/* One notification sent down: into the local queue like a "to":"local"
 * one, whatever its "to" (the hub chose this box), deduplicated by id. */
static void down_one(agent_t *a, const char *buf, size_t len)
{
    struct ingest_item it;
    struct ingest_result res;
    if (ingest_prepare_ex("down", buf, len, INGEST_KEEP_ACCEPTED, &it, &res, &a->down) < 0) {
        return;
    }
    int rc = localq_add(a->lq, "down", &it);
    ingest_count("down", it.id, rc, &a->down);
    if (rc == 0) {
        a->down_pending++;
    }
    ingest_item_free(&it);
}

static void down_item(struct cJSON *item, void *arg)
{
    agent_t *a = arg;
    char *txt = cJSON_PrintUnformatted(item);
    if (!txt) {
        a->down.received++;
        a->down.errors++;
        return;
    }
    down_one(a, txt, strlen(txt));
    free(txt);
}

/* A message on .../down: one notification, or a batch envelope shaped like
 * "up" ({"v":1,"agent":..,"items":[..]}, an object with "items"); each item
 * is checked on its own. */
static void on_down(void *arg, const char *payload, size_t len)
{
    agent_t *a = arg;
    cJSON *probe = cJSON_ParseWithLength(payload, len);
    bool batch = cJSON_IsObject(probe) && cJSON_GetObjectItemCaseSensitive(probe, "items");
    cJSON_Delete(probe);
    if (!batch) {
        down_one(a, payload, len);
        return;
    }
    struct proto_error e;
    int rc = proto_batch_parse(payload, len, NULL, 0, down_item, a, &e);
    if (rc < 0) {
        a->down.received++;
        a->down.invalid++;
        LOG_WARN("ingest", "down: rejected batch (%zu bytes): %s field=%s %s", len,
                 proto_reason_code(e.reason), e.field[0] ? e.field : "-", e.detail);
    }
}

/* One entry of a receipts message: stored, or logged (the first bad one of
 * a message, with its field) and counted. */
struct receipts_round {
    agent_t *a;
    int64_t now_ms;
    unsigned n, bad, failed;
    struct proto_error first_bad;
};

static void receipt_one(void *arg, const struct proto_receipt *r, const struct proto_error *bad)
{
    struct receipts_round *rr = arg;
    rr->n++;
    if (!r) {
        if (rr->bad++ == 0) {
            rr->first_bad = *bad;
        }
        return;
    }
    if (receipts_put(rr->a->rc, r, rr->now_ms) < 0) {
        rr->failed++;
        return;
    }
    LOG_DEBUG("receipts", "id=%s state=%s reason=%s channels=%u", r->id, r->state,
              r->reason[0] ? r->reason : "-", r->nch);
}

/* A message on .../receipts: every valid entry is kept (committed with
 * this round); bad entries are ignored, logged once per message. */
static void on_receipts(void *arg, const char *payload, size_t len)
{
    agent_t *a = arg;
    struct receipts_round rr = {.a = a, .now_ms = clock_wall_ms()};
    struct proto_error e;
    memset(&e, 0, sizeof(e));
    int rc = proto_receipts_parse(payload, len, receipt_one, &rr, &e);
    if (rc < 0) {
        receipts_count_invalid(a->rc, 1);
        LOG_WARN("receipts", "refused a receipts message (%zu bytes): %s field=%s %s", len,
                 proto_reason_code(e.reason), e.field[0] ? e.field : "-", e.detail);
        return;
    }
    if (rr.bad > 0) {
        receipts_count_invalid(a->rc, rr.bad);
        LOG_WARN("receipts", "ignored %u of %u receipts: first: field=%s %s: %s", rr.bad, rr.n,
                 rr.first_bad.field, proto_reason_code(rr.first_bad.reason),
                 rr.first_bad.detail);
    }
    if (rr.n > rr.bad + rr.failed) {
        receipts_prune(a->rc, rr.now_ms);
    }
}

static void on_receipt(void *arg, const struct deliver_receipt *r)
{
    agent_t *a = arg;
    if (a->lq) {
        localq_receipt(a->lq, r);
    }
}

static void on_local_connect(void *arg)
{
    agent_t *a = arg;
    mqtt_subscribe(a->local, a->cfg.local_topic, 1);
}

/* --- status ---------------------------------------------------------------- */

static bool add_time(cJSON *o, const char *key, int64_t ms)
{
    char key_ms[48];
    snprintf(key_ms, sizeof(key_ms), "%s_ms", key);
    if (ms <= 0) {
        return cJSON_AddNullToObject(o, key) && cJSON_AddNullToObject(o, key_ms);
    }
    char buf[32];
    proto_format_rfc3339(ms, buf, sizeof(buf));
    return cJSON_AddStringToObject(o, key, buf) && cJSON_AddNumberToObject(o, key_ms, (double)ms);
}

static bool add_num(cJSON *o, const char *key, uint64_t v)
{
    return cJSON_AddNumberToObject(o, key, (double)v) != NULL;
}

static bool add_ingest(cJSON *parent, const char *key, const struct ingest_stats *st)
{
    cJSON *o = cJSON_AddObjectToObject(parent, key);
    return o && add_num(o, "received", st->received) && add_num(o, "accepted", st->accepted) &&
           add_num(o, "duplicates", st->duplicates) && add_num(o, "invalid", st->invalid) &&
           add_num(o, "full", st->full) && add_num(o, "errors", st->errors);
}

/* "local": the local delivery queue; "policy": the snapshot in force. */
static bool add_local(agent_t *a, cJSON *root)
{
    uint64_t now = loop_now_ms(a->loop);
    if (!a->lcounted || now - a->lcounted_at_ms >= STATUS_COUNT_TTL_MS) {
        a->lcount_rc = localq_count(a->lq, &a->lcounts);
        a->lcounted = true;
        a->lcounted_at_ms = now;
    }
    struct localq_stats ls;
    localq_get_stats(a->lq, &ls);
    cJSON *l = cJSON_AddObjectToObject(root, "local");
    bool ok = l && add_num(l, "rows", ls.rows) && add_num(l, "max_rows", ls.max_rows);
    if (ok && a->lcount_rc == 0) {
        for (int i = 0; i < LOCALQ_STATE_COUNT && ok; i++) {
            ok = add_num(l, localq_state_name((enum localq_state)i), a->lcounts.by_state[i]);
        }
        ok = ok && add_num(l, "held", a->lcounts.held);
    } else if (ok) {
        ok = cJSON_AddStringToObject(l, "error", tdg_strerror(a->lcount_rc)) != NULL;
    }
    ok = ok && add_num(l, "in_flight", ls.in_flight) &&
         add_num(l, "rejected_full", ls.rejected_full) && add_num(l, "pruned", ls.pruned) &&
         add_num(l, "pruned_early", ls.pruned_early) && add_time(l, "next_due", ls.next_due_ms);
    cJSON *be = ok ? cJSON_AddArrayToObject(l, "backends") : NULL;
    ok = be != NULL;
    for (size_t i = 0; ok && i < deliver_count(a->dl); i++) {
        cJSON *n = cJSON_CreateString(deliver_name(a->dl, i));
        ok = n && cJSON_AddItemToArray(be, n);
        if (!ok) {
            cJSON_Delete(n);
        }
    }
    cJSON *p = ok ? cJSON_AddObjectToObject(root, "policy") : NULL;
    ok = p != NULL;
    if (ok && a->snap) {
        ok = add_num(p, "version", (uint64_t)policy_snapshot_version(a->snap)) &&
             add_num(p, "users", policy_snapshot_user_count(a->snap));
    } else if (ok) {
        ok = cJSON_AddNullToObject(p, "version") && cJSON_AddNullToObject(p, "users");
    }
    return ok && add_time(p, "applied", a->policy_applied_ms) &&
           cJSON_AddStringToObject(p, "local_user", a->cfg.policy_local_user) &&
           add_num(p, "refused", a->policy_refused);
}

/* The status object (docs/agent.md, "Status"). Built after the round's
 * commit, so a client's own earlier sends are counted. NULL on ENOMEM. */
static cJSON *agent_status(void *arg)
{
    agent_t *a = arg;
    struct outbox_stats os = {0};
    struct uplink_stats us = {0};
    struct socket_stats ss = {0};
    outbox_get_stats(a->ob, &os);
    if (a->up) {
        uplink_get_stats(a->up, &us);
    }
    if (a->sock) {
        socket_server_get_stats(a->sock, &ss);
    }
    int64_t now = clock_wall_ms();
    int64_t oldest = 0;
    int qrc = outbox_oldest(a->ob, &oldest);

    /* Children are attached as they are made: one delete frees everything. */
    cJSON *root = cJSON_CreateObject();
    bool ok = root && cJSON_AddStringToObject(root, "agent", a->cfg.id) &&
              cJSON_AddStringToObject(root, "version", TIDINGS_VERSION) &&
              add_time(root, "now", now) && add_time(root, "started", a->started_ms);

    cJSON *up = ok ? cJSON_AddObjectToObject(root, "uplink") : NULL;
    ok = up && cJSON_AddBoolToObject(up, "configured", a->up != NULL) &&
         cJSON_AddBoolToObject(up, "connected", us.connected) &&
         add_time(up, "since", us.since_ms) && add_time(up, "last_sync", us.last_ack_ms) &&
         add_num(up, "batches_sent", us.batches_sent) && add_num(up, "rows_sent", us.rows_sent) &&
         add_num(up, "acked", us.acked) && add_num(up, "hub_rejected", us.rejected) &&
         add_num(up, "ack_timeouts", us.timeouts);

    cJSON *q = ok ? cJSON_AddObjectToObject(root, "queue") : NULL;
    ok = q && add_num(q, "total", os.rows) &&
         add_num(q, "queued", os.rows >= os.inflight ? os.rows - os.inflight : 0) &&
         add_num(q, "in_flight", os.inflight) && add_num(q, "bytes", os.bytes) &&
         add_num(q, "rejected_full", os.rejected_full) && add_num(q, "dropped", os.dropped) &&
         add_num(q, "dropped_records", os.dropped_rows);
    if (ok && qrc == 0) {
        static const char *const names[4] = {"low", "normal", "high", "critical"};
        cJSON *byp = cJSON_AddObjectToObject(q, "by_priority");
        ok = byp != NULL;
        for (int p = 3; p >= 0 && ok; p--) {
            ok = add_num(byp, names[p], os.by_priority[p]);
        }
        ok = ok && (oldest > 0 ? cJSON_AddNumberToObject(q, "oldest_age_ms",
                                                         (double)(now > oldest ? now - oldest : 0))
                               : cJSON_AddNullToObject(q, "oldest_age_ms"));
    } else if (ok) {
        /* The counters above still hold; say why the breakdown is missing. */
        ok = cJSON_AddNullToObject(q, "by_priority") &&
             cJSON_AddNullToObject(q, "oldest_age_ms") &&
             cJSON_AddStringToObject(q, "error", tdg_strerror(qrc));
    }

    cJSON *ing = ok ? cJSON_AddObjectToObject(root, "ingest") : NULL;
    ok = ing && add_ingest(ing, "mqtt", &a->ist) && add_ingest(ing, "socket", &ss.in) &&
         add_ingest(ing, "down", &a->down);
    ok = ok && add_local(a, root);
    if (ok && a->rc) {
        struct receipts_stats rs;
        receipts_get_stats(a->rc, &rs);
        cJSON *ro = cJSON_AddObjectToObject(root, "receipts");
        ok = ro && add_num(ro, "received", rs.received) && add_num(ro, "stored", rs.stored) &&
             add_num(ro, "invalid", rs.invalid) && add_num(ro, "pruned", rs.pruned);
    }

    cJSON *so = ok ? cJSON_AddObjectToObject(root, "socket") : NULL;
    ok = so && cJSON_AddStringToObject(so, "path", a->sock_path) &&
         add_num(so, "clients", ss.clients) && add_num(so, "max_clients", ss.max_clients) &&
         add_num(so, "connections", ss.connections) &&
         add_num(so, "refused_busy", ss.refused_busy) &&
         add_num(so, "slow_disconnects", ss.slow_disconnects);
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

static int agent_queue(void *arg, const struct ingest_item *it)
{
    agent_t *a = arg;
    return agent_store(a, "socket", it, NULL);
}

/* What became of notification id, from every place the agent knows:
 * {"local":[..] (local delivery rows, maybe empty), "outbox": null or
 * {"state":"queued"|"in_flight"|"dropped",..}, "hub": null or the stored
 * receipt}. TDG_ENOTFOUND when none of them knows it. */
static int agent_lookup(void *arg, const char *id, cJSON **out)
{
    agent_t *a = arg;
    *out = NULL;
    cJSON *local = NULL, *hub = NULL;
    int lrc = localq_find(a->lq, id, &local);
    if (lrc < 0 && lrc != TDG_ENOTFOUND) {
        return lrc;
    }
    int hrc = a->rc ? receipts_find(a->rc, id, &hub) : TDG_ENOTFOUND;
    if (hrc < 0 && hrc != TDG_ENOTFOUND) {
        cJSON_Delete(local);
        return hrc;
    }
    struct outbox_found f;
    int orc = outbox_find(a->ob, id, &f);
    if (orc < 0 && orc != TDG_ENOTFOUND) {
        cJSON_Delete(local);
        cJSON_Delete(hub);
        return orc;
    }
    if (!local && !hub && orc == TDG_ENOTFOUND) {
        return TDG_ENOTFOUND;
    }
    cJSON *o = cJSON_CreateObject();
    if (!local) {
        local = cJSON_CreateArray();
    }
    cJSON *ob = NULL;
    bool ok = o && local;
    if (ok && orc == 0) {
        static const char *const names[] = {"", "queued", "in_flight", "dropped"};
        ob = cJSON_CreateObject();
        char at[32];
        proto_format_rfc3339(f.at_ms, at, sizeof(at));
        ok = ob && cJSON_AddStringToObject(ob, "state", names[f.state]) &&
             cJSON_AddStringToObject(ob, f.state == OUTBOX_FOUND_DROPPED ? "dropped" : "accepted",
                                     at) &&
             (f.state != OUTBOX_FOUND_DROPPED || cJSON_AddStringToObject(ob, "reason", f.reason));
    }
    if (!ok) {
        cJSON_Delete(o);
        cJSON_Delete(local);
        cJSON_Delete(hub);
        cJSON_Delete(ob);
        return -ENOMEM;
    }
    cJSON_AddItemToObject(o, "local", local);
    cJSON_AddItemToObject(o, "outbox", ob ? ob : cJSON_CreateNull());
    cJSON_AddItemToObject(o, "hub", hub ? hub : cJSON_CreateNull());
    *out = o;
    return 0;
}

/* policy.local_user: a user id as in "user:<id>" (docs/proto.md). */
static bool user_id_valid(const char *u)
{
    size_t n = strlen(u);
    if (n > POLICY_USER_ID_MAX) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = u[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '@' || c == '+' || c == '-')) {
            return false;
        }
    }
    return true;
}

/*
 * Open one of the agent's databases with open_fn. An unusable file (not a
 * database, corrupt) stops the start with an error naming it: a silent reset
 * would lose accepted notifications. Only with outbox.reset_corrupt
 * (--reset-corrupt-db) is it moved aside (kept, never deleted) and opened
 * fresh; what was moved where is logged. 0 or a negative error, err set.
 */
static int open_db_or_reset(agent_t *a, const char *path,
                            int (*open_fn)(void *arg, char *err, size_t errlen), void *arg,
                            char *err, size_t errlen)
{
    int rc = open_fn(arg, err, errlen);
    if (rc != TDG_EDB_CORRUPT) {
        return rc;
    }
    if (!a->cfg.reset_corrupt_db) {
        size_t used = strlen(err);
        snprintf(err + used, errlen - used,
                 "; 'tidings-agent --reset-corrupt-db' (or outbox.reset_corrupt = true) moves "
                 "it to %s.corrupt-<unix time> and starts fresh",
                 path);
        return rc;
    }
    LOG_ERROR("agent", "%s", err);
    char moved[600];
    int64_t now_s = clock_wall_ms() / 1000;
    if ((rc = db_move_aside(path, now_s, moved, sizeof(moved), err, errlen)) < 0) {
        return rc;
    }
    LOG_WARN("agent", "--reset-corrupt-db: moved %s (and its -wal/-shm) to %s; starting with "
             "an empty database",
             path, moved);
    return open_fn(arg, err, errlen);
}

struct open_outbox_arg {
    agent_t *a;
    const struct outbox_limits *lim;
};

static int open_outbox_fn(void *arg, char *err, size_t errlen)
{
    struct open_outbox_arg *o = arg;
    return outbox_open(o->a->db_path, o->a->cfg.synchronous == 1 ? DB_SYNC_FULL : DB_SYNC_NORMAL,
                       o->lim, &o->a->ob, err, errlen);
}

static int open_policy_fn(void *arg, char *err, size_t errlen)
{
    agent_t *a = arg;
    return policy_store_open(a->policy_path,
                             a->cfg.synchronous == 1 ? DB_SYNC_FULL : DB_SYNC_NORMAL, &a->ps,
                             err, errlen);
}

/* The preference store and the local delivery backends and queue. 0 or a
 * negative error with err set. */
static int open_local(agent_t *a, char *err, size_t errlen)
{
    const struct agent_config *cfg = &a->cfg;
    if (!user_id_valid(cfg->policy_local_user)) {
        snprintf(err, errlen, "policy.local_user '%s': must be a user id (1-%d of "
                 "[A-Za-z0-9._@+-]) or empty",
                 cfg->policy_local_user, POLICY_USER_ID_MAX);
        return TDG_ECONFIG;
    }
    if ((size_t)snprintf(a->policy_path, sizeof(a->policy_path), "%s/policy.db",
                         cfg->state_dir) >= sizeof(a->policy_path)) {
        snprintf(err, errlen, "state_dir too long");
        return -ENAMETOOLONG;
    }
    int rc = open_db_or_reset(a, a->policy_path, open_policy_fn, a, err, errlen);
    if (rc < 0) {
        return rc;
    }
    rc = policy_store_load(a->ps, &a->snap);
    if (rc == TDG_EINVAL_INPUT) {
        /* Logged by the store (e.g. written by a newer agent): the hub's
         * retained snapshot replaces it on the next connect. */
        LOG_WARN("policy", "%s: the stored snapshot is not usable; none in force until the hub "
                 "sends one",
                 a->policy_path);
        a->snap = NULL;
    } else if (rc < 0) {
        snprintf(err, errlen, "%s: cannot read the stored snapshot: %s", a->policy_path,
                 tdg_strerror(rc));
        return rc;
    } else if (a->snap) {
        a->policy_applied_ms = clock_wall_ms();
        LOG_INFO("policy", "stored snapshot version=%lld users=%zu in force",
                 (long long)policy_snapshot_version(a->snap),
                 policy_snapshot_user_count(a->snap));
    }
    rc = deliver_create(a->loop, &cfg->deliver, on_receipt, a, &a->dl, err, errlen);
    if (rc < 0) {
        return rc;
    }
    struct localq_opts lo = {.max_rows = (uint64_t)cfg->local_max_rows,
                             .retention_ms = cfg->local_retention_ms,
                             .retry_min_ms = cfg->local_retry_min_ms,
                             .retry_max_ms = cfg->local_retry_max_ms,
                             .retry_for_ms = cfg->local_retry_for_ms,
                             .local_user = cfg->policy_local_user,
                             .policy = a->snap};
    return localq_create(a->loop, a->ob, a->dl, &lo, &a->lq, err, errlen);
}

int agent_create(loop_t *loop, const struct agent_config *cfg, agent_t **out, char *err,
                 size_t errlen)
{
    if (!proto_agent_id_valid(cfg->id)) {
        snprintf(err, errlen, "agent.id '%s': must be 1-64 of [A-Za-z0-9._-]", cfg->id);
        return TDG_ECONFIG;
    }
    agent_t *a = calloc(1, sizeof(*a));
    if (!a) {
        return -ENOMEM;
    }
    a->loop = loop;
    a->cfg = *cfg;
    log_set_level((enum log_level)cfg->log_level);

    if (mkdir(cfg->state_dir, 0700) < 0 && errno != EEXIST) {
        int e = errno;
        snprintf(err, errlen, "state_dir %s: %s", cfg->state_dir, strerror(e));
        free(a);
        return -e;
    }
    a->started_ms = clock_wall_ms();
    if ((size_t)snprintf(a->db_path, sizeof(a->db_path), "%s/outbox.db", cfg->state_dir) >=
        sizeof(a->db_path)) {
        snprintf(err, errlen, "state_dir too long");
        free(a);
        return -ENAMETOOLONG;
    }
    if (agent_socket_path(cfg, a->sock_path, sizeof(a->sock_path)) < 0) {
        snprintf(err, errlen, "socket.path: '%s/agent.sock' is longer than a unix socket path "
                 "may be (%zu bytes); set socket.path",
                 cfg->state_dir, sizeof(a->sock_path) - 1);
        free(a);
        return -ENAMETOOLONG;
    }
    /* The socket first: its lock tells a second agent on the same socket to
     * stop before it opens (and un-marks in-flight rows of) the outbox. The
     * loop does not run yet, so no request is read before the outbox is open. */
    struct socket_opts so = {.path = a->sock_path,
                             .max_clients = (unsigned)cfg->socket_max_clients,
                             .write_timeout_ms = cfg->socket_write_timeout_ms};
    struct socket_ops sops = {
        .queue = agent_queue, .status = agent_status, .lookup = agent_lookup, .arg = a};
    int rc = socket_server_create(loop, &so, &sops, &a->sock, err, errlen);
    if (rc < 0) {
        free(a);
        return rc;
    }
    struct outbox_limits lim = {.max_rows = (uint64_t)cfg->outbox_max_rows,
                                .max_bytes = cfg->outbox_max_bytes,
                                .full_policy =
                                    (enum outbox_full_policy)cfg->outbox_full_policy,
                                .cache_bytes = cfg->outbox_cache_size};
    struct open_outbox_arg oa = {.a = a, .lim = &lim};
    rc = open_db_or_reset(a, a->db_path, open_outbox_fn, &oa, err, errlen);
    if (rc < 0) {
        socket_server_destroy(a->sock);
        free(a);
        return rc;
    }
    if ((rc = open_local(a, err, errlen)) < 0) {
        agent_destroy(a);
        return rc;
    }
    struct receipts_opts ro = {.max_rows = (uint64_t)cfg->receipts_max_rows,
                               .retention_ms = cfg->receipts_retention_ms};
    if ((rc = receipts_create(a->ob, &ro, &a->rc, err, errlen)) < 0) {
        agent_destroy(a);
        return rc;
    }
    /* Registered before the MQTT clients' hooks: commit and queue publishes
     * first, then the clients flush their sockets. */
    if ((rc = loop_before_sleep(loop, before_sleep, a)) < 0) {
        snprintf(err, errlen, "event loop: %s", tdg_strerror(rc));
        agent_destroy(a);
        return rc;
    }
    struct uplink_hooks hooks = {
        .on_policy = on_policy, .on_down = on_down, .on_receipts = on_receipts, .arg = a};
    if (!cfg->uplink_host[0]) {
        LOG_WARN("agent", "no uplink (uplink.host is empty): local delivery only; notifications "
                 "for the hub stay in the outbox");
    } else if (!(a->up = uplink_create(loop, &a->cfg, a->ob, &hooks))) {
        snprintf(err, errlen, "cannot start the uplink");
        agent_destroy(a);
        return TDG_EMQTT;
    }
    char client_id[PROTO_AGENT_MAX + 24];
    snprintf(client_id, sizeof(client_id), "tidings-agent-%s-local", cfg->id);
    struct mqtt_opts lo = {
        .name = "local",
        .host = a->cfg.local_host,
        .port = (int)cfg->local_port,
        .client_id = client_id,
        .username = a->cfg.local_username,
        .password = a->cfg.local_password,
        .keepalive_s = (int)(cfg->local_keepalive_ms / 1000),
        .backoff_base_ms = 200,
        .backoff_cap_ms = 10000,
        /* The local broker keeps our subscription and queues QoS 1
         * notifications while the agent restarts. */
        .session_expiry_s = (uint32_t)(cfg->local_session_expiry_ms / 1000),
        /* PUBACK only once committed (before_sleep): a kill -9 loses
         * nothing the broker counts as delivered. */
        .manual_ack = true,
        .receive_max = (uint16_t)cfg->local_receive_max,
        /* Notifications are 4 KiB at most; larger ones still reach ingest
         * (and are counted as invalid) up to this, the broker drops more. */
        .max_packet = 256u * 1024u,
    };
    struct mqtt_handlers lh = {
        .on_connect = on_local_connect, .on_message = on_local_message, .arg = a};
    a->local = mqtt_create(loop, &lo, &lh);
    if (!a->local) {
        snprintf(err, errlen, "cannot start the local MQTT client");
        agent_destroy(a);
        return TDG_EMQTT;
    }
    LOG_INFO("agent", "agent %s started: local %s:%lld topic %s, uplink %s:%lld, deliver %s",
             cfg->id, cfg->local_host, (long long)cfg->local_port, cfg->local_topic,
             cfg->uplink_host[0] ? cfg->uplink_host : "(none)", (long long)cfg->uplink_port,
             cfg->deliver.backends[0] ? cfg->deliver.backends : "(none)");
    *out = a;
    return 0;
}

void agent_destroy(agent_t *a)
{
    if (!a) {
        return;
    }
    if (a->trim_timer) {
        loop_timer_cancel(a->loop, a->trim_timer);
        a->trim_timer = 0;
    }
    mqtt_destroy(a->local);
    if (a->sock && a->ob) {
        /* Requests read in the last iteration: store, commit, and answer
         * them (best effort) before closing. */
        socket_server_store(a->sock);
        socket_server_committed(a->sock, outbox_commit(a->ob));
    } else if (a->ob && outbox_pending(a->ob) > 0) {
        outbox_commit(a->ob);
    }
    struct socket_stats ss = {0};
    if (a->sock) {
        socket_server_get_stats(a->sock, &ss);
    }
    socket_server_destroy(a->sock);
    uplink_destroy(a->up);
    /* Backends first: deliveries in flight are abandoned without callbacks
     * (their rows stay pending and run again at the next start), then the
     * queue, whose statements live on the outbox's connection. */
    deliver_destroy(a->dl);
    struct localq_stats ls = {0};
    if (a->lq) {
        localq_get_stats(a->lq, &ls);
        LOG_INFO("agent", "stopping: local added=%llu duplicates=%llu full=%llu delivered=%llu "
                 "suppressed=%llu dropped=%llu failed=%llu expired=%llu rows=%llu",
                 (unsigned long long)ls.added, (unsigned long long)ls.duplicates,
                 (unsigned long long)ls.rejected_full, (unsigned long long)ls.delivered,
                 (unsigned long long)ls.suppressed, (unsigned long long)ls.dropped,
                 (unsigned long long)ls.failed, (unsigned long long)ls.expired,
                 (unsigned long long)ls.rows);
    }
    localq_destroy(a->lq);
    receipts_destroy(a->rc);
    struct outbox_stats os = {0};
    if (a->ob) {
        outbox_get_stats(a->ob, &os);
    }
    LOG_INFO("agent", "stopping: mqtt received=%llu accepted=%llu duplicates=%llu invalid=%llu; "
             "queued=%llu",
             (unsigned long long)a->ist.received, (unsigned long long)a->ist.accepted,
             (unsigned long long)a->ist.duplicates, (unsigned long long)a->ist.invalid,
             (unsigned long long)os.rows);
    LOG_INFO("agent", "stopping: socket received=%llu accepted=%llu duplicates=%llu invalid=%llu "
             "full=%llu errors=%llu connections=%llu",
             (unsigned long long)ss.in.received, (unsigned long long)ss.in.accepted,
             (unsigned long long)ss.in.duplicates, (unsigned long long)ss.in.invalid,
             (unsigned long long)ss.in.full, (unsigned long long)ss.in.errors,
             (unsigned long long)ss.connections);
    if (a->window_commits) {
        LOG_INFO("agent", "MQTT QoS 1 window (read -> committed; PUBACK held until then): "
                 "max=%lluus avg=%lluus over %llu commits; %llu reconnects after a failed commit",
                 (unsigned long long)a->window_max_us,
                 (unsigned long long)(a->window_sum_us / a->window_commits),
                 (unsigned long long)a->window_commits,
                 (unsigned long long)a->mqtt_reconnects);
    }
    outbox_close(a->ob);
    policy_snapshot_free(a->snap);
    policy_store_close(a->ps);
    tz_cache_flush();
    free(a);
}
