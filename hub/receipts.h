/*
 * receipts.h - publish the receipts outbox to the agents.
 *
 * The store's triggers write one receipt row per notification reaching a
 * terminal state, in the same transaction as the state (store_engine.h).
 * After each commit, receipts_flush() publishes a bounded batch of them,
 * oldest first, QoS 1, grouped per agent on tidings/v1/agents/{agent}/
 * receipts, each with every channel's outcome from the attempts table. A
 * row is deleted only when the broker's PUBACK for its message arrives
 * (receipts_on_puback), so a crash or a lost connection publishes it again:
 * at least once, never lost while the hub's database lives. A reconnect
 * (receipts_on_connect) re-sends everything not yet confirmed.
 */
#ifndef TIDINGS_RECEIPTS_H
#define TIDINGS_RECEIPTS_H

#include <stdint.h>

#include "metrics.h"
#include "mqtt.h"
#include "store.h"

typedef struct receipts receipts_t;

/* batch: receipts published per flush at most (a backlog drains over
 * several loop iterations instead of stalling one). */
receipts_t *receipts_create(store_t *store, metrics_t *metrics, unsigned batch);
void receipts_destroy(receipts_t *r);

/* After a successful commit: publish the next batch if connected. */
void receipts_flush(receipts_t *r, mqtt_t *mqtt);
/* The broker acknowledged message mid (reason < 0x80: accepted): delete
 * its receipts. Other mids are ignored (they are not receipts). */
void receipts_on_puback(receipts_t *r, int mid, int reason);
/* A new connection: nothing in flight any more; start over from the oldest. */
void receipts_on_connect(receipts_t *r);

/* Messages published and not yet acknowledged. */
unsigned receipts_inflight(const receipts_t *r);
/* Receipts published from the store's memory rather than read back. */
uint64_t receipts_from_memory(const receipts_t *r);

#endif
