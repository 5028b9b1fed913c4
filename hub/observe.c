/* observe.c - /metrics, /healthz and the hub-level metrics (see observe.h). */
#include "observe.h"

#include "proto.h"
#include "store_engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PROVIDERS 16

struct observe {
    metrics_t *m;
    struct observe_src src;
    struct metric *m_items[3], *m_rejected[PROTO_REASON_COUNT], *m_batches, *m_bad;
    struct metric *m_queued, *m_sending, *m_scheduled;
    struct metric *m_jobs, *m_inflight, *m_retries, *m_backpressure, *m_direct, *m_parked, *m_held, *m_held_bytes;
    struct metric *m_broker, *m_store, *m_draining;
    struct metric *m_states[8];
    char state_names[8][16];
    unsigned nstates;
};

static struct metric *counter(observe_t *o, const char *name, const char *help, const char *labels)
{
    return metrics_series(o->m, METRIC_COUNTER, name, help, labels);
}

static struct metric *gauge(observe_t *o, const char *name, const char *help, const char *labels)
{
    return metrics_series(o->m, METRIC_GAUGE, name, help, labels);
}

#define SET(m, val) ((m) ? (void)((m)->v = (int64_t)(val)) : (void)0)

static void on_state_count(void *arg, const char *state, int64_t n)
{
    observe_t *o = arg;
    for (unsigned i = 0; i < o->nstates; i++) {
        if (strcmp(o->state_names[i], state) == 0) {
            SET(o->m_states[i], n);
            return;
        }
    }
    if (o->nstates < 8) {
        unsigned i = o->nstates++;
        snprintf(o->state_names[i], sizeof(o->state_names[i]), "%s", state);
        const char *keys[] = {"state"}, *vals[] = {state};
        o->m_states[i] = metrics_series_kv(
            o->m, METRIC_COUNTER, "tidings_hub_notifications_total",
            "Notifications that reached a terminal state (durable across restarts)", keys, vals, 1);
        SET(o->m_states[i], n);
    }
}

static void collect(void *arg)
{
    observe_t *o = arg;
    const struct observe_src *s = &o->src;
    struct intake_stats is;
    intake_get_stats(s->intake, &is);
    SET(o->m_items[0], is.accepted);
    SET(o->m_items[1], is.duplicates);
    SET(o->m_items[2], is.delayed);
    SET(o->m_batches, is.batches);
    SET(o->m_held, is.held);
    SET(o->m_held_bytes, intake_held_bytes(s->intake));
    SET(o->m_bad, is.bad_envelopes);
    for (unsigned r = 1; r < PROTO_REASON_COUNT; r++) {
        if (is.rejected_by[r] == 0) {
            continue;
        }
        if (!o->m_rejected[r]) {
            const char *keys[] = {"reason"}, *vals[] = {proto_reason_code((enum proto_reason)r)};
            o->m_rejected[r] =
                metrics_series_kv(o->m, METRIC_COUNTER, "tidings_hub_intake_rejected_total",
                                  "Items rejected at intake, by reason code", keys, vals, 1);
        }
        SET(o->m_rejected[r], is.rejected_by[r]);
    }
    struct fanout_stats fs;
    fanout_get_stats(s->fanout, &fs);
    SET(o->m_retries, fs.retries);
    SET(o->m_backpressure, fs.backpressure);
    SET(o->m_direct, fs.direct);
    SET(o->m_parked, fs.parked);
    SET(o->m_jobs, fanout_jobs(s->fanout));
    SET(o->m_inflight, dispatch_inflight(s->dispatch));
    int64_t queued = 0;
    if (store_queue_depth(s->store, &queued) == 0) {
        SET(o->m_queued, queued);
    }
    /* 'sending' rows are the fanout's deliveries (jobs and parked), in
     * memory; the store does not index them (schema v9) */
    SET(o->m_sending, fanout_jobs(s->fanout));
    int64_t scheduled = 0;
    if (store_count_scheduled(s->store, &scheduled) == 0) {
        SET(o->m_scheduled, scheduled);
    }
    store_terminal_counts(s->store, on_state_count, o);
    SET(o->m_broker, *s->mqtt && mqtt_connected(*s->mqtt));
    SET(o->m_store, *s->store_ok);
    SET(o->m_draining, *s->draining);
}

static void get_metrics(void *arg, const struct httpd_req *req, struct httpd_resp *resp)
{
    (void)req;
    observe_t *o = arg;
    size_t len = 0;
    char *text = metrics_render(o->m, &len);
    if (!text) {
        resp->status = 500;
        httpd_resp_printf(resp, "metrics could not be rendered\n");
        return;
    }
    snprintf(resp->content_type, sizeof(resp->content_type), "text/plain; version=0.0.4");
    httpd_resp_append(resp, text, len);
    free(text);
}

