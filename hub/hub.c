/* hub.c - wiring of broker, intake, store and fanout (see hub.h). */
#include "hub.h"

#include "admin.h"
#include "policy.h"
#include "scheduler.h"
#include "snapshot.h"
#include "channels/apns.h"
#include "channels/email.h"
#include "channels/fcm.h"
#include "channels/sms.h"
#include "error.h"
#include "agentlimit.h"
#include "dispatch.h"
#include "fanout.h"
#include "httpd.h"
#include "intake.h"
#include "metrics.h"
#include "observe.h"
#include "receipts.h"
#include "log.h"
#include "mqtt.h"
#include "pii.h"
#include "store.h"

#include <errno.h>
#include <stdalign.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define OFF(f) offsetof(struct hub_config, f), sizeof(((struct hub_config *)0)->f)

static const char *const log_levels[] = {"error", "warn", "info", "debug", NULL};
static const char *const sync_modes[] = {"normal", "full", NULL};

static const struct config_entry hub_table[] = {
    {"state_dir", CONFIG_STRING, "/var/lib/tidings-hub", OFF(state_dir),
     "Directory for the hub database (created 0700)", NULL, 0, 0},
    {"log_level", CONFIG_ENUM, "info", OFF(log_level), "Log level", log_levels, 0, 0},
    {"broker.host", CONFIG_STRING, "127.0.0.1", OFF(broker_host), "Central MQTT 5 broker", NULL,
     0, 0},
    {"broker.port", CONFIG_INT, "1883", OFF(broker_port), "Broker port", NULL, 1, 65535},
    {"broker.username", CONFIG_STRING, "", OFF(broker_username), "Broker user", NULL, 0, 0},
    {"broker.password", CONFIG_STRING, "", OFF(broker_password), "Broker password", NULL, 0, 0},
    {"broker.cafile", CONFIG_STRING, "", OFF(broker_cafile), "CA for TLS (empty: no TLS)", NULL,
     0, 0},
    {"broker.certfile", CONFIG_STRING, "", OFF(broker_certfile), "Client certificate", NULL, 0,
     0},
    {"broker.keyfile", CONFIG_STRING, "", OFF(broker_keyfile), "Client key", NULL, 0, 0},
    {"broker.share_group", CONFIG_STRING, "hub", OFF(share_group),
     "Shared-subscription group: hubs in one group split the agents' uplinks", NULL, 0, 0},
    {"broker.client_id", CONFIG_STRING, "", OFF(client_id),
     "MQTT client id (empty: tidings-hub-<pid>)", NULL, 0, 0},
    {"channels", CONFIG_STRING, "apns", OFF(channels),
     "Enabled channels, comma-separated (apns, fcm, sms, email); each needs its <name>.* "
     "settings", NULL, 0, 0},
    {"store.synchronous", CONFIG_ENUM, "normal", OFF(synchronous),
     "normal survives a killed process; full also survives power loss", sync_modes, 0, 0},
    {"fanout.max_jobs", CONFIG_INT, "20000", OFF(max_jobs),
     "Notifications being delivered at once (a quarter as many more wait parsed in memory; then intake holds batches back)", NULL, 1, 1000000},
    {"fanout.max_attempts", CONFIG_INT, "8", OFF(max_attempts),
     "Attempts per device before a notification fails", NULL, 1, 100},
    {"fanout.retry_base", CONFIG_DURATION, "1s", OFF(retry_base_ms),
     "First retry backoff (full jitter)", NULL, 1, 3600000},
    {"fanout.retry_cap", CONFIG_DURATION, "5m", OFF(retry_cap_ms), "Retry backoff cap", NULL, 1,
     86400000},
    /* Fanout engine and operations (docs/engine.md) */
    {"metrics.listen", CONFIG_STRING, "", OFF(metrics_listen),
     "HTTP endpoint for GET /metrics and /healthz, HOST:PORT (e.g. 127.0.0.1:9464); empty: off",
     NULL, 0, 0},
    {"shutdown.grace", CONFIG_DURATION, "10s", OFF(shutdown_grace_ms),
     "On SIGTERM/SIGINT: how long in-flight provider requests may finish before the hub exits "
     "(the rest are recovered at the next start)", NULL, 0, 3600000},
    {"intake.hold", CONFIG_SIZE, "8M", OFF(intake_hold_bytes),
     "While deliveries are at fanout.max_jobs: uplink batches held un-acked (the agents wait, "
     "their outboxes keep the backlog) up to this many bytes; 0: store and ack everything at "
     "once (the excess waits in the store's queue)", NULL, 0, 1073741824},
    {"intake.hold_max", CONFIG_DURATION, "5s", OFF(intake_hold_ms),
     "Longest a batch is held before it is stored and acked anyway (keep it well under the "
     "agents' uplink.ack_timeout)", NULL, 0, 600000},
    {"intake.parse_thread", CONFIG_BOOL, "true", OFF(intake_parse_thread),
     "Parse and check uplink batches on a thread of their own, beside the loop that stores, "
     "plans and sends them (false: on the loop)", NULL, 0, 0},
    {"intake.agent_rate", CONFIG_INT, "0", OFF(agent_rate),
     "Notifications per second one agent may send; more wait un-acked (resent). 0: no limit",
     NULL, 0, 10000000},
    {"intake.agent_burst", CONFIG_INT, "0", OFF(agent_burst),
     "Burst above intake.agent_rate (0: the rate)", NULL, 0, 10000000},
    {"intake.agent_quota", CONFIG_INT, "0", OFF(agent_quota),
     "Notifications one agent may have accepted per UTC day; more are rejected over_quota. "
     "0: no quota", NULL, 0, INT64_MAX},
    {"receipts.batch", CONFIG_INT, "512", OFF(receipts_batch),
     "Receipts published per loop iteration at most", NULL, 1, 100000},
    {"bootstrap.user", CONFIG_STRING, "", OFF(bootstrap_user),
     "Create this user at start (empty: none)", NULL, 0, 0},
    {"bootstrap.tz", CONFIG_STRING, "UTC", OFF(bootstrap_tz), "Its IANA time zone", NULL, 0, 0},
    {"bootstrap.ios_token", CONFIG_STRING, "", OFF(bootstrap_ios_token),
     "Register this APNs device token for bootstrap.user", NULL, 0, 0},
    {"bootstrap.ios_app", CONFIG_STRING, "", OFF(bootstrap_ios_app),
     "Its bundle id (APNs topic; empty: apns.topic)", NULL, 0, 0},
    {"bootstrap.ios_env", CONFIG_STRING, "production", OFF(bootstrap_ios_env),
     "production or sandbox", NULL, 0, 0},
    {"bootstrap.android_token", CONFIG_STRING, "", OFF(bootstrap_android_token),
     "Register this FCM registration token for bootstrap.user", NULL, 0, 0},
    {"bootstrap.phone", CONFIG_STRING, "", OFF(bootstrap_phone),
     "Register this E.164 number (SMS) for bootstrap.user", NULL, 0, 0},
    {"bootstrap.email", CONFIG_STRING, "", OFF(bootstrap_email),
     "Register this email address for bootstrap.user", NULL, 0, 0},
    {"policy.snapshots", CONFIG_BOOL, "true", OFF(policy_snapshots),
     "Publish each agent's preference snapshot (retained) on connect and on changes; off "
     "only where something else publishes them (tests)", NULL, 0, 0},
    {"bootstrap.prefs", CONFIG_STRING, "", OFF(bootstrap_prefs),
     "Preferences of bootstrap.user as JSON (docs/hub-policy.md; empty: leave as they are)",
     NULL, 0, 0},
    {"bootstrap.agents", CONFIG_STRING, "", OFF(bootstrap_agents),
     "Agents that may send to bootstrap.user, comma-separated, or * for any (empty: none)",
     NULL, 0, 0},
    {"pii.keyfile", CONFIG_STRING, "", OFF(pii_keyfile),
     "Key file for phone numbers, emails and tokens at rest (mode 0600; docs/directory.md); "
     "empty: <state_dir>/pii.keys, created on first start",
     NULL, 0, 0},
};
#define HUB_TABLE_N (sizeof(hub_table) / sizeof(hub_table[0]))

