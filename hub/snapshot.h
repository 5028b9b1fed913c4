/*
 * snapshot.h - the agents' preference snapshots (docs/policy.md format v1).
 *
 * For each agent, the preferences of the users bound to it
 * (store_agent_users) with their time zones, published retained with QoS 1
 * on tidings/v1/agents/{agent}/policy: after every connect to the broker
 * (for every agent named in a binding, and for every agent whose retained
 * status the hub sees), and again when a preference, time zone or binding
 * of one of its users changes (snapshot_changed). "version" is the store's
 * policy revision, which grows with every change.
 *
 * Known agents are kept in a bounded list (SNAPSHOT_AGENTS_MAX); beyond it,
 * an agent still gets its snapshot when its status is seen, but not on a
 * later change (logged once).
 */
#ifndef TIDINGS_SNAPSHOT_H
#define TIDINGS_SNAPSHOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mqtt.h"
#include "store.h"

#define SNAPSHOT_AGENTS_MAX 4096
#define SNAPSHOT_USERS_MAX 1024          /* the agent's limit (docs/policy.md) */
#define SNAPSHOT_BYTES_MAX (1024 * 1024) /* the agent's limit */

typedef struct snapshot snapshot_t;

snapshot_t *snapshot_create(store_t *store);
void snapshot_destroy(snapshot_t *sn);

/* Build agent's snapshot with this version: *out (malloc'd, free()) and
 * *len. Users over SNAPSHOT_USERS_MAX are left out (logged). 0 or error. */
int snapshot_build(store_t *store, const char *agent, int64_t version, char **out, size_t *len);

/* After a (re)connect: forget what was published, publish for every agent
 * named in a binding. */
void snapshot_publish_all(snapshot_t *sn, mqtt_t *mqtt);
/* An agent's status message was seen: publish its snapshot if that was not
 * done since the connect. */
void snapshot_agent_seen(snapshot_t *sn, mqtt_t *mqtt, const char *agent);
/* The preferences, time zone or bindings of user_id (NULL: anyone's)
 * changed and are committed. Nothing is written or published here:
 * snapshot_prepare() bumps the revision in the next iteration's transaction
 * and snapshot_flush() publishes, after that commit, for the agents bound to
 * the changed users. So a retained snapshot never carries a revision the
 * store does not have (a hub killed in between publishes it after the
 * restart, on connect). */
void snapshot_changed(snapshot_t *sn, const char *user_id);
/* A change waits for snapshot_prepare()/snapshot_flush(): the caller makes
 * sure another loop iteration runs (hub.c arms a 0 ms timer). */
bool snapshot_pending(const snapshot_t *sn);
/* Before the iteration's commit: bump the revision for pending changes. */
void snapshot_prepare(snapshot_t *sn);
/* After the commit (committed: it succeeded): publish the pending agents'
 * snapshots; on a failed commit the bump is redone next iteration. */
void snapshot_flush(snapshot_t *sn, mqtt_t *mqtt, bool committed);

#endif
