/*
 * test_apns_format.c - the APNs channel's pure parts: format against golden
 * files, the answer -> outcome table, provider token age rules on a
 * simulated clock, and config checks in init.
 *
 * Golden files live in tests/golden/apns/<name>.txt: the request line, the
 * headers (the bearer token replaced by <masked>: it carries a signature
 * that changes with every generated key), a blank line, and the body bytes
 * exactly as sent. A dropped delivery renders as "DROP <reason> <action>".
 * Run with TIDINGS_UPDATE_GOLDEN=1 to rewrite them after a deliberate change,
 * then review the diff.
 */
#include <errno.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include <cjson/cJSON.h>
#include <mbedtls/config.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>

#include "apns.h"
#include "config.h"
#include "error.h"
#include "jwt.h"
#include "log.h"

#ifndef GOLDEN_DIR
#error "GOLDEN_DIR must point at tests/golden/apns"
#endif

#define T0_MS INT64_C(1700000000000) /* 2023-11-14T22:13:20Z */
#define TOKEN_A "7d3c1e0f5a9b2c4d6e8f0a1b3c5d7e9f1a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d"

static char tmpdir[256];
static char keyfile[320];
static int64_t fake_now = T0_MS;

static int64_t fake_clock(void *arg)
{
    (void)arg;
    return fake_now;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* rm -rf without a shell: also works for tests run under qemu-user. */
static int rm_tree(const char *path)
{
    return nftw(path, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* --- fixtures --------------------------------------------------------- */

static void gen_ec_key(const char *path)
{
    mbedtls_entropy_context ent;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_entropy_init(&ent);
    mbedtls_ctr_drbg_init(&drbg);
    assert_int_equal(mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &ent, NULL, 0), 0);
    mbedtls_pk_context pk;
    mbedtls_pk_init(&pk);
    assert_int_equal(mbedtls_pk_setup(&pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)), 0);
    assert_int_equal(mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(pk),
                                         mbedtls_ctr_drbg_random, &drbg),
                     0);
    unsigned char pem[2048];
    assert_int_equal(mbedtls_pk_write_key_pem(&pk, pem, sizeof(pem)), 0);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs((const char *)pem, f);
    fclose(f);
    mbedtls_pk_free(&pk);
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&ent);
}

static void config_for_test(struct apns_config *c)
{
    char err[CONFIG_ERR_MAX];
    const struct channel_ops *ops = &apns_channel;
    assert_int_equal(ops->config_size, sizeof(*c));
    assert_int_equal(config_defaults(ops->config, ops->config_n, c, err, sizeof(err)), 0);
    assert_int_equal(
        config_set(ops->config, ops->config_n, c, "apns.key_file", keyfile, err, sizeof(err)), 0);
    assert_int_equal(
        config_set(ops->config, ops->config_n, c, "apns.key_id", "ABC123DEFG", err, sizeof(err)),
        0);
    assert_int_equal(
        config_set(ops->config, ops->config_n, c, "apns.team_id", "DEF123GHIJ", err, sizeof(err)),
        0);
    assert_int_equal(config_set(ops->config, ops->config_n, c, "apns.topic", "com.example.default",
                                err, sizeof(err)),
                     0);
}

static void *make_channel(const struct apns_config *c)
{
    struct channel_env env = {.loop = NULL, .http = NULL}; /* format only */
    void *st = NULL;
    char err[256] = "";
    int rc = apns_channel.init(&env, c, &st, err, sizeof(err));
    if (rc != 0) {
        fail_msg("init: %s: %s", tdg_strerror(rc), err);
    }
    fake_now = T0_MS;
    apns_set_clock(st, fake_clock, NULL);
    return st;
}

static int group_setup(void **state)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/tidings-apnsfmt-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        return -1;
    }
    snprintf(keyfile, sizeof(keyfile), "%s/AuthKey_ABC123DEFG.p8", tmpdir);
    gen_ec_key(keyfile);
    struct apns_config c;
    config_for_test(&c);
    *state = make_channel(&c);
    return 0;
}

static int group_teardown(void **state)
{
    apns_channel.destroy(*state);
    return rm_tree(tmpdir) == 0 ? 0 : -1;
}

/* --- rendering and golden compare -------------------------------------- */

static const char *action_name(int a)
{
    switch (a) {
    case CHANNEL_DEVICE_DISABLE:
        return "disable";
    case CHANNEL_DEVICE_FLAG:
        return "flag";
    default:
        return "none";
    }
}

