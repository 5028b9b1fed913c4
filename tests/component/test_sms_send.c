/*
 * test_sms_send.c - the SMS channel's send path against the fake Twilio
 * Messages API (tests/fakes/fake_sms.py: HTTPS, Basic auth, Twilio's error
 * bodies), on a real Tidings loop, for every answer mapping.
 *
 * usage: test_sms_send PYTHON FAKE_SMS_PY GEN_CERTS_SH
 *
 * Once per run: a temp dir with a test CA and server certificate made by
 * gen-certs.sh, and a random account SID and auth token (the token only in
 * a 0600 file that both the fake and the channel read). Per test: a fake
 * started as a child process with that test's script (port 0, port read
 * from --port-file), a fresh channel pointed at it, and both stopped in
 * teardown. The child gets PR_SET_PDEATHSIG so it dies with us even if this
 * process crashes or ctest kills it on timeout; the temp dir is removed in
 * the group teardown.
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

#include "config.h"
#include "harness.h"
#include "error.h"
#include "log.h"
#include "loop.h"
#include "sms.h"
#include "store.h"

#define FROM "+15005550006"
#define MAX_SENDS 16
#define GUARD_MS 30000
#define SID_LEN_MAX 72

static const char *python;
static const char *fake_py;
static const char *gen_certs;
static char dir[256];
static char sid[40], token_path[320];
static loop_t *loop;

static struct harness_child fake = {.pid = -1};
static int fake_port;
static void *chan;
static char record_path[320], script_path[320], port_path[320], log_path[320];

static void random_hex(char *out, size_t nbytes)
{
    assert_int_equal(harness_random_hex(out, nbytes), 0);
}

/* --- the fake as a child process ------------------------------------------- */

static void dump_log(void)
{
    harness_dump_log(&fake);
}

/* Start the fake with script; token_file is the token it accepts. */
static void fake_start_token(const char *script, const char *token_file)
{
    unlink(record_path);
    FILE *f = fopen(script_path, "w");
    assert_non_null(f);
    fputs(script, f);
    fclose(f);

    char cert[300], key[300];
    snprintf(cert, sizeof(cert), "%s/server.crt", dir);
    snprintf(key, sizeof(key), "%s/server.key", dir);
    const char *argv[] = {python,        fake_py,     "--listen",     "127.0.0.1:0",
                          "--cert",      cert,        "--key",        key,
                          "--account-sid", sid,       "--auth-token-file", token_file,
                          "--record",    record_path, "--script",     script_path,
                          "--port-file", port_path,   NULL};
    char why[256];
    if (harness_start(&fake, "fake-sms", argv, log_path, port_path, 15000, why, sizeof(why)) <
        0) {
        fail_msg("%s", why);
    }
    fake_port = fake.port;
}

static void fake_start(const char *script)
{
    fake_start_token(script, token_path);
}

static void fake_stop(void)
{
    harness_stop(&fake);
}

/* --- the record --------------------------------------------------------------- */

#define MAX_LINES 64
static cJSON *rec[MAX_LINES];
static int nrec;

static void record_free(void)
{
    for (int i = 0; i < nrec; i++) {
        cJSON_Delete(rec[i]);
    }
    nrec = 0;
}

static int record_load(void)
{
    record_free();
    FILE *f = fopen(record_path, "r");
    if (!f) {
        return 0;
    }
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0 && nrec < MAX_LINES) {
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        rec[nrec++] = j;
    }
    free(line);
    fclose(f);
    return nrec;
}

