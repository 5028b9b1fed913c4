/*
 * outbox.h - the agent's durable queue of notifications bound for the hub.
 *
 * One SQLite table in WAL mode. A notification is "accepted" once the
 * transaction holding its row has committed (outbox_commit). Rows leave the
 * outbox only through outbox_ack, i.e. on the hub's application ack, never
 * on the broker's PUBACK. Rows handed to the uplink are marked in flight;
 * every mark is cleared when the outbox is opened, so after a crash or a
 * reconnect anything unacknowledged is sent again (the hub dedupes by id).
 *
 * Order of sending: priority first (critical, high, normal, low), then
 * oldest first.
 */
#ifndef TIDINGS_OUTBOX_H
#define TIDINGS_OUTBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "db.h"

typedef struct outbox outbox_t;

struct outbox_limits {
    uint64_t max_rows;  /* 0 = unlimited */
    uint64_t max_bytes; /* sum of stored notification sizes; 0 = unlimited */
};

struct outbox_stats {
    uint64_t rows, bytes, inflight;
    uint64_t accepted, duplicates, rejected_full;
};

/* Open or create the outbox at path. 0 or negative error with err set. */
int outbox_open(const char *path, enum db_sync sync, const struct outbox_limits *lim,
                outbox_t **out, char *err, size_t errlen);
void outbox_close(outbox_t *ob);

/* Add one serialized notification inside the current write transaction
 * (opened on demand). Returns 0 (added), TDG_EDUPLICATE (same id already
 * queued: the notification is accepted once), TDG_EFULL (over budget), or
 * another negative error. Nothing is durable until outbox_commit. */
int outbox_add(outbox_t *ob, const char *id, int priority, int64_t created_ms, int64_t expires_ms,
               const char *json, size_t len);

/* Commit the open write transaction, if any. 0 or negative error; on error
 * the transaction is rolled back and the caller must report failure for
 * every add since the last commit. */
int outbox_commit(outbox_t *ob);
/* Number of adds waiting for outbox_commit. */
unsigned outbox_pending(const outbox_t *ob);

/* Callback for outbox_take: one row. */
typedef int (*outbox_row_cb)(void *arg, int64_t seq, const char *id, const char *json,
                             size_t len);

/* Hand up to max rows not in flight to cb, in sending order, and mark those
 * cb accepted (returned 0) as in flight. cb returning non-zero stops the walk
 * without marking that row. Returns the number marked, or a negative error. */
int outbox_take(outbox_t *ob, unsigned max, outbox_row_cb cb, void *arg);

/* Clear the in-flight mark of the given rows (their batch timed out). */
int outbox_untake(outbox_t *ob, const int64_t *seqs, size_t n);
/* Clear every in-flight mark (uplink reconnected). */
int outbox_untake_all(outbox_t *ob);

/* Delete the row with this id (hub acked or rejected it). 0, or
 * TDG_ENOTFOUND if no such row (an ack seen twice). Committed at once. */
int outbox_ack(outbox_t *ob, const char *const *ids, size_t n, size_t *deleted);

void outbox_get_stats(const outbox_t *ob, struct outbox_stats *st);

#endif
