/* uplink.c - outbox -> hub batches with application acks (see uplink.h). */
#include "uplink.h"

#include "error.h"
#include "log.h"
#include "mqtt.h"
#include "proto.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define UPLINK_MAX_WINDOW 64
#define UPLINK_MAX_HUBS 32
#define UPLINK_MAX_BATCH 1024

struct uplink;

struct batch {
    struct uplink *owner;
    bool used;
    uint64_t timer;
    char first_id[PROTO_ID_MAX + 1];
    unsigned n;
    int64_t *seqs; /* UPLINK_MAX_BATCH entries, allocated once */
};

struct uplink {
    loop_t *loop;
    outbox_t *ob;
    mqtt_t *mqtt;
    char agent[PROTO_AGENT_MAX + 1];
    char topic_up[160], topic_ack[160], topic_status[160], topic_policy[160], topic_down[160],
        topic_receipts[160];
    struct uplink_hooks hooks;
    unsigned batch_max, window;
    size_t batch_bytes;
    uint64_t ack_timeout_ms;
    struct batch batches[UPLINK_MAX_WINDOW];
    unsigned nbatches;
    struct proto_batch pb;  /* reused envelope buffer */
    struct batch *filling;  /* batch being built by take_cb */
    struct uplink_stats st;
    bool timeout_logged;
    /* uplink.drain_rate as a token bucket, in thousandths of a notification
     * (integer arithmetic; refilled from the monotonic clock). */
    int64_t rate;          /* notifications/s; 0 = unlimited */
    int64_t tokens_m, burst_m;
    uint64_t refilled_ms;
    uint64_t resume_timer; /* armed while the bucket is empty */
    /* Hubs whose retained status says "online" (PROTO_TOPIC_HUB_STATUS).
     * Batches go out only while there is one: published into a shared
     * subscription nobody holds, they are dropped by the broker and come
     * back only after the ack timeout, behind newer ones. */
    bool require_hub;
    char hubs[UPLINK_MAX_HUBS][PROTO_AGENT_MAX + 1];
    unsigned nhubs;
    bool no_hub_logged;
};

static void on_resume(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    uplink_t *u = arg;
    u->resume_timer = 0;
    uplink_pump(u);
}

/* How many rows the bucket allows now (0..max). With an empty bucket, arm
 * one timer for when a useful batch (about 50 ms worth) is available. */
static unsigned bucket_allow(uplink_t *u, unsigned max)
{
    if (u->rate <= 0) {
        return max;
    }
    uint64_t now = clock_mono_ms();
    uint64_t dt = now - u->refilled_ms;
    u->refilled_ms = now;
    int64_t add = dt > (uint64_t)(INT64_MAX / u->rate) ? u->burst_m : (int64_t)dt * u->rate;
    u->tokens_m = u->tokens_m + add > u->burst_m ? u->burst_m : u->tokens_m + add;
    int64_t whole = u->tokens_m / 1000;
    if (whole >= 1) {
        return whole < (int64_t)max ? (unsigned)whole : max;
    }
    if (!u->resume_timer) {
        int64_t want = u->rate / 20 < 1 ? 1 : u->rate / 20;
        if (want > (int64_t)max) {
            want = max;
        }
        int64_t delay = (want * 1000 - u->tokens_m + u->rate - 1) / u->rate;
        u->resume_timer = loop_timer_add(u->loop, (uint64_t)(delay > 0 ? delay : 1), on_resume, u);
    }
    return 0;
}

static void release(uplink_t *u, struct batch *b)
{
    if (b->timer) {
        loop_timer_cancel(u->loop, b->timer);
    }
    b->used = false;
    b->timer = 0;
    b->n = 0;
    u->nbatches--;
}

static void release_all(uplink_t *u)
{
    for (unsigned i = 0; i < u->window; i++) {
        if (u->batches[i].used) {
            release(u, &u->batches[i]);
        }
    }
}

static void on_batch_timeout(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    struct batch *b = arg;
    uplink_t *u = b->owner;
    b->timer = 0;
    u->st.timeouts++;
    if (!u->timeout_logged) {
        LOG_WARN("uplink", "no ack from the hub within %llums for a batch of %u; will resend",
                 (unsigned long long)u->ack_timeout_ms, b->n);
        u->timeout_logged = true;
    }
    int rc = outbox_untake(u->ob, b->seqs, b->n);
    if (rc < 0) {
        LOG_ERROR("uplink", "cannot requeue timed-out batch: %s", tdg_strerror(rc));
    }
    release(u, b);
    uplink_pump(u);
}

