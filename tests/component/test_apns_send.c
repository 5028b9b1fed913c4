/*
 * test_apns_send.c - the APNs channel's send path against the real fake APNs
 * (tests/fakes/fake-apns: HTTP/2 over TLS, ALPN h2, ES256 token checks),
 * on a real Tidings loop.
 *
 * usage: test_apns_send FAKE_APNS GEN_CERTS_SH
 *
 * Once per run: a temp dir with a test CA, server certificate and an
 * Apple-style AuthKey_<KEYID>.p8 made by gen-certs.sh. Per test: a fake
 * started as a child process with that test's answer script (port 0, port
 * read from --port-file), a fresh channel pointed at it, and the fake
 * stopped in teardown. The child gets PR_SET_PDEATHSIG so it dies with us
 * even if this process crashes or ctest kills it on timeout.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <cjson/cJSON.h>

#include "apns.h"
#include "config.h"
#include "harness.h"
#include "error.h"
#include "http.h"
#include "log.h"
#include "loop.h"

#define KEY_ID "ABC123DEFG"
#define TEAM_ID "DEF123GHIJ"
#define TOPIC "com.example.tidings"
#define MAX_SENDS 256
#define GUARD_MS 30000

static const char *fake_bin;
static const char *gen_certs;
static char dir[256];
static loop_t *loop;

/* --- per-test state ---------------------------------------------------- */

struct call {
    struct waiter *w;
    int calls;
    struct channel_outcome o;
};

struct waiter {
    int expected, got;
    bool timed_out;
    bool in_send; /* done must never run while send is on the stack */
    struct call calls[MAX_SENDS];
};

static struct harness_child fake = {.pid = -1};
static int fake_port;
static void *chan;
static char record_path[320], script_path[320], port_path[320], log_path[320];
static int64_t sim_now; /* when set (!= 0), the channel's clock */

static int64_t sim_clock(void *arg)
{
    (void)arg;
    return sim_now;
}

static int64_t real_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void make_token(char *out, char c)
{
    memset(out, c, 64);
    out[64] = '\0';
}

/* --- the fake as a child process ---------------------------------------- */

static void dump_log(void)
{
    harness_dump_log(&fake);
}

static void fake_start_args(const char *script, const char *key_id, bool record)
{
    snprintf(script_path, sizeof(script_path), "%s/rules.txt", dir);
    snprintf(port_path, sizeof(port_path), "%s/port", dir);
    snprintf(record_path, sizeof(record_path), "%s/record.jsonl", dir);
    snprintf(log_path, sizeof(log_path), "%s/fake.log", dir);
    unlink(record_path);
    FILE *f = fopen(script_path, "w");
    assert_non_null(f);
    fputs(script, f);
    fclose(f);

    char cert[300], key[300], pub[300];
    snprintf(cert, sizeof(cert), "%s/server.crt", dir);
    snprintf(key, sizeof(key), "%s/server.key", dir);
    snprintf(pub, sizeof(pub), "%s/authkey_pub.pem", dir);
    const char *argv[24];
    int i = 0;
    argv[i++] = fake_bin;
    argv[i++] = "--listen";
    argv[i++] = "127.0.0.1:0";
    argv[i++] = "--cert";
    argv[i++] = cert;
    argv[i++] = "--key";
    argv[i++] = key;
    argv[i++] = "--auth-key";
    argv[i++] = pub;
    argv[i++] = "--key-id";
    argv[i++] = key_id;
    argv[i++] = "--team-id";
    argv[i++] = TEAM_ID;
    argv[i++] = "--topic";
    argv[i++] = TOPIC;
    if (record) {
        argv[i++] = "--record";
        argv[i++] = record_path;
    } else {
        argv[i++] = "--no-record";
    }
    argv[i++] = "--script";
    argv[i++] = script_path;
    argv[i++] = "--port-file";
    argv[i++] = port_path;
    argv[i] = NULL;

    char why[256];
    if (harness_start(&fake, "fake-apns", argv, log_path, port_path, 10000, why, sizeof(why)) <
        0) {
        fail_msg("%s", why);
    }
    fake_port = fake.port;
}

