/* test_mqtt.c - the MQTT 5 codec (platform/mqtt_codec.c): encoding, strict
 * decoding, every malformed case, framing of a stream fed byte by byte. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "error.h"
#include "log.h"
#include "loop.h"
#include "mqtt.h"
#include "mqtt_codec.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* --- helpers ------------------------------------------------------------------ */

/* A packet under construction: body bytes, then framed with a fixed header. */
struct pk {
    uint8_t b[1024];
    size_t n;
};

static void b8(struct pk *p, uint8_t v)
{
    p->b[p->n++] = v;
}

static void b16(struct pk *p, uint16_t v)
{
    b8(p, (uint8_t)(v >> 8));
    b8(p, (uint8_t)v);
}

static void b32(struct pk *p, uint32_t v)
{
    b16(p, (uint16_t)(v >> 16));
    b16(p, (uint16_t)v);
}

static void bstr(struct pk *p, const char *s, size_t n)
{
    b16(p, (uint16_t)n);
    memcpy(p->b + p->n, s, n);
    p->n += n;
}

static void braw(struct pk *p, const void *s, size_t n)
{
    memcpy(p->b + p->n, s, n);
    p->n += n;
}

/* Frame body as a packet with first byte `first` into out. */
static size_t frame(uint8_t first, const struct pk *body, uint8_t *out)
{
    out[0] = first;
    size_t h = 1 + mqtt_varint_put(out + 1, (uint32_t)body->n);
    memcpy(out + h, body->b, body->n);
    return h + body->n;
}

/* Decode body framed with first; expect refusal with `want` in why. */
static void expect_refused(uint8_t first, const struct pk *body, const char *want)
{
    uint8_t pkt[1100];
    size_t n = frame(first, body, pkt);
    struct mqtt_pkt p;
    char why[MQTT_WHY_MAX] = "";
    int rc = mqtt_decode(pkt, n, &p, why, sizeof(why));
    if (rc != -1 || !strstr(why, want)) {
        fail_msg("packet 0x%02x: rc=%d why='%s', wanted '%s'", first, rc, why, want);
    }
}

static int decode_ok(uint8_t first, const struct pk *body, struct mqtt_pkt *p, uint8_t *pkt)
{
    size_t n = frame(first, body, pkt);
    char why[MQTT_WHY_MAX] = "";
    int rc = mqtt_decode(pkt, n, p, why, sizeof(why));
    if (rc != 0) {
        fail_msg("packet 0x%02x refused: %s", first, why);
    }
    return rc;
}

/* --- variable byte integers, UTF-8 ------------------------------------------------ */

static void test_varint(void **state)
{
    (void)state;
    static const struct {
        uint32_t v;
        size_t n;
    } cases[] = {{0, 1},     {127, 1},     {128, 2},     {16383, 2},
                 {16384, 3}, {2097151, 3}, {2097152, 4}, {268435455, 4}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint8_t b[4];
        size_t n = mqtt_varint_put(b, cases[i].v);
        assert_int_equal(n, cases[i].n);
        uint32_t back = 0;
        assert_int_equal(mqtt_varint_get(b, n, &back), (int)n);
        assert_int_equal(back, cases[i].v);
        /* every shorter prefix asks for more */
        for (size_t k = 0; k < n; k++) {
            assert_int_equal(mqtt_varint_get(b, k, &back), 0);
        }
    }
    uint8_t b[5];
    assert_int_equal(mqtt_varint_put(b, 268435456u), 0);
    static const uint8_t five[] = {0x80, 0x80, 0x80, 0x80, 0x01};
    uint32_t v;
    assert_int_equal(mqtt_varint_get(five, sizeof(five), &v), -1);
    static const uint8_t enc[] = {0xC1, 0x02}; /* 321 */
    assert_int_equal(mqtt_varint_get(enc, 2, &v), 2);
    assert_int_equal(v, 321);
}

static void test_utf8(void **state)
{
    (void)state;
    static const char *good[] = {"",
                                 "tidings/v1/local/notify",
                                 "caf\xc3\xa9",
                                 "\xe2\x82\xac",
                                 "\xf0\x9f\x94\x94",
                                 "\xef\xbf\xbf"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        assert_true(mqtt_utf8_valid((const uint8_t *)good[i], strlen(good[i])));
    }
    static const struct {
        const char *s;
        size_t n;
    } bad[] = {
        {"a\0b", 3},                 /* U+0000 */
        {"\xc0\x80", 2},             /* overlong NUL */
        {"\xc1\xbf", 2},             /* overlong */
        {"\xe0\x80\xaf", 3},         /* overlong '/' */
        {"\xed\xa0\x80", 3},         /* surrogate U+D800 */
        {"\xf4\x90\x80\x80", 4},     /* U+110000 */
        {"\xf8\x88\x80\x80\x80", 5}, /* 5-byte form */
        {"\x80", 1},                 /* stray continuation */
        {"\xc3", 1},                 /* truncated */
        {"\xe2\x82", 2},             /* truncated */
        {"\xc3\x28", 2},             /* bad continuation */
        {"\xff", 1},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (mqtt_utf8_valid((const uint8_t *)bad[i].s, bad[i].n)) {
            fail_msg("bad UTF-8 case %zu accepted", i);
        }
    }
}

/* --- encoding ------------------------------------------------------------------ */