/* Render a format result as golden text into buf. */
static void render(int rc, const struct channel_request *req, const struct channel_outcome *o,
                   char *buf, size_t len)
{
    size_t off = 0;
#define PUT(...)                                                                                   \
    do {                                                                                           \
        int n_ = snprintf(buf + off, len - off, __VA_ARGS__);                                      \
        assert_true(n_ >= 0 && (size_t)n_ < len - off);                                            \
        off += (size_t)n_;                                                                         \
    } while (0)
    if (rc < 0) {
        PUT("DROP %s %s\n", o->reason, action_name(o->device_action));
        return;
    }
    PUT("%s %s\n", req->method, req->url);
    for (unsigned i = 0; i < req->nheaders; i++) {
        if (strncmp(req->headers[i], "authorization: bearer ", 22) == 0) {
            PUT("authorization: bearer <masked>\n");
        } else {
            PUT("%s\n", req->headers[i]);
        }
    }
    PUT("\n%.*s\n", (int)req->body_len, req->body);
#undef PUT
}

static void check_golden(const char *name, const char *got)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s.txt", GOLDEN_DIR, name);
    const char *upd = getenv("TIDINGS_UPDATE_GOLDEN");
    if (upd && strcmp(upd, "1") == 0) {
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        fputs(got, f);
        fclose(f);
        return;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        fail_msg("missing golden file %s (run with TIDINGS_UPDATE_GOLDEN=1)", path);
    }
    static char want[16384];
    size_t n = fread(want, 1, sizeof(want) - 1, f);
    fclose(f);
    want[n] = '\0';
    if (strcmp(want, got) != 0) {
        fail_msg("%s differs.\n--- want\n%s--- got\n%s", path, want, got);
    }
}

struct fixture {
    struct notification n;
    struct channel_device dev;
    struct channel_delivery d;
    cJSON *data;
};

static void fixture_init(struct fixture *f, const char *id)
{
    memset(f, 0, sizeof(*f));
    f->n.id = id;
    f->n.to = "user:alice";
    f->n.to_kind = PROTO_TO_USER;
    f->n.to_id = "alice";
    f->n.priority = PROTO_PRIO_NORMAL;
    f->n.channels = PROTO_CH_ALL;
    f->dev.user_id = "alice";
    f->dev.platform = "ios";
    f->dev.token = TOKEN_A;
    f->dev.app = "com.example.tidings";
    f->dev.environment = "production";
    f->d.attempt_id = 42;
    f->d.n = &f->n;
    f->d.dev = &f->dev;
    f->d.now_ms = T0_MS + 123;
}

static void fixture_data(struct fixture *f, const char *json)
{
    f->data = cJSON_Parse(json);
    assert_non_null(f->data);
    f->n.data = f->data;
}

static void fixture_free(struct fixture *f)
{
    cJSON_Delete(f->data);
}

static int run_format(void *st, struct fixture *f, struct channel_request *req,
                      struct channel_outcome *o)
{
    return apns_channel.format(st, &f->d, req, o);
}

static void golden_case(void *st, struct fixture *f, const char *name)
{
    static struct channel_request req;
    struct channel_outcome o;
    int rc = run_format(st, f, &req, &o);
    static char text[16384];
    render(rc, &req, &o, text, sizeof(text));
    check_golden(name, text);
}

/* --- golden cases -------------------------------------------------------- */

static void test_golden_alert(void **state)
{
    struct fixture f;
    fixture_init(&f, "01HF6Y1M6Z8Q3R4S5T6V7W8X9Y");
    f.n.title = "Door open";
    f.n.body = "Front door opened at 08:15";
    f.n.category = "security";
    golden_case(*state, &f, "alert");
    fixture_free(&f);
}

static void test_golden_background(void **state)
{
    struct fixture f;
    fixture_init(&f, "01HF6Y1M6Z8Q3R4S5T6V7W8XA0");
    fixture_data(&f, "{\"sync\":\"orders\",\"since\":1700000000}");
    f.n.category = "orders";
    f.n.priority = PROTO_PRIO_HIGH; /* background is priority 5 whatever we ask */
    golden_case(*state, &f, "background");
    fixture_free(&f);
}