/* The channels of this hub; hand-written registration (STYLE rule 4). Each
 * serves the devices of one platform. */
struct channel_def {
    const struct channel_ops *ops;
    const char *platform;
    unsigned proto_class;
};
static const struct channel_def channel_defs[] = {
    {&apns_channel, "ios", PROTO_CH_PUSH},
    {&fcm_channel, "android", PROTO_CH_PUSH},
    /* Phone numbers and addresses are endpoints of their own platform until
     * the directory keeps them on the user (issue 4). */
    {&sms_channel, "sms", PROTO_CH_SMS},
    {&email_channel, "email", PROTO_CH_EMAIL},
};
#define N_CHANNELS (sizeof(channel_defs) / sizeof(channel_defs[0]))

struct hub_settings {
    struct config_entry *table; /* hub_table + every channel's, offsets rebased */
    size_t n;
    size_t chan_off[N_CHANNELS];
    unsigned char *blob; /* struct hub_config, then each channel's config */
    /* Fanout engine (dispatch.h): per channel a backup provider's config
     * ("<ch>.backup.*") and the engine settings ("<ch>.engine.*"). */
    size_t backup_off[N_CHANNELS], engine_off[N_CHANNELS];
    char *keys[2 * N_CHANNELS]; /* their generated key names */
};

static size_t align_up(size_t v)
{
    size_t a = alignof(max_align_t);
    return (v + a - 1) / a * a;
}

hub_settings_t *hub_settings_create(char *err, size_t errlen)
{
    hub_settings_t *s = calloc(1, sizeof(*s));
    if (!s) {
        return NULL;
    }
    size_t n = HUB_TABLE_N, size = align_up(sizeof(struct hub_config));
    for (size_t c = 0; c < N_CHANNELS; c++) {
        s->chan_off[c] = size;
        size = align_up(size + channel_defs[c].ops->config_size);
        n += channel_defs[c].ops->config_n;
    }
    for (size_t c = 0; c < N_CHANNELS; c++) {
        s->backup_off[c] = size;
        size = align_up(size + channel_defs[c].ops->config_size);
        s->engine_off[c] = size;
        size = align_up(size + sizeof(struct dispatch_config));
        n += channel_defs[c].ops->config_n + DISPATCH_CONFIG_N;
    }
    s->table = calloc(n, sizeof(*s->table));
    s->blob = calloc(1, size);
    if (!s->table || !s->blob) {
        hub_settings_destroy(s);
        return NULL;
    }
    memcpy(s->table, hub_table, sizeof(hub_table));
    s->n = HUB_TABLE_N;
    for (size_t c = 0; c < N_CHANNELS; c++) {
        for (size_t i = 0; i < channel_defs[c].ops->config_n; i++) {
            s->table[s->n] = channel_defs[c].ops->config[i];
            s->table[s->n].offset += s->chan_off[c];
            s->n++;
        }
    }
    for (size_t c = 0; c < N_CHANNELS; c++) {
        const struct channel_ops *ops = channel_defs[c].ops;
        if (dispatch_backup_table(ops, s->backup_off[c], s->table + s->n, &s->keys[2 * c]) < 0 ||
            dispatch_config_table(ops->name, s->engine_off[c], s->table + s->n + ops->config_n,
                                  &s->keys[2 * c + 1]) < 0) {
            snprintf(err, errlen, "out of memory");
            hub_settings_destroy(s);
            return NULL;
        }
        s->n += ops->config_n + DISPATCH_CONFIG_N;
    }
    if (config_defaults(s->table, s->n, s->blob, err, errlen) < 0) {
        hub_settings_destroy(s);
        return NULL;
    }
    return s;
}