static void fake_start(const char *script)
{
    fake_start_args(script, KEY_ID, true);
}

static void fake_stop(void)
{
    harness_stop(&fake);
}

/* --- the channel -------------------------------------------------------------- */

static void config_for(struct apns_config *c, int port)
{
    const struct channel_ops *ops = &apns_channel;
    char err[CONFIG_ERR_MAX], v[512];
    assert_int_equal(config_defaults(ops->config, ops->config_n, c, err, sizeof(err)), 0);
#define SETK(k, val)                                                                               \
    do {                                                                                           \
        int rc_ = config_set(ops->config, ops->config_n, c, k, val, err, sizeof(err));             \
        if (rc_ != 0) {                                                                            \
            fail_msg("config %s: %s", k, err);                                                     \
        }                                                                                          \
    } while (0)
    snprintf(v, sizeof(v), "https://127.0.0.1:%d", port);
    SETK("apns.url", v);
    snprintf(v, sizeof(v), "%s/AuthKey_%s.p8", dir, KEY_ID);
    SETK("apns.key_file", v);
    SETK("apns.key_id", KEY_ID);
    SETK("apns.team_id", TEAM_ID);
    SETK("apns.topic", TOPIC);
    snprintf(v, sizeof(v), "%s/ca.crt", dir);
    SETK("apns.ca_file", v);
    SETK("apns.timeout", "10s");
#undef SETK
}

static void chan_open(const struct apns_config *c)
{
    struct channel_env env = {.loop = loop, .http = NULL};
    char err[256] = "";
    int rc = apns_channel.init(&env, c, &chan, err, sizeof(err));
    if (rc != 0) {
        fail_msg("init: %s: %s", tdg_strerror(rc), err);
    }
    if (sim_now) {
        apns_set_clock(chan, sim_clock, NULL);
    }
}

static void chan_open_default(void)
{
    struct apns_config c;
    config_for(&c, fake_port);
    chan_open(&c);
}

static int setup(void **state)
{
    (void)state;
    chan = NULL;
    sim_now = 0;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (chan) {
        apns_channel.destroy(chan);
        chan = NULL;
    }
    fake_stop();
    return 0;
}

/* --- sending ------------------------------------------------------------------ */

static void on_done(void *ctx, const struct channel_outcome *o)
{
    struct call *c = ctx;
    struct waiter *w = c->w;
    assert_false(w->in_send);
    c->calls++;
    c->o = *o;
    w->got++;
    if (w->got >= w->expected) {
        loop_stop(loop);
    }
}

static void on_guard(loop_t *l, uint64_t id, void *arg)
{
    (void)id;
    struct waiter *w = arg;
    w->timed_out = true;
    loop_stop(l);
}

static void on_settle(loop_t *l, uint64_t id, void *arg)
{
    (void)id;
    (void)arg;
    loop_stop(l);
}

struct notification_fixture {
    struct notification n;
    struct channel_device dev;
    struct channel_delivery d;
    char token[APNS_TOKEN_HEX_MAX + 1];
    char id[32];
};

static void fixture(struct notification_fixture *f, char tokc, int i)
{
    memset(f, 0, sizeof(*f));
    make_token(f->token, tokc);
    snprintf(f->id, sizeof(f->id), "test-%d", i);
    f->n.id = f->id;
    f->n.to = "user:alice";
    f->n.to_id = "alice";
    f->n.title = "Hello";
    f->n.body = "World";
    f->n.priority = PROTO_PRIO_NORMAL;
    f->dev.user_id = "alice";
    f->dev.platform = "ios";
    f->dev.token = f->token;
    f->dev.app = TOPIC;
    f->dev.environment = "production";
    f->d.attempt_id = (uint64_t)i + 1;
    f->d.n = &f->n;
    f->d.dev = &f->dev;
    f->d.now_ms = real_now_ms();
}

/* Send n deliveries (all to tokens of char tokc) and run the loop until all
 * are done, then a little longer to catch a second callback. */
