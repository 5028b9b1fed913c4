/*
 * fcm.c - the FCM HTTP v1 channel: OAuth2 access token from a service
 * account, format (pure), send over hub/http, map google.rpc.Status answers.
 *
 * A send is formatted at once (the delivery's pointers are not ours to keep),
 * its body copied into a call, and then either dispatched or queued. A call
 * waits in the queue (FIFO, bounded by fcm.queue) while there is no usable
 * access token, while the project's rate bucket is empty, or while every
 * request slot is busy; drain() moves calls from the queue to the wire when
 * a token arrives, a bucket timer fires, or an answer frees a slot. drain()
 * is never called from inside send, so done callbacks never run there.
 *
 * Access token life: fetched on the first send (one request in flight at a
 * time), used until shortly before expires_in runs out, refreshed in the
 * background from fcm.token_margin before expiry. A failed fetch fails the
 * waiting calls RETRY and holds further fetches off with capped full-jitter
 * backoff; a 401 on a send forces one refresh for the token that got it (at
 * most one such refresh per UNAUTH_REFRESH_MIN_MS).
 */
#include "fcm.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <mbedtls/platform_util.h>

#include "backoff.h"
#include "error.h"
#include "jwt.h"
#include "log.h"

#define MOD "fcm"

#define OFF(f) offsetof(struct fcm_config, f), sizeof(((struct fcm_config *)0)->f)

static const struct config_entry fcm_config_table[] = {
    {"fcm.service_account_file", CONFIG_STRING, "", OFF(service_account_file),
     "Service-account key from the Firebase console (JSON with private_key, client_email)", NULL, 0,
     0},
    {"fcm.project_id", CONFIG_STRING, "", OFF(project_id),
     "Firebase project id (empty: project_id of the key)", NULL, 0, 0},
    {"fcm.send_url", CONFIG_STRING, "https://fcm.googleapis.com", OFF(send_url),
     "FCM base URL; sends go to <send_url>/v1/projects/<project>/messages:send", NULL, 0, 0},
    {"fcm.token_url", CONFIG_STRING, "", OFF(token_url),
     "OAuth2 token endpoint (empty: token_uri of the key, else " FCM_DEFAULT_TOKEN_URL ")", NULL, 0,
     0},
    {"fcm.ca_file", CONFIG_STRING, "", OFF(ca_file),
     "CA bundle to verify FCM and the token endpoint (empty: system CAs)", NULL, 0, 0},
    {"fcm.timeout", CONFIG_DURATION, "10s", OFF(timeout_ms),
     "Whole-request timeout for sends and token requests; a timed-out send is retried", NULL, 100,
     600000},
    {"fcm.connections", CONFIG_INT, "2", OFF(connections), "Connections per host", NULL, 1, 64},
    {"fcm.max_streams", CONFIG_INT, "100", OFF(max_streams),
     "Requests in flight per connection (HTTP/2 streams)", NULL, 1, 1000},
    {"fcm.token_margin", CONFIG_DURATION, "5m", OFF(token_margin_ms),
     "Refresh the access token this long before it expires (at most half its lifetime)", NULL, 0,
     1800000},
    {"fcm.rate", CONFIG_INT, "600000", OFF(rate),
     "Messages per minute for the project (FCM's default quota is 600000/min)", NULL, 1, 100000000},
    {"fcm.burst", CONFIG_INT, "0", OFF(burst),
     "Rate bucket size in messages (0: one second of fcm.rate)", NULL, 0, 100000000},
    {"fcm.queue", CONFIG_INT, "4096", OFF(queue),
     "Sends that may wait for an access token or the rate bucket; beyond, send is refused", NULL, 1,
     1000000},
    {"fcm.tenants_dir", CONFIG_STRING, "", OFF(tenants_dir),
     "Directory of more Firebase projects: each *.conf is one project in these fcm.* keys "
     "(its own service-account key, token, rate bucket); devices pick one by their app",
     NULL, 0, 0},
};

#define SA_FILE_MAX (64 * 1024) /* service-account keys are ~2.3 KB */
#define EXPIRY_SKEW_MS 10000        /* stop using a token this long before expiry */
#define UNAUTH_REFRESH_MIN_MS 30000 /* 401-driven refreshes at most this often */
#define FETCH_BACKOFF_BASE_MS 1000
#define FETCH_BACKOFF_CAP_MS 60000
#define EXPIRES_IN_DEFAULT_S 3600 /* when the endpoint leaves expires_in out */
#define EXPIRES_IN_MAX_S 86400
#define AUTH_PREFIX "Bearer "
#define GRANT_BODY_PREFIX                                                                          \
    "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion="
#define FCM_ERROR_TYPE "type.googleapis.com/google.firebase.fcm.v1.FcmError"
#define BAD_REQUEST_TYPE "type.googleapis.com/google.rpc.BadRequest"

static const char *const capture_headers[] = {"retry-after", NULL};

struct fcm;

enum call_state { CALL_QUEUED = 1, CALL_INFLIGHT, CALL_DEFERRED };

/* One accepted send, from send() until its done callback. */
struct fcm_call {
    struct channel_call base; /* first: the shared bookkeeping (its timer: CALL_DEFERRED) */
    struct fcm_call *qnext;   /* the wait queue, FIFO */
    struct fcm *f;
    enum call_state state;
    uint64_t token_gen; /* CALL_INFLIGHT: the access token it carried */
    uint64_t attempt;   /* the hub's attempt id: logs name it, never the token (PII) */
    size_t body_len;
    char body[]; /* the formatted JSON message */
};

struct fcm {
    struct fcm_config cfg;
    loop_t *loop;
    http_t *http;
    fcm_transport_fn transport;
    void *transport_arg;
    jwt_signer *signer;
    fcm_clock_fn clock;
    void *clock_arg;

    char project[128];
    char client_email[256];
    char token_url[256];
    char send_url_full[512];

    /* the access token */
    char access_token[FCM_ACCESS_TOKEN_MAX + 1];
    uint64_t token_gen; /* bumped per token received; 0 = never had one */
    int64_t token_fetched_ms, token_expires_ms, token_refresh_ms, token_usable_until_ms;
    bool fetching;
    int64_t fetch_not_before_ms;
    unsigned fetch_failures; /* in a row */
    int64_t last_unauth_refresh_ms;
    char token_error[CHANNEL_REASON_MAX];

    /* calls */
    struct channel_calls calls;
    struct fcm_call *qhead, *qtail;
    size_t nqueued;
    unsigned inflight, send_slots;

    struct fcm_bucket bucket;
    uint64_t wake_timer; /* the bucket (or a busy client) holds the queue */

    struct channel_request req; /* scratch; single-threaded */
    struct fcm_stats st;

    /* state transitions logged once, not per message */
    bool logged_token_outage, logged_config_answer, logged_third_party, logged_unauth_hold;
    bool logged_queue_full, logged_project_mismatch;
};

static int64_t now_ms(struct fcm *f)
{
    return f->clock(f->clock_arg);
}