void hub_settings_destroy(hub_settings_t *s)
{
    if (s) {
        free(s->table);
        free(s->blob);
        for (size_t k = 0; k < 2 * N_CHANNELS; k++) {
            free(s->keys[k]);
        }
        free(s);
    }
}

int hub_settings_load(hub_settings_t *s, const char *path, char *err, size_t errlen)
{
    return config_load(s->table, s->n, s->blob, path, err, errlen);
}

int hub_settings_set(hub_settings_t *s, const char *key, const char *value, char *err,
                     size_t errlen)
{
    return config_set(s->table, s->n, s->blob, key, value, err, errlen);
}

void hub_settings_print(const hub_settings_t *s, FILE *out)
{
    config_print(s->table, s->n, out);
}

struct hub {
    loop_t *loop;
    struct hub_config cfg;
    store_t *store;
    pii_t *pii; /* the directory's keyring */
    intake_t *intake;
    fanout_t *fanout;
    mqtt_t *mqtt;
    void *chan_state[N_CHANNELS];
    char sub_up[160];
    admin_t *admin;       /* admin API (tidingsctl) */
    sched_t *sched;       /* durable timers: deliver_at, holds, fallback */
    snapshot_t *snap;     /* agents' preference snapshots */
    char sub_admin[160];
    char status_topic[160]; /* tidings/v1/hubs/<client id>/status */
    bool commit_failed_logged;
    /* fanout engine, observability, shutdown (docs/engine.md) */
    metrics_t *metrics;
    dispatch_t *dispatch; /* owns the channel states */
    httpd_t *httpd;
    observe_t *observe;
    receipts_t *receipts;
    agentlimit_t *limits;
    bool store_ok, draining;
    uint64_t drain_started_ms, drain_timer;
    uint64_t wake_timer; /* 0 ms: one more iteration for pending snapshot changes */
    unsigned drain_inflight; /* requests in flight when the drain began */
};

/* --- fanout engine, observability, graceful shutdown (docs/engine.md) --- */

static int engine_create(hub_t *h, char *err, size_t errlen)
{
    const struct hub_config *c = &h->cfg;
    h->metrics = metrics_create();
    h->dispatch = h->metrics ? dispatch_create(h->loop, h->metrics) : NULL;
    h->receipts = receipts_create(h->store, h->metrics, (unsigned)c->receipts_batch);
    if (c->agent_rate > 0 || c->agent_quota > 0) {
        h->limits = agentlimit_create(h->store, (uint64_t)c->agent_rate,
                                      (uint64_t)c->agent_burst, c->agent_quota);
    }
    if (!h->dispatch || !h->receipts || ((c->agent_rate > 0 || c->agent_quota > 0) && !h->limits)) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    h->store_ok = true;
    return 0;
}

/* Channel c's primary provider, and its backup when "<ch>.backup.*" is set,
 * behind the dispatcher; the fanout's route sends through the dispatcher. */
static int engine_add_channel(hub_t *h, const hub_settings_t *s, size_t c,
                              const struct channel_env *env, struct fanout_route *route, char *err,
                              size_t errlen)
{
    const struct channel_ops *ops = channel_defs[c].ops;
    const struct dispatch_config *dc = (const void *)(s->blob + s->engine_off[c]);
    char cerr[256] = "";
    void *primary = NULL, *backup = NULL;
    int rc = ops->init(env, s->blob + s->chan_off[c], &primary, cerr, sizeof(cerr));
    if (rc < 0) {
        snprintf(err, errlen, "channel %s: %s", ops->name, cerr);
        return rc;
    }
    void *bcfg = malloc(ops->config_size ? ops->config_size : 1);
    int want = bcfg ? 0 : -ENOMEM;
    if (bcfg) {
        memcpy(bcfg, s->blob + s->backup_off[c], ops->config_size);
        want = dispatch_backup_resolve(ops, s->blob + s->chan_off[c], bcfg, dc->backup_enabled);
    }
    if (want == 1) {
        rc = ops->init(env, bcfg, &backup, cerr, sizeof(cerr));
        if (rc < 0) {
            /* the channel names its own keys; the backup's are <ch>.backup.<key> */
            snprintf(err, errlen, "channel %s backup (%s.backup.*): %s", ops->name, ops->name, cerr);
        }
    } else if (want < 0) {
        rc = want;
        snprintf(err, errlen, "channel %s backup: %s", ops->name, tdg_strerror(rc));
    }
    free(bcfg);
    if (rc < 0) {
        ops->destroy(primary);
        return rc;
    }
    struct dispatch_chan *dch = dispatch_add(h->dispatch, ops->name, ops, primary, backup, dc);
    if (!dch) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    h->chan_state[c] = primary; /* owned by the dispatcher */
    if (ops == &sms_channel && backup) {
        sms_link_backup(primary, backup); /* callbacks signed by the backup's sender */
    }
    route->ops = &dispatch_channel_ops;
    route->state = dch;
    return 0;
}

static int engine_start(hub_t *h, char *err, size_t errlen)
{
    intake_set_limits(h->intake, h->limits);
    intake_set_hold(h->intake, h->loop, (size_t)h->cfg.intake_hold_bytes, h->cfg.intake_hold_ms);
    if (h->cfg.intake_parse_thread) {
        int prc = intake_start_parser(h->intake, h->loop);
        if (prc < 0) {
            snprintf(err, errlen, "intake.parse_thread: cannot start the thread: %s",
                     tdg_strerror(prc));
            return prc;
        }
    }
    if (h->cfg.metrics_listen[0]) {
        char herr[256];
        int rc = httpd_create(h->loop, h->cfg.metrics_listen, &h->httpd, herr, sizeof(herr));
        if (rc < 0) {
            snprintf(err, errlen, "metrics.listen: %s", herr);
            return rc;
        }
        LOG_INFO("hub", "metrics and health on http://%s (port %d)", h->cfg.metrics_listen,
                 httpd_port(h->httpd));
    }
    struct observe_src src = {.store = h->store,
                              .intake = h->intake,
                              .fanout = h->fanout,
                              .dispatch = h->dispatch,
                              .mqtt = &h->mqtt,
                              .store_ok = &h->store_ok,
                              .draining = &h->draining};
    h->observe = observe_create(h->metrics, h->httpd, &src);
    if (!h->observe) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    return 0;
}