static void test_golden_critical_ttl_collapse(void **state)
{
    struct fixture f;
    fixture_init(&f, "01HF6Y1M6Z8Q3R4S5T6V7W8XA1");
    f.n.title = "Smoke alarm";
    f.n.body = "Kitchen sensor 3";
    f.n.category = "security";
    f.n.priority = PROTO_PRIO_CRITICAL;
    f.n.ttl_s = 3600;
    f.n.collapse_key = "smoke-kitchen";
    golden_case(*state, &f, "critical_ttl_collapse");
    fixture_free(&f);
}

static void test_golden_data_keys(void **state)
{
    struct fixture f;
    fixture_init(&f, "01HF6Y1M6Z8Q3R4S5T6V7W8XA2");
    f.n.title = "Order \"A-1\" shipped";
    f.n.body = "Caf\xc3\xa9 \xe2\x98\x95\nline two";
    f.n.priority = PROTO_PRIO_HIGH;
    f.dev.app = NULL; /* falls back to apns.topic */
    fixture_data(&f, "{\"order_id\":\"A-1\",\"amount\":12.5,\"items\":[1,2],"
                     "\"nested\":{\"k\":true,\"z\":null},\"aps\":\"not ours\","
                     "\"tidings_id\":\"spoofed\"}");
    golden_case(*state, &f, "data_keys");
    fixture_free(&f);
}

/* The payload is written by hand (constant keys as literals, strings through
 * proto_jw_str): byte for byte what cJSON prints for the same tree, for
 * titles, bodies, thread ids and data keys holding every byte 0x01..0xff,
 * at lengths around the writer's 16-byte head and its 8-byte steps. */
static void test_payload_escaping_matches_cjson(void **state)
{
    static char text[3][400];
    static struct channel_request req;
    for (unsigned len = 1; len <= 300; len += (len < 40 ? 1 : 37)) {
        for (unsigned k = 0; k < 3; k++) {
            for (unsigned i = 0; i < len; i++) {
                /* every byte value 1..255 appears, shifted per string */
                text[k][i] = (char)(1 + (i * 7 + k * 85 + len) % 255);
            }
            text[k][len] = '\0';
        }
        struct fixture f;
        fixture_init(&f, "01HF6Y1M6Z8Q3R4S5T6V7W8XB0");
        f.n.title = text[0];
        f.n.body = text[1];
        f.n.category = text[2];
        f.n.priority = PROTO_PRIO_CRITICAL;
        cJSON *data = cJSON_CreateObject();
        assert_non_null(cJSON_AddStringToObject(data, text[2], text[0]));
        f.data = data;
        f.n.data = data;

        cJSON *want = cJSON_CreateObject();
        cJSON *aps = cJSON_AddObjectToObject(want, "aps");
        cJSON *alert = cJSON_AddObjectToObject(aps, "alert");
        cJSON_AddStringToObject(alert, "title", text[0]);
        cJSON_AddStringToObject(alert, "body", text[1]);
        cJSON_AddStringToObject(aps, "sound", "default");
        cJSON_AddStringToObject(aps, "interruption-level", "time-sensitive");
        cJSON_AddStringToObject(aps, "thread-id", text[2]);
        cJSON_AddStringToObject(want, text[2], text[0]);
        cJSON_AddStringToObject(want, "tidings_id", f.n.id);
        char *w = cJSON_PrintUnformatted(want);
        assert_non_null(w);

        struct channel_outcome o;
        assert_int_equal(run_format(*state, &f, &req, &o), 0);
        assert_int_equal(req.body_len, strlen(w));
        if (memcmp(req.body, w, req.body_len) != 0) {
            fail_msg("length %u: payload differs from cJSON's\n--- want\n%s\n--- got\n%.*s", len,
                     w, (int)req.body_len, req.body);
        }
        cJSON_free(w);
        cJSON_Delete(want);
        fixture_free(&f);
    }
}

static void test_golden_low_priority(void **state)
{
    struct fixture f;
    fixture_init(&f, "01HF6Y1M6Z8Q3R4S5T6V7W8XA3");
    f.n.body = "Weekly digest is ready";
    f.n.category = "marketing";
    f.n.priority = PROTO_PRIO_LOW;
    f.n.ttl_s = 86400;
    golden_case(*state, &f, "low_priority");
    fixture_free(&f);
}

