/* agent.c - wiring of ingest, outbox and uplink on one loop (see agent.h). */
#include "agent.h"

#include "error.h"
#include "ingest.h"
#include "log.h"
#include "mqtt.h"
#include "outbox.h"
#include "uplink.h"

#include <errno.h>
#include <mosquitto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define OFF(f) offsetof(struct agent_config, f), sizeof(((struct agent_config *)0)->f)

static const char *const log_levels[] = {"error", "warn", "info", "debug", NULL};
static const char *const sync_modes[] = {"normal", "full", NULL};

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
    {"uplink.host", CONFIG_STRING, "127.0.0.1", OFF(uplink_host),
     "Central broker the hub listens on", NULL, 0, 0},
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
    {"uplink.keepalive", CONFIG_DURATION, "60s", OFF(uplink_keepalive_ms), "MQTT keepalive",
     NULL, 5000, 3600000},
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
    {"outbox.synchronous", CONFIG_ENUM, "normal", OFF(synchronous),
     "normal survives a killed process; full also survives power loss (slower)", sync_modes, 0,
     0},
    {"outbox.max_rows", CONFIG_INT, "2000000", OFF(outbox_max_rows),
     "Outbox budget in notifications; new ones are rejected beyond it (0: none)", NULL, 0,
     INT64_MAX},
    {"outbox.max_bytes", CONFIG_SIZE, "1G", OFF(outbox_max_bytes),
     "Outbox budget in bytes (0: none)", NULL, 0, 0},
};
const size_t agent_config_table_len = sizeof(agent_config_table) / sizeof(agent_config_table[0]);

struct agent {
    loop_t *loop;
    struct agent_config cfg;
    outbox_t *ob;
    uplink_t *up;
    mqtt_t *local;
    struct ingest_stats ist;
    bool commit_failed_logged;
    /* The MQTT QoS 1 loss window: libmosquitto has already sent PUBACK
     * when on_message runs, and the commit comes at the end of the loop
     * iteration. Measured from the first uncommitted message to its commit. */
    uint64_t window_start_us;
    uint64_t window_max_us, window_sum_us, window_commits;
};

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Once per loop iteration: make what was ingested durable, then sync. */
static void before_sleep(loop_t *loop, void *arg)
{
    (void)loop;
    agent_t *a = arg;
    unsigned n = outbox_pending(a->ob);
    if (n > 0) {
        int rc = outbox_commit(a->ob);
        if (rc < 0) {
            a->ist.errors += n;
            a->ist.accepted -= n <= a->ist.accepted ? n : a->ist.accepted;
            LOG_ERROR("agent", "commit of %u notifications failed: %s", n, tdg_strerror(rc));
        } else {
            LOG_DEBUG("agent", "committed %u", n);
        }
        if (a->window_start_us) {
            uint64_t w = now_us() - a->window_start_us;
            a->window_max_us = w > a->window_max_us ? w : a->window_max_us;
            a->window_sum_us += w;
            a->window_commits++;
            a->window_start_us = 0;
        }
    }
    if (a->up) {
        uplink_pump(a->up);
    }
}

static void on_local_message(void *arg, const struct mosquitto_message *msg,
                             const mosquitto_property *props)
{
    (void)props;
    agent_t *a = arg;
    struct ingest_result res;
    size_t len = msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0;
    if (!a->window_start_us && msg->qos > 0) {
        a->window_start_us = now_us();
    }
    ingest_submit(a->ob, "mqtt", msg->payload ? msg->payload : "", len, &res, &a->ist);
}

static void on_local_connect(void *arg)
{
    agent_t *a = arg;
    mqtt_subscribe(a->local, a->cfg.local_topic, 1);
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
    char path[512];
    if ((size_t)snprintf(path, sizeof(path), "%s/outbox.db", cfg->state_dir) >= sizeof(path)) {
        snprintf(err, errlen, "state_dir too long");
        free(a);
        return -ENAMETOOLONG;
    }
    struct outbox_limits lim = {.max_rows = (uint64_t)cfg->outbox_max_rows,
                                .max_bytes = cfg->outbox_max_bytes};
    int rc = outbox_open(path, cfg->synchronous == 1 ? DB_SYNC_FULL : DB_SYNC_NORMAL, &lim,
                         &a->ob, err, errlen);
    if (rc < 0) {
        free(a);
        return rc;
    }
    /* Registered before the MQTT clients' hooks: commit and queue publishes
     * first, then the clients flush their sockets. */
    if ((rc = loop_before_sleep(loop, before_sleep, a)) < 0) {
        snprintf(err, errlen, "event loop: %s", tdg_strerror(rc));
        agent_destroy(a);
        return rc;
    }
    a->up = uplink_create(loop, &a->cfg, a->ob);
    if (!a->up) {
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
        .keepalive_s = 60,
        .backoff_base_ms = 200,
        .backoff_cap_ms = 10000,
        /* The local broker keeps our subscription and queues QoS 1
         * notifications while the agent restarts. */
        .session_expiry_s = (uint32_t)(cfg->local_session_expiry_ms / 1000),
    };
    struct mqtt_handlers lh = {
        .on_connect = on_local_connect, .on_message = on_local_message, .arg = a};
    a->local = mqtt_create(loop, &lo, &lh);
    if (!a->local) {
        snprintf(err, errlen, "cannot start the local MQTT client");
        agent_destroy(a);
        return TDG_EMQTT;
    }
    LOG_INFO("agent", "agent %s started: local %s:%lld topic %s, uplink %s:%lld", cfg->id,
             cfg->local_host, (long long)cfg->local_port, cfg->local_topic, cfg->uplink_host,
             (long long)cfg->uplink_port);
    *out = a;
    return 0;
}

void agent_destroy(agent_t *a)
{
    if (!a) {
        return;
    }
    mqtt_destroy(a->local);
    if (a->ob && outbox_pending(a->ob) > 0) {
        outbox_commit(a->ob);
    }
    uplink_destroy(a->up);
    struct outbox_stats os = {0};
    if (a->ob) {
        outbox_get_stats(a->ob, &os);
    }
    LOG_INFO("agent", "stopping: received=%llu accepted=%llu duplicates=%llu invalid=%llu "
             "queued=%llu",
             (unsigned long long)a->ist.received, (unsigned long long)a->ist.accepted,
             (unsigned long long)a->ist.duplicates, (unsigned long long)a->ist.invalid,
             (unsigned long long)os.rows);
    if (a->window_commits) {
        LOG_INFO("agent", "MQTT QoS 1 window (PUBACK sent -> committed): max=%lluus avg=%lluus "
                 "over %llu commits",
                 (unsigned long long)a->window_max_us,
                 (unsigned long long)(a->window_sum_us / a->window_commits),
                 (unsigned long long)a->window_commits);
    }
    outbox_close(a->ob);
    free(a);
}