static void engine_destroy(hub_t *h)
{
    httpd_destroy(h->httpd);
    h->httpd = NULL;
    if (h->drain_timer) {
        loop_timer_cancel(h->loop, h->drain_timer);
    }
    /* Channels first: in-flight requests are aborted, no outcome can reach
     * a fanout job afterwards. */
    dispatch_destroy(h->dispatch);
    h->dispatch = NULL;
    receipts_destroy(h->receipts);
    agentlimit_destroy(h->limits);
    metrics_destroy(h->metrics); /* before observe: its hook points there */
    observe_destroy(h->observe);
}

static void on_publish(void *arg, int mid, int reason)
{
    hub_t *h = arg;
    receipts_on_puback(h->receipts, mid, reason);
}

static void drain_finish(hub_t *h, bool timed_out)
{
    unsigned left = dispatch_inflight(h->dispatch);
    uint64_t took = loop_now_ms(h->loop) - h->drain_started_ms;
    LOG_INFO("hub", "shutdown: drained=%u abandoned=%u in %llums%s", h->drain_inflight - left,
             left, (unsigned long long)took,
             timed_out ? " (shutdown.grace reached; abandoned requests stay 'sending' and are "
                         "recovered at the next start)"
                       : "");
    loop_stop(h->loop);
}

static void on_drain_timer(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    hub_t *h = arg;
    h->drain_timer = 0;
    drain_finish(h, true);
}

/* In before_sleep while draining, after the commit and the acks: done when
 * no provider request is in flight and the broker has every QoS 1 message
 * (acks, receipts) we published. */
static void drain_check(hub_t *h)
{
    bool connected = h->mqtt && mqtt_connected(h->mqtt);
    if (dispatch_inflight(h->dispatch) == 0 && (!connected || mqtt_inflight(h->mqtt) == 0)) {
        if (h->drain_timer) {
            loop_timer_cancel(h->loop, h->drain_timer);
            h->drain_timer = 0;
        }
        drain_finish(h, false);
    }
}

void hub_shutdown(hub_t *h)
{
    if (h->draining) {
        return;
    }
    h->draining = true;
    h->drain_started_ms = loop_now_ms(h->loop);
    h->drain_inflight = dispatch_inflight(h->dispatch);
    LOG_INFO("hub", "shutdown: no new intake or sends; waiting up to %llums for %u in-flight "
             "request(s)",
             (unsigned long long)h->cfg.shutdown_grace_ms, h->drain_inflight);
    /* Agents stop sending to a hub that is not online. */
    if (h->mqtt && mqtt_connected(h->mqtt)) {
        mqtt_publish(h->mqtt, h->status_topic, "", 0, 1, true, 0, NULL, NULL);
    }
    h->drain_timer = loop_timer_add(h->loop, h->cfg.shutdown_grace_ms, on_drain_timer, h);
    /* before_sleep runs next and finishes at once when nothing is in flight */
}

/* Once per iteration: take queued work, commit everything written in this
 * iteration, then (and only then) ack the agents and start the sends. */
static void before_sleep(loop_t *loop, void *arg)
{
    (void)loop;
    hub_t *h = arg;
    if (!h->draining) {
        /* Held batches first (oldest work), then the parked and queued
         * notifications fill the free job slots, then held batches again
         * for the room that leaves: all in this iteration's commit. */
        intake_resume(h->intake);
        fanout_pull(h->fanout);
        intake_resume(h->intake);
    }
    if (h->cfg.policy_snapshots) {
        snapshot_prepare(h->snap); /* the revision bump rides in this commit */
    }
    int rc = store_commit(h->store);
    h->store_ok = rc == 0;
    if (rc < 0) {
        if (!h->commit_failed_logged) {
            LOG_ERROR("hub", "commit failed: %s; acks withheld, agents will resend",
                      tdg_strerror(rc));
            h->commit_failed_logged = true;
        }
    } else {
        h->commit_failed_logged = false;
    }
    intake_flush(h->intake, h->mqtt, rc == 0);
    admin_flush(h->admin, h->mqtt, rc == 0);
    if (h->cfg.policy_snapshots && h->mqtt) {
        snapshot_flush(h->snap, h->mqtt, rc == 0); /* published only once committed */
    }
    if (rc == 0) {
        receipts_flush(h->receipts, h->mqtt);
    }
    if (rc == 0 && !h->draining) {
        fanout_flush(h->fanout);
    }
    if (h->draining) {
        drain_check(h);
    }
}

static void on_message(void *arg, const struct mqtt_msg *msg)
{
    hub_t *h = arg;
    char agent[PROTO_AGENT_MAX + 1];
    if (proto_topic_agent(msg->topic, "up", agent, sizeof(agent)) == 0) {
        if (!h->draining) { /* draining: no ack, the agent resends */
            intake_handle_up(h->intake, agent, msg->payload, msg->len);
        }
        return;
    }
    if (proto_topic_agent(msg->topic, "status", agent, sizeof(agent)) == 0) {
        if (msg->len > 0 && h->cfg.policy_snapshots) { /* empty: cleared */
            snapshot_agent_seen(h->snap, h->mqtt, agent);
        }
        return;
    }
    if (admin_is_request(msg->topic)) {
        admin_handle(h->admin, msg);
        return;
    }
    LOG_DEBUG("hub", "ignoring message on %s", msg->topic);
}

