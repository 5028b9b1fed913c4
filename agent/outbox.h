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

/* What outbox_add does when a new notification would go over budget. */
enum outbox_full_policy {
    OUTBOX_FULL_REJECT = 0,         /* refuse it (TDG_EFULL) */
    OUTBOX_FULL_DROP_OLDEST_LOWEST, /* make room: delete the oldest row of the lowest
                                     * priority <= the new one's (never a higher one, never
                                     * one in flight), record it in `dropped`; TDG_EFULL
                                     * only when no such row is left */
};

struct outbox_limits {
    uint64_t max_rows;  /* 0 = unlimited */
    uint64_t max_bytes; /* sum of stored notification sizes; 0 = unlimited */
    enum outbox_full_policy full_policy;
    /* Ceiling of SQLite's page cache for the outbox's connection (PRAGMA
     * cache_size), in bytes; 0 = OUTBOX_CACHE_DEFAULT. The outbox is written
     * at its end and read at its front, so a small cache costs little speed
     * and keeps memory flat however deep the queue is (docs/bench.md). */
    uint64_t cache_bytes;
};

/* Default page cache: 128 KiB (SQLite's own default is 2 MiB per connection;
 * 256 KiB until session 6: filling 1M rows ran at the same rate with 128 KiB,
 * and the aarch64 agent's VmRSS with 1M queued came under 4 MiB; docs/bench.md,
 * agent-footprint). */
#define OUTBOX_CACHE_DEFAULT (128u * 1024u)
/* The WAL file is truncated back to this size after a checkpoint resets it
 * (PRAGMA journal_size_limit); a worker thread checkpoints every
 * OUTBOX_CKPT_PAGES new pages (~4 MiB) and starts the WAL over once it
 * reaches OUTBOX_CKPT_RESTART_PAGES (32 MiB); the loop checkpoints itself
 * only past 4 x that (db_ckpt_start). Each restart holds the loop's next
 * commit for the worker's last copy and syncs, so the bound sets how often:
 * at 5,000/s about every 0.7 s with 8192 pages, every ~180 ms with 2048
 * (e2e p99 at 5,000/s, 7 runs on a loaded disk: median 39 ms against 85
 * with 2048 and 148 before the worker restarted it; docs/bench.md). */
#define OUTBOX_WAL_LIMIT (4 * 1024 * 1024)
#define OUTBOX_CKPT_PAGES 1000
#define OUTBOX_CKPT_RESTART_PAGES 8192

struct outbox_stats {
    uint64_t rows, bytes, inflight;
    uint64_t accepted, duplicates, rejected_full;
    uint64_t dropped;        /* rows deleted to make room, since open (committed) */
    uint64_t dropped_rows;   /* rows in the `dropped` table (kept across restarts) */
    uint64_t by_priority[4]; /* committed rows per priority (PROTO_PRIO_LOW..CRITICAL),
                              * in flight or not; kept in memory, never counted */
};

/* Rows kept in the `dropped` table; older records are pruned. */
#define OUTBOX_DROPPED_KEEP 100000

/* Open or create the outbox at path. 0 or negative error with err set. */
int outbox_open(const char *path, enum db_sync sync, const struct outbox_limits *lim,
                outbox_t **out, char *err, size_t errlen);
void outbox_close(outbox_t *ob);

/* Add one serialized notification inside the current write transaction
 * (opened on demand). Returns 0 (added), TDG_EDUPLICATE (same id already
 * queued: the notification is accepted once), TDG_EFULL (over budget and,
 * under OUTBOX_FULL_DROP_OLDEST_LOWEST, nothing it may drop), or another
 * negative error. Drops made for it are part of the same transaction: they
 * happen exactly when the add is committed. Nothing is durable until
 * outbox_commit. */
int outbox_add(outbox_t *ob, const char *id, int priority, int64_t created_ms, int64_t expires_ms,
               const char *json, size_t len);

/* Commit the open write transaction, if any. 0 or negative error; on error
 * the transaction is rolled back and the caller must report failure for
 * every add since the last commit. */
int outbox_commit(outbox_t *ob);
/* Number of adds waiting for outbox_commit. */
unsigned outbox_pending(const outbox_t *ob);

/* Callback for outbox_take: one row. */
typedef int (*outbox_row_cb)(void *arg, int64_t seq, const char *id, const char *json, size_t len);

/* Hand up to max rows not in flight to cb, in sending order, and mark those
 * cb accepted (returned 0) as in flight. cb returning non-zero stops the walk
 * without marking that row. Returns the number marked, or a negative error. */
int outbox_take(outbox_t *ob, unsigned max, outbox_row_cb cb, void *arg);
/* The same, only rows of at least min_priority (PROTO_PRIO_*). */
int outbox_take_prio(outbox_t *ob, unsigned max, int min_priority, outbox_row_cb cb, void *arg);

/* Clear the in-flight mark of the given rows (their batch timed out). */
int outbox_untake(outbox_t *ob, const int64_t *seqs, size_t n);
/* Clear every in-flight mark (uplink reconnected). */
int outbox_untake_all(outbox_t *ob);

/* Delete the row with this id (hub acked or rejected it). 0, or
 * TDG_ENOTFOUND if no such row (an ack seen twice). Committed at once. */
int outbox_ack(outbox_t *ob, const char *const *ids, size_t n, size_t *deleted);

void outbox_get_stats(const outbox_t *ob, struct outbox_stats *st);

/* created_ms of the oldest committed row (the smallest seq) in *ms, 0 when
 * the outbox is empty. One b-tree descent on the outbox's own connection,
 * whatever the queue's depth. 0 or a negative error. */
int outbox_oldest(outbox_t *ob, int64_t *ms);

/* Where notification id is in this file: still queued, handed to the
 * uplink and not acked yet, or dropped over budget (the `dropped` record,
 * with its reason and time). A row of the open transaction counts. */
enum outbox_found_state {
    OUTBOX_FOUND_NONE = 0,
    OUTBOX_FOUND_QUEUED,
    OUTBOX_FOUND_IN_FLIGHT,
    OUTBOX_FOUND_DROPPED,
};
struct outbox_found {
    enum outbox_found_state state;
    int64_t at_ms; /* created_ms (queued, in flight) or dropped_ms */
    char reason[64];
};
/* Two lookups over unique/indexed ids. 0, TDG_ENOTFOUND (f->state NONE), or
 * a database error. */
int outbox_find(outbox_t *ob, const char *id, struct outbox_found *f);

/* --- sharing the write transaction ------------------------------------------
 * The local delivery queue (agent/localq.h) keeps its table in the outbox's
 * file (migration 2) and writes through the outbox's connection, inside the
 * same write transaction that outbox_commit closes: a "to":"local"
 * notification is then accepted by exactly the commit that accepts the
 * hub-bound ones of the same round ("accepted means stored"). */

struct sqlite3;

/* The outbox's connection, for statements prepared on the same file. Valid
 * until outbox_close; finalize those statements before it. */
struct sqlite3 *outbox_db(outbox_t *ob);

/* Open the write transaction (the one outbox_commit closes) if it is not
 * open yet. 0 or a negative error. */
int outbox_begin(outbox_t *ob);

/* Called after every end of that write transaction: rc 0 when it committed,
 * negative when the commit failed and it was rolled back (then every write
 * since the last commit is gone, the local queue's included). Also runs when
 * outbox_take/ack/untake commit pending writes first. One callback; NULL
 * removes it. The callback must not call back into the outbox. */
typedef void (*outbox_commit_cb)(void *arg, int rc);
void outbox_on_commit(outbox_t *ob, outbox_commit_cb cb, void *arg);

#endif