static void send_wait(struct waiter *w, struct notification_fixture *fx, int n)
{
    memset(w, 0, sizeof(*w));
    w->expected = n;
    for (int i = 0; i < n; i++) {
        w->calls[i].w = w;
        w->in_send = true;
        int rc = apns_channel.send(chan, &fx[i].d, on_done, &w->calls[i]);
        w->in_send = false;
        if (rc != 0) {
            fail_msg("send %d: %s", i, tdg_strerror(rc));
        }
    }
    uint64_t guard = loop_timer_add(loop, GUARD_MS, on_guard, w);
    assert_true(guard != 0);
    assert_int_equal(loop_run(loop), 0);
    loop_timer_cancel(loop, guard);
    if (w->timed_out) {
        dump_log();
        fail_msg("only %d of %d sends finished in %d ms", w->got, n, GUARD_MS);
    }
    assert_true(loop_timer_add(loop, 50, on_settle, NULL) != 0);
    assert_int_equal(loop_run(loop), 0);
    for (int i = 0; i < n; i++) {
        assert_int_equal(w->calls[i].calls, 1);
    }
}

static struct waiter W;
static struct notification_fixture FX[MAX_SENDS];

static void send_one(char tokc, struct channel_outcome *out)
{
    fixture(&FX[0], tokc, 0);
    send_wait(&W, FX, 1);
    *out = W.calls[0].o;
}

/* Distinct "conn" values in the fake's record (one per TLS connection). */
static int record_connections(int *lines)
{
    FILE *f = fopen(record_path, "r");
    assert_non_null(f);
    static char line[16384];
    double seen[16];
    int nseen = 0;
    *lines = 0;
    while (fgets(line, sizeof(line), f)) {
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "conn");
        assert_true(cJSON_IsNumber(c));
        bool dup = false;
        for (int i = 0; i < nseen; i++) {
            dup = dup || seen[i] == c->valuedouble;
        }
        if (!dup && nseen < 16) {
            seen[nseen++] = c->valuedouble;
        }
        const cJSON *jwt = cJSON_GetObjectItemCaseSensitive(j, "jwt");
        assert_true(cJSON_IsString(jwt));
        assert_string_equal(jwt->valuestring, "ok");
        (*lines)++;
        cJSON_Delete(j);
    }
    fclose(f);
    return nseen;
}

/* --- tests ---------------------------------------------------------------------- */

static void test_ok_with_apns_id(void **state)
{
    (void)state;
    fake_start("");
    chan_open_default();
    struct channel_outcome o;
    send_one('a', &o);
    if (o.result != CHANNEL_OK) {
        dump_log();
        fail_msg("result %d status %d reason %s", (int)o.result, o.status, o.reason);
    }
    assert_int_equal(o.status, 200);
    assert_int_equal(strlen(o.provider_id), 36); /* a UUID */
    assert_int_equal(o.device_action, CHANNEL_DEVICE_NONE);

    /* The fake saw what format built, and the token verified. */
    int lines = 0;
    assert_int_equal(record_connections(&lines), 1);
    assert_int_equal(lines, 1);
    FILE *f = fopen(record_path, "r");
    static char line[16384];
    assert_non_null(fgets(line, sizeof(line), f));
    fclose(f);
    assert_non_null(strstr(line, "\"apns-push-type\":\"alert\""));
    assert_non_null(strstr(line, "\"apns-priority\":\"10\""));
    assert_non_null(strstr(line, "tidings_id"));
}

static void test_410_disables(void **state)
{
    (void)state;
    char tok[65];
    make_token(tok, 'b');
    char script[256];
    snprintf(script, sizeof(script),
             "token %s status 410 reason Unregistered timestamp 1700000000123\n", tok);
    fake_start(script);
    chan_open_default();
    struct channel_outcome o;
    send_one('b', &o);
    assert_int_equal(o.result, CHANNEL_DROP);
    assert_int_equal(o.status, 410);
    assert_string_equal(o.reason, "Unregistered");
    assert_int_equal(o.device_action, CHANNEL_DEVICE_DISABLE);
    assert_true(o.token_invalid_since_ms == INT64_C(1700000000123));
    /* Another token on the same fake is fine. */
    send_one('c', &o);
    assert_int_equal(o.result, CHANNEL_OK);
}