static void test_enc_connect(void **state)
{
    (void)state;
    struct mqtt_buf b = {0};
    struct mqtt_connect_params c = {
        .client_id = "tidings-agent-gw1-local",
        .username = "gw1",
        .password = "pw",
        .clean_start = false,
        .keepalive = 60,
        .session_expiry = 604800,
        .receive_max = 1000,
        .max_packet = 262144,
        .will_topic = "tidings/v1/agents/gw1/status",
        .will_payload = "offline",
        .will_len = 7,
        .will_qos = 1,
        .will_retain = true,
    };
    assert_int_equal(mqtt_enc_connect(&b, &c), 0);
    assert_int_equal(b.p[0], 0x10);
    uint32_t rl;
    int n = mqtt_varint_get(b.p + 1, b.len - 1, &rl);
    assert_true(n > 0);
    assert_int_equal(1 + n + rl, b.len);
    const uint8_t *v = b.p + 1 + n;
    static const uint8_t proto[] = {0, 4, 'M', 'Q', 'T', 'T', 5};
    assert_memory_equal(v, proto, sizeof(proto));
    /* user, password, will retain, will QoS 1, will; clean start off */
    assert_int_equal(v[7], 0x80 | 0x40 | 0x20 | 0x08 | 0x04);
    assert_int_equal(v[8] << 8 | v[9], 60);
    /* properties: session expiry, receive maximum, maximum packet size */
    static const uint8_t props[] = {13,   0x11, 0x00, 0x09, 0x3a, 0x80, 0x21,
                                    0x03, 0xe8, 0x27, 0x00, 0x04, 0x00, 0x00};
    assert_memory_equal(v + 10, props, sizeof(props));
    const uint8_t *id = v + 10 + sizeof(props);
    assert_int_equal(id[0] << 8 | id[1], strlen(c.client_id));
    assert_memory_equal(id + 2, c.client_id, strlen(c.client_id));
    const uint8_t *w = id + 2 + strlen(c.client_id);
    assert_int_equal(w[0], 0); /* will properties */
    assert_int_equal(w[1] << 8 | w[2], strlen(c.will_topic));
    const uint8_t *end = b.p + b.len;
    assert_memory_equal(end - 2, "pw", 2);

    /* clean start, nothing optional: flags 0x02, empty property list */
    b.len = 0;
    struct mqtt_connect_params c2 = {.clean_start = true};
    assert_int_equal(mqtt_enc_connect(&b, &c2), 0);
    static const uint8_t minimal[] = {0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 0, 0, 0, 0};
    assert_int_equal(b.len, sizeof(minimal));
    assert_memory_equal(b.p, minimal, sizeof(minimal));

    /* out of range */
    char big[70000];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    struct mqtt_connect_params c3 = {.client_id = big};
    assert_int_equal(mqtt_enc_connect(&b, &c3), -EINVAL);
    struct mqtt_connect_params c4 = {.will_topic = "t", .will_qos = 2};
    assert_int_equal(mqtt_enc_connect(&b, &c4), -EINVAL);
    mqtt_buf_free(&b);
}

static void test_enc_publish_roundtrip(void **state)
{
    (void)state;
    struct mqtt_buf b = {0};
    static const uint8_t corr[] = {1, 2, 0, 4};
    struct mqtt_publish_params pp = {
        .topic = "tidings/v1/admin/reply/x",
        .payload = "{\"ok\":true}",
        .len = 11,
        .qos = 1,
        .retain = true,
        .id = 513,
        .expiry_s = 30,
        .response_topic = "tidings/v1/admin/reply/me",
        .corr = corr,
        .corr_len = sizeof(corr),
    };
    size_t size = mqtt_publish_size(&pp);
    assert_int_equal(mqtt_enc_publish(&b, &pp), 0);
    assert_int_equal(b.len, size);
    assert_int_equal(b.p[0], 0x33);
    struct mqtt_pkt p;
    char why[MQTT_WHY_MAX];
    assert_int_equal(mqtt_decode(b.p, b.len, &p, why, sizeof(why)), 0);
    assert_int_equal(p.type, MQTT_PUBLISH);
    assert_int_equal(p.qos, 1);
    assert_true(p.retain);
    assert_false(p.dup);
    assert_int_equal(p.id, 513);
    assert_int_equal(p.topic_len, strlen(pp.topic));
    assert_memory_equal(p.topic, pp.topic, p.topic_len);
    assert_int_equal(p.payload_len, 11);
    assert_memory_equal(p.payload, pp.payload, 11);
    assert_true(p.has_expiry);
    assert_int_equal(p.expiry, 30);
    assert_int_equal(p.response_topic_len, strlen(pp.response_topic));
    assert_memory_equal(p.response_topic, pp.response_topic, p.response_topic_len);
    assert_int_equal(p.corr_len, sizeof(corr));
    assert_memory_equal(p.corr, corr, sizeof(corr));

    /* QoS 0, empty payload, no properties */
    b.len = 0;
    struct mqtt_publish_params p0 = {.topic = "a/b", .payload = "", .len = 0};
    assert_int_equal(mqtt_enc_publish(&b, &p0), 0);
    static const uint8_t want0[] = {0x30, 6, 0, 3, 'a', '/', 'b', 0};
    assert_int_equal(b.len, sizeof(want0));
    assert_memory_equal(b.p, want0, sizeof(want0));

    /* a payload needing a 3-byte remaining length */
    b.len = 0;
    static char payload[20000];
    memset(payload, 'x', sizeof(payload));
    struct mqtt_publish_params pl = {
        .topic = "t", .payload = payload, .len = sizeof(payload), .qos = 1, .id = 9};
    assert_int_equal(mqtt_enc_publish(&b, &pl), 0);
    assert_int_equal(mqtt_decode(b.p, b.len, &p, why, sizeof(why)), 0);
    assert_int_equal(p.payload_len, sizeof(payload));

    /* refused: QoS 1 without an id, QoS 2, empty topic */
    struct mqtt_publish_params bad = {.topic = "t", .qos = 1};
    assert_int_equal(mqtt_enc_publish(&b, &bad), -EINVAL);
    bad.qos = 2;
    bad.id = 1;
    assert_int_equal(mqtt_enc_publish(&b, &bad), -EINVAL);
    bad.qos = 0;
    bad.topic = "";
    assert_int_equal(mqtt_enc_publish(&b, &bad), -EINVAL);
    assert_int_equal(mqtt_publish_size(&bad), 0);
    mqtt_buf_free(&b);
}

