/* dispatch.c - rate limits, concurrency, breakers and failover in front of
 * the channels (see dispatch.h). */
#include "dispatch.h"

#include "bucket.h"
#include "error.h"
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MOD "dispatch"
#define MAX_CHANNELS 8
#define MAX_REASONS 16 /* failure reason label values per channel; the rest are "other" */
#define REASON_LABEL_MAX 48
#define POOL_CHUNK 256

struct provider;

/* One provider request in flight, or one deferred outcome. Pooled. */
struct call {
    struct call *next; /* free list / deferred list */
    struct provider *p;
    channel_done_cb done;
    void *ctx;
    uint64_t start_ns;
    struct channel_outcome deferred;
};

struct provider {
    struct dispatch_chan *ch;
    const char *role; /* "primary" / "backup" */
    char name[48];    /* "apns", "apns.backup": breaker logs */
    void *state;
    struct bucket bucket;
    struct breaker br;
    unsigned inflight;
    uint64_t wake_timer;
    struct metric *m_ok, *m_retry, *m_drop, *m_limited, *m_inflight, *m_state, *m_opens;
};

struct reason_slot {
    char text[REASON_LABEL_MAX];
    struct metric *m;
};

struct dispatch_chan {
    dispatch_t *d;
    char name[32];
    const struct channel_ops *ops;
    struct dispatch_config cfg;
    struct provider prov[2];
    unsigned nprov;
    bool on_backup; /* last send went to the backup (failover logged once) */
    struct metric *m_latency, *m_failfast, *m_failover, *m_disabled, *m_flagged, *m_other;
    struct reason_slot reasons[MAX_REASONS];
    unsigned nreasons;
};

struct pool_chunk {
    struct pool_chunk *next;
    struct call calls[POOL_CHUNK];
};

struct dispatch {
    loop_t *loop;
    metrics_t *metrics;
    struct dispatch_chan *chans[MAX_CHANNELS];
    unsigned nchans;
    unsigned inflight;
    struct call *free_calls;
    struct pool_chunk *chunks;
    struct call *deferred_head, *deferred_tail;
    uint64_t deferred_timer;
};

/* --- settings ------------------------------------------------------------ */

#define DOFF(f) offsetof(struct dispatch_config, f), sizeof(((struct dispatch_config *)0)->f)

static const struct config_entry engine_template[DISPATCH_CONFIG_N] = {
    {"engine.rate", CONFIG_INT, "0", DOFF(rate),
     "Requests per second to each provider of this channel (token bucket); 0 = unlimited", NULL, 0,
     1000000},
    {"engine.burst", CONFIG_INT, "0", DOFF(burst), "Token bucket size (0: the rate)", NULL, 0,
     1000000},
    {"engine.concurrency", CONFIG_INT, "0", DOFF(concurrency),
     "Requests in flight per provider (0: only the channel's own bound)", NULL, 0, 1000000},
    {"engine.breaker_failures", CONFIG_INT, "20", DOFF(br_failures),
     "Failures in a row (no answer, 5xx, 429) that open the circuit breaker", NULL, 1, 1000000},
    {"engine.breaker_window", CONFIG_INT, "50", DOFF(br_window),
     "Outcomes in the breaker's failure-ratio window", NULL, 1, 64},
    {"engine.breaker_ratio", CONFIG_INT, "50", DOFF(br_ratio),
     "Failure percentage over a full window that opens the breaker (0: off)", NULL, 0, 100},
    {"engine.breaker_open", CONFIG_DURATION, "30s", DOFF(br_open_ms),
     "How long an open breaker refuses requests before half-open probes", NULL, 10, 3600000},
    {"engine.breaker_probes", CONFIG_INT, "1", DOFF(br_probes),
     "Half-open: requests let through at once, and successes needed to close", NULL, 1, 1000},
    {"backup.enabled", CONFIG_BOOL, "false", DOFF(backup_enabled),
     "Use the backup provider (<channel>.backup.*) while the primary's breaker is open; also "
     "on when any backup key is set",
     NULL, 0, 0},
};

