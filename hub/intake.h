/*
 * intake.h - uplink batches from agents into the store, and their acks.
 *
 * Each item of a batch is validated on its own, deduplicated by id and
 * recorded as queued in the store's open transaction. Acks (accepted, or
 * rejected with a reason code and field) are held until that transaction is
 * committed and only then published to tidings/v1/agents/{agent}/ack: an
 * agent deletes a notification only once the hub has it on disk.
 */
#ifndef TIDINGS_INTAKE_H
#define TIDINGS_INTAKE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mqtt.h"
#include "store.h"

typedef struct intake intake_t;

struct intake_stats {
    uint64_t batches, items, accepted, duplicates, rejected, bad_envelopes;
    uint64_t rejected_by[PROTO_REASON_COUNT]; /* rejections by reason code */
    uint64_t delayed; /* over the agent's rate: left un-acked (agentlimit.h) */
};

intake_t *intake_create(store_t *store);
void intake_destroy(intake_t *in);

/* Per-agent rate and daily quota (agentlimit.h; not owned). NULL: none. */
struct agentlimit;
void intake_set_limits(intake_t *in, struct agentlimit *limits);

/* Handle one payload from tidings/v1/agents/{agent}/up. */
void intake_handle_up(intake_t *in, const char *topic_agent, const char *payload, size_t len);

/* After store_commit: publish the held acks if committed, else forget them
 * (the agent resends after its ack timeout). */
void intake_flush(intake_t *in, mqtt_t *mqtt, bool committed);

/* Number of acks waiting for a commit. */
size_t intake_pending(const intake_t *in);

void intake_get_stats(const intake_t *in, struct intake_stats *st);

#endif
