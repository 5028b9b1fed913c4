/*
 * test_fcm_format.c - the FCM channel's parts that need no network: format
 * against golden files, the answer -> outcome table, Retry-After parsing,
 * the rate bucket, config checks in init, and the access-token life over a
 * simulated hour (injectable clock, and a transport hook that stands in for
 * the HTTP client and answers token and send requests by hand).
 *
 * Golden files live in tests/golden/fcm/<name>.txt: the request line, the
 * headers (a bearer token would be masked: it changes every run), a blank
 * line, and the body exactly as sent. A dropped delivery renders as
 * "DROP <reason> <action>". Run with TIDINGS_UPDATE_GOLDEN=1 to rewrite
 * them after a deliberate change, then review the diff.
 *
 * The RSA key is made at test time with openssl, by
 * tests/fakes/fcm_gen_account.sh (FCM_GEN_ACCOUNT, set by CMake).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <cjson/cJSON.h>

#include "config.h"
#include "error.h"
#include "fcm.h"
#include "http.h"
#include "jwt.h"
#include "log.h"
#include "loop.h"

#ifndef GOLDEN_DIR
#error "GOLDEN_DIR must point at tests/golden/fcm"
#endif
#ifndef FCM_GEN_ACCOUNT
#error "FCM_GEN_ACCOUNT must point at tests/fakes/fcm_gen_account.sh"
#endif

#define T0_MS INT64_C(1700000000000) /* 2023-11-14T22:13:20Z */
#define PROJECT "tidings-test"
#define REG_TOKEN "fGx1cTVtRkq8:APA91bH7p0Tn3Xo_sQ-0b1c2d3e4f5g6h7i8j9k0lmnopqrstuvwxyz"
#define TOKEN_URL "https://oauth2.example.test/token"

static const char *const gen_account = FCM_GEN_ACCOUNT;
static char tmpdir[256];
static char sa_file[320];
static int64_t fake_now = T0_MS;
static loop_t *loop;

static int64_t fake_clock(void *arg)
{
    (void)arg;
    return fake_now;
}

/* --- fixtures --------------------------------------------------------- */

static void set_key(struct fcm_config *c, const char *key, const char *val)
{
    char err[CONFIG_ERR_MAX];
    int rc = config_set(fcm_channel.config, fcm_channel.config_n, c, key, val, err, sizeof(err));
    if (rc != 0) {
        fail_msg("config %s: %s", key, err);
    }
}

static void config_for_test(struct fcm_config *c)
{
    char err[CONFIG_ERR_MAX];
    const struct channel_ops *ops = &fcm_channel;
    assert_int_equal(ops->config_size, sizeof(*c));
    assert_int_equal(config_defaults(ops->config, ops->config_n, c, err, sizeof(err)), 0);
    set_key(c, "fcm.service_account_file", sa_file);
}

static void *make_channel_env(const struct fcm_config *c, loop_t *l)
{
    struct channel_env env = {.loop = l, .http = NULL};
    void *st = NULL;
    char err[256] = "";
    int rc = fcm_channel.init(&env, c, &st, err, sizeof(err));
    if (rc != 0) {
        fail_msg("init: %s: %s", tdg_strerror(rc), err);
    }
    fake_now = T0_MS;
    fcm_set_clock(st, fake_clock, NULL);
    return st;
}

static void *make_channel(const struct fcm_config *c)
{
    return make_channel_env(c, NULL); /* format only */
}

static int group_setup(void **state)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/tidings-fcmfmt-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        return -1;
    }
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "'%s' '%s/sa' %s %s >'%s/gen.log' 2>&1", gen_account, tmpdir,
             PROJECT, TOKEN_URL, tmpdir);
    if (system(cmd) != 0) {
        fprintf(stderr, "key generation failed: %s\n", cmd);
        return -1;
    }
    snprintf(sa_file, sizeof(sa_file), "%s/sa/service-account.json", tmpdir);
    loop = loop_create();
    if (!loop) {
        return -1;
    }
    struct fcm_config c;
    config_for_test(&c);
    *state = make_channel(&c);
    return 0;
}

