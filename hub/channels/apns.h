/*
 * apns.h - Apple Push Notification service channel (HTTP/2, token auth).
 *
 * One channel instance holds one signing key (Apple's AuthKey_<KEYID>.p8) and
 * one provider token made from it, shared by every request and re-signed
 * every apns.token_refresh (20..60 min, as Apple requires). A 403
 * ExpiredProviderToken triggers an early re-sign only if the token is at
 * least 20 minutes old, so a burst of such answers never becomes a refresh
 * storm (Apple answers TooManyProviderTokenUpdates to that).
 *
 * The channel owns its HTTP/2 client (hub/http.h) on env->loop: connection
 * count, stream count, CA file and timeout are APNs settings, and curl keeps
 * those per multi handle. env->http is not used.
 *
 * See docs/channels.md for the field -> header/payload table and the answer
 * -> outcome table.
 */
#ifndef TIDINGS_APNS_H
#define TIDINGS_APNS_H

#include <stddef.h>
#include <stdint.h>

#include "channel.h"

#define APNS_PAYLOAD_MAX 4096  /* Apple's limit for alert and background pushes */
#define APNS_TOKEN_HEX_MAX 200 /* device tokens are hex; 64 chars today */
#define APNS_REFRESH_MIN_MS (20u * 60u * 1000u)
#define APNS_REFRESH_MAX_MS (60u * 60u * 1000u)

/* Filled by config_defaults/config_load from apns_channel.config. */
struct apns_config {
    char url[256];             /* apns.url */
    char sandbox_url[256];     /* apns.sandbox_url: for devices with environment "sandbox";
                                  empty = apns.url */
    char key_file[512];        /* apns.key_file: PKCS#8 PEM, EC P-256 */
    char key_id[33];           /* apns.key_id: the 10-character key id */
    char team_id[33];          /* apns.team_id: the 10-character team id */
    char topic[256];           /* apns.topic: bundle id for devices that carry none */
    char ca_file[512];         /* apns.ca_file: empty = system CAs */
    uint64_t token_refresh_ms; /* apns.token_refresh */
    uint64_t timeout_ms;       /* apns.timeout: whole request */
    int64_t connections;       /* apns.connections: HTTP/2 connections per host */
    int64_t max_streams;       /* apns.max_streams: concurrent streams per connection */
};

extern const struct channel_ops apns_channel;

/* Wall clock in Unix milliseconds, read through the channel state. */
typedef int64_t (*apns_clock_fn)(void *arg);

/*
 * Test hook: read time through fn(arg) from now on (NULL restores the system
 * clock), and re-sign the provider token at the new "now" so the simulated
 * timeline starts clean. The clock decides token iat and token age; delivery
 * expiry uses channel_delivery.now_ms.
 */
void apns_set_clock(void *state, apns_clock_fn fn, void *arg);

struct apns_stats {
    uint64_t token_signs; /* provider tokens signed (1 after init) */
    int64_t token_iat_ms; /* when the current token was signed (clock ms) */
    uint64_t sent, ok, retry, drop;
};
void apns_get_stats(void *state, struct apns_stats *out);

/*
 * Pure mapping of one APNs answer to an outcome (exposed for tests).
 * body: the JSON error body ({"reason":..,"timestamp":..}) or empty;
 * apns_id / retry_after: header values or NULL. The 403 ExpiredProviderToken
 * token refresh is not done here (it needs the channel state).
 */
void apns_map_answer(int status, const char *body, size_t body_len, const char *apns_id,
                     const char *retry_after, struct channel_outcome *out);

#endif
