/*
 * mqtt.h - an MQTT 5 client (libmosquitto) driven by the Tidings event loop.
 *
 * libmosquitto is used through its "for use in other event loops" API: the
 * socket is watched by the loop, mosquitto_loop_read/write/misc are called
 * from loop callbacks, and no thread is started. The keepalive timer is armed
 * only while keepalive is on and a socket exists, for the moment a PINGREQ is
 * due (not periodically): with keepalive 0 an idle client sets no timer. Connections are made with
 * the non-blocking mosquitto_connect_async so a dead uplink never stalls the
 * loop; lost connections are retried with capped full-jitter backoff.
 *
 * Because libmosquitto 2.0 only sends MQTT 5 CONNECT properties on its
 * blocking connect, remote sessions are clean-start: delivery guarantees
 * come from Tidings' own application acks and resends, not from broker
 * session state. A local broker may use a persistent session
 * (session_expiry_s), connected with a blocking connect.
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

struct mosquitto_message;
typedef struct mqtt5__property mosquitto_property;

typedef struct mqtt mqtt_t;

struct mqtt_opts {
    const char *name;      /* for logs: "local", "uplink" */
    const char *host;
    int port;
    const char *client_id; /* NULL: broker-assigned */
    const char *username;  /* NULL or "": none */
    const char *password;
    const char *cafile;    /* non-empty: TLS */
    const char *certfile;  /* client certificate (optional) */
    const char *keyfile;
    /* MQTT keepalive, seconds: 0 = off, else 5..65535. Off suits a broker
     * on this box only: a dead broker closes the socket (EOF wakes us), and
     * an idle connection then wakes the process never. Over a network keep
     * it on: it is how both ends find a dead link (one PINGREQ/PINGRESP per
     * period; the broker drops us after 1.5 x keepalive of silence). */
    int keepalive_s;
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
    unsigned max_inflight; /* outgoing QoS 1 window (MOSQ_OPT_SEND_MAXIMUM); 0 = default */
    /* > 0: a persistent session (clean start off, this session expiry), so
     * the broker queues QoS 1 messages while we are away. libmosquitto only
     * sends CONNECT properties on its blocking connect, so this makes every
     * connect blocking: use it only for a broker on this box (loopback),
     * where connect() answers at once. Needs a fixed client_id. */
    uint32_t session_expiry_s;
};

struct mqtt_handlers {
    /* Connected (CONNACK success). Subscribe here: sessions are clean. */
    void (*on_connect)(void *arg);
    /* Connection lost or refused (rc is the MQTT reason or a mosquitto error). */
    void (*on_disconnect)(void *arg, int rc);
    void (*on_message)(void *arg, const struct mosquitto_message *msg,
                       const mosquitto_property *props);
    /* PUBACK for mid (QoS 1) or sent (QoS 0). reason >= 0x80 is a failure. */
    void (*on_publish)(void *arg, int mid, int reason);
    void *arg;
};

/* Create and start connecting. NULL on error (logged). Strings in opts are
 * copied by libmosquitto where it keeps them; opts itself need not outlive
 * the call, except name/host which must stay valid. */
mqtt_t *mqtt_create(loop_t *loop, const struct mqtt_opts *opts, const struct mqtt_handlers *h);

/* Disconnect (sending DISCONNECT if connected) and free. */
void mqtt_destroy(mqtt_t *m);

bool mqtt_connected(const mqtt_t *m);

/* Publish. *mid (optional) receives the message id. 0 or TDG_EMQTT/-ENOTCONN.
 * props may be NULL (not freed). expiry_s > 0 sets the message expiry. */
int mqtt_publish(mqtt_t *m, const char *topic, const void *payload, size_t len, int qos,
                 bool retain, uint32_t expiry_s, const mosquitto_property *props, int *mid);

/* Subscribe (QoS qos). 0 or TDG_EMQTT. */
int mqtt_subscribe(mqtt_t *m, const char *topic, int qos);

/* Number of QoS 1 messages published and not yet acknowledged by the broker. */
unsigned mqtt_inflight(const mqtt_t *m);

#endif