static void test_enc_small(void **state)
{
    (void)state;
    struct mqtt_buf b = {0};
    assert_int_equal(mqtt_enc_puback(&b, 0x1234, 0), 0);
    static const uint8_t ack[] = {0x40, 2, 0x12, 0x34};
    assert_int_equal(b.len, 4);
    assert_memory_equal(b.p, ack, 4);
    b.len = 0;
    assert_int_equal(mqtt_enc_puback(&b, 7, 0x80), 0);
    static const uint8_t ack2[] = {0x40, 3, 0, 7, 0x80};
    assert_memory_equal(b.p, ack2, 5);
    assert_int_equal(mqtt_enc_puback(&b, 0, 0), -EINVAL);
    b.len = 0;
    assert_int_equal(mqtt_enc_subscribe(&b, 3, "a/+", 1), 0);
    static const uint8_t sub[] = {0x82, 9, 0, 3, 0, 0, 3, 'a', '/', '+', 1};
    assert_int_equal(b.len, sizeof(sub));
    assert_memory_equal(b.p, sub, sizeof(sub));
    assert_int_equal(mqtt_enc_subscribe(&b, 3, "", 1), -EINVAL);
    assert_int_equal(mqtt_enc_subscribe(&b, 3, "a", 2), -EINVAL);
    b.len = 0;
    assert_int_equal(mqtt_enc_pingreq(&b), 0);
    assert_int_equal(mqtt_enc_disconnect(&b, 0), 0);
    assert_int_equal(mqtt_enc_disconnect(&b, 0x81), 0);
    static const uint8_t rest[] = {0xC0, 0, 0xE0, 0, 0xE0, 1, 0x81};
    assert_int_equal(b.len, sizeof(rest));
    assert_memory_equal(b.p, rest, sizeof(rest));
    mqtt_buf_free(&b);

    /* a buffer with a ceiling refuses to grow past it */
    struct mqtt_buf small = {.max = 8};
    assert_int_equal(mqtt_enc_subscribe(&small, 1, "a/long/topic", 1), TDG_EFULL);
    mqtt_buf_free(&small);
}

/* --- decoding what a broker sends ---------------------------------------------------- */

static void test_dec_connack(void **state)
{
    (void)state;
    struct pk body = {{0}, 0};
    b8(&body, 1); /* session present */
    b8(&body, 0); /* success */
    struct pk props = {{0}, 0};
    b8(&props, 0x13);
    b16(&props, 120); /* server keep alive */
    b8(&props, 0x21);
    b16(&props, 20); /* receive maximum */
    b8(&props, 0x27);
    b32(&props, 1048576); /* maximum packet size */
    b8(&props, 0x26);     /* user property: skipped */
    bstr(&props, "k", 1);
    bstr(&props, "v", 1);
    b8(&props, 0x12); /* assigned client id: skipped */
    bstr(&props, "auto-1", 6);
    b8(&props, 0x25); /* retain available */
    b8(&props, 1);
    b8(&props, 0x22); /* topic alias maximum */
    b16(&props, 10);
    b8(&props, 0x1F);
    bstr(&props, "welcome", 7);
    b8(&body, (uint8_t)props.n);
    braw(&body, props.b, props.n);
    struct mqtt_pkt p;
    uint8_t buf[1100];
    decode_ok(0x20, &body, &p, buf);
    assert_int_equal(p.type, MQTT_CONNACK);
    assert_true(p.session_present);
    assert_int_equal(p.reason, 0);
    assert_true(p.has_server_keepalive);
    assert_int_equal(p.server_keepalive, 120);
    assert_int_equal(p.receive_max, 20);
    assert_int_equal(p.max_packet, 1048576);
    assert_int_equal(p.reason_string_len, 7);

    /* refused with "not authorized", no properties beyond the length */
    struct pk r = {{0}, 0};
    b8(&r, 0);
    b8(&r, 0x87);
    b8(&r, 0);
    decode_ok(0x20, &r, &p, buf);
    assert_int_equal(p.reason, 0x87);
    assert_int_equal(p.receive_max, 65535); /* default */
    assert_string_equal(mqtt_reason_string(0x87), "not authorized");
}

static void test_dec_others(void **state)
{
    (void)state;
    struct mqtt_pkt p;
    uint8_t buf[1100];
    struct pk a = {{0}, 0};
    b16(&a, 42); /* PUBACK short form */
    decode_ok(0x40, &a, &p, buf);
    assert_int_equal(p.id, 42);
    assert_int_equal(p.reason, 0);
    b8(&a, 0x10); /* with a reason */
    decode_ok(0x40, &a, &p, buf);
    assert_int_equal(p.reason, 0x10);
    b8(&a, 3); /* and properties */
    b8(&a, 0x1F);
    b16(&a, 0);
    decode_ok(0x40, &a, &p, buf);

    struct pk s = {{0}, 0};
    b16(&s, 5);
    b8(&s, 0);
    b8(&s, 1);
    b8(&s, 0x80);
    decode_ok(0x90, &s, &p, buf);
    assert_int_equal(p.type, MQTT_SUBACK);
    assert_int_equal(p.nsub_reasons, 2);
    assert_int_equal(p.reason, 1);

    struct pk e = {{0}, 0};
    decode_ok(0xD0, &e, &p, buf);
    assert_int_equal(p.type, MQTT_PINGRESP);
    decode_ok(0xE0, &e, &p, buf); /* DISCONNECT, normal */
    assert_int_equal(p.reason, 0);
    struct pk d = {{0}, 0};
    b8(&d, 0x8B);
    struct pk dp = {{0}, 0};
    b8(&dp, 0x1F);
    bstr(&dp, "bye", 3);
    b8(&dp, 0x1C);
    bstr(&dp, "other:1883", 10);
    b8(&d, (uint8_t)dp.n);
    braw(&d, dp.b, dp.n);
    decode_ok(0xE0, &d, &p, buf);
    assert_int_equal(p.reason, 0x8B);
    assert_int_equal(p.reason_string_len, 3);

    /* PUBLISH with every property a broker may forward: unused ones skipped */
    struct pk m = {{0}, 0};
    bstr(&m, "tidings/v1/local/notify", 23);
    b16(&m, 77);
    struct pk mp = {{0}, 0};
    b8(&mp, 0x01);
    b8(&mp, 1); /* payload format: UTF-8 */
    b8(&mp, 0x02);
    b32(&mp, 60);
    b8(&mp, 0x03);
    bstr(&mp, "application/json", 16);
    b8(&mp, 0x0B);
    b8(&mp, 0x81); /* subscription id 129 as a two-byte varint */
    b8(&mp, 0x01);
    b8(&mp, 0x0B);
    b8(&mp, 0x02); /* a second subscription id is allowed */
    b8(&mp, 0x26);
    bstr(&mp, "a", 1);
    bstr(&mp, "b", 1);
    b8(&mp, 0x26);
    bstr(&mp, "a", 1);
    bstr(&mp, "c", 1);
    b8(&m, (uint8_t)mp.n);
    braw(&m, mp.b, mp.n);
    braw(&m, "{}", 2);
    decode_ok(0x3A /* DUP, QoS 1 */, &m, &p, buf);
    assert_int_equal(p.qos, 1);
    assert_true(p.dup);
    assert_int_equal(p.id, 77);
    assert_int_equal(p.expiry, 60);
    assert_int_equal(p.payload_len, 2);
    assert_memory_equal(p.payload, "{}", 2);
}

