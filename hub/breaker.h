/*
 * breaker.h - a circuit breaker for one provider: closed, open, half-open.
 *
 * closed     requests flow; each outcome is recorded. It opens when
 *            `failures` outcomes in a row failed, or when at least
 *            `ratio_pct` percent of the last `window` outcomes failed (and
 *            the window is full).
 * open       requests are refused (the dispatcher fails over to a backup or
 *            answers "retry after breaker_retry_in()"), for `open_ms`.
 * half-open  after open_ms: up to `probes` requests are let through at once.
 *            When `probes` of them have succeeded, closed; the first failure
 *            opens it again for open_ms.
 *
 * What counts as a failure is the caller's decision (the dispatcher: no
 * answer, 5xx, 429). Every transition is logged once, with numbers, under
 * the breaker's name. Plain value type; time comes from the caller
 * (monotonic ms), so tests use a fake clock. Not thread-safe (one loop).
 */
#ifndef TIDINGS_BREAKER_H
#define TIDINGS_BREAKER_H

#include <stdbool.h>
#include <stdint.h>

enum breaker_state { BREAKER_CLOSED = 0, BREAKER_OPEN = 1, BREAKER_HALF_OPEN = 2 };

/* "closed", "open", "half_open" */
const char *breaker_state_name(enum breaker_state s);

struct breaker_opts {
    unsigned failures;  /* consecutive failures that open it (>= 1) */
    unsigned window;    /* outcomes in the ratio window (1..64); */
    unsigned ratio_pct; /* failure percentage over a full window that opens it; 0 = off */
    uint64_t open_ms;   /* time open before half-open */
    unsigned probes;    /* requests at once in half-open, and successes to close (>= 1) */
};

struct breaker {
    char name[48];
    struct breaker_opts o;
    enum breaker_state state;
    unsigned consecutive; /* failures in a row */
    uint64_t ring;        /* last `window` outcomes, bit = failure */
    unsigned ring_n, ring_fail;
    uint64_t opened_ms; /* when it last opened */
    unsigned probing;   /* half-open requests in flight */
    unsigned probe_ok;  /* half-open successes so far */
    uint64_t opens;     /* times it opened (metrics) */
};

/* Copies opts, clamping them into their ranges. */
void breaker_init(struct breaker *b, const char *name, const struct breaker_opts *o);

/* Current state; an open breaker whose time is up becomes half-open here. */
enum breaker_state breaker_state(struct breaker *b, uint64_t now_ms);

/* May a request go now? In half-open a true answer takes a probe slot,
 * which the request's breaker_record() (or breaker_release()) gives back. */
bool breaker_allow(struct breaker *b, uint64_t now_ms);

/* The outcome of a request that breaker_allow() let through. */
void breaker_record(struct breaker *b, bool failure, uint64_t now_ms);

/* A request let through ended with no verdict on the provider (e.g. never
 * sent): give its probe slot back without counting it. */
void breaker_release(struct breaker *b);

/* While open: ms until half-open (at least 1). 0 when not open. */
uint64_t breaker_retry_in(struct breaker *b, uint64_t now_ms);

#endif
