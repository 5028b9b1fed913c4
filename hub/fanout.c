/* fanout.c - notification -> attempts -> channel sends (see fanout.h). */
#include "fanout.h"

#include "backoff.h"
#include "error.h"
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FANOUT_MAX_DEVICES 5 /* DESIGN: at most 5 devices per user */

struct job;

/* One notification to one device. */
struct delivery {
    struct job *job;
    const struct fanout_route *route;
    int64_t device_id;
    char token[256], app[256], platform[16], environment[16];
    struct channel_device dev;
    int64_t attempt_id;
    unsigned attempts;
    uint64_t timer;
    bool done;
    struct delivery *next_ready; /* in the ready list while waiting for commit */
};

struct job {
    fanout_t *f;
    struct job *prev, *next; /* every live job, so shutdown can free them */
    struct notification n;
    char id[PROTO_ID_MAX + 1];
    int64_t expires_ms;
    unsigned ndev, open, delivered;
    char last_reason[CHANNEL_REASON_MAX + 16];
    struct delivery dv[FANOUT_MAX_DEVICES];
};

struct fanout {
    loop_t *loop;
    store_t *store;
    struct fanout_opts o;
    struct fanout_route routes[FANOUT_MAX_ROUTES];
    size_t nroutes;
    unsigned jobs;
    struct job *live;
    struct delivery *ready_head, *ready_tail;
    struct fanout_stats st;
};

static void ready_push(fanout_t *f, struct delivery *d)
{
    d->next_ready = NULL;
    if (f->ready_tail) {
        f->ready_tail->next_ready = d;
    } else {
        f->ready_head = d;
    }
    f->ready_tail = d;
}

static void job_free(struct job *j)
{
    for (unsigned i = 0; i < j->ndev; i++) {
        if (j->dv[i].timer) {
            loop_timer_cancel(j->f->loop, j->dv[i].timer);
        }
    }
    notification_free(&j->n);
    fanout_t *f = j->f;
    if (j->prev) {
        j->prev->next = j->next;
    } else {
        f->live = j->next;
    }
    if (j->next) {
        j->next->prev = j->prev;
    }
    f->jobs--;
    free(j);
}

/* Terminal state for the whole notification once no delivery is open. */
static void job_finish_if_done(struct job *j)
{
    if (j->open > 0) {
        return;
    }
    fanout_t *f = j->f;
    int64_t now = clock_wall_ms();
    const char *state = j->delivered > 0 ? "delivered" : "failed";
    int rc = store_set_state(f->store, j->id, state, j->delivered ? "" : j->last_reason, now);
    if (rc < 0) {
        LOG_ERROR("fanout", "id=%s: cannot record %s: %s", j->id, state, tdg_strerror(rc));
    }
    if (j->delivered) {
        f->st.delivered++;
        LOG_INFO("fanout", "id=%s delivered to %u of %u device(s)", j->id, j->delivered, j->ndev);
    } else {
        f->st.failed++;
        LOG_WARN("fanout", "id=%s failed: %s", j->id, j->last_reason);
    }
    job_free(j);
}

/* Record a new attempt for d; it is sent after the next commit. */
static void attempt(struct delivery *d)
{
    struct job *j = d->job;
    fanout_t *f = j->f;
    int64_t now = clock_wall_ms();
    if (j->expires_ms && now >= j->expires_ms) {
        d->done = true;
        j->open--;
        snprintf(j->last_reason, sizeof(j->last_reason), "ttl passed before delivery");
        if (j->open == 0 && j->delivered == 0) {
            store_set_state(f->store, j->id, "expired", j->last_reason, now);
            f->st.expired++;
            job_free(j);
            return;
        }
        job_finish_if_done(j);
        return;
    }
    int rc = store_attempt_begin(f->store, j->id, d->route->channel, d->device_id, now,
                                 &d->attempt_id);
    if (rc < 0) {
        d->done = true;
        j->open--;
        snprintf(j->last_reason, sizeof(j->last_reason), "store: %s", tdg_strerror(rc));
        job_finish_if_done(j);
        return;
    }
    d->attempts++;
    f->st.attempts++;
    ready_push(f, d);
}

static void on_retry_timer(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    struct delivery *d = arg;
    d->timer = 0;
    attempt(d);
}