static const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static double jnum(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

static const char *param(const cJSON *o, const char *k)
{
    return jstr(cJSON_GetObjectItemCaseSensitive(o, "params"), k);
}

/* The record line whose To is to (NULL if none). */
static cJSON *record_for(const char *to)
{
    for (int i = 0; i < nrec; i++) {
        const char *t = param(rec[i], "To");
        if (t && strcmp(t, to) == 0) {
            return rec[i];
        }
    }
    return NULL;
}

/* --- the channel --------------------------------------------------------------------- */

static void config_for(struct sms_config *c, int port)
{
    const struct channel_ops *ops = &sms_channel;
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
    SETK("sms.api_url", v);
    SETK("sms.account_sid", sid);
    SETK("sms.auth_token_file", token_path);
    SETK("sms.from", FROM);
    snprintf(v, sizeof(v), "%s/ca.crt", dir);
    SETK("sms.ca_file", v);
    SETK("sms.timeout", "10s");
    SETK("sms.rate", "100"); /* tests that measure the rate set their own */
#undef SETK
}

static void cfg_set(struct sms_config *c, const char *k, const char *v)
{
    char err[CONFIG_ERR_MAX];
    if (config_set(sms_channel.config, sms_channel.config_n, c, k, v, err, sizeof(err)) != 0) {
        fail_msg("config %s: %s", k, err);
    }
}

static void chan_open(const struct sms_config *c)
{
    struct channel_env env = {.loop = loop, .http = NULL};
    char err[256] = "";
    int rc = sms_channel.init(&env, c, &chan, err, sizeof(err));
    if (rc != 0) {
        fail_msg("init: %s: %s", tdg_strerror(rc), err);
    }
}

static void chan_open_default(void)
{
    struct sms_config c;
    config_for(&c, fake_port);
    chan_open(&c);
}

static int setup(void **state)
{
    (void)state;
    chan = NULL;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (chan) {
        sms_channel.destroy(chan);
        chan = NULL;
    }
    fake_stop();
    record_free();
    return 0;
}

/* --- sending ------------------------------------------------------------------------- */

struct call {
    struct waiter *w;
    int calls;
    uint64_t done_ms;
    struct channel_outcome o;
};

struct waiter {
    int expected, got;
    bool timed_out;
    bool in_send; /* done must never run while send is on the stack */
    struct call calls[MAX_SENDS];
};

static void on_done(void *ctx, const struct channel_outcome *o)
{
    struct call *c = ctx;
    struct waiter *w = c->w;
    assert_false(w->in_send);
    c->calls++;
    c->o = *o;
    c->done_ms = clock_mono_ms();
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

struct fixture {
    struct notification n;
    struct channel_device dev;
    struct channel_delivery d;
    char to[24];
    char id[32];
};

static void fixture(struct fixture *f, const char *to, const char *title, const char *body)
{
    memset(f, 0, sizeof(*f));
    snprintf(f->to, sizeof(f->to), "%s", to);
    snprintf(f->id, sizeof(f->id), "sms-%s", to + 1);
    f->n.id = f->id;
    f->n.to = "user:alice";
    f->n.to_id = "alice";
    f->n.title = title;
    f->n.body = body;
    f->n.priority = PROTO_PRIO_NORMAL;
    f->dev.user_id = "alice";
    f->dev.platform = "sms";
    f->dev.token = f->to;
    f->d.attempt_id = 1;
    f->d.n = &f->n;
    f->d.dev = &f->dev;
    f->d.now_ms = clock_wall_ms();
}

static struct waiter W;
static struct fixture FX[MAX_SENDS];

/* Send n fixtures and run the loop until all are done, then a little longer
 * to catch a second callback. */
static void send_wait(int n)
{
    memset(&W, 0, sizeof(W));
    W.expected = n;
    for (int i = 0; i < n; i++) {
        W.calls[i].w = &W;
        W.in_send = true;
        int rc = sms_channel.send(chan, &FX[i].d, on_done, &W.calls[i]);
        W.in_send = false;
        if (rc != 0) {
            fail_msg("send %d: %s", i, tdg_strerror(rc));
        }
    }
    uint64_t guard = loop_timer_add(loop, GUARD_MS, on_guard, &W);
    assert_true(guard != 0);
    assert_int_equal(loop_run(loop), 0);
    loop_timer_cancel(loop, guard);
    if (W.timed_out) {
        dump_log();
        fail_msg("only %d of %d sends finished in %d ms", W.got, n, GUARD_MS);
    }
    assert_true(loop_timer_add(loop, 50, on_settle, NULL) != 0);
    assert_int_equal(loop_run(loop), 0);
    for (int i = 0; i < n; i++) {
        assert_int_equal(W.calls[i].calls, 1);
    }
}

static const struct channel_outcome *send_one(const char *to, const char *title, const char *body)
{
    fixture(&FX[0], to, title, body);
    send_wait(1);
    return &W.calls[0].o;
}

/* --- tests ----------------------------------------------------------------------------- */

static void test_ok(void **state)
{
    (void)state;
    fake_start("");
    chan_open_default();
    fixture(&FX[0], "+4915112345678", "Door open", "Front door opened at 08:15");
    FX[0].n.ttl_s = 3600;
    send_wait(1);
    const struct channel_outcome *o = &W.calls[0].o;
    assert_int_equal(o->result, CHANNEL_OK);
    assert_int_equal(o->status, 201);
    assert_int_equal(strlen(o->provider_id), 34);
    assert_memory_equal(o->provider_id, "SM", 2);
    assert_string_equal(o->reason, "gsm7 segments=1");

    assert_int_equal(record_load(), 1);
    cJSON *r = rec[0];
    assert_string_equal(jstr(r, "auth"), "ok");
    assert_string_equal(jstr(r, "content_type"), "application/x-www-form-urlencoded");
    assert_string_equal(param(r, "To"), "+4915112345678");
    assert_string_equal(param(r, "From"), FROM);
    assert_string_equal(param(r, "Body"), "Door open\nFront door opened at 08:15");
    assert_string_equal(param(r, "ValidityPeriod"), "3600");
    assert_null(param(r, "StatusCallback"));
    assert_string_equal(jstr(r, "sid"), o->provider_id);
    assert_int_equal((int)jnum(r, "status"), 201);
    assert_int_equal((int)jnum(r, "num_segments"), 1);
    assert_string_equal(jstr(r, "encoding"), "GSM-7");
}

/* Our GSM-7/UCS-2 segment counts agree with the fake's (an independent
 * implementation), on texts around every boundary. */
static void test_segments_agree(void **state)
{
    (void)state;
    fake_start("");
    chan_open_default();
    static char texts[8][1200];
    /* unit x n, then mid, then unit x n2 */
    static const struct {
        const char *unit;
        int n;
        const char *mid;
        int n2;
    } spec[] = {
        {"a", 160, "", 0},
        {"a", 161, "", 0},
        {"\xe2\x82\xac", 80, "", 0},     /* 80 x € = 160 septets */
        {"a", 152, "\xe2\x82\xac", 152}, /* an ESC pair at the edge: 3 segments, not 2 */
        {"\xd0\xb6", 70, "", 0},         /* ж, UCS-2 */
        {"\xd0\xb6", 71, "", 0},
        {"\xd0\xb6", 66, "\xf0\x9f\x9a\xaa", 66}, /* a surrogate pair at the edge: 3, not 2 */
        {"T\xc3\xbcr offen \xe2\x80\x94 \xf0\x9f\x9a\xaa ", 3, "", 0},
    };
    int n = (int)(sizeof(spec) / sizeof(spec[0]));
    for (int i = 0; i < n; i++) {
        size_t off = 0, ul = strlen(spec[i].unit), ml = strlen(spec[i].mid);
        for (int k = 0; k < spec[i].n + spec[i].n2; k++) {
            if (k == spec[i].n) {
                memcpy(texts[i] + off, spec[i].mid, ml);
                off += ml;
            }
            memcpy(texts[i] + off, spec[i].unit, ul);
            off += ul;
        }
        if (spec[i].n2 == 0) {
            memcpy(texts[i] + off, spec[i].mid, ml);
            off += ml;
        }
        assert_true(off < sizeof(texts[i]));
        texts[i][off] = '\0';
        char to[24];
        snprintf(to, sizeof(to), "+4915100000%03d", i);
        fixture(&FX[i], to, NULL, texts[i]);
    }
    send_wait(n);
    assert_int_equal(record_load(), n);
    for (int i = 0; i < n; i++) {
        const struct channel_outcome *o = &W.calls[i].o;
        assert_int_equal(o->result, CHANNEL_OK);
        cJSON *r = record_for(FX[i].to);
        assert_non_null(r);
        assert_string_equal(param(r, "Body"), texts[i]);
        char want[64];
        snprintf(want, sizeof(want), "%s segments=%d",
                 strcmp(jstr(r, "encoding"), "GSM-7") == 0 ? "gsm7" : "ucs2",
                 (int)jnum(r, "num_segments"));
        if (strcmp(o->reason, want) != 0) {
            fail_msg("text %d: channel says '%s', fake says '%s'", i, o->reason, want);
        }
    }
}

static void test_invalid_number_never_sent(void **state)
{
    (void)state;
    fake_start("");
    chan_open_default();
    const struct channel_outcome *o = send_one("+1234567", "Hi", "there");
    assert_int_equal(o->result, CHANNEL_DROP);
    assert_string_equal(o->reason, "invalid_number");
    assert_int_equal(o->status, 0);
    assert_int_equal(record_load(), 0);
}

static void expect_answer(const char *script, const char *to, enum channel_result result,
                          int status, const char *reason, int action)
{
    fake_start(script);
    chan_open_default();
    const struct channel_outcome *o = send_one(to, "Hi", "there");
    if (o->result != result || o->status != status || strcmp(o->reason, reason) != 0 ||
        o->device_action != action) {
        fail_msg("%s: got result=%d status=%d reason='%s' action=%d", to, o->result, o->status,
                 o->reason, o->device_action);
    }
    assert_int_equal(record_load(), 1);
}

static void test_21211_invalid(void **state)
{
    (void)state;
    expect_answer("to +15550000001 error 21211\n", "+15550000001", CHANNEL_DROP, 400,
                  "invalid_number:21211", CHANNEL_DEVICE_NONE);
}

static void test_21614_not_mobile(void **state)
{
    (void)state;
    expect_answer("to +15550000002 error 21614\n", "+15550000002", CHANNEL_DROP, 400,
                  "not_mobile:21614", CHANNEL_DEVICE_NONE);
}

static void test_21610_opted_out(void **state)
{
    (void)state;
    expect_answer("to +15550000003 error 21610\n", "+15550000003", CHANNEL_DROP, 400,
                  "opted_out:21610", CHANNEL_DEVICE_DISABLE);
}

static void test_500_retry(void **state)
{
    (void)state;
    expect_answer("to * status 500\n", "+15550000004", CHANNEL_RETRY, 500, "server_error:20500",
                  CHANNEL_DEVICE_NONE);
}

static void test_503_retry_after(void **state)
{
    (void)state;
    expect_answer("to * status 503 retry-after 30\n", "+15550000005", CHANNEL_RETRY, 503,
                  "server_error:20503", CHANNEL_DEVICE_NONE);
    assert_int_equal(W.calls[0].o.retry_after_ms, 30000);
}

static void test_unknown_4xx_drop(void **state)
{
    (void)state;
    fake_start("to * error 21408\n");
    chan_open_default();
    const struct channel_outcome *o = send_one("+15550000006", "Hi", "there");
    assert_int_equal(o->result, CHANNEL_DROP);
    assert_int_equal(o->status, 400);
    assert_memory_equal(o->reason, "twilio:21408 Permission", 23);
}

/* 20429 retries after Retry-After and holds the whole sender that long. */
static void test_20429_pauses_sender(void **state)
{
    (void)state;
    fake_start("to +15550000007 error 20429 retry-after 1\n");
    chan_open_default();
    const struct channel_outcome *o = send_one("+15550000007", "Hi", "there");
    assert_int_equal(o->result, CHANNEL_RETRY);
    assert_int_equal(o->status, 429);
    assert_int_equal(o->retry_after_ms, 1000);
    assert_string_equal(o->reason, "rate_limited:20429");
    uint64_t t429 = W.calls[0].done_ms;
    /* another number, straight after: it waits out the pause */
    o = send_one("+15550000008", "Hi", "again");
    assert_int_equal(o->result, CHANNEL_OK);
    uint64_t waited = W.calls[0].done_ms - t429;
    if (waited < 900) {
        fail_msg("the next message went out %llu ms after the 429 (Retry-After: 1 s)",
                 (unsigned long long)waited);
    }
    assert_int_equal(record_load(), 2);
    double gap = jnum(rec[1], "ts_ms") - jnum(rec[0], "ts_ms");
    assert_true(gap >= 900);
}

static void test_wrong_token(void **state)
{
    (void)state;
    char other[320], tok[40];
    snprintf(other, sizeof(other), "%s/other-token", dir);
    random_hex(tok, 16);
    FILE *f = fopen(other, "w");
    assert_non_null(f);
    fprintf(f, "%s\n", tok);
    fclose(f);
    fake_start_token("", other);
    chan_open_default();
    const struct channel_outcome *o = send_one("+15550000009", "Hi", "there");
    assert_int_equal(o->result, CHANNEL_DROP);
    assert_int_equal(o->status, 401);
    assert_string_equal(o->reason, "auth_failed:20003");
    assert_int_equal(record_load(), 1);
    assert_string_equal(jstr(rec[0], "auth"), "invalid");
    assert_int_equal((int)jnum(rec[0], "code"), 20003);
}

static void test_dropped_connection_retries(void **state)
{
    (void)state;
    fake_start("to +15550000010 drop\n");
    chan_open_default();
    const struct channel_outcome *o = send_one("+15550000010", "Hi", "there");
    assert_int_equal(o->result, CHANNEL_RETRY);
    assert_int_equal(o->status, 0);
    assert_true(o->reason[0] != '\0');
    assert_int_equal(record_load(), 1);
    assert_string_equal(jstr(rec[0], "action"), "drop");
}

static void test_slow_answer_times_out(void **state)
{
    (void)state;
    fake_start("to +15550000011 delay 3000\n");
    struct sms_config c;
    config_for(&c, fake_port);
    cfg_set(&c, "sms.timeout", "700ms");
    chan_open(&c);
    uint64_t t0 = clock_mono_ms();
    const struct channel_outcome *o = send_one("+15550000011", "Hi", "there");
    assert_int_equal(o->result, CHANNEL_RETRY);
    assert_true(W.calls[0].done_ms - t0 < 2500);
    /* slow but in time is fine */
    teardown(NULL);
    fake_start("to +15550000012 delay 300\n");
    config_for(&c, fake_port);
    cfg_set(&c, "sms.timeout", "3s");
    chan_open(&c);
    o = send_one("+15550000012", "Hi", "there");
    assert_int_equal(o->result, CHANNEL_OK);
}

static void test_connection_refused_retries(void **state)
{
    (void)state;
    /* a port nothing listens on: start and stop a fake to learn a free one */
    fake_start("");
    int port = fake_port;
    fake_stop();
    struct sms_config c;
    config_for(&c, port);
    chan_open(&c);
    const struct channel_outcome *o = send_one("+15550000013", "Hi", "there");
    assert_int_equal(o->result, CHANNEL_RETRY);
    assert_int_equal(o->status, 0);
}

/* rate 2/s: a burst of 6 leaves as 2 at once, then one every 500 ms. */
static void test_rate_limit(void **state)
{
    (void)state;
    fake_start("");
    struct sms_config c;
    config_for(&c, fake_port);
    cfg_set(&c, "sms.rate", "2");
    chan_open(&c);
    int n = 6;
    for (int i = 0; i < n; i++) {
        char to[24];
        snprintf(to, sizeof(to), "+4915100001%03d", i);
        fixture(&FX[i], to, "Rate", "limited");
    }
    uint64_t t0 = clock_mono_ms();
    send_wait(n);
    uint64_t took = clock_mono_ms() - t0;
    for (int i = 0; i < n; i++) {
        assert_int_equal(W.calls[i].o.result, CHANNEL_OK);
    }
    if (took < 1900 || took > 6000) {
        fail_msg("6 messages at 2/s took %llu ms (want ~2000)", (unsigned long long)took);
    }
    assert_int_equal(record_load(), n);
    /* FIFO: they reach the provider in the order sent (the first two, the
     * burst, race each other on two connections), the 3rd on at least
     * ~450 ms after the one before */
    for (int i = 0; i < n; i++) {
        if (i >= 2) {
            assert_string_equal(param(rec[i], "To"), FX[i].to);
        }
        if (i >= 3) {
            double gap = jnum(rec[i], "ts_ms") - jnum(rec[i - 1], "ts_ms");
            if (gap < 400) {
                fail_msg("messages %d and %d only %.0f ms apart", i - 1, i, gap);
            }
        }
    }
    struct sms_stats st;
    sms_get_stats(chan, &st);
    assert_int_equal(st.rate_waits, 4);
    assert_int_equal(st.ok, 6);
    assert_int_equal(st.queued, 0);
}

static void test_queue_full_retries(void **state)
{
    (void)state;
    fake_start("");
    struct sms_config c;
    config_for(&c, fake_port);
    cfg_set(&c, "sms.rate", "1");
    cfg_set(&c, "sms.queue_max", "2");
    chan_open(&c);
    for (int i = 0; i < 4; i++) {
        char to[24];
        snprintf(to, sizeof(to), "+4915100002%03d", i);
        fixture(&FX[i], to, "Queue", "full");
    }
    send_wait(4);
    assert_int_equal(W.calls[0].o.result, CHANNEL_OK);
    assert_int_equal(W.calls[1].o.result, CHANNEL_OK);
    assert_int_equal(W.calls[2].o.result, CHANNEL_OK);
    assert_int_equal(W.calls[3].o.result, CHANNEL_RETRY);
    assert_string_equal(W.calls[3].o.reason, "rate_limited:local");
    assert_true(W.calls[3].o.retry_after_ms >= 1000);
    assert_int_equal(record_load(), 3);
    struct sms_stats st;
    sms_get_stats(chan, &st);
    assert_int_equal(st.queue_full, 1);
}

static void test_service_and_callback(void **state)
{
    (void)state;
    fake_start("");
    struct sms_config c;
    config_for(&c, fake_port);
    cfg_set(&c, "sms.from", "");
    cfg_set(&c, "sms.messaging_service_sid", "MG0123456789abcdef0123456789abcdef");
    cfg_set(&c, "sms.status_callback_url", "https://hub.example.com/sms/status");
    chan_open(&c);
    fixture(&FX[0], "+4915100003000", "T\xc3\xbcr offen \xe2\x80\x94 \xf0\x9f\x9a\xaa", NULL);
    FX[0].n.ttl_s = 86400 * 7;
    send_wait(1);
    assert_int_equal(W.calls[0].o.result, CHANNEL_OK);
    assert_string_equal(W.calls[0].o.reason, "ucs2 segments=1");
    assert_int_equal(record_load(), 1);
    assert_null(param(rec[0], "From"));
    assert_string_equal(param(rec[0], "MessagingServiceSid"), "MG0123456789abcdef0123456789abcdef");
    assert_string_equal(param(rec[0], "StatusCallback"), "https://hub.example.com/sms/status");
    assert_string_equal(param(rec[0], "ValidityPeriod"), "36000");
    assert_string_equal(param(rec[0], "Body"), "T\xc3\xbcr offen \xe2\x80\x94 \xf0\x9f\x9a\xaa");
}

static int cb_count;

static void count_cb(void *ctx, const struct channel_outcome *o)
{
    (void)ctx;
    (void)o;
    cb_count++;
}

/* destroy with messages posted, queued and deferred: no callback, nothing
 * leaked (valgrind/ASan check the latter). */
static void test_destroy_with_pending(void **state)
{
    (void)state;
    fake_start("to * delay 5000\n");
    struct sms_config c;
    config_for(&c, fake_port);
    cfg_set(&c, "sms.rate", "1");
    chan_open(&c);
    cb_count = 0;
    for (int i = 0; i < 4; i++) {
        char to[24];
        snprintf(to, sizeof(to), "+4915100004%03d", i);
        fixture(&FX[i], to, "Pending", "x");
        assert_int_equal(sms_channel.send(chan, &FX[i].d, count_cb, NULL), 0);
    }
    fixture(&FX[4], "bad", "Pending", "x"); /* a deferred drop */
    assert_int_equal(sms_channel.send(chan, &FX[4].d, count_cb, NULL), 0);
    assert_true(loop_timer_add(loop, 300, on_settle, NULL) != 0);
    assert_int_equal(loop_run(loop), 0);
    assert_int_equal(cb_count, 1); /* the drop; the rest are pending */
    struct sms_stats st;
    sms_get_stats(chan, &st);
    assert_int_equal(st.queued, 3);
    sms_channel.destroy(chan);
    chan = NULL;
    assert_true(loop_timer_add(loop, 100, on_settle, NULL) != 0);
    assert_int_equal(loop_run(loop), 0);
    assert_int_equal(cb_count, 1);
}

/* --- main -------------------------------------------------------------------------------- */

/* --- delivery status polling across a restart ---------------------------------------- */

struct poll_sink {
    store_t *store;
    char statuses[8][24];
    int n;
    int watch_puts, watch_forgets;
};
static struct poll_sink PS;

static void on_poll_status(void *arg, const char *channel, const char *id, const char *status,
                           int code)
{
    struct poll_sink *p = arg;
    (void)code;
    assert_string_equal(channel, "sms");
    assert_int_equal(store_provider_status(p->store, channel, id, status, code, clock_wall_ms()) >=
                         0,
                     1);
    if (p->n < 8) {
        snprintf(p->statuses[p->n++], sizeof(p->statuses[0]), "%s", status);
    }
    loop_stop(loop);
}

static void on_poll_watch(void *arg, const char *channel, const char *id, const char *account,
                          int64_t until_ms)
{
    struct poll_sink *p = arg;
    assert_int_equal(store_provider_watch(p->store, channel, id, account, until_ms), 0);
    if (until_ms > 0) {
        p->watch_puts++;
    } else {
        p->watch_forgets++;
    }
}

static void poll_open(const struct sms_config *c, const char *db)
{
    char err[256] = "";
    assert_int_equal(store_open(db, DB_SYNC_NORMAL, &PS.store, err, sizeof(err)), 0);
    struct channel_env env = {.loop = loop,
                              .status = on_poll_status,
                              .status_arg = &PS,
                              .watch = on_poll_watch,
                              .watch_arg = &PS};
    int rc = sms_channel.init(&env, c, &chan, err, sizeof(err));
    if (rc != 0) {
        fail_msg("init: %s: %s", tdg_strerror(rc), err);
    }
}

/* The hub stops (channel destroyed, store committed and closed). */
static void poll_close(void)
{
    sms_channel.destroy(chan);
    chan = NULL;
    assert_int_equal(store_commit(PS.store), 0);
    store_close(PS.store);
    PS.store = NULL;
}

/* Run the loop until the status sink has n statuses (or fail after GUARD_MS). */
static void poll_wait(int n)
{
    memset(&W, 0, sizeof(W));
    uint64_t guard = loop_timer_add(loop, GUARD_MS, on_guard, &W);
    while (PS.n < n && !W.timed_out) {
        assert_int_equal(loop_run(loop), 0);
    }
    loop_timer_cancel(loop, guard);
    if (W.timed_out) {
        dump_log();
        fail_msg("only %d of %d statuses in %d ms", PS.n, n, GUARD_MS);
    }
}

struct resumed {
    int n;
    char sid[SID_LEN_MAX];
    char account[64];
    char last[24];
    int rc;
};

static void on_resume_row(void *arg, const char *id, const char *account, int64_t until_ms,
                          const char *last)
{
    struct resumed *r = arg;
    r->n++;
    snprintf(r->sid, sizeof(r->sid), "%s", id);
    snprintf(r->account, sizeof(r->account), "%s", account);
    snprintf(r->last, sizeof(r->last), "%s", last);
    assert_true(until_ms > clock_wall_ms());
    r->rc = sms_watch_resume(chan, account, id, until_ms, last);
}

/* A message being polled when the hub stops is polled again after the
 * restart, from the durable record, to its final status; the record is
 * then gone. */
static void test_poll_survives_restart(void **state)
{
    (void)state;
    fake_start("to * flow sent,delivered\n");
    char db[300];
    snprintf(db, sizeof(db), "%s/poll.db", dir);
    unlink(db);
    memset(&PS, 0, sizeof(PS));
    struct sms_config c;
    config_for(&c, fake_port);
    cfg_set(&c, "sms.status_poll", "100ms");
    poll_open(&c, db);

    const struct channel_outcome *o = send_one("+4915112345678", "t", "polled");
    assert_int_equal(o->result, CHANNEL_OK);
    char msg_sid[CHANNEL_PROVIDER_ID_MAX];
    snprintf(msg_sid, sizeof(msg_sid), "%s", o->provider_id);
    assert_int_equal(PS.watch_puts, 1);
    poll_wait(1); /* the first poll: "sent" */
    assert_string_equal(PS.statuses[0], "sent");
    poll_close();

    /* the restarted hub: a new store handle and a new channel */
    memset(&PS, 0, sizeof(PS));
    poll_open(&c, db);
    struct resumed r = {0};
    assert_int_equal(store_provider_watch_each(PS.store, "sms", clock_wall_ms(), on_resume_row,
                                               &r),
                     1);
    assert_int_equal(r.n, 1);
    assert_string_equal(r.sid, msg_sid);
    assert_string_equal(r.account, sid);
    assert_string_equal(r.last, "sent");
    assert_int_equal(r.rc, 0);
    struct sms_stats st;
    sms_get_stats(chan, &st);
    assert_int_equal(st.watching, 1);
    poll_wait(1);
    assert_string_equal(PS.statuses[0], "delivered"); /* "sent" is not reported again */
    sms_get_stats(chan, &st);
    assert_int_equal(st.polled_final, 1);
    assert_int_equal(st.watching, 0);
    assert_int_equal(PS.watch_forgets, 1);
    char got[24];
    int ec = -1;
    assert_int_equal(store_provider_status_get(PS.store, "sms", msg_sid, got, sizeof(got), &ec,
                                               NULL),
                     1);
    assert_string_equal(got, "delivered");
    poll_close();

    /* nothing is left to resume */
    memset(&PS, 0, sizeof(PS));
    poll_open(&c, db);
    memset(&r, 0, sizeof(r));
    assert_int_equal(store_provider_watch_each(PS.store, "sms", clock_wall_ms(), on_resume_row,
                                               &r),
                     0);
    /* stale records: an unknown account and a passed deadline */
    assert_int_equal(sms_watch_resume(chan, "ACnobody", msg_sid, clock_wall_ms() + 60000, ""),
                     -ENOENT);
    assert_int_equal(sms_watch_resume(chan, sid, msg_sid, clock_wall_ms() - 1, ""), -ETIMEDOUT);
    assert_int_equal(sms_watch_resume(chan, sid, "SM/../x", clock_wall_ms() + 60000, ""),
                     TDG_EINVAL_INPUT);
    /* a record past its deadline is pruned, not resumed */
    assert_int_equal(store_provider_watch(PS.store, "sms", "SMold", sid, clock_wall_ms() - 1), 0);
    assert_int_equal(store_provider_watch_each(PS.store, "sms", clock_wall_ms(), on_resume_row,
                                               &r),
                     0);
    poll_close();
}

/* Status callbacks and inbound posts signed by the dispatch layer's backup
 * sender (another account, another token) are accepted by the primary once
 * the backup is linked (sms_link_backup), and refused before. */
static void test_backup_callback_signature(void **state)
{
    (void)state;
    struct sms_config pc, bc;
    config_for(&pc, 1);
    cfg_set(&pc, "sms.status_callback_url", "https://hub.example/v1/sms/status");
    config_for(&bc, 2);
    cfg_set(&bc, "sms.account_sid", "AC00000000000000000000000000000b0b");
    cfg_set(&bc, "sms.auth_token_file", "");
    cfg_set(&bc, "sms.auth_token", "backuptoken0123456789");
    cfg_set(&bc, "sms.status_callback_url", "https://hub.example/v1/sms/status");
    struct channel_env env = {.loop = loop, .status = NULL};
    char err[256] = "";
    void *backup = NULL;
    assert_int_equal(sms_channel.init(&env, &pc, &chan, err, sizeof(err)), 0);
    assert_int_equal(sms_channel.init(&env, &bc, &backup, err, sizeof(err)), 0);

    static const char body[] = "AccountSid=AC00000000000000000000000000000b0b&MessageSid=SM1"
                               "&MessageStatus=delivered";
    struct sms_form f;
    assert_int_equal(sms_form_parse(body, strlen(body), &f), 0);
    char sig[64], why[128];
    assert_int_equal(sms_signature("backuptoken0123456789", "https://hub.example/v1/sms/status",
                                   &f, sig, sizeof(sig)),
                     0);
    assert_int_equal(sms_status_callback(chan, body, strlen(body), sig, why, sizeof(why)), 403);
    sms_link_backup(chan, backup);
    assert_int_equal(sms_status_callback(chan, body, strlen(body), sig, why, sizeof(why)), 200);
    /* the primary's token does not sign for the backup's account */
    char tok[129];
    assert_int_equal(channel_read_secret(token_path, tok, sizeof(tok)), 0);
    char bad[64];
    assert_int_equal(sms_signature(tok, "https://hub.example/v1/sms/status", &f, bad,
                                   sizeof(bad)),
                     0);
    assert_int_equal(sms_status_callback(chan, body, strlen(body), bad, why, sizeof(why)), 403);
    sms_link_backup(chan, NULL);
    sms_channel.destroy(backup);
}

static int group_setup(void **state)
{
    (void)state;
    if (harness_mkdtemp(dir, sizeof(dir), "smssend") < 0 ||
        harness_gen_certs(gen_certs, dir, NULL) < 0) {
        return -1;
    }
    /* fresh random credentials for this run; the token only in a file */
    memcpy(sid, "AC", 2);
    random_hex(sid + 2, 16);
    char tok[40];
    random_hex(tok, 16);
    snprintf(token_path, sizeof(token_path), "%s/token", dir);
    int fd = open(token_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || dprintf(fd, "%s\n", tok) < 0) {
        return -1;
    }
    close(fd);
    snprintf(record_path, sizeof(record_path), "%s/record.jsonl", dir);
    snprintf(script_path, sizeof(script_path), "%s/script.txt", dir);
    snprintf(port_path, sizeof(port_path), "%s/port", dir);
    snprintf(log_path, sizeof(log_path), "%s/fake.log", dir);
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
    if (argc != 4) {
        fprintf(stderr, "usage: %s PYTHON FAKE_SMS_PY GEN_CERTS_SH\n", argv[0]);
        return 2;
    }
    python = argv[1];
    fake_py = argv[2];
    gen_certs = argv[3];
    signal(SIGPIPE, SIG_IGN);
    log_set_level(getenv("TIDINGS_TEST_DEBUG") ? LOG_LVL_DEBUG : LOG_LVL_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ok, setup, teardown),
        cmocka_unit_test_setup_teardown(test_segments_agree, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_number_never_sent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_21211_invalid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_21614_not_mobile, setup, teardown),
        cmocka_unit_test_setup_teardown(test_21610_opted_out, setup, teardown),
        cmocka_unit_test_setup_teardown(test_500_retry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_503_retry_after, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_4xx_drop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_20429_pauses_sender, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_token, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dropped_connection_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_slow_answer_times_out, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_refused_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rate_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_full_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_service_and_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_destroy_with_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_poll_survives_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backup_callback_signature, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