static void test_bad_device_token_flags(void **state)
{
    (void)state;
    fake_start("token * status 400 reason BadDeviceToken\n");
    chan_open_default();
    struct channel_outcome o;
    send_one('d', &o);
    assert_int_equal(o.result, CHANNEL_DROP);
    assert_int_equal(o.status, 400);
    assert_string_equal(o.reason, "BadDeviceToken");
    assert_int_equal(o.device_action, CHANNEL_DEVICE_FLAG);
}

static void test_429_retry_after(void **state)
{
    (void)state;
    fake_start("token * status 429 reason TooManyRequests retry-after 5\n");
    chan_open_default();
    struct channel_outcome o;
    send_one('e', &o);
    assert_int_equal(o.result, CHANNEL_RETRY);
    assert_int_equal(o.status, 429);
    assert_string_equal(o.reason, "TooManyRequests");
    assert_true(o.retry_after_ms == 5000);
    /* Per device: the channel is not paused, the next send goes straight
     * out (and meets the same rule). */
    send_one('e', &o);
    assert_int_equal(o.result, CHANNEL_RETRY);
}

static void test_503_retry(void **state)
{
    (void)state;
    fake_start("token * status 503 reason ServiceUnavailable times 1\n");
    chan_open_default();
    struct channel_outcome o;
    send_one('f', &o);
    assert_int_equal(o.result, CHANNEL_RETRY);
    assert_int_equal(o.status, 503);
    assert_string_equal(o.reason, "ServiceUnavailable");
    send_one('f', &o); /* the rule is spent: the retry succeeds */
    assert_int_equal(o.result, CHANNEL_OK);
}

static void test_dropped_connection_retries(void **state)
{
    (void)state;
    fake_start("token * drop times 1\n");
    chan_open_default();
    struct channel_outcome o;
    send_one('0', &o);
    /* curl may replay a request whose connection died before any answer;
     * if it did, the retry was answered (rule spent). Either way: one
     * outcome, and never a drop. */
    assert_true(o.result == CHANNEL_RETRY || o.result == CHANNEL_OK);
    printf("dropped connection -> %s status=%d reason=%s\n",
           o.result == CHANNEL_OK ? "ok" : "retry", o.status, o.reason);
    if (o.result == CHANNEL_RETRY) {
        assert_int_equal(o.status, 0);
        assert_true(o.reason[0] != '\0'); /* curl's message */
    }
    send_one('0', &o);
    assert_int_equal(o.result, CHANNEL_OK);
}

static void test_goaway_retries(void **state)
{
    (void)state;
    fake_start("token * goaway times 1\n");
    chan_open_default();
    struct channel_outcome o;
    send_one('1', &o);
    assert_true(o.result == CHANNEL_RETRY || o.result == CHANNEL_OK);
    printf("GOAWAY -> %s status=%d reason=%s\n", o.result == CHANNEL_OK ? "ok" : "retry", o.status,
           o.reason);
    send_one('1', &o); /* a new connection replaces the one that went away */
    assert_int_equal(o.result, CHANNEL_OK);
}

static void test_timeout_retries(void **state)
{
    (void)state;
    fake_start("token * delay 3000 times 1\n");
    struct apns_config c;
    config_for(&c, fake_port);
    char err[CONFIG_ERR_MAX];
    assert_int_equal(config_set(apns_channel.config, apns_channel.config_n, &c, "apns.timeout",
                                "300ms", err, sizeof(err)),
                     0);
    chan_open(&c);
    struct channel_outcome o;
    send_one('2', &o);
    assert_int_equal(o.result, CHANNEL_RETRY);
    assert_non_null(strstr(o.reason, "imed out"));
    assert_int_equal(o.device_action, CHANNEL_DEVICE_NONE);
    /* The rule is spent: the next request is answered at once. */
    send_one('2', &o);
    if (o.result != CHANNEL_OK) {
        dump_log();
        fail_msg("after the timeout: result %d status %d reason %s", (int)o.result, o.status,
                 o.reason);
    }
}