static void on_outcome(void *ctx, const struct channel_outcome *o)
{
    struct delivery *d = ctx;
    struct job *j = d->job;
    fanout_t *f = j->f;
    int64_t now = clock_wall_ms();
    f->st.inflight--;
    static const char *const att_state[] = {"ok", "retry", "drop"};
    store_attempt_end(f->store, d->attempt_id, att_state[o->result], o->status, o->reason,
                      o->provider_id, now);
    if (o->result == CHANNEL_OK) {
        LOG_INFO("fanout", "id=%s %s accepted by provider: status=%d provider_id=%s", j->id,
                 d->route->channel, o->status, o->provider_id);
        d->done = true;
        j->delivered++;
        j->open--;
        job_finish_if_done(j);
        return;
    }
    snprintf(j->last_reason, sizeof(j->last_reason), "%s: %d %s", d->route->channel, o->status,
             o->reason);
    if (o->device_action != CHANNEL_DEVICE_NONE) {
        const char *st = o->device_action == CHANNEL_DEVICE_DISABLE ? "disabled" : "flagged";
        store_device_set_state(f->store, d->device_id, st, o->reason, now);
        LOG_WARN("fanout", "device %lld %s: %s", (long long)d->device_id, st, o->reason);
    }
    if (o->result == CHANNEL_RETRY && d->attempts < f->o.max_attempts) {
        uint64_t delay = backoff_delay(d->attempts - 1, f->o.retry_base_ms, f->o.retry_cap_ms);
        if (o->retry_after_ms > delay) {
            delay = o->retry_after_ms;
        }
        f->st.retries++;
        LOG_INFO("fanout", "id=%s retry %u in %llums: %s", j->id, d->attempts,
                 (unsigned long long)delay, j->last_reason);
        d->timer = loop_timer_add(f->loop, delay, on_retry_timer, d);
        if (d->timer) {
            return;
        }
    }
    if (o->result == CHANNEL_RETRY) {
        size_t l = strlen(j->last_reason);
        snprintf(j->last_reason + l, sizeof(j->last_reason) - l, " (after %u attempts)",
                 d->attempts);
    }
    d->done = true;
    j->open--;
    job_finish_if_done(j);
}

struct dev_ctx {
    struct job *j;
};

static const struct fanout_route *route_for(const fanout_t *f, const char *platform)
{
    for (size_t i = 0; i < f->nroutes; i++) {
        if (strcmp(f->routes[i].platform, platform) == 0) {
            return &f->routes[i];
        }
    }
    return NULL;
}

static void add_device(void *arg, const struct store_device *sd)
{
    struct job *j = ((struct dev_ctx *)arg)->j;
    const struct fanout_route *r = route_for(j->f, sd->platform ? sd->platform : "");
    if (!r) {
        /* e.g. "desktop": delivered by agents, not by the hub */
        return;
    }
    if (!(j->n.channels & r->proto_class)) {
        return; /* the notification's "channels" leaves this one out */
    }
    if (!r->ops) {
        snprintf(j->last_reason, sizeof(j->last_reason), "channel %s is not enabled in this hub",
                 r->channel);
        return;
    }
    if (j->ndev >= FANOUT_MAX_DEVICES) {
        return;
    }
    struct delivery *d = &j->dv[j->ndev++];
    memset(d, 0, sizeof(*d));
    d->job = j;
    d->route = r;
    d->device_id = sd->id;
    snprintf(d->token, sizeof(d->token), "%s", sd->token ? sd->token : "");
    snprintf(d->app, sizeof(d->app), "%s", sd->app ? sd->app : "");
    snprintf(d->platform, sizeof(d->platform), "%s", sd->platform);
    snprintf(d->environment, sizeof(d->environment), "%s",
             sd->environment ? sd->environment : "production");
}

