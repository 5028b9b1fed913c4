/*
 * mqtt.h - Tidings' own MQTT 5 client, driven by the Tidings event loop.
 *
 * No thread, no library loop: the socket is a loop fd watch, packets are
 * encoded and decoded by mqtt_codec.c, TLS is mbedtls 2.28 on the same
 * non-blocking socket. The keepalive timer is armed only while keepalive is
 * on and the connection is up, for the moment a PINGREQ (or its PINGRESP)
 * is due, never periodically: with keepalive 0 an idle client sets no
 * timer. Connects are non-blocking (TCP, TLS handshake, CONNECT/CONNACK, the
 * whole within 30 s); lost connections are retried with capped full-jitter
 * backoff. CONNECT carries Session Expiry (with clean start off) for a
 * persistent session, our Receive Maximum and Maximum Packet Size.
 *
 * Inbound QoS 1: the PUBACK goes out after on_message returns, or, with
 * opts.manual_ack, only once the application calls mqtt_release_acks() -
 * after it made the messages durable. The broker resends what was not
 * PUBACKed when the client comes back to its persistent session.
 *
 * Outbound QoS 1: at most min(max_inflight, the broker's Receive Maximum)
 * unacknowledged; more are queued in order. A lost connection forgets every
 * unacknowledged outbound message (in flight and queued, without an
 * on_publish): sessions to the central broker are clean, and delivery there
 * is guaranteed by Tidings' own application acks and resends.
 *
 * Every malformed or protocol-violating packet closes the connection with a
 * log line naming what was wrong (the client then reconnects).
 *
 * Callbacks run on the loop thread. Messages received inside a callback may
 * be published from it; writes are flushed before the loop sleeps.
 */
#ifndef TIDINGS_MQTT_H
#define TIDINGS_MQTT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loop.h"

typedef struct mqtt mqtt_t;

struct mqtt_opts {
    const char *name; /* for logs: "local", "uplink" */
    const char *host;
    int port;
    const char *client_id; /* NULL: broker-assigned */
    const char *username;  /* NULL or "": none */
    const char *password;
    const char *cafile;   /* non-empty: TLS (server verified against it, and its name or IP) */
    const char *certfile; /* client certificate (optional) */
    const char *keyfile;
    /* MQTT keepalive, seconds: 0 = off, else 5..65535. Off suits a broker
     * on this box only: a dead broker closes the socket (EOF wakes us), and
     * an idle connection then wakes the process never. Over a network keep
     * it on: it is how both ends find a dead link (one PINGREQ/PINGRESP per
     * period; the broker drops us after 1.5 x keepalive of silence). */
    int keepalive_s;
    /* > 0: while QoS 1 messages we published are unacknowledged, and when
     * it is shorter than the keepalive in force (off, or a long Server Keep
     * Alive from the broker): a PINGREQ once the broker has sent nothing
     * for this many seconds (counted from its last packet, or from when the
     * first of them was published), and the connection closed when the
     * PINGRESP does not come within as long. A broker that hangs with its
     * socket open is found while there is something to deliver; an idle
     * connection keeps only the keepalive (none when off). 0 = off. */
    int busy_keepalive_s;
    /* > 0: TCP keepalive (SO_KEEPALIVE, TCP_KEEPIDLE = this, TCP_KEEPINTVL =
     * a third of it, TCP_KEEPCNT 3) and TCP_USER_TIMEOUT (the same total):
     * the kernel probes an idle link without waking the process, and fails
     * the socket when sent data stays unacknowledged. 0 = off. */
    int tcp_keepalive_s;
    const char *will_topic; /* optional last will (QoS 1) */
    const char *will_payload;
    bool will_retain;
    uint64_t backoff_base_ms; /* reconnect backoff */
    uint64_t backoff_cap_ms;
    unsigned max_inflight; /* outgoing QoS 1 window; 0 = the broker's Receive Maximum */
    /* > 0: a persistent session (clean start off, this session expiry), so
     * the broker queues QoS 1 messages while we are away. Needs a fixed
     * client_id (ignored without one). */
    uint32_t session_expiry_s;
    /* Our Receive Maximum: inbound QoS 1 messages the broker may have
     * unacknowledged at once (1..65535; 0 = 65535, MQTT's default). */
    uint16_t receive_max;
    /* Our Maximum Packet Size, bytes: the broker drops larger messages for
     * us, and a larger packet closes the connection. 0 = 1 MiB. */
    uint32_t max_packet;
    /* Hold inbound QoS 1 PUBACKs until mqtt_release_acks(). */
    bool manual_ack;
};

