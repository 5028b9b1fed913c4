/*
 * receipts.h - what became of a notification after it left the box.
 *
 * The hub publishes a receipt (docs/proto.md, "Receipts") on
 * tidings/v1/agents/{agent}/receipts when a notification this agent sent
 * reaches its terminal state: delivered, failed (provider reason),
 * suppressed (preference rule), expired or dropped, with what each channel
 * did. The agent keeps the last outcome per notification id in its outbox
 * file (table `receipts`, outbox migration 4), written in the outbox's open
 * write transaction (committed with the round, in the agent's before-sleep
 * hook). Bounded: about the newest max_rows receipts, none older than
 * retention (by when they arrived). Receipts arrive at least once; the same
 * one twice changes nothing, and an older outcome never replaces a newer
 * one (by `at`).
 */
#ifndef TIDINGS_RECEIPTS_H
#define TIDINGS_RECEIPTS_H

#include <stddef.h>
#include <stdint.h>

#include "outbox.h"
#include "proto.h"

struct cJSON;

typedef struct receipts receipts_t;

struct receipts_opts {
    uint64_t max_rows;     /* >= 1 */
    uint64_t retention_ms; /* >= 1 */
};

struct receipts_stats {
    uint64_t received; /* valid receipts handed to receipts_put */
    uint64_t invalid;  /* entries refused by the parser (counted by the caller) */
    uint64_t stored;   /* written (new, or a newer outcome) */
    uint64_t pruned;   /* rows removed by the bounds */
};

/* Prepare the statements on the outbox's connection. 0 or a negative error
 * with err set. Destroy before outbox_close. */
int receipts_create(outbox_t *ob, const struct receipts_opts *o, receipts_t **out, char *err,
                    size_t errlen);
void receipts_destroy(receipts_t *r);

/* Store one validated receipt in the outbox's open write transaction
 * (opened on demand), received at now_ms. 0 or a negative error (logged
 * once per outage). */
int receipts_put(receipts_t *r, const struct proto_receipt *x, int64_t now_ms);
/* Apply the bounds (rows, age) in the same transaction; call once per
 * received message, after its receipts_put calls. 0 or a negative error. */
int receipts_prune(receipts_t *r, int64_t now_ms);

/* The stored outcome of id: *out a new JSON object {"state","reason","at",
 * "at_ms","received","received_ms","channels":[{"channel","result",
 * "status","attempts","reason"}]}. 0, TDG_ENOTFOUND, -ENOMEM or a database
 * error. */
int receipts_find(receipts_t *r, const char *id, struct cJSON **out);

void receipts_count_invalid(receipts_t *r, uint64_t n);
void receipts_get_stats(const receipts_t *r, struct receipts_stats *st);

#endif
