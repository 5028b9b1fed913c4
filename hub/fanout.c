/* fanout.c - notification -> attempts -> channel sends (see fanout.h). */
#include "fanout.h"

#include "backoff.h"
#include "error.h"
#include "log.h"
#include "policy.h"
#include "scheduler.h"
#include "store_engine.h"
#include "tz.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FANOUT_MAX_DEVICES 5 /* DESIGN: at most 5 devices per user */
/* Endpoints of one user: devices plus phone and email contact points. */
#define FANOUT_MAX_ENDPOINTS (FANOUT_MAX_DEVICES + 2)
/* Members of a group planned per part: a fuller page goes on through a
 * durable "group_page" timer (plan_group_page). */
#define FANOUT_GROUP_PAGE 1000
#define PREF_CACHE_SLOTS 1024      /* parsed preferences kept (policy section) */
#define FANOUT_TAKE_MAX 1024       /* rows taken per pull (store_take_queued's batch) */

struct job;

/* A parsed notification waiting for a job slot (fanout.parked). */
struct park {
    struct park *next;
    int64_t expires_ms;
    struct notification n;
    char agent[PROTO_AGENT_MAX + 1];
};

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
    bool fallback;               /* the user has a channel order: a success ends it */
    /* This delivery's attempt rows as written (store_attempt_begin/_end),
     * for the receipt from memory (job_receipt). */
    int64_t first_att, last_att; /* attempt ids, 0: none yet */
    unsigned ended;              /* attempts whose outcome is recorded */
    int last_result, last_status;
    char last_reason[sizeof(((struct proto_receipt_channel *)0)->reason)];
    char user[STORE_USER_ID_MAX + 1];
    struct delivery *next_ready; /* in the ready list while waiting for commit */
};

struct job {
    fanout_t *f;
    struct job *prev, *next; /* every live job, so shutdown can free them */
    struct job *hnext;       /* same bucket of fanout.byid */
    uint32_t hash;           /* id_hash(id) */
    struct notification n;
    char id[PROTO_ID_MAX + 1];
    int64_t expires_ms;
    unsigned ndev, open, delivered;
    char last_reason[CHANNEL_REASON_MAX + 16];
    /* Planning (policy): what the recipients' decisions came to. */
    bool parts;            /* delivered in parts (timers, group holds): the
                              terminal state is summed up from the store */
    unsigned held;         /* recipients waiting on a timer */
    char drop_rule[POLICY_RULE_MAX], suppress_rule[POLICY_RULE_MAX];
    unsigned dcap;
    struct delivery *dv;   /* ndev used of dcap; fixed once attempts start */
    /* Fresh from intake (fanout_take): every attempt of the notification is
     * one of this job's, so its receipt can be kept in memory for the
     * publisher (store_set_state_receipt) instead of read back. */
    bool rcpt_mem;
    char agent[PROTO_AGENT_MAX + 1];
};

struct fanout {
    loop_t *loop;
    store_t *store;
    struct fanout_opts o;
    struct fanout_route routes[FANOUT_MAX_ROUTES];
    size_t nroutes;
    unsigned jobs;
    struct job *live;
    /* Live jobs by notification id (a notification delivered in parts has a
     * job per part): retries and timers find theirs without a scan. */
    struct job **byid;
    uint32_t byid_mask; /* buckets - 1 (a power of two) */
    /* Deliveries whose attempt row is written, waiting for the commit and
     * then their channel's window: a queue per route, so a full window
     * stops only its own queue and a flush touches only what it sends. */
    struct {
        struct delivery *head, *tail;
    } ready[FANOUT_MAX_ROUTES];
    struct fanout_stats st;
    sched_t *sched;        /* NULL: no policy timers (holds, deliver_at, fallback) */
    fanout_release_fn release; /* frees a finished job's tree; NULL: cJSON_Delete here */
    void *release_arg;
    struct pref_entry *prefs; /* PREF_CACHE_SLOTS, policy section */
    struct replan *replan;    /* users to re-plan after a preference change */
    /* Parked: notifications intake stored as taken ('sending') while every
     * job slot was busy, parsed and waiting in memory, a FIFO per priority
     * (index: enum proto_priority). fanout_pull plans them before anything
     * from the store's queue, so the hot path never reads back and parses
     * again what it has just written. */
    struct {
        struct park *head, *tail;
    } parked[PROTO_PRIO_CRITICAL + 1];
    unsigned nparked;
    /* Rows may wait in the queue (at start, or after fanout_ready said no):
     * new ones then queue behind them, in priority order, instead of being
     * handed over by intake. Cleared when a pull finds the queue empty. */
    bool backlog;
};

/* The wall clock of planning, timers and retries (fanout_opts.clock). */
static int64_t fanout_now(const fanout_t *f)
{
    return f->o.clock ? f->o.clock(f->o.clock_arg) : clock_wall_ms();
}

/* d->timer while the delivery waits for a durable "retry" timer (scheduler):
 * never a loop timer id (they count up from 1), so job_free's cancel of it
 * finds nothing. */
#define RETRY_DURABLE UINT64_MAX

static void ready_push(fanout_t *f, struct delivery *d)
{
    size_t ri = (size_t)(d->route - f->routes);
    d->next_ready = NULL;
    if (f->ready[ri].tail) {
        f->ready[ri].tail->next_ready = d;
    } else {
        f->ready[ri].head = d;
    }
    f->ready[ri].tail = d;
}

/* Bounded string copy, truncating (snprintf "%s" without the formatter:
 * the hot path copies a few strings per device). */
static void copy_str(char *dst, size_t size, const char *src)
{
    size_t n = strnlen(src, size - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* FNV-1a: notification ids, user ids. */
static uint32_t id_hash(const char *id)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)id; *p; p++) {
        h = (h ^ *p) * 16777619u;
    }
    return h;
}

static struct job *byid_first(const fanout_t *f, const char *id, uint32_t h)
{
    for (struct job *o = f->byid[h & f->byid_mask]; o; o = o->hnext) {
        if (o->hash == h && strcmp(o->id, id) == 0) {
            return o;
        }
    }
    return NULL;
}

static void job_free(struct job *j)
{
    for (unsigned i = 0; i < j->ndev; i++) {
        if (j->dv[i].timer) {
            loop_timer_cancel(j->f->loop, j->dv[i].timer);
        }
    }
    fanout_t *f = j->f;
    if (f->release && j->n.json) {
        f->release(f->release_arg, j->n.json); /* a root: the whole tree */
        j->n.json = NULL;
    }
    notification_free(&j->n);
    if (j->prev) {
        j->prev->next = j->next;
    } else {
        f->live = j->next;
    }
    if (j->next) {
        j->next->prev = j->prev;
    }
    struct job **pp = &f->byid[j->hash & f->byid_mask];
    while (*pp && *pp != j) {
        pp = &(*pp)->hnext;
    }
    if (*pp) {
        *pp = j->hnext;
    }
    f->jobs--;
    free(j->dv);
    free(j);
}