/* Every way a broker's packet can be wrong: refused, naming what. */
static void test_malformed(void **state)
{
    (void)state;
    struct pk x;
#define RESET() (memset(&x, 0, sizeof(x)))
    /* CONNACK */
    RESET();
    b8(&x, 0);
    expect_refused(0x20, &x, "CONNACK: truncated");
    RESET();
    b8(&x, 2);
    b8(&x, 0);
    b8(&x, 0);
    expect_refused(0x20, &x, "reserved acknowledge flags");
    RESET();
    b8(&x, 0);
    b8(&x, 0);
    b8(&x, 0);
    expect_refused(0x21, &x, "fixed header flags");
    RESET();
    b8(&x, 0);
    b8(&x, 0);
    expect_refused(0x20, &x, "truncated property length");
    RESET();
    b8(&x, 0);
    b8(&x, 0);
    b8(&x, 10); /* properties longer than the packet */
    b8(&x, 0x1F);
    expect_refused(0x20, &x, "run past the packet's end");
    RESET();
    b8(&x, 0);
    b8(&x, 0);
    b8(&x, 3);
    b8(&x, 0x27);
    b16(&x, 1); /* u32 cut short */
    expect_refused(0x20, &x, "property 0x27 truncated");
    RESET();
    b8(&x, 0);
    b8(&x, 0);
    b8(&x, 2);
    b8(&x, 0x7F);
    b8(&x, 0);
    expect_refused(0x20, &x, "unknown property 0x7f");
    RESET();
    b8(&x, 0);
    b8(&x, 0);
    b8(&x, 6);
    b8(&x, 0x21);
    b16(&x, 5);
    b8(&x, 0x21);
    b16(&x, 6);
    expect_refused(0x20, &x, "property 0x21 more than once");
    RESET();
    b8(&x, 0);
    b8(&x, 0);
    b8(&x, 3);
    b8(&x, 0x21);
    b16(&x, 0);
    expect_refused(0x20, &x, "receive maximum 0");
    RESET();
    b8(&x, 0);
    b8(&x, 0);
    b8(&x, 5);
    b8(&x, 0x1F);
    bstr(&x, "\xc0\x80", 2);
    expect_refused(0x20, &x, "not valid UTF-8");
    RESET();
    b8(&x, 0);
    b8(&x, 0);
    b8(&x, 0);
    b8(&x, 0xAA);
    expect_refused(0x20, &x, "bytes after the end");
    RESET();
    b8(&x, 0);
    b8(&x, 0);
    b8(&x, 1);
    b8(&x, 0x80); /* property id varint cut */
    expect_refused(0x20, &x, "malformed property identifier");
    RESET();
    b8(&x, 0);
    b8(&x, 0);
    b8(&x, 2);
    b8(&x, 0x24);
    b8(&x, 2);
    expect_refused(0x20, &x, "maximum QoS 2");

    /* PUBLISH */
    RESET();
    bstr(&x, "a/\xff", 3);
    b8(&x, 0);
    expect_refused(0x30, &x, "topic is not valid UTF-8");
    RESET();
    bstr(&x, "a/+", 3);
    b8(&x, 0);
    expect_refused(0x30, &x, "wildcard");
    RESET();
    bstr(&x, "a/#", 3);
    b8(&x, 0);
    expect_refused(0x30, &x, "wildcard");
    RESET();
    bstr(&x, "", 0);
    b8(&x, 0);
    expect_refused(0x30, &x, "empty topic");
    RESET();
    bstr(&x, "a", 1);
    b8(&x, 0);
    expect_refused(0x36, &x, "QoS 3");
    expect_refused(0x34, &x, "QoS 2");
    expect_refused(0x38, &x, "DUP set on QoS 0");
    RESET();
    b16(&x, 40); /* topic longer than the packet */
    b8(&x, 'a');
    expect_refused(0x30, &x, "topic runs past");
    RESET();
    bstr(&x, "a", 1);
    b16(&x, 0);
    b8(&x, 0);
    expect_refused(0x32, &x, "packet identifier 0");
    RESET();
    bstr(&x, "a", 1);
    b8(&x, 0);
    expect_refused(0x32, &x, "truncated packet identifier");
    RESET();
    bstr(&x, "a", 1);
    expect_refused(0x30, &x, "truncated property length");
    RESET();
    bstr(&x, "a", 1);
    b8(&x, 3);
    b8(&x, 0x23);
    b16(&x, 1);
    expect_refused(0x30, &x, "topic alias");
    RESET();
    bstr(&x, "a", 1);
    b8(&x, 4);
    b8(&x, 0x08);
    bstr(&x, "+", 1);
    expect_refused(0x30, &x, "response topic has a wildcard");
    RESET();
    bstr(&x, "a", 1);
    b8(&x, 2);
    b8(&x, 0x0B);
    b8(&x, 0);
    expect_refused(0x30, &x, "subscription identifier 0");
    RESET();
    bstr(&x, "a", 1);
    b8(&x, 2);
    b8(&x, 0x01);
    b8(&x, 7);
    expect_refused(0x30, &x, "payload format indicator");

    /* PUBACK, SUBACK, PINGRESP, DISCONNECT */
    RESET();
    b16(&x, 0);
    expect_refused(0x40, &x, "PUBACK: packet identifier 0");
    RESET();
    b8(&x, 1);
    expect_refused(0x40, &x, "PUBACK: truncated");
    RESET();
    b16(&x, 1);
    b8(&x, 0);
    b8(&x, 5); /* properties past the end */
    expect_refused(0x40, &x, "run past");
    RESET();
    b16(&x, 1);
    b8(&x, 0);
    expect_refused(0x90, &x, "SUBACK: no reason codes");
    RESET();
    b8(&x, 0);
    expect_refused(0xD0, &x, "PINGRESP: 1 bytes after");
    RESET();
    expect_refused(0xD1, &x, "fixed header flags");
    RESET();
    b8(&x, 0x8E);
    b8(&x, 2);
    b8(&x, 0x13); /* u16 cut short */
    b8(&x, 0);
    expect_refused(0xE0, &x, "property 0x13 truncated");

    /* packet types a client never receives */
    RESET();
    b16(&x, 1);
    expect_refused(0x50, &x, "PUBREC: QoS 2");
    expect_refused(0x62, &x, "PUBREL: QoS 2");
    expect_refused(0x70, &x, "PUBCOMP: QoS 2");
    expect_refused(0xB0, &x, "UNSUBACK");
    expect_refused(0xF0, &x, "AUTH");
    expect_refused(0x10, &x, "only a client sends");
    expect_refused(0x82, &x, "only a client sends");
    expect_refused(0xA2, &x, "only a client sends");
    expect_refused(0xC0, &x, "only a client sends");
    expect_refused(0x00, &x, "unknown packet type 0");
#undef RESET
}

