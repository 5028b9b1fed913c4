/*
 * store_engine.h - the fanout engine's part of the store (store_engine.c,
 * schema v5): the receipts outbox, terminal-state counters, per-agent daily
 * quota counts, and the queries behind queue-depth metrics.
 *
 * Receipts are written by SQLite triggers on notifications (AFTER INSERT,
 * AFTER UPDATE OF state) whenever a notification reaches a terminal state
 * (delivered, failed, suppressed, expired, dropped): in the same
 * transaction as the state, whichever code path set it. Terminal states
 * are counted durably for metrics: the receipts still in the outbox plus
 * engine_counts, where store_receipts_delete adds the rows it deletes.
 */
#ifndef TIDINGS_STORE_ENGINE_H
#define TIDINGS_STORE_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

struct store_receipt {
    int64_t seq; /* increasing; reused only above the highest row left
                  * after a delete (store_receipts_top) */
    const char *id, *agent, *state, *reason;
    int64_t at_ms;
};
/* One of the notification's attempts (channel == NULL: none at all). */
struct store_attempt_row {
    const char *channel, *state, *reason;
    int status;
};
typedef void (*store_receipt_cb)(void *arg, const struct store_receipt *r,
                                 const struct store_attempt_row *a);
/* Receipts with seq > after, oldest first, at most max, each joined with
 * its notification's attempts (oldest first): cb runs once per attempt, or
 * once with a->channel NULL when there is none; consecutive calls with the
 * same r->seq belong together. Strings are valid during the call. One
 * statement for the whole batch, read only as far as needed (no sort).
 * Rows (calls) or a negative error. */
int store_receipts_next(store_t *s, int64_t after, unsigned max, store_receipt_cb cb, void *arg);

/* --- Receipts from memory (docs/engine.md, "Receipts from memory") -------
 *
 * The publisher reads receipts back from the outbox joined with attempts
 * unless the store can answer from memory: a receipt row written by
 * store_set_state_receipt is captured (the row's seq from the connection's
 * update hook, the content from the caller) and kept once its transaction
 * commits, in a bounded ring of rows with consecutive seqs. Anything the
 * ring cannot vouch for (a receipt written by another path, a full ring, a
 * rollback, a deleted row) leaves a gap that the table read fills. */
struct store_rcpt_ctx {
    const char *id, *state, *reason; /* as store_set_state */
    int64_t at_ms;                   /* its now_ms: the row's updated_ms */
    const char *agent;               /* the notification's agent (its row's) */
    /* Every attempt of the notification summed up per channel as the
     * publisher does from the attempts table (receipts.c): the caller must
     * know all of them, else it calls store_set_state. */
    const struct proto_receipt_channel *ch;
    unsigned nch;
};
#define STORE_RMEM_MAX 1024 /* receipts kept in memory at most (~1.9 KB each) */
/* store_set_state, and the receipt the trigger writes (if any) kept in
 * memory with c's content once committed. */
int store_set_state_receipt(store_t *s, const struct store_rcpt_ctx *c);
/* cb gets one receipt kept in memory; false: stop before it (not taken). */
typedef bool (*store_receipt_mem_cb)(void *arg, int64_t seq, const char *agent,
                                     const struct proto_receipt *x);
/* The receipts with seq > after, oldest first, at most max, from memory:
 * only committed ones, and only when memory holds seq after + 1 (rows are
 * kept with consecutive seqs, so then every row up to the last one passed
 * is exactly what the table holds there). Drops what it holds at or below
 * after (published). How many cb took; 0: read the table from after. */
int store_receipts_mem_next(store_t *s, int64_t after, unsigned max, store_receipt_mem_cb cb,
                            void *arg);
/* Receipts kept in memory: committed, and not yet committed. */
void store_receipts_mem_held(store_t *s, unsigned *committed, unsigned *open);
/* Copy src into dst (size bytes), cut at a UTF-8 character boundary when
 * too long (the agent rejects an envelope with invalid UTF-8): how the
 * publisher copies the store's texts into a receipt. */
void store_copy_text(char *dst, size_t size, const char *src);

/* The terminal states, in this order: an index into a tally. */
#define STORE_TERMINAL_N 5
extern const char *const store_terminal_states[STORE_TERMINAL_N];
/* state's index in store_terminal_states, or -1. */
int store_terminal_index(const char *state);

/* Delete the published receipts of agent with seq in [from, to] (in the
 * iteration's transaction): the rows one receipts message carried. They
 * are counted in engine_counts and copied to receipt_log (confirmed now,
 * pruned as docs/engine.md says) with the deletion, all or nothing.
 * tally (may be NULL): how many of the message's receipts had each terminal
 * state (store_terminal_states order). When every one of them is still in
 * the range, it is what engine_counts gets, with no count over the rows;
 * otherwise (some were confirmed already by another message, or the range
 * was cut) the rows are counted. */
int store_receipts_delete(store_t *s, const char *agent, int64_t from, int64_t to,
                          const unsigned tally[STORE_TERMINAL_N]);
/* The highest seq in the outbox (0: empty). A new row gets top + 1: after
 * a delete, seqs above the top may come back for new rows, so a publisher
 * must forget cursors and ranges above it. */
int store_receipts_top(store_t *s, int64_t *seq);
/* Receipts not yet confirmed by the broker. */
int store_receipts_pending(store_t *s, int64_t *n);

/* Durable count of terminal states reached, per state (confirmed receipts
 * plus the outbox: a scan of the outbox, for scrape time). */
typedef void (*store_state_count_cb)(void *arg, const char *state, int64_t n);
int store_terminal_counts(store_t *s, store_state_count_cb cb, void *arg);

/* Notifications waiting in the queue ('queued'), by the work index. Those
 * being delivered ('sending') are not indexed (schema v9): the fanout
 * counts them in memory (fanout_jobs). */
int store_queue_depth(store_t *s, int64_t *queued);

/* Per-agent count of accepted notifications on UTC day `day`. */
int store_quota_get(store_t *s, const char *agent, int64_t day, int64_t *n);
int store_quota_add(store_t *s, const char *agent, int64_t day, int64_t add);

/* Is there a notification with this id? 1, 0 or a negative error. */
int store_notification_known(store_t *s, const char *id);

#endif
