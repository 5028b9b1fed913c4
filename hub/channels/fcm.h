/*
 * fcm.h - Firebase Cloud Messaging channel (HTTP v1 API, OAuth2 from a
 * service-account key).
 *
 * A credential is one Firebase project with one service account.
 * It trades an RS256 JWT assertion for an OAuth2 access token at the token
 * endpoint (same HTTP client as the sends), caches it until expires_in, and
 * starts one background refresh fcm.token_margin before expiry while sends
 * keep using the old token. Only one token request is ever in flight. Sends
 * that find no usable token wait in a bounded queue and go when it arrives,
 * or end RETRY when the token endpoint fails (which then backs off, capped
 * full jitter, so a dead endpoint is not hammered).
 *
 * Sends also pass a per-project token bucket (fcm.rate per minute, FCM's
 * default quota is 600,000/min); a send without a bucket token waits in the
 * same queue until one is due.
 *
 * Several projects in one hub (channel.h, "several credentials"): the main
 * config is one project; each *.conf in fcm.tenants_dir is another, in the
 * same fcm.* keys, with its own service-account key, token cache, rate
 * bucket, queue and connections. A device's app names its project (empty:
 * the main config's); a project no credential serves is dropped
 * "NoCredentialForProject: <project>".
 *
 * The channel owns its HTTP client (hub/http.h) on env->loop, as the APNs
 * channel does. Google accepts HTTP/2 and HTTP/1.1: h2 is offered, not
 * required.
 *
 * See docs/channels.md for the field -> message table and the answer ->
 * outcome table.
 */
#ifndef TIDINGS_FCM_H
#define TIDINGS_FCM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "channel.h"
#include "http.h"

#define FCM_PAYLOAD_MAX 4096 /* FCM: notification + data bytes per message */
#define FCM_TOKEN_MAX 4096   /* registration tokens are ~160 chars today */
#define FCM_SCOPE "https://www.googleapis.com/auth/firebase.messaging"
#define FCM_DEFAULT_TOKEN_URL "https://oauth2.googleapis.com/token"
#define FCM_ASSERTION_LIFETIME_S 3600 /* Google's maximum */
/* Longest access token the channel can carry: what is left of one
 * channel_request header slot after "authorization: Bearer ". */
#define FCM_ACCESS_TOKEN_MAX (CHANNEL_AUTH_MAX - 8) /* room for "Bearer " */

/* Filled by config_defaults/config_load from fcm_channel.config. */
struct fcm_config {
    char service_account_file[512]; /* fcm.service_account_file: Google's JSON key */
    char project_id[128];           /* fcm.project_id: empty = the key's project_id */
    char send_url[256];             /* fcm.send_url: base, without /v1/... */
    char token_url[256];            /* fcm.token_url: empty = the key's token_uri */
    char ca_file[512];              /* fcm.ca_file: empty = system CAs */
    uint64_t timeout_ms;            /* fcm.timeout: whole request (sends and token) */
    int64_t connections;            /* fcm.connections: per host */
    int64_t max_streams;            /* fcm.max_streams: concurrent requests per connection */
    uint64_t token_margin_ms;       /* fcm.token_margin: refresh this long before expiry */
    int64_t rate;                   /* fcm.rate: messages per minute for the project */
    int64_t burst;                  /* fcm.burst: bucket size; 0 = one second of fcm.rate */
    int64_t queue;                  /* fcm.queue: sends waiting for a token or the bucket */
    char tenants_dir[512];          /* fcm.tenants_dir: more projects, one *.conf each */
};

extern const struct channel_ops fcm_channel;

/* --- test hooks and introspection -------------------------------------- */

/* Wall clock in Unix milliseconds, read through the channel state. */
typedef int64_t (*fcm_clock_fn)(void *arg);

/* Read time through fn(arg) from now on (NULL restores the system clock).
 * The clock decides assertion iat/exp, token expiry and refresh, token
 * endpoint backoff and the rate bucket. */
void fcm_set_clock(void *state, fcm_clock_fn fn, void *arg);

/* Replace http_request for this channel (NULL restores it): same contract
 * as http_request. Lets unit tests answer token and send requests without
 * sockets. */
typedef int (*fcm_transport_fn)(void *arg, const struct channel_request *req,
                                const struct http_req_opts *ropts, http_done_cb done, void *ctx);
void fcm_set_transport(void *state, fcm_transport_fn fn, void *arg);

struct fcm_stats {
    uint64_t token_fetches;          /* token requests started */
    uint64_t token_failures;         /* token requests that brought no token */
    uint64_t token_unauth_refreshes; /* refreshes caused by a 401 on a send */
    int64_t token_fetched_ms;        /* clock when the current token arrived; 0 = none */
    int64_t token_expires_ms;        /* clock when it expires */
    int64_t token_refresh_ms;        /* clock from which a refresh is started */
    bool token_fetching;
    uint64_t sent, ok, retry, drop; /* sends accepted; outcomes */
    uint64_t queued_now;            /* sends waiting now */
    uint64_t rate_waits;            /* times the bucket made a send wait */
};
/* Counters of the main project's credential. */
void fcm_get_stats(void *state, struct fcm_stats *out);
/* Counters of credential i (0 = main config, then the files in name order).
 * 0, or -ENOENT beyond the last. */
int fcm_get_tenant_stats(void *state, unsigned i, struct fcm_stats *out);
/* Project of credential i, or NULL beyond the last. */
const char *fcm_tenant_project(void *state, unsigned i);

/* The main project and its token endpoint (after defaults from the key). */
const char *fcm_project(void *state);
const char *fcm_token_url(void *state);

/*
 * Pure mapping of one FCM v1 answer to an outcome (exposed for tests).
 * body: the JSON answer ({"name":..} or a google.rpc.Status error);
 * retry_after: the header value or NULL (seconds or an HTTP-date, the
 * latter measured from now_ms). A 401 without an FcmError detail comes
 * back RETRY with reason "UNAUTHENTICATED"; the token refresh it calls for
 * is not done here (it needs the channel state).
 */
void fcm_map_answer(int status, const char *body, size_t body_len, const char *retry_after,
                    int64_t now_ms, struct channel_outcome *out);

/* Retry-After value -> milliseconds from now_ms: delta-seconds or an
 * IMF-fixdate HTTP-date, capped at a day; 0 for absent, past or garbage. */
uint64_t fcm_parse_retry_after(const char *v, int64_t now_ms);

/*
 * Token bucket, integer arithmetic (one token = 60000 units, refill =
 * rate units per ms). Kept apart so it can move to platform/ if other
 * channels want it.
 */
struct fcm_bucket {
    uint64_t rate_per_min; /* >= 1 */
    uint64_t cap_units;
    uint64_t level_units;
    int64_t last_ms;
};
void fcm_bucket_init(struct fcm_bucket *b, uint64_t rate_per_min, uint64_t burst, int64_t now_ms);
/* Take one token: 0 when taken, else the ms until one is due (nothing taken). */
uint64_t fcm_bucket_take(struct fcm_bucket *b, int64_t now_ms);
/* Give back a token taken for a request that could not start. */
void fcm_bucket_refund(struct fcm_bucket *b);

#endif