static void test_frame(void **state)
{
    (void)state;
    size_t total = 0;
    char why[MQTT_WHY_MAX] = "";
    static const uint8_t five[] = {0x30, 0xff, 0xff, 0xff, 0xff, 0x01};
    assert_int_equal(mqtt_frame(five, sizeof(five), 0, &total, why, sizeof(why)), -1);
    assert_non_null(strstr(why, "remaining length longer than 4 bytes"));
    static const uint8_t big[] = {0x30, 0x80, 0x80, 0x04}; /* 65536 */
    assert_int_equal(mqtt_frame(big, sizeof(big), 65536, &total, why, sizeof(why)), -1);
    assert_non_null(strstr(why, "over the maximum packet size 65536"));
    assert_int_equal(mqtt_frame(big, sizeof(big), 65540, &total, why, sizeof(why)), 1);
    assert_int_equal(total, 4 + 65536);
    assert_int_equal(mqtt_frame(big, 3, 0, &total, why, sizeof(why)), 0);
    assert_int_equal(mqtt_frame(big, 1, 0, &total, why, sizeof(why)), 0);
    /* a decode of a packet whose length disagrees with its header */
    static const uint8_t short_pkt[] = {0x40, 0x03, 0x00, 0x01};
    struct mqtt_pkt p;
    assert_int_equal(mqtt_decode(short_pkt, sizeof(short_pkt), &p, why, sizeof(why)), -1);
    assert_non_null(strstr(why, "length does not match"));
}

/* A stream of several packets fed in pieces (1 byte, then random sizes):
 * the same packets come out as from the whole stream at once. */
struct reasm {
    uint8_t buf[8192];
    size_t len;
    unsigned types[32];
    uint16_t ids[32];
    unsigned n;
};

static void reasm_feed(struct reasm *r, const uint8_t *p, size_t n)
{
    memcpy(r->buf + r->len, p, n);
    r->len += n;
    for (;;) {
        size_t total;
        char why[MQTT_WHY_MAX];
        int rc = mqtt_frame(r->buf, r->len, 4096, &total, why, sizeof(why));
        assert_int_not_equal(rc, -1);
        if (rc == 0 || r->len < total) {
            return;
        }
        struct mqtt_pkt pk;
        if (mqtt_decode(r->buf, total, &pk, why, sizeof(why)) < 0) {
            fail_msg("fragment decode: %s", why);
        }
        r->types[r->n] = pk.type;
        r->ids[r->n++] = pk.id;
        memmove(r->buf, r->buf + total, r->len - total);
        r->len -= total;
    }
}

static void test_fragmented(void **state)
{
    (void)state;
    struct mqtt_buf s = {0};
    /* CONNACK, a PUBLISH with a 300-byte payload (2-byte length), PUBACK,
     * SUBACK, PINGRESP, DISCONNECT */
    static const uint8_t connack[] = {0x20, 6, 0, 0, 3, 0x21, 0, 20};
    assert_int_equal(mqtt_buf_reserve(&s, sizeof(connack)), 0);
    memcpy(s.p, connack, sizeof(connack));
    s.len = sizeof(connack);
    static char payload[300];
    memset(payload, 'p', sizeof(payload));
    struct mqtt_publish_params pp = {.topic = "x/y",
                                     .payload = payload,
                                     .len = sizeof(payload),
                                     .qos = 1,
                                     .id = 11,
                                     .corr = "c",
                                     .corr_len = 1,
                                     .response_topic = "r"};
    assert_int_equal(mqtt_enc_publish(&s, &pp), 0);
    static const uint8_t tail[] = {0x40, 2, 0, 12, 0x90, 4, 0, 13, 0, 1, 0xD0, 0, 0xE0, 0};
    assert_int_equal(mqtt_buf_reserve(&s, sizeof(tail)), 0);
    memcpy(s.p + s.len, tail, sizeof(tail));
    s.len += sizeof(tail);

    static const unsigned want_types[] = {MQTT_CONNACK, MQTT_PUBLISH,  MQTT_PUBACK,
                                          MQTT_SUBACK,  MQTT_PINGRESP, MQTT_DISCONNECT};
    static const uint16_t want_ids[] = {0, 11, 12, 13, 0, 0};
    struct reasm *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    for (size_t i = 0; i < s.len; i++) {
        reasm_feed(r, s.p + i, 1);
    }
    assert_int_equal(r->n, 6);
    for (unsigned i = 0; i < 6; i++) {
        assert_int_equal(r->types[i], want_types[i]);
        assert_int_equal(r->ids[i], want_ids[i]);
    }
    assert_int_equal(r->len, 0);
    srand(7);
    for (int round = 0; round < 50; round++) {
        memset(r, 0, sizeof(*r));
        size_t off = 0;
        while (off < s.len) {
            size_t k = 1 + (size_t)rand() % 40;
            k = k > s.len - off ? s.len - off : k;
            reasm_feed(r, s.p + off, k);
            off += k;
        }
        assert_int_equal(r->n, 6);
        assert_int_equal(r->len, 0);
    }
    free(r);
    mqtt_buf_free(&s);
}