static void test_golden_oversize(void **state)
{
    struct fixture f;
    fixture_init(&f, "01HF6Y1M6Z8Q3R4S5T6V7W8XA4");
    static char big[4200];
    memset(big, 'x', sizeof(big) - 1);
    f.n.title = "Big";
    f.n.body = big;
    golden_case(*state, &f, "oversize");
    fixture_free(&f);
}

static void test_oversize_boundary(void **state)
{
    /* Find the body length at which the payload crosses 4096 bytes: one
     * byte under must be sent, one over must be dropped. */
    struct fixture f;
    fixture_init(&f, "id1");
    static char body[4200];
    static struct channel_request req;
    struct channel_outcome o;
    f.n.body = body;
    memset(body, 'y', sizeof(body) - 1);
    body[sizeof(body) - 1] = '\0';
    size_t len = 1;
    body[len] = '\0';
    assert_int_equal(run_format(*state, &f, &req, &o), 0);
    size_t overhead = req.body_len - len;
    memset(body, 'y', sizeof(body) - 1);
    body[APNS_PAYLOAD_MAX - overhead] = '\0';
    assert_int_equal(run_format(*state, &f, &req, &o), 0);
    assert_int_equal(req.body_len, APNS_PAYLOAD_MAX);
    body[APNS_PAYLOAD_MAX - overhead] = 'y';
    body[APNS_PAYLOAD_MAX - overhead + 1] = '\0';
    assert_int_equal(run_format(*state, &f, &req, &o), TDG_ETOOBIG);
    assert_int_equal(o.result, CHANNEL_DROP);
    assert_string_equal(o.reason, "PayloadTooLarge");
    fixture_free(&f);
}

/* --- other format rules -------------------------------------------------- */

static void test_bad_inputs_drop(void **state)
{
    static struct channel_request req;
    struct channel_outcome o;
    struct fixture f;
    fixture_init(&f, "id2");
    f.n.title = "t";

    f.dev.token = "not-hex-at-all";
    assert_true(run_format(*state, &f, &req, &o) < 0);
    assert_int_equal(o.result, CHANNEL_DROP);
    assert_string_equal(o.reason, "BadDeviceToken");
    assert_int_equal(o.device_action, CHANNEL_DEVICE_FLAG);

    f.dev.token = "";
    assert_true(run_format(*state, &f, &req, &o) < 0);
    assert_string_equal(o.reason, "BadDeviceToken");

    f.dev.token = TOKEN_A;
    f.n.collapse_key = "a\r\nx-injected: 1";
    assert_true(run_format(*state, &f, &req, &o) < 0);
    assert_string_equal(o.reason, "BadCollapseId");
    assert_int_equal(o.device_action, CHANNEL_DEVICE_NONE);

    f.n.collapse_key = NULL;
    f.dev.app = "com.example\nx: y";
    assert_true(run_format(*state, &f, &req, &o) < 0);
    assert_string_equal(o.reason, "BadTopic");
    fixture_free(&f);
}

static void test_sandbox_and_missing_topic(void **state)
{
    (void)state;
    struct apns_config c;
    config_for_test(&c);
    char err[CONFIG_ERR_MAX];
    assert_int_equal(config_set(apns_channel.config, apns_channel.config_n, &c, "apns.sandbox_url",
                                "https://api.sandbox.push.apple.com/", err, sizeof(err)),
                     0);
    assert_int_equal(config_set(apns_channel.config, apns_channel.config_n, &c, "apns.topic", "",
                                err, sizeof(err)),
                     0);
    void *st = make_channel(&c);
    static struct channel_request req;
    struct channel_outcome o;
    struct fixture f;
    fixture_init(&f, "id3");
    f.n.body = "b";
    f.dev.environment = "sandbox";
    assert_int_equal(run_format(st, &f, &req, &o), 0);
    assert_string_equal(req.url, "https://api.sandbox.push.apple.com/3/device/" TOKEN_A);
    f.dev.environment = "production";
    assert_int_equal(run_format(st, &f, &req, &o), 0);
    assert_string_equal(req.url, "https://api.push.apple.com/3/device/" TOKEN_A);
    f.dev.app = "";
    assert_int_equal(run_format(st, &f, &req, &o), TDG_ECONFIG);
    assert_string_equal(o.reason, "MissingTopic");
    /* Without a loop there is no HTTP client: send refuses, done not called. */
    assert_int_equal(apns_channel.send(st, &f.d, NULL, NULL), -ENOTCONN);
    apns_channel.destroy(st);
    fixture_free(&f);
}

