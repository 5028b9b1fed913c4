/*
 * agentlimit.h - per-agent intake limits: a rate (token bucket) and a daily
 * quota.
 *
 * Over the rate, a batch is *delayed*, not rejected: intake leaves the
 * whole batch un-acked and the agent resends it after its ack timeout (the
 * agent treats a rejection as final, and a burst is no reason to lose a
 * notification). The rate is checked per batch - its first item needs a
 * token, the others are charged to the bucket (debt) - because the agent
 * resends un-acked items by batch: a batch acked in part would leave its
 * other items waiting in the agent's outbox until it restarts.
 * Over the quota (accepted notifications per UTC day, counted durably in
 * the store's agent_quota table), an item is rejected with over_quota - a
 * hard limit the operator set. Duplicates of stored ids are never counted
 * or refused.
 *
 * State per agent lives in a fixed table of AGENTLIMIT_SLOTS entries (LRU
 * among AGENTLIMIT_PROBE candidate slots): a forgotten agent's bucket starts
 * full again and its quota count is read back from the store.
 */
#ifndef TIDINGS_AGENTLIMIT_H
#define TIDINGS_AGENTLIMIT_H

#include <stdbool.h>
#include <stdint.h>

#include "store.h"

#define AGENTLIMIT_SLOTS 4096
#define AGENTLIMIT_PROBE 8

typedef struct agentlimit agentlimit_t;

enum agentlimit_verdict {
    AGENTLIMIT_OK = 0,
    AGENTLIMIT_DELAY,      /* over the rate: do not ack, the agent resends */
    AGENTLIMIT_OVER_QUOTA, /* over today's quota: reject with over_quota */
};

/* rate per second (0 = none), burst (0 = rate), quota per day (0 = none).
 * NULL on ENOMEM. */
agentlimit_t *agentlimit_create(store_t *store, uint64_t rate, uint64_t burst, int64_t quota);
void agentlimit_destroy(agentlimit_t *al);

/* Before storing an item from agent. first: the batch's first item (the
 * rate is decided there; later items of an admitted batch are charged and
 * never delayed). mono_ms: monotonic ms; wall_ms: for the quota day. A
 * store error answers AGENTLIMIT_DELAY (resent later). */
enum agentlimit_verdict agentlimit_check(agentlimit_t *al, const char *agent, bool first,
                                         uint64_t mono_ms, int64_t wall_ms);

/* An item of agent was stored (not a duplicate): count it against the
 * quota, in the iteration's transaction. */
void agentlimit_accepted(agentlimit_t *al, const char *agent, int64_t wall_ms);

/* True when agentlimit_accepted counts (a quota is set): agentlimit_check
 * then depends on every earlier agentlimit_accepted. */
bool agentlimit_counts(const agentlimit_t *al);

#endif
