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
    uint64_t held;    /* batches held back while the fanout was full (intake_set_hold) */
};

intake_t *intake_create(store_t *store);
void intake_destroy(intake_t *in);

/* Per-agent rate and daily quota (agentlimit.h; not owned). NULL: none. */
struct agentlimit;
void intake_set_limits(intake_t *in, struct agentlimit *limits);
/* Hand new notifications straight to f when it is ready (fanout_ready)
 * instead of queueing them; NULL: queue everything. */
struct fanout;
void intake_set_fanout(intake_t *in, struct fanout *f);

/* Handle one payload from tidings/v1/agents/{agent}/up (or hold it back:
 * intake_set_hold). */
void intake_handle_up(intake_t *in, const char *topic_agent, const char *payload, size_t len);

/* Backpressure (intake.c): while the fanout set with intake_set_fanout has
 * no room, hold up to max_bytes of batches un-handled and un-acked, each
 * for at most max_ms; max_bytes 0: never hold. */
void intake_set_hold(intake_t *in, loop_t *loop, size_t max_bytes, uint64_t max_ms);
/* Before each commit: handle the held batches there is room for now, and
 * those held max_ms. */
void intake_resume(intake_t *in);
size_t intake_held_bytes(const intake_t *in);

/* Parse and check batches on a thread of their own (intake.c, "the parse
 * thread"), leaving the loop the store, the fanout and the sends: every
 * batch then goes through the hold list, handled by intake_resume in
 * arrival order. 0, or a negative errno (batches are parsed on the loop). */
int intake_start_parser(intake_t *in, loop_t *loop);

/* Free a notification's tree (a root, owned by the caller until now) on
 * the parse thread, which built most of them: glibc frees a block fastest
 * on the thread whose arena it came from, and the loop is the hub's busiest
 * thread. Handed over at intake_flush; without the thread, freed now. A
 * fanout_release_fn (fanout.h). */
struct cJSON;
void intake_release(void *in, struct cJSON *root);

/* After store_commit: publish the held acks if committed, else forget them
 * (the agent resends after its ack timeout). */
void intake_flush(intake_t *in, mqtt_t *mqtt, bool committed);

/* Number of acks waiting for a commit. */
size_t intake_pending(const intake_t *in);

void intake_get_stats(const intake_t *in, struct intake_stats *st);

#endif