static int transport_request(void *arg, const struct channel_request *req,
                             const struct http_req_opts *ro, http_done_cb done, void *ctx)
{
    return http_request(arg, req, ro, done, ctx);
}

/* --- small helpers ------------------------------------------------------ */

/* Project ids are 6..30 of [a-z0-9-]; domain-scoped ones add "domain:". */
static bool project_ok(const char *p)
{
    size_t n = 0;
    for (; p[n]; n++) {
        char c = p[n];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '.' || c == ':' || c == '_';
        if (!ok || n >= 100) {
            return false;
        }
    }
    return n > 0;
}

/* Registration tokens are base64url-like text with ':' (e.g. "dXJ...:APA91b...").
 * Anything else can never be valid and never needs JSON escaping. */
static bool reg_token_ok(const char *t)
{
    if (!t) {
        return false;
    }
    size_t n = 0;
    for (; t[n]; n++) {
        char c = t[n];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_' || c == ':' || c == '.' || c == '+' || c == '/' || c == '=';
        if (!ok || n >= FCM_TOKEN_MAX) {
            return false;
        }
    }
    return n > 0;
}



/* The access token goes in the request's own authorization field: Google's
 * tokens may be up to 2048 bytes, more than a header slot holds. */
static int set_auth(struct channel_request *req, const char *token)
{
    int n = snprintf(req->authorization, sizeof(req->authorization), AUTH_PREFIX "%s", token);
    if (n < 0 || (size_t)n >= sizeof(req->authorization)) {
        req->authorization[0] = '\0';
        return -ENOSPC;
    }
    return 0;
}


/* --- rate bucket -------------------------------------------------------- */

#define UNITS_PER_TOKEN 60000u /* ms per minute: refill is rate units per ms */

void fcm_bucket_init(struct fcm_bucket *b, uint64_t rate_per_min, uint64_t burst, int64_t now)
{
    b->rate_per_min = rate_per_min ? rate_per_min : 1;
    if (burst == 0) {
        burst = b->rate_per_min / 60;
    }
    if (burst == 0) {
        burst = 1;
    }
    if (burst > UINT64_MAX / UNITS_PER_TOKEN) {
        burst = UINT64_MAX / UNITS_PER_TOKEN;
    }
    b->cap_units = burst * UNITS_PER_TOKEN;
    b->level_units = b->cap_units;
    b->last_ms = now;
}

uint64_t fcm_bucket_take(struct fcm_bucket *b, int64_t now)
{
    if (now > b->last_ms) {
        /* Refill, bounded before multiplying so nothing overflows. */
        uint64_t dt = (uint64_t)(now - b->last_ms);
        uint64_t full_after = b->cap_units / b->rate_per_min + 1;
        uint64_t add = dt >= full_after ? b->cap_units : dt * b->rate_per_min;
        b->level_units = add >= b->cap_units - b->level_units ? b->cap_units : b->level_units + add;
    }
    /* A clock that went back refills nothing and is not held against us. */
    b->last_ms = now;
    if (b->level_units >= UNITS_PER_TOKEN) {
        b->level_units -= UNITS_PER_TOKEN;
        return 0;
    }
    uint64_t missing = UNITS_PER_TOKEN - b->level_units;
    return (missing + b->rate_per_min - 1) / b->rate_per_min;
}

void fcm_bucket_refund(struct fcm_bucket *b)
{
    b->level_units = b->cap_units - b->level_units < UNITS_PER_TOKEN
                         ? b->cap_units
                         : b->level_units + UNITS_PER_TOKEN;
}

/* --- answers ------------------------------------------------------------ */