/*
 * An answer the fake starts and then breaks off (script "cut", see
 * docs/fakes.md). With an error status the answer is incomplete: the
 * channel must report a retry - never ok, never a permanent drop, never a
 * device action from half an answer - and the next request must succeed,
 * over a new connection when the old one was closed.
 */
static void cut_case(const char *script, char tokc, enum channel_result want, bool new_connection)
{
    fake_start(script);
    chan_open_default();
    struct channel_outcome o;
    send_one(tokc, &o);
    printf("%s  -> result=%d status=%d reason=%s\n", script, (int)o.result, o.status, o.reason);
    if (o.result != want || o.device_action != CHANNEL_DEVICE_NONE) {
        dump_log();
        fail_msg("cut answer (%s): result %d (want %d) status %d reason '%s' action %d", script,
                 (int)o.result, (int)want, o.status, o.reason, (int)o.device_action);
    }
    send_one(tokc, &o);
    if (o.result != CHANNEL_OK) {
        dump_log();
        fail_msg("after the cut answer: result %d status %d reason '%s'", (int)o.result, o.status,
                 o.reason);
    }
    int lines = 0;
    int conns = record_connections(&lines);
    assert_int_equal(lines, 2); /* the cut request was not sent twice */
    if (new_connection) {
        assert_int_equal(conns, 2);
    }
}

static void test_cut_400_after_headers_retries(void **state)
{
    (void)state;
    /* The status of a permanent error, then the connection closes before
     * the reason: nothing is known for sure, so no drop and no flag. */
    cut_case("token * status 400 reason BadDeviceToken cut headers times 1\n", '8', CHANNEL_RETRY,
             true);
}

static void test_cut_410_body_retries(void **state)
{
    (void)state;
    /* Half of a 410 Unregistered: the device must not be disabled. */
    cut_case("token * status 410 reason Unregistered cut body times 1\n", '9', CHANNEL_RETRY,
             true);
}

static void test_cut_410_reset_retries(void **state)
{
    (void)state;
    /* RST_STREAM INTERNAL_ERROR after the 410 HEADERS; the connection stays. */
    cut_case("token * status 410 reason Unregistered cut reset times 1\n", 'a', CHANNEL_RETRY,
             false);
}

static void test_cut_400_goaway_error_retries(void **state)
{
    (void)state;
    /* GOAWAY INTERNAL_ERROR (last-stream-id = this stream) after the HEADERS. */
    cut_case("token * status 400 reason BadDeviceToken cut goaway times 1\n", 'b', CHANNEL_RETRY,
             true);
}

/*
 * A 200 HEADERS block broken off afterwards: hub/channels/apns.c counts it
 * as Apple's acceptance on purpose (APNs' 200 has no body, so nothing is
 * missing, and a retry would push the notification twice). Pinned here:
 * ok exactly once, the request not repeated, the next one fine.
 */
static void test_cut_200_is_accepted(void **state)
{
    (void)state;
    cut_case("token * cut headers times 1\n", 'c', CHANNEL_OK, true);
    teardown(NULL);
    cut_case("token * status 200 cut reset times 1\n", 'd', CHANNEL_OK, false);
    teardown(NULL);
    cut_case("token * cut goaway times 1\n", 'e', CHANNEL_OK, true);
}

static void test_100_concurrent_multiplexed(void **state)
{
    (void)state;
    fake_start("");
    chan_open_default();
    for (int i = 0; i < 100; i++) {
        fixture(&FX[i], "0123456789abcdef"[i % 16], i);
    }
    send_wait(&W, FX, 100);
    for (int i = 0; i < 100; i++) {
        if (W.calls[i].o.result != CHANNEL_OK) {
            fail_msg("send %d: %d %s", i, W.calls[i].o.status, W.calls[i].o.reason);
        }
    }
    int lines = 0;
    int conns = record_connections(&lines);
    assert_int_equal(lines, 100);
    /* Streams on the connection(s), not a connection per request. */
    assert_true(conns >= 1 && conns <= 2);
    printf("100 sends over %d connection(s)\n", conns);
}