/* Prefix every key of tmpl[0..n) with "<chan>." (skip_prefix chars of each
 * key dropped first), into one allocated block. */
static int prefixed_keys(const char *chan, const char *mid, const struct config_entry *tmpl,
                         size_t n, size_t skip_prefix, struct config_entry *out, char **keys)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        total += strlen(chan) + 1 + strlen(mid) + strlen(tmpl[i].key) + 1;
    }
    char *blk = malloc(total ? total : 1);
    if (!blk) {
        return -ENOMEM;
    }
    char *p = blk;
    for (size_t i = 0; i < n; i++) {
        const char *k = tmpl[i].key;
        k += strlen(k) > skip_prefix ? skip_prefix : 0;
        size_t room = strlen(chan) + 1 + strlen(mid) + strlen(k) + 1;
        snprintf(p, room, "%s.%s%s", chan, mid, k);
        out[i] = tmpl[i];
        out[i].key = p;
        p += room;
    }
    *keys = blk;
    return 0;
}

int dispatch_config_table(const char *chan, size_t off, struct config_entry *out, char **keys)
{
    int rc = prefixed_keys(chan, "", engine_template, DISPATCH_CONFIG_N, 0, out, keys);
    if (rc == 0) {
        for (size_t i = 0; i < DISPATCH_CONFIG_N; i++) {
            out[i].offset += off;
        }
    }
    return rc;
}

int dispatch_backup_table(const struct channel_ops *ops, size_t delta, struct config_entry *out,
                          char **keys)
{
    /* "sms.api_url" -> "sms.backup.api_url" */
    size_t skip = strlen(ops->name) + 1;
    int rc = prefixed_keys(ops->name, "backup.", ops->config, ops->config_n, skip, out, keys);
    if (rc == 0) {
        for (size_t i = 0; i < ops->config_n; i++) {
            out[i].offset += delta;
            if (out[i].help && strncmp(out[i].help, "Backup provider: ", 17) != 0) {
                out[i].help = dispatch_backup_inherits(ops->config[i].key) == 1
                                  ? "Backup provider: as the primary's key of the same name "
                                    "(empty/default: the primary's value)"
                                  : "Backup provider: as the primary's key of the same name "
                                    "(a credential: never taken from the primary)";
            }
        }
    }
    return rc;
}

static bool field_equal(const struct config_entry *e, const void *a, const void *b)
{
    const char *pa = (const char *)a + e->offset, *pb = (const char *)b + e->offset;
    if (e->type == CONFIG_STRING) {
        return strncmp(pa, pb, e->size) == 0;
    }
    return memcmp(pa, pb, e->size) == 0;
}

/* Which backup keys left at their default take the primary's value
 * (docs/engine.md "Backup provider"). Transport and tuning do: endpoints,
 * the CA to verify them, timeouts, connection and queue bounds, rates,
 * the hub's own callback URLs, the app's default topic and the email
 * sender address. Credentials and what belongs to an account never do:
 * keys, certificates, secrets, account and team ids, sender numbers,
 * tenants (a backup with another authentication kind, or at another
 * host, must never get the primary's secrets). A key not in this list
 * never inherits, so a new credential key is safe by default;
 * test_dispatch checks that every channel key is listed. */