/* "kid/iss" of the provider token in req, or "none". */
static void token_ids(const struct channel_request *req, char *out, size_t cap)
{
    snprintf(out, cap, "none");
    for (unsigned i = 0; i < req->nheaders; i++) {
        if (strncmp(req->headers[i], "authorization: bearer ", 22) != 0) {
            continue;
        }
        const char *tok = req->headers[i] + 22;
        const char *d1 = strchr(tok, '.');
        const char *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
        assert_non_null(d2);
        char hdr[128], claims[128];
        int n = jwt_b64url_decode(tok, (size_t)(d1 - tok), hdr, sizeof(hdr) - 1);
        assert_true(n > 0);
        hdr[n] = '\0';
        n = jwt_b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), claims, sizeof(claims) - 1);
        assert_true(n > 0);
        claims[n] = '\0';
        snprintf(out, cap, "%s %s", hdr, claims);
    }
}

/* The bearer token in a formatted request is a valid ES256 JWT with our kid,
 * iss and the clock's iat. */
static void test_authorization_token(void **state)
{
    static struct channel_request req;
    struct channel_outcome o;
    struct fixture f;
    fixture_init(&f, "id4");
    f.n.title = "t";
    fake_now = T0_MS + 5000;
    assert_int_equal(run_format(*state, &f, &req, &o), 0);
    char ids[256];
    token_ids(&req, ids, sizeof(ids));
    /* Signed at set_clock time (T0), not re-signed 5 s later. */
    assert_string_equal(ids, "{\"alg\":\"ES256\",\"kid\":\"ABC123DEFG\"} "
                             "{\"iss\":\"DEF123GHIJ\",\"iat\":1700000000}");
    const char *tok = NULL;
    for (unsigned i = 0; i < req.nheaders; i++) {
        if (strncmp(req.headers[i], "authorization: bearer ", 22) == 0) {
            tok = req.headers[i] + 22;
        }
    }
    assert_non_null(tok);
    const char *d2 = strrchr(tok, '.');
    unsigned char sig[80];
    assert_int_equal(jwt_b64url_decode(d2 + 1, strlen(d2 + 1), sig, sizeof(sig)), 64);
    fixture_free(&f);
}

/* --- provider token age on a simulated clock ---------------------------- */

static void test_token_refresh_timeline(void **state)
{
    (void)state;
    struct apns_config c;
    config_for_test(&c); /* token_refresh = 50m default */
    assert_int_equal(c.token_refresh_ms, 50u * 60u * 1000u);
    void *st = make_channel(&c);
    static struct channel_request req;
    struct channel_outcome o;
    struct apns_stats s;
    struct fixture f;
    fixture_init(&f, "id5");
    f.n.title = "t";

    apns_get_stats(st, &s);
    uint64_t signs0 = s.token_signs;
    assert_true(s.token_iat_ms == T0_MS);

    /* An hour of sends, one a second: exactly one re-sign, at 50 min. */
    for (int64_t t = 0; t <= 3600; t++) {
        fake_now = T0_MS + t * 1000;
        assert_int_equal(run_format(st, &f, &req, &o), 0);
        apns_get_stats(st, &s);
        if (t < 3000) {
            assert_true(s.token_signs == signs0);
        } else {
            assert_true(s.token_signs == signs0 + 1);
            assert_true(s.token_iat_ms == T0_MS + 3000 * 1000);
        }
    }
    /* Clock stepped back 10 minutes: iat would be in the future for Apple,
     * so the token is re-signed at once. */
    fake_now = T0_MS + 3000 * 1000 - 600 * 1000;
    assert_int_equal(run_format(st, &f, &req, &o), 0);
    apns_get_stats(st, &s);
    assert_true(s.token_signs == signs0 + 2);
    assert_true(s.token_iat_ms == fake_now);

    apns_channel.destroy(st);
    fixture_free(&f);
}

/* --- answers -> outcomes ------------------------------------------------- */