/* A channel's delivery status report (SMS status polling): recorded in this
 * iteration's transaction, idempotently (store_provider_status). */
static void on_channel_status(void *arg, const char *channel, const char *provider_id,
                              const char *status, int error_code)
{
    hub_t *h = arg;
    int rc = store_provider_status(h->store, channel, provider_id, status, error_code,
                                   clock_wall_ms());
    if (rc < 0 && rc != TDG_EINVAL_INPUT) {
        LOG_WARN("hub", "cannot record %s status %s of %s: %s", channel, status, provider_id,
                 tdg_strerror(rc));
    }
}

/* A channel follows a message after the send (SMS status polling): recorded
 * in the iteration's transaction, so a restarted hub goes on. */
static void on_channel_watch(void *arg, const char *channel, const char *provider_id,
                             const char *account, int64_t until_ms)
{
    hub_t *h = arg;
    int rc = store_provider_watch(h->store, channel, provider_id, account, until_ms);
    if (rc < 0) {
        LOG_WARN("hub", "cannot record the %s watch of %s: %s", channel, provider_id,
                 tdg_strerror(rc));
    }
}

/* The SMS channel's state (a channel_set), or NULL when it is not enabled. */
static void *sms_state(hub_t *h)
{
    for (size_t c = 0; c < N_CHANNELS; c++) {
        if (channel_defs[c].ops == &sms_channel) {
            return h->chan_state[c];
        }
    }
    return NULL;
}

struct sms_resume_ctx {
    hub_t *h;
    int resumed, stale;
};

static void sms_resume_one(void *arg, const char *sid, const char *account, int64_t until_ms,
                           const char *last)
{
    struct sms_resume_ctx *c = arg;
    int rc = sms_watch_resume(sms_state(c->h), account, sid, until_ms, last);
    if (rc == 0) {
        c->resumed++;
    } else if (rc != -ENOSPC && rc != -ENOMEM) {
        /* no such sender any more, polling off, past its time: forget it */
        store_provider_watch(c->h->store, "sms", sid, account, 0);
        c->stale++;
    }
}

/* At start: go on polling the SMS messages a previous run was watching. */
static void sms_resume(hub_t *h)
{
    if (!sms_state(h)) {
        return;
    }
    struct sms_resume_ctx c = {h, 0, 0};
    int rc = store_provider_watch_each(h->store, "sms", clock_wall_ms(), sms_resume_one, &c);
    if (rc < 0) {
        LOG_WARN("hub", "sms: cannot read the watched messages: %s", tdg_strerror(rc));
    } else if (rc > 0) {
        LOG_INFO("hub", "sms: polling the status of %d message(s) again (%d forgotten)",
                 c.resumed, c.stale);
    }
}

/* POST /v1/sms/status: the provider's delivery status callback (signed). */
static void on_sms_status(void *arg, const struct httpd_req *req, struct httpd_resp *resp)
{
    hub_t *h = arg;
    char why[128] = "";
    resp->status = sms_status_callback(sms_state(h), req->body, req->body_len,
                                       httpd_req_header(req, "X-Twilio-Signature"), why,
                                       sizeof(why));
    if (resp->status != 200) {
        LOG_WARN("hub", "sms status callback refused (%d): %s", resp->status, why);
        httpd_resp_printf(resp, "%s\n", why);
    }
}

/* POST /v1/sms/inbound: an incoming message; STOP/START-type words opt the
 * number out or in (store_sms_opt). Answered with empty TwiML. */
static void on_sms_inbound(void *arg, const struct httpd_req *req, struct httpd_resp *resp)
{
    hub_t *h = arg;
    char why[128] = "", from[SMS_E164_MAX + 1] = "";
    enum sms_keyword kw = SMS_KEYWORD_NONE;
    resp->status = sms_inbound(sms_state(h), req->body, req->body_len,
                               httpd_req_header(req, "X-Twilio-Signature"), from, sizeof(from),
                               &kw, why, sizeof(why));
    if (resp->status != 200) {
        LOG_WARN("hub", "sms inbound post refused (%d): %s", resp->status, why);
        httpd_resp_printf(resp, "%s\n", why);
        return;
    }
    if (kw != SMS_KEYWORD_NONE) {
        bool out = kw == SMS_KEYWORD_OPT_OUT;
        int rc = store_sms_opt(h->store, from, out, out ? "STOP" : "START", clock_wall_ms());
        if (rc < 0) {
            LOG_WARN("hub", "sms opt-%s not recorded: %s", out ? "out" : "in", tdg_strerror(rc));
            resp->status = 503; /* the provider retries */
            return;
        }
        LOG_INFO("hub", "sms number opted %s (%d endpoint(s) changed)", out ? "out" : "in", rc);
    }
    snprintf(resp->content_type, sizeof(resp->content_type), "text/xml");
    httpd_resp_printf(resp, "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>");
}

/* With the SMS channel and an HTTP listener (metrics.listen): the routes the
 * provider posts to. 0 or a negative error. */
static int sms_routes(hub_t *h, char *err, size_t errlen)
{
    if (!h->httpd || !sms_state(h)) {
        return 0;
    }
    int rc = httpd_route(h->httpd, "POST", "/v1/sms/status", on_sms_status, h);
    if (rc == 0) {
        rc = httpd_route(h->httpd, "POST", "/v1/sms/inbound", on_sms_inbound, h);
    }
    if (rc < 0) {
        snprintf(err, errlen, "sms routes: %s", tdg_strerror(rc));
    }
    return rc;
}