static const struct {
    const char *key;
    bool inherit;
} backup_keys[] = {
    {"apns.url", true},          {"apns.sandbox_url", true},
    {"apns.ca_file", true},      {"apns.token_refresh", true},
    {"apns.timeout", true},      {"apns.connections", true},
    {"apns.max_streams", true},  {"apns.topic", true},
    {"apns.key_file", false},    {"apns.key_id", false},
    {"apns.team_id", false},     {"apns.cert_file", false},
    {"apns.cert_key_file", false}, {"apns.cert_password_file", false},
    {"apns.topics", false},      {"apns.tenants_dir", false},

    {"fcm.send_url", true},      {"fcm.token_url", true},
    {"fcm.ca_file", true},       {"fcm.timeout", true},
    {"fcm.connections", true},   {"fcm.max_streams", true},
    {"fcm.token_margin", true},  {"fcm.rate", true},
    {"fcm.burst", true},         {"fcm.queue", true},
    {"fcm.service_account_file", false}, {"fcm.project_id", false},
    {"fcm.tenants_dir", false},

    {"sms.api_url", true},       {"sms.ca_file", true},
    {"sms.timeout", true},       {"sms.rate", true},
    {"sms.queue_max", true},     {"sms.status_callback_url", true},
    {"sms.inbound_url", true},   {"sms.status_poll", true},
    {"sms.status_poll_for", true}, {"sms.status_poll_max", true},
    {"sms.account_sid", false},  {"sms.auth_token", false},
    {"sms.auth_token_file", false}, {"sms.from", false},
    {"sms.messaging_service_sid", false}, {"sms.prefixes", false},
    {"sms.tenants_dir", false},

    {"email.smtp_url", true},    {"email.ca_file", true},
    {"email.from", true},        {"email.helo", true},
    {"email.timeout", true},     {"email.connections", true},
    {"email.queue_max", true},
    {"email.username", false},   {"email.password", false},
    {"email.password_file", false}, {"email.auth", false},
};

int dispatch_backup_inherits(const char *key)
{
    for (size_t i = 0; i < sizeof(backup_keys) / sizeof(backup_keys[0]); i++) {
        if (strcmp(backup_keys[i].key, key) == 0) {
            return backup_keys[i].inherit ? 1 : 0;
        }
    }
    return -1;
}

int dispatch_backup_resolve(const struct channel_ops *ops, const void *primary, void *backup,
                            bool enabled)
{
    void *def = calloc(1, ops->config_size ? ops->config_size : 1);
    if (!def) {
        return -ENOMEM;
    }
    char err[CONFIG_ERR_MAX];
    if (config_defaults(ops->config, ops->config_n, def, err, sizeof(err)) < 0) {
        free(def);
        return -EINVAL;
    }
    bool any = enabled;
    for (size_t i = 0; i < ops->config_n && !any; i++) {
        any = !field_equal(&ops->config[i], backup, def);
    }
    if (any) {
        for (size_t i = 0; i < ops->config_n; i++) {
            const struct config_entry *e = &ops->config[i];
            if (field_equal(e, backup, def) && dispatch_backup_inherits(e->key) == 1) {
                memcpy((char *)backup + e->offset, (const char *)primary + e->offset, e->size);
            }
        }
    }
    free(def);
    return any ? 1 : 0;
}

/* --- calls ------------------------------------------------------------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static struct call *call_get(dispatch_t *d)
{
    if (!d->free_calls) {
        struct pool_chunk *c = calloc(1, sizeof(*c));
        if (!c) {
            return NULL;
        }
        c->next = d->chunks;
        d->chunks = c;
        for (size_t i = 0; i < POOL_CHUNK; i++) {
            c->calls[i].next = d->free_calls;
            d->free_calls = &c->calls[i];
        }
    }
    struct call *k = d->free_calls;
    d->free_calls = k->next;
    k->next = NULL;
    return k;
}

static void call_put(dispatch_t *d, struct call *k)
{
    k->next = d->free_calls;
    d->free_calls = k;
}

/* --- metrics ------------------------------------------------------------- */

static struct metric *series(dispatch_t *d, enum metric_type t, const char *name, const char *help,
                             const char *k1, const char *v1, const char *k2, const char *v2,
                             const char *k3, const char *v3)
{
    if (!d->metrics) {
        return NULL;
    }
    const char *keys[3] = {k1, k2, k3}, *vals[3] = {v1, v2, v3};
    size_t n = k3 ? 3 : k2 ? 2 : k1 ? 1 : 0;
    return metrics_series_kv(d->metrics, t, name, help, keys, vals, n);
}

#define INC(m) ((m) ? (void)((m)->v++) : (void)0)