static void test_map_answers(void **state)
{
    (void)state;
    static const struct {
        int status;
        const char *body;
        const char *retry_after;
        enum channel_result result;
        const char *reason;
        int action;
        int64_t since;
        uint64_t retry_ms;
    } v[] = {
        {200, "", NULL, CHANNEL_OK, "", CHANNEL_DEVICE_NONE, 0, 0},
        {410, "{\"reason\":\"Unregistered\",\"timestamp\":1699999999123}", NULL, CHANNEL_DROP,
         "Unregistered", CHANNEL_DEVICE_DISABLE, INT64_C(1699999999123), 0},
        {410, "{\"reason\":\"ExpiredToken\"}", NULL, CHANNEL_DROP, "ExpiredToken",
         CHANNEL_DEVICE_DISABLE, 0, 0},
        {400, "{\"reason\":\"BadDeviceToken\"}", NULL, CHANNEL_DROP, "BadDeviceToken",
         CHANNEL_DEVICE_FLAG, 0, 0},
        {400, "{\"reason\":\"DeviceTokenNotForTopic\"}", NULL, CHANNEL_DROP,
         "DeviceTokenNotForTopic", CHANNEL_DEVICE_FLAG, 0, 0},
        {400, "{\"reason\":\"BadCollapseId\"}", NULL, CHANNEL_DROP, "BadCollapseId",
         CHANNEL_DEVICE_NONE, 0, 0},
        {400, "{\"reason\":\"TopicDisallowed\"}", NULL, CHANNEL_DROP, "TopicDisallowed",
         CHANNEL_DEVICE_NONE, 0, 0},
        {413, "{\"reason\":\"PayloadTooLarge\"}", NULL, CHANNEL_DROP, "PayloadTooLarge",
         CHANNEL_DEVICE_NONE, 0, 0},
        {403, "{\"reason\":\"ExpiredProviderToken\"}", NULL, CHANNEL_RETRY, "ExpiredProviderToken",
         CHANNEL_DEVICE_NONE, 0, 0},
        {403, "{\"reason\":\"InvalidProviderToken\"}", NULL, CHANNEL_DROP, "InvalidProviderToken",
         CHANNEL_DEVICE_NONE, 0, 0},
        {429, "{\"reason\":\"TooManyRequests\"}", "5", CHANNEL_RETRY, "TooManyRequests",
         CHANNEL_DEVICE_NONE, 0, 5000},
        {429, "{\"reason\":\"TooManyRequests\"}", "Wed, 21 Oct 2015 07:28:00 GMT", CHANNEL_RETRY,
         "TooManyRequests", CHANNEL_DEVICE_NONE, 0, 0}, /* in the past */
        {429, "{\"reason\":\"TooManyRequests\"}", "Tue, 14 Nov 2023 22:14:20 GMT", CHANNEL_RETRY,
         "TooManyRequests", CHANNEL_DEVICE_NONE, 0, 60000}, /* an HTTP-date a minute ahead */
        {503, "{\"reason\":\"ServiceUnavailable\"}", "Fri, 01 Mar 2024 00:00:00 GMT",
         CHANNEL_RETRY, "ServiceUnavailable", CHANNEL_DEVICE_NONE, 0, 86400000}, /* clamped */
        {503, "{\"reason\":\"ServiceUnavailable\"}", "Tue, 14 Nov 2023 22:14:20 UTC",
         CHANNEL_RETRY, "ServiceUnavailable", CHANNEL_DEVICE_NONE, 0, 0}, /* not GMT */
        {429, "{\"reason\":\"TooManyRequests\"}", "99999999999", CHANNEL_RETRY, "TooManyRequests",
         CHANNEL_DEVICE_NONE, 0, 86400000},
        {500, "{\"reason\":\"InternalServerError\"}", NULL, CHANNEL_RETRY, "InternalServerError",
         CHANNEL_DEVICE_NONE, 0, 0},
        {503, "{\"reason\":\"ServiceUnavailable\"}", "2", CHANNEL_RETRY, "ServiceUnavailable",
         CHANNEL_DEVICE_NONE, 0, 2000},
        {502, "", NULL, CHANNEL_RETRY, "HTTP 502", CHANNEL_DEVICE_NONE, 0, 0},
        {404, "{\"reason\":\"BadPath\"}", NULL, CHANNEL_DROP, "BadPath", CHANNEL_DEVICE_NONE, 0, 0},
        {400, "not json", NULL, CHANNEL_DROP, "HTTP 400", CHANNEL_DEVICE_NONE, 0, 0},
        {410, "{\"reason\":\"Unregistered\",\"timestamp\":\"soon\"}", NULL, CHANNEL_DROP,
         "Unregistered", CHANNEL_DEVICE_DISABLE, 0, 0},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        struct channel_outcome o;
        apns_map_answer(v[i].status, v[i].body, strlen(v[i].body), "4A8E7B1C-0000-1111-2222",
                        v[i].retry_after, T0_MS, &o);
        if (o.result != v[i].result || strcmp(o.reason, v[i].reason) != 0 ||
            o.device_action != v[i].action || o.token_invalid_since_ms != v[i].since ||
            o.retry_after_ms != v[i].retry_ms || o.status != v[i].status) {
            fail_msg("case %zu (status %d): result=%d reason=%s action=%d since=%lld retry=%llu", i,
                     v[i].status, (int)o.result, o.reason, o.device_action,
                     (long long)o.token_invalid_since_ms, (unsigned long long)o.retry_after_ms);
        }
        if (v[i].status == 200) {
            assert_string_equal(o.provider_id, "4A8E7B1C-0000-1111-2222");
        }
    }
}

