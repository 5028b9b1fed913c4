/*
 * dispatch.h - between the fanout and the channels: per provider a token
 * bucket, a concurrency bound and a circuit breaker; failover to a backup
 * provider of the same channel; in-flight tracking for a graceful drain;
 * send-to-outcome latency and attempt metrics.
 *
 * A "provider" is one instance of a channel (its own state and
 * credentials): every channel has a primary and may have a backup
 * configured under "<channel>.backup.*". The dispatcher presents each
 * channel to the fanout as a channel itself (dispatch_channel_ops, state =
 * the struct dispatch_chan), so the fanout's send contract is unchanged:
 *
 *  - -EBUSY: local backpressure, not an attempt. The provider has no token
 *    (a loop timer is armed for when one is due: the loop wakes, and the
 *    hub's before-sleep flush sends again - no busy loop), is at its
 *    concurrency bound, its own window is full, or its half-open breaker has
 *    its probes out (their outcomes wake the loop).
 *  - 0: the outcome comes later, exactly once, never from inside send. When
 *    the primary's breaker is open, the send goes to the backup if its
 *    breaker allows; with no usable backup the outcome is CHANNEL_RETRY,
 *    status 0, reason "circuit open", retry_after = time until half-open.
 *
 * Breaker verdicts: no answer (status 0), 5xx and 429 are failures; any
 * other answer (2xx, 4xx drops about a device) shows a healthy provider.
 * Work per send is O(1) with no allocation once the call pool is warm.
 */
#ifndef TIDINGS_DISPATCH_H
#define TIDINGS_DISPATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "breaker.h"
#include "channel.h"
#include "config.h"
#include "loop.h"
#include "metrics.h"

typedef struct dispatch dispatch_t;
struct dispatch_chan;

/* The per-channel engine settings ("<channel>.engine.*", and
 * "<channel>.backup.enabled"); they apply to the primary and to the backup. */
struct dispatch_config {
    int64_t rate;        /* requests/s per provider, 0 = unlimited */
    int64_t burst;       /* 0 = rate */
    int64_t concurrency; /* requests in flight per provider, 0 = only the channel's own bound */
    int64_t br_failures, br_window, br_ratio, br_probes;
    uint64_t br_open_ms;
    bool backup_enabled;
};
#define DISPATCH_CONFIG_N 9

/* Fill out[0..DISPATCH_CONFIG_N) with the entries of channel `chan`, at
 * offset `off` (where its struct dispatch_config lives in the settings
 * blob). The key strings are allocated as one block in *keys (free() it
 * after the table). 0 or -ENOMEM. */
int dispatch_config_table(const char *chan, size_t off, struct config_entry *out, char **keys);

/* The backup provider's settings: the channel's own table with keys
 * "<chan>.backup.<key>" at offsets moved by `delta`. out needs
 * ops->config_n entries; keys as above. 0 or -ENOMEM. */
int dispatch_backup_table(const struct channel_ops *ops, size_t delta, struct config_entry *out,
                          char **keys);

/* After loading the settings: is a backup configured (`enabled`, or any
 * backup key differs from its default)? When it is, every backup key left
 * at its default that dispatch_backup_inherits() allows takes the
 * primary's value (transport and tuning: a backup names only what
 * differs); credentials are never taken from the primary. 1, 0, or
 * -ENOMEM. */
/* Does channel key `key` ("apns.timeout") pass to a backup left at its
 * default? 1 yes (transport, tuning), 0 never (credentials, account
 * identity, tenants), -1 not a known key (treated as never). */
int dispatch_backup_inherits(const char *key);
int dispatch_backup_resolve(const struct channel_ops *ops, const void *primary, void *backup,
                            bool enabled);

dispatch_t *dispatch_create(loop_t *loop, metrics_t *metrics);
/* Destroys every provider's channel state (in-flight requests are aborted
 * and their outcomes never come: the store recovers them at next start). */
void dispatch_destroy(dispatch_t *d);

/* Add a channel. Takes ownership of the states (backup may be NULL).
 * NULL on ENOMEM (the states are then destroyed too). */
struct dispatch_chan *dispatch_add(dispatch_t *d, const char *channel,
                                   const struct channel_ops *ops, void *primary, void *backup,
                                   const struct dispatch_config *cfg);

/* The fanout-facing ops: send (and a destroy that does nothing: the
 * dispatcher owns the providers). */
extern const struct channel_ops dispatch_channel_ops;

/* Provider requests started and not yet answered (for the drain). */
unsigned dispatch_inflight(const dispatch_t *d);

struct dispatch_provider_info {
    const char *channel;  /* "apns" */
    const char *provider; /* "primary" / "backup" */
    enum breaker_state state;
    unsigned inflight;
};
/* Fill up to max entries; returns how many providers there are. */
size_t dispatch_providers(dispatch_t *d, struct dispatch_provider_info *out, size_t max);

#endif
