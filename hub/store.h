/*
 * store.h - the hub's durable state: notifications, attempts, users, devices.
 *
 * SQLite is the embedded backend; every query lives here so a PostgreSQL
 * backend can implement the same functions.
 *
 * Writes go into one transaction opened on demand and committed once per
 * loop iteration by store_commit(): the hub acks an agent and starts a
 * provider request only after the commit that recorded it. That gives group
 * commit at high rates and the ordering the delivery guarantees need.
 *
 * Notification states: queued -> sending -> delivered | failed | suppressed |
 * expired | dropped. Attempt states: sending -> ok | retry | drop |
 * interrupted (the hub stopped while it was in flight).
 */
#ifndef TIDINGS_STORE_H
#define TIDINGS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "db.h"
#include "proto.h"

typedef struct store store_t;

int store_open(const char *path, enum db_sync sync, store_t **out, char *err, size_t errlen);
void store_close(store_t *s);

/* Commit the open transaction, if any. 0 or negative error (rolled back). */
int store_commit(store_t *s);

/* Record an accepted notification as queued (or expired, when its ttl,
 * counted from accepted_at, has already passed). *inserted is false when the
 * id was already known (dedupe: the agent resent it). */
int store_add_notification(store_t *s, const struct notification *n, const char *agent,
                           const char *json, size_t len, int64_t now_ms, bool *inserted);

typedef void (*store_notification_cb)(void *arg, const char *id, const char *json, size_t len,
                                      int64_t expires_ms);
/* Move up to max queued notifications (priority first, then oldest) to
 * 'sending' and hand each to cb. Returns how many, or a negative error. */
int store_take_queued(store_t *s, unsigned max, store_notification_cb cb, void *arg);

/* Set a notification's state with a reason ("" for none). */
int store_set_state(store_t *s, const char *id, const char *state, const char *reason,
                    int64_t now_ms);

/* Record an attempt before it is sent. */
int store_attempt_begin(store_t *s, const char *id, const char *channel, int64_t device_id,
                        int64_t now_ms, int64_t *attempt_id);
/* Record its outcome: state "ok" / "retry" / "drop". */
int store_attempt_end(store_t *s, int64_t attempt_id, const char *state, int status,
                      const char *reason, const char *provider_id, int64_t now_ms);

struct store_device {
    int64_t id;
    const char *user_id, *platform, *token, *app, *environment;
};
typedef void (*store_device_cb)(void *arg, const struct store_device *d);
/* Active devices of a user. Returns the count, or a negative error. */
int store_user_devices(store_t *s, const char *user_id, store_device_cb cb, void *arg);
/* Is there such a user? 1, 0 or a negative error. */
int store_user_exists(store_t *s, const char *user_id);

/* Directory writes (the admin API and the bootstrap config use these). */
int store_user_upsert(store_t *s, const char *user_id, const char *tz, int64_t now_ms);
int store_device_upsert(store_t *s, const char *user_id, const char *platform, const char *token,
                        const char *app, const char *environment, int64_t now_ms);
int store_device_set_state(store_t *s, int64_t device_id, const char *state, const char *reason,
                           int64_t now_ms);

/* After a restart: notifications left 'sending' go back to 'queued' and
 * their open attempts become 'interrupted'. Returns how many were requeued. */
int store_recover(store_t *s, int64_t now_ms);

/* Count of notifications by state, for logs and tests. */
int store_count_state(store_t *s, const char *state, int64_t *out);

#endif
