/*
 * mqtt_codec.h - MQTT 5 packets encoded and decoded, no I/O (used by mqtt.c).
 *
 * Only what a client needs: it encodes CONNECT, PUBLISH, PUBACK, SUBSCRIBE,
 * PINGREQ and DISCONNECT, and decodes what a broker sends a client that
 * publishes and subscribes at QoS 0/1: CONNACK, PUBLISH, PUBACK, SUBACK,
 * PINGRESP, DISCONNECT. Anything else (QoS 2 flow, AUTH, UNSUBACK for an
 * UNSUBSCRIBE never sent, server-bound packets, reserved types) is refused
 * as a protocol error.
 *
 * Decoding is strict and bounded: remaining length at most 4 bytes and
 * within the Maximum Packet Size, every length inside the packet, UTF-8
 * strings well-formed (RFC 3629, no U+0000, no surrogates), topic names
 * without wildcards, known properties only (each skipped by its type when
 * unused; single-valued ones at most once), fixed-header flags as the
 * specification fixes them. Each refusal says what was wrong in `why`.
 */
#ifndef TIDINGS_MQTT_CODEC_H
#define TIDINGS_MQTT_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum mqtt_type {
    MQTT_CONNECT = 1,
    MQTT_CONNACK = 2,
    MQTT_PUBLISH = 3,
    MQTT_PUBACK = 4,
    MQTT_PUBREC = 5,
    MQTT_PUBREL = 6,
    MQTT_PUBCOMP = 7,
    MQTT_SUBSCRIBE = 8,
    MQTT_SUBACK = 9,
    MQTT_UNSUBSCRIBE = 10,
    MQTT_UNSUBACK = 11,
    MQTT_PINGREQ = 12,
    MQTT_PINGRESP = 13,
    MQTT_DISCONNECT = 14,
    MQTT_AUTH = 15,
};

/* Property identifiers (MQTT 5 section 2.2.2.2). */
enum mqtt_prop {
    MQTT_P_PAYLOAD_FORMAT = 0x01,
    MQTT_P_MESSAGE_EXPIRY = 0x02,
    MQTT_P_CONTENT_TYPE = 0x03,
    MQTT_P_RESPONSE_TOPIC = 0x08,
    MQTT_P_CORRELATION_DATA = 0x09,
    MQTT_P_SUBSCRIPTION_ID = 0x0B,
    MQTT_P_SESSION_EXPIRY = 0x11,
    MQTT_P_ASSIGNED_CLIENT_ID = 0x12,
    MQTT_P_SERVER_KEEP_ALIVE = 0x13,
    MQTT_P_AUTH_METHOD = 0x15,
    MQTT_P_AUTH_DATA = 0x16,
    MQTT_P_REQUEST_PROBLEM_INFO = 0x17,
    MQTT_P_WILL_DELAY = 0x18,
    MQTT_P_REQUEST_RESPONSE_INFO = 0x19,
    MQTT_P_RESPONSE_INFO = 0x1A,
    MQTT_P_SERVER_REFERENCE = 0x1C,
    MQTT_P_REASON_STRING = 0x1F,
    MQTT_P_RECEIVE_MAXIMUM = 0x21,
    MQTT_P_TOPIC_ALIAS_MAXIMUM = 0x22,
    MQTT_P_TOPIC_ALIAS = 0x23,
    MQTT_P_MAXIMUM_QOS = 0x24,
    MQTT_P_RETAIN_AVAILABLE = 0x25,
    MQTT_P_USER_PROPERTY = 0x26,
    MQTT_P_MAXIMUM_PACKET_SIZE = 0x27,
    MQTT_P_WILDCARD_SUB_AVAILABLE = 0x28,
    MQTT_P_SUB_ID_AVAILABLE = 0x29,
    MQTT_P_SHARED_SUB_AVAILABLE = 0x2A,
};

#define MQTT_MAX_REMAINING 268435455u /* four bytes of variable length integer */
#define MQTT_WHY_MAX 160              /* room for a refusal's reason */

/* A growable byte buffer with a ceiling (max; 0 = MQTT_MAX_REMAINING + 5). */
struct mqtt_buf {
    uint8_t *p;
    size_t len, cap, max;
};

/* Make room for `more` bytes after len. 0, -ENOMEM, or TDG_EFULL over max. */
int mqtt_buf_reserve(struct mqtt_buf *b, size_t more);
void mqtt_buf_free(struct mqtt_buf *b);

/* Variable byte integer: bytes written to out (1..4; out has 4), or 0 when
 * v > MQTT_MAX_REMAINING. */