static void on_queued(void *arg, const char *id, const char *json, size_t len,
                      int64_t expires_ms)
{
    fanout_t *f = arg;
    int64_t now = clock_wall_ms();
    struct job *j = calloc(1, sizeof(*j));
    if (!j) {
        store_set_state(f->store, id, "queued", "", now);
        return;
    }
    snprintf(j->id, sizeof(j->id), "%s", id);
    struct proto_error perr;
    if (proto_parse(json, len, &j->n, &perr) < 0) {
        /* Stored rows were validated at intake; this means a newer format. */
        store_set_state(f->store, id, "failed", "stored notification does not parse", now);
        free(j);
        return;
    }
    j->f = f;
    j->next = f->live;
    if (f->live) {
        f->live->prev = j;
    }
    f->live = j;
    f->jobs++;
    j->expires_ms = expires_ms; /* counted from intake, not from now */
    if (j->n.to_kind != PROTO_TO_USER) {
        store_set_state(f->store, id, "failed",
                        j->n.to_kind == PROTO_TO_GROUP ? "group recipients are not supported yet"
                                                       : "local notifications stay on the agent",
                        now);
        f->st.failed++;
        job_free(j);
        return;
    }
    struct dev_ctx dc = {j};
    int n = store_user_devices(f->store, j->n.to_id, add_device, &dc);
    if (n < 0 || j->ndev == 0) {
        store_set_state(f->store, id, "failed",
                        n < 0             ? "store error"
                        : j->last_reason[0] ? j->last_reason
                                            : "no active device on an allowed channel",
                        now);
        f->st.failed++;
        job_free(j);
        return;
    }
    j->open = j->ndev;
    for (unsigned i = 0; i < j->ndev; i++) {
        struct delivery *d = &j->dv[i];
        d->dev = (struct channel_device){.user_id = j->n.to_id,
                                         .platform = d->platform,
                                         .token = d->token,
                                         .app = d->app,
                                         .environment = d->environment};
    }
    /* attempt() frees j only when the last open delivery closes, which can
     * only happen on the last iteration: copy the count first. */
    unsigned ndev = j->ndev;
    for (unsigned i = 0; i < ndev; i++) {
        attempt(&j->dv[i]);
    }
}

void fanout_pull(fanout_t *f)
{
    if (f->jobs >= f->o.max_jobs) {
        return;
    }
    int rc = store_take_queued(f->store, f->o.max_jobs - f->jobs, on_queued, f);
    if (rc < 0) {
        LOG_ERROR("fanout", "cannot read queued notifications: %s", tdg_strerror(rc));
    }
}

void fanout_flush(fanout_t *f)
{
    struct delivery *d = f->ready_head;
    f->ready_head = f->ready_tail = NULL;
    /* Routes whose channel said -EBUSY in this flush: their deliveries wait
     * (in order) for the next flush; other channels keep going. */
    bool busy[FANOUT_MAX_ROUTES] = {false};
    while (d) {
        struct delivery *next = d->next_ready;
        size_t ri = (size_t)(d->route - f->routes);
        if (busy[ri]) {
            ready_push(f, d);
            d = next;
            continue;
        }
        struct channel_delivery cd = {
            .attempt_id = (uint64_t)d->attempt_id,
            .n = &d->job->n,
            .dev = &d->dev,
            .now_ms = clock_wall_ms(),
        };
        int rc = d->route->ops->send(d->route->state, &cd, on_outcome, d);
        if (rc == -EBUSY) {
            /* The channel's window is full: local backpressure, not an
             * attempt. The delivery waits for the next flush (after an
             * outcome frees a slot); its attempt row stays 'sending'. */
            busy[ri] = true;
            ready_push(f, d);
            f->st.backpressure++;
            d = next;
            continue;
        }
        if (rc < 0) {
            /* Could not even start (e.g. too many in flight): treat as a
             * retryable outcome so backoff and accounting stay in one place. */
            struct channel_outcome o = {.result = CHANNEL_RETRY, .status = 0};
            snprintf(o.reason, sizeof(o.reason), "send: %s", tdg_strerror(rc));
            f->st.inflight++;
            on_outcome(d, &o);
        } else {
            f->st.inflight++;
        }
        d = next;
    }
}

fanout_t *fanout_create(loop_t *loop, store_t *store, const struct fanout_opts *o,
                        const struct fanout_route *routes, size_t nroutes)
{
    if (nroutes > FANOUT_MAX_ROUTES) {
        return NULL;
    }
    fanout_t *f = calloc(1, sizeof(*f));
    if (!f) {
        return NULL;
    }
    f->loop = loop;
    f->store = store;
    f->o = *o;
    memcpy(f->routes, routes, nroutes * sizeof(*routes));
    f->nroutes = nroutes;
    return f;
}

void fanout_destroy(fanout_t *f)
{
    if (!f) {
        return;
    }
    /* The channel is destroyed first, so no callback can still reach a job.
     * Unfinished notifications stay 'sending' in the store and are requeued
     * by store_recover() at the next start. */
    while (f->live) {
        job_free(f->live);
    }
    free(f);
}

unsigned fanout_jobs(const fanout_t *f)
{
    return f->jobs;
}

void fanout_get_stats(const fanout_t *f, struct fanout_stats *st)
{
    *st = f->st;
}
