/*
 * channel.h - the shape every delivery channel has (APNs, FCM, SMS, email).
 *
 * A channel is one ops table. `format` is pure: it builds the provider
 * request for one delivery with no I/O, so it can be tested against golden
 * files. `send` starts the request on the hub's event loop and reports the
 * outcome exactly once through the done callback (possibly after send has
 * returned; never from inside send itself). Results are ok, retry (with a
 * delay) or drop (permanent, with a reason that is stored).
 */
#ifndef TIDINGS_CHANNEL_H
#define TIDINGS_CHANNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "loop.h"
#include "proto.h"

struct http; /* hub/http.h */

enum channel_result { CHANNEL_OK = 0, CHANNEL_RETRY, CHANNEL_DROP };
const char *channel_result_name(enum channel_result r);

/* What a channel needs to know about the target device. */
struct channel_device {
    const char *user_id;
    const char *platform;    /* "ios", "android", "desktop" */
    const char *token;       /* provider device token */
    const char *app;         /* APNs topic (bundle id) / FCM project */
    const char *environment; /* "production" or "sandbox" */
};

/* One delivery: one notification to one device on one channel. */
struct channel_delivery {
    uint64_t attempt_id; /* the hub's attempt row, recorded before send */
    const struct notification *n;
    const struct channel_device *dev;
    int64_t now_ms;      /* wall clock at send; used for ttl -> expiration */
};

#define CHANNEL_REASON_MAX 96
#define CHANNEL_PROVIDER_ID_MAX 128 /* FCM message names reach 84 bytes */

struct channel_outcome {
    enum channel_result result;
    uint64_t retry_after_ms;  /* CHANNEL_RETRY: provider's hint, 0 = use backoff */
    int status;               /* HTTP status or SMTP code; 0 = no answer */
    char reason[CHANNEL_REASON_MAX];           /* provider reason ("Unregistered") or transport error */
    char provider_id[CHANNEL_PROVIDER_ID_MAX]; /* apns-id, FCM message name, SMS SID */
    int64_t token_invalid_since_ms; /* APNs 410 timestamp; 0 when none */
    int device_action; /* CHANNEL_DEVICE_* : what the hub should do to the device */
};

enum { CHANNEL_DEVICE_NONE = 0, CHANNEL_DEVICE_DISABLE, CHANNEL_DEVICE_FLAG };

typedef void (*channel_done_cb)(void *ctx, const struct channel_outcome *outcome);

/* A formatted provider request (output of `format`). */
#define CHANNEL_MAX_HEADERS 12
#define CHANNEL_AUTH_MAX 2304 /* Google documents access tokens up to 2048 bytes */
struct channel_request {
    char url[512];
    char method[8];
    char headers[CHANNEL_MAX_HEADERS][256]; /* "name: value" */
    unsigned nheaders;
    /* The Authorization header's value ("Bearer ...", "Basic ..."), "" for
     * none. Apart from headers[] because OAuth2 access tokens outgrow a
     * 256-byte slot; format resets it together with nheaders. */
    char authorization[CHANNEL_AUTH_MAX];
    char body[PROTO_MAX_WIRE + 1024];
    size_t body_len;
};

/* Shared by the channels' format functions. */

/* Empty req for a new format: no headers, no authorization, no body, no URL. */
void channel_request_reset(struct channel_request *req);

/* A header value (1..max bytes) that cannot end its line or start another
 * one: no control characters. */
bool channel_header_value_ok(const char *v, size_t max);
/* An https:// URL with a host part that fits a header value (255 bytes). */
bool channel_https_url_ok(const char *u);
/* Cut trailing slashes off a base URL (so "<base>/path" has one). */
void channel_trim_slash(char *s);

/* Append a "name: value" header. 0, or -ENOSPC when there is no free slot or
 * the line does not fit one (req unchanged). */