static void test_payload_too_large_deferred(void **state)
{
    (void)state;
    fake_start("");
    chan_open_default();
    static char big[4200];
    memset(big, 'x', sizeof(big) - 1);
    fixture(&FX[0], '3', 0);
    FX[0].n.body = big;
    send_wait(&W, FX, 1); /* asserts done did not run inside send */
    assert_int_equal(W.calls[0].o.result, CHANNEL_DROP);
    assert_string_equal(W.calls[0].o.reason, "PayloadTooLarge");
    int lines = 0;
    FILE *f = fopen(record_path, "r");
    if (f) {
        static char line[16384];
        while (fgets(line, sizeof(line), f)) {
            lines++;
        }
        fclose(f);
    }
    assert_int_equal(lines, 0); /* never sent */
}

static void test_expired_provider_token_no_storm(void **state)
{
    (void)state;
    fake_start("");
    /* Our clock two hours behind the fake's: every token we sign is
     * "expired" for it. */
    sim_now = real_now_ms() - 2 * 3600 * 1000;
    chan_open_default();
    struct apns_stats s0, s;
    apns_get_stats(chan, &s0);

    for (int i = 0; i < 50; i++) {
        fixture(&FX[i], '4', i);
    }
    send_wait(&W, FX, 50);
    for (int i = 0; i < 50; i++) {
        assert_int_equal(W.calls[i].o.result, CHANNEL_RETRY);
        assert_string_equal(W.calls[i].o.reason, "ExpiredProviderToken");
    }
    apns_get_stats(chan, &s);
    assert_true(s.token_signs == s0.token_signs); /* token < 20 min old: no re-sign */

    /* 21 minutes later (on our clock): one re-sign for the whole burst. */
    sim_now += 21 * 60 * 1000;
    send_wait(&W, FX, 50);
    apns_get_stats(chan, &s);
    assert_true(s.token_signs == s0.token_signs + 1);
    /* ... and not again right after. */
    send_wait(&W, FX, 20);
    apns_get_stats(chan, &s);
    assert_true(s.token_signs == s0.token_signs + 1);

    /* Clock back in step: the token is 50+ min old on our clock, so format
     * re-signs it and the fake accepts it. */
    sim_now = real_now_ms();
    struct channel_outcome o;
    send_one('4', &o);
    assert_int_equal(o.result, CHANNEL_OK);
    apns_get_stats(chan, &s);
    assert_true(s.token_signs == s0.token_signs + 2);
}

static void test_invalid_provider_token_drops(void **state)
{
    (void)state;
    /* The fake knows our key under another key id. */
    fake_start_args("", "ZZZ999ZZZZ", true);
    chan_open_default();
    struct channel_outcome o;
    send_one('5', &o);
    assert_int_equal(o.result, CHANNEL_DROP);
    assert_int_equal(o.status, 403);
    assert_string_equal(o.reason, "InvalidProviderToken");
}

static int ebusy_done;
static void on_count(void *ctx, const struct channel_outcome *o)
{
    (void)ctx;
    (void)o;
    ebusy_done++;
}

static void test_inflight_bound_and_destroy_aborts(void **state)
{
    (void)state;
    fake_start("token * delay 5000\n");
    struct apns_config c;
    config_for(&c, fake_port);
    c.connections = 1;
    c.max_streams = 4;
    chan_open(&c);
    ebusy_done = 0;
    for (int i = 0; i < 5; i++) {
        fixture(&FX[i], '6', i);
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(apns_channel.send(chan, &FX[i].d, on_count, NULL), 0);
    }
    assert_int_equal(apns_channel.send(chan, &FX[4].d, on_count, NULL), -EBUSY);
    /* Let the requests reach the fake, then tear down with all in flight. */
    assert_true(loop_timer_add(loop, 300, on_settle, NULL) != 0);
    assert_int_equal(loop_run(loop), 0);
    assert_int_equal(ebusy_done, 0);
    apns_channel.destroy(chan);
    chan = NULL;
    assert_true(loop_timer_add(loop, 50, on_settle, NULL) != 0);
    assert_int_equal(loop_run(loop), 0);
    assert_int_equal(ebusy_done, 0); /* destroy never calls done */
}