static int take_cb(void *arg, int64_t seq, const char *id, const char *json, size_t len)
{
    uplink_t *u = arg;
    struct batch *b = u->filling;
    if (b->n >= u->batch_max) {
        return 1;
    }
    if (proto_batch_add(&u->pb, json, len) < 0) {
        return 1; /* full in bytes: the row waits for the next batch */
    }
    if (b->n == 0) {
        snprintf(b->first_id, sizeof(b->first_id), "%s", id);
    }
    b->seqs[b->n++] = seq;
    return 0;
}

void uplink_pump(uplink_t *u)
{
    if (u->require_hub && u->nhubs == 0) {
        return; /* resumed by the first hub that says it is online */
    }
    while (mqtt_connected(u->mqtt) && u->nbatches < u->window) {
        struct batch *b = NULL;
        for (unsigned i = 0; i < u->window; i++) {
            if (!u->batches[i].used) {
                b = &u->batches[i];
                break;
            }
        }
        if (!b) {
            return;
        }
        /* Rate-limited: what the bucket allows; with it empty, critical
         * notifications still go (a backlog never delays them). */
        unsigned max = bucket_allow(u, u->batch_max);
        int min_prio = max > 0 ? PROTO_PRIO_LOW : PROTO_PRIO_CRITICAL;
        proto_batch_reset(&u->pb);
        b->n = 0;
        u->filling = b;
        int taken = outbox_take_prio(u->ob, max > 0 ? max : u->batch_max, min_prio, take_cb, u);
        if (taken < 0) {
            LOG_ERROR("uplink", "cannot read the outbox: %s", tdg_strerror(taken));
            return;
        }
        if (taken == 0) {
            return;
        }
        if (proto_batch_finish(&u->pb) < 0) {
            outbox_untake(u->ob, b->seqs, b->n);
            return;
        }
        int rc = mqtt_publish(u->mqtt, u->topic_up, u->pb.buf, u->pb.len, 1, false, 0, NULL, NULL);
        if (rc < 0) {
            /* Not connected after all: rows are requeued on reconnect. */
            outbox_untake(u->ob, b->seqs, b->n);
            return;
        }
        if (u->rate > 0 && min_prio == PROTO_PRIO_LOW) {
            u->tokens_m -= (int64_t)b->n * 1000;
        }
        b->used = true;
        u->nbatches++;
        b->timer = loop_timer_add(u->loop, u->ack_timeout_ms, on_batch_timeout, b);
        u->st.batches_sent++;
        u->st.rows_sent += b->n;
        LOG_DEBUG("uplink", "sent batch of %u (first %s, %zu bytes)", b->n, b->first_id,
                  u->pb.len);
    }
}

static void handle_ack(uplink_t *u, const char *payload, size_t len)
{
    struct proto_ack *acks = NULL;
    size_t n = 0;
    struct proto_error perr;
    if (proto_acks_parse(payload, len, &acks, &n, &perr) < 0) {
        LOG_WARN("uplink", "bad ack from hub: %s field=%s %s", proto_reason_code(perr.reason),
                 perr.field, perr.detail);
        return;
    }
    const char **ids = calloc(n ? n : 1, sizeof(*ids));
    if (!ids) {
        free(acks);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        ids[i] = acks[i].id;
        if (!acks[i].ok) {
            u->st.rejected++;
            LOG_WARN("uplink", "hub rejected id=%s: %s field=%s", acks[i].id,
                     proto_reason_code(acks[i].reason), acks[i].field[0] ? acks[i].field : "-");
        } else {
            u->st.acked++;
        }
    }
    size_t deleted = 0;
    int rc = outbox_ack(u->ob, ids, n, &deleted);
    LOG_DEBUG("uplink", "hub acked %zu (first %s); %zu removed from the outbox", n,
              n ? acks[0].id : "-", deleted);
    if (rc < 0) {
        LOG_ERROR("uplink", "cannot delete acked rows: %s", tdg_strerror(rc));
    }
    /* The hub acks every batch it took in one loop iteration in one
     * message, so one ack can cover several of ours: release each batch
     * whose first id it names (a batch is always acked whole). */
    for (unsigned i = 0; i < u->window && n > 0; i++) {
        struct batch *b = &u->batches[i];
        if (!b->used) {
            continue;
        }
        for (size_t k = 0; k < n; k++) {
            if (strcmp(b->first_id, acks[k].id) == 0) {
                release(u, b);
                break;
            }
        }
    }
    if (rc == 0) {
        u->st.last_ack_ms = clock_wall_ms();
    }
    if (u->timeout_logged && rc == 0) {
        u->timeout_logged = false;
    }
    free(ids);
    free(acks);
    uplink_pump(u);
}