/* An inbound message, valid for the on_message call only. topic and
 * response_topic are NUL-terminated; payload is not. */
struct mqtt_msg {
    const char *topic;
    const void *payload; /* never NULL ("" when len is 0) */
    size_t len;
    int qos;
    bool retain;
    uint16_t mid;               /* QoS 1: the packet identifier; else 0 */
    const char *response_topic; /* NULL: none */
    const void *corr;           /* correlation data; NULL when corr_len is 0 */
    size_t corr_len;
    bool has_expiry; /* the Message Expiry Interval left, seconds */
    uint32_t expiry_s;
};

/* MQTT 5 request/response properties of an outbound message. */
struct mqtt_pub_props {
    const char *response_topic; /* NULL: none */
    const void *corr;           /* correlation data, when corr_len > 0 */
    size_t corr_len;
};

struct mqtt_handlers {
    /* Connected (CONNACK success). Subscribe here. */
    void (*on_connect)(void *arg);
    /* Connection lost or closed (rc: the broker's MQTT reason code, or a
     * negative error: -ECONNRESET lost, TDG_EMQTT a protocol error). */
    void (*on_disconnect)(void *arg, int rc);
    void (*on_message)(void *arg, const struct mqtt_msg *msg);
    /* PUBACK for mid (QoS 1 only). reason >= 0x80 is a failure. */
    void (*on_publish)(void *arg, int mid, int reason);
    void *arg;
};

/* Create and start connecting. NULL on error (logged: unreadable CA,
 * certificate or key, out of memory). Strings in opts are copied, except
 * name and host, which must stay valid. */
mqtt_t *mqtt_create(loop_t *loop, const struct mqtt_opts *opts, const struct mqtt_handlers *h);

/* Disconnect (flushing what is queued and a DISCONNECT, best effort, when
 * connected) and free. Not from inside one of its callbacks. */
void mqtt_destroy(mqtt_t *m);

bool mqtt_connected(const mqtt_t *m);

/* Publish. *mid (optional) receives the packet identifier (QoS 1; else 0).
 * props may be NULL. expiry_s > 0 sets the message expiry. 0, -ENOTCONN,
 * TDG_ETOOBIG (over the broker's Maximum Packet Size), TDG_EFULL (65535
 * unacknowledged), -EINVAL (bad topic or QoS) or -ENOMEM. */
int mqtt_publish(mqtt_t *m, const char *topic, const void *payload, size_t len, int qos,
                 bool retain, uint32_t expiry_s, const struct mqtt_pub_props *props, int *mid);

/* Subscribe (QoS qos, 0 or 1). 0 or TDG_EMQTT (not connected, bad filter).
 * A refusal in the SUBACK is logged. */
int mqtt_subscribe(mqtt_t *m, const char *topic, int qos);

/* With manual_ack: PUBACK every inbound QoS 1 message delivered so far on
 * this connection (sent before the loop sleeps). Messages of a connection
 * that was lost are never PUBACKed: the broker resends them. */
void mqtt_release_acks(mqtt_t *m);

/* Inbound QoS 1 messages whose PUBACK is held (manual_ack). */
unsigned mqtt_held_acks(const mqtt_t *m);

/* Close the connection without PUBACKing what is held, and reconnect after
 * the backoff: the broker then resends what was not acknowledged (for an
 * application that could not make held messages durable). */
void mqtt_reconnect(mqtt_t *m);

/* Number of QoS 1 messages published and not yet acknowledged by the broker
 * (in flight and queued beyond the window). */
unsigned mqtt_inflight(const mqtt_t *m);

#endif