static void on_connect(void *arg)
{
    hub_t *h = arg;
    receipts_on_connect(h->receipts); /* unconfirmed receipts go out again */
    mqtt_subscribe(h->mqtt, h->sub_up, 1);
    mqtt_subscribe(h->mqtt, h->sub_admin, 1);
    /* Agents' retained status: each one seen gets its policy snapshot. */
    if (h->cfg.policy_snapshots) {
        snapshot_publish_all(h->snap, h->mqtt);
        mqtt_subscribe(h->mqtt, "tidings/v1/agents/+/status", 1);
    }
    /* Subscribed first, then announced: an agent that sees "online" may
     * publish at once (MQTT keeps the order of one client's packets). */
    mqtt_publish(h->mqtt, h->status_topic, "online", 6, 1, true, 0, NULL, NULL);
    LOG_INFO("hub", "subscribed to %s", h->sub_up);
}

/* A durable timer came due (scheduler.h): the fanout resumes that work. */
static void on_timer(void *arg, const struct store_timer *t)
{
    hub_t *h = arg;
    int rc = fanout_timer(h->fanout, t);
    if (rc < 0) {
        LOG_ERROR("hub", "timer %s for id=%s: %s", t->kind, t->notification_id,
                  tdg_strerror(rc));
    }
}

static void on_wake(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    hub_t *h = arg;
    h->wake_timer = 0; /* before_sleep runs next: snapshot_prepare, commit, flush */
}

void hub_policy_changed(hub_t *h, const char *user_id)
{
    fanout_policy_changed(h->fanout, user_id);
    if (h->cfg.policy_snapshots) {
        snapshot_changed(h->snap, user_id);
        if (!h->wake_timer) {
            h->wake_timer = loop_timer_add(h->loop, 0, on_wake, h);
        }
    }
}

/* The admin API changed preferences, a time zone or bindings. */
static void on_policy_changed(void *arg, const char *user_id)
{
    hub_policy_changed(arg, user_id);
}

/* bootstrap.agents: bind each listed agent ("*": any) to bootstrap.user for
 * every category. Only adds: a binding dropped from the list stays until
 * revoked (docs/directory.md). */
static int bootstrap_agents(hub_t *h, int64_t now, char *err, size_t errlen)
{
    const struct hub_config *c = &h->cfg;
    char subject[STORE_USER_ID_MAX + 8];
    snprintf(subject, sizeof(subject), "user:%s", c->bootstrap_user);
    const char *p = c->bootstrap_agents;
    while (*p) {
        while (*p == ',' || *p == ' ') {
            p++;
        }
        size_t len = strcspn(p, ", ");
        if (len == 0) {
            break;
        }
        char agent[PROTO_AGENT_MAX + 2];
        const char *field = NULL;
        if (len >= sizeof(agent)) {
            snprintf(err, errlen, "bootstrap.agents: agent id '%.20s...' too long", p);
            return TDG_ECONFIG;
        }
        memcpy(agent, p, len);
        agent[len] = '\0';
        if (store_binding_check(agent, subject, "*", &field) < 0) {
            snprintf(err, errlen, "bootstrap.agents: '%s' is not an agent id or *", agent);
            return TDG_ECONFIG;
        }
        int rc = store_binding_add(h->store, agent, subject, "*", now);
        if (rc < 0) {
            snprintf(err, errlen, "bootstrap.agents: %s: %s", agent, tdg_strerror(rc));
            return rc;
        }
        p += len;
    }
    return 0;
}

/* The PII keyring: pii.keyfile, or <state_dir>/pii.keys, created with a
 * fresh key on first start (never for a store that already holds values
 * sealed under some other key file). Then values under older keys are
 * re-encrypted with the current one. */
static int open_pii(hub_t *h, char *err, size_t errlen)
{
    char path[512];
    bool embedded = !h->cfg.pii_keyfile[0];
    if ((size_t)snprintf(path, sizeof(path), "%s",
                         embedded ? h->cfg.state_dir : h->cfg.pii_keyfile) >= sizeof(path) ||
        (embedded && strlen(path) + sizeof("/pii.keys") > sizeof(path))) {
        snprintf(err, errlen, "pii.keyfile: path too long");
        return -ENAMETOOLONG;
    }
    if (embedded) {
        size_t l = strlen(path);
        snprintf(path + l, sizeof(path) - l, "/pii.keys");
        struct stat st;
        if (stat(path, &st) < 0 && errno == ENOENT) {
            int64_t sealed = 0;
            int rc = store_dir_sealed_count(h->store, &sealed);
            if (rc < 0) {
                snprintf(err, errlen, "%s: %s", path, tdg_strerror(rc));
                return rc;
            }
            if (sealed > 0) {
                snprintf(err, errlen,
                         "%s: missing, but the store holds %lld encrypted directory values; "
                         "restore the key file (a new key could not read them)",
                         path, (long long)sealed);
                return TDG_ECONFIG;
            }
            if ((rc = pii_generate(path, err, errlen)) < 0) {
                return rc;
            }
            LOG_INFO("hub", "created PII key file %s (mode 0600) with a new key; back it up "
                     "with the database", path);
        }
    }
    int rc = pii_load(path, &h->pii, err, errlen);
    if (rc < 0) {
        return rc;
    }
    store_set_pii(h->store, h->pii);
    int64_t now = clock_wall_ms();
    long total = 0;
    int n;
    while ((n = store_dir_reencrypt(h->store, 1000, now)) > 0) {
        total += n;
        if ((rc = store_commit(h->store)) < 0) {
            snprintf(err, errlen, "re-encrypting the directory: %s", tdg_strerror(rc));
            return rc;
        }
    }
    if (n < 0) {
        snprintf(err, errlen, "re-encrypting the directory: %s", tdg_strerror(n));
        return n;
    }
    if (total > 0) {
        LOG_INFO("hub", "re-encrypted %ld directory value(s) with PII key %s", total,
                 pii_current_id(h->pii));
    }
    return 0;
}