static const char H_ATT[] = "Provider requests by channel, provider and result (ok, retry, drop)";
static const char H_FAIL[] = "Provider requests that did not succeed, by channel and reason "
                             "(the first 16 distinct reasons of a channel; the rest: other)";

/* The failure counter of this reason; the first MAX_REASONS distinct texts
 * get a series each, later ones count as "other" (bounded label set). */
static struct metric *reason_metric(struct dispatch_chan *ch, const char *reason)
{
    char r[REASON_LABEL_MAX];
    snprintf(r, sizeof(r), "%s", reason && *reason ? reason : "none");
    for (unsigned i = 0; i < ch->nreasons; i++) {
        if (strcmp(ch->reasons[i].text, r) == 0) {
            return ch->reasons[i].m;
        }
    }
    if (ch->nreasons < MAX_REASONS) {
        struct reason_slot *s = &ch->reasons[ch->nreasons++];
        snprintf(s->text, sizeof(s->text), "%s", r);
        s->m = series(ch->d, METRIC_COUNTER, "tidings_hub_failures_total", H_FAIL, "channel",
                      ch->name, "reason", r, NULL, NULL);
        return s->m;
    }
    if (!ch->m_other) {
        ch->m_other = series(ch->d, METRIC_COUNTER, "tidings_hub_failures_total", H_FAIL, "channel",
                             ch->name, "reason", "other", NULL, NULL);
    }
    return ch->m_other;
}

static void collect(void *arg)
{
    dispatch_t *d = arg;
    uint64_t now = loop_now_ms(d->loop);
    for (unsigned c = 0; c < d->nchans; c++) {
        struct dispatch_chan *ch = d->chans[c];
        for (unsigned i = 0; i < ch->nprov; i++) {
            struct provider *p = &ch->prov[i];
            if (p->m_inflight) {
                p->m_inflight->v = p->inflight;
            }
            if (p->m_state) {
                p->m_state->v = (int64_t)breaker_state(&p->br, now);
            }
            if (p->m_opens) {
                p->m_opens->v = (int64_t)p->br.opens;
            }
        }
    }
}

/* --- sending --------------------------------------------------------------- */

static void on_wake(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    struct provider *p = arg;
    /* Nothing to do here: the wake-up itself makes the hub's before-sleep
     * hook flush the fanout again, now that a token is due. */
    p->wake_timer = 0;
}

static void on_deferred(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    dispatch_t *d = arg;
    d->deferred_timer = 0;
    struct call *k = d->deferred_head;
    d->deferred_head = d->deferred_tail = NULL;
    while (k) {
        struct call *next = k->next;
        channel_done_cb done = k->done;
        void *ctx = k->ctx;
        struct channel_outcome o = k->deferred;
        call_put(d, k);
        done(ctx, &o);
        k = next;
    }
}

/* Does this outcome say the provider is unwell (docs/engine.md, "Circuit
 * breaker")? No answer and 5xx do. A 429 does when it is about the provider
 * or our account (FCM QUOTA_EXCEEDED, SMS 20429: the quota of the project or
 * sender), but not when it is about one device: APNs' TooManyRequests is
 * "too many requests to the same device token", so one hot device must not
 * open the breaker for everyone (that device backs off by itself). */
static bool is_failure(const struct dispatch_chan *ch, const struct channel_outcome *o)
{
    if (o->result != CHANNEL_RETRY) {
        return false;
    }
    if (o->status == 429) {
        return !(strcmp(ch->name, "apns") == 0 && strcmp(o->reason, "TooManyRequests") == 0);
    }
    return o->status == 0 || o->status >= 500;
}