/* --- the client against a scripted broker ------------------------------------- */

/*
 * One loop runs both the client (platform/mqtt.c) and a small scripted
 * broker on a loopback socket. Connection 0 is a normal session: CONNECT
 * fields checked, an outbound window of 2 (the broker's Receive Maximum),
 * six inbound QoS 1 messages (two over our Receive Maximum, which
 * mosquitto 2.0.11 does when a session resumes: taken, not fatal) whose
 * PUBACKs must wait for mqtt_release_acks. Every later connection commits
 * one sin; the client must close it (with a DISCONNECT naming the kind:
 * 0x81 malformed, 0x82 protocol error, 0x95 packet too large) and
 * reconnect; held PUBACKs of a closed connection are never sent.
 */
enum sin {
    SIN_BAD_TOPIC,     /* PUBLISH with a topic that is not UTF-8 */
    SIN_CONNACK_AGAIN, /* a second CONNACK */
    SIN_TOO_LARGE,     /* a packet over our Maximum Packet Size */
    SIN_BAD_LENGTH,    /* remaining length of 5 bytes */
    SIN_PUBREC,        /* a QoS 2 packet never asked for */
    SIN_TRUNC_PROPS,   /* PUBLISH whose properties run past its end */
    SIN_RESERVED,      /* packet type 0 */
    SIN_COUNT
};

#define TEST_RECEIVE_MAX 4
#define TEST_MAX_PACKET 4096
#define N_IN (TEST_RECEIVE_MAX + 2) /* inbound QoS 1 messages on connection 0 */

struct fake {
    loop_t *loop;
    mqtt_t *m;
    int lfd, cfd;
    int port;
    unsigned conns; /* CONNECTs seen */
    uint8_t in[65536];
    size_t inlen;
    /* connection 0 */
    bool connect_ok;      /* CONNECT carried what mqtt_opts asked for */
    unsigned client_pubs; /* PUBLISHes from the client */
    uint16_t client_pub_ids[8];
    unsigned pubacks_in; /* PUBACKs from the client */
    uint16_t puback_ids[N_IN];
    unsigned pubacks_before_release;
    bool released;
    /* client side */
    unsigned on_connects, on_disconnects, messages;
    int last_disconnect_rc;
    unsigned on_publish;
    unsigned inflight_after_publish;
    unsigned held_seen;
    uint64_t release_timer;
    /* per sin: the DISCONNECT reason the client sent, 0x100 = none */
    int disconnect_reason[SIN_COUNT + 1];
    bool failed;
    char why[200];
};

static void fake_fail(struct fake *f, const char *why)
{
    if (!f->failed) {
        f->failed = true;
        snprintf(f->why, sizeof(f->why), "%s", why);
    }
    loop_stop(f->loop);
}

static void fake_send(struct fake *f, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n > 0) {
        ssize_t w = send(f->cfd, b, n, MSG_NOSIGNAL);
        if (w <= 0) {
            return; /* the client closed: its business */
        }
        b += w;
        n -= (size_t)w;
    }
}

static void fake_publish(struct fake *f, const char *topic, uint16_t id, const char *payload)
{
    struct mqtt_buf b = {0};
    struct mqtt_publish_params pp = {
        .topic = topic, .payload = payload, .len = strlen(payload), .qos = id ? 1 : 0, .id = id};
    assert_int_equal(mqtt_enc_publish(&b, &pp), 0);
    fake_send(f, b.p, b.len);
    mqtt_buf_free(&b);
}

