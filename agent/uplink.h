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
 *
 * Downstream, the uplink also subscribes (QoS 1) to the hub's retained
 * preference snapshot, tidings/v1/agents/{agent}/policy, and to
 * notifications the hub sends down for this box, .../down, and to the
 * hub's receipts, .../receipts, and hands their payloads to the owner's
 * hooks: what they mean is the agent's business,
 * not the uplink's.
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

/* What the uplink hands to its owner. Each hook may be NULL (then that
 * topic is not subscribed). Payloads are borrowed for the call, not
 * NUL-terminated; len may be 0 (a retained message being cleared). Called
 * on the loop thread from the MQTT client's message callback; the PUBACK
 * goes out right after it (the uplink's session is clean). */
struct uplink_hooks {
    /* A message on .../policy (retained: also right after every connect). */
    void (*on_policy)(void *arg, const char *payload, size_t len);
    /* A message on .../down. */
    void (*on_down)(void *arg, const char *payload, size_t len);
    /* A message on .../receipts (the hub's receipts, QoS 1). */
    void (*on_receipts)(void *arg, const char *payload, size_t len);
    void *arg;
};

/* Start the uplink (connects in the background). hooks may be NULL; it is
 * copied. NULL on error (logged). */
uplink_t *uplink_create(loop_t *loop, const struct agent_config *cfg, outbox_t *ob,
                        const struct uplink_hooks *hooks);
void uplink_destroy(uplink_t *u);

/* Send what the window allows. Call after new rows were committed. */
void uplink_pump(uplink_t *u);

void uplink_get_stats(const uplink_t *u, struct uplink_stats *st);

#endif
