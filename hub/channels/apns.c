/*
 * apns.c - the APNs channel: format (pure), send over hub/http, map answers.
 *
 * Per request: format builds POST <url>/3/device/<token> with the shared
 * provider token, then http_request sends it; on_answer maps the status and
 * the {"reason":..,"timestamp":..} body to ok / retry / drop and a device
 * action. Nothing here blocks; everything runs on the hub's loop.
 */
#include "apns.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "error.h"
#include "http.h"
#include "jwt.h"
#include "log.h"

#define MOD "apns"

#define OFF(f) offsetof(struct apns_config, f), sizeof(((struct apns_config *)0)->f)

static const struct config_entry apns_config_table[] = {
    {"apns.url", CONFIG_STRING, "https://api.push.apple.com", OFF(url),
     "APNs base URL (https://api.sandbox.push.apple.com for development)", NULL, 0, 0},
    {"apns.sandbox_url", CONFIG_STRING, "", OFF(sandbox_url),
     "Base URL for devices registered as environment \"sandbox\" (empty: apns.url)", NULL, 0, 0},
    {"apns.key_file", CONFIG_STRING, "", OFF(key_file),
     "Token signing key from Apple (AuthKey_<KEYID>.p8, PKCS#8 EC P-256)", NULL, 0, 0},
    {"apns.key_id", CONFIG_STRING, "", OFF(key_id), "Key id of apns.key_file (kid)", NULL, 0, 0},
    {"apns.team_id", CONFIG_STRING, "", OFF(team_id), "Apple developer team id (iss)", NULL, 0, 0},
    {"apns.topic", CONFIG_STRING, "", OFF(topic),
     "Default apns-topic (bundle id) for devices registered without one", NULL, 0, 0},
    {"apns.ca_file", CONFIG_STRING, "", OFF(ca_file),
     "CA bundle to verify the APNs server (empty: system CAs)", NULL, 0, 0},
    {"apns.token_refresh", CONFIG_DURATION, "50m", OFF(token_refresh_ms),
     "Re-sign the provider token this often (Apple: 20 to 60 minutes)", NULL, APNS_REFRESH_MIN_MS,
     APNS_REFRESH_MAX_MS},
    {"apns.timeout", CONFIG_DURATION, "10s", OFF(timeout_ms),
     "Whole-request timeout; a timed-out request is retried", NULL, 100, 600000},
    {"apns.connections", CONFIG_INT, "2", OFF(connections), "HTTP/2 connections per APNs host",
     NULL, 1, 64},
    {"apns.max_streams", CONFIG_INT, "1000", OFF(max_streams),
     "Concurrent streams per connection (APNs allows up to 1000)", NULL, 1, 1000},
    {"apns.cert_file", CONFIG_STRING, "", OFF(cert_file),
     "Provider certificate instead of a signing key: PEM (certificate and key) or PKCS#12 "
     "(.p12), sent as the TLS client certificate; then no key_file/key_id/team_id",
     NULL, 0, 0},
    {"apns.cert_key_file", CONFIG_STRING, "", OFF(cert_key_file),
     "PEM private key of apns.cert_file when that file holds only the certificate", NULL, 0, 0},
    {"apns.cert_password_file", CONFIG_STRING, "", OFF(cert_password_file),
     "File whose first line is the PKCS#12 (or encrypted PEM key) password", NULL, 0, 0},
    {"apns.topics", CONFIG_STRING, "", OFF(topics),
     "Bundle ids (apns-topic) this credential serves, comma-separated; required in a "
     "apns.tenants_dir file; in the main config empty = every topic no file claims",
     NULL, 0, 0},
    {"apns.tenants_dir", CONFIG_STRING, "", OFF(tenants_dir),
     "Directory of more APNs credentials (teams, bundle ids): each *.conf is one key or "
     "certificate in these apns.* keys, with apns.topics",
     NULL, 0, 0},
};

#define TOKEN_LOG_LEN 8               /* never log more of a device token */
#define CLOCK_BACK_TOLERANCE_MS 60000 /* token "from the future": clock went back */
#define HDR_AUTH_PREFIX "authorization: bearer "
#define FREE_CALLS_MAX 256 /* finished calls kept for reuse (no calloc per send) */

static const char *const capture_headers[] = {"apns-id", "retry-after", NULL};

struct apns;