static void fake_sin(struct fake *f, enum sin s)
{
    switch (s) {
    case SIN_BAD_TOPIC: {
        static const uint8_t p[] = {0x30, 6, 0, 3, 'a', '/', 0xff, 0};
        fake_send(f, p, sizeof(p));
        break;
    }
    case SIN_CONNACK_AGAIN: {
        static const uint8_t p[] = {0x20, 3, 0, 0, 0};
        fake_send(f, p, sizeof(p));
        break;
    }
    case SIN_TOO_LARGE: {
        static char big[TEST_MAX_PACKET + 100];
        memset(big, 'x', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        fake_publish(f, "t/big", 0, big);
        break;
    }
    case SIN_BAD_LENGTH: {
        static const uint8_t p[] = {0x30, 0xff, 0xff, 0xff, 0xff, 0x01};
        fake_send(f, p, sizeof(p));
        break;
    }
    case SIN_PUBREC: {
        static const uint8_t p[] = {0x50, 2, 0, 1};
        fake_send(f, p, sizeof(p));
        break;
    }
    case SIN_TRUNC_PROPS: {
        static const uint8_t p[] = {0x30, 5, 0, 1, 't', 9, 0x02};
        fake_send(f, p, sizeof(p));
        break;
    }
    case SIN_RESERVED: {
        static const uint8_t p[] = {0x00, 0};
        fake_send(f, p, sizeof(p));
        break;
    }
    default:
        break;
    }
}

/* Parse the client's CONNECT: flags and the properties we set. */
static bool check_connect(const uint8_t *p, size_t n)
{
    uint32_t rl;
    int k = mqtt_varint_get(p + 1, n - 1, &rl);
    const uint8_t *v = p + 1 + k;
    if (memcmp(v, "\0\4MQTT\5", 7) != 0) {
        return false;
    }
    uint8_t flags = v[7];
    uint16_t ka = (uint16_t)(v[8] << 8 | v[9]);
    uint32_t plen;
    int pk = mqtt_varint_get(v + 10, n, &plen);
    const uint8_t *q = v + 10 + pk, *end = q + plen;
    bool expiry = false, rmax = false, mpack = false;
    while (q < end) {
        uint8_t id = *q++;
        if (id == 0x11) {
            expiry = (q[0] << 24 | q[1] << 16 | q[2] << 8 | q[3]) == 3600;
            q += 4;
        } else if (id == 0x21) {
            rmax = (q[0] << 8 | q[1]) == TEST_RECEIVE_MAX;
            q += 2;
        } else if (id == 0x27) {
            mpack = (uint32_t)(q[0] << 24 | q[1] << 16 | q[2] << 8 | q[3]) == TEST_MAX_PACKET;
            q += 4;
        } else {
            return false;
        }
    }
    /* clean start off (persistent session), keepalive 0 */
    return (flags & 0x02) == 0 && ka == 0 && expiry && rmax && mpack;
}

/* Connection 0 done (every PUBACK both ways): then its sin, once. */
static void maybe_sin0(struct fake *f)
{
    if (f->conns == 1 && f->pubacks_in == N_IN && f->on_publish == 3 && f->client_pubs == 3 &&
        f->cfd >= 0) {
        f->pubacks_in++;
        fake_sin(f, SIN_BAD_TOPIC);
    }
}

static void fake_packet(struct fake *f, const uint8_t *p, size_t n)
{
    unsigned type = p[0] >> 4;
    uint32_t rl;
    int k = mqtt_varint_get(p + 1, n - 1, &rl);
    const uint8_t *v = p + 1 + k;
    unsigned sin_ix = f->conns ? f->conns - 1 : 0;
    switch (type) {
    case MQTT_CONNECT: {
        f->conns++;
        if (f->conns == 1) {
            f->connect_ok = check_connect(p, n);
            /* CONNACK: our Receive Maximum is 2 */
            static const uint8_t ack[] = {0x20, 6, 0, 0, 3, 0x21, 0, 2};
            fake_send(f, ack, sizeof(ack));
            /* two more than our Receive Maximum: taken (mosquitto 2.0.11
             * does this when a session resumes), not a reason to close */
            for (uint16_t i = 1; i <= N_IN; i++) {
                fake_publish(f, "t/in", i, "{\"n\":1}");
            }
            return;
        }
        static const uint8_t ack[] = {0x20, 3, 0, 0, 0};
        fake_send(f, ack, sizeof(ack));
        if (f->conns - 1 < SIN_COUNT) {
            fake_sin(f, (enum sin)(f->conns - 1));
        }
        return;
    }
    case MQTT_PUBLISH: {
        uint16_t tl = (uint16_t)(v[0] << 8 | v[1]);
        uint16_t id = (uint16_t)(v[2 + tl] << 8 | v[3 + tl]);
        if (f->client_pubs < 8) {
            f->client_pub_ids[f->client_pubs] = id;
        }
        f->client_pubs++;
        /* the window is 2: the third comes only after a PUBACK */
        if (f->client_pubs == 2) {
            uint8_t ack[] = {0x40, 2, (uint8_t)(f->client_pub_ids[0] >> 8),
                             (uint8_t)f->client_pub_ids[0]};
            fake_send(f, ack, sizeof(ack));
        } else if (f->client_pubs == 3) {
            for (int i = 1; i < 3; i++) {
                uint8_t ack[] = {0x40, 2, (uint8_t)(f->client_pub_ids[i] >> 8),
                                 (uint8_t)f->client_pub_ids[i]};
                fake_send(f, ack, sizeof(ack));
            }
        }
        break;
    }
    case MQTT_PUBACK:
        if (f->conns != 1) {
            fake_fail(f, "a PUBACK on a connection whose messages were never released");
            return;
        }
        if (!f->released) {
            f->pubacks_before_release++;
        }
        if (f->pubacks_in < N_IN) {
            f->puback_ids[f->pubacks_in] = (uint16_t)(v[0] << 8 | v[1]);
        }
        f->pubacks_in++;
        break;
    case MQTT_DISCONNECT:
        if (f->conns >= 1) {
            f->disconnect_reason[sin_ix] = rl ? v[0] : 0;
        }
        break;
    default:
        break;
    }
    maybe_sin0(f);
}

static void fake_on_conn(loop_t *loop, int fd, unsigned events, void *arg)
{
    (void)events;
    struct fake *f = arg;
    ssize_t n = recv(fd, f->in + f->inlen, sizeof(f->in) - f->inlen, 0);
    if (n <= 0) {
        loop_fd_del(loop, fd);
        close(fd);
        f->cfd = -1;
        f->inlen = 0;
        return;
    }
    f->inlen += (size_t)n;
    for (;;) {
        size_t total;
        char why[MQTT_WHY_MAX];
        if (mqtt_frame(f->in, f->inlen, 0, &total, why, sizeof(why)) != 1 || f->inlen < total) {
            break;
        }
        fake_packet(f, f->in, total);
        memmove(f->in, f->in + total, f->inlen - total);
        f->inlen -= total;
        if (f->cfd < 0) {
            break;
        }
    }
}

static void fake_on_listen(loop_t *loop, int fd, unsigned events, void *arg)
{
    (void)events;
    struct fake *f = arg;
    int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0) {
        return;
    }
    if (f->cfd >= 0) {
        /* the client reconnected before we saw the old socket's EOF */
        loop_fd_del(loop, f->cfd);
        close(f->cfd);
    }
    f->cfd = c;
    f->inlen = 0;
    loop_fd_add(loop, c, LOOP_READ, fake_on_conn, f);
}

static void on_release(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    struct fake *f = arg;
    f->release_timer = 0;
    f->held_seen = mqtt_held_acks(f->m);
    f->released = true;
    mqtt_release_acks(f->m);
}

static void cl_connect(void *arg)
{
    struct fake *f = arg;
    f->on_connects++;
    if (f->on_connects == 1 + SIN_COUNT) {
        loop_stop(f->loop); /* every sin was answered with a reconnect */
    }
    if (f->on_connects == 1) {
        for (int i = 0; i < 3; i++) {
            int mid = 0;
            assert_int_equal(mqtt_publish(f->m, "t/out", "x", 1, 1, false, 0, NULL, &mid), 0);
            assert_true(mid > 0);
        }
        f->inflight_after_publish = mqtt_inflight(f->m);
    }
}

