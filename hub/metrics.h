/*
 * metrics.h - counters, gauges and histograms, rendered in the Prometheus
 * text exposition format (version 0.0.4).
 *
 * A series is created once, at set-up, and the caller keeps the pointer:
 * an update is then a plain `s->v++` or metrics_observe() (a short bucket
 * scan) - no lookup, no lock, no allocation (one event loop per process).
 * Gauges that mirror other modules' state (queue depths, breaker states) are
 * filled by collect hooks that run just before each rendering.
 *
 * Names are checked ([a-zA-Z_:][a-zA-Z0-9_:]*); label values are escaped
 * at creation. Everything is bounded: at most METRICS_MAX_SERIES series and
 * a render buffer of at most METRICS_MAX_TEXT bytes.
 */
#ifndef TIDINGS_METRICS_H
#define TIDINGS_METRICS_H

#include <stddef.h>
#include <stdint.h>

typedef struct metrics metrics_t;

#define METRICS_MAX_SERIES 2048
#define METRICS_MAX_TEXT (4u << 20)
#define METRICS_HIST_BUCKETS 14 /* latency buckets in ms; +Inf is implicit */

enum metric_type { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM };

/* One series (one label set of one family). Counters and gauges use v
 * (gauges may be set to any value; they are printed as signed). */
struct metric {
    int64_t v;
    /* histograms: cumulative counts are computed at rendering */
    uint64_t bucket[METRICS_HIST_BUCKETS + 1]; /* last = above the largest bound */
    uint64_t count;
    double sum;
};

metrics_t *metrics_create(void);
void metrics_destroy(metrics_t *m);

/* Get or create the series `name{labels}`. labels: NULL/"" for none, or
 * "k1=v1,k2=v2" (values may not contain ',' or '='; use metrics_series_kv
 * for arbitrary values). The family's help and type come from its first
 * creation; asking for an existing name with another type fails. NULL on a
 * bad name, a type clash, the series limit, or ENOMEM (logged once). */
struct metric *metrics_series(metrics_t *m, enum metric_type t, const char *name, const char *help,
                              const char *labels);

/* Same, with label names and values given as arrays (values escaped). */
struct metric *metrics_series_kv(metrics_t *m, enum metric_type t, const char *name,
                                 const char *help, const char *const *keys,
                                 const char *const *values, size_t n);

/* Histogram: count one observation of `ms` milliseconds. */
void metrics_observe(struct metric *h, double ms);

/* The histogram's upper bounds, in ms (METRICS_HIST_BUCKETS of them). */
extern const double metrics_hist_bounds[METRICS_HIST_BUCKETS];

/* A hook run before each rendering, to set gauges from other modules. At
 * most 16. 0 or -ENOSPC. */
typedef void (*metrics_collect_cb)(void *arg);
int metrics_on_collect(metrics_t *m, metrics_collect_cb cb, void *arg);

/* Render every series. Returns a malloc'd NUL-terminated text (free()) and
 * its length, or NULL on ENOMEM or when the text would exceed
 * METRICS_MAX_TEXT. */
char *metrics_render(metrics_t *m, size_t *len);

#endif