int channel_add_header(struct channel_request *req, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* channel_add_header(req, "%s%s", prefix, value) and (req, "%s%" PRId64,
 * prefix, v) without printf: the per-request headers of the hot path. */
int channel_add_header_str(struct channel_request *req, const char *prefix, const char *value);
int channel_add_header_int(struct channel_request *req, const char *prefix, int64_t v);

/* Fill out as a permanent drop with reason and device action; returns err
 * (for "return channel_drop(...)" in format). */
int channel_drop(struct channel_outcome *out, const char *reason, int device_action, int err);

/*
 * Retry-After (RFC 9110 10.2.3) -> milliseconds from now_ms: delta-seconds,
 * or an HTTP-date (IMF-fixdate, and the obsolete RFC 850 and asctime forms
 * recipients must accept) measured from now_ms (Unix ms). Clamped to
 * CHANNEL_RETRY_AFTER_MAX_S; 0 for absent, past or malformed values (the
 * engine's backoff decides then).
 */
#define CHANNEL_RETRY_AFTER_MAX_S 86400
uint64_t channel_retry_after_ms(const char *v, int64_t now_ms);

/* An HTTP-date as Unix seconds, or -1 when v is none of the three forms. */
int64_t channel_parse_http_date(const char *v);

/* Fill out (cleared first) as a retry after after_ms (0 = the engine's
 * backoff) with a printf-formatted reason. */
void channel_retry(struct channel_outcome *out, uint64_t after_ms, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Fill out as the retry for an HTTP request that got no (complete) answer:
 * the status seen (if any) and the transport's error text, else the
 * error's name. The request may or may not have reached the provider. */
struct http_response; /* hub/http.h */
void channel_no_answer(struct channel_outcome *out, const struct http_response *resp);

/* The wall clock in Unix ms, as a channel's replaceable clock function. */
int64_t channel_wall_clock(void *arg);

/* --- calls in flight --------------------------------------------------------
 *
 * What every channel keeps per accepted send, from send until its done
 * callback: the callback and its context, and the 0 ms timer that reports
 * an outcome known inside send (done never runs inside send). A channel's
 * own call struct starts with a struct channel_call (its first member) and
 * adds what its protocol needs; each channel instance holds one struct
 * channel_calls: its live calls, the loop, and where it counts them.
 */
struct channel_calls;

struct channel_call {
    struct channel_call *prev, *next; /* the owner's live calls */
    struct channel_calls *owner;
    channel_done_cb done;
    void *ctx;
    uint64_t timer_id; /* != 0: a deferred outcome is pending */
    struct channel_outcome deferred;
};

struct channel_calls {
    loop_t *loop;
    struct channel_call *head;
    /* The instance's counters (pointers into its stats): sent counts calls
     * linked (accepted by send), ok/retry/drop the outcomes reported. */
    uint64_t *sent, *ok, *retry, *drop;
    /* Frees a call that is done or aborted; NULL = free(c). */
    void (*release)(struct channel_call *c);
};

/* Start cs empty: calls on loop, counted into the given counters, freed
 * with release (NULL = free). */
void channel_calls_init(struct channel_calls *cs, loop_t *loop, uint64_t *sent, uint64_t *ok,
                        uint64_t *retry, uint64_t *drop, void (*release)(struct channel_call *c));
/* Set c's owner, callback and context (the rest is the caller's). */
void channel_call_init(struct channel_calls *cs, struct channel_call *c, channel_done_cb done,
                       void *ctx);
/* Accept c: it is live (destroy aborts it) and counted as sent. */
void channel_call_link(struct channel_call *c);
/* Report o for c from a 0 ms timer, and accept c. 0, or -ENOMEM (c is not
 * linked; the caller still owns it). */
int channel_call_defer(struct channel_call *c, const struct channel_outcome *o);
/* Unlink c, count o, free c, then call its done callback with o. */
void channel_call_finish(struct channel_call *c, const struct channel_outcome *o);
/* Free every live call without calling done (destroy; after the transport
 * that could still answer them is gone). Deferred timers are cancelled. */
void channel_calls_abort(struct channel_calls *cs);

/* --- the members that channel_ops and channel_tenant_ops share ------------ */

/* name, config, config_n and config_size from the channel's config table
 * (an array) and the struct it fills. */
#define CHANNEL_CONFIG_MEMBERS(name_, table_, config_type_)                                        \
    .name = (name_), .config = (table_), .config_n = sizeof(table_) / sizeof((table_)[0]),         \
    .config_size = sizeof(config_type_)

/* CHANNEL_CONFIG_MEMBERS and the tenants dir of a channel_tenant_ops: the
 * config struct's char[] tenants_dir, the key "<name>.tenants_dir". */
#define CHANNEL_TENANT_MEMBERS(name_, table_, config_type_)                                        \
    CHANNEL_CONFIG_MEMBERS(name_, table_, config_type_),                                           \
        .tenants_dir_offset = offsetof(config_type_, tenants_dir),                                 \
        .tenants_dir_key = name_ ".tenants_dir"

/* format, send and destroy of a channel made of tenants (a channel_set). */
#define CHANNEL_SET_MEMBERS                                                                        \
    .format = channel_set_format, .send = channel_set_send, .destroy = channel_set_destroy

/*
 * Where a channel reports what the provider says about a message after the
 * send finished (SMS delivery receipts: "delivered", "undelivered" with an
 * error code, ...). provider_id is the id the ok outcome carried (the SMS
 * SID). Called on the loop; may be NULL (nobody listens).
 */
typedef void (*channel_status_fn)(void *arg, const char *channel, const char *provider_id,
                                  const char *status, int error_code);

/*
 * Where a channel keeps what it still follows after a send, so that a
 * restarted hub picks it up again (SMS: the messages whose status is being
 * polled). until_ms > 0 (Unix ms): provider_id, sent by the sender whose
 * account is `account`, is followed until then; until_ms == 0: it is no
 * longer followed (final status, provider forgot it, gave up). Not called on
 * destroy: what is followed at shutdown stays recorded. Called on the loop;
 * may be NULL (nothing survives a restart).
 */
typedef void (*channel_watch_fn)(void *arg, const char *channel, const char *provider_id,
                                 const char *account, int64_t until_ms);

struct channel_env {
    loop_t *loop;
    struct http *http; /* shared HTTP/2 client on the loop */
    channel_status_fn status; /* delivery status sink; NULL = none */
    void *status_arg;
    channel_watch_fn watch; /* durable follow-up records; NULL = none */
    void *watch_arg;
};

struct channel_ops {
    const char *name;                  /* "apns" */
    const struct config_entry *config; /* keys are "<name>.<key>" */
    size_t config_n;
    size_t config_size; /* sizeof the config struct the table fills */
    /* Create channel state from a filled config struct. 0 or negative error
     * with err set. */
    int (*init)(const struct channel_env *env, const void *config, void **state, char *err,
                size_t errlen);
    /* Pure: build the request for d into req. 0, or a negative error with
     * outcome->reason set when d cannot be sent at all (a permanent drop). */
    int (*format)(void *state, const struct channel_delivery *d, struct channel_request *req,
                  struct channel_outcome *outcome);
    /* Start sending d; done(ctx, outcome) is called exactly once later. 0, or
     * a negative error (then done is never called). */
    int (*send)(void *state, const struct channel_delivery *d, channel_done_cb done, void *ctx);
    /* Abort in-flight requests (their done callbacks are not called) and free. */
    void (*destroy)(void *state);
};

/* --- several credentials in one channel ---------------------------------
 *
 * One hub may hold several APNs keys (teams), Firebase projects or SMS
 * senders. A channel does that inside its own state, so fanout and the ops
 * table do not change: its ops are a channel_set, which holds one complete
 * instance ("tenant") of the channel per credential and picks one per
 * delivery with the channel's select function.
 *
 * Tenant 0 comes from the main config (`<name>.*`). More come from the
 * directory named by the config's tenants-dir key: every "*.conf" in it (in
 * name order, at most CHANNEL_TENANTS_MAX) is one credential, parsed with
 * the channel's own config table over its defaults (same keys, errors as
 * "file:line: key: reason"). A tenant file may not name a tenants dir
 * itself.
 */
#define CHANNEL_TENANTS_MAX 32

struct channel_tenant_ops {
    const char *name;                  /* "apns" */
    const struct config_entry *config; /* the channel's table (keys "<name>.<key>") */
    size_t config_n;
    size_t config_size;
    size_t tenants_dir_offset; /* offset of the char[] tenants-dir key in the config */
    const char *tenants_dir_key; /* its name, for messages: "apns.tenants_dir" */
    /* One credential: the channel's own init/format/send/destroy. */
    int (*init)(const struct channel_env *env, const void *config, void **state, char *err,
                size_t errlen);
    int (*format)(void *state, const struct channel_delivery *d, struct channel_request *req,
                  struct channel_outcome *outcome);
    int (*send)(void *state, const struct channel_delivery *d, channel_done_cb done, void *ctx);
    void (*destroy)(void *state);
    /* Pure: the index of the tenant that serves d, or -1 with outcome set to
     * a drop whose reason says why none does. tenants[0] is the main one. */
    int (*select)(void *const *tenants, unsigned n, const struct channel_delivery *d,
                  struct channel_outcome *outcome);
    /* After every tenant is up: refuse a set that makes no sense (two
     * tenants claiming one topic). names[i] is "main config" or the file.
     * 0, or TDG_ECONFIG with err set. May be NULL. */
    int (*check)(void *const *tenants, const char *const *names, unsigned n, char *err,
                 size_t errlen);
};

typedef struct channel_set channel_set;

/* Create tenant 0 from config and one tenant per file of its tenants dir.
 * 0, or a negative error with err naming the file (and line or key). */
int channel_set_create(const struct channel_tenant_ops *t, const struct channel_env *env,
                       const void *config, channel_set **out, char *err, size_t errlen);
/* The channel_ops members of a channel made of tenants (state = channel_set). */
int channel_set_format(void *set, const struct channel_delivery *d, struct channel_request *req,
                       struct channel_outcome *outcome);
int channel_set_send(void *set, const struct channel_delivery *d, channel_done_cb done,
                     void *ctx);
void channel_set_destroy(void *set);

unsigned channel_set_count(const void *set);
/* Tenant i's state (NULL beyond the count) and its name ("main config" or
 * the file's path). */
void *channel_set_tenant(const void *set, unsigned i);
const char *channel_set_name(const void *set, unsigned i);
/* Deliveries each tenant was chosen for, and those no tenant served. */
uint64_t channel_set_selected(const void *set, unsigned i);
uint64_t channel_set_unserved(const void *set);

/* For select: fill out (cleared first) as a drop whose printf-formatted
 * reason says why no tenant serves the delivery; returns -1. */
int channel_no_tenant(struct channel_outcome *out, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* For check: tenant i's claims (topics, prefixes: got from claims(t[i], &n))
 * against its own earlier ones and every earlier tenant's. 0, or
 * TDG_ECONFIG with err "<names[i]>: <key>: <claim> is already served by
 * <names[j]>" (the claim cut at 64 bytes). */
typedef const char *const *(*channel_claims_fn)(const void *tenant, unsigned *n);
int channel_check_claims(void *const *t, const char *const *names, unsigned i,
                         channel_claims_fn claims, const char *key, char *err, size_t errlen);

/* Another instance of the same channel whose tenants count as this one's
 * for what providers post back (the dispatch layer's backup provider: a
 * status callback for a message the backup sent is signed with the backup's
 * credentials). peer (a channel_set of the same channel, or NULL) must stay
 * alive as long as set is used; neither owns the other. */
void channel_set_link_peer(void *set, void *peer);
/* The linked peer, or NULL. */
void *channel_set_peer(const void *set);

/* Read the first line of path (a secret: a token, a password) into buf,
 * trailing blanks and line ending cut. 0, -errno, -ENODATA (empty file) or
 * -ENOSPC (longer than cap - 1). The stack copy is wiped. */
int channel_read_secret(const char *path, char *buf, size_t cap);
/* The same, but only cut at the first CR or LF: blanks are kept (a password
 * may end in one). */
int channel_read_secret_line(const char *path, char *buf, size_t cap);

/* Split a comma-separated list ("com.a.app, com.b.app") into at most max
 * trimmed items pointing into buf (modified in place). Returns the count, or
 * -E2BIG (more than max), -EINVAL (an empty item). */
int channel_split_list(char *buf, const char **items, unsigned max);

#endif