static void handle_hub_status(uplink_t *u, const char *hub, const char *payload, size_t len)
{
    bool online = len == 6 && memcmp(payload, "online", 6) == 0;
    unsigned i = 0;
    while (i < u->nhubs && strcmp(u->hubs[i], hub) != 0) {
        i++;
    }
    unsigned before = u->nhubs;
    if (online && i == u->nhubs && u->nhubs < UPLINK_MAX_HUBS) {
        snprintf(u->hubs[u->nhubs++], sizeof(u->hubs[0]), "%s", hub);
    } else if (!online && i < u->nhubs) {
        u->hubs[i][0] = '\0';
        if (i != u->nhubs - 1) {
            memcpy(u->hubs[i], u->hubs[u->nhubs - 1], sizeof(u->hubs[0]));
        }
        u->nhubs--;
    }
    if (before == 0 && u->nhubs > 0) {
        LOG_INFO("uplink", "hub %s is online: sending", hub);
        u->no_hub_logged = false;
        uplink_pump(u);
    } else if (before > 0 && u->nhubs == 0 && !u->no_hub_logged) {
        struct outbox_stats os;
        outbox_get_stats(u->ob, &os);
        LOG_WARN("uplink", "no hub online (last: %s); holding %llu queued until one is", hub,
                 (unsigned long long)os.rows);
        u->no_hub_logged = true;
    }
}

static void on_message(void *arg, const struct mqtt_msg *msg)
{
    uplink_t *u = arg;
    size_t len = msg->len;
    const char *payload = msg->payload;
    char hub[PROTO_AGENT_MAX + 1];
    if (strcmp(msg->topic, u->topic_ack) == 0 && len > 0) {
        handle_ack(u, payload, len);
    } else if (proto_topic_hub(msg->topic, hub, sizeof(hub)) == 0) {
        handle_hub_status(u, hub, payload, len);
    } else if (u->hooks.on_policy && strcmp(msg->topic, u->topic_policy) == 0) {
        u->hooks.on_policy(u->hooks.arg, payload, len);
    } else if (u->hooks.on_down && strcmp(msg->topic, u->topic_down) == 0) {
        u->hooks.on_down(u->hooks.arg, payload, len);
    } else if (u->hooks.on_receipts && strcmp(msg->topic, u->topic_receipts) == 0 && len > 0) {
        u->hooks.on_receipts(u->hooks.arg, payload, len);
    }
}

static void on_connect(void *arg)
{
    uplink_t *u = arg;
    mqtt_subscribe(u->mqtt, u->topic_ack, 1);
    /* the hubs' retained statuses arrive right after; until then, wait */
    u->nhubs = 0;
    if (u->require_hub) {
        mqtt_subscribe(u->mqtt, PROTO_TOPIC_HUBS_STATUS_FILTER, 1);
    }
    if (u->hooks.on_policy) {
        mqtt_subscribe(u->mqtt, u->topic_policy, 1);
    }
    if (u->hooks.on_down) {
        mqtt_subscribe(u->mqtt, u->topic_down, 1);
    }
    if (u->hooks.on_receipts) {
        mqtt_subscribe(u->mqtt, u->topic_receipts, 1);
    }
    mqtt_publish(u->mqtt, u->topic_status, "online", 6, 1, true, 0, NULL, NULL);
    /* A clean session: whatever was in flight before will never be acked. */
    release_all(u);
    int rc = outbox_untake_all(u->ob);
    if (rc < 0) {
        LOG_ERROR("uplink", "cannot requeue in-flight rows: %s", tdg_strerror(rc));
    }
    u->st.connected = true;
    u->st.since_ms = clock_wall_ms();
    uplink_pump(u);
}

static void on_disconnect(void *arg, int rc)
{
    (void)rc;
    uplink_t *u = arg;
    if (u->st.connected) {
        u->st.since_ms = clock_wall_ms();
    }
    u->st.connected = false;
    u->nhubs = 0;
    release_all(u);
}