/* One send in flight: waiting for HTTP, or for a deferred format drop. */
struct apns_call {
    struct channel_call base; /* first: the shared bookkeeping */
    struct apns *a;
    int64_t token_iat_ms; /* provider token this request carried */
    char tok[TOKEN_LOG_LEN + 1];
};

struct apns {
    struct apns_config cfg;
    loop_t *loop;
    http_t *http;
    jwt_signer *signer;
    apns_clock_fn clock;
    void *clock_arg;

    char jwt[256 - sizeof(HDR_AUTH_PREFIX) + 1];
    int64_t token_iat_ms;
    uint64_t token_signs;

    bool cert_auth; /* TLS client certificate, no provider token */
    char topics_buf[sizeof(((struct apns_config *)0)->topics)];
    const char *topics[APNS_TOPICS_MAX]; /* into topics_buf */
    unsigned ntopics;

    struct channel_calls calls;
    struct apns_call *free_calls; /* finished calls for reuse, linked by base.next */
    unsigned nfree;
    struct channel_request req; /* scratch for send; single-threaded */
    uint64_t sent, ok, retry, drop;

    /* state transitions logged once, not per message */
    bool logged_invalid_token, logged_young_expired, logged_sign_fail, logged_proto;
};

/* --- provider token -------------------------------------------------- */

/* Sign a new provider token with iat = now. On failure the old token stays
 * (APNs will answer ExpiredProviderToken and we retry later). */
static int token_sign(struct apns *a, int64_t now_ms)
{
    if (a->cert_auth) {
        return 0; /* no token: the TLS client certificate authenticates */
    }
    char buf[JWT_TOKEN_MAX];
    int n = jwt_es256_provider_token(a->signer, a->cfg.key_id, a->cfg.team_id, now_ms / 1000, buf,
                                     sizeof(buf));
    if (n < 0) {
        return n;
    }
    if ((size_t)n >= sizeof(a->jwt)) {
        return -ENOSPC; /* the authorization header would not fit its slot */
    }
    memcpy(a->jwt, buf, (size_t)n + 1);
    a->token_iat_ms = now_ms;
    a->token_signs++;
    return 0;
}

/* Keep the shared token fresh: re-sign when older than token_refresh, or
 * when the clock moved back so far that iat lies in the future. */
static void token_refresh_if_due(struct apns *a, int64_t now_ms)
{
    if (a->cert_auth) {
        return;
    }
    int64_t age = now_ms - a->token_iat_ms;
    if (age < (int64_t)a->cfg.token_refresh_ms && age > -CLOCK_BACK_TOLERANCE_MS) {
        return;
    }
    int rc = token_sign(a, now_ms);
    if (rc < 0) {
        if (!a->logged_sign_fail) {
            LOG_ERROR(MOD, "cannot re-sign provider token: %s", tdg_strerror(rc));
            a->logged_sign_fail = true;
        }
        return;
    }
    a->logged_sign_fail = false;
    LOG_INFO(MOD, "provider token re-signed age_s=%" PRId64, age / 1000);
}

/* --- format ------------------------------------------------------------ */

