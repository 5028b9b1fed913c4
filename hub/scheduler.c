/* scheduler.c - durable timers on one loop timer (see scheduler.h). */
#include "scheduler.h"

#include "error.h"
#include "log.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

struct sched {
    loop_t *loop;
    store_t *store;
    sched_fire_cb fire;
    void *arg;
    struct sched_opts o;
    uint64_t timer;   /* loop timer id, 0 when none */
    int64_t armed_ms; /* the due time it was armed for (0: none) */
    bool running;     /* inside sched_run_due: re-arm once at its end */
    struct sched_stats st;
};

static int64_t now_ms(const sched_t *s)
{
    return s->o.now ? s->o.now(s->o.clock_arg) : clock_wall_ms();
}

static void on_timer(loop_t *loop, uint64_t id, void *arg);

/* Arm the loop timer for due_ms (replacing any). */
static void arm(sched_t *s, int64_t due_ms)
{
    if (s->timer) {
        loop_timer_cancel(s->loop, s->timer);
        s->timer = 0;
    }
    int64_t now = now_ms(s);
    uint64_t delay = due_ms > now ? (uint64_t)(due_ms - now) : 0;
    if (delay > s->o.max_sleep_ms) {
        delay = s->o.max_sleep_ms;
    }
    s->timer = loop_timer_add(s->loop, delay, on_timer, s);
    s->armed_ms = s->timer ? due_ms : 0;
    s->st.arms++;
    if (!s->timer) {
        LOG_ERROR("sched", "cannot arm the loop timer (out of memory); timers wait for the "
                           "next one added");
    }
}

/* Arm for the earliest row of the store, or disarm when there is none. */
static int rearm(sched_t *s)
{
    int64_t due = 0;
    int rc = store_timer_next(s->store, &due);
    if (rc < 0) {
        return rc;
    }
    if (rc == 0) {
        if (s->timer) {
            loop_timer_cancel(s->loop, s->timer);
        }
        s->timer = 0;
        s->armed_ms = 0;
        return 0;
    }
    arm(s, due);
    return 0;
}

struct fire_ctx {
    sched_t *s;
    unsigned n;
};

static void fire_one(void *arg, const struct store_timer *t)
{
    struct fire_ctx *c = arg;
    c->n++;
    c->s->st.fired++;
    c->s->fire(c->s->arg, t);
}

int sched_run_due(sched_t *s)
{
    s->running = true;
    int total = 0, rc = 0;
    for (;;) {
        /* A fresh clock per batch: handlers take time, more may come due. */
        struct fire_ctx c = {s, 0};
        rc = store_timer_take_due(s->store, now_ms(s), s->o.batch, fire_one, &c);
        if (rc < 0) {
            break;
        }
        total += (int)c.n;
        if ((unsigned)rc < s->o.batch) {
            break;
        }
    }
    s->running = false;
    int rr = rearm(s);
    if (rc < 0) {
        LOG_ERROR("sched", "firing timers: %s", tdg_strerror(rc));
        return rc;
    }
    return rr < 0 ? rr : total;
}

static void on_timer(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    sched_t *s = arg;
    s->timer = 0;
    s->armed_ms = 0;
    sched_run_due(s);
}

sched_t *sched_create(loop_t *loop, store_t *store, sched_fire_cb fire, void *arg,
                      const struct sched_opts *o)
{
    sched_t *s = calloc(1, sizeof(*s));
    if (!s) {
        return NULL;
    }
    s->loop = loop;
    s->store = store;
    s->fire = fire;
    s->arg = arg;
    if (o) {
        s->o = *o;
    }
    if (!s->o.max_sleep_ms) {
        s->o.max_sleep_ms = 3600000;
    }
    if (!s->o.batch) {
        s->o.batch = 256;
    }
    return s;
}

void sched_destroy(sched_t *s)
{
    if (!s) {
        return;
    }
    if (s->timer) {
        loop_timer_cancel(s->loop, s->timer);
    }
    free(s);
}

int sched_start(sched_t *s)
{
    return rearm(s);
}

int sched_add(sched_t *s, int64_t due_ms, const char *kind, const char *notification_id,
              const char *payload)
{
    int rc = store_timer_add(s->store, due_ms, kind, notification_id, payload, NULL);
    if (rc < 0) {
        return rc;
    }
    s->st.added++;
    /* Inside sched_run_due the re-arm at its end sees the new row. */
    if (!s->running && (!s->timer || due_ms < s->armed_ms)) {
        arm(s, due_ms);
    }
    return 0;
}

int sched_cancel(sched_t *s, const char *notification_id, const char *kind, const char *payload)
{
    int rc = store_timer_cancel(s->store, notification_id, kind, payload);
    if (rc > 0) {
        s->st.cancelled += (uint64_t)rc;
    }
    /* The armed timer may now be for nothing: it then fires, finds no row
     * and re-arms for the next one. Cheaper than a query per cancel. */
    return rc;
}

int64_t sched_armed(const sched_t *s)
{
    return s->armed_ms;
}

void sched_get_stats(const sched_t *s, struct sched_stats *st)
{
    *st = s->st;
}
