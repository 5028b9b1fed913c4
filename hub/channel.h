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

/* Append a "name: value" header. 0, or -ENOSPC when there is no free slot or
 * the line does not fit one (req unchanged). */
int channel_add_header(struct channel_request *req, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Fill out as a permanent drop with reason and device action; returns err
 * (for "return channel_drop(...)" in format). */
int channel_drop(struct channel_outcome *out, const char *reason, int device_action, int err);

struct channel_env {
    loop_t *loop;
    struct http *http; /* shared HTTP/2 client on the loop */
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

#endif
