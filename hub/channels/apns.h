/*
 * apns.h - Apple Push Notification service channel (HTTP/2, token auth).
 *
 * A credential is one signing key (Apple's AuthKey_<KEYID>.p8) and one
 * provider token made from it, shared by every request of that key and
 * re-signed every apns.token_refresh (20..60 min, as Apple requires); or a
 * provider certificate (apns.cert_file, PEM or PKCS#12) presented as the TLS
 * client certificate, with no authorization header.
 *
 * One channel holds several credentials (channel.h, "several credentials"):
 * the main config's, and one per *.conf file in apns.tenants_dir, each with
 * apns.topics naming the bundle ids it serves. A delivery goes to the
 * credential whose topics hold the device's app (apns-topic); the main
 * credential with no apns.topics takes every topic no file claims. A topic
 * nobody serves is dropped "NoCredentialForTopic: <topic>". Each credential
 * has its own token and its own HTTP/2 connections. A 403
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
    char cert_file[512];       /* apns.cert_file: certificate auth instead of key_file */
    char cert_key_file[512];   /* apns.cert_key_file: its PEM key when not in cert_file */
    char cert_password_file[512]; /* apns.cert_password_file: PKCS#12 / key password */
    char topics[1024];         /* apns.topics: bundle ids this credential serves */
    char tenants_dir[512];     /* apns.tenants_dir: more credentials, one *.conf each */
};

#define APNS_TOPICS_MAX 64 /* bundle ids per credential */

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
/* Counters of the main credential. */
void apns_get_stats(void *state, struct apns_stats *out);
/* Counters of credential i (0 = main config, then the files in name order).
 * 0, or -ENOENT beyond the last. */
int apns_get_tenant_stats(void *state, unsigned i, struct apns_stats *out);

/*
 * Pure mapping of one APNs answer to an outcome (exposed for tests).
 * body: the JSON error body ({"reason":..,"timestamp":..}) or empty;
 * apns_id / retry_after: header values or NULL (Retry-After in seconds or
 * as an HTTP-date, measured from now_ms). The 403 ExpiredProviderToken
 * token refresh is not done here (it needs the channel state).
 */
void apns_map_answer(int status, const char *body, size_t body_len, const char *apns_id,
                     const char *retry_after, int64_t now_ms, struct channel_outcome *out);

#endif