/* --- init ------------------------------------------------------------------- */

static void expect_init_fails(struct apns_config *c, const char *needle)
{
    struct channel_env env = {0};
    void *st = (void *)0x1;
    char err[256] = "";
    assert_true(apns_channel.init(&env, c, &st, err, sizeof(err)) < 0);
    assert_null(st);
    if (!strstr(err, needle)) {
        fail_msg("error '%s' does not mention '%s'", err, needle);
    }
}

static void test_init_errors(void **state)
{
    (void)state;
    struct apns_config c;
    char err[CONFIG_ERR_MAX];

    config_for_test(&c);
    c.key_file[0] = '\0';
    expect_init_fails(&c, "required");

    config_for_test(&c);
    snprintf(c.url, sizeof(c.url), "http://api.push.apple.com");
    expect_init_fails(&c, "apns.url");

    config_for_test(&c);
    snprintf(c.key_file, sizeof(c.key_file), "%s/nope.p8", tmpdir);
    expect_init_fails(&c, "nope.p8");

    config_for_test(&c);
    snprintf(c.key_id, sizeof(c.key_id), "bad id!");
    expect_init_fails(&c, "key_id");

    /* The config table enforces Apple's 20..60 minute window. */
    config_for_test(&c);
    assert_int_equal(config_set(apns_channel.config, apns_channel.config_n, &c,
                                "apns.token_refresh", "10m", err, sizeof(err)),
                     TDG_ECONFIG);
    assert_int_equal(config_set(apns_channel.config, apns_channel.config_n, &c,
                                "apns.token_refresh", "61m", err, sizeof(err)),
                     TDG_ECONFIG);
    assert_int_equal(config_set(apns_channel.config, apns_channel.config_n, &c,
                                "apns.token_refresh", "20m", err, sizeof(err)),
                     0);
    c.token_refresh_ms = 60000;
    expect_init_fails(&c, "token_refresh");
}