static int group_teardown(void **state)
{
    fcm_channel.destroy(*state);
    loop_destroy(loop);
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
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
    /* The access token travels in req->authorization (it can outgrow a
     * header slot); shown first, masked. */
    if (strncmp(req->authorization, "Bearer ", 7) == 0) {
        PUT("authorization: Bearer <masked>\n");
    } else if (req->authorization[0]) {
        PUT("authorization: %s\n", req->authorization);
    }
    for (unsigned i = 0; i < req->nheaders; i++) {
        PUT("%s\n", req->headers[i]);
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
    f->dev.platform = "android";
    f->dev.token = REG_TOKEN;
    f->dev.app = PROJECT;
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
    return fcm_channel.format(st, &f->d, req, o);
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

static void test_golden_data_only(void **state)
{
    struct fixture f;
    fixture_init(&f, "01HF6Y1M6Z8Q3R4S5T6V7W8XA0");
    f.n.title = NULL;
    fixture_data(&f, "{\"sync\":\"orders\",\"since\":1700000000}");
    f.dev.app = NULL; /* no project on the device: the channel's */
    golden_case(*state, &f, "data_only");
    fixture_free(&f);
}

static void test_golden_high_ttl_collapse(void **state)
{
    struct fixture f;
    fixture_init(&f, "01HF6Y1M6Z8Q3R4S5T6V7W8XA1");
    f.n.title = "Smoke alarm";
    f.n.body = "Kitchen sensor 3";
    f.n.priority = PROTO_PRIO_HIGH;
    f.n.ttl_s = 3600;
    f.n.collapse_key = "smoke-kitchen";
    golden_case(*state, &f, "high_ttl_collapse");
    fixture_free(&f);
}

/* The ttl counts from acceptance: 100 s after it, 3500 of 3600 s are left;
 * past expiry FCM gets "0s" (now or never). */
static void test_golden_ttl_left(void **state)
{
    struct fixture f;
    fixture_init(&f, "01HF6Y1M6Z8Q3R4S5T6V7W8XA8");
    f.n.title = "Parcel at the door";
    f.n.ttl_s = 3600;
    f.n.accepted_at_ms = f.d.now_ms - 100 * 1000;
    golden_case(*state, &f, "ttl_left");
    f.n.accepted_at_ms = f.d.now_ms - 3601 * 1000;
    golden_case(*state, &f, "ttl_past");
    fixture_free(&f);
}

static void test_golden_critical(void **state)
{
    struct fixture f;
    fixture_init(&f, "01HF6Y1M6Z8Q3R4S5T6V7W8XA5");
    f.n.title = "Water leak";
    f.n.priority = PROTO_PRIO_CRITICAL;
    golden_case(*state, &f, "critical");
    fixture_free(&f);
}

static void test_golden_data_conversions(void **state)
{
    struct fixture f;
    fixture_init(&f, "01HF6Y1M6Z8Q3R4S5T6V7W8XA2");
    f.n.title = "Order \"A-1\" shipped";
    f.n.body = "Caf\xc3\xa9 \xe2\x98\x95\nline two";
    fixture_data(&f, "{\"order_id\":\"A-1\",\"amount\":12.5,\"count\":3,\"paid\":true,"
                     "\"gift\":false,\"note\":null,\"items\":[1,\"two\"],"
                     "\"nested\":{\"k\":true},\"from\":\"x\",\"google.c.a\":\"1\","
                     "\"gcm.n.e\":\"1\",\"message_type\":\"x\",\"notification\":\"x\","
                     "\"tidings_id\":\"spoofed\",\"\":\"empty key\"}");
    golden_case(*state, &f, "data_conversions");
    fixture_free(&f);
}

static void test_golden_low_priority(void **state)
{
    struct fixture f;
    fixture_init(&f, "01HF6Y1M6Z8Q3R4S5T6V7W8XA3");
    f.n.body = "Weekly digest is ready";
    f.n.category = "marketing";
    f.n.priority = PROTO_PRIO_LOW;
    f.n.ttl_s = 2419200;
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

static void test_golden_bad_token(void **state)
{
    struct fixture f;
    fixture_init(&f, "01HF6Y1M6Z8Q3R4S5T6V7W8XA6");
    f.n.title = "t";
    f.dev.token = "not a token\"}";
    golden_case(*state, &f, "bad_token");
    fixture_free(&f);
}

static void test_golden_project_mismatch(void **state)
{
    struct fixture f;
    fixture_init(&f, "01HF6Y1M6Z8Q3R4S5T6V7W8XA7");
    f.n.title = "t";
    f.dev.app = "some-other-project";
    golden_case(*state, &f, "project_mismatch");
    fixture_free(&f);
}

/* The payload limit counts notification text and data keys and values, as
 * FCM does: exactly 4096 goes, 4097 is dropped. */
static void test_payload_boundary(void **state)
{
    struct fixture f;
    fixture_init(&f, "id1"); /* "tidings_id" + "id1" = 13 bytes of data */
    static char body[4200];
    static struct channel_request req;
    struct channel_outcome o;
    f.n.body = body;
    memset(body, 'y', sizeof(body));
    body[FCM_PAYLOAD_MAX - 13] = '\0';
    assert_int_equal(run_format(*state, &f, &req, &o), 0);
    body[FCM_PAYLOAD_MAX - 13] = 'y';
    body[FCM_PAYLOAD_MAX - 12] = '\0';
    assert_int_equal(run_format(*state, &f, &req, &o), TDG_ETOOBIG);
    assert_int_equal(o.result, CHANNEL_DROP);
    assert_string_equal(o.reason, "PayloadTooLarge");
    assert_int_equal(req.body_len, 0);
    /* Data counts too: 4000 bytes of body + a 100-byte data value is over. */
    body[4000] = '\0';
    static char val[200];
    memset(val, 'v', 100);
    val[100] = '\0';
    char json[300];
    snprintf(json, sizeof(json), "{\"k\":\"%s\"}", val);
    fixture_data(&f, json);
    assert_int_equal(run_format(*state, &f, &req, &o), TDG_ETOOBIG);
    fixture_free(&f);
}

static void test_send_without_loop(void **state)
{
    struct fixture f;
    fixture_init(&f, "id2");
    f.n.title = "t";
    /* Without a loop there is no HTTP client: send refuses, done not called. */
    assert_int_equal(fcm_channel.send(*state, &f.d, NULL, NULL), -ENOTCONN);
    assert_string_equal(fcm_project(*state), PROJECT);
    assert_string_equal(fcm_token_url(*state), TOKEN_URL);
    fixture_free(&f);
}

/* --- answers -> outcomes ------------------------------------------------- */

#define FCM_ERR(code, http, status, msg)                                                           \
    "{\"error\":{\"code\":" #http ",\"message\":\"" msg "\",\"status\":\"" status "\","            \
    "\"details\":[{\"@type\":\"type.googleapis.com/google.firebase.fcm.v1.FcmError\","             \
    "\"errorCode\":\"" code "\"}]}}"

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
        uint64_t retry_ms;
    } v[] = {
        {200, "{\"name\":\"projects/p/messages/0:1500415314455276%31bd1c9631bd1c96\"}", NULL,
         CHANNEL_OK, "", CHANNEL_DEVICE_NONE, 0},
        {404, FCM_ERR("UNREGISTERED", 404, "NOT_FOUND", "Requested entity was not found."), NULL,
         CHANNEL_DROP, "UNREGISTERED", CHANNEL_DEVICE_DISABLE, 0},
        /* A bare NOT_FOUND (wrong URL or project) never disables a device. */
        {404, "{\"error\":{\"code\":404,\"message\":\"x\",\"status\":\"NOT_FOUND\"}}", NULL,
         CHANNEL_DROP, "NOT_FOUND", CHANNEL_DEVICE_NONE, 0},
        {400, FCM_ERR("INVALID_ARGUMENT", 400, "INVALID_ARGUMENT", "Android message is too big"),
         NULL, CHANNEL_DROP, "Android message is too big", CHANNEL_DEVICE_NONE, 0},
        {400,
         "{\"error\":{\"code\":400,\"message\":\"The registration token is not a valid FCM "
         "registration token\",\"status\":\"INVALID_ARGUMENT\",\"details\":[{\"@type\":"
         "\"type.googleapis.com/google.firebase.fcm.v1.FcmError\",\"errorCode\":"
         "\"INVALID_ARGUMENT\"},{\"@type\":\"type.googleapis.com/google.rpc.BadRequest\","
         "\"fieldViolations\":[{\"field\":\"message.token\",\"description\":\"x\"}]}]}}",
         NULL, CHANNEL_DROP, "The registration token is not a valid FCM registration token",
         CHANNEL_DEVICE_FLAG, 0},
        {400,
         "{\"error\":{\"code\":400,\"message\":\"Invalid value at 'message.data[0].value' "
         "(TYPE_STRING), 1\",\"status\":\"INVALID_ARGUMENT\"}}",
         NULL, CHANNEL_DROP, "Invalid value at 'message.data[0].value' (TYPE_STRING), 1",
         CHANNEL_DEVICE_NONE, 0},
        {403, FCM_ERR("SENDER_ID_MISMATCH", 403, "PERMISSION_DENIED", "SenderId mismatch"), NULL,
         CHANNEL_DROP, "SENDER_ID_MISMATCH", CHANNEL_DEVICE_FLAG, 0},
        {403,
         "{\"error\":{\"code\":403,\"message\":\"Permission denied\",\"status\":"
         "\"PERMISSION_DENIED\"}}",
         NULL, CHANNEL_DROP, "PERMISSION_DENIED", CHANNEL_DEVICE_NONE, 0},
        {429, FCM_ERR("QUOTA_EXCEEDED", 429, "RESOURCE_EXHAUSTED", "Quota exceeded"), "7",
         CHANNEL_RETRY, "QUOTA_EXCEEDED", CHANNEL_DEVICE_NONE, 7000},
        {429, FCM_ERR("QUOTA_EXCEEDED", 429, "RESOURCE_EXHAUSTED", "Quota exceeded"),
         "Tue, 14 Nov 2023 22:13:50 GMT", CHANNEL_RETRY, "QUOTA_EXCEEDED", CHANNEL_DEVICE_NONE,
         30000},
        {503, FCM_ERR("UNAVAILABLE", 503, "UNAVAILABLE", "The service is currently unavailable."),
         "2", CHANNEL_RETRY, "UNAVAILABLE", CHANNEL_DEVICE_NONE, 2000},
        {503, FCM_ERR("UNAVAILABLE", 503, "UNAVAILABLE", "x"), NULL, CHANNEL_RETRY, "UNAVAILABLE",
         CHANNEL_DEVICE_NONE, 0},
        {500, FCM_ERR("INTERNAL", 500, "INTERNAL", "Internal error encountered."), NULL,
         CHANNEL_RETRY, "INTERNAL", CHANNEL_DEVICE_NONE, 0},
        {401, FCM_ERR("THIRD_PARTY_AUTH_ERROR", 401, "UNAUTHENTICATED", "Auth error"), NULL,
         CHANNEL_DROP, "THIRD_PARTY_AUTH_ERROR", CHANNEL_DEVICE_NONE, 0},
        {401,
         "{\"error\":{\"code\":401,\"message\":\"Request had invalid authentication "
         "credentials.\",\"status\":\"UNAUTHENTICATED\"}}",
         NULL, CHANNEL_RETRY, "UNAUTHENTICATED", CHANNEL_DEVICE_NONE, 0},
        {502, "<html>Bad Gateway</html>", NULL, CHANNEL_RETRY, "HTTP 502", CHANNEL_DEVICE_NONE, 0},
        {413, "", NULL, CHANNEL_DROP, "HTTP 413", CHANNEL_DEVICE_NONE, 0},
        {400, "not json", NULL, CHANNEL_DROP, "HTTP 400", CHANNEL_DEVICE_NONE, 0},
        {302, "", NULL, CHANNEL_RETRY, "HTTP 302", CHANNEL_DEVICE_NONE, 0},
        {500, FCM_ERR("UNSPECIFIED_ERROR", 500, "INTERNAL", "x"), "1", CHANNEL_RETRY,
         "UNSPECIFIED_ERROR", CHANNEL_DEVICE_NONE, 1000},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        struct channel_outcome o;
        fcm_map_answer(v[i].status, v[i].body, strlen(v[i].body), v[i].retry_after, T0_MS, &o);
        if (o.result != v[i].result || strcmp(o.reason, v[i].reason) != 0 ||
            o.device_action != v[i].action || o.retry_after_ms != v[i].retry_ms ||
            o.status != v[i].status) {
            fail_msg("case %zu (status %d): result=%d reason=%s action=%d retry=%llu", i,
                     v[i].status, (int)o.result, o.reason, o.device_action,
                     (unsigned long long)o.retry_after_ms);
        }
    }
    struct channel_outcome o;
    fcm_map_answer(200, v[0].body, strlen(v[0].body), NULL, T0_MS, &o);
    assert_string_equal(o.provider_id, "projects/p/messages/0:1500415314455276%31bd1c9631bd1c96");
    /* The longest real name (a 30-character project id, Google's maximum)
     * is kept whole. */
    const char *lng = "{\"name\":\"projects/a-rather-long-project-id-30/messages/"
                      "0:1500415314455276%31bd1c9631bd1c96\"}";
    fcm_map_answer(200, lng, strlen(lng), NULL, T0_MS, &o);
    assert_string_equal(o.provider_id, "projects/a-rather-long-project-id-30/messages/"
                                       "0:1500415314455276%31bd1c9631bd1c96");
    /* A name too long for provider_id keeps its message id (the project is
     * the channel's). */
    const char *huge = "{\"name\":\"projects/an-impossibly-long-project-id-that-google-would-"
                       "never-issue-but-a-fake-or-a-future-api-might-send-us/messages/"
                       "0:1500415314455276%31bd1c9631bd1c96\"}";
    fcm_map_answer(200, huge, strlen(huge), NULL, T0_MS, &o);
    assert_string_equal(o.provider_id, "0:1500415314455276%31bd1c9631bd1c96");
    fcm_map_answer(200, "", 0, NULL, T0_MS, &o);
    assert_int_equal(o.result, CHANNEL_OK);
    assert_string_equal(o.provider_id, "");
}

static void test_retry_after(void **state)
{
    (void)state;
    /* T0 = Tue, 14 Nov 2023 22:13:20 GMT */
    assert_true(fcm_parse_retry_after(NULL, T0_MS) == 0);
    assert_true(fcm_parse_retry_after("", T0_MS) == 0);
    assert_true(fcm_parse_retry_after("0", T0_MS) == 0);
    assert_true(fcm_parse_retry_after("120", T0_MS) == 120000);
    assert_true(fcm_parse_retry_after("99999999999999", T0_MS) == 86400000);
    assert_true(fcm_parse_retry_after("12s", T0_MS) == 0);
    assert_true(fcm_parse_retry_after("-5", T0_MS) == 0);
    assert_true(fcm_parse_retry_after("Tue, 14 Nov 2023 22:14:20 GMT", T0_MS) == 60000);
    assert_true(fcm_parse_retry_after("Tuesday, 14-Nov-23 22:14:20 GMT", T0_MS) == 60000);
    assert_true(fcm_parse_retry_after("Tue Nov 14 22:14:20 2023", T0_MS) == 60000);
    assert_true(fcm_parse_retry_after("Sun Nov  6 08:49:37 1994", T0_MS) == 0); /* past */
    assert_true(fcm_parse_retry_after("Fri, 01 Mar 2024 00:00:00 GMT", T0_MS) == 86400000);
    assert_true(fcm_parse_retry_after("Tue, 14 Nov 2023 22:14:20 UTC", T0_MS) == 0);
    assert_true(fcm_parse_retry_after("Tue, 14 Foo 2023 22:14:20 GMT", T0_MS) == 0);
    assert_true(fcm_parse_retry_after("Tue, 14 Nov 2023 25:14:20 GMT", T0_MS) == 0);
    /* Leap day and year end go through the civil-date arithmetic. */
    int64_t leap = INT64_C(1709164800000); /* Thu, 29 Feb 2024 00:00:00 GMT */
    assert_true(fcm_parse_retry_after("Thu, 29 Feb 2024 00:00:10 GMT", leap) == 10000);
    int64_t ny = INT64_C(1735689600000); /* Wed, 01 Jan 2025 00:00:00 GMT */
    assert_true(fcm_parse_retry_after("Wed, 01 Jan 2025 00:00:01 GMT", ny - 1000) == 2000);
}

static void test_bucket(void **state)
{
    (void)state;
    struct fcm_bucket b;
    /* 600/min = 10/s, burst 3. */
    fcm_bucket_init(&b, 600, 3, 1000);
    assert_true(fcm_bucket_take(&b, 1000) == 0);
    assert_true(fcm_bucket_take(&b, 1000) == 0);
    assert_true(fcm_bucket_take(&b, 1000) == 0);
    assert_true(fcm_bucket_take(&b, 1000) == 100); /* one token every 100 ms */
    assert_true(fcm_bucket_take(&b, 1050) == 50);
    assert_true(fcm_bucket_take(&b, 1100) == 0);
    fcm_bucket_refund(&b);
    assert_true(fcm_bucket_take(&b, 1100) == 0);
    assert_true(fcm_bucket_take(&b, 1100) == 100);
    /* Long idle refills to the burst, never beyond. */
    int taken = 0;
    while (fcm_bucket_take(&b, 1000000) == 0) {
        taken++;
    }
    assert_int_equal(taken, 3);
    /* A clock that steps back neither refills nor stalls forever. */
    assert_true(fcm_bucket_take(&b, 500) == 100);
    assert_true(fcm_bucket_take(&b, 600) == 0);
    /* The default: 600000/min with a burst of one second (10000). */
    fcm_bucket_init(&b, 600000, 0, 0);
    taken = 0;
    while (fcm_bucket_take(&b, 0) == 0) {
        taken++;
    }
    assert_int_equal(taken, 10000);
    assert_true(fcm_bucket_take(&b, 0) == 1);
    /* Huge rates and gaps do not overflow. */
    fcm_bucket_init(&b, 100000000, 100000000, 0);
    assert_true(fcm_bucket_take(&b, INT64_MAX / 2) == 0);
}

/* --- the access token over a simulated hour ------------------------------- */

/* Requests the channel handed to the "network", answered by the test. */
struct pending {
    bool token;
    http_done_cb done;
    void *ctx;
    char auth[CHANNEL_AUTH_MAX];
    char want[CHANNEL_AUTH_MAX]; /* the bearer the channel should use: the latest token */
};

static struct {
    struct pending p[512];
    int n;
    int fetches, sends;
    int refuse; /* >0: answer sends 401 this many times */
    char token[2048];
    int token_seq;
    int long_tokens; /* issue 1500-byte tokens, as Google may */
    int64_t expires_in;
    int token_status; /* answer token requests with this status */
} net;

static int fake_transport(void *arg, const struct channel_request *req,
                          const struct http_req_opts *ro, http_done_cb done, void *ctx)
{
    (void)arg;
    (void)ro;
    assert_true(net.n < 512);
    struct pending *p = &net.p[net.n++];
    memset(p, 0, sizeof(*p));
    p->token = strcmp(req->url, TOKEN_URL) == 0;
    p->done = done;
    p->ctx = ctx;
    if (p->token) {
        net.fetches++;
        assert_non_null(strstr(req->body, "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type"
                                          "%3Ajwt-bearer&assertion="));
        assert_string_equal(req->headers[0], "content-type: application/x-www-form-urlencoded");
    } else {
        net.sends++;
        assert_string_equal(req->url,
                            "https://fcm.googleapis.com/v1/projects/" PROJECT "/messages:send");
        snprintf(p->auth, sizeof(p->auth), "%s", req->authorization);
        assert_true(p->auth[0] != '\0');
        snprintf(p->want, sizeof(p->want), "Bearer %s", net.token);
    }
    return 0;
}

/* Answer everything the channel has asked for so far (and whatever it asks
 * while being answered), then let deferred outcomes run. */
static void answer_all(void)
{
    while (net.n > 0) {
        struct pending p = net.p[0];
        memmove(net.p, net.p + 1, (size_t)(net.n - 1) * sizeof(net.p[0]));
        net.n--;
        struct http_response r;
        memset(&r, 0, sizeof(r));
        r.error_text = "";
        char body[2400];
        if (p.token) {
            r.status = net.token_status;
            if (r.status == 200) {
                int tl = snprintf(net.token, sizeof(net.token), "ya29.unit.%d", ++net.token_seq);
                if (net.long_tokens && tl > 0) {
                    memset(net.token + tl, 'x', 1500 - (size_t)tl);
                    net.token[1500] = '\0';
                }
                snprintf(body, sizeof(body),
                         "{\"access_token\":\"%s\",\"expires_in\":%lld,\"token_type\":\"Bearer\"}",
                         net.token, (long long)net.expires_in);
            } else {
                snprintf(body, sizeof(body),
                         "{\"error\":\"invalid_grant\",\"error_description\":\"Invalid JWT "
                         "Signature.\"}");
            }
        } else if (net.refuse > 0) {
            net.refuse--;
            r.status = 401;
            snprintf(body, sizeof(body),
                     "{\"error\":{\"code\":401,\"message\":\"x\",\"status\":"
                     "\"UNAUTHENTICATED\"}}");
        } else {
            assert_string_equal(p.auth, p.want);
            r.status = 200;
            snprintf(body, sizeof(body), "{\"name\":\"projects/" PROJECT "/messages/0:1\"}");
        }
        r.body = body;
        r.body_len = strlen(body);
        p.done(p.ctx, &r);
    }
}

static void on_stop(loop_t *l, uint64_t id, void *arg)
{
    (void)id;
    (void)arg;
    loop_stop(l);
}

/* Let 0 ms timers (deferred outcomes) fire. */
static void spin(void)
{
    assert_true(loop_timer_add(loop, 1, on_stop, NULL) != 0);
    assert_int_equal(loop_run(loop), 0);
}

static int outcomes[4];
static struct channel_outcome last;

static void on_done(void *ctx, const struct channel_outcome *o)
{
    (void)ctx;
    outcomes[o->result]++;
    last = *o;
}

static void *timeline_channel(const char *margin)
{
    struct fcm_config c;
    config_for_test(&c);
    if (margin) {
        set_key(&c, "fcm.token_margin", margin);
    }
    void *st = make_channel_env(&c, loop);
    fcm_set_transport(st, fake_transport, NULL);
    memset(&net, 0, sizeof(net));
    net.expires_in = 3599;
    net.token_status = 200;
    memset(outcomes, 0, sizeof(outcomes));
    return st;
}

static void send_one(void *st, struct fixture *f)
{
    assert_int_equal(fcm_channel.send(st, &f->d, on_done, NULL), 0);
}

static void test_token_timeline(void **state)
{
    (void)state;
    void *st = timeline_channel(NULL); /* margin 5m */
    struct fixture f;
    fixture_init(&f, "tl");
    f.n.title = "t";
    struct fcm_stats s;

    /* Three sends before any token: one fetch, all three wait, then go. */
    send_one(st, &f);
    send_one(st, &f);
    send_one(st, &f);
    assert_int_equal(net.fetches, 1);
    assert_int_equal(net.sends, 0);
    fcm_get_stats(st, &s);
    assert_true(s.queued_now == 3);
    assert_true(s.token_fetching);
    answer_all();
    assert_int_equal(net.sends, 3);
    assert_int_equal(outcomes[CHANNEL_OK], 3);
    fcm_get_stats(st, &s);
    assert_true(s.token_fetched_ms == T0_MS);
    assert_true(s.token_expires_ms == T0_MS + 3599 * 1000);
    assert_true(s.token_refresh_ms == T0_MS + (3599 - 300) * 1000);

    /* An hour, one send a second: exactly one refresh, started at
     * expires_in - margin (3299 s) in the background; sends never wait. */
    for (int64_t t = 1; t <= 3600; t++) {
        fake_now = T0_MS + t * 1000;
        send_one(st, &f);
        assert_int_equal(net.n, t == 3299 ? 2 : 1); /* the send goes at once */
        answer_all();
        assert_int_equal(net.fetches, t < 3299 ? 1 : 2);
    }
    assert_int_equal(outcomes[CHANNEL_OK], 3 + 3600);
    fcm_get_stats(st, &s);
    assert_true(s.token_fetched_ms == T0_MS + 3299 * 1000);
    assert_true(s.token_fetches == 2);

    /* A burst while the next refresh is in flight: still one fetch. */
    fake_now = s.token_refresh_ms + 1;
    for (int i = 0; i < 200; i++) {
        send_one(st, &f);
    }
    assert_int_equal(net.fetches, 3);
    answer_all();
    assert_int_equal(net.fetches, 3);
    spin();
    assert_int_equal(outcomes[CHANNEL_OK], 3 + 3600 + 200);

    /* The clock steps back two minutes: the send still goes with the
     * token, and one background refresh starts. */
    fcm_get_stats(st, &s);
    fake_now = s.token_fetched_ms - 120 * 1000;
    send_one(st, &f);
    send_one(st, &f);
    assert_int_equal(net.fetches, 4);
    answer_all();
    spin();
    assert_int_equal(outcomes[CHANNEL_OK], 3 + 3600 + 200 + 2);
    fcm_channel.destroy(st);
    fixture_free(&f);
}

/* A token that outlives its welcome: expired with no refresh answered yet,
 * sends wait for the new one instead of going out with the old. */
static void test_token_expired_sends_wait(void **state)
{
    (void)state;
    void *st = timeline_channel("0s");
    struct fixture f;
    fixture_init(&f, "ex");
    f.n.title = "t";
    send_one(st, &f);
    answer_all();
    assert_int_equal(outcomes[CHANNEL_OK], 1);
    /* margin 0: no refresh until 10 s (the skew) before expiry... */
    fake_now = T0_MS + 3588 * 1000;
    send_one(st, &f);
    assert_int_equal(net.fetches, 1);
    answer_all();
    /* ...then the token is no longer used: the send waits for a fetch. */
    fake_now = T0_MS + 3590 * 1000;
    send_one(st, &f);
    assert_int_equal(net.fetches, 2);
    assert_int_equal(net.n, 1);
    answer_all();
    assert_int_equal(outcomes[CHANNEL_OK], 3);
    fcm_channel.destroy(st);
    fixture_free(&f);
}

/* A token endpoint that fails: waiting sends end RETRY with the reason and
 * a hold-off; sends during the hold-off do not fetch again. */
static void test_token_failure_backoff(void **state)
{
    (void)state;
    void *st = timeline_channel(NULL);
    struct fixture f;
    fixture_init(&f, "fail");
    f.n.title = "t";
    net.token_status = 400;
    for (int i = 0; i < 5; i++) {
        send_one(st, &f);
    }
    assert_int_equal(net.fetches, 1);
    answer_all();
    assert_int_equal(outcomes[CHANNEL_RETRY], 5);
    assert_non_null(strstr(last.reason, "token endpoint: HTTP 400 invalid_grant"));
    assert_true(last.retry_after_ms >= 1 && last.retry_after_ms <= 1000);
    /* During the hold-off: RETRY at once (deferred), no fetch. */
    for (int i = 0; i < 100; i++) {
        send_one(st, &f);
    }
    assert_int_equal(net.fetches, 1);
    spin();
    assert_int_equal(outcomes[CHANNEL_RETRY], 105);
    /* After it: one fetch; the endpoint recovered. */
    fake_now += 1001;
    net.token_status = 200;
    send_one(st, &f);
    send_one(st, &f);
    assert_int_equal(net.fetches, 2);
    answer_all();
    assert_int_equal(outcomes[CHANNEL_OK], 2);
    /* Many failures in a row: the hold-off grows but stays capped. */
    struct fcm_stats s;
    net.token_status = 500;
    fake_now += 3600 * 1000;
    for (int i = 0; i < 12; i++) {
        send_one(st, &f);
        answer_all();
        spin();
        fake_now += 61000;
    }
    assert_true(last.retry_after_ms <= 60000);
    fcm_get_stats(st, &s);
    assert_true(s.token_fetches == 2 + 12);
    fcm_channel.destroy(st);
    fixture_free(&f);
}

/* 401 on sends: one refresh for the token that got it, not one per answer;
 * another 401 at once (a fresh token refused too) does not refresh again. */
static void test_unauthenticated_refreshes_once(void **state)
{
    (void)state;
    void *st = timeline_channel(NULL);
    struct fixture f;
    fixture_init(&f, "401");
    f.n.title = "t";
    send_one(st, &f);
    answer_all();
    fake_now += 60000;
    net.refuse = 50;
    for (int i = 0; i < 50; i++) {
        send_one(st, &f);
    }
    answer_all(); /* 50 x 401 -> one fetch, answered inside the loop */
    assert_int_equal(outcomes[CHANNEL_RETRY], 50);
    assert_string_equal(last.reason, "UNAUTHENTICATED");
    assert_int_equal(net.fetches, 2);
    struct fcm_stats s;
    fcm_get_stats(st, &s);
    assert_true(s.token_unauth_refreshes == 1);
    /* The retried sends carry the new token. */
    send_one(st, &f);
    answer_all();
    assert_int_equal(outcomes[CHANNEL_OK], 2);
    /* The new token refused at once: no second refresh within 30 s. */
    net.refuse = 1;
    send_one(st, &f);
    answer_all();
    assert_int_equal(net.fetches, 2);
    /* Later it may refresh again. */
    fake_now += 31000;
    net.refuse = 1;
    send_one(st, &f);
    answer_all();
    assert_int_equal(net.fetches, 3);
    fcm_channel.destroy(st);
    fixture_free(&f);
}

/* A short-lived token: the margin is capped at half the lifetime, so a
 * token that lives 60 s is refreshed after 30 s, not on every send. */
static void test_short_token_margin_capped(void **state)
{
    (void)state;
    void *st = timeline_channel(NULL);
    struct fixture f;
    fixture_init(&f, "short");
    f.n.title = "t";
    net.expires_in = 60;
    send_one(st, &f);
    answer_all();
    for (int t = 1; t < 30; t++) {
        fake_now = T0_MS + t * 1000;
        send_one(st, &f);
        answer_all();
    }
    assert_int_equal(net.fetches, 1);
    fake_now = T0_MS + 30 * 1000;
    send_one(st, &f);
    answer_all();
    assert_int_equal(net.fetches, 2);
    fcm_channel.destroy(st);
    fixture_free(&f);
}

/* The bearer token appears in format's output once there is one; and the
 * assertion's claims are what Google wants. */
static void test_assertion_and_auth_header(void **state)
{
    (void)state;
    void *st = timeline_channel(NULL);
    struct fixture f;
    fixture_init(&f, "hdr");
    f.n.title = "t";
    static struct channel_request req;
    struct channel_outcome o;
    assert_int_equal(run_format(st, &f, &req, &o), 0);
    assert_int_equal(req.nheaders, 1); /* no token yet: content-type only */
    assert_string_equal(req.authorization, "");
    send_one(st, &f);
    answer_all();
    assert_int_equal(run_format(st, &f, &req, &o), 0);
    assert_int_equal(req.nheaders, 1);
    assert_string_equal(req.authorization, "Bearer ya29.unit.1");
    assert_string_equal(req.headers[0], "content-type: application/json");
    golden_case(st, &f, "with_access_token");
    fcm_channel.destroy(st);
    fixture_free(&f);
}

/* Google documents access tokens up to 2048 bytes: a 1500-byte one must
 * reach the wire whole (it once had to fit a 256-byte header slot). */
static void test_long_access_token(void **state)
{
    (void)state;
    void *st = timeline_channel(NULL);
    struct fixture f;
    fixture_init(&f, "long");
    f.n.title = "t";
    net.long_tokens = 1;
    send_one(st, &f);
    answer_all();
    static struct channel_request req;
    struct channel_outcome o;
    assert_int_equal(run_format(st, &f, &req, &o), 0);
    assert_int_equal(strlen(req.authorization), strlen("Bearer ") + 1500);
    assert_int_equal(strncmp(req.authorization, "Bearer ya29.unit.", 17), 0);
    net.long_tokens = 0;
    fcm_channel.destroy(st);
    fixture_free(&f);
}

/* The claims of the assertion, decoded from what the channel posts. */
static char captured_body[6000];
static int capture_transport(void *arg, const struct channel_request *req,
                             const struct http_req_opts *ro, http_done_cb done, void *ctx)
{
    (void)arg;
    (void)ro;
    (void)done;
    (void)ctx;
    snprintf(captured_body, sizeof(captured_body), "%.*s", (int)req->body_len, req->body);
    return -ECONNREFUSED; /* then the send is deferred RETRY */
}

static void test_assertion_claims(void **state)
{
    (void)state;
    struct fcm_config c;
    config_for_test(&c);
    void *st = make_channel_env(&c, loop);
    fcm_set_transport(st, capture_transport, NULL);
    struct fixture f;
    fixture_init(&f, "claims");
    f.n.title = "t";
    memset(outcomes, 0, sizeof(outcomes));
    send_one(st, &f);
    spin();
    assert_int_equal(outcomes[CHANNEL_RETRY], 1);
    assert_non_null(strstr(last.reason, "cannot start token request"));
    const char *a = strstr(captured_body, "&assertion=");
    assert_non_null(a);
    a += 11;
    const char *d1 = strchr(a, '.');
    const char *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
    assert_non_null(d2);
    char hdr[128], claims[512];
    int n = jwt_b64url_decode(a, (size_t)(d1 - a), hdr, sizeof(hdr) - 1);
    assert_true(n > 0);
    hdr[n] = '\0';
    n = jwt_b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), claims, sizeof(claims) - 1);
    assert_true(n > 0);
    claims[n] = '\0';
    assert_string_equal(hdr, "{\"alg\":\"RS256\",\"typ\":\"JWT\"}");
    assert_string_equal(claims, "{\"iss\":\"tidings-fcm@" PROJECT ".iam.gserviceaccount.com\","
                                "\"scope\":\"https://www.googleapis.com/auth/firebase.messaging\","
                                "\"aud\":\"" TOKEN_URL "\",\"iat\":1700000000,\"exp\":1700003600}");
    unsigned char sig[300];
    assert_int_equal(jwt_b64url_decode(d2 + 1, strlen(d2 + 1), sig, sizeof(sig)), 256);
    fcm_channel.destroy(st);
    fixture_free(&f);
}