static void get_health(void *arg, const struct httpd_req *req, struct httpd_resp *resp)
{
    (void)req;
    observe_t *o = arg;
    const struct observe_src *s = &o->src;
    bool broker = *s->mqtt && mqtt_connected(*s->mqtt);
    bool store = *s->store_ok;
    bool draining = *s->draining;
    bool ok = broker && store && !draining;
    resp->status = ok ? 200 : 503;
    snprintf(resp->content_type, sizeof(resp->content_type), "application/json");
    httpd_resp_printf(resp,
                      "{\"status\":\"%s\",\"broker\":\"%s\",\"store\":\"%s\",\"inflight\":%u,"
                      "\"providers\":[",
                      ok         ? "ok"
                      : draining ? "draining"
                                 : "unavailable",
                      broker ? "connected" : "disconnected", store ? "ok" : "failing",
                      dispatch_inflight(s->dispatch));
    struct dispatch_provider_info pi[MAX_PROVIDERS];
    size_t n = dispatch_providers(s->dispatch, pi, MAX_PROVIDERS);
    for (size_t i = 0; i < n && i < MAX_PROVIDERS; i++) {
        httpd_resp_printf(resp,
                          "%s{\"channel\":\"%s\",\"provider\":\"%s\",\"breaker\":\"%s\","
                          "\"inflight\":%u}",
                          i ? "," : "", pi[i].channel, pi[i].provider,
                          breaker_state_name(pi[i].state), pi[i].inflight);
    }
    httpd_resp_printf(resp, "]}\n");
}

observe_t *observe_create(metrics_t *m, httpd_t *httpd, const struct observe_src *src)
{
    observe_t *o = calloc(1, sizeof(*o));
    if (!o) {
        return NULL;
    }
    o->m = m;
    o->src = *src;
    static const char h_items[] = "Uplink items by what intake did with them";
    o->m_items[0] = counter(o, "tidings_hub_intake_items_total", h_items, "result=accepted");
    o->m_items[1] = counter(o, "tidings_hub_intake_items_total", h_items, "result=duplicate");
    o->m_items[2] = counter(o, "tidings_hub_intake_items_total", h_items, "result=delayed");
    o->m_batches = counter(o, "tidings_hub_intake_batches_total", "Uplink batches received", "");
    o->m_held = counter(o, "tidings_hub_intake_held_total",
                        "Uplink batches held back un-acked while deliveries were full "
                        "(backpressure: intake.hold)", "");
    o->m_held_bytes = gauge(o, "tidings_hub_intake_held_bytes",
                            "Bytes of uplink batches held back now", "");
    o->m_bad = counter(o, "tidings_hub_intake_bad_batches_total",
                       "Uplink batches whose envelope was refused", "");
    static const char h_depth[] = "Notifications in the store by work state";
    o->m_queued = gauge(o, "tidings_hub_queue_depth", h_depth, "state=queued");
    o->m_sending = gauge(o, "tidings_hub_queue_depth", h_depth, "state=sending");
    o->m_scheduled = gauge(o, "tidings_hub_queue_depth", h_depth, "state=scheduled");
    o->m_jobs = gauge(o, "tidings_hub_fanout_jobs", "Notifications in memory: being delivered, or parked", "");
    o->m_inflight =
        gauge(o, "tidings_hub_requests_inflight", "Provider requests in flight, all channels", "");
    o->m_retries =
        counter(o, "tidings_hub_fanout_retries_total", "Deliveries scheduled for a retry", "");
    o->m_backpressure =
        counter(o, "tidings_hub_fanout_backpressure_total",
                "Flushes stopped by a busy channel (rate, concurrency, window)", "");
    o->m_direct = counter(o, "tidings_hub_fanout_direct_total",
                          "Notifications handed from intake straight to the fanout, not "
                          "through the store's queue", "");
    o->m_parked = counter(o, "tidings_hub_fanout_parked_total",
                          "Of those, kept parsed in memory until a delivery slot freed", "");
    o->m_broker = gauge(o, "tidings_hub_broker_connected", "1 when connected to the broker", "");
    o->m_store = gauge(o, "tidings_hub_store_ok", "1 when the last commit succeeded", "");
    o->m_draining = gauge(o, "tidings_hub_draining", "1 while shutting down", "");
    if (metrics_on_collect(m, collect, o) < 0) {
        free(o);
        return NULL;
    }
    if (httpd && (httpd_route(httpd, "GET", "/metrics", get_metrics, o) < 0 ||
                  httpd_route(httpd, "GET", "/healthz", get_health, o) < 0)) {
        free(o);
        return NULL;
    }
    return o;
}

void observe_destroy(observe_t *o)
{
    free(o);
}