static void finish_planned(struct job *j);
static void fallback_success(struct job *j, const struct delivery *d);

/* Which of two deliveries of one channel decides its result in the receipt:
 * the last success, else the last attempt (receipts.c, add_attempt). */
static bool decides_over(const struct delivery *d, const struct delivery *p)
{
    bool dok = d->last_result == CHANNEL_OK, pok = p->last_result == CHANNEL_OK;
    return dok != pok ? dok : d->last_att > p->last_att;
}

/* The receipt's channels as the publisher sums up the notification's attempt
 * rows (receipts.c: per channel in the order of its first attempt, attempts
 * counted, the deciding one's result, status and reason), from this job's
 * deliveries: for a fresh job (rcpt_mem) they made every attempt row there
 * is. false when an attempt has no outcome recorded (the table answers). */
static bool job_receipt(const struct job *j, struct proto_receipt_channel *ch, unsigned *nch)
{
    static const char *const res[] = {"ok", "retry", "drop"};
    const struct delivery *pick[PROTO_RECEIPT_MAX_CHANNELS];
    int64_t first[PROTO_RECEIPT_MAX_CHANNELS];
    unsigned n = 0;
    for (unsigned k = 0; k < j->ndev; k++) {
        const struct delivery *d = &j->dv[k];
        if (d->attempts == 0) {
            continue;
        }
        if (d->ended != d->attempts || d->last_result < 0 || d->last_result > CHANNEL_DROP) {
            return false;
        }
        unsigned i = 0;
        while (i < n && strcmp(ch[i].channel, d->route->channel) != 0) {
            i++;
        }
        if (i == n) {
            if (n == PROTO_RECEIPT_MAX_CHANNELS) {
                return false; /* cannot be: one channel per route, at most 8 */
            }
            store_copy_text(ch[i].channel, sizeof(ch[i].channel), d->route->channel);
            ch[i].attempts = 0;
            first[i] = d->first_att;
            pick[i] = d;
            n++;
        }
        ch[i].attempts += d->attempts;
        if (d->first_att < first[i]) {
            first[i] = d->first_att;
        }
        if (decides_over(d, pick[i])) {
            pick[i] = d;
        }
    }
    /* In the order of each channel's first attempt (attempt ids grow). */
    for (unsigned i = 1; i < n; i++) {
        for (unsigned k = i; k > 0 && first[k] < first[k - 1]; k--) {
            struct proto_receipt_channel tc = ch[k];
            ch[k] = ch[k - 1];
            ch[k - 1] = tc;
            int64_t tf = first[k];
            first[k] = first[k - 1];
            first[k - 1] = tf;
            const struct delivery *tp = pick[k];
            pick[k] = pick[k - 1];
            pick[k - 1] = tp;
        }
    }
    for (unsigned i = 0; i < n; i++) {
        const struct delivery *d = pick[i];
        store_copy_text(ch[i].result, sizeof(ch[i].result), res[d->last_result]);
        memcpy(ch[i].reason, d->last_reason, sizeof(ch[i].reason));
        ch[i].status = d->last_status;
    }
    *nch = n;
    return true;
}

