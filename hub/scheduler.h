/*
 * scheduler.h - the hub's scheduler: one durable timer store, one loop timer.
 *
 * Every delayed piece of work of the hub — "deliver_at", quiet-hours holds,
 * fallback steps, retries — is a row of the store's timers table (due time,
 * kind, notification id, payload). In memory there is only the earliest due
 * time, armed as one timer on the event loop and re-armed when an earlier
 * timer is added or after timers fired: no polling, and a hub with nothing
 * scheduled never wakes up for it. Rows survive a restart: sched_start()
 * arms from the table, and timers that came due while the hub was down fire
 * at once.
 *
 * Firing deletes the row in the store's iteration transaction and calls the
 * handler in the same iteration: if the hub dies before the commit, the
 * timer fires again after the restart (at least once).
 *
 * Due times are wall-clock (Unix ms). The loop's timers run on the
 * monotonic clock, so an armed delay is capped (max_sleep_ms, default 1 h)
 * and recomputed when it ends: a stepped wall clock delays a timer by at most
 * that much.
 */
#ifndef TIDINGS_SCHEDULER_H
#define TIDINGS_SCHEDULER_H

#include <stdint.h>

#include "loop.h"
#include "store.h"

typedef struct sched sched_t;

/* Called for each due timer (t and its strings are valid during the call). */
typedef void (*sched_fire_cb)(void *arg, const struct store_timer *t);
/* Wall clock in Unix ms; tests inject their own. */
typedef int64_t (*sched_clock_fn)(void *arg);

struct sched_opts {
    sched_clock_fn now; /* NULL: clock_wall_ms */
    void *clock_arg;
    uint64_t max_sleep_ms; /* 0: one hour */
    unsigned batch;        /* timers fired per store query; 0: 256 */
};

/* o may be NULL (defaults). The handler may add and cancel timers. */
sched_t *sched_create(loop_t *loop, store_t *store, sched_fire_cb fire, void *arg,
                      const struct sched_opts *o);
/* Stops the loop timer; the rows stay in the store. Safe with NULL. */
void sched_destroy(sched_t *s);

/* Arm from the store (at start-up): past-due timers fire on the next loop
 * iteration. 0 or a store error. */
int sched_start(sched_t *s);

/* Add a durable timer (iteration transaction) and arm the loop timer if it
 * is the earliest. kind: "deliver_at", "hold", "fallback", "retry". */
int sched_add(sched_t *s, int64_t due_ms, const char *kind, const char *notification_id,
              const char *payload);
/* Remove a notification's timers (kind/payload NULL: any). How many, or error. */
int sched_cancel(sched_t *s, const char *notification_id, const char *kind, const char *payload);

/* Fire every timer due now (the loop timer calls this; tests may too).
 * Returns how many fired, or a store error. */
int sched_run_due(sched_t *s);

/* The armed due time (Unix ms), 0 when nothing is armed. */
int64_t sched_armed(const sched_t *s);

struct sched_stats {
    uint64_t added, fired, cancelled, arms;
};
void sched_get_stats(const sched_t *s, struct sched_stats *st);

#endif