static void on_done(void *ctx, const struct channel_outcome *o)
{
    struct call *k = ctx;
    struct provider *p = k->p;
    struct dispatch_chan *ch = p->ch;
    dispatch_t *d = ch->d;
    p->inflight--;
    d->inflight--;
    breaker_record(&p->br, is_failure(ch, o), loop_now_ms(d->loop));
    if (ch->m_latency) {
        metrics_observe(ch->m_latency, (double)(now_ns() - k->start_ns) / 1e6);
    }
    switch (o->result) {
    case CHANNEL_OK:
        INC(p->m_ok);
        break;
    case CHANNEL_RETRY:
        INC(p->m_retry);
        INC(reason_metric(ch, o->reason));
        break;
    case CHANNEL_DROP:
        INC(p->m_drop);
        INC(reason_metric(ch, o->reason));
        break;
    }
    if (o->device_action == CHANNEL_DEVICE_DISABLE) {
        INC(ch->m_disabled);
    } else if (o->device_action == CHANNEL_DEVICE_FLAG) {
        INC(ch->m_flagged);
    }
    channel_done_cb done = k->done;
    void *dctx = k->ctx;
    call_put(d, k);
    done(dctx, o);
}

/* Answer "retry later" without sending (never from inside send: deferred). */
static int fail_fast(struct dispatch_chan *ch, uint64_t retry_ms, channel_done_cb done, void *ctx)
{
    dispatch_t *d = ch->d;
    struct call *k = call_get(d);
    if (!k) {
        return -ENOMEM;
    }
    k->p = NULL;
    k->done = done;
    k->ctx = ctx;
    memset(&k->deferred, 0, sizeof(k->deferred));
    k->deferred.result = CHANNEL_RETRY;
    k->deferred.retry_after_ms = retry_ms;
    snprintf(k->deferred.reason, sizeof(k->deferred.reason), "circuit open: %s%s", ch->name,
             ch->nprov > 1 ? " and its backup" : "");
    if (d->deferred_tail) {
        d->deferred_tail->next = k;
    } else {
        d->deferred_head = k;
    }
    d->deferred_tail = k;
    if (!d->deferred_timer) {
        d->deferred_timer = loop_timer_add(d->loop, 0, on_deferred, d);
        if (!d->deferred_timer) {
            /* take it back out: the caller treats the error as a retry */
            struct call **pp = &d->deferred_head, *prev = NULL;
            while (*pp != k) {
                prev = *pp;
                pp = &(*pp)->next;
            }
            *pp = NULL;
            d->deferred_tail = prev;
            call_put(d, k);
            return -ENOMEM;
        }
    }
    INC(ch->m_failfast);
    return 0;
}

static void note_provider(struct dispatch_chan *ch, struct provider *p)
{
    bool backup = p != &ch->prov[0];
    if (backup != ch->on_backup) {
        ch->on_backup = backup;
        if (backup) {
            LOG_WARN(MOD, "%s: primary's breaker is open: sending through the backup provider",
                     ch->name);
        } else {
            LOG_INFO(MOD, "%s: back on the primary provider", ch->name);
        }
    }
    if (backup) {
        INC(ch->m_failover);
    }
}

static int dsend(void *state, const struct channel_delivery *cd, channel_done_cb done, void *ctx)
{
    struct dispatch_chan *ch = state;
    dispatch_t *d = ch->d;
    uint64_t now = loop_now_ms(d->loop);
    struct provider *p = NULL;
    if (breaker_allow(&ch->prov[0].br, now)) {
        p = &ch->prov[0];
    } else if (ch->nprov > 1 && breaker_allow(&ch->prov[1].br, now)) {
        p = &ch->prov[1];
    }
    if (!p) {
        /* Open everywhere: fail fast until the earliest half-open. A
         * half-open breaker whose probes are out: wait for their verdict
         * (their outcome wakes the loop). */
        uint64_t wait = UINT64_MAX;
        for (unsigned i = 0; i < ch->nprov; i++) {
            if (breaker_state(&ch->prov[i].br, now) != BREAKER_OPEN) {
                return -EBUSY;
            }
            uint64_t w = breaker_retry_in(&ch->prov[i].br, now);
            wait = w < wait ? w : wait;
        }
        return fail_fast(ch, wait, done, ctx);
    }
    if (ch->cfg.concurrency > 0 && p->inflight >= (uint64_t)ch->cfg.concurrency) {
        breaker_release(&p->br);
        return -EBUSY; /* an outcome frees a slot and wakes the loop */
    }
    if (!bucket_take(&p->bucket, now)) {
        breaker_release(&p->br);
        INC(p->m_limited);
        if (!p->wake_timer) {
            p->wake_timer = loop_timer_add(d->loop, bucket_wait_ms(&p->bucket, now), on_wake, p);
        }
        return -EBUSY;
    }
    struct call *k = call_get(d);
    if (!k) {
        breaker_release(&p->br);
        return -ENOMEM;
    }
    k->p = p;
    k->done = done;
    k->ctx = ctx;
    k->start_ns = now_ns();
    int rc = ch->ops->send(p->state, cd, on_done, k);
    if (rc < 0) {
        breaker_release(&p->br);
        call_put(d, k);
        return rc; /* -EBUSY: the channel's own window; else the fanout retries */
    }
    note_provider(ch, p);
    p->inflight++;
    d->inflight++;
    return 0;
}