/* A TLS server that speaks only HTTP/1.1 must be refused (APNs is h2). */
static const char http1_server[] =
    "import http.server, ssl, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    protocol_version = 'HTTP/1.1'\n"
    "    def do_POST(self):\n"
    "        self.rfile.read(int(self.headers.get('content-length', 0)))\n"
    "        self.send_response(200)\n"
    "        self.send_header('content-length', '0')\n"
    "        self.end_headers()\n"
    "    def log_message(self, *a):\n"
    "        pass\n"
    "srv = http.server.HTTPServer(('127.0.0.1', 0), H)\n"
    "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
    "ctx.load_cert_chain(sys.argv[1], sys.argv[2])\n"
    "ctx.set_alpn_protocols(['http/1.1'])\n"
    "srv.socket = ctx.wrap_socket(srv.socket, server_side=True)\n"
    "open(sys.argv[3] + '.tmp', 'w').write('%d\\n' % srv.server_address[1])\n"
    "import os; os.rename(sys.argv[3] + '.tmp', sys.argv[3])\n"
    "srv.serve_forever()\n";

static void test_http1_refused(void **state)
{
    (void)state;
    const char *py = "/usr/bin/python3";
    if (access(py, X_OK) != 0) {
        skip();
    }
    char cert[300], key[300];
    snprintf(cert, sizeof(cert), "%s/server.crt", dir);
    snprintf(key, sizeof(key), "%s/server.key", dir);
    snprintf(port_path, sizeof(port_path), "%s/port1", dir);
    snprintf(log_path, sizeof(log_path), "%s/http1.log", dir);
    const char *argv[] = {py, "-c", http1_server, cert, key, port_path, NULL};
    char why[256];
    if (harness_start(&fake, "HTTP/1.1 test server", argv, log_path, port_path, 10000, why,
                      sizeof(why)) < 0) {
        fail_msg("%s", why); /* teardown stops it */
    }
    int port = fake.port;
    struct apns_config c;
    config_for(&c, port);
    chan_open(&c);
    struct channel_outcome o;
    send_one('7', &o);
    assert_int_equal(o.result, CHANNEL_RETRY);
    if (!strstr(o.reason, "HTTP/2 required")) {
        dump_log();
        fail_msg("reason: %s", o.reason);
    }
}

/* --- main ------------------------------------------------------------------------ */

static int group_setup(void **state)
{
    (void)state;
    if (harness_mkdtemp(dir, sizeof(dir), "apns") < 0 ||
        harness_gen_certs(gen_certs, dir, KEY_ID) < 0) {
        return -1;
    }
    loop = loop_create();
    return loop ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    fake_stop();
    loop_destroy(loop);
    return harness_rmtree(dir);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s FAKE_APNS GEN_CERTS_SH\n", argv[0]);
        return 2;
    }
    fake_bin = argv[1];
    gen_certs = argv[2];
    signal(SIGPIPE, SIG_IGN);
    log_set_level(LOG_LVL_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ok_with_apns_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_410_disables, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_device_token_flags, setup, teardown),
        cmocka_unit_test_setup_teardown(test_429_retry_after, setup, teardown),
        cmocka_unit_test_setup_teardown(test_503_retry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dropped_connection_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_goaway_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cut_400_after_headers_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cut_410_body_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cut_410_reset_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cut_400_goaway_error_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cut_200_is_accepted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_100_concurrent_multiplexed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_payload_too_large_deferred, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expired_provider_token_no_storm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_provider_token_drops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_inflight_bound_and_destroy_aborts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http1_refused, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
