/*
 * observe.h - the hub's HTTP endpoint: GET /metrics (Prometheus text) and
 * GET /healthz, plus the hub-level metrics gathered at each scrape.
 *
 * /healthz answers 200 with a JSON body when the broker is connected, the
 * last commit succeeded and the hub is not draining; else 503 with the same
 * body saying which is not. Breakers are reported (an open breaker is a
 * degraded provider, not an unhealthy hub: failover and retries handle it).
 */
#ifndef TIDINGS_OBSERVE_H
#define TIDINGS_OBSERVE_H

#include <stdbool.h>

#include "dispatch.h"
#include "fanout.h"
#include "httpd.h"
#include "intake.h"
#include "metrics.h"
#include "mqtt.h"
#include "store.h"

/* Where the numbers come from. Pointers stay owned by the hub and must
 * outlive the observer; mqtt is read through a pointer to the hub's field
 * because it is created later. */
struct observe_src {
    store_t *store;
    intake_t *intake;
    fanout_t *fanout;
    dispatch_t *dispatch;
    mqtt_t *const *mqtt;
    const bool *store_ok; /* last commit succeeded */
    const bool *draining; /* shutting down */
};

typedef struct observe observe_t;

/* Register the hub metrics' collect hook, and the two routes on httpd
 * (which may be NULL: metrics are then only collected). NULL on ENOMEM. */
observe_t *observe_create(metrics_t *m, httpd_t *httpd, const struct observe_src *src);
void observe_destroy(observe_t *o);

#endif