static void cl_disconnect(void *arg, int rc)
{
    struct fake *f = arg;
    f->on_disconnects++;
    f->last_disconnect_rc = rc;
    if (mqtt_held_acks(f->m) != 0) {
        fake_fail(f, "held acks survived the connection");
    }
}

static void cl_message(void *arg, const struct mqtt_msg *msg)
{
    struct fake *f = arg;
    if (f->on_connects != 1) {
        return; /* sins may deliver a message or two first */
    }
    f->messages++;
    if (strcmp(msg->topic, "t/in") != 0 || msg->qos != 1 || msg->len == 0) {
        fake_fail(f, "message fields");
    }
    /* The PUBACKs are held: give the client a chance to (wrongly) send
     * them, then release. */
    if (f->messages == N_IN) {
        f->release_timer = loop_timer_add(f->loop, 30, on_release, f);
    }
}

static void cl_publish(void *arg, int mid, int reason)
{
    struct fake *f = arg;
    (void)mid;
    if (reason == 0) {
        f->on_publish++;
    }
    maybe_sin0(f);
}

static void on_deadline(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    struct fake *f = arg;
    char w[200];
    snprintf(w, sizeof(w),
             "timed out: conns=%u connects=%u disconnects=%u messages=%u pubs=%u "
             "acks_in=%u on_publish=%u",
             f->conns, f->on_connects, f->on_disconnects, f->messages, f->client_pubs,
             f->pubacks_in, f->on_publish);
    fake_fail(f, w);
}

static void test_client_scripted(void **state)
{
    (void)state;
    log_set_level(getenv("TEST_MQTT_DEBUG") ? LOG_LVL_DEBUG : LOG_LVL_ERROR);
    struct fake *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->cfd = -1;
    for (int i = 0; i <= SIN_COUNT; i++) {
        f->disconnect_reason[i] = 0x100;
    }
    f->loop = loop_create();
    assert_non_null(f->loop);
    f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(f->lfd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(f->lfd, 8), 0);
    socklen_t sl = sizeof(sa);
    assert_int_equal(getsockname(f->lfd, (struct sockaddr *)&sa, &sl), 0);
    f->port = ntohs(sa.sin_port);
    assert_int_equal(loop_fd_add(f->loop, f->lfd, LOOP_READ, fake_on_listen, f), 0);
    struct mqtt_opts o = {
        .name = "test",
        .host = "127.0.0.1",
        .port = f->port,
        .client_id = "test-client",
        .keepalive_s = 0,
        .backoff_base_ms = 1,
        .backoff_cap_ms = 5,
        .session_expiry_s = 3600,
        .receive_max = TEST_RECEIVE_MAX,
        .max_packet = TEST_MAX_PACKET,
        .manual_ack = true,
    };
    struct mqtt_handlers h = {.on_connect = cl_connect,
                              .on_disconnect = cl_disconnect,
                              .on_message = cl_message,
                              .on_publish = cl_publish,
                              .arg = f};
    f->m = mqtt_create(f->loop, &o, &h);
    assert_non_null(f->m);
    uint64_t deadline = loop_timer_add(f->loop, 20000, on_deadline, f);
    assert_int_equal(loop_run(f->loop), 0);
    loop_timer_cancel(f->loop, deadline);
    if (f->failed) {
        fail_msg("scripted broker: %s", f->why);
    }
    assert_true(f->connect_ok);
    /* outbound: 3 published, 2 in the window, all 3 acked in order */
    assert_int_equal(f->inflight_after_publish, 3);
    assert_int_equal(f->client_pubs, 3);
    assert_int_equal(f->on_publish, 3);
    assert_int_equal(f->client_pub_ids[0], 1);
    assert_int_equal(f->client_pub_ids[2], 3);
    /* inbound: N_IN messages (over our Receive Maximum: taken), no PUBACK
     * until released, then all of them in order */
    assert_int_equal(f->messages, N_IN);
    assert_int_equal(f->held_seen, N_IN);
    assert_int_equal(f->pubacks_before_release, 0);
    assert_int_equal(f->pubacks_in, N_IN + 1); /* and the sin's marker */
    for (unsigned i = 0; i < N_IN; i++) {
        assert_int_equal(f->puback_ids[i], i + 1);
    }
    /* every sin: closed (with the right DISCONNECT), reconnected */
    assert_int_equal(f->conns, 1 + SIN_COUNT);
    assert_int_equal(f->on_connects, 1 + SIN_COUNT);
    assert_int_equal(f->on_disconnects, SIN_COUNT);
    assert_int_equal(f->last_disconnect_rc, TDG_EMQTT);
    /* connection k + 1 committed sin k */
    assert_int_equal(f->disconnect_reason[SIN_BAD_TOPIC], 0x81);
    assert_int_equal(f->disconnect_reason[SIN_CONNACK_AGAIN], 0x82);
    assert_int_equal(f->disconnect_reason[SIN_TOO_LARGE], 0x95);
    assert_int_equal(f->disconnect_reason[SIN_BAD_LENGTH], 0x81);
    assert_int_equal(f->disconnect_reason[SIN_PUBREC], 0x81);
    assert_int_equal(f->disconnect_reason[SIN_TRUNC_PROPS], 0x81);
    assert_int_equal(f->disconnect_reason[SIN_RESERVED], 0x81);
    mqtt_destroy(f->m);
    if (f->cfd >= 0) {
        close(f->cfd);
    }
    close(f->lfd);
    loop_destroy(f->loop);
    free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_varint),          cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_enc_connect),     cmocka_unit_test(test_enc_publish_roundtrip),
        cmocka_unit_test(test_enc_small),       cmocka_unit_test(test_dec_connack),
        cmocka_unit_test(test_dec_others),      cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_frame),           cmocka_unit_test(test_fragmented),
        cmocka_unit_test(test_client_scripted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