/* --- several credentials: selection by topic ------------------------------------ */

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_golden_tenant_selection(void **state)
{
    (void)state;
    char dir[300], key2[400], conf[400], text[1024];
    snprintf(dir, sizeof(dir), "%s/tenants", tmpdir);
    assert_int_equal(mkdir(dir, 0700), 0);
    snprintf(key2, sizeof(key2), "%s/AuthKey_TEAM2KEY01.p8", tmpdir);
    gen_ec_key(key2);
    snprintf(conf, sizeof(conf), "%s/team2.conf", dir);
    snprintf(text, sizeof(text),
             "# the second team's key\napns.key_file = %s\napns.key_id = TEAM2KEY01\n"
             "apns.team_id = TEAM2XXXXX\napns.topics = com.team2.app, com.team2.other\n",
             key2);
    write_file(conf, text);

    struct apns_config c;
    config_for_test(&c);
    snprintf(c.tenants_dir, sizeof(c.tenants_dir), "%s", dir);
    void *st = make_channel(&c);
    assert_int_equal(channel_set_count(st), 2);
    static struct channel_request req;
    struct channel_outcome o;
    struct fixture f;
    char all[4096], ids[256];
    size_t off = 0;
    /* the main key has no apns.topics: it takes every topic the file does
     * not claim, and devices without an app get apns.topic */
    const char *const apps[] = {"com.team2.app", "com.team2.other", "com.example.tidings", ""};
    for (size_t i = 0; i < sizeof(apps) / sizeof(apps[0]); i++) {
        fixture_init(&f, "sel");
        f.n.title = "t";
        f.dev.app = apps[i];
        assert_int_equal(run_format(st, &f, &req, &o), 0);
        token_ids(&req, ids, sizeof(ids));
        const char *topic = "";
        for (unsigned h = 0; h < req.nheaders; h++) {
            if (strncmp(req.headers[h], "apns-topic: ", 12) == 0) {
                topic = req.headers[h] + 12;
            }
        }
        off += (size_t)snprintf(all + off, sizeof(all) - off, "app '%s' -> topic %s, %s\n",
                                apps[i], topic, ids);
    }
    check_golden("tenant_selection", all);
    apns_channel.destroy(st);

    /* With topics of its own, the main key no longer takes the rest: a
     * device of an app nobody serves is dropped with a clear reason. */
    snprintf(c.topics, sizeof(c.topics), "com.example.tidings");
    st = make_channel(&c);
    fixture_init(&f, "sel");
    f.n.title = "t";
    f.dev.app = "com.unknown.app";
    assert_true(run_format(st, &f, &req, &o) < 0);
    assert_int_equal(o.result, CHANNEL_DROP);
    assert_string_equal(o.reason, "NoCredentialForTopic: com.unknown.app");
    assert_int_equal(o.device_action, CHANNEL_DEVICE_NONE);
    f.dev.app = "com.team2.app";
    assert_int_equal(run_format(st, &f, &req, &o), 0);
    apns_channel.destroy(st);

    /* Config mistakes name the file. */
    config_for_test(&c);
    snprintf(c.tenants_dir, sizeof(c.tenants_dir), "%s", dir);
    snprintf(c.topics, sizeof(c.topics), "com.team2.app");
    expect_init_fails(&c, "team2.conf: apns.topics: com.team2.app is already served by main");
    c.topics[0] = '\0';
    write_file(conf, "apns.key_id = TEAM2KEY01\napns.team_id = TEAM2XXXXX\n"
                     "apns.topics = com.team2.app\n");
    expect_init_fails(&c, "team2.conf: apns.key_file, apns.key_id and apns.team_id are required");
    write_file(conf, "apns.topics = com.team2.app\napns.bogus = 1\n");
    expect_init_fails(&c, "team2.conf:2: apns.bogus");
    snprintf(text, sizeof(text),
             "apns.key_file = %s\napns.key_id = TEAM2KEY01\napns.team_id = TEAM2XXXXX\n", key2);
    write_file(conf, text);
    expect_init_fails(&c, "team2.conf: apns.topics: required in a credential file");
    snprintf(text, sizeof(text),
             "apns.key_file = %s\napns.key_id = TEAM2KEY01\napns.team_id = TEAM2XXXXX\n"
             "apns.topics = a.b, ,c.d\n",
             key2);
    write_file(conf, text);
    expect_init_fails(&c, "team2.conf: apns.topics: an empty item");
    snprintf(text, sizeof(text),
             "apns.key_file = %s\napns.cert_file = %s\napns.topics = a.b\n", key2, key2);
    write_file(conf, text);
    expect_init_fails(&c, "team2.conf: apns.cert_file and apns.key_file");
    snprintf(text, sizeof(text), "apns.cert_file = %s\napns.topics = a.b\n", key2);
    write_file(conf, text);
    expect_init_fails(&c, "neither a PEM certificate nor a PKCS#12 file");
    assert_int_equal(unlink(conf), 0);
    assert_int_equal(rmdir(dir), 0);
}

int main(void)
{
    log_set_level(LOG_LVL_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_alert),
        cmocka_unit_test(test_golden_background),
        cmocka_unit_test(test_golden_critical_ttl_collapse),
        cmocka_unit_test(test_golden_data_keys),
        cmocka_unit_test(test_golden_low_priority),
        cmocka_unit_test(test_payload_escaping_matches_cjson),
        cmocka_unit_test(test_golden_oversize),
        cmocka_unit_test(test_oversize_boundary),
        cmocka_unit_test(test_bad_inputs_drop),
        cmocka_unit_test(test_sandbox_and_missing_topic),
        cmocka_unit_test(test_authorization_token),
        cmocka_unit_test(test_golden_tenant_selection),
        cmocka_unit_test(test_token_refresh_timeline),
        cmocka_unit_test(test_map_answers),
        cmocka_unit_test(test_init_errors),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