size_t mqtt_varint_put(uint8_t *out, uint32_t v);
/* Decode one from p[0..len): bytes used (1..4), 0 when more are needed,
 * -1 when malformed (a fifth byte would be needed). */
int mqtt_varint_get(const uint8_t *p, size_t len, uint32_t *v);

/* Well-formed UTF-8 as MQTT 5 wants it (RFC 3629; no U+0000, no surrogates). */
bool mqtt_utf8_valid(const uint8_t *s, size_t n);

/* Frame the packet at the start of a byte stream p[0..len). 1 with *total
 * (fixed header + remaining length) once the fixed header is complete (the
 * packet itself is complete when len >= *total); 0 when more bytes are
 * needed; -1 when malformed or larger than max_packet (why says which). */
int mqtt_frame(const uint8_t *p, size_t len, uint32_t max_packet, size_t *total, char *why,
               size_t whylen);

struct mqtt_connect_params {
    const char *client_id; /* "" or NULL: broker-assigned */
    const char *username;  /* NULL or "": none */
    const char *password;  /* NULL: none */
    bool clean_start;
    uint16_t keepalive;
    uint32_t session_expiry; /* property, when > 0 */
    uint16_t receive_max;    /* property, when 1..65534 */
    uint32_t max_packet;     /* property, when > 0 */
    const char *will_topic;  /* NULL or "": no will */
    const void *will_payload;
    size_t will_len;
    int will_qos;
    bool will_retain;
};

/* Encoders append one packet to b. 0, -EINVAL (a field out of range: string
 * over 65535 bytes, QoS > 1, id 0 where one is needed, packet over the
 * 4-byte remaining length), or what mqtt_buf_reserve returns. */
int mqtt_enc_connect(struct mqtt_buf *b, const struct mqtt_connect_params *c);
struct mqtt_publish_params {
    const char *topic;
    const void *payload;
    size_t len;
    int qos;
    bool retain, dup;
    uint16_t id;                /* QoS 1: non-zero */
    uint32_t expiry_s;          /* Message Expiry Interval, when > 0 */
    const char *response_topic; /* NULL: none */
    const void *corr;           /* Correlation Data, when corr_len > 0 */
    size_t corr_len;
};
int mqtt_enc_publish(struct mqtt_buf *b, const struct mqtt_publish_params *pp);
/* The size mqtt_enc_publish would append (0 when it would refuse). */
size_t mqtt_publish_size(const struct mqtt_publish_params *pp);
int mqtt_enc_puback(struct mqtt_buf *b, uint16_t id, uint8_t reason);
int mqtt_enc_subscribe(struct mqtt_buf *b, uint16_t id, const char *filter, int qos);
int mqtt_enc_pingreq(struct mqtt_buf *b);
int mqtt_enc_disconnect(struct mqtt_buf *b, uint8_t reason);

/* A decoded packet. Pointers point into the packet passed to mqtt_decode
 * (strings are NOT NUL-terminated); absent ones are NULL with length 0. */
struct mqtt_pkt {
    uint8_t type, flags;
    uint16_t id;    /* PUBLISH (QoS 1), PUBACK, SUBACK */
    uint8_t reason; /* CONNACK, PUBACK, DISCONNECT; SUBACK: the first one */
    /* CONNACK */
    bool session_present;
    bool has_server_keepalive;
    uint16_t server_keepalive;
    uint16_t receive_max; /* 65535 when absent */
    uint32_t max_packet;  /* 0 when absent (no limit) */
    uint8_t max_qos;      /* 1 when absent (we never use 2) */
    /* PUBLISH */
    int qos;
    bool retain, dup;
    const char *topic;
    size_t topic_len;
    const uint8_t *payload;
    size_t payload_len;
    bool has_expiry;
    uint32_t expiry;
    const char *response_topic;
    size_t response_topic_len;
    const uint8_t *corr;
    size_t corr_len;
    /* CONNACK, PUBACK, SUBACK, DISCONNECT */
    const char *reason_string;
    size_t reason_string_len;
    /* SUBACK */
    const uint8_t *sub_reasons;
    size_t nsub_reasons;
};

/* Decode one whole packet p[0..len) (as framed by mqtt_frame). 0, or -1
 * with why naming the packet and what was wrong. */
int mqtt_decode(const uint8_t *p, size_t len, struct mqtt_pkt *out, char *why, size_t whylen);

/* "CONNACK", "PUBLISH", ... ("type 0" style for reserved ones, in buf). */
const char *mqtt_type_name(unsigned type);
/* Short text for an MQTT 5 reason code ("not authorized"). Never NULL. */
const char *mqtt_reason_string(uint8_t code);

#endif