/* fcm.queue bounds the sends waiting for a token: beyond it send refuses. */
static void test_queue_bound(void **state)
{
    (void)state;
    struct fcm_config c;
    config_for_test(&c);
    set_key(&c, "fcm.queue", "3");
    void *st = make_channel_env(&c, loop);
    fcm_set_transport(st, fake_transport, NULL);
    memset(&net, 0, sizeof(net));
    net.expires_in = 3599;
    net.token_status = 200;
    memset(outcomes, 0, sizeof(outcomes));
    struct fixture f;
    fixture_init(&f, "q");
    f.n.title = "t";
    for (int i = 0; i < 3; i++) {
        send_one(st, &f);
    }
    assert_int_equal(fcm_channel.send(st, &f.d, on_done, NULL), -EBUSY);
    /* Destroy with calls queued and a token request out: no callbacks. */
    fcm_channel.destroy(st);
    net.n = 0;
    spin();
    assert_int_equal(outcomes[CHANNEL_OK] + outcomes[CHANNEL_RETRY] + outcomes[CHANNEL_DROP], 0);
    fixture_free(&f);
}

/* --- init ------------------------------------------------------------------- */

static void expect_init_fails(struct fcm_config *c, const char *needle)
{
    struct channel_env env = {0};
    void *st = (void *)0x1;
    char err[256] = "";
    assert_true(fcm_channel.init(&env, c, &st, err, sizeof(err)) < 0);
    assert_null(st);
    if (!strstr(err, needle)) {
        fail_msg("error '%s' does not mention '%s'", err, needle);
    }
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* A copy of the generated key with one field changed (NULL value: removed). */
static void key_variant(const char *path, const char *field, const char *value)
{
    FILE *f = fopen(sa_file, "r");
    assert_non_null(f);
    static char buf[8192];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    cJSON *j = cJSON_Parse(buf);
    assert_non_null(j);
    cJSON_DeleteItemFromObject(j, field);
    if (value) {
        cJSON_AddStringToObject(j, field, value);
    }
    char *out = cJSON_Print(j);
    write_file(path, out);
    cJSON_free(out);
    cJSON_Delete(j);
}

static void test_init_errors(void **state)
{
    (void)state;
    struct fcm_config c;
    char path[400];

    config_for_test(&c);
    c.service_account_file[0] = '\0';
    expect_init_fails(&c, "required");

    config_for_test(&c);
    set_key(&c, "fcm.service_account_file", "/nonexistent/sa.json");
    expect_init_fails(&c, "/nonexistent/sa.json");

    config_for_test(&c);
    set_key(&c, "fcm.send_url", "http://fcm.googleapis.com");
    expect_init_fails(&c, "fcm.send_url");

    snprintf(path, sizeof(path), "%s/google-services.json", tmpdir);
    write_file(path, "{\"project_info\":{\"project_number\":\"1\"},\"client\":[]}");
    config_for_test(&c);
    set_key(&c, "fcm.service_account_file", path);
    expect_init_fails(&c, "not a service-account key");

    snprintf(path, sizeof(path), "%s/notjson.json", tmpdir);
    write_file(path, "-----BEGIN PRIVATE KEY-----\n");
    config_for_test(&c);
    set_key(&c, "fcm.service_account_file", path);
    expect_init_fails(&c, "not JSON");

    snprintf(path, sizeof(path), "%s/badkey.json", tmpdir);
    key_variant(path, "private_key",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    config_for_test(&c);
    set_key(&c, "fcm.service_account_file", path);
    expect_init_fails(&c, "private_key");

    snprintf(path, sizeof(path), "%s/noemail.json", tmpdir);
    key_variant(path, "client_email", NULL);
    config_for_test(&c);
    set_key(&c, "fcm.service_account_file", path);
    expect_init_fails(&c, "client_email");

    snprintf(path, sizeof(path), "%s/noproject.json", tmpdir);
    key_variant(path, "project_id", NULL);
    config_for_test(&c);
    set_key(&c, "fcm.service_account_file", path);
    expect_init_fails(&c, "fcm.project_id");
    /* ... which the config can supply. */
    set_key(&c, "fcm.project_id", "from-config");
    void *st = make_channel(&c);
    assert_string_equal(fcm_project(st), "from-config");
    fcm_channel.destroy(st);

    snprintf(path, sizeof(path), "%s/notokenuri.json", tmpdir);
    key_variant(path, "token_uri", NULL);
    config_for_test(&c);
    set_key(&c, "fcm.service_account_file", path);
    st = make_channel(&c);
    assert_string_equal(fcm_token_url(st), FCM_DEFAULT_TOKEN_URL);
    fcm_channel.destroy(st);

    snprintf(path, sizeof(path), "%s/httptokenuri.json", tmpdir);
    key_variant(path, "token_uri", "http://127.0.0.1/token");
    config_for_test(&c);
    set_key(&c, "fcm.service_account_file", path);
    expect_init_fails(&c, "fcm.token_url");
    set_key(&c, "fcm.token_url", "https://127.0.0.1:1/token/");
    st = make_channel(&c);
    assert_string_equal(fcm_token_url(st), "https://127.0.0.1:1/token");
    fcm_channel.destroy(st);

    config_for_test(&c);
    set_key(&c, "fcm.project_id", "bad/project");
    expect_init_fails(&c, "fcm.project_id");

    /* An EC key (APNs-style) is not a Google service-account key. */
    snprintf(path, sizeof(path), "%s/eckey.pem", tmpdir);
    char cmd[600];
    snprintf(cmd, sizeof(cmd),
             "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 "
             "-out '%s' 2>/dev/null",
             path);
    assert_int_equal(system(cmd), 0);
    FILE *kf = fopen(path, "r");
    assert_non_null(kf);
    static char pem[1024];
    size_t pn = fread(pem, 1, sizeof(pem) - 1, kf);
    fclose(kf);
    pem[pn] = '\0';
    snprintf(path, sizeof(path), "%s/ec.json", tmpdir);
    key_variant(path, "private_key", pem);
    config_for_test(&c);
    set_key(&c, "fcm.service_account_file", path);
    expect_init_fails(&c, "RSA");

    /* Bounds in the table. */
    char err[CONFIG_ERR_MAX];
    config_for_test(&c);
    assert_int_equal(
        config_set(fcm_channel.config, fcm_channel.config_n, &c, "fcm.rate", "0", err, sizeof(err)),
        TDG_ECONFIG);
    assert_int_equal(config_set(fcm_channel.config, fcm_channel.config_n, &c, "fcm.token_margin",
                                "31m", err, sizeof(err)),
                     TDG_ECONFIG);
    assert_int_equal(c.token_margin_ms, 5u * 60u * 1000u);
    assert_int_equal(c.rate, 600000);
}


/* --- several projects: selection by the device's app ---------------------------- */

static void test_golden_tenant_selection(void **state)
{
    (void)state;
    char dir[300], conf[400], text[1024];
    snprintf(dir, sizeof(dir), "%s/projects", tmpdir);
    assert_int_equal(mkdir(dir, 0700), 0);
    snprintf(conf, sizeof(conf), "%s/two.conf", dir);
    /* the same key under another project id is enough to see the routing;
     * test_fcm_send runs two real service accounts */
    snprintf(text, sizeof(text), "fcm.service_account_file = %s\nfcm.project_id = proj-two\n"
             "fcm.rate = 60\n", sa_file);
    write_file(conf, text);
    struct fcm_config c;
    config_for_test(&c);
    set_key(&c, "fcm.tenants_dir", dir);
    void *st = make_channel(&c);
    assert_int_equal(channel_set_count(st), 2);
    assert_string_equal(fcm_tenant_project(st, 1), "proj-two");
    assert_null(fcm_tenant_project(st, 2));
    static struct channel_request req;
    struct channel_outcome o;
    struct fixture f;
    char all[2048];
    size_t off = 0;
    const char *const apps[] = {"proj-two", PROJECT, "", "proj-three"};
    for (size_t i = 0; i < sizeof(apps) / sizeof(apps[0]); i++) {
        fixture_init(&f, "01HF6Y1M6Z8Q3R4S5T6V7W8XA7");
        f.n.title = "t";
        f.dev.app = apps[i];
        int rc = run_format(st, &f, &req, &o);
        off += (size_t)snprintf(all + off, sizeof(all) - off, "app '%s' -> %s\n", apps[i],
                                rc == 0 ? req.url : o.reason);
        fixture_free(&f);
    }
    check_golden("tenant_selection", all);
    fcm_channel.destroy(st);

    /* two credentials for one project */
    snprintf(text, sizeof(text), "fcm.service_account_file = %s\n", sa_file);
    write_file(conf, text);
    char err[256] = "";
    struct channel_env env = {0};
    st = NULL;
    assert_int_equal(fcm_channel.init(&env, &c, &st, err, sizeof(err)), TDG_ECONFIG);
    assert_non_null(strstr(err, "two.conf: fcm.project_id: project " PROJECT
                                " is already served by main config"));
    write_file(conf, "fcm.project_id = proj-two\n");
    assert_int_equal(fcm_channel.init(&env, &c, &st, err, sizeof(err)), TDG_ECONFIG);
    assert_non_null(strstr(err, "two.conf: fcm.service_account_file is required"));
    assert_int_equal(unlink(conf), 0);
    assert_int_equal(rmdir(dir), 0);
}

int main(void)
{
    log_set_level(LOG_LVL_ERROR);
    if (getenv("TIDINGS_TEST_DEBUG")) {
        log_set_level(LOG_LVL_DEBUG);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_alert),
        cmocka_unit_test(test_golden_data_only),
        cmocka_unit_test(test_golden_high_ttl_collapse),
        cmocka_unit_test(test_golden_critical),
        cmocka_unit_test(test_golden_ttl_left),
        cmocka_unit_test(test_golden_data_conversions),
        cmocka_unit_test(test_golden_low_priority),
        cmocka_unit_test(test_golden_oversize),
        cmocka_unit_test(test_golden_bad_token),
        cmocka_unit_test(test_golden_project_mismatch),
        cmocka_unit_test(test_golden_tenant_selection),
        cmocka_unit_test(test_payload_boundary),
        cmocka_unit_test(test_send_without_loop),
        cmocka_unit_test(test_map_answers),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_bucket),
        cmocka_unit_test(test_token_timeline),
        cmocka_unit_test(test_token_expired_sends_wait),
        cmocka_unit_test(test_token_failure_backoff),
        cmocka_unit_test(test_unauthenticated_refreshes_once),
        cmocka_unit_test(test_short_token_margin_capped),
        cmocka_unit_test(test_assertion_and_auth_header),
        cmocka_unit_test(test_long_access_token),
        cmocka_unit_test(test_assertion_claims),
        cmocka_unit_test(test_queue_bound),
        cmocka_unit_test(test_init_errors),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