uint64_t fcm_parse_retry_after(const char *v, int64_t now)
{
    return channel_retry_after_ms(v, now);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* What a google.rpc.Status error body says. */
struct rpc_error {
    char status[40];     /* "NOT_FOUND" */
    char error_code[40]; /* FcmError.errorCode: "UNREGISTERED" */
    char message[CHANNEL_REASON_MAX];
    bool token_field; /* a BadRequest field violation names message.token */
};

static void copy_str(char *dst, size_t n, const cJSON *j)
{
    if (cJSON_IsString(j) && j->valuestring) {
        snprintf(dst, n, "%s", j->valuestring);
    }
}

static void parse_rpc_error(const char *body, size_t len, struct rpc_error *e)
{
    memset(e, 0, sizeof(*e));
    cJSON *root = body && len > 0 ? cJSON_ParseWithLength(body, len) : NULL;
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(root, "error");
    if (cJSON_IsObject(err)) {
        copy_str(e->status, sizeof(e->status), cJSON_GetObjectItemCaseSensitive(err, "status"));
        copy_str(e->message, sizeof(e->message), cJSON_GetObjectItemCaseSensitive(err, "message"));
        const cJSON *det = NULL;
        cJSON_ArrayForEach(det, cJSON_GetObjectItemCaseSensitive(err, "details"))
        {
            const cJSON *type = cJSON_GetObjectItemCaseSensitive(det, "@type");
            if (!cJSON_IsString(type) || !type->valuestring) {
                continue;
            }
            if (ends_with(type->valuestring, FCM_ERROR_TYPE) && !e->error_code[0]) {
                copy_str(e->error_code, sizeof(e->error_code),
                         cJSON_GetObjectItemCaseSensitive(det, "errorCode"));
            } else if (ends_with(type->valuestring, BAD_REQUEST_TYPE)) {
                const cJSON *fv = NULL;
                cJSON_ArrayForEach(fv, cJSON_GetObjectItemCaseSensitive(det, "fieldViolations"))
                {
                    const cJSON *field = cJSON_GetObjectItemCaseSensitive(fv, "field");
                    if (cJSON_IsString(field) && field->valuestring &&
                        strcmp(field->valuestring, "message.token") == 0) {
                        e->token_field = true;
                    }
                }
            }
        }
    }
    cJSON_Delete(root);
}

/* "projects/p/messages/0:1500415314455276%31bd1c9631bd1c96" -> provider_id:
 * the whole name when it fits, else the part after "/messages/" (the
 * project is this channel's, so nothing is lost). */
static void set_provider_id(const char *body, size_t len, struct channel_outcome *out)
{
    cJSON *root = body && len > 0 ? cJSON_ParseWithLength(body, len) : NULL;
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(root, "name");
    if (cJSON_IsString(name) && name->valuestring) {
        const char *v = name->valuestring;
        if (strlen(v) >= sizeof(out->provider_id)) {
            const char *m = strstr(v, "/messages/");
            v = m ? m + 10 : v;
        }
        snprintf(out->provider_id, sizeof(out->provider_id), "%s", v);
    }
    cJSON_Delete(root);
}

void fcm_map_answer(int status, const char *body, size_t body_len, const char *retry_after,
                    int64_t now, struct channel_outcome *out)
{
    memset(out, 0, sizeof(*out));
    out->status = status;
    if (status == 200) {
        out->result = CHANNEL_OK;
        set_provider_id(body, body_len, out);
        return;
    }

    struct rpc_error e;
    parse_rpc_error(body, body_len, &e);
    const char *code = e.error_code[0] ? e.error_code : e.status;
    if (code[0]) {
        snprintf(out->reason, sizeof(out->reason), "%s", code);
    } else {
        snprintf(out->reason, sizeof(out->reason), "HTTP %d", status);
    }

    /* FCM's errorCode decides where there is one: a bare NOT_FOUND (a wrong
     * URL or project) must never disable a device the way UNREGISTERED
     * does. */
    if (strcmp(e.error_code, "UNREGISTERED") == 0) {
        out->result = CHANNEL_DROP;
        out->device_action = CHANNEL_DEVICE_DISABLE;
        return;
    }
    if (strcmp(e.error_code, "SENDER_ID_MISMATCH") == 0) {
        /* The token belongs to another project: a human must look. */
        out->result = CHANNEL_DROP;
        out->device_action = CHANNEL_DEVICE_FLAG;
        return;
    }
    if (strcmp(e.error_code, "THIRD_PARTY_AUTH_ERROR") == 0) {
        /* Google could not reach APNs / web push with the project's
         * credentials: no refresh of ours helps. */
        out->result = CHANNEL_DROP;
        return;
    }
    if (strcmp(e.error_code, "QUOTA_EXCEEDED") == 0 || strcmp(e.error_code, "UNAVAILABLE") == 0 ||
        strcmp(e.error_code, "INTERNAL") == 0) {
        out->result = CHANNEL_RETRY;
        out->retry_after_ms = fcm_parse_retry_after(retry_after, now);
        return;
    }
    if (strcmp(e.error_code, "INVALID_ARGUMENT") == 0 || status == 400) {
        out->result = CHANNEL_DROP;
        if (e.message[0]) {
            snprintf(out->reason, sizeof(out->reason), "%s", e.message);
        }
        if (e.token_field) {
            /* "The registration token is not a valid FCM registration
             * token": like APNs' BadDeviceToken, flagged, not deleted. */
            out->device_action = CHANNEL_DEVICE_FLAG;
        }
        return;
    }
    if (status == 401) {
        /* Our access token was refused (expired, revoked): the caller
         * refreshes it; the delivery is retried with the new one. */
        out->result = CHANNEL_RETRY;
        snprintf(out->reason, sizeof(out->reason), "UNAUTHENTICATED");
        return;
    }
    if (status == 429 || status >= 500) {
        out->result = CHANNEL_RETRY;
        out->retry_after_ms = fcm_parse_retry_after(retry_after, now);
        return;
    }
    if (status >= 400) {
        out->result = CHANNEL_DROP; /* 403 PERMISSION_DENIED, 404 NOT_FOUND, 413 ... */
        return;
    }
    out->result = CHANNEL_RETRY; /* 1xx/2xx/3xx other than 200: not an FCM answer */
}

/* --- format ---------------------------------------------------------------- */

/* Keys FCM refuses in data ("Invalid data payload key"); ours wins too. */
static bool data_key_reserved(const char *k)
{
    return strcmp(k, "from") == 0 || strcmp(k, "notification") == 0 ||
           strcmp(k, "message_type") == 0 || strncasecmp(k, "google", 6) == 0 ||
           strncasecmp(k, "gcm", 3) == 0 || strcmp(k, "tidings_id") == 0;
}

/* Seconds of ttl left at now_ms: the ttl counts from acceptance, so a
 * notification that waited gets less. Rounded up; 0 when already past (FCM:
 * deliver now or never); -1 for no ttl. */
static int64_t ttl_left_s(const struct notification *n, int64_t now)
{
    int64_t exp = proto_expires_ms(n, now);
    if (exp <= 0) {
        return -1;
    }
    int64_t left = exp - now;
    if (left <= 0) {
        return 0;
    }
    left = (left + 999) / 1000;
    return left > PROTO_TTL_MAX ? PROTO_TTL_MAX : left;
}

/* Build the JSON message into req->body. 0, TDG_ETOOBIG or -ENOMEM. */
static int build_body(const struct notification *n, const char *token, int64_t now,
                      struct channel_request *req)
{
    int rc = -ENOMEM;
    size_t payload = 0; /* FCM's count: notification text + data keys and values */
    cJSON *root = cJSON_CreateObject();
    cJSON *msg = root ? cJSON_AddObjectToObject(root, "message") : NULL;
    if (!msg || !cJSON_AddStringToObject(msg, "token", token)) {
        goto out;
    }
    if (n->title || n->body) {
        cJSON *no = cJSON_AddObjectToObject(msg, "notification");
        if (!no || (n->title && !cJSON_AddStringToObject(no, "title", n->title)) ||
            (n->body && !cJSON_AddStringToObject(no, "body", n->body))) {
            goto out;
        }
        payload += (n->title ? strlen(n->title) : 0) + (n->body ? strlen(n->body) : 0);
    }
    cJSON *data = cJSON_CreateObject();
    if (!data) {
        goto out;
    }
    if (!cJSON_AddItemToObject(msg, "data", data)) {
        cJSON_Delete(data);
        goto out;
    }
    const cJSON *item = NULL;
    if (cJSON_IsObject(n->data)) {
        cJSON_ArrayForEach(item, n->data)
        {
            if (!item->string || data_key_reserved(item->string)) {
                continue;
            }
            /* FCM data values are strings: a string goes as it is, any
             * other value as its compact JSON text (12.5 -> "12.5", true ->
             * "true", {"a":1} -> "{\"a\":1}"), so nothing is lost. */
            cJSON *s;
            if (cJSON_IsString(item)) {
                s = cJSON_CreateString(item->valuestring);
            } else {
                char *text = cJSON_PrintUnformatted(item);
                s = text ? cJSON_CreateString(text) : NULL;
                cJSON_free(text);
            }
            if (!s) {
                goto out;
            }
            payload += strlen(item->string) + strlen(s->valuestring);
            if (!cJSON_AddItemToObject(data, item->string, s)) {
                cJSON_Delete(s);
                goto out;
            }
        }
    }
    if (n->id) {
        if (!cJSON_AddStringToObject(data, "tidings_id", n->id)) {
            goto out;
        }
        payload += strlen("tidings_id") + strlen(n->id);
    }
    if (!data->child) {
        cJSON_DeleteItemFromObject(msg, "data");
    }
    cJSON *android = cJSON_AddObjectToObject(msg, "android");
    if (!android || !cJSON_AddStringToObject(android, "priority",
                                             n->priority >= PROTO_PRIO_HIGH ? "HIGH" : "NORMAL")) {
        goto out;
    }
    int64_t ttl_s = ttl_left_s(n, now);
    if (ttl_s >= 0) {
        char ttl[32];
        snprintf(ttl, sizeof(ttl), "%" PRId64 "s", ttl_s);
        if (!cJSON_AddStringToObject(android, "ttl", ttl)) {
            goto out;
        }
    }
    if (n->collapse_key && !cJSON_AddStringToObject(android, "collapse_key", n->collapse_key)) {
        goto out;
    }
    if (payload > FCM_PAYLOAD_MAX) {
        rc = TDG_ETOOBIG;
        goto out;
    }
    /* Printed straight into the request; a message that does not fit the
     * buffer is too large whatever its payload count says. */
    if (!cJSON_PrintPreallocated(root, req->body, (int)sizeof(req->body), 0)) {
        rc = TDG_ETOOBIG;
        goto out;
    }
    req->body_len = strlen(req->body);
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

static int fcm_format(void *state, const struct channel_delivery *d, struct channel_request *req,
                      struct channel_outcome *out)
{
    struct fcm *f = state;
    const struct notification *n = d->n;
    const struct channel_device *dev = d->dev;
    memset(out, 0, sizeof(*out));
    channel_request_reset(req);

    if (!reg_token_ok(dev->token)) {
        /* Cannot be a registration token; flagged like FCM's own
         * INVALID_ARGUMENT on message.token. */
        return channel_drop(out, "BadRegistrationToken", CHANNEL_DEVICE_FLAG, TDG_EINVAL_INPUT);
    }
    if (dev->app && dev->app[0] && strcmp(dev->app, f->project) != 0) {
        /* The device belongs to another Firebase project: these
         * credentials would only earn SENDER_ID_MISMATCH. */
        if (!f->logged_project_mismatch) {
            LOG_ERROR(MOD, "device of project %.64s sent to the channel of project %s", dev->app,
                      f->project);
            f->logged_project_mismatch = true;
        }
        return channel_drop(out, "ProjectMismatch", CHANNEL_DEVICE_NONE, TDG_ECONFIG);
    }
    snprintf(req->url, sizeof(req->url), "%s", f->send_url_full);
    snprintf(req->method, sizeof(req->method), "POST");
    int rc = 0;
    if (f->access_token[0]) {
        rc |= set_auth(req, f->access_token);
    }
    rc |= channel_add_header(req, "content-type: application/json");
    if (rc != 0) {
        return channel_drop(out, "HeaderTooLong", CHANNEL_DEVICE_NONE, TDG_EINVAL_INPUT);
    }
    rc = build_body(n, dev->token, d->now_ms, req);
    if (rc == TDG_ETOOBIG) {
        req->body_len = 0;
        req->body[0] = '\0';
        return channel_drop(out, "PayloadTooLarge", CHANNEL_DEVICE_NONE, rc);
    }
    if (rc < 0) {
        /* Out of memory is not the notification's fault: retry later. */
        out->result = CHANNEL_RETRY;
        snprintf(out->reason, sizeof(out->reason), "out of memory");
        return rc;
    }
    return 0;
}

/* --- calls ------------------------------------------------------------------ */

static void enqueue(struct fcm *f, struct fcm_call *c)
{
    c->state = CALL_QUEUED;
    c->qnext = NULL;
    if (f->qtail) {
        f->qtail->qnext = c;
    } else {
        f->qhead = c;
    }
    f->qtail = c;
    f->nqueued++;
}

static struct fcm_call *dequeue(struct fcm *f)
{
    struct fcm_call *c = f->qhead;
    if (c) {
        f->qhead = c->qnext;
        if (!f->qhead) {
            f->qtail = NULL;
        }
        c->qnext = NULL;
        f->nqueued--;
    }
    return c;
}

/* Report c's outcome and free it. Never called from inside send. */
static void finish(struct fcm_call *c, const struct channel_outcome *o)
{
    LOG_DEBUG(MOD, "attempt=%" PRIu64 " status=%d result=%s reason=%s", c->attempt, o->status,
              channel_result_name(o->result), o->reason);
    channel_call_finish(&c->base, o);
}

/* Fail every queued call RETRY. The queue is detached first: a done callback
 * may send again. */
static void fail_queue(struct fcm *f, const char *reason, uint64_t after_ms)
{
    struct fcm_call *c = f->qhead;
    f->qhead = f->qtail = NULL;
    f->nqueued = 0;
    struct channel_outcome o;
    while (c) {
        struct fcm_call *next = c->qnext;
        channel_retry(&o, after_ms, "%s", reason);
        finish(c, &o);
        c = next;
    }
}

/* Report o for c on the next loop turn (send must not call done), and
 * accept c. 0 or -ENOMEM. */
static int defer(struct fcm_call *c, const struct channel_outcome *o)
{
    c->state = CALL_DEFERRED;
    return channel_call_defer(&c->base, o);
}

/* --- access token ------------------------------------------------------------ */

static bool token_usable(const struct fcm *f, int64_t now)
{
    return f->access_token[0] && now < f->token_usable_until_ms;
}

static void drain(struct fcm *f);

/* Forget the token that was refused or failed; key material-grade care. */
static void token_forget(struct fcm *f)
{
    mbedtls_platform_zeroize(f->access_token, sizeof(f->access_token));
    f->token_usable_until_ms = 0;
}

/* A fetch failed (or could not start): hold further fetches off with
 * capped full jitter and keep the reason for the RETRY outcomes. Returns
 * the hold-off in ms. */
static uint64_t fetch_backoff(struct fcm *f, int64_t now, const char *why)
{
    f->st.token_failures++;
    uint64_t delay = backoff_delay(f->fetch_failures, FETCH_BACKOFF_BASE_MS, FETCH_BACKOFF_CAP_MS);
    f->fetch_failures++;
    f->fetch_not_before_ms = now + (int64_t)delay;
    snprintf(f->token_error, sizeof(f->token_error), "token endpoint: %s", why);
    if (!f->logged_token_outage) {
        LOG_ERROR(MOD,
                  "no access token from %s: %s (retrying with backoff; logged once until "
                  "it recovers)",
                  f->token_url, why);
        f->logged_token_outage = true;
    } else {
        LOG_DEBUG(MOD, "token fetch failed again failures=%u: %s", f->fetch_failures, why);
    }
    return delay;
}

/* The answer to the token request brought no token: fail the queue unless
 * the old token still works (a background refresh that failed). */
static void token_failed(struct fcm *f, int64_t now, const char *why)
{
    uint64_t delay = fetch_backoff(f, now, why);
    if (token_usable(f, now)) {
        drain(f);
        return;
    }
    fail_queue(f, f->token_error, delay);
}

static bool token_type_ok(const cJSON *tt)
{
    return !tt ||
           (cJSON_IsString(tt) && tt->valuestring && strcasecmp(tt->valuestring, "Bearer") == 0);
}

static void on_token(void *ctx, const struct http_response *resp)
{
    struct fcm *f = ctx;
    int64_t now = now_ms(f);
    char why[CHANNEL_REASON_MAX];
    f->fetching = false;

    if (resp->error < 0) {
        snprintf(why, sizeof(why), "%s",
                 resp->error_text && resp->error_text[0] ? resp->error_text
                                                         : tdg_strerror(resp->error));
        token_failed(f, now, why);
        return;
    }
    cJSON *j = resp->body_len ? cJSON_ParseWithLength(resp->body, resp->body_len) : NULL;
    if (resp->status != 200) {
        /* OAuth2 errors: {"error":"invalid_grant","error_description":".."} */
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
        const cJSON *ed = cJSON_GetObjectItemCaseSensitive(j, "error_description");
        snprintf(why, sizeof(why), "HTTP %d %s%s%s", resp->status,
                 cJSON_IsString(e) ? e->valuestring : "", cJSON_IsString(ed) ? ": " : "",
                 cJSON_IsString(ed) ? ed->valuestring : "");
        cJSON_Delete(j);
        token_failed(f, now, why);
        return;
    }
    const cJSON *at = cJSON_GetObjectItemCaseSensitive(j, "access_token");
    const cJSON *ei = cJSON_GetObjectItemCaseSensitive(j, "expires_in");
    const cJSON *tt = cJSON_GetObjectItemCaseSensitive(j, "token_type");
    const char *problem = NULL;
    if (!cJSON_IsString(at) || !at->valuestring || !at->valuestring[0]) {
        problem = "answer without access_token";
    } else if (strlen(at->valuestring) > FCM_ACCESS_TOKEN_MAX) {
        problem = "access_token longer than a request header slot holds";
    } else if (!channel_header_value_ok(at->valuestring, FCM_ACCESS_TOKEN_MAX)) {
        problem = "access_token with control characters";
    } else if (ei && (!cJSON_IsNumber(ei) || ei->valuedouble < 1)) {
        problem = "bad expires_in";
    } else if (!token_type_ok(tt)) {
        problem = "token_type is not Bearer";
    }
    if (problem) {
        cJSON_Delete(j);
        token_failed(f, now, problem);
        return;
    }
    int64_t life_s = EXPIRES_IN_DEFAULT_S;
    if (ei) {
        life_s = ei->valuedouble > EXPIRES_IN_MAX_S ? EXPIRES_IN_MAX_S : (int64_t)ei->valuedouble;
    }
    int64_t life = life_s * 1000;
    token_forget(f);
    memcpy(f->access_token, at->valuestring, strlen(at->valuestring) + 1);
    mbedtls_platform_zeroize(at->valuestring, strlen(at->valuestring));
    cJSON_Delete(j);

    /* A margin of at least half the lifetime would refresh on every send:
     * cap it, so a short-lived token still lives a while. */
    int64_t margin = (int64_t)f->cfg.token_margin_ms;
    if (margin > life / 2) {
        margin = life / 2;
    }
    int64_t skew = EXPIRY_SKEW_MS < life / 4 ? EXPIRY_SKEW_MS : life / 4;
    f->token_gen++;
    f->token_fetched_ms = now;
    f->token_expires_ms = now + life;
    f->token_refresh_ms = now + life - margin;
    f->token_usable_until_ms = now + life - skew;
    if (f->fetch_failures > 0) {
        LOG_INFO(MOD, "access token obtained after %u failed attempts", f->fetch_failures);
    } else {
        LOG_INFO(MOD, "access token obtained expires_in_s=%" PRId64, life_s);
    }
    f->fetch_failures = 0;
    f->fetch_not_before_ms = 0;
    f->logged_token_outage = false;
    drain(f);
}

/* Start the one token request: an RS256 assertion posted form-encoded.
 * 0 (or already fetching), or a negative error (then nothing is in flight). */
static int token_fetch(struct fcm *f, int64_t now)
{
    if (f->fetching) {
        return 0;
    }
    char claims[JWT_CLAIMS_MAX];
    char assertion[JWT_TOKEN_MAX];
    int64_t iat = now / 1000;
    cJSON *c = cJSON_CreateObject();
    int rc = -ENOMEM;
    if (!c || !cJSON_AddStringToObject(c, "iss", f->client_email) ||
        !cJSON_AddStringToObject(c, "scope", FCM_SCOPE) ||
        !cJSON_AddStringToObject(c, "aud", f->token_url) ||
        !cJSON_AddNumberToObject(c, "iat", (double)iat) ||
        !cJSON_AddNumberToObject(c, "exp", (double)(iat + FCM_ASSERTION_LIFETIME_S))) {
        cJSON_Delete(c);
        return rc;
    }
    bool printed = cJSON_PrintPreallocated(c, claims, (int)sizeof(claims), 0);
    cJSON_Delete(c);
    if (!printed) {
        return -ENOSPC;
    }
    int n = jwt_rs256(f->signer, claims, strlen(claims), assertion, sizeof(assertion));
    if (n < 0) {
        return n;
    }
    struct channel_request *r = &f->req;
    r->nheaders = 0;
    r->authorization[0] = '\0';
    snprintf(r->url, sizeof(r->url), "%s", f->token_url);
    snprintf(r->method, sizeof(r->method), "POST");
    rc = channel_add_header(r, "content-type: application/x-www-form-urlencoded");
    rc |= channel_add_header(r, "accept: application/json");
    int bl = snprintf(r->body, sizeof(r->body), "%s%s", GRANT_BODY_PREFIX, assertion);
    mbedtls_platform_zeroize(assertion, sizeof(assertion));
    if (rc != 0 || bl < 0 || (size_t)bl >= sizeof(r->body)) {
        mbedtls_platform_zeroize(r->body, sizeof(r->body));
        return -ENOSPC;
    }
    r->body_len = (size_t)bl;
    struct http_req_opts ro = {.require_h2 = false, .timeout_ms = f->cfg.timeout_ms};
    rc = f->transport(f->transport_arg, r, &ro, on_token, f);
    /* The client copied the body: the assertion is a credential for an
     * hour, so no copy of ours outlives this call. */
    mbedtls_platform_zeroize(r->body, r->body_len);
    r->body_len = 0;
    if (rc < 0) {
        return rc;
    }
    f->fetching = true;
    f->st.token_fetches++;
    LOG_DEBUG(MOD, "token request started fetches=%" PRIu64, f->st.token_fetches);
    return 0;
}

/* Make sure a token is on its way when the cached one is missing or due for
 * refresh, unless a failed fetch asked us to hold off. A failure to even
 * start the request counts as a failed fetch. */
static void token_maintain(struct fcm *f, int64_t now)
{
    if (f->fetching || now < f->fetch_not_before_ms) {
        return;
    }
    /* A clock stepped back by more than a minute says nothing about how
     * long Google still honours the token: refresh in the background. */
    bool clock_back = f->token_gen && now < f->token_fetched_ms - 60000;
    if (token_usable(f, now) && now < f->token_refresh_ms && !clock_back) {
        return;
    }
    int rc = token_fetch(f, now);
    if (rc < 0) {
        /* Counted as a failed fetch; the callers fail or defer the sends. */
        char why[CHANNEL_REASON_MAX];
        snprintf(why, sizeof(why), "cannot start token request: %s", tdg_strerror(rc));
        fetch_backoff(f, now, why);
    }
}

/* --- sending ----------------------------------------------------------------- */

static void on_answer(void *ctx, const struct http_response *resp);

/* Put c on the wire with the current token. 0 or the transport's error. */
static int dispatch(struct fcm *f, struct fcm_call *c)
{
    struct channel_request *r = &f->req;
    memcpy(r->url, f->send_url_full, sizeof(r->url));
    snprintf(r->method, sizeof(r->method), "POST");
    r->nheaders = 0;
    r->authorization[0] = '\0';
    int rc = set_auth(r, f->access_token);
    rc |= channel_add_header(r, "content-type: application/json");
    if (rc != 0) {
        return -ENOSPC; /* cannot happen: the token was sized for the slot */
    }
    memcpy(r->body, c->body, c->body_len);
    r->body_len = c->body_len;
    struct http_req_opts ro = {.require_h2 = false, .capture = capture_headers};
    rc = f->transport(f->transport_arg, r, &ro, on_answer, c);
    if (rc < 0) {
        return rc;
    }
    c->state = CALL_INFLIGHT;
    c->token_gen = f->token_gen;
    f->inflight++;
    return 0;
}

static void on_wake(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    struct fcm *f = arg;
    f->wake_timer = 0;
    drain(f);
}

static void wake_in(struct fcm *f, uint64_t ms)
{
    if (!f->wake_timer && f->loop) {
        f->wake_timer = loop_timer_add(f->loop, ms, on_wake, f);
    }
}

/* Move queued calls to the wire while a token, a bucket token and a request
 * slot are at hand. Runs from answers and timers, never inside send. */
static void drain(struct fcm *f)
{
    while (f->qhead) {
        int64_t now = now_ms(f);
        token_maintain(f, now);
        if (!token_usable(f, now)) {
            if (!f->fetching) {
                /* Held off by a failed fetch: nothing will come soon. */
                int64_t wait = f->fetch_not_before_ms - now;
                fail_queue(f, f->token_error[0] ? f->token_error : "no access token",
                           wait > 0 ? (uint64_t)wait : 0);
            }
            return; /* on_token drains */
        }
        if (f->inflight >= f->send_slots) {
            return; /* an answer drains */
        }
        uint64_t wait = fcm_bucket_take(&f->bucket, now);
        if (wait > 0) {
            f->st.rate_waits++;
            wake_in(f, wait);
            return;
        }
        struct fcm_call *c = dequeue(f);
        int rc = dispatch(f, c);
        if (rc == -EBUSY) {
            /* The client is full (a slot held by the token request): put it
             * back in front and look again shortly. */
            fcm_bucket_refund(&f->bucket);
            c->qnext = f->qhead;
            f->qhead = c;
            if (!f->qtail) {
                f->qtail = c;
            }
            f->nqueued++;
            wake_in(f, 10);
            return;
        }
        if (rc < 0) {
            fcm_bucket_refund(&f->bucket);
            struct channel_outcome o;
            char why[CHANNEL_REASON_MAX];
            snprintf(why, sizeof(why), "send: %s", tdg_strerror(rc));
            channel_retry(&o, 0, "%s", why);
            finish(c, &o);
        }
    }
}

static void on_answer(void *ctx, const struct http_response *resp)
{
    struct fcm_call *c = ctx;
    struct fcm *f = c->f;
    struct channel_outcome o;
    int64_t now = now_ms(f);
    f->inflight--;

    if (resp->error < 0) {
        /* No (complete) answer: refused, reset, GOAWAY, timeout. It may or
         * may not have reached Google; retry (at least once). */
        channel_no_answer(&o, resp);
        finish(c, &o);
        drain(f);
        return;
    }
    fcm_map_answer(resp->status, resp->body, resp->body_len,
                   http_response_header(resp, "retry-after"), now, &o);

    if (resp->status == 401 && o.result == CHANNEL_RETRY) {
        /* The access token was refused. Refresh once for that token; a
         * burst of 401s for it, or for the next one within
         * UNAUTH_REFRESH_MIN_MS, asks for nothing more. */
        bool current = c->token_gen == f->token_gen && f->access_token[0];
        bool recent =
            f->last_unauth_refresh_ms && now - f->last_unauth_refresh_ms < UNAUTH_REFRESH_MIN_MS;
        if (current && !recent) {
            LOG_WARN(MOD, "access token refused (401); fetching a new one");
            token_forget(f);
            f->last_unauth_refresh_ms = now;
            f->fetch_not_before_ms = 0;
            f->st.token_unauth_refreshes++;
            f->logged_unauth_hold = false;
            token_maintain(f, now);
        } else if (current && !f->logged_unauth_hold) {
            LOG_WARN(MOD,
                     "a fresh access token was refused too; next refresh in %ds at the "
                     "earliest (check the service account's roles and this host's clock)",
                     UNAUTH_REFRESH_MIN_MS / 1000);
            f->logged_unauth_hold = true;
        }
    } else if ((resp->status == 403 || resp->status == 404) && o.device_action == 0 &&
               !f->logged_config_answer) {
        LOG_ERROR(MOD,
                  "FCM answered %d %s for project %s (check fcm.project_id, fcm.send_url "
                  "and the service account's roles)",
                  resp->status, o.reason, f->project);
        f->logged_config_answer = true;
    } else if (strcmp(o.reason, "THIRD_PARTY_AUTH_ERROR") == 0 && !f->logged_third_party) {
        LOG_ERROR(MOD,
                  "THIRD_PARTY_AUTH_ERROR: the APNs key or web push credentials in "
                  "project %s are missing or invalid",
                  f->project);
        f->logged_third_party = true;
    } else if (resp->status == 200) {
        f->logged_config_answer = false;
        f->logged_third_party = false;
    }
    finish(c, &o);
    drain(f);
}

static int fcm_send(void *state, const struct channel_delivery *d, channel_done_cb done, void *ctx)
{
    struct fcm *f = state;
    if (!f->loop || (!f->http && f->transport == transport_request)) {
        return -ENOTCONN; /* created without a loop: format only */
    }
    struct channel_outcome o;
    int rc = fcm_format(f, d, &f->req, &o);
    size_t blen = rc < 0 ? 0 : f->req.body_len;
    struct fcm_call *c = malloc(sizeof(*c) + blen);
    if (!c) {
        return -ENOMEM;
    }
    memset(c, 0, sizeof(*c));
    channel_call_init(&f->calls, &c->base, done, ctx);
    c->f = f;
    c->body_len = blen;
    memcpy(c->body, f->req.body, blen);
    c->attempt = d->attempt_id;

    if (rc < 0) {
        /* Known now, reported on the next loop turn. */
        if (defer(c, &o) < 0) {
            free(c);
            return -ENOMEM;
        }
        return 0;
    }

    int64_t now = now_ms(f);
    token_maintain(f, now);
    if (!token_usable(f, now) && !f->fetching) {
        /* The token endpoint failed a moment ago and we are holding off. */
        int64_t wait = f->fetch_not_before_ms - now;
        channel_retry(&o, wait > 0 ? (uint64_t)wait : 0, "%s",
                      f->token_error[0] ? f->token_error : "no access token");
        if (defer(c, &o) < 0) {
            free(c);
            return -ENOMEM;
        }
        return 0;
    }
    bool wait_bucket = false;
    bool go = token_usable(f, now) && !f->qhead && f->inflight < f->send_slots;
    if (go) {
        uint64_t wait = fcm_bucket_take(&f->bucket, now);
        if (wait > 0) {
            f->st.rate_waits++;
            wait_bucket = true;
            go = false;
            wake_in(f, wait);
        }
    }
    if (!go) {
        if (f->nqueued >= (size_t)f->cfg.queue) {
            if (!f->logged_queue_full) {
                LOG_WARN(MOD, "send queue full queued=%zu (waiting for %s); refusing sends",
                         f->nqueued, wait_bucket ? "the rate bucket" : "an access token or a slot");
                f->logged_queue_full = true;
            }
            free(c);
            return -EBUSY;
        }
        enqueue(f, c);
        channel_call_link(&c->base);
        return 0;
    }
    f->logged_queue_full = false;
    rc = dispatch(f, c);
    if (rc < 0) {
        fcm_bucket_refund(&f->bucket);
        free(c);
        return rc;
    }
    channel_call_link(&c->base);
    return 0;
}

/* --- lifecycle ------------------------------------------------------------------ */

static void tenant_destroy(void *state)
{
    struct fcm *f = state;
    if (!f) {
        return;
    }
    http_destroy(f->http); /* aborts requests; their callbacks never run */
    channel_calls_abort(&f->calls);
    if (f->wake_timer) {
        loop_timer_cancel(f->loop, f->wake_timer);
    }
    jwt_signer_destroy(f->signer);
    mbedtls_platform_zeroize(f, sizeof(*f));
    free(f);
}

/* Read the whole key file (bounded). Returns a NUL-terminated heap buffer
 * the caller zeroizes and frees, or NULL with err set. */
static char *read_key_file(const char *path, size_t *len, char *err, size_t errlen)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        snprintf(err, errlen, "fcm.service_account_file: %s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(SA_FILE_MAX + 1);
    size_t n = buf ? fread(buf, 1, SA_FILE_MAX + 1, fp) : 0;
    bool bad = ferror(fp) != 0;
    fclose(fp);
    if (!buf || bad || n > SA_FILE_MAX) {
        snprintf(err, errlen, "fcm.service_account_file: %s: %s", path,
                 !buf  ? "out of memory"
                 : bad ? "read error"
                       : "larger than 64 KiB");
        if (buf) {
            mbedtls_platform_zeroize(buf, n > SA_FILE_MAX ? SA_FILE_MAX + 1 : n);
        }
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* Take what the channel needs from a service-account JSON key. */
static int load_service_account(struct fcm *f, char *err, size_t errlen)
{
    size_t len = 0;
    char *text = read_key_file(f->cfg.service_account_file, &len, err, errlen);
    if (!text) {
        return TDG_ECONFIG;
    }
    int rc = TDG_ECONFIG;
    cJSON *j = cJSON_ParseWithLength(text, len);
    mbedtls_platform_zeroize(text, len);
    free(text);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(j, "type");
    const cJSON *pk = cJSON_GetObjectItemCaseSensitive(j, "private_key");
    const cJSON *email = cJSON_GetObjectItemCaseSensitive(j, "client_email");
    const cJSON *proj = cJSON_GetObjectItemCaseSensitive(j, "project_id");
    const cJSON *turi = cJSON_GetObjectItemCaseSensitive(j, "token_uri");
    char why[CONFIG_ERR_MAX];

    if (!cJSON_IsObject(j)) {
        snprintf(err, errlen, "fcm.service_account_file: not JSON");
        goto out;
    }
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "service_account") != 0) {
        /* The usual mix-up: google-services.json is the app's config. */
        snprintf(err, errlen,
                 "fcm.service_account_file: not a service-account key (\"type\" "
                 "must be \"service_account\"; google-services.json is not a key)");
        goto out;
    }
    if (!cJSON_IsString(pk) || !pk->valuestring[0]) {
        snprintf(err, errlen, "fcm.service_account_file: no private_key");
        goto out;
    }
    if (!cJSON_IsString(email) || !strchr(email->valuestring, '@') ||
        strlen(email->valuestring) >= sizeof(f->client_email)) {
        snprintf(err, errlen, "fcm.service_account_file: no usable client_email");
        goto out;
    }
    snprintf(f->client_email, sizeof(f->client_email), "%s", email->valuestring);
    rc = jwt_signer_create_pem(pk->valuestring, strlen(pk->valuestring), &f->signer, why,
                               sizeof(why));
    if (rc < 0) {
        snprintf(err, errlen, "fcm.service_account_file: private_key: %s", why);
        rc = TDG_ECONFIG;
        goto out;
    }
    if (jwt_signer_alg(f->signer) != JWT_RS256) {
        snprintf(err, errlen, "fcm.service_account_file: private_key must be RSA (RS256)");
        rc = TDG_ECONFIG;
        goto out;
    }
    rc = TDG_ECONFIG;
    if (f->cfg.project_id[0]) {
        snprintf(f->project, sizeof(f->project), "%s", f->cfg.project_id);
    } else if (cJSON_IsString(proj) && strlen(proj->valuestring) < sizeof(f->project)) {
        snprintf(f->project, sizeof(f->project), "%s", proj->valuestring);
    }
    if (!project_ok(f->project)) {
        snprintf(err, errlen,
                 "fcm.project_id: missing or not a project id (and none usable in "
                 "the key)");
        goto out;
    }
    if (f->cfg.token_url[0]) {
        snprintf(f->token_url, sizeof(f->token_url), "%s", f->cfg.token_url);
    } else if (cJSON_IsString(turi) && strlen(turi->valuestring) < sizeof(f->token_url)) {
        snprintf(f->token_url, sizeof(f->token_url), "%s", turi->valuestring);
    } else {
        snprintf(f->token_url, sizeof(f->token_url), "%s", FCM_DEFAULT_TOKEN_URL);
    }
    if (!channel_https_url_ok(f->token_url)) {
        snprintf(err, errlen, "fcm.token_url: must be an https:// URL (got it from %s)",
                 f->cfg.token_url[0] ? "the config" : "the key's token_uri");
        goto out;
    }
    rc = 0;
out:
    if (cJSON_IsString(pk)) {
        mbedtls_platform_zeroize(pk->valuestring, strlen(pk->valuestring));
    }
    cJSON_Delete(j);
    return rc;
}

static int tenant_init(const struct channel_env *env, const void *config, void **state, char *err,
                       size_t errlen)
{
    const struct fcm_config *cfg = config;
    *state = NULL;
    struct fcm *f = calloc(1, sizeof(*f));
    if (!f) {
        snprintf(err, errlen, "fcm: out of memory");
        return -ENOMEM;
    }
    f->cfg = *cfg;
    channel_trim_slash(f->cfg.send_url);
    channel_trim_slash(f->cfg.token_url);
    f->clock = channel_wall_clock;
    f->transport = transport_request;
    f->loop = env ? env->loop : NULL;
    channel_calls_init(&f->calls, f->loop, &f->st.sent, &f->st.ok, &f->st.retry, &f->st.drop, NULL);

    int rc = TDG_ECONFIG;
    if (!f->cfg.service_account_file[0]) {
        snprintf(err, errlen, "fcm.service_account_file is required");
        goto fail;
    }
    if (!channel_https_url_ok(f->cfg.send_url)) {
        snprintf(err, errlen, "fcm.send_url: must be an https:// URL");
        goto fail;
    }
    if (f->cfg.connections < 1 || f->cfg.max_streams < 1 || f->cfg.rate < 1 || f->cfg.queue < 1 ||
        f->cfg.burst < 0) {
        snprintf(err, errlen,
                 "fcm.connections, fcm.max_streams, fcm.rate and fcm.queue must be "
                 ">= 1");
        goto fail;
    }
    rc = load_service_account(f, err, errlen);
    if (rc < 0) {
        goto fail;
    }
    int ul = snprintf(f->send_url_full, sizeof(f->send_url_full), "%s/v1/projects/%s/messages:send",
                      f->cfg.send_url, f->project);
    if (ul < 0 || (size_t)ul >= sizeof(((struct channel_request *)0)->url)) {
        rc = TDG_ECONFIG;
        snprintf(err, errlen, "fcm.send_url: too long");
        goto fail;
    }
    /* Sign once now so a key mbedtls cannot use fails at start, not at the
     * first notification. */
    {
        char probe[JWT_TOKEN_MAX];
        rc = jwt_rs256(f->signer, "{}", 2, probe, sizeof(probe));
        mbedtls_platform_zeroize(probe, sizeof(probe));
        if (rc < 0) {
            snprintf(err, errlen, "fcm: cannot sign with the service-account key: %s",
                     tdg_strerror(rc));
            rc = TDG_ECONFIG;
            goto fail;
        }
    }
    int64_t slots = f->cfg.connections * f->cfg.max_streams;
    f->send_slots = (unsigned)(slots > 65536 ? 65536 : slots);
    fcm_bucket_init(&f->bucket, (uint64_t)f->cfg.rate, (uint64_t)f->cfg.burst, now_ms(f));
    if (f->loop) {
        /* A few slots above the sends' share, so the token request always
         * finds room even when every send slot is taken. */
        struct http_opts ho = {
            .max_inflight = f->send_slots + 4,
            .max_host_connections = (long)f->cfg.connections,
            .max_concurrent_streams = (long)f->cfg.max_streams,
            .ca_file = f->cfg.ca_file,
            .timeout_ms = f->cfg.timeout_ms,
            .free_max = 256,
            .user_agent = "tidings-hub",
        };
        rc = http_create(f->loop, &ho, &f->http);
        if (rc < 0) {
            snprintf(err, errlen, "fcm: cannot create HTTP client: %s", tdg_strerror(rc));
            goto fail;
        }
        f->transport_arg = f->http;
    }
    LOG_INFO(MOD, "ready project=%s client_email=%s send_url=%s token_url=%s rate_per_min=%" PRId64,
             f->project, f->client_email, f->cfg.send_url, f->token_url, f->cfg.rate);
    *state = f;
    return 0;
fail:
    tenant_destroy(f);
    return rc;
}

/* --- several projects ---------------------------------------------------------- */

/* The credential of the device's project (empty app: the main one). */
static int fcm_select(void *const *t, unsigned n, const struct channel_delivery *d,
                      struct channel_outcome *out)
{
    const char *app = d->dev->app;
    if (!app || !*app) {
        return 0;
    }
    for (unsigned i = 0; i < n; i++) {
        const struct fcm *f = t[i];
        if (strcmp(f->project, app) == 0) {
            return (int)i;
        }
    }
    return channel_no_tenant(out, "NoCredentialForProject: %.64s", app);
}

static int fcm_check(void *const *t, const char *const *names, unsigned n, char *err,
                     size_t errlen)
{
    for (unsigned i = 1; i < n; i++) {
        const struct fcm *f = t[i];
        for (unsigned j = 0; j < i; j++) {
            const struct fcm *g = t[j];
            if (strcmp(f->project, g->project) == 0) {
                snprintf(err, errlen, "%s: fcm.project_id: project %s is already served by %s",
                         names[i], f->project, names[j]);
                return TDG_ECONFIG;
            }
        }
    }
    return 0;
}

static const struct channel_tenant_ops fcm_tenant_ops = {
    CHANNEL_TENANT_MEMBERS("fcm", fcm_config_table, struct fcm_config),
    .init = tenant_init,
    .format = fcm_format,
    .send = fcm_send,
    .destroy = tenant_destroy,
    .select = fcm_select,
    .check = fcm_check,
};

static int fcm_init(const struct channel_env *env, const void *config, void **state, char *err,
                    size_t errlen)
{
    return channel_set_create(&fcm_tenant_ops, env, config, (channel_set **)state, err, errlen);
}

void fcm_set_clock(void *state, fcm_clock_fn fn, void *arg)
{
    for (unsigned i = 0; i < channel_set_count(state); i++) {
        struct fcm *f = channel_set_tenant(state, i);
        f->clock = fn ? fn : channel_wall_clock;
        f->clock_arg = fn ? arg : NULL;
        fcm_bucket_init(&f->bucket, (uint64_t)f->cfg.rate, (uint64_t)f->cfg.burst, now_ms(f));
    }
}

void fcm_set_transport(void *state, fcm_transport_fn fn, void *arg)
{
    for (unsigned i = 0; i < channel_set_count(state); i++) {
        struct fcm *f = channel_set_tenant(state, i);
        f->transport = fn ? fn : transport_request;
        f->transport_arg = fn ? arg : f->http;
    }
}

void fcm_get_stats(void *state, struct fcm_stats *out)
{
    fcm_get_tenant_stats(state, 0, out);
}

int fcm_get_tenant_stats(void *state, unsigned i, struct fcm_stats *out)
{
    const struct fcm *f = channel_set_tenant(state, i);
    if (!f) {
        return -ENOENT;
    }
    *out = f->st;
    out->token_fetched_ms = f->token_gen ? f->token_fetched_ms : 0;
    out->token_expires_ms = f->token_gen ? f->token_expires_ms : 0;
    out->token_refresh_ms = f->token_gen ? f->token_refresh_ms : 0;
    out->token_fetching = f->fetching;
    out->queued_now = f->nqueued;
    return 0;
}

const char *fcm_tenant_project(void *state, unsigned i)
{
    const struct fcm *f = channel_set_tenant(state, i);
    return f ? f->project : NULL;
}

const char *fcm_project(void *state)
{
    return fcm_tenant_project(state, 0);
}

const char *fcm_token_url(void *state)
{
    return ((struct fcm *)channel_set_tenant(state, 0))->token_url;
}

const struct channel_ops fcm_channel = {
    CHANNEL_CONFIG_MEMBERS("fcm", fcm_config_table, struct fcm_config),
    .init = fcm_init,
    CHANNEL_SET_MEMBERS,
};
