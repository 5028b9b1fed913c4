/*
 * uplink.h - sync of the outbox to the hub over MQTT 5.
 *
 * Rows are published in batches (bounded in count and bytes) to
 * tidings/v1/agents/{agent}/up with QoS 1; at most `window` batches are
 * unacknowledged at a time. A row is deleted only when the hub's ack on
 * tidings/v1/agents/{agent}/ack names it (accepted, or rejected with a
 * reason, which is logged). A batch not acked within ack_timeout is sent
 * again; so is everything unacked after a reconnect. The status topic
 * carries a retained "online", and the will a retained "offline".
 */
#ifndef TIDINGS_UPLINK_H
#define TIDINGS_UPLINK_H

#include <stdbool.h>
#include <stdint.h>

#include "agent.h"
#include "loop.h"
#include "outbox.h"

typedef struct uplink uplink_t;

struct uplink_stats {
    uint64_t batches_sent, rows_sent, acked, rejected, timeouts;
    bool connected;
    int64_t since_ms;    /* wall ms of the last connect or connection loss; 0 = never */
    int64_t last_ack_ms; /* wall ms of the last ack from the hub applied; 0 = none yet */
};

/* Start the uplink (connects in the background). NULL on error (logged). */
uplink_t *uplink_create(loop_t *loop, const struct agent_config *cfg, outbox_t *ob);
void uplink_destroy(uplink_t *u);

/* Send what the window allows. Call after new rows were committed. */
void uplink_pump(uplink_t *u);

void uplink_get_stats(const uplink_t *u, struct uplink_stats *st);

#endif