static void dnoop_destroy(void *state)
{
    (void)state; /* the dispatcher owns the providers */
}

const struct channel_ops dispatch_channel_ops = {
    .name = "dispatch",
    .send = dsend,
    .destroy = dnoop_destroy,
};

/* --- lifecycle ------------------------------------------------------------ */

dispatch_t *dispatch_create(loop_t *loop, metrics_t *metrics)
{
    dispatch_t *d = calloc(1, sizeof(*d));
    if (!d) {
        return NULL;
    }
    d->loop = loop;
    d->metrics = metrics;
    if (metrics && metrics_on_collect(metrics, collect, d) < 0) {
        free(d);
        return NULL;
    }
    return d;
}

static void provider_init(struct dispatch_chan *ch, struct provider *p, const char *role,
                          void *state)
{
    dispatch_t *d = ch->d;
    const struct dispatch_config *c = &ch->cfg;
    p->ch = ch;
    p->role = role;
    p->state = state;
    snprintf(p->name, sizeof(p->name), "%s%s", ch->name,
             strcmp(role, "backup") == 0 ? ".backup" : "");
    uint64_t now = loop_now_ms(d->loop);
    bucket_init(&p->bucket, (uint64_t)c->rate, (uint64_t)c->burst, now);
    struct breaker_opts bo = {.failures = (unsigned)c->br_failures,
                              .window = (unsigned)c->br_window,
                              .ratio_pct = (unsigned)c->br_ratio,
                              .open_ms = c->br_open_ms,
                              .probes = (unsigned)c->br_probes};
    breaker_init(&p->br, p->name, &bo);
    const char *cn = ch->name;
    p->m_ok = series(d, METRIC_COUNTER, "tidings_hub_attempts_total", H_ATT, "channel", cn,
                     "provider", role, "result", "ok");
    p->m_retry = series(d, METRIC_COUNTER, "tidings_hub_attempts_total", H_ATT, "channel", cn,
                        "provider", role, "result", "retry");
    p->m_drop = series(d, METRIC_COUNTER, "tidings_hub_attempts_total", H_ATT, "channel", cn,
                       "provider", role, "result", "drop");
    p->m_limited = series(d, METRIC_COUNTER, "tidings_hub_rate_limited_total",
                          "Sends held back because the provider's token bucket was empty",
                          "channel", cn, "provider", role, NULL, NULL);
    p->m_inflight = series(d, METRIC_GAUGE, "tidings_hub_inflight", "Provider requests in flight",
                           "channel", cn, "provider", role, NULL, NULL);
    p->m_state = series(d, METRIC_GAUGE, "tidings_hub_breaker_state",
                        "Circuit breaker state: 0 closed, 1 open, 2 half-open", "channel", cn,
                        "provider", role, NULL, NULL);
    p->m_opens =
        series(d, METRIC_COUNTER, "tidings_hub_breaker_opens_total",
               "Times the circuit breaker opened", "channel", cn, "provider", role, NULL, NULL);
}