/* snprintf(dst, cap, "%s", src) without printf: the first cap - 1 bytes. */
static void copy_trunc(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* dst = a b c, or false when that does not fit cap (with its NUL). */
static bool join3(char *dst, size_t cap, const char *a, const char *b, const char *c)
{
    size_t an = strnlen(a, cap), bn = strnlen(b, cap), cn = strnlen(c, cap);
    if (an + bn + cn >= cap) {
        dst[0] = '\0';
        return false;
    }
    memcpy(dst, a, an);
    memcpy(dst + an, b, bn);
    memcpy(dst + an + bn, c, cn);
    dst[an + bn + cn] = '\0';
    return true;
}

static bool device_token_ok(const char *t)
{
    size_t n = 0;
    if (!t) {
        return false;
    }
    for (; t[n]; n++) {
        char c = t[n];
        bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
        if (!hex || n >= APNS_TOKEN_HEX_MAX) {
            return false;
        }
    }
    return n > 0;
}

/* The payload is written straight into req->body: no tree is built or
 * copied (it was one cJSON_Duplicate per data item and a tree per send).
 * The bytes are the ones cJSON_PrintUnformatted gave (golden files): the
 * same key order and cJSON's string escaping. Only the custom data values
 * (any JSON) are printed by cJSON, in place. */
/* Payloads go through proto's bounded writer (struct proto_jw), which
 * escapes strings as cJSON prints them. */
static void jw_lit(struct proto_jw *w, const char *s)
{
    proto_jw_raw(w, s, strlen(s));
}

static void jw_str(struct proto_jw *w, const char *s)
{
    proto_jw_str(w, s, SIZE_MAX);
}

/* "key":"value" with a leading comma unless first. The keys are our own
 * constants with nothing to escape: KV writes `"key":` as one literal (its
 * length known at compile time) instead of escaping it on every send. */
#define KV(w, first, key, v) jw_kv((w), (first), "\"" key "\":", sizeof("\"" key "\":") - 1, (v))

static void jw_kv(struct proto_jw *w, bool *first, const char *qk, size_t qklen, const char *v)
{
    if (!*first) {
        proto_jw_raw(w, ",", 1);
    }
    *first = false;
    proto_jw_raw(w, qk, qklen);
    jw_str(w, v);
}

/* Build the JSON payload into req->body. 0, TDG_ETOOBIG or -ENOMEM. */
static int build_payload(const struct notification *n, bool alert, struct channel_request *req)
{
    struct proto_jw w = {.p = req->body, .cap = sizeof(req->body)};
    bool first = true;
    jw_lit(&w, "{\"aps\":{");
    if (alert) {
        jw_lit(&w, "\"alert\":{");
        if (n->title) {
            KV(&w, &first, "title", n->title);
        }
        if (n->body) {
            KV(&w, &first, "body", n->body);
        }
        jw_lit(&w, "}");
        first = false;
        if (n->priority >= PROTO_PRIO_HIGH) {
            KV(&w, &first, "sound", "default");
        }
        if (n->priority == PROTO_PRIO_CRITICAL) {
            KV(&w, &first, "interruption-level", "time-sensitive");
        }
        if (n->category) {
            KV(&w, &first, "thread-id", n->category);
        }
    } else {
        jw_lit(&w, "\"content-available\":1");
    }
    jw_lit(&w, "}");
    /* Custom data goes at the top level, beside "aps", where the app reads
     * it. Our own keys win: a data key named "aps" or "tidings_id" is not
     * copied (it would make the payload ambiguous or unreadable). */
    const cJSON *item = NULL;
    if (cJSON_IsObject(n->data)) {
        cJSON_ArrayForEach(item, n->data)
        {
            if (!item->string || strcmp(item->string, "aps") == 0 ||
                strcmp(item->string, "tidings_id") == 0) {
                continue;
            }
            jw_lit(&w, ",");
            jw_str(&w, item->string);
            jw_lit(&w, ":");
            if (w.len >= w.cap) {
                break;
            }
            /* Printed in place, cJSON's bytes (proto_json_print). */
            long vlen = proto_json_print(item, w.p + w.len, w.cap - w.len);
            if (vlen < 0) {
                w.len = w.cap; /* did not fit */
                break;
            }
            w.len += (size_t)vlen;
        }
    }
    if (n->id) {
        jw_lit(&w, ",\"tidings_id\":");
        jw_str(&w, n->id);
    }
    jw_lit(&w, "}");
    if (!proto_jw_end(&w)) {
        req->body[0] = '\0';
        req->body_len = 0;
        return TDG_ETOOBIG;
    }
    req->body[w.len] = '\0';
    req->body_len = w.len;
    return req->body_len > APNS_PAYLOAD_MAX ? TDG_ETOOBIG : 0;
}

static int apns_format(void *state, const struct channel_delivery *d, struct channel_request *req,
                       struct channel_outcome *out)
{
    struct apns *a = state;
    const struct notification *n = d->n;
    const struct channel_device *dev = d->dev;
    memset(out, 0, sizeof(*out));
    channel_request_reset(req);

    if (!device_token_ok(dev->token)) {
        /* Not hex: it can never be valid. Flag, like APNs' BadDeviceToken. */
        return channel_drop(out, "BadDeviceToken", CHANNEL_DEVICE_FLAG, TDG_EINVAL_INPUT);
    }
    const char *topic = dev->app && *dev->app ? dev->app : a->cfg.topic;
    if (!*topic) {
        return channel_drop(out, "MissingTopic", CHANNEL_DEVICE_NONE, TDG_ECONFIG);
    }
    if (!channel_header_value_ok(topic, 200)) {
        return channel_drop(out, "BadTopic", CHANNEL_DEVICE_FLAG, TDG_EINVAL_INPUT);
    }
    if (n->collapse_key && !channel_header_value_ok(n->collapse_key, PROTO_COLLAPSE_MAX)) {
        return channel_drop(out, "BadCollapseId", CHANNEL_DEVICE_NONE, TDG_EINVAL_INPUT);
    }
    const char *base = a->cfg.url;
    if (dev->environment && strcmp(dev->environment, "sandbox") == 0 && a->cfg.sandbox_url[0]) {
        base = a->cfg.sandbox_url;
    }
    if (!join3(req->url, sizeof(req->url), base, "/3/device/", dev->token)) {
        return channel_drop(out, "BadDeviceToken", CHANNEL_DEVICE_FLAG, TDG_EINVAL_INPUT);
    }
    memcpy(req->method, "POST", sizeof("POST"));

    token_refresh_if_due(a, a->clock(a->clock_arg));

    bool alert = n->title || n->body;
    /* Apple: background pushes must use priority 5; 10 wakes the device
     * at once, which low-priority alerts should not do. */
    int prio = alert && n->priority != PROTO_PRIO_LOW ? 10 : 5;
    int rc = 0;
    /* Without printf: this runs once per notification and device. */
    if (!a->cert_auth) {
        rc |= channel_add_header_str(req, HDR_AUTH_PREFIX, a->jwt);
    }
    rc |= channel_add_header_str(req, "apns-topic: ", topic);
    rc |= channel_add_header_str(req, "apns-push-type: ", alert ? "alert" : "background");
    rc |= channel_add_header_int(req, "apns-priority: ", prio);
    if (n->ttl_s > 0) {
        rc |= channel_add_header_int(req, "apns-expiration: ", d->now_ms / 1000 + n->ttl_s);
    }
    if (n->collapse_key) {
        rc |= channel_add_header_str(req, "apns-collapse-id: ", n->collapse_key);
    }
    if (rc != 0) {
        return channel_drop(out, "HeaderTooLong", CHANNEL_DEVICE_NONE, TDG_EINVAL_INPUT);
    }

    rc = build_payload(n, alert, req);
    if (rc == TDG_ETOOBIG) {
        req->body_len = 0;
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

/* --- answers ----------------------------------------------------------- */

void apns_map_answer(int status, const char *body, size_t body_len, const char *apns_id,
                     const char *retry_after, int64_t now_ms, struct channel_outcome *out)
{
    memset(out, 0, sizeof(*out));
    out->status = status;
    if (status == 200) {
        out->result = CHANNEL_OK;
        copy_trunc(out->provider_id, sizeof(out->provider_id), apns_id ? apns_id : "");
        return;
    }

    snprintf(out->reason, sizeof(out->reason), "HTTP %d", status);
    cJSON *j = body && body_len > 0 ? cJSON_ParseWithLength(body, body_len) : NULL;
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "reason");
    if (cJSON_IsString(r) && r->valuestring[0]) {
        snprintf(out->reason, sizeof(out->reason), "%s", r->valuestring);
    }
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(j, "timestamp");
    int64_t ts_ms = 0;
    /* Milliseconds since the epoch; bounded so the double converts safely. */
    if (cJSON_IsNumber(ts) && ts->valuedouble > 0 && ts->valuedouble < 9.0e15) {
        ts_ms = (int64_t)ts->valuedouble;
    }
    cJSON_Delete(j);
    const char *reason = out->reason;

    if (status == 410) {
        /* Unregistered / ExpiredToken: the hub disables the token unless it
         * was re-registered after ts_ms. */
        out->result = CHANNEL_DROP;
        out->device_action = CHANNEL_DEVICE_DISABLE;
        out->token_invalid_since_ms = ts_ms;
        return;
    }
    if (status == 400) {
        out->result = CHANNEL_DROP;
        if (strcmp(reason, "BadDeviceToken") == 0 ||
            strcmp(reason, "DeviceTokenNotForTopic") == 0) {
            /* Usually a sandbox token sent to production or the wrong app:
             * flagged for a human, not deleted. */
            out->device_action = CHANNEL_DEVICE_FLAG;
        }
        return;
    }
    if (status == 403) {
        out->result = strcmp(reason, "ExpiredProviderToken") == 0 ? CHANNEL_RETRY : CHANNEL_DROP;
        return;
    }
    if (status == 429 || status >= 500) {
        /* 429 is about this device (too many pushes to it); the engine backs
         * off that device only. The channel itself is not paused. */
        out->result = CHANNEL_RETRY;
        out->retry_after_ms = channel_retry_after_ms(retry_after, now_ms);
        return;
    }
    if (status >= 400) {
        out->result = CHANNEL_DROP; /* 404 BadPath, 405 BadMethod, 413 PayloadTooLarge ... */
        return;
    }
    out->result = CHANNEL_RETRY; /* 1xx/2xx/3xx other than 200: not an APNs answer */
}

/* --- send -------------------------------------------------------------- */

static void on_answer(void *ctx, const struct http_response *resp)
{
    struct apns_call *c = ctx;
    struct apns *a = c->a;
    struct channel_outcome o;

    /* A 200 whose header block arrived is Apple's acceptance even when the
     * connection failed right after (seen under load: GOAWAY while curl was
     * still writing). APNs sends no body with 200, so nothing is missing,
     * and a RETRY here would push the same notification twice. */
    bool accepted = resp->status == 200 && resp->version == 20 && resp->error != -EPROTO;
    if (resp->error < 0 && !accepted) {
        /* No (complete) answer: connection refused or dropped, GOAWAY before
         * this stream was processed, timeout. The request may or may not
         * have reached Apple; retry (at least once, duplicates bounded). */
        channel_no_answer(&o, resp);
        if (resp->error == -EPROTO && !a->logged_proto) {
            LOG_ERROR(MOD, "%s (is apns.url an APNs endpoint?)", o.reason);
            a->logged_proto = true;
        }
        LOG_DEBUG(MOD, "transport error: %s", o.reason); /* no token in logs: PII */
        channel_call_finish(&c->base, &o);
        return;
    }

    apns_map_answer(resp->status, resp->body, resp->body_len, http_response_header(resp, "apns-id"),
                    http_response_header(resp, "retry-after"), a->clock(a->clock_arg), &o);

    if (resp->status == 403 && a->cert_auth) {
        if (!a->logged_invalid_token) {
            LOG_ERROR(MOD, "APNs refused the provider certificate %s: %s", a->cfg.cert_file,
                      o.reason);
            a->logged_invalid_token = true;
        }
    } else if (resp->status == 403 && strcmp(o.reason, "ExpiredProviderToken") == 0) {
        int64_t now = a->clock(a->clock_arg);
        int64_t age = now - a->token_iat_ms;
        if (c->token_iat_ms != a->token_iat_ms) {
            /* Already re-signed since this request left: nothing to do. */
        } else if (age >= (int64_t)APNS_REFRESH_MIN_MS || age <= -CLOCK_BACK_TOLERANCE_MS) {
            if (token_sign(a, now) == 0) {
                LOG_INFO(MOD,
                         "provider token re-signed early on ExpiredProviderToken age_s=%" PRId64,
                         age / 1000);
            }
        } else if (!a->logged_young_expired) {
            /* Re-signing more often than every 20 min gets the key
             * throttled (TooManyProviderTokenUpdates); a young token
             * called expired points at this host's clock. */
            LOG_WARN(MOD,
                     "ExpiredProviderToken for a token %" PRId64 "s old; not re-signing "
                     "before 20 min (check the clock)",
                     age / 1000);
            a->logged_young_expired = true;
        }
    } else if (resp->status == 403 && !a->logged_invalid_token) {
        LOG_ERROR(MOD,
                  "APNs refused the provider token: %s (check apns.key_file, apns.key_id, "
                  "apns.team_id)",
                  o.reason);
        a->logged_invalid_token = true;
    } else if (resp->status == 200) {
        a->logged_invalid_token = false;
        a->logged_young_expired = false;
    }
    LOG_DEBUG(MOD, "status=%d result=%s reason=%s apns-id=%s", o.status,
              channel_result_name(o.result), o.reason, o.provider_id);
    channel_call_finish(&c->base, &o);
}

/* channel_calls' release hook: keep up to FREE_CALLS_MAX finished calls. */
static void call_release(struct channel_call *base)
{
    struct apns_call *c = (struct apns_call *)base;
    struct apns *a = c->a;
    if (a->nfree >= FREE_CALLS_MAX) {
        free(c);
        return;
    }
    c->base.next = (struct channel_call *)a->free_calls;
    a->free_calls = c;
    a->nfree++;
}

/* A zeroed call, from the free list when it has one. */
static struct apns_call *call_new(struct apns *a)
{
    struct apns_call *c = a->free_calls;
    if (!c) {
        return calloc(1, sizeof(*c));
    }
    a->free_calls = (struct apns_call *)c->base.next;
    a->nfree--;
    memset(c, 0, sizeof(*c));
    return c;
}

static int apns_send(void *state, const struct channel_delivery *d, channel_done_cb done, void *ctx)
{
    struct apns *a = state;
    if (!a->http) {
        return -ENOTCONN; /* created without a loop: format only */
    }
    struct apns_call *c = call_new(a);
    if (!c) {
        return -ENOMEM;
    }
    channel_call_init(&a->calls, &c->base, done, ctx);
    c->a = a;
    copy_trunc(c->tok, sizeof(c->tok), d->dev->token ? d->dev->token : "");

    struct channel_outcome o;
    int rc = apns_format(a, d, &a->req, &o);
    if (rc < 0) {
        /* The outcome is known now, but done must not run inside send. */
        if (channel_call_defer(&c->base, &o) < 0) {
            call_release(&c->base);
            return -ENOMEM;
        }
        return 0;
    }
    c->token_iat_ms = a->token_iat_ms;
    struct http_req_opts ro = {.require_h2 = true, .capture = capture_headers};
    rc = http_request(a->http, &a->req, &ro, on_answer, c);
    if (rc < 0) {
        call_release(&c->base);
        return rc;
    }
    channel_call_link(&c->base);
    return 0;
}

/* --- lifecycle ------------------------------------------------------------ */

static void tenant_destroy(void *state)
{
    struct apns *a = state;
    if (!a) {
        return;
    }
    http_destroy(a->http); /* aborts requests; their on_answer never runs */
    channel_calls_abort(&a->calls);
    while (a->free_calls) {
        struct apns_call *c = a->free_calls;
        a->free_calls = (struct apns_call *)c->base.next;
        free(c);
    }
    jwt_signer_destroy(a->signer);
    free(a);
}

static int tenant_init(const struct channel_env *env, const void *config, void **state, char *err,
                       size_t errlen)
{
    const struct apns_config *cfg = config;
    *state = NULL;
    struct apns *a = calloc(1, sizeof(*a));
    if (!a) {
        snprintf(err, errlen, "apns: out of memory");
        return -ENOMEM;
    }
    a->cfg = *cfg;
    channel_trim_slash(a->cfg.url);
    channel_trim_slash(a->cfg.sandbox_url);
    a->clock = channel_wall_clock;
    a->loop = env ? env->loop : NULL;
    channel_calls_init(&a->calls, a->loop, &a->sent, &a->ok, &a->retry, &a->drop, call_release);

    int rc = TDG_ECONFIG;
    if (!channel_https_url_ok(a->cfg.url)) {
        snprintf(err, errlen, "apns.url: must be an https:// URL (APNs is HTTP/2 over TLS)");
        goto fail;
    }
    if (a->cfg.sandbox_url[0] && !channel_https_url_ok(a->cfg.sandbox_url)) {
        snprintf(err, errlen, "apns.sandbox_url: must be an https:// URL or empty");
        goto fail;
    }
    char password[256] = "";
    a->cert_auth = a->cfg.cert_file[0] != '\0';
    if (a->cert_auth && (a->cfg.key_file[0] || a->cfg.key_id[0] || a->cfg.team_id[0])) {
        snprintf(err, errlen,
                 "apns.cert_file and apns.key_file/key_id/team_id: authenticate with a "
                 "certificate or a signing key, not both");
        goto fail;
    }
    if (!a->cert_auth && (a->cfg.cert_key_file[0] || a->cfg.cert_password_file[0])) {
        snprintf(err, errlen, "apns.cert_key_file and apns.cert_password_file need apns.cert_file");
        goto fail;
    }
    if (!a->cert_auth && (!a->cfg.key_file[0] || !a->cfg.key_id[0] || !a->cfg.team_id[0])) {
        snprintf(err, errlen,
                 "apns.key_file, apns.key_id and apns.team_id are required (or apns.cert_file)");
        goto fail;
    }
    if (a->cfg.token_refresh_ms < APNS_REFRESH_MIN_MS ||
        a->cfg.token_refresh_ms > APNS_REFRESH_MAX_MS) {
        snprintf(err, errlen, "apns.token_refresh: must be 20m..60m");
        goto fail;
    }
    if (a->cfg.topic[0] && !channel_header_value_ok(a->cfg.topic, 200)) {
        snprintf(err, errlen, "apns.topic: not a valid topic");
        goto fail;
    }
    if (a->cfg.connections < 1 || a->cfg.max_streams < 1) {
        snprintf(err, errlen, "apns.connections and apns.max_streams must be >= 1");
        goto fail;
    }
    snprintf(a->topics_buf, sizeof(a->topics_buf), "%s", a->cfg.topics);
    int nt = channel_split_list(a->topics_buf, a->topics, APNS_TOPICS_MAX);
    if (nt < 0) {
        snprintf(err, errlen, "apns.topics: %s",
                 nt == -E2BIG ? "more than 64 bundle ids" : "an empty item in the list");
        goto fail;
    }
    a->ntopics = (unsigned)nt;
    for (unsigned i = 0; i < a->ntopics; i++) {
        if (!channel_header_value_ok(a->topics[i], 200) || strchr(a->topics[i], ' ')) {
            snprintf(err, errlen, "apns.topics: '%.64s' is not a bundle id", a->topics[i]);
            goto fail;
        }
    }
    char why[CONFIG_ERR_MAX];
    if (a->cert_auth) {
        if (a->cfg.cert_password_file[0]) {
            int r = channel_read_secret(a->cfg.cert_password_file, password, sizeof(password));
            if (r < 0) {
                snprintf(err, errlen, "apns.cert_password_file: %s: %s",
                         a->cfg.cert_password_file, tdg_strerror(r));
                goto fail;
            }
        }
        rc = http_client_cert_check(a->cfg.cert_file, a->cfg.cert_key_file, password, why,
                                    sizeof(why));
        if (rc < 0) {
            snprintf(err, errlen, "apns.cert_file: %s", why);
            rc = TDG_ECONFIG;
            goto fail;
        }
        rc = TDG_ECONFIG;
    } else if ((rc = jwt_signer_create_file(a->cfg.key_file, &a->signer, why, sizeof(why))) < 0) {
        snprintf(err, errlen, "apns.key_file: %s", why);
        goto fail;
    }
    if (!a->cert_auth && jwt_signer_alg(a->signer) != JWT_ES256) {
        rc = TDG_ECONFIG;
        snprintf(err, errlen, "apns.key_file: APNs needs an EC P-256 key (ES256), not RSA");
        goto fail;
    }
    rc = token_sign(a, a->clock(a->clock_arg));
    if (rc < 0) {
        snprintf(err, errlen,
                 "apns: cannot sign a provider token (%s); key_id and team_id "
                 "must be [A-Za-z0-9._-]",
                 tdg_strerror(rc));
        rc = TDG_ECONFIG;
        goto fail;
    }
    if (a->loop) {
        /* Enough in flight to fill every stream of every connection; curl
         * queues what the server's SETTINGS do not allow yet. */
        int64_t inflight = a->cfg.connections * a->cfg.max_streams;
        struct http_opts ho = {
            .max_inflight = (unsigned)(inflight > 65536 ? 65536 : inflight),
            .max_host_connections = (long)a->cfg.connections,
            .max_concurrent_streams = (long)a->cfg.max_streams,
            .ca_file = a->cfg.ca_file,
            .timeout_ms = a->cfg.timeout_ms,
            .free_max = 256,
            .user_agent = "tidings-hub",
            .client_cert = a->cert_auth ? a->cfg.cert_file : NULL,
            .client_key = a->cfg.cert_key_file,
            .client_password = password,
        };
        rc = http_create(a->loop, &ho, &a->http);
        if (rc < 0) {
            snprintf(err, errlen, "apns: cannot create HTTP/2 client: %s", tdg_strerror(rc));
            goto fail;
        }
    }
    explicit_bzero(password, sizeof(password));
    if (a->cert_auth) {
        LOG_INFO(MOD, "ready url=%s certificate=%s topics=%s connections=%" PRId64
                 " streams=%" PRId64,
                 a->cfg.url, a->cfg.cert_file, a->cfg.topics[0] ? a->cfg.topics : "*",
                 a->cfg.connections, a->cfg.max_streams);
    } else {
        LOG_INFO(MOD, "ready url=%s key_id=%s team_id=%s topics=%s connections=%" PRId64
                 " streams=%" PRId64,
                 a->cfg.url, a->cfg.key_id, a->cfg.team_id, a->cfg.topics[0] ? a->cfg.topics : "*",
                 a->cfg.connections, a->cfg.max_streams);
    }
    *state = a;
    return 0;
fail:
    explicit_bzero(password, sizeof(password));
    tenant_destroy(a);
    return rc;
}

/* --- several credentials ----------------------------------------------------- */

static bool serves(const struct apns *a, const char *topic)
{
    for (unsigned i = 0; i < a->ntopics; i++) {
        if (strcmp(a->topics[i], topic) == 0) {
            return true;
        }
    }
    return false;
}

/* The credential whose apns.topics hold the device's topic; else the main
 * one when it claims no topics (it takes the rest). */
static int apns_select(void *const *t, unsigned n, const struct channel_delivery *d,
                       struct channel_outcome *out)
{
    const struct apns *main = t[0];
    if (n == 1 && main->ntopics == 0) {
        return 0;
    }
    const char *topic = d->dev->app && *d->dev->app ? d->dev->app : main->cfg.topic;
    if (!*topic) {
        return 0; /* format says MissingTopic */
    }
    for (unsigned i = 0; i < n; i++) {
        if (serves(t[i], topic)) {
            return (int)i;
        }
    }
    if (main->ntopics == 0) {
        return 0;
    }
    return channel_no_tenant(out, "NoCredentialForTopic: %.64s", topic);
}

static const char *const *topics_of(const void *tenant, unsigned *n)
{
    const struct apns *a = tenant;
    *n = a->ntopics;
    return a->topics;
}

static int apns_check(void *const *t, const char *const *names, unsigned n, char *err,
                      size_t errlen)
{
    const struct apns *main = t[0];
    for (unsigned i = 1; i < n; i++) {
        struct apns *a = t[i];
        if (a->ntopics == 0) {
            snprintf(err, errlen, "%s: apns.topics: required in a credential file (the bundle "
                     "ids this key or certificate serves)", names[i]);
            return TDG_ECONFIG;
        }
        if (!a->cfg.topic[0]) {
            /* devices registered without a topic get the main config's */
            snprintf(a->cfg.topic, sizeof(a->cfg.topic), "%s", main->cfg.topic);
        }
    }
    for (unsigned i = 0; i < n; i++) {
        int rc = channel_check_claims(t, names, i, topics_of, "apns.topics", err, errlen);
        if (rc < 0) {
            return rc;
        }
    }
    return 0;
}

static const struct channel_tenant_ops apns_tenant_ops = {
    CHANNEL_TENANT_MEMBERS("apns", apns_config_table, struct apns_config),
    .init = tenant_init,
    .format = apns_format,
    .send = apns_send,
    .destroy = tenant_destroy,
    .select = apns_select,
    .check = apns_check,
};

static int apns_init(const struct channel_env *env, const void *config, void **state, char *err,
                     size_t errlen)
{
    return channel_set_create(&apns_tenant_ops, env, config, (channel_set **)state, err, errlen);
}

void apns_set_clock(void *state, apns_clock_fn fn, void *arg)
{
    for (unsigned i = 0; i < channel_set_count(state); i++) {
        struct apns *a = channel_set_tenant(state, i);
        a->clock = fn ? fn : channel_wall_clock;
        a->clock_arg = fn ? arg : NULL;
        token_sign(a, a->clock(a->clock_arg));
    }
}

void apns_get_stats(void *state, struct apns_stats *out)
{
    apns_get_tenant_stats(state, 0, out);
}

int apns_get_tenant_stats(void *state, unsigned i, struct apns_stats *out)
{
    const struct apns *a = channel_set_tenant(state, i);
    if (!a) {
        return -ENOENT;
    }
    out->token_signs = a->token_signs;
    out->token_iat_ms = a->token_iat_ms;
    out->sent = a->sent;
    out->ok = a->ok;
    out->retry = a->retry;
    out->drop = a->drop;
    return 0;
}

const struct channel_ops apns_channel = {
    CHANNEL_CONFIG_MEMBERS("apns", apns_config_table, struct apns_config),
    .init = apns_init,
    CHANNEL_SET_MEMBERS,
};