/* Terminal state for the whole notification once no delivery is open. */
static void job_finish_if_done(struct job *j)
{
    if (j->open > 0) {
        return;
    }
    fanout_t *f = j->f;
    if (j->parts || j->held || j->ndev == 0) {
        finish_planned(j); /* policy: held, scheduled, suppressed, dropped */
        return;
    }
    int64_t now = clock_wall_ms();
    const char *state = j->delivered > 0 ? "delivered" : "failed";
    const char *reason = j->delivered ? "" : j->last_reason;
    struct proto_receipt_channel ch[PROTO_RECEIPT_MAX_CHANNELS];
    struct store_rcpt_ctx c = {
        .id = j->id, .state = state, .reason = reason, .at_ms = now, .agent = j->agent, .ch = ch};
    int rc = j->rcpt_mem && job_receipt(j, ch, &c.nch)
                 ? store_set_state_receipt(f->store, &c)
                 : store_set_state(f->store, j->id, state, reason, now);
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
        if (j->open == 0 && j->delivered == 0 && !j->parts && !j->held) {
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
    if (!d->first_att) {
        d->first_att = d->attempt_id;
    }
    d->last_att = d->attempt_id;
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
    if (store_attempt_end(f->store, d->attempt_id, att_state[o->result], o->status, o->reason,
                          o->provider_id, now) == 0) {
        d->ended++;
        d->last_result = (int)o->result;
        d->last_status = o->status;
        store_copy_text(d->last_reason, sizeof(d->last_reason), o->reason);
    } else {
        j->rcpt_mem = false; /* the row may not say what memory would */
    }
    if (o->result == CHANNEL_OK) {
        LOG_INFO("fanout", "id=%s %s accepted by provider: status=%d provider_id=%s", j->id,
                 d->route->channel, o->status, o->provider_id);
        d->done = true;
        j->delivered++;
        j->open--;
        if (d->fallback && f->sched) {
            fallback_success(j, d);
        }
        job_finish_if_done(j);
        return;
    }
    snprintf(j->last_reason, sizeof(j->last_reason), "%s: %d %s", d->route->channel, o->status,
             o->reason);
    if (o->device_action == CHANNEL_DEVICE_DISABLE && o->token_invalid_since_ms > 0) {
        /* APNs 410: invalid since its timestamp; a registration after that
         * (the app reinstalled, the token handed out again) keeps it. */
        int drc = store_device_disable_if_stale(f->store, d->device_id, o->reason,
                                                o->token_invalid_since_ms, now);
        if (drc > 0) {
            LOG_WARN("fanout", "device %lld disabled: %s", (long long)d->device_id, o->reason);
        } else if (drc == 0) {
            LOG_INFO("fanout", "device %lld kept: %s at %lld, but registered again since",
                     (long long)d->device_id, o->reason, (long long)o->token_invalid_since_ms);
        } else {
            LOG_ERROR("fanout", "device %lld: cannot record %s: %s", (long long)d->device_id,
                      o->reason, tdg_strerror(drc));
        }
    } else if (o->device_action != CHANNEL_DEVICE_NONE) {
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
        if (f->sched) {
            /* Durable: a hub restarted before the retry time waits for it
             * (store_timer_hold_retries) instead of sending at once. One
             * row per retry; retries are rare. Payload: the device id. */
            char payload[24];
            snprintf(payload, sizeof(payload), "%lld", (long long)d->device_id);
            int src = sched_add(f->sched, fanout_now(f) + (int64_t)delay, "retry", j->id, payload);
            if (src == 0) {
                d->timer = RETRY_DURABLE;
                return;
            }
            LOG_WARN("fanout", "id=%s: retry not stored (%s); kept in memory only", j->id,
                     tdg_strerror(src));
        }
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

/* --- planning: recipients, preferences, holds, deliver_at, fallback --------
 *
 * A notification taken from the queue (or resumed by a timer) is planned per
 * recipient user: the user's preferences decide per channel class, with the
 * preferences in force NOW (a change applies to everything not yet sent).
 * Every decision is recorded before anything is sent. Waiting recipients get
 * a durable timer (scheduler.h) and the notification state 'scheduled'. */

/* Parsed preferences and zone per user, so the hot path neither queries nor
 * parses for every notification. Direct-mapped; fanout_policy_changed()
 * drops entries. */
struct pref_entry {
    bool used;
    char user[STORE_USER_ID_MAX + 1];
    policy_prefs_t *prefs; /* NULL: none set */
    tz_t *tz;              /* NULL: UTC */
};

static void pref_entry_clear(struct pref_entry *e)
{
    policy_prefs_free(e->prefs);
    tz_free(e->tz);
    memset(e, 0, sizeof(*e));
}

static size_t pref_slot(const char *user)
{
    return id_hash(user) % PREF_CACHE_SLOTS;
}

/* The user's preferences and zone: 1, 0 (no such user), or a store error. */
static int user_prefs(fanout_t *f, const char *user, const struct pref_entry **out)
{
    if (!f->prefs) {
        f->prefs = calloc(PREF_CACHE_SLOTS, sizeof(*f->prefs));
        if (!f->prefs) {
            return -ENOMEM;
        }
    }
    struct pref_entry *e = &f->prefs[pref_slot(user)];
    if (e->used && strcmp(e->user, user) == 0) {
        *out = e;
        return 1;
    }
    char *buf = malloc(STORE_PREF_MAX + 1);
    if (!buf) {
        return -ENOMEM;
    }
    char tzname[TZ_NAME_MAX + 1];
    int rc = store_pref_load(f->store, user, buf, STORE_PREF_MAX + 1, tzname, sizeof(tzname));
    if (rc <= 0) {
        free(buf);
        return rc;
    }
    pref_entry_clear(e);
    snprintf(e->user, sizeof(e->user), "%s", user);
    if (buf[0]) {
        struct policy_error err;
        int prc = policy_prefs_parse(buf, strlen(buf), &e->prefs, &err);
        if (prc < 0) {
            /* Stored documents were validated; a newer format: allow. */
            LOG_WARN("fanout", "user %s: stored preferences refused (%s: %s); none apply", user,
                     err.field, err.detail);
        }
    }
    free(buf);
    if (tz_load(tzname, &e->tz) < 0) {
        LOG_WARN("fanout", "user %s: time zone '%s' cannot be loaded; UTC is used", user, tzname);
        e->tz = NULL;
    }
    e->used = true;
    *out = e;
    return 1;
}

static void replan_add(fanout_t *f, const char *user_id);

void fanout_policy_changed(fanout_t *f, const char *user_id)
{
    if (user_id && f->sched) {
        replan_add(f, user_id);
    }
    if (!f->prefs) {
        return;
    }
    if (user_id) {
        struct pref_entry *e = &f->prefs[pref_slot(user_id)];
        if (e->used && strcmp(e->user, user_id) == 0) {
            pref_entry_clear(e);
        }
        return;
    }
    for (size_t i = 0; i < PREF_CACHE_SLOTS; i++) {
        if (f->prefs[i].used) {
            pref_entry_clear(&f->prefs[i]);
        }
    }
}

void fanout_set_sched(fanout_t *f, sched_t *s)
{
    f->sched = s;
}

void fanout_set_release(fanout_t *f, fanout_release_fn fn, void *arg)
{
    f->release = fn;
    f->release_arg = arg;
}

static const struct fanout_route *route_for(const fanout_t *f, const char *platform)
{
    for (size_t i = 0; i < f->nroutes; i++) {
        if (strcmp(f->routes[i].platform, platform) == 0) {
            return &f->routes[i];
        }
    }
    return NULL;
}

/* The endpoints of one user, before the policy looks at them. */
struct endpoint {
    const struct fanout_route *route;
    int64_t id;
    char token[256], app[256], platform[16], environment[16];
};
struct user_eps {
    struct job *j;
    unsigned n;
    unsigned classes; /* PROTO_CH_* classes with an enabled endpoint */
    struct endpoint ep[FANOUT_MAX_ENDPOINTS];
};

static void add_endpoint(void *arg, const struct store_device *sd)
{
    struct user_eps *u = arg;
    struct job *j = u->j;
    const struct fanout_route *r = route_for(j->f, sd->platform ? sd->platform : "");
    if (!r) {
        return; /* e.g. "desktop": delivered by agents, not by the hub */
    }
    if (!(j->n.channels & r->proto_class)) {
        return; /* the notification's "channels" leaves this one out */
    }
    if (!r->ops) {
        snprintf(j->last_reason, sizeof(j->last_reason), "channel %s is not enabled in this hub",
                 r->channel);
        return;
    }
    if (u->n >= FANOUT_MAX_ENDPOINTS) {
        return;
    }
    struct endpoint *e = &u->ep[u->n++];
    e->route = r;
    e->id = sd->id;
    copy_str(e->token, sizeof(e->token), sd->token ? sd->token : "");
    copy_str(e->app, sizeof(e->app), sd->app ? sd->app : "");
    copy_str(e->platform, sizeof(e->platform), sd->platform);
    copy_str(e->environment, sizeof(e->environment),
             sd->environment ? sd->environment : "production");
    u->classes |= r->proto_class;
}

static int add_delivery(struct job *j, const struct endpoint *e, const char *user, bool fallback)
{
    if (j->ndev == j->dcap) {
        unsigned cap = j->dcap ? j->dcap * 2 : 2; /* most users: one or two devices */
        struct delivery *dv = realloc(j->dv, cap * sizeof(*dv));
        if (!dv) {
            return -ENOMEM;
        }
        j->dv = dv;
        j->dcap = cap;
    }
    struct delivery *d = &j->dv[j->ndev++];
    memset(d, 0, sizeof(*d));
    d->job = j;
    d->route = e->route;
    d->device_id = e->id;
    d->fallback = fallback;
    copy_str(d->user, sizeof(d->user), user);
    copy_str(d->token, sizeof(d->token), e->token);
    copy_str(d->app, sizeof(d->app), e->app);
    copy_str(d->platform, sizeof(d->platform), e->platform);
    copy_str(d->environment, sizeof(d->environment), e->environment);
    return 0;
}

static void record(struct job *j, const char *user, const char *channel, const char *action,
                   const char *rule, int64_t until, int64_t now)
{
    struct store_decision d = {.notification_id = j->id,
                               .user_id = user,
                               .channel = channel,
                               .action = action,
                               .rule = rule,
                               .until_ms = until,
                               .at_ms = now};
    int rc = store_decision_add(j->f->store, &d);
    if (rc < 0) {
        LOG_ERROR("fanout", "id=%s: cannot record decision %s: %s", j->id, rule,
                  tdg_strerror(rc));
    }
}

/* Wait for a timer: kind and payload as scheduler.h; the notification becomes
 * 'scheduled' when this job ends. Without a scheduler the wait cannot be
 * kept, so the part fails with a reason rather than vanish. */
static void wait_timer(struct job *j, int64_t due, const char *kind, const char *payload)
{
    fanout_t *f = j->f;
    int rc = f->sched ? sched_add(f->sched, due, kind, j->id, payload) : -ENOSYS;
    if (rc < 0) {
        snprintf(j->last_reason, sizeof(j->last_reason), "cannot schedule %s: %s", kind,
                 tdg_strerror(rc));
        return;
    }
    j->held++;
    j->parts = true;
}

enum { RESUME_NONE = 0, RESUME_DELIVER_AT, RESUME_HOLD, RESUME_FALLBACK };

/* Plan one recipient. step: the fallback step to run (0 at first);
 * started_ms: when step 0 ran (fallback "after" counts from it). */
static int plan_user(struct job *j, const char *user, int resume, unsigned step,
                     int64_t started_ms)
{
    fanout_t *f = j->f;
    int64_t now = fanout_now(f);
    const struct pref_entry *pe = NULL;
    int rc = user_prefs(f, user, &pe);
    if (rc < 0) {
        snprintf(j->last_reason, sizeof(j->last_reason), "store: %s", tdg_strerror(rc));
        return rc;
    }
    if (rc == 0) {
        snprintf(j->last_reason, sizeof(j->last_reason), "no such user %s", user);
        return 0;
    }
    char payload[STORE_USER_ID_MAX + 48];
    /* deliver_at: the absolute time, or a wall time in this user's zone. */
    if (resume == RESUME_NONE && j->n.has_deliver_at) {
        int64_t at = policy_deliver_at(&j->n, pe->tz);
        if (at > now) {
            snprintf(payload, sizeof(payload), "%s\n", user);
            record(j, user, "", "schedule", "deliver_at", at, now);
            wait_timer(j, at, "deliver_at", payload);
            return 0;
        }
    }
    struct policy_step steps[POLICY_FALLBACK_MAX];
    size_t nsteps = policy_fallback(pe->prefs, steps);
    struct user_eps eps = {.j = j};
    rc = store_user_devices(f->store, user, add_endpoint, &eps);
    if (rc < 0) {
        snprintf(j->last_reason, sizeof(j->last_reason), "store: %s", tdg_strerror(rc));
        return rc;
    }
    int64_t cap_max = 0, cap_win = 0, cap_count = 0;
    if (policy_cap(pe->prefs, j->n.category, &cap_max, &cap_win) &&
        store_cap_count(f->store, user, j->n.category, now - cap_win, &cap_count) < 0) {
        cap_count = 0;
    }
    if (resume != RESUME_FALLBACK) {
        started_ms = now;
    }
    for (; nsteps == 0 || step < nsteps; step++) {
        /* The classes of this step: every class at once without an order. */
        unsigned classes = nsteps ? (unsigned)steps[step].channel
                                  : (PROTO_CH_PUSH | PROTO_CH_SMS | PROTO_CH_EMAIL);
        if (nsteps && step > 0) {
            char rule[POLICY_RULE_MAX];
            snprintf(rule, sizeof(rule), "fallback:%s", proto_channel_name(steps[step].channel));
            record(j, user, proto_channel_name(steps[step].channel), "fallback", rule, 0, now);
        }
        unsigned allowed = 0, held_until_set = 0;
        int64_t hold_until = 0;
        for (unsigned bit = PROTO_CH_PUSH; bit <= PROTO_CH_EMAIL; bit <<= 1) {
            if (!(classes & bit) || !(eps.classes & bit)) {
                continue;
            }
            struct policy_decision d;
            policy_decide(pe->prefs, pe->tz, &j->n, (enum proto_channel)bit, now, cap_count, &d);
            const char *ch = proto_channel_name((enum proto_channel)bit);
            record(j, user, ch, policy_action_name(d.action), d.rule, d.hold_until_ms, now);
            switch (d.action) {
            case POLICY_ALLOW:
                for (unsigned i = 0; i < eps.n; i++) {
                    if (eps.ep[i].route->proto_class == bit &&
                        (rc = add_delivery(j, &eps.ep[i], user, nsteps > 0)) < 0) {
                        return rc;
                    }
                }
                allowed++;
                break;
            case POLICY_HOLD:
                hold_until = d.hold_until_ms;
                held_until_set = 1;
                break;
            case POLICY_DROP:
                snprintf(j->drop_rule, sizeof(j->drop_rule), "%s", d.rule);
                break;
            case POLICY_SUPPRESS:
                if (!j->suppress_rule[0]) {
                    snprintf(j->suppress_rule, sizeof(j->suppress_rule), "%s", d.rule);
                }
                break;
            }
        }
        if (allowed > 0 && cap_max > 0 && j->n.category) {
            store_cap_record(f->store, user, j->n.category, j->id, now);
        }
        if (held_until_set && allowed == 0) {
            /* Quiet hours: look again when they end (or when the ttl runs
             * out, to end it expired). */
            if (j->expires_ms && hold_until > j->expires_ms) {
                hold_until = j->expires_ms;
            }
            snprintf(payload, sizeof(payload), "%s\n%u\n%lld", user, step,
                     (long long)started_ms);
            wait_timer(j, hold_until, "hold", payload);
            return 0;
        }
        if (nsteps == 0) {
            return 0;
        }
        if (allowed > 0) {
            if (step + 1 < nsteps) {
                int64_t due = started_ms + steps[step + 1].after_ms;
                snprintf(payload, sizeof(payload), "%s\n%u\n%lld", user, step + 1,
                         (long long)started_ms);
                wait_timer(j, due > now ? due : now, "fallback", payload);
            }
            return 0;
        }
        /* Nothing to send on this step (no endpoint, or suppressed): the
         * next step starts at once rather than after its delay. */
    }
    return 0;
}

/* A provider success for a user with a channel order: no further step. */
static void fallback_success(struct job *j, const struct delivery *d)
{
    char prefix[STORE_USER_ID_MAX + 2];
    snprintf(prefix, sizeof(prefix), "%s\n", d->user);
    int n = sched_cancel(j->f->sched, j->id, "fallback", prefix);
    if (n > 0) {
        j->held = j->held >= (unsigned)n ? j->held - (unsigned)n : 0;
        record(j, d->user, d->route->channel, "allow", "fallback_done", 0, fanout_now(j->f));
    }
}

static bool other_part_live(const struct job *j)
{
    for (const struct job *o = j->f->byid[j->hash & j->f->byid_mask]; o; o = o->hnext) {
        if (o != j && o->hash == j->hash && strcmp(o->id, j->id) == 0) {
            return true;
        }
    }
    return false;
}

/* The end of a planned job: its notification waits for a timer, or its
 * parts add up to a terminal state. */
static void finish_planned(struct job *j)
{
    fanout_t *f = j->f;
    int64_t now = fanout_now(f);
    const char *state = NULL, *reason = "";
    char buf[160];
    int64_t left = 0;
    if (j->parts) {
        if (other_part_live(j)) {
            job_free(j); /* the last part to end sets the state */
            return;
        }
        store_timer_count_of(f->store, j->id, &left);
    }
    if (left > 0 || (!j->parts && j->held)) {
        state = "scheduled";
    } else if (j->parts) {
        struct store_outcome o;
        int rc = store_outcome_of(f->store, j->id, &o);
        if (rc < 0) {
            state = "failed";
            reason = "store error";
        } else if (o.ok_attempts > 0 || j->delivered) {
            state = "delivered";
        } else if (j->expires_ms && now >= j->expires_ms) {
            state = "expired";
            reason = "ttl passed before delivery";
        } else if (o.attempts > 0) {
            state = "failed";
            reason = o.last_reason[0] ? o.last_reason : j->last_reason;
        } else if (o.drop_rule[0] || j->drop_rule[0]) {
            state = "dropped";
            snprintf(buf, sizeof(buf), "%s", o.drop_rule[0] ? o.drop_rule : j->drop_rule);
            reason = buf;
        } else if (o.suppress_rule[0] || j->suppress_rule[0]) {
            state = "suppressed";
            snprintf(buf, sizeof(buf), "%s",
                     o.suppress_rule[0] ? o.suppress_rule : j->suppress_rule);
            reason = buf;
        }
    } else if (j->delivered) {
        state = "delivered";
    } else if (j->ndev > 0) {
        state = "failed";
        reason = j->last_reason;
    } else if (j->drop_rule[0]) {
        state = "dropped";
        reason = j->drop_rule;
    } else if (j->suppress_rule[0]) {
        state = "suppressed";
        reason = j->suppress_rule;
    }
    if (!state) {
        state = "failed";
        reason = j->last_reason[0] ? j->last_reason : "no active device on an allowed channel";
    }
    int rc = store_set_state(f->store, j->id, state, reason, now);
    if (rc < 0) {
        LOG_ERROR("fanout", "id=%s: cannot record %s: %s", j->id, state, tdg_strerror(rc));
    }
    if (strcmp(state, "delivered") == 0) {
        f->st.delivered++;
    } else if (strcmp(state, "expired") == 0) {
        f->st.expired++;
    } else if (strcmp(state, "failed") == 0) {
        f->st.failed++;
        LOG_WARN("fanout", "id=%s failed: %s", j->id, reason);
    } else if (strcmp(state, "suppressed") == 0) {
        f->st.suppressed++;
        LOG_INFO("fanout", "id=%s suppressed: %s", j->id, reason);
    } else if (strcmp(state, "dropped") == 0) {
        f->st.dropped++;
        LOG_INFO("fanout", "id=%s dropped: %s", j->id, reason);
    } else {
        f->st.scheduled++;
    }
    job_free(j);
}

/* Link a new job (its j->id and j->n set) into the fanout. */
static void job_link(fanout_t *f, struct job *j, int64_t expires_ms)
{
    j->f = f;
    j->next = f->live;
    if (f->live) {
        f->live->prev = j;
    }
    f->live = j;
    j->hash = id_hash(j->id);
    j->hnext = f->byid[j->hash & f->byid_mask];
    f->byid[j->hash & f->byid_mask] = j;
    f->jobs++;
    j->expires_ms = expires_ms; /* counted from intake, not from now */
}

/* A job for a stored notification (taken from the queue or resumed). */
static struct job *job_new(fanout_t *f, const char *id, const char *json, size_t len,
                           int64_t expires_ms)
{
    int64_t now = clock_wall_ms();
    struct job *j = calloc(1, sizeof(*j));
    if (!j) {
        return NULL;
    }
    snprintf(j->id, sizeof(j->id), "%s", id);
    struct proto_error perr;
    if (proto_parse(json, len, &j->n, &perr) < 0) {
        /* Stored rows were validated at intake; this means a newer format. */
        store_set_state(f->store, id, "failed", "stored notification does not parse", now);
        free(j);
        return NULL;
    }
    job_link(f, j, expires_ms);
    return j;
}

/* Start the attempts of a planned job (or end it when it has none). */
static void job_start(struct job *j)
{
    j->open = j->ndev;
    for (unsigned i = 0; i < j->ndev; i++) {
        struct delivery *d = &j->dv[i];
        d->dev = (struct channel_device){.user_id = d->user,
                                         .platform = d->platform,
                                         .token = d->token,
                                         .app = d->app,
                                         .environment = d->environment};
    }
    if (j->ndev == 0) {
        job_finish_if_done(j);
        return;
    }
    /* attempt() frees j only when the last open delivery closes, which can
     * only happen on the last iteration: copy the count first. */
    unsigned ndev = j->ndev;
    for (unsigned i = 0; i < ndev; i++) {
        attempt(&j->dv[i]);
    }
}

struct members {
    char (*ids)[STORE_USER_ID_MAX + 1];
    unsigned n, cap, seen; /* seen: rows the page had (n < seen: out of memory) */
};

static void add_member(void *arg, const char *name)
{
    struct members *m = arg;
    m->seen++;
    if (m->n == m->cap) {
        unsigned cap = m->cap ? m->cap * 2 : 16;
        if (cap > FANOUT_GROUP_PAGE) {
            cap = FANOUT_GROUP_PAGE;
        }
        void *p = m->n < cap ? realloc(m->ids, cap * sizeof(*m->ids)) : NULL;
        if (!p) {
            return;
        }
        m->ids = p;
        m->cap = cap;
    }
    snprintf(m->ids[m->n++], sizeof(m->ids[0]), "%s", name);
}

/* Plan one page of j's group: the members after `after` ("" from the
 * first), at most FANOUT_GROUP_PAGE. A full page may have more behind it:
 * a durable "group_page" timer due now, payload the page's last member id,
 * resumes the notification with the next page (fanout_timer), in a later
 * iteration and its own job, so memory and one iteration's work stay
 * bounded for groups of any size. The timer row is deleted in the
 * transaction that records the next page: a crash before that commit
 * plans that one page again. */
static void plan_group_page(struct job *j, const char *after)
{
    fanout_t *f = j->f;
    struct members m = {0};
    int n = store_group_members_page(f->store, j->n.to_id, after, FANOUT_GROUP_PAGE, add_member,
                                     &m);
    if (n < 0) {
        snprintf(j->last_reason, sizeof(j->last_reason), "store: %s", tdg_strerror(n));
        LOG_ERROR("fanout", "id=%s: group %s: cannot read members after '%s': %s", j->id,
                  j->n.to_id, after, tdg_strerror(n));
    } else if (m.seen == 0 && !after[0]) {
        snprintf(j->last_reason, sizeof(j->last_reason), "group %s has no members",
                 j->n.to_id);
    }
    if (m.n < m.seen) {
        /* Out of memory part-way: the members not held are planned by the
         * next page (its cursor is the last one held). */
        LOG_WARN("fanout", "id=%s: group %s: out of memory: %u of %u members of this page "
                           "planned, the rest follow", j->id, j->n.to_id, m.n, m.seen);
    }
    for (unsigned i = 0; i < m.n; i++) {
        if (plan_user(j, m.ids[i], RESUME_NONE, 0, 0) == -ENOMEM) {
            m.n = i; /* resume with member i */
            m.seen = FANOUT_GROUP_PAGE;
            break;
        }
    }
    if (n >= 0 && (m.seen >= FANOUT_GROUP_PAGE || m.n < m.seen)) {
        const char *last = m.n > 0 ? m.ids[m.n - 1] : after;
        unsigned held = j->held;
        wait_timer(j, fanout_now(f), "group_page", last);
        if (j->held == held) { /* not stored (no scheduler, store error) */
            LOG_ERROR("fanout", "id=%s: group %s: members after '%s' not served: %s", j->id,
                      j->n.to_id, last, j->last_reason);
        }
    }
    free(m.ids);
}

/* Plan a job just taken (fresh: straight from intake, so it cannot have
 * been planned before) and start its attempts. */
static void job_begin(fanout_t *f, struct job *j, bool fresh)
{
    const char *id = j->id;
    int64_t now = clock_wall_ms();
    if (j->n.to_kind == PROTO_TO_LOCAL) {
        store_set_state(f->store, id, "failed", "local notifications stay on the agent", now);
        f->st.failed++;
        job_free(j);
        return;
    }
    /* Planned before (held, scheduled, a hub that stopped mid-way): its
     * timers are replaced by this plan, with the preferences of now. */
    if (f->sched && !fresh) {
        int64_t left = 0;
        if (store_timer_count_of(f->store, id, &left) == 0 && left > 0) {
            sched_cancel(f->sched, id, NULL, NULL);
            j->parts = true;
        }
    }
    if (j->n.to_kind == PROTO_TO_USER) {
        plan_user(j, j->n.to_id, RESUME_NONE, 0, 0);
    } else {
        plan_group_page(j, "");
    }
    job_start(j);
}

static void on_queued(void *arg, const char *id, const char *json, size_t len,
                      int64_t expires_ms)
{
    fanout_t *f = arg;
    struct job *j = job_new(f, id, json, len, expires_ms);
    if (!j) {
        /* Out of memory (or unparsable: job_new recorded that); a queued
         * row is taken again on a later pull. */
        store_set_state(f->store, id, "queued", "", clock_wall_ms());
        return;
    }
    job_begin(f, j, false);
}

bool fanout_ready(fanout_t *f)
{
    if (f->backlog) {
        return false; /* queued rows first: new ones queue behind them */
    }
    if (f->jobs < f->o.max_jobs || f->nparked < f->o.max_parked) {
        return true;
    }
    f->backlog = true; /* what is stored meanwhile waits in the queue */
    return false;
}

/* A job for a parsed notification stored as taken; n is moved in. */
static void job_from(fanout_t *f, struct notification *n, int64_t expires_ms, const char *agent)
{
    struct job *j = calloc(1, sizeof(*j));
    if (!j) {
        /* Stored as taken: back to the queue, for a later pull. */
        store_set_state(f->store, n->id, "queued", "", clock_wall_ms());
        f->backlog = true;
        notification_free(n);
        return;
    }
    copy_str(j->id, sizeof(j->id), n->id);
    if (agent && agent[0]) {
        copy_str(j->agent, sizeof(j->agent), agent);
        j->rcpt_mem = true;
    }
    j->n = *n;
    memset(n, 0, sizeof(*n));
    job_link(f, j, expires_ms);
    job_begin(f, j, true);
}

void fanout_take(fanout_t *f, struct notification *n, int64_t expires_ms, const char *agent)
{
    f->st.direct++;
    if (f->jobs < f->o.max_jobs && f->nparked == 0) {
        job_from(f, n, expires_ms, agent);
        return;
    }
    struct park *p = malloc(sizeof(*p));
    if (!p) {
        store_set_state(f->store, n->id, "queued", "", clock_wall_ms());
        f->backlog = true;
        notification_free(n);
        return;
    }
    p->next = NULL;
    p->expires_ms = expires_ms;
    copy_str(p->agent, sizeof(p->agent), agent ? agent : "");
    p->n = *n;
    memset(n, 0, sizeof(*n));
    unsigned prio = p->n.priority <= PROTO_PRIO_CRITICAL ? (unsigned)p->n.priority
                                                         : PROTO_PRIO_NORMAL;
    if (f->parked[prio].tail) {
        f->parked[prio].tail->next = p;
    } else {
        f->parked[prio].head = p;
    }
    f->parked[prio].tail = p;
    f->nparked++;
    f->st.parked++;
}

/* The oldest parked notification of the highest priority, or NULL. */
static struct park *park_pop(fanout_t *f)
{
    for (int prio = PROTO_PRIO_CRITICAL; prio >= PROTO_PRIO_LOW; prio--) {
        struct park *p = f->parked[prio].head;
        if (p) {
            f->parked[prio].head = p->next;
            if (!p->next) {
                f->parked[prio].tail = NULL;
            }
            f->nparked--;
            return p;
        }
    }
    return NULL;
}

/* A durable retry came due. Normally its delivery waits in memory: send it
 * again. After a restart (no such delivery; store_timer_hold_retries made the
 * notification 'scheduled'): requeue it, so it is planned again now. */
static int retry_due(fanout_t *f, const struct store_timer *t)
{
    char *end = NULL;
    long long dev = strtoll(t->payload, &end, 10);
    if (!end || end == t->payload || *end) {
        LOG_WARN("fanout", "id=%s: retry timer with payload '%s' not understood; ignored",
                 t->notification_id, t->payload);
        return 0;
    }
    uint32_t h = id_hash(t->notification_id);
    for (struct job *j = byid_first(f, t->notification_id, h); j; j = j->hnext) {
        if (j->hash != h || strcmp(j->id, t->notification_id) != 0) {
            continue;
        }
        for (unsigned i = 0; i < j->ndev; i++) {
            struct delivery *d = &j->dv[i];
            if (d->device_id == dev && d->timer == RETRY_DURABLE && !d->done) {
                d->timer = 0;
                attempt(d);
                return 0;
            }
        }
    }
    char state[16];
    int64_t expires = 0;
    char *body = malloc(PROTO_MAX_WIRE + 1);
    if (!body) {
        return -ENOMEM;
    }
    int rc = store_notification_get(f->store, t->notification_id, body, PROTO_MAX_WIRE + 1,
                                    &expires, state, sizeof(state));
    free(body);
    if (rc > 0 && strcmp(state, "scheduled") == 0) {
        LOG_INFO("fanout", "id=%s: retry time reached (the hub restarted meanwhile): planned "
                           "again", t->notification_id);
        rc = store_set_state(f->store, t->notification_id, "queued", "", fanout_now(f));
    }
    return rc < 0 ? rc : 0;
}

/* "alice\n1\n1700000000000" -> user, step, started. */
static int parse_payload(const char *p, char *user, size_t ulen, unsigned *step, int64_t *started)
{
    const char *nl = strchr(p, '\n');
    size_t l = nl ? (size_t)(nl - p) : strlen(p);
    if (l == 0 || l >= ulen) {
        return -EINVAL;
    }
    memcpy(user, p, l);
    user[l] = '\0';
    *step = 0;
    *started = 0;
    if (nl && nl[1]) {
        char *end;
        unsigned long s = strtoul(nl + 1, &end, 10);
        *step = s < POLICY_FALLBACK_MAX ? (unsigned)s : 0;
        if (*end == '\n') {
            *started = strtoll(end + 1, NULL, 10);
        }
    }
    return 0;
}

int fanout_timer(fanout_t *f, const struct store_timer *t)
{
    if (strcmp(t->kind, "retry") == 0) {
        return retry_due(f, t);
    }
    int64_t now = fanout_now(f);
    bool page = strcmp(t->kind, "group_page") == 0;
    int resume = strcmp(t->kind, "deliver_at") == 0 ? RESUME_DELIVER_AT
                 : strcmp(t->kind, "hold") == 0     ? RESUME_HOLD
                 : strcmp(t->kind, "fallback") == 0 ? RESUME_FALLBACK
                                                    : RESUME_NONE;
    char user[STORE_USER_ID_MAX + 1] = "";
    unsigned step = 0;
    int64_t started = 0;
    if (page ? strlen(t->payload) >= sizeof(user)
             : (resume == RESUME_NONE ||
                parse_payload(t->payload, user, sizeof(user), &step, &started))) {
        LOG_WARN("fanout", "id=%s: timer %s with payload '%s' not understood; ignored",
                 t->notification_id, t->kind, t->payload);
        return 0;
    }
    char *body = malloc(PROTO_MAX_WIRE + 1);
    if (!body) {
        return -ENOMEM;
    }
    int64_t expires = 0;
    char state[16];
    int rc = store_notification_get(f->store, t->notification_id, body, PROTO_MAX_WIRE + 1,
                                    &expires, state, sizeof(state));
    if (rc <= 0 || (strcmp(state, "scheduled") != 0 && strcmp(state, "sending") != 0 &&
                    strcmp(state, "queued") != 0)) {
        /* Gone, or already ended (e.g. cancelled by an admin): nothing to do. */
        free(body);
        return rc < 0 ? rc : 0;
    }
    struct job *j = job_new(f, t->notification_id, body, strlen(body), expires);
    free(body);
    if (!j) {
        return -ENOMEM;
    }
    j->parts = true;
    store_set_state(f->store, j->id, "sending", "", now);
    if (page) {
        /* The next page of a group (payload: the last member planned). */
        if (j->n.to_kind == PROTO_TO_GROUP) {
            plan_group_page(j, t->payload);
        }
    } else {
        plan_user(j, user, resume, resume == RESUME_NONE ? 0 : step, started);
    }
    job_start(j);
    return 0;
}

/* --- re-planning after a preference change ---------------------------------
 *
 * A committed change of a user's preferences (or zone) reaches the
 * notifications waiting for them now, not when their timers fire: a 0 ms loop
 * timer takes the user's policy timers (store_timer_of_user, a batch at a
 * time) and resumes the ones the change may affect, in the loop's next
 * iteration (so the work rides in its transaction and sends follow its
 * commit):
 *   - hold: always (quiet hours gone or moved, opted out, ...): planned
 *     again under the new preferences; still quiet means held again;
 *   - deliver_at / fallback: only when every channel is suppressed now
 *     (opt-out, category opt-out, every class off): they end suppressed now
 *     rather than at their time; otherwise they keep their time.
 * Each resumed timer gets a 'replan|pref_change' decision first. */

#define REPLAN_USERS_MAX 64 /* users waiting to be re-planned */
#define REPLAN_BATCH 128    /* timers looked at per user and wake-up */

struct replan_user {
    char id[STORE_USER_ID_MAX + 1];
    int64_t cursor; /* timers up to this id are done */
};

struct replan {
    struct replan_user u[REPLAN_USERS_MAX];
    unsigned n;
    uint64_t timer;
    bool full_logged;
};

struct replan_row {
    int64_t id, due;
    char kind[16];
    char nid[PROTO_ID_MAX + 1];
    char payload[STORE_USER_ID_MAX + 48];
};

struct replan_rows {
    struct replan_row *r;
    unsigned n;
};

static void replan_collect(void *arg, const struct store_timer *t)
{
    struct replan_rows *rows = arg;
    struct replan_row *r = &rows->r[rows->n++];
    r->id = t->id;
    r->due = t->due_ms;
    snprintf(r->kind, sizeof(r->kind), "%s", t->kind);
    snprintf(r->nid, sizeof(r->nid), "%s", t->notification_id);
    snprintf(r->payload, sizeof(r->payload), "%s", t->payload);
}

/* Would the user's preferences now suppress this notification on every
 * channel class? Then a wait for its time or next step is pointless. */
static bool all_suppressed(fanout_t *f, const char *user, const char *nid, char *body,
                           int64_t now)
{
    const struct pref_entry *pe = NULL;
    if (user_prefs(f, user, &pe) <= 0 || !pe->prefs) {
        return false;
    }
    int64_t expires = 0;
    char state[16];
    if (store_notification_get(f->store, nid, body, PROTO_MAX_WIRE + 1, &expires, state,
                               sizeof(state)) <= 0) {
        return false;
    }
    struct notification n;
    struct proto_error perr;
    if (proto_parse(body, strlen(body), &n, &perr) < 0) {
        return false;
    }
    bool all = true;
    for (unsigned bit = PROTO_CH_PUSH; bit <= PROTO_CH_EMAIL && all; bit <<= 1) {
        struct policy_decision d;
        policy_decide(pe->prefs, pe->tz, &n, (enum proto_channel)bit, now, 0, &d);
        all = d.action == POLICY_SUPPRESS;
    }
    notification_free(&n);
    return all;
}

/* One batch of one user's timers: 1 when more may remain, 0 done, or error. */
static int replan_user(fanout_t *f, struct replan_user *u, char *body)
{
    struct replan_rows rows = {.r = calloc(REPLAN_BATCH, sizeof(struct replan_row))};
    if (!rows.r) {
        return -ENOMEM;
    }
    int rc = store_timer_of_user(f->store, u->id, u->cursor, REPLAN_BATCH, replan_collect, &rows);
    int64_t now = fanout_now(f);
    unsigned resumed = 0;
    for (unsigned i = 0; rc >= 0 && i < rows.n; i++) {
        struct replan_row *r = &rows.r[i];
        u->cursor = r->id;
        if (strcmp(r->kind, "hold") != 0 && !all_suppressed(f, u->id, r->nid, body, now)) {
            continue;
        }
        int del = store_timer_delete(f->store, r->id);
        if (del <= 0) {
            rc = del < 0 ? del : rc; /* 0: fired meanwhile */
            continue;
        }
        struct store_decision dec = {.notification_id = r->nid,
                                     .user_id = u->id,
                                     .channel = "",
                                     .action = "replan",
                                     .rule = "pref_change",
                                     .until_ms = r->due,
                                     .at_ms = now};
        store_decision_add(f->store, &dec);
        struct store_timer t = {.id = r->id,
                                .due_ms = r->due,
                                .kind = r->kind,
                                .notification_id = r->nid,
                                .payload = r->payload};
        int frc = fanout_timer(f, &t);
        if (frc < 0) {
            LOG_ERROR("fanout", "id=%s: re-plan after a preference change: %s", r->nid,
                      tdg_strerror(frc));
        }
        resumed++;
    }
    if (resumed) {
        LOG_INFO("fanout", "user %s: preferences changed: %u waiting notification(s) planned "
                           "again", u->id, resumed);
    }
    unsigned n = rows.n;
    free(rows.r);
    if (rc < 0) {
        return rc;
    }
    return n == REPLAN_BATCH ? 1 : 0;
}

static void on_replan_timer(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    fanout_t *f = arg;
    struct replan *rp = f->replan;
    rp->timer = 0;
    char *body = malloc(PROTO_MAX_WIRE + 1);
    if (!body) {
        rp->timer = loop_timer_add(f->loop, 100, on_replan_timer, f);
        return;
    }
    unsigned keep = 0;
    for (unsigned i = 0; i < rp->n; i++) {
        int rc = replan_user(f, &rp->u[i], body);
        if (rc < 0) {
            LOG_ERROR("fanout", "user %s: cannot re-plan waiting notifications: %s; they "
                                "follow the change when their timers fire",
                      rp->u[i].id, tdg_strerror(rc));
        } else if (rc > 0) {
            rp->u[keep++] = rp->u[i]; /* more next wake-up */
        }
    }
    free(body);
    rp->n = keep;
    if (rp->n > 0) {
        rp->timer = loop_timer_add(f->loop, 0, on_replan_timer, f);
    }
}

static void replan_add(fanout_t *f, const char *user_id)
{
    if (!f->replan && !(f->replan = calloc(1, sizeof(*f->replan)))) {
        LOG_ERROR("fanout", "user %s: out of memory: waiting notifications follow the change "
                            "when their timers fire", user_id);
        return;
    }
    struct replan *rp = f->replan;
    unsigned i = 0;
    while (i < rp->n && strcmp(rp->u[i].id, user_id) != 0) {
        i++;
    }
    if (i == rp->n) {
        if (rp->n >= REPLAN_USERS_MAX) {
            if (!rp->full_logged) {
                LOG_WARN("fanout", "more than %d users with changed preferences at once: the "
                                   "others' waiting notifications follow when their timers fire",
                         REPLAN_USERS_MAX);
                rp->full_logged = true;
            }
            return;
        }
        rp->n++;
        rp->full_logged = false;
    }
    snprintf(rp->u[i].id, sizeof(rp->u[i].id), "%s", user_id);
    rp->u[i].cursor = 0; /* a newer change: look at all of them again */
    if (!rp->timer) {
        rp->timer = loop_timer_add(f->loop, 0, on_replan_timer, f);
    }
}

void fanout_pull(fanout_t *f)
{
    /* Parked first (they were stored before anything in the queue now),
     * a bounded number per iteration like the store's take. */
    unsigned moved = 0;
    struct park *p;
    while (f->jobs < f->o.max_jobs && moved < FANOUT_TAKE_MAX && (p = park_pop(f))) {
        job_from(f, &p->n, p->expires_ms, p->agent);
        free(p);
        moved++;
    }
    if (f->jobs >= f->o.max_jobs || f->nparked > 0) {
        return;
    }
    unsigned want = f->o.max_jobs - f->jobs;
    if (want > FANOUT_TAKE_MAX) {
        want = FANOUT_TAKE_MAX;
    }
    int rc = store_take_queued(f->store, want, on_queued, f);
    if (rc < 0) {
        LOG_ERROR("fanout", "cannot read queued notifications: %s", tdg_strerror(rc));
    } else if ((unsigned)rc < want) {
        f->backlog = false; /* the queue is empty: intake may hand over directly */
    }
}

void fanout_flush(fanout_t *f)
{
    for (size_t ri = 0; ri < f->nroutes; ri++) {
        /* Only what was queued before this flush (whose attempts the commit
         * just made durable): a delivery queued by a callback during the
         * flush waits for the next commit. */
        struct delivery *d = f->ready[ri].head, *last = f->ready[ri].tail;
        f->ready[ri].head = f->ready[ri].tail = NULL;
        while (d) {
            struct delivery *next = d->next_ready;
            struct channel_delivery cd = {
                .attempt_id = (uint64_t)d->attempt_id,
                .n = &d->job->n,
                .dev = &d->dev,
                .now_ms = clock_wall_ms(),
            };
            int rc = d->route->ops->send(d->route->state, &cd, on_outcome, d);
            if (rc == -EBUSY) {
                /* The channel's window is full: local backpressure, not an
                 * attempt. This delivery and the rest of the queue wait, in
                 * order and ahead of anything queued meanwhile, for the next
                 * flush (after an outcome frees a slot); their attempt rows
                 * stay 'sending'. */
                last->next_ready = f->ready[ri].head;
                if (!f->ready[ri].head) {
                    f->ready[ri].tail = last;
                }
                f->ready[ri].head = d;
                f->st.backpressure++;
                break;
            }
            f->st.inflight++;
            if (rc < 0) {
                /* Could not even start (e.g. too many in flight): treat as a
                 * retryable outcome so backoff and accounting stay in one place. */
                struct channel_outcome o = {.result = CHANNEL_RETRY, .status = 0};
                snprintf(o.reason, sizeof(o.reason), "send: %s", tdg_strerror(rc));
                on_outcome(d, &o);
            }
            d = next;
        }
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
    /* About one bucket per job that can be in memory (max_jobs; resumed
     * parts may add a few), 64 .. 65536. */
    uint32_t nb = 64;
    while (nb < o->max_jobs && nb < 65536) {
        nb <<= 1;
    }
    f->byid = calloc(nb, sizeof(*f->byid));
    if (!f->byid) {
        free(f);
        return NULL;
    }
    f->byid_mask = nb - 1;
    f->backlog = true; /* rows recovered or queued before this start */
    f->loop = loop;
    f->store = store;
    f->o = *o;
    if (f->o.max_parked == 0) {
        /* Enough to refill the jobs for a few iterations (a pull takes up
         * to FANOUT_TAKE_MAX); beyond it intake holds batches, which costs
         * nothing (intake.c, "Backpressure"). */
        f->o.max_parked = o->max_jobs / 4 > 0 ? o->max_jobs / 4 : 1;
    }
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
    struct park *p;
    while ((p = park_pop(f))) { /* stored as 'sending': recovered at the next start */
        notification_free(&p->n);
        free(p);
    }
    fanout_policy_changed(f, NULL);
    free(f->prefs);
    if (f->replan && f->replan->timer) {
        loop_timer_cancel(f->loop, f->replan->timer);
    }
    free(f->replan);
    free(f->byid);
    free(f);
}

unsigned fanout_jobs(const fanout_t *f)
{
    return f->jobs + f->nparked;
}

void fanout_get_stats(const fanout_t *f, struct fanout_stats *st)
{
    *st = f->st;
}