struct dispatch_chan *dispatch_add(dispatch_t *d, const char *channel,
                                   const struct channel_ops *ops, void *primary, void *backup,
                                   const struct dispatch_config *cfg)
{
    struct dispatch_chan *ch = NULL;
    if (d->nchans < MAX_CHANNELS) {
        ch = calloc(1, sizeof(*ch));
    }
    if (!ch) {
        if (primary) {
            ops->destroy(primary);
        }
        if (backup) {
            ops->destroy(backup);
        }
        return NULL;
    }
    ch->d = d;
    snprintf(ch->name, sizeof(ch->name), "%s", channel);
    ch->ops = ops;
    ch->cfg = *cfg;
    provider_init(ch, &ch->prov[0], "primary", primary);
    ch->nprov = 1;
    if (backup) {
        provider_init(ch, &ch->prov[1], "backup", backup);
        ch->nprov = 2;
    }
    ch->m_latency = series(d, METRIC_HISTOGRAM, "tidings_hub_send_latency_ms",
                           "Time from a provider request's start to its outcome", "channel",
                           channel, NULL, NULL, NULL, NULL);
    ch->m_failfast = series(d, METRIC_COUNTER, "tidings_hub_breaker_rejected_total",
                            "Sends answered 'retry later' at once because every provider's "
                            "breaker was open",
                            "channel", channel, NULL, NULL, NULL, NULL);
    ch->m_failover = series(d, METRIC_COUNTER, "tidings_hub_failover_total",
                            "Sends that went to the backup provider", "channel", channel, NULL,
                            NULL, NULL, NULL);
    ch->m_disabled = series(d, METRIC_COUNTER, "tidings_hub_device_actions_total",
                            "Device tokens disabled or flagged on a provider's answer", "channel",
                            channel, "action", "disabled", NULL, NULL);
    ch->m_flagged = series(d, METRIC_COUNTER, "tidings_hub_device_actions_total", NULL, "channel",
                           channel, "action", "flagged", NULL, NULL);
    d->chans[d->nchans++] = ch;
    LOG_INFO(MOD,
             "%s: rate=%lld/s concurrency=%lld breaker failures=%lld ratio=%lld%% open=%llums "
             "probes=%lld backup=%s",
             channel, (long long)cfg->rate, (long long)cfg->concurrency,
             (long long)cfg->br_failures, (long long)cfg->br_ratio,
             (unsigned long long)cfg->br_open_ms, (long long)cfg->br_probes, backup ? "yes" : "no");
    return ch;
}

unsigned dispatch_inflight(const dispatch_t *d)
{
    return d->inflight;
}

size_t dispatch_providers(dispatch_t *d, struct dispatch_provider_info *out, size_t max)
{
    size_t n = 0;
    uint64_t now = loop_now_ms(d->loop);
    for (unsigned c = 0; c < d->nchans; c++) {
        struct dispatch_chan *ch = d->chans[c];
        for (unsigned i = 0; i < ch->nprov; i++) {
            if (n < max) {
                out[n] = (struct dispatch_provider_info){
                    .channel = ch->name,
                    .provider = ch->prov[i].role,
                    .state = breaker_state(&ch->prov[i].br, now),
                    .inflight = ch->prov[i].inflight,
                };
            }
            n++;
        }
    }
    return n;
}

void dispatch_destroy(dispatch_t *d)
{
    if (!d) {
        return;
    }
    for (unsigned c = 0; c < d->nchans; c++) {
        struct dispatch_chan *ch = d->chans[c];
        for (unsigned i = 0; i < ch->nprov; i++) {
            if (ch->prov[i].state) {
                ch->ops->destroy(ch->prov[i].state);
            }
            if (ch->prov[i].wake_timer) {
                loop_timer_cancel(d->loop, ch->prov[i].wake_timer);
            }
        }
        free(ch);
    }
    if (d->deferred_timer) {
        loop_timer_cancel(d->loop, d->deferred_timer);
    }
    while (d->chunks) {
        struct pool_chunk *c = d->chunks;
        d->chunks = c->next;
        free(c);
    }
    free(d);
}