static int bootstrap(hub_t *h, const struct apns_config *apns, char *err, size_t errlen)
{
    const struct hub_config *c = &h->cfg;
    if (!c->bootstrap_user[0]) {
        return 0;
    }
    int64_t now = clock_wall_ms();
    int rc = store_user_upsert(h->store, c->bootstrap_user, c->bootstrap_tz, now);
    if (rc == 0 && c->bootstrap_ios_token[0]) {
        const char *app = c->bootstrap_ios_app[0] ? c->bootstrap_ios_app : apns->topic;
        rc = store_device_upsert(h->store, c->bootstrap_user, "ios", c->bootstrap_ios_token, app,
                                 c->bootstrap_ios_env, now);
    }
    if (rc == 0 && c->bootstrap_android_token[0]) {
        /* app empty: the FCM channel's own project (channel.h) */
        rc = store_device_upsert(h->store, c->bootstrap_user, "android",
                                 c->bootstrap_android_token, "", "production", now);
    }
    if (rc == 0 && c->bootstrap_phone[0]) {
        rc = store_device_upsert(h->store, c->bootstrap_user, "sms", c->bootstrap_phone, "",
                                 "production", now);
    }
    if (rc == 0 && c->bootstrap_email[0]) {
        rc = store_device_upsert(h->store, c->bootstrap_user, "email", c->bootstrap_email, "",
                                 "production", now);
    }
    if (rc == 0) {
        rc = bootstrap_agents(h, now, err, errlen);
        if (rc < 0) {
            return rc;
        }
    }
    if (rc == 0 && c->bootstrap_prefs[0]) {
        struct policy_error pe;
        rc = store_pref_set(h->store, c->bootstrap_user, c->bootstrap_prefs,
                            strlen(c->bootstrap_prefs), now, &pe);
        if (rc < 0) {
            snprintf(err, errlen, "bootstrap.prefs: %s%s%s", pe.field, pe.field[0] ? ": " : "",
                     pe.detail[0] ? pe.detail : tdg_strerror(rc));
            return TDG_ECONFIG;
        }
    }
    if (rc == 0) {
        rc = store_commit(h->store);
    }
    if (rc < 0) {
        snprintf(err, errlen, "bootstrap user %s: %s", c->bootstrap_user, tdg_strerror(rc));
    }
    return rc;
}

/* "apns,fcm" -> enabled[] by channel_defs index. */
static int parse_enabled(const char *list, bool *enabled, char *err, size_t errlen)
{
    memset(enabled, 0, N_CHANNELS * sizeof(*enabled));
    const char *p = list;
    while (*p) {
        while (*p == ',' || *p == ' ') {
            p++;
        }
        size_t len = strcspn(p, ", ");
        if (len == 0) {
            break;
        }
        size_t c = 0;
        while (c < N_CHANNELS && (strlen(channel_defs[c].ops->name) != len ||
                                  strncmp(channel_defs[c].ops->name, p, len) != 0)) {
            c++;
        }
        if (c == N_CHANNELS) {
            snprintf(err, errlen, "channels: unknown channel '%.*s'", (int)len, p);
            return TDG_ECONFIG;
        }
        enabled[c] = true;
        p += len;
    }
    return 0;
}

