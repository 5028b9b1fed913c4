/*
 * fanout.h - from a stored notification to provider requests.
 *
 * The fanout engine pulls queued notifications from the store (bounded by
 * max_jobs in memory), resolves the recipient's devices, records one attempt
 * per device *before* sending (DESIGN "at least once, duplicates bounded"),
 * and sends through the device's channel once that record is committed.
 * Outcomes end each notification in a terminal state with a reason:
 * delivered, failed (provider reason), expired. Retries use capped
 * full-jitter backoff, or the provider's Retry-After when it is longer.
 *
 * Call order per loop iteration (hub.c does this in its before-sleep hook):
 * fanout_pull() -> store_commit() -> fanout_flush().
 */
#ifndef TIDINGS_FANOUT_H
#define TIDINGS_FANOUT_H

#include <stdint.h>

#include "channel.h"
#include "loop.h"
#include "store.h"

typedef struct fanout fanout_t;

struct fanout_opts {
    unsigned max_jobs;      /* notifications being delivered (planned) at once */
    /* Notifications stored as taken and kept parsed in memory while every
     * job slot is busy (fanout_take); 0: a quarter of max_jobs. A batch
     * intake has started handing over may go past it. Beyond them, intake
     * holds batches or new ones wait in the store's queue. */
    unsigned max_parked;
    unsigned max_attempts;  /* per device delivery */
    uint64_t retry_base_ms, retry_cap_ms;
    /* Wall clock (Unix ms) for planning, timers and retries; NULL:
     * clock_wall_ms. Tests inject their own (the scheduler takes the same). */
    int64_t (*clock)(void *arg);
    void *clock_arg;
};

struct fanout_stats {
    uint64_t delivered, failed, expired, attempts, retries, inflight;
    uint64_t backpressure; /* flushes stopped by a full channel window */
    uint64_t suppressed, dropped, scheduled; /* policy endings (scheduled: waits on a timer) */
    uint64_t direct; /* handed over by intake (fanout_take), not through the store's queue */
    uint64_t parked; /* of those, parked until a job slot freed */
};

/* One route: devices of this platform go through this channel. ops == NULL
 * means the channel exists but is not enabled in this hub (deliveries to
 * such devices fail with a reason saying so). */
struct fanout_route {
    const char *platform;  /* "ios", "android", "sms", "email" */
    unsigned proto_class;  /* PROTO_CH_PUSH / _SMS / _EMAIL: the notification's
                              "channels" restriction is matched against it */
    const char *channel;   /* channel name, for records and reasons */
    const struct channel_ops *ops;
    void *state;
};
#define FANOUT_MAX_ROUTES 8

/* routes are copied. */
fanout_t *fanout_create(loop_t *loop, store_t *store, const struct fanout_opts *o,
                        const struct fanout_route *routes, size_t nroutes);
/* Abandon in-flight work (it is recovered from the store at next start). */
void fanout_destroy(fanout_t *f);

/* Take queued notifications while there is room; record their attempts in
 * the store's open transaction. */
void fanout_pull(fanout_t *f);
/* Direct hand-over from intake, skipping the store's queue: true when a new
 * notification may be stored as taken and given to fanout_take now (a job
 * slot or a parking place free, and nothing queued ahead of it). */
bool fanout_ready(fanout_t *f);
/* A notification intake has just stored as taken
 * (store_add_notification_taken): planned and started now, in the open
 * transaction (its sends start after the commit: fanout_flush), or parked
 * parsed until a job slot frees (fanout_pull plans parked ones first, by
 * priority, then oldest). n is moved in: n->json must be owned (not a
 * borrowed batch item) and the caller must not free n. agent: the agent
 * it came from (its row's `agent`), for its receipt kept in memory
 * (store_set_state_receipt; NULL or "": read back from the table). */
void fanout_take(fanout_t *f, struct notification *n, int64_t expires_ms, const char *agent);
/* Start the sends whose attempts are now committed. */
void fanout_flush(fanout_t *f);

/* --- policy (docs/hub-policy.md) ---
 * Recipients are planned when a notification is taken from the queue or a
 * timer resumes it: group expansion, one decision per user and channel
 * class under the preferences in force then (recorded before sending),
 * holds, deliver_at and fallback steps as durable timers of s. */
struct sched;
void fanout_set_sched(fanout_t *f, struct sched *s);

/* Who frees the tree of a finished job (its notification's root): fn takes
 * ownership (intake_release: the parse thread frees what it built). NULL:
 * freed here, on the loop. fn must stay valid until fanout_destroy. */
struct cJSON;
typedef void (*fanout_release_fn)(void *arg, struct cJSON *root);
void fanout_set_release(fanout_t *f, fanout_release_fn fn, void *arg);
/* A timer of the scheduler came due: resume that notification's recipient.
 * 0 or a negative error (the work is lost only for ENOMEM; logged). */
struct store_timer;
int fanout_timer(fanout_t *f, const struct store_timer *t);
/* Preferences or the time zone of user_id (NULL: anyone) changed and are
 * committed: forget the cached copy, so the next decision reads them again,
 * and re-plan that user's waiting notifications at once (a 0 ms loop timer:
 * the work goes into the next iteration's transaction): held ones are
 * planned again under the new preferences (released, held again, suppressed
 * or dropped), deliver_at and fallback waits end at once when every channel
 * is now suppressed (opt-out); each with a 'replan|pref_change' decision.
 * With NULL only the cache is dropped (bindings: no preference changed). */
void fanout_policy_changed(fanout_t *f, const char *user_id);

/* Notifications in memory: being delivered plus parked. */
unsigned fanout_jobs(const fanout_t *f);
void fanout_get_stats(const fanout_t *f, struct fanout_stats *st);

#endif