uplink_t *uplink_create(loop_t *loop, const struct agent_config *cfg, outbox_t *ob,
                        const struct uplink_hooks *hooks)
{
    uplink_t *u = calloc(1, sizeof(*u));
    if (!u) {
        return NULL;
    }
    if (hooks) {
        u->hooks = *hooks;
    }
    u->loop = loop;
    u->ob = ob;
    snprintf(u->agent, sizeof(u->agent), "%s", cfg->id);
    u->batch_max = (unsigned)cfg->batch_max;
    u->window = (unsigned)cfg->window;
    u->batch_bytes = (size_t)cfg->batch_bytes;
    u->ack_timeout_ms = cfg->ack_timeout_ms;
    u->rate = cfg->drain_rate;
    u->require_hub = cfg->require_hub;
    /* one second of rate, at least one batch */
    int64_t burst = u->rate > (int64_t)u->batch_max ? u->rate : (int64_t)u->batch_max;
    u->burst_m = burst * 1000;
    u->tokens_m = u->burst_m;
    u->refilled_ms = clock_mono_ms();
    if (proto_topic(u->topic_up, sizeof(u->topic_up), PROTO_TOPIC_UP, cfg->id) < 0 ||
        proto_topic(u->topic_ack, sizeof(u->topic_ack), PROTO_TOPIC_ACK, cfg->id) < 0 ||
        proto_topic(u->topic_status, sizeof(u->topic_status), PROTO_TOPIC_STATUS, cfg->id) < 0 ||
        proto_topic(u->topic_policy, sizeof(u->topic_policy), PROTO_TOPIC_POLICY, cfg->id) < 0 ||
        proto_topic(u->topic_down, sizeof(u->topic_down), PROTO_TOPIC_DOWN, cfg->id) < 0 ||
        proto_topic(u->topic_receipts, sizeof(u->topic_receipts), PROTO_TOPIC_RECEIPTS,
                    cfg->id) < 0) {
        LOG_ERROR("uplink", "agent id '%s' cannot be used in a topic", cfg->id);
        free(u);
        return NULL;
    }
    for (unsigned i = 0; i < u->window; i++) {
        u->batches[i].owner = u;
        u->batches[i].seqs = malloc(UPLINK_MAX_BATCH * sizeof(int64_t));
        if (!u->batches[i].seqs) {
            uplink_destroy(u);
            return NULL;
        }
    }
    if (proto_batch_init(&u->pb, u->batch_bytes, u->agent) < 0) {
        uplink_destroy(u);
        return NULL;
    }
    char client_id[PROTO_AGENT_MAX + 16];
    snprintf(client_id, sizeof(client_id), "tidings-agent-%s", cfg->id);
    struct mqtt_opts o = {
        .name = "uplink",
        .host = cfg->uplink_host,
        .port = (int)cfg->uplink_port,
        .client_id = client_id,
        .username = cfg->uplink_username,
        .password = cfg->uplink_password,
        .cafile = cfg->uplink_cafile,
        .certfile = cfg->uplink_certfile,
        .keyfile = cfg->uplink_keyfile,
        .keepalive_s = (int)(cfg->uplink_keepalive_ms / 1000),
        .busy_keepalive_s = (int)((cfg->uplink_busy_keepalive_ms + 999) / 1000),
        .tcp_keepalive_s = (int)((cfg->uplink_tcp_keepalive_ms + 999) / 1000),
        .will_topic = u->topic_status,
        .will_payload = "offline",
        .will_retain = true,
        .backoff_base_ms = cfg->reconnect_min_ms,
        .backoff_cap_ms = cfg->reconnect_max_ms,
        /* Policy snapshots (1 MiB at most), downlink and receipt batches.
         * PUBACKs go out as messages are read: the session is clean (the
         * broker forgets what is unacknowledged when we go), and acks and
         * snapshots are resent by the hub. */
        .max_packet = 16u * 1024u * 1024u,
    };
    struct mqtt_handlers h = {
        .on_connect = on_connect,
        .on_disconnect = on_disconnect,
        .on_message = on_message,
        .arg = u,
    };
    u->mqtt = mqtt_create(loop, &o, &h);
    if (!u->mqtt) {
        uplink_destroy(u);
        return NULL;
    }
    return u;
}

void uplink_destroy(uplink_t *u)
{
    if (!u) {
        return;
    }
    if (u->mqtt && mqtt_connected(u->mqtt)) {
        /* A clean stop is not a failure: say offline ourselves. */
        mqtt_publish(u->mqtt, u->topic_status, "offline", 7, 1, true, 0, NULL, NULL);
    }
    mqtt_destroy(u->mqtt);
    if (u->resume_timer) {
        loop_timer_cancel(u->loop, u->resume_timer);
    }
    for (unsigned i = 0; i < UPLINK_MAX_WINDOW; i++) {
        if (u->batches[i].timer) {
            loop_timer_cancel(u->loop, u->batches[i].timer);
        }
        free(u->batches[i].seqs);
    }
    proto_batch_free(&u->pb);
    free(u);
}

void uplink_get_stats(const uplink_t *u, struct uplink_stats *st)
{
    *st = u->st;
}