int hub_create(loop_t *loop, const hub_settings_t *s, hub_t **out, char *err, size_t errlen)
{
    hub_t *h = calloc(1, sizeof(*h));
    if (!h) {
        return -ENOMEM;
    }
    h->loop = loop;
    memcpy(&h->cfg, s->blob, sizeof(h->cfg));
    log_set_level((enum log_level)h->cfg.log_level);
    int rc;
    if (mkdir(h->cfg.state_dir, 0700) < 0 && errno != EEXIST) {
        rc = -errno;
        snprintf(err, errlen, "state_dir %s: %s", h->cfg.state_dir, strerror(-rc));
        free(h);
        return rc;
    }
    char path[512];
    if ((size_t)snprintf(path, sizeof(path), "%s/hub.db", h->cfg.state_dir) >= sizeof(path)) {
        snprintf(err, errlen, "state_dir too long");
        free(h);
        return -ENAMETOOLONG;
    }
    rc = store_open(path, h->cfg.synchronous == 1 ? DB_SYNC_FULL : DB_SYNC_NORMAL, &h->store, err,
                    errlen);
    if (rc < 0) {
        free(h);
        return rc;
    }
    /* Notifications waiting for a provider retry keep waiting (the retry
     * timer requeues them when due); the rest of 'sending' is requeued. */
    int held = store_timer_hold_retries(h->store);
    if (held > 0) {
        LOG_INFO("hub", "%d notification(s) wait for their provider retry time", held);
    }
    int requeued = store_recover(h->store, clock_wall_ms());
    if (requeued > 0) {
        LOG_WARN("hub", "recovered %d notification(s) that were being sent when the hub "
                 "stopped; their in-flight attempts may repeat",
                 requeued);
    }
    if ((rc = open_pii(h, err, errlen)) < 0) {
        hub_destroy(h);
        return rc;
    }
    const struct apns_config *apns = (const void *)(s->blob + s->chan_off[0]);
    if ((rc = bootstrap(h, apns, err, errlen)) < 0) {
        hub_destroy(h);
        return rc;
    }
    bool enabled[N_CHANNELS];
    if ((rc = parse_enabled(h->cfg.channels, enabled, err, errlen)) < 0) {
        hub_destroy(h);
        return rc;
    }
    if ((rc = engine_create(h, err, errlen)) < 0) {
        hub_destroy(h);
        return rc;
    }
    struct channel_env env = {
        .loop = loop, .http = NULL, .status = on_channel_status, .status_arg = h,
        .watch = on_channel_watch, .watch_arg = h};
    struct fanout_route routes[N_CHANNELS];
    for (size_t c = 0; c < N_CHANNELS; c++) {
        routes[c] = (struct fanout_route){.platform = channel_defs[c].platform,
                                          .proto_class = channel_defs[c].proto_class,
                                          .channel = channel_defs[c].ops->name};
        if (!enabled[c]) {
            continue;
        }
        if ((rc = engine_add_channel(h, s, c, &env, &routes[c], err, errlen)) < 0) {
            hub_destroy(h);
            return rc;
        }
    }
    struct fanout_opts fo = {.max_jobs = (unsigned)h->cfg.max_jobs,
                             .max_attempts = (unsigned)h->cfg.max_attempts,
                             .retry_base_ms = h->cfg.retry_base_ms,
                             .retry_cap_ms = h->cfg.retry_cap_ms};
    h->intake = intake_create(h->store);
    h->fanout = fanout_create(loop, h->store, &fo, routes, N_CHANNELS);
    if (!h->intake || !h->fanout) {
        snprintf(err, errlen, "out of memory");
        hub_destroy(h);
        return -ENOMEM;
    }
    if ((rc = engine_start(h, err, errlen)) < 0) {
        hub_destroy(h);
        return rc;
    }
    if ((rc = sms_routes(h, err, errlen)) < 0) {
        hub_destroy(h);
        return rc;
    }
    sms_resume(h);
    snprintf(h->sub_up, sizeof(h->sub_up), "$share/%s/tidings/v1/agents/+/up", h->cfg.share_group);
    h->sched = sched_create(loop, h->store, on_timer, h, NULL);
    h->snap = snapshot_create(h->store);
    if (!h->sched || !h->snap) {
        snprintf(err, errlen, "out of memory");
        hub_destroy(h);
        return -ENOMEM;
    }
    fanout_set_sched(h->fanout, h->sched);
    intake_set_fanout(h->intake, h->fanout); /* new notifications skip the queue when they can */
    if (h->cfg.intake_parse_thread) {
        fanout_set_release(h->fanout, intake_release, h->intake); /* freed by the parse thread */
    }
    if ((rc = sched_start(h->sched)) < 0) {
        snprintf(err, errlen, "scheduler: %s", tdg_strerror(rc));
        hub_destroy(h);
        return rc;
    }
    struct admin_env ae = {.store = h->store, .fanout = h->fanout, .intake = h->intake,
                           .routes = routes, .nroutes = N_CHANNELS,
                           .dispatch = h->dispatch,
                           .changed = on_policy_changed, .changed_arg = h};
    if (!(h->admin = admin_create(&ae))) {
        snprintf(err, errlen, "out of memory");
        hub_destroy(h);
        return -ENOMEM;
    }
    snprintf(h->sub_admin, sizeof(h->sub_admin), "$share/%s/" ADMIN_REQUEST_PREFIX "#",
             h->cfg.share_group);
    if ((rc = loop_before_sleep(loop, before_sleep, h)) < 0) {
        snprintf(err, errlen, "event loop: %s", tdg_strerror(rc));
        hub_destroy(h);
        return rc;
    }
    char client_id[80];
    if (h->cfg.client_id[0]) {
        snprintf(client_id, sizeof(client_id), "%s", h->cfg.client_id);
    } else {
        snprintf(client_id, sizeof(client_id), "tidings-hub-%ld", (long)getpid());
    }
    if (proto_topic(h->status_topic, sizeof(h->status_topic), PROTO_TOPIC_HUB_STATUS, client_id) <
        0) {
        snprintf(err, errlen, "broker.client_id '%s': must be 1-64 of [A-Za-z0-9._-]", client_id);
        hub_destroy(h);
        return TDG_ECONFIG;
    }
    struct mqtt_opts mo = {
        .name = "broker",
        .host = h->cfg.broker_host,
        .port = (int)h->cfg.broker_port,
        .client_id = client_id,
        .username = h->cfg.broker_username,
        .password = h->cfg.broker_password,
        .cafile = h->cfg.broker_cafile,
        .certfile = h->cfg.broker_certfile,
        .keyfile = h->cfg.broker_keyfile,
        .keepalive_s = 60,
        .backoff_base_ms = 200,
        .backoff_cap_ms = 10000,
        /* An empty retained will clears "online": agents stop sending to a
         * hub that died, and old hubs leave nothing behind. */
        .will_topic = h->status_topic,
        .will_payload = "",
        .will_retain = true,
        /* Agents' batches are up to uplink.batch_bytes (16 MiB at most).
         * PUBACKs go out as messages are read (no manual_ack): the session
         * is clean, so the broker forgets unacknowledged messages when we
         * go anyway; what the hub has not committed the agents resend
         * (no application ack). */
        .max_packet = 17u * 1024u * 1024u,
    };
    struct mqtt_handlers mh = {
        .on_connect = on_connect, .on_message = on_message, .on_publish = on_publish, .arg = h};
    h->mqtt = mqtt_create(loop, &mo, &mh);
    if (!h->mqtt) {
        snprintf(err, errlen, "cannot start the MQTT client");
        hub_destroy(h);
        return TDG_EMQTT;
    }
    LOG_INFO("hub", "hub started: broker %s:%lld, store %s", h->cfg.broker_host,
             (long long)h->cfg.broker_port, path);
    *out = h;
    return 0;
}

void hub_destroy(hub_t *h)
{
    if (!h) {
        return;
    }
    if (h->mqtt && mqtt_connected(h->mqtt)) {
        mqtt_publish(h->mqtt, h->status_topic, "", 0, 1, true, 0, NULL, NULL);
    }
    mqtt_destroy(h->mqtt);
    h->mqtt = NULL;
    if (h->wake_timer) {
        loop_timer_cancel(h->loop, h->wake_timer);
    }
    engine_destroy(h); /* the channels first: no outcome can reach a job */
    admin_destroy(h->admin);
    sched_destroy(h->sched);
    snapshot_destroy(h->snap);
    fanout_destroy(h->fanout);
    intake_destroy(h->intake);
    if (h->store) {
        store_commit(h->store);
    }
    store_close(h->store);
    pii_destroy(h->pii);
    free(h);
}
