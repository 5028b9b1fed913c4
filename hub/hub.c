/* hub.c - wiring of broker, intake, store and fanout (see hub.h). */
#include "hub.h"

#include "channels/apns.h"
#include "channels/email.h"
#include "channels/fcm.h"
#include "channels/sms.h"
#include "error.h"
#include "fanout.h"
#include "intake.h"
#include "log.h"
#include "mqtt.h"
#include "store.h"

#include <errno.h>
#include <mosquitto.h>
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
     "Notifications being delivered at once (the rest wait in the store)", NULL, 1, 1000000},
    {"fanout.max_attempts", CONFIG_INT, "8", OFF(max_attempts),
     "Attempts per device before a notification fails", NULL, 1, 100},
    {"fanout.retry_base", CONFIG_DURATION, "1s", OFF(retry_base_ms),
     "First retry backoff (full jitter)", NULL, 1, 3600000},
    {"fanout.retry_cap", CONFIG_DURATION, "5m", OFF(retry_cap_ms), "Retry backoff cap", NULL, 1,
     86400000},
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
    intake_t *intake;
    fanout_t *fanout;
    mqtt_t *mqtt;
    void *chan_state[N_CHANNELS];
    char sub_up[160];
    char status_topic[160]; /* tidings/v1/hubs/<client id>/status */
    bool commit_failed_logged;
};

/* Once per iteration: take queued work, commit everything written in this
 * iteration, then (and only then) ack the agents and start the sends. */
static void before_sleep(loop_t *loop, void *arg)
{
    (void)loop;
    hub_t *h = arg;
    fanout_pull(h->fanout);
    int rc = store_commit(h->store);
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
    if (rc == 0) {
        fanout_flush(h->fanout);
    }
}

static void on_message(void *arg, const struct mosquitto_message *msg,
                       const mosquitto_property *props)
{
    (void)props;
    hub_t *h = arg;
    char agent[PROTO_AGENT_MAX + 1];
    if (proto_topic_agent(msg->topic, "up", agent, sizeof(agent)) == 0) {
        intake_handle_up(h->intake, agent, msg->payload ? msg->payload : "",
                         msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0);
        return;
    }
    LOG_DEBUG("hub", "ignoring message on %s", msg->topic);
}

static void on_connect(void *arg)
{
    hub_t *h = arg;
    mqtt_subscribe(h->mqtt, h->sub_up, 1);
    /* Subscribed first, then announced: an agent that sees "online" may
     * publish at once (MQTT keeps the order of one client's packets). */
    mqtt_publish(h->mqtt, h->status_topic, "online", 6, 1, true, 0, NULL, NULL);
    LOG_INFO("hub", "subscribed to %s", h->sub_up);
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
    int requeued = store_recover(h->store, clock_wall_ms());
    if (requeued > 0) {
        LOG_WARN("hub", "recovered %d notification(s) that were being sent when the hub "
                 "stopped; their in-flight attempts may repeat",
                 requeued);
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
    struct channel_env env = {.loop = loop, .http = NULL};
    struct fanout_route routes[N_CHANNELS];
    for (size_t c = 0; c < N_CHANNELS; c++) {
        routes[c] = (struct fanout_route){.platform = channel_defs[c].platform,
                                          .proto_class = channel_defs[c].proto_class,
                                          .channel = channel_defs[c].ops->name};
        if (!enabled[c]) {
            continue;
        }
        char cerr[256] = "";
        rc = channel_defs[c].ops->init(&env, s->blob + s->chan_off[c], &h->chan_state[c], cerr,
                               sizeof(cerr));
        if (rc < 0) {
            snprintf(err, errlen, "channel %s: %s", channel_defs[c].ops->name, cerr);
            hub_destroy(h);
            return rc;
        }
        routes[c].ops = channel_defs[c].ops;
        routes[c].state = h->chan_state[c];
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
    snprintf(h->sub_up, sizeof(h->sub_up), "$share/%s/tidings/v1/agents/+/up", h->cfg.share_group);
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
    };
    struct mqtt_handlers mh = {.on_connect = on_connect, .on_message = on_message, .arg = h};
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
    for (size_t c = 0; c < N_CHANNELS; c++) {
        if (h->chan_state[c]) {
            channel_defs[c].ops->destroy(h->chan_state[c]);
        }
    }
    fanout_destroy(h->fanout);
    intake_destroy(h->intake);
    if (h->store) {
        store_commit(h->store);
    }
    store_close(h->store);
    free(h);
}
