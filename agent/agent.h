/*
 * agent.h - tidings-agent: configuration and lifetime.
 *
 * The agent takes notifications from the local broker, commits them to the
 * outbox, and syncs them to the hub over the uplink broker. Everything runs
 * on one event loop.
 */
#ifndef TIDINGS_AGENT_H
#define TIDINGS_AGENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "deliver.h"
#include "loop.h"
#include "policy.h"
#include "proto.h"

struct agent_config {
    char id[PROTO_AGENT_MAX + 1];
    char state_dir[256];
    int log_level;
    /* local broker (IoT devices publish here) */
    char local_host[256];
    int64_t local_port;
    char local_topic[256];
    char local_username[128];
    char local_password[256];
    uint64_t local_session_expiry_ms;
    uint64_t local_keepalive_ms; /* 0: off */
    int64_t local_receive_max;   /* QoS 1 messages the local broker may have unacknowledged */
    /* uplink broker (the hub listens there) */
    char uplink_host[256];
    int64_t uplink_port;
    char uplink_username[128];
    char uplink_password[256];
    char uplink_cafile[256];
    char uplink_certfile[256];
    char uplink_keyfile[256];
    uint64_t uplink_keepalive_ms;      /* 0: off (the broker may impose one) */
    uint64_t uplink_busy_keepalive_ms; /* 0: off */
    uint64_t uplink_tcp_keepalive_ms; /* 0: off */
    uint64_t reconnect_min_ms, reconnect_max_ms;
    int64_t batch_max;
    uint64_t batch_bytes;
    int64_t window;
    uint64_t ack_timeout_ms;
    int64_t drain_rate; /* notifications/s to the hub; 0 = unlimited */
    bool require_hub;   /* send only while a hub announces itself online */
    /* outbox */
    int synchronous; /* index into {"normal", "full"} */
    int64_t outbox_max_rows;
    uint64_t outbox_max_bytes;
    int outbox_full_policy; /* enum outbox_full_policy: index into {"reject", "drop_oldest_lowest"} */
    uint64_t outbox_cache_size; /* SQLite page cache of the outbox, bytes (PRAGMA cache_size) */
    /* outbox.reset_corrupt / --reset-corrupt-db: move an unusable outbox.db
     * or policy.db aside (db_move_aside) and start fresh instead of refusing */
    bool reset_corrupt_db;
    /* unix socket for local programs (agent/socket.h) */
    char socket_path[108]; /* sizeof(sun_path); "" = <state_dir>/agent.sock */
    int64_t socket_max_clients;
    uint64_t socket_write_timeout_ms;
    /* local delivery (docs/delivery.md): the backends' settings ... */
    struct deliver_config deliver;
    /* ... and the durable local queue (agent/localq.h) */
    int64_t local_max_rows;
    uint64_t local_retention_ms;
    uint64_t local_retry_min_ms, local_retry_max_ms;
    uint64_t local_retry_for_ms;
    /* the hub's receipts kept for status --id (agent/receipts.h) */
    int64_t receipts_max_rows;
    uint64_t receipts_retention_ms;
    /* the offline preferences (docs/policy.md): whose apply to "to":"local" */
    char policy_local_user[POLICY_USER_ID_MAX + 1];
};

extern const struct config_entry agent_config_table[];
extern const size_t agent_config_table_len;

typedef struct agent agent_t;

/* The socket path cfg means: socket.path, or <state_dir>/agent.sock when it
 * is empty. 0, or -ENAMETOOLONG if it does not fit buf or a sockaddr_un. */
int agent_socket_path(const struct agent_config *cfg, char *buf, size_t len);

/* Create the agent on loop: listens on the unix socket (first, so a second
 * agent on the same socket stops before touching the outbox), opens the
 * outbox, the preference store (<state_dir>/policy.db) and the local
 * delivery backends and queue, and starts both MQTT clients. 0 or negative
 * error with err set (e.g. an unreadable database, a socket another agent
 * is running on, a bad deliver.* setting). */
int agent_create(loop_t *loop, const struct agent_config *cfg, agent_t **out, char *err,
                 size_t errlen);
/* Store and commit what is pending (answering socket clients), abandon
 * local deliveries in flight (their rows stay pending and run again at the
 * next start), disconnect and close. */
void agent_destroy(agent_t *a);

#endif
