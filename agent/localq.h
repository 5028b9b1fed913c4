/*
 * localq.h - the durable queue of local deliveries: notifications for this
 * box ("to":"local", and those the hub sends down) and what became of each
 * on each delivery backend (docs/delivery.md, "The local queue").
 *
 * One SQLite table, local_queue, in the outbox's file and written through
 * the outbox's connection inside its write transaction (outbox_begin), so a
 * local notification is accepted by the same commit as everything else read
 * in that loop iteration. One row per notification and enabled backend whose
 * channel the notification allows:
 *
 *   pending -> delivered | suppressed (rule) | dropped (rule or reason)
 *            | failed (reason) | expired
 *
 * A pending row waits until due_ms: now for a new row, the end of the quiet
 * window for a held one (rule quiet_hours), the next try after a retry or an
 * unavailable backend (capped full-jitter backoff, or the backend's
 * retry_after_ms), "deliver_at" for a scheduled one. Rows are delivered only
 * once the commit that stored them succeeded, and the preferences are asked
 * (policy_decide) each time a row comes due, so a preference change applies
 * to what is still queued.
 *
 * One loop timer, armed for the earliest due row (never more than
 * LOCALQ_TIMER_MAX_MS ahead, so a stepped wall clock is noticed); no timer
 * at all when nothing is pending. At creation every due row is run again
 * (also rows that were being delivered when the agent stopped: at least
 * once), and the timer is armed.
 *
 * Bounds: at most max_rows rows (every state). At the budget, the oldest
 * finished rows are pruned before their retention ends (logged once,
 * counted); when every row is pending, new local notifications are refused
 * (TDG_EFULL, logged once, and once when there is room again). Finished rows
 * are pruned retention_ms after their last change; until then their outcome
 * can be queried (localq_find). At most LOCALQ_INFLIGHT_MAX deliveries run
 * at once.
 *
 * Single-threaded: the loop thread only.
 */
#ifndef TIDINGS_LOCALQ_H
#define TIDINGS_LOCALQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "deliver.h"
#include "ingest.h"
#include "loop.h"
#include "outbox.h"
#include "policy.h"

struct cJSON;

#define LOCALQ_INFLIGHT_MAX 32               /* deliveries running at once */
#define LOCALQ_TIMER_MAX_MS (10 * 60 * 1000) /* longest timer: wall clock steps */
#define LOCALQ_BACKEND_NONE "none"           /* the row of a notification no backend takes */

enum localq_state {
    LOCALQ_PENDING = 0,
    LOCALQ_DELIVERED,
    LOCALQ_SUPPRESSED,
    LOCALQ_DROPPED,
    LOCALQ_FAILED,
    LOCALQ_EXPIRED,
    LOCALQ_STATE_COUNT
};

/* "pending", "delivered", "suppressed", "dropped", "failed", "expired". */
const char *localq_state_name(enum localq_state s);

struct localq_opts {
    /* Rows of every state; 0 = no budget. */
    uint64_t max_rows;
    /* Finished rows are pruned this long after their last change; 0 = never. */
    uint64_t retention_ms;
    /* Backoff after retry / unavailable: base (>= 1) and cap. */
    uint64_t retry_min_ms, retry_max_ms;
    /* A row still answered retry / unavailable this long after acceptance
     * fails; 0 = never (until its ttl). */
    uint64_t retry_for_ms;
    /* Whose preferences apply to "to":"local"; NULL or "" = none. */
    const char *local_user;
    /* The snapshot in force at start (borrowed, as localq_set_policy); NULL = none. */
    const policy_snapshot_t *policy;
    /* Wall-clock milliseconds (UTC). NULL: clock_wall_ms. Tests inject a
     * clock to hold and expire without waiting. */
    int64_t (*clock)(void *arg);
    void *clock_arg;
};

struct localq_stats {
    uint64_t rows; /* committed rows, every state */
    uint64_t max_rows;
    /* Since start: notifications added, refused as duplicates, refused full; */
    uint64_t added, duplicates, rejected_full;
    /* rows that ended so; */
    uint64_t delivered, suppressed, dropped, failed, expired;
    /* rows deferred for quiet hours, and for a retry; */
    uint64_t held, retries;
    /* rows removed after their retention, and before it (budget). */
    uint64_t pruned, pruned_early;
    unsigned in_flight;
    int64_t next_due_ms; /* wall ms the timer is armed for; 0 = none (or now) */
};

/* Rows by state, and the pending rows that wait for quiet hours to end. */
struct localq_counts {
    uint64_t by_state[LOCALQ_STATE_COUNT];
    uint64_t held;
};

typedef struct localq localq_t;

/* Create the queue on ob's file and connection, delivering through d (both
 * borrowed; destroy the queue before closing the outbox, and after
 * deliver_destroy). Registers ob's commit callback. Runs due rows soon (a
 * zero timer). 0 and *out, or a negative error with err set. */
int localq_create(loop_t *loop, outbox_t *ob, deliver_t *d, const struct localq_opts *o,
                  localq_t **out, char *err, size_t errlen);
/* Cancel the timer and free. Deliveries in flight must already have been
 * abandoned (deliver_destroy): their rows stay pending and run again at the
 * next start. Writes of the open transaction stay for the outbox's commit.
 * Safe with NULL. */
void localq_destroy(localq_t *q);

/* Add a prepared notification in the outbox's open transaction: one pending
 * row per enabled backend whose channel it allows (or one dropped row,
 * backend "none", when no backend takes it). source: "local" (to:local from
 * a way in) or "down" (sent down by the hub). 0, TDG_EDUPLICATE (the id is
 * already in the local queue: accepted once), TDG_EFULL (over max_rows), or
 * a negative error (nothing of it added). Delivered only once the commit
 * that holds it succeeded. */
int localq_add(localq_t *q, const char *source, const struct ingest_item *it);
/* Notifications added since the last end of the write transaction. */
unsigned localq_pending(const localq_t *q);

/* Use snapshot s (borrowed: valid until the next call or localq_destroy;
 * NULL = none) from now on, and decide again, soon, every row held for
 * quiet hours: a preference change applies to notifications still queued. */
void localq_set_policy(localq_t *q, const policy_snapshot_t *s);

/* Record a backend's receipt (desktop: action invoked, closed) on its row,
 * and log it. */
void localq_receipt(localq_t *q, const struct deliver_receipt *r);

/* Look at due rows now (e.g. after the wall clock was set; tests with an
 * injected clock). Runs from a zero timer, not from inside the call. */
void localq_poke(localq_t *q);

/* What became of notification id: *out is a new JSON array with one object
 * per backend row (backend, source, state, rule, reason, attempts,
 * priority, accepted/expires/due/updated times, ref, receipt). Reads
 * through the outbox's connection, so after the round's commit it is the
 * committed state. 0, TDG_ENOTFOUND, -ENOMEM or a database error. */
int localq_find(localq_t *q, const char *id, struct cJSON **out);

/* Rows by state (a scan of an index over the whole table: bounded by
 * max_rows). 0 or a database error. */
int localq_count(localq_t *q, struct localq_counts *c);

void localq_get_stats(const localq_t *q, struct localq_stats *st);

#endif
