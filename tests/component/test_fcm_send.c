/*
 * test_fcm_send.c - the FCM channel's send path against the real fake FCM
 * (tests/fakes/fake-fcm: TLS with ALPN h2 or http/1.1, the OAuth2 token
 * endpoint that verifies the RS256 assertion, the v1 send endpoint with
 * Google's error bodies), on a real Tidings loop.
 *
 * usage: test_fcm_send FAKE_FCM GEN_CERTS_SH FCM_GEN_ACCOUNT_SH
 *
 * Once per run: a temp dir with a test CA and server certificate
 * (gen-certs.sh) and a fresh RSA 2048 service-account key
 * (fcm_gen_account.sh). Per test: a fake started as a child process with
 * that test's script (port 0, port read from --port-file), a copy of the key
 * whose token_uri points at it, a fresh channel, and the fake stopped in
 * teardown. The child gets PR_SET_PDEATHSIG so it dies with us even if this
 * process crashes or ctest kills it on timeout.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <cjson/cJSON.h>

#include "config.h"
#include "harness.h"
#include "error.h"
#include "fcm.h"
#include "http.h"
#include "log.h"
#include "loop.h"

#define PROJECT "demo-tdg"
#define MAX_SENDS 256
#define GUARD_MS 30000

static const char *fake_bin;
static const char *gen_certs;
static const char *gen_account;
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
static char record_path[320], script_path[320], port_path[320], log_path[320], key_path[320];
static int64_t clock_offset_ms; /* the channel's clock = real time + this */
static int64_t clock_frozen_ms; /* or, when set, this (time stands still) */

static int64_t real_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t offset_clock(void *arg)
{
    (void)arg;
    return clock_frozen_ms ? clock_frozen_ms : real_now_ms() + clock_offset_ms;
}

/* A registration token, distinct per c: "<c>...:APA91b...". */
static void make_token(char *out, size_t cap, char c)
{
    snprintf(out, cap, "%c%c%c%c%c%c%c%c%c%c%c:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx", c, c, c, c, c,
             c, c, c, c, c, c);
}

/* --- the fake as a child process ---------------------------------------- */

static void dump_log(void)
{
    harness_dump_log(&fake);
}

/* The generated key with token_uri set to this fake's endpoint. */
static void write_key_for_port(int port)
{
    char src[320];
    snprintf(src, sizeof(src), "%s/sa/service-account.json", dir);
    FILE *f = fopen(src, "r");
    assert_non_null(f);
    static char buf[8192];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    cJSON *j = cJSON_Parse(buf);
    assert_non_null(j);
    char uri[128];
    snprintf(uri, sizeof(uri), "https://127.0.0.1:%d/token", port);
    cJSON_DeleteItemFromObject(j, "token_uri");
    cJSON_AddStringToObject(j, "token_uri", uri);
    char *out = cJSON_Print(j);
    snprintf(key_path, sizeof(key_path), "%s/sa-port.json", dir);
    f = fopen(key_path, "w");
    assert_non_null(f);
    fputs(out, f);
    fclose(f);
    cJSON_free(out);
    cJSON_Delete(j);
}

/* extra: NULL-terminated extra arguments for the fake. */
static void fake_start_args(const char *script, const char *account, const char *const *extra)
{
    snprintf(script_path, sizeof(script_path), "%s/rules.txt", dir);
    snprintf(port_path, sizeof(port_path), "%s/port", dir);
    snprintf(record_path, sizeof(record_path), "%s/record.jsonl", dir);
    snprintf(log_path, sizeof(log_path), "%s/fake.log", dir);
    unlink(port_path);
    unlink(record_path);
    FILE *f = fopen(script_path, "w");
    assert_non_null(f);
    fputs(script, f);
    fclose(f);

    char cert[300], key[300], sa[300];
    snprintf(cert, sizeof(cert), "%s/server.crt", dir);
    snprintf(key, sizeof(key), "%s/server.key", dir);
    snprintf(sa, sizeof(sa), "%s/%s/service-account.json", dir, account);
    const char *argv[32];
    int i = 0;
    argv[i++] = fake_bin;
    argv[i++] = "--listen";
    argv[i++] = "127.0.0.1:0";
    argv[i++] = "--cert";
    argv[i++] = cert;
    argv[i++] = "--key";
    argv[i++] = key;
    argv[i++] = "--service-account";
    argv[i++] = sa;
    argv[i++] = "--record";
    argv[i++] = record_path;
    argv[i++] = "--script";
    argv[i++] = script_path;
    argv[i++] = "--port-file";
    argv[i++] = port_path;
    for (; extra && *extra && i < 30; extra++) {
        argv[i++] = *extra;
    }
    argv[i] = NULL;
    char why[256];
    if (harness_start(&fake, "fake-fcm", argv, log_path, port_path, 10000, why, sizeof(why)) <
        0) {
        fail_msg("%s", why);
    }
    fake_port = fake.port;
    write_key_for_port(fake_port);
}

static void fake_start(const char *script)
{
    fake_start_args(script, "sa", NULL);
}

static void fake_stop(void)
{
    harness_stop(&fake);
}

/* --- the channel -------------------------------------------------------------- */

static void set_key(struct fcm_config *c, const char *k, const char *v)
{
    char err[CONFIG_ERR_MAX];
    int rc = config_set(fcm_channel.config, fcm_channel.config_n, c, k, v, err, sizeof(err));
    if (rc != 0) {
        fail_msg("config %s: %s", k, err);
    }
}

/* Send URL and key point at the fake on port; token_url comes from the key. */
static void config_for(struct fcm_config *c, int port)
{
    const struct channel_ops *ops = &fcm_channel;
    char err[CONFIG_ERR_MAX], v[512];
    assert_int_equal(config_defaults(ops->config, ops->config_n, c, err, sizeof(err)), 0);
    snprintf(v, sizeof(v), "https://127.0.0.1:%d", port);
    set_key(c, "fcm.send_url", v);
    set_key(c, "fcm.service_account_file", key_path);
    snprintf(v, sizeof(v), "%s/ca.crt", dir);
    set_key(c, "fcm.ca_file", v);
    set_key(c, "fcm.timeout", "10s");
}

static void chan_open(const struct fcm_config *c)
{
    struct channel_env env = {.loop = loop, .http = NULL};
    char err[256] = "";
    int rc = fcm_channel.init(&env, c, &chan, err, sizeof(err));
    if (rc != 0) {
        fail_msg("init: %s: %s", tdg_strerror(rc), err);
    }
    if (clock_offset_ms || clock_frozen_ms) {
        fcm_set_clock(chan, offset_clock, NULL);
    }
}

static void chan_open_default(void)
{
    struct fcm_config c;
    config_for(&c, fake_port);
    chan_open(&c);
}

static int setup(void **state)
{
    (void)state;
    chan = NULL;
    clock_offset_ms = 0;
    clock_frozen_ms = 0;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (chan) {
        fcm_channel.destroy(chan);
        chan = NULL;
    }
    fake_stop();
    return 0;
}

static struct fcm_stats stats(void)
{
    struct fcm_stats s;
    fcm_get_stats(chan, &s);
    return s;
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

static void run_for(uint64_t ms)
{
    assert_true(loop_timer_add(loop, ms, on_settle, NULL) != 0);
    assert_int_equal(loop_run(loop), 0);
}

struct notification_fixture {
    struct notification n;
    struct channel_device dev;
    struct channel_delivery d;
    char token[128];
    char id[32];
};

static void fixture(struct notification_fixture *f, char tokc, int i)
{
    memset(f, 0, sizeof(*f));
    make_token(f->token, sizeof(f->token), tokc);
    snprintf(f->id, sizeof(f->id), "test-%d", i);
    f->n.id = f->id;
    f->n.to = "user:alice";
    f->n.to_id = "alice";
    f->n.title = "Hello";
    f->n.body = "World";
    f->n.priority = PROTO_PRIO_HIGH;
    f->n.ttl_s = 600;
    f->dev.user_id = "alice";
    f->dev.platform = "android";
    f->dev.token = f->token;
    f->dev.app = PROJECT;
    f->d.attempt_id = (uint64_t)i + 1;
    f->d.n = &f->n;
    f->d.dev = &f->dev;
    f->d.now_ms = real_now_ms();
}

/* Send n deliveries and run the loop until all are done, then a little
 * longer to catch a second callback. */
static void send_wait(struct waiter *w, struct notification_fixture *fx, int n)
{
    memset(w, 0, sizeof(*w));
    w->expected = n;
    for (int i = 0; i < n; i++) {
        w->calls[i].w = w;
        w->in_send = true;
        int rc = fcm_channel.send(chan, &fx[i].d, on_done, &w->calls[i]);
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
    run_for(50);
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

static void expect(const struct channel_outcome *o, enum channel_result r, int status,
                   const char *reason, int action)
{
    if (o->result != r || o->status != status || strcmp(o->reason, reason) != 0 ||
        o->device_action != action) {
        dump_log();
        fail_msg("got result=%d status=%d reason='%s' action=%d; want %d %d '%s' %d",
                 (int)o->result, o->status, o->reason, o->device_action, (int)r, status, reason,
                 action);
    }
}

/* --- the record ---------------------------------------------------------------- */

struct rec_summary {
    int lines, tokens, sends;
    int token_ok, send_auth_ok;
    int conns; /* distinct connections that carried sends */
    char last_send_body[8192];
    char last_name[200];
    char last_proto[16];
    char last_claims[1024];
};

static void read_record(struct rec_summary *s)
{
    memset(s, 0, sizeof(*s));
    FILE *f = fopen(record_path, "r");
    if (!f) {
        return;
    }
    static char line[65536];
    double seen[64];
    int nseen = 0;
    while (fgets(line, sizeof(line), f)) {
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        const cJSON *ep = cJSON_GetObjectItemCaseSensitive(j, "endpoint");
        const cJSON *auth = cJSON_GetObjectItemCaseSensitive(j, "auth");
        const cJSON *conn = cJSON_GetObjectItemCaseSensitive(j, "conn");
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "status");
        assert_true(cJSON_IsString(ep) && cJSON_IsString(auth) && cJSON_IsNumber(conn));
        s->lines++;
        snprintf(s->last_proto, sizeof(s->last_proto), "%s",
                 cJSON_GetObjectItemCaseSensitive(j, "proto")->valuestring);
        if (strcmp(ep->valuestring, "token") == 0) {
            s->tokens++;
            s->token_ok += strcmp(auth->valuestring, "ok") == 0 && st->valueint == 200;
            snprintf(s->last_claims, sizeof(s->last_claims), "%s",
                     cJSON_GetObjectItemCaseSensitive(j, "claims")->valuestring);
        } else if (strcmp(ep->valuestring, "send") == 0) {
            s->sends++;
            s->send_auth_ok += strcmp(auth->valuestring, "ok") == 0;
            snprintf(s->last_send_body, sizeof(s->last_send_body), "%s",
                     cJSON_GetObjectItemCaseSensitive(j, "body")->valuestring);
            snprintf(s->last_name, sizeof(s->last_name), "%s",
                     cJSON_GetObjectItemCaseSensitive(j, "name")->valuestring);
            bool dup = false;
            for (int i = 0; i < nseen; i++) {
                dup = dup || seen[i] == conn->valuedouble;
            }
            if (!dup && nseen < 64) {
                seen[nseen++] = conn->valuedouble;
            }
        }
        cJSON_Delete(j);
    }
    fclose(f);
    s->conns = nseen;
}

/* --- tests ---------------------------------------------------------------------- */

static void test_ok_with_name(void **state)
{
    (void)state;
    fake_start("");
    chan_open_default();
    struct channel_outcome o;
    send_one('a', &o);
    expect(&o, CHANNEL_OK, 200, "", CHANNEL_DEVICE_NONE);

    struct rec_summary r;
    read_record(&r);
    assert_int_equal(r.tokens, 1);
    assert_int_equal(r.token_ok, 1);
    assert_int_equal(r.sends, 1);
    assert_int_equal(r.send_auth_ok, 1);
    assert_string_equal(o.provider_id, r.last_name);
    assert_true(strncmp(o.provider_id, "projects/" PROJECT "/messages/0:", 22) == 0);
    assert_string_equal(r.last_proto, "h2");
    /* What format built is what the fake checked and took. */
    assert_non_null(
        strstr(r.last_send_body, "\"android\":{\"priority\":\"HIGH\",\"ttl\":\"600s\"}"));
    assert_non_null(strstr(r.last_send_body, "\"tidings_id\":\"test-0\""));
    /* The assertion Google would see: our iss, scope and aud = token_uri. */
    assert_non_null(
        strstr(r.last_claims, "\"iss\":\"tidings-fcm@" PROJECT ".iam.gserviceaccount.com\""));
    assert_non_null(strstr(r.last_claims, "firebase.messaging"));
    char aud[80];
    snprintf(aud, sizeof(aud), "\"aud\":\"https://127.0.0.1:%d/token\"", fake_port);
    assert_non_null(strstr(r.last_claims, aud));

    /* A second send reuses the cached token. */
    send_one('a', &o);
    expect(&o, CHANNEL_OK, 200, "", CHANNEL_DEVICE_NONE);
    read_record(&r);
    assert_int_equal(r.tokens, 1);
    assert_true(stats().token_fetches == 1);
}

static void test_unregistered_disables(void **state)
{
    (void)state;
    char tok[128], script[256];
    make_token(tok, sizeof(tok), 'b');
    snprintf(script, sizeof(script), "token %s status 404 error UNREGISTERED\n", tok);
    fake_start(script);
    chan_open_default();
    struct channel_outcome o;
    send_one('b', &o);
    expect(&o, CHANNEL_DROP, 404, "UNREGISTERED", CHANNEL_DEVICE_DISABLE);
    send_one('c', &o); /* another device is fine */
    expect(&o, CHANNEL_OK, 200, "", CHANNEL_DEVICE_NONE);
}

static void test_bare_not_found_keeps_device(void **state)
{
    (void)state;
    fake_start("token * status 404 error none\n");
    chan_open_default();
    struct channel_outcome o;
    send_one('d', &o);
    expect(&o, CHANNEL_DROP, 404, "NOT_FOUND", CHANNEL_DEVICE_NONE);
}

static void test_invalid_argument_drops(void **state)
{
    (void)state;
    fake_start("token * status 400 message Invalid value at 'message.data[0].value'\n");
    chan_open_default();
    struct channel_outcome o;
    send_one('e', &o);
    expect(&o, CHANNEL_DROP, 400, "Invalid value at 'message.data[0].value'", CHANNEL_DEVICE_NONE);
}

static void test_sender_id_mismatch_flags(void **state)
{
    (void)state;
    fake_start("token * status 403 error SENDER_ID_MISMATCH\n");
    chan_open_default();
    struct channel_outcome o;
    send_one('f', &o);
    expect(&o, CHANNEL_DROP, 403, "SENDER_ID_MISMATCH", CHANNEL_DEVICE_FLAG);
}

static void test_quota_exceeded_retry_after(void **state)
{
    (void)state;
    fake_start("token * status 429 error QUOTA_EXCEEDED retry-after 7 times 1\n"
               "token * status 429 retry-after-date 30 times 1\n");
    chan_open_default();
    struct channel_outcome o;
    send_one('g', &o);
    expect(&o, CHANNEL_RETRY, 429, "QUOTA_EXCEEDED", CHANNEL_DEVICE_NONE);
    assert_true(o.retry_after_ms == 7000);
    send_one('g', &o); /* the same as an HTTP-date, 30 s ahead */
    expect(&o, CHANNEL_RETRY, 429, "QUOTA_EXCEEDED", CHANNEL_DEVICE_NONE);
    assert_true(o.retry_after_ms >= 28000 && o.retry_after_ms <= 30000);
    send_one('g', &o);
    expect(&o, CHANNEL_OK, 200, "", CHANNEL_DEVICE_NONE);
}

static void test_unavailable_retry(void **state)
{
    (void)state;
    fake_start("token * status 503 retry-after 2 times 1\n");
    chan_open_default();
    struct channel_outcome o;
    send_one('h', &o);
    expect(&o, CHANNEL_RETRY, 503, "UNAVAILABLE", CHANNEL_DEVICE_NONE);
    assert_true(o.retry_after_ms == 2000);
    send_one('h', &o);
    expect(&o, CHANNEL_OK, 200, "", CHANNEL_DEVICE_NONE);
}

static void test_internal_retry(void **state)
{
    (void)state;
    fake_start("token * status 500 times 1\n");
    chan_open_default();
    struct channel_outcome o;
    send_one('i', &o);
    expect(&o, CHANNEL_RETRY, 500, "INTERNAL", CHANNEL_DEVICE_NONE);
    assert_true(o.retry_after_ms == 0);
    send_one('i', &o);
    expect(&o, CHANNEL_OK, 200, "", CHANNEL_DEVICE_NONE);
}

static void test_third_party_auth_drops(void **state)
{
    (void)state;
    fake_start("token * status 401 error THIRD_PARTY_AUTH_ERROR\n");
    chan_open_default();
    struct channel_outcome o;
    send_one('j', &o);
    expect(&o, CHANNEL_DROP, 401, "THIRD_PARTY_AUTH_ERROR", CHANNEL_DEVICE_NONE);
    /* Not our access token's fault: no refresh. */
    assert_true(stats().token_fetches == 1);
    assert_true(stats().token_unauth_refreshes == 0);
}

/* A port nothing listens on: bind, read the port, close. */
static int dead_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(a);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &l), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static void test_token_endpoint_down(void **state)
{
    (void)state;
    fake_start("");
    struct fcm_config c;
    config_for(&c, fake_port);
    char url[80];
    snprintf(url, sizeof(url), "https://127.0.0.1:%d/token", dead_port());
    set_key(&c, "fcm.token_url", url);
    clock_frozen_ms = real_now_ms(); /* the hold-off never ends on its own */
    chan_open(&c);
    for (int i = 0; i < 5; i++) {
        fixture(&FX[i], 'k', i);
    }
    send_wait(&W, FX, 5);
    for (int i = 0; i < 5; i++) {
        struct channel_outcome *o = &W.calls[i].o;
        assert_int_equal(o->result, CHANNEL_RETRY);
        assert_int_equal(o->status, 0);
        if (strncmp(o->reason, "token endpoint: ", 16) != 0) {
            fail_msg("reason: %s", o->reason);
        }
        assert_true(o->retry_after_ms >= 1 && o->retry_after_ms <= 1000);
    }
    assert_true(stats().token_fetches == 1);
    /* While held off: RETRY at once, no new fetch. */
    send_wait(&W, FX, 5);
    assert_int_equal(W.calls[4].o.result, CHANNEL_RETRY);
    assert_true(stats().token_fetches == 1);
    struct rec_summary r;
    read_record(&r);
    assert_int_equal(r.lines, 0); /* nothing reached FCM */
}

static void test_token_endpoint_error_then_recovers(void **state)
{
    (void)state;
    fake_start("oauth status 503 times 1\n");
    clock_offset_ms = 1;
    chan_open_default();
    struct channel_outcome o;
    send_one('l', &o);
    assert_int_equal(o.result, CHANNEL_RETRY);
    if (!strstr(o.reason, "token endpoint: HTTP 503 temporarily_unavailable")) {
        fail_msg("reason: %s", o.reason);
    }
    clock_offset_ms += 1100; /* past the first hold-off (at most 1 s) */
    send_one('l', &o);
    expect(&o, CHANNEL_OK, 200, "", CHANNEL_DEVICE_NONE);
    assert_true(stats().token_fetches == 2);
}

/* The fake knows another service account: the assertion's signature fails. */
static void test_bad_assertion_retries(void **state)
{
    (void)state;
    fake_start_args("", "other", NULL);
    /* The key for our channel is ours (sa), pointed at this port. */
    chan_open_default();
    struct channel_outcome o;
    send_one('m', &o);
    assert_int_equal(o.result, CHANNEL_RETRY);
    if (!strstr(o.reason, "invalid_grant")) {
        fail_msg("reason: %s", o.reason);
    }
    struct rec_summary r;
    read_record(&r);
    assert_int_equal(r.tokens, 1);
    assert_int_equal(r.token_ok, 0);
    assert_int_equal(r.sends, 0);
}

/* The fake forgets its tokens after 3 s while telling us 3599: the 401s for
 * the dead token cause exactly one refresh, then sends work again. */
static void test_expired_access_token_one_refresh(void **state)
{
    (void)state;
    static const char *const extra[] = {"--token-ttl", "3", "--expires-in", "3599", NULL};
    fake_start_args("", "sa", extra);
    chan_open_default();
    struct channel_outcome o;
    send_one('n', &o);
    expect(&o, CHANNEL_OK, 200, "", CHANNEL_DEVICE_NONE);
    harness_sleep_ms(3100);
    for (int i = 0; i < 20; i++) {
        fixture(&FX[i], 'n', i);
    }
    send_wait(&W, FX, 20);
    for (int i = 0; i < 20; i++) {
        expect(&W.calls[i].o, CHANNEL_RETRY, 401, "UNAUTHENTICATED", CHANNEL_DEVICE_NONE);
    }
    run_for(300); /* the refresh lands */
    struct fcm_stats s = stats();
    assert_true(s.token_fetches == 2);
    assert_true(s.token_unauth_refreshes == 1);
    send_one('n', &o);
    expect(&o, CHANNEL_OK, 200, "", CHANNEL_DEVICE_NONE);
    struct rec_summary r;
    read_record(&r);
    assert_int_equal(r.tokens, 2);
}

static void test_200_concurrent_one_token_fetch(void **state)
{
    (void)state;
    fake_start("");
    chan_open_default();
    for (int i = 0; i < 200; i++) {
        fixture(&FX[i], "0123456789abcdefghijklmnopqrstuv"[i % 32], i);
    }
    send_wait(&W, FX, 200);
    for (int i = 0; i < 200; i++) {
        if (W.calls[i].o.result != CHANNEL_OK) {
            fail_msg("send %d: %d %s", i, W.calls[i].o.status, W.calls[i].o.reason);
        }
    }
    struct rec_summary r;
    read_record(&r);
    assert_int_equal(r.tokens, 1);
    assert_int_equal(r.sends, 200);
    assert_int_equal(r.send_auth_ok, 200);
    assert_true(r.conns >= 1 && r.conns <= 2); /* streams, not a connection each */
    printf("200 sends, 1 token fetch, %d connection(s)\n", r.conns);
    assert_true(stats().token_fetches == 1);
}

/* Google accepts HTTP/1.1 too: nothing in the channel needs h2. */
static void test_http1_server(void **state)
{
    (void)state;
    static const char *const extra[] = {"--alpn", "http/1.1", NULL};
    fake_start_args("", "sa", extra);
    chan_open_default();
    for (int i = 0; i < 10; i++) {
        fixture(&FX[i], 'p', i);
    }
    send_wait(&W, FX, 10);
    for (int i = 0; i < 10; i++) {
        expect(&W.calls[i].o, CHANNEL_OK, 200, "", CHANNEL_DEVICE_NONE);
    }
    struct rec_summary r;
    read_record(&r);
    assert_string_equal(r.last_proto, "http/1.1");
    assert_int_equal(r.sends, 10);
}

static void test_rate_bucket_paces(void **state)
{
    (void)state;
    fake_start("");
    struct fcm_config c;
    config_for(&c, fake_port);
    set_key(&c, "fcm.rate", "1200"); /* 20/s */
    set_key(&c, "fcm.burst", "2");
    chan_open(&c);
    for (int i = 0; i < 12; i++) {
        fixture(&FX[i], 'q', i);
    }
    int64_t t0 = real_now_ms();
    send_wait(&W, FX, 12);
    int64_t took = real_now_ms() - t0;
    for (int i = 0; i < 12; i++) {
        expect(&W.calls[i].o, CHANNEL_OK, 200, "", CHANNEL_DEVICE_NONE);
    }
    /* 2 at once, then 10 more at 50 ms each: at least ~500 ms. */
    printf("12 sends at 20/s burst 2 took %lld ms\n", (long long)took);
    assert_true(took >= 450);
    assert_true(stats().rate_waits > 0);
}

static void test_dropped_connection_retries(void **state)
{
    (void)state;
    fake_start("token * drop times 1\n");
    chan_open_default();
    struct channel_outcome o;
    send_one('r', &o);
    /* curl may replay a request whose connection died before any answer. */
    assert_true(o.result == CHANNEL_RETRY || o.result == CHANNEL_OK);
    printf("dropped connection -> %s status=%d reason=%s\n",
           o.result == CHANNEL_OK ? "ok" : "retry", o.status, o.reason);
    send_one('r', &o);
    expect(&o, CHANNEL_OK, 200, "", CHANNEL_DEVICE_NONE);
}

static void test_goaway_retries(void **state)
{
    (void)state;
    fake_start("token * goaway times 1\n");
    chan_open_default();
    struct channel_outcome o;
    send_one('s', &o);
    assert_true(o.result == CHANNEL_RETRY || o.result == CHANNEL_OK);
    printf("GOAWAY -> %s status=%d reason=%s\n", o.result == CHANNEL_OK ? "ok" : "retry", o.status,
           o.reason);
    send_one('s', &o);
    expect(&o, CHANNEL_OK, 200, "", CHANNEL_DEVICE_NONE);
}

static void test_timeout_retries(void **state)
{
    (void)state;
    fake_start("token * delay 3000 times 1\n");
    struct fcm_config c;
    config_for(&c, fake_port);
    set_key(&c, "fcm.timeout", "500ms");
    chan_open(&c);
    struct channel_outcome o;
    send_one('t', &o);
    assert_int_equal(o.result, CHANNEL_RETRY);
    assert_non_null(strstr(o.reason, "imed out"));
    assert_int_equal(o.device_action, CHANNEL_DEVICE_NONE);
    /* The rule is spent: the next request is answered at once. */
    send_one('t', &o);
    expect(&o, CHANNEL_OK, 200, "", CHANNEL_DEVICE_NONE);
}

/*
 * An answer the fake starts and then breaks off (script "cut", see
 * docs/fakes.md): the channel must report a retry - never ok (a 200's body
 * carries the message name), never a permanent drop, never a device action
 * from half an answer - and the next request must succeed, over a new
 * connection when the old one was closed.
 */
static void cut_case_args(const char *script, char tokc, bool new_connection,
                          const char *const *extra)
{
    fake_start_args(script, "sa", extra);
    chan_open_default();
    struct channel_outcome o;
    send_one(tokc, &o);
    printf("%s  -> result=%d status=%d reason=%s\n", script, (int)o.result, o.status, o.reason);
    if (o.result != CHANNEL_RETRY || o.device_action != CHANNEL_DEVICE_NONE) {
        dump_log();
        fail_msg("cut answer (%s): result %d (want retry %d) status %d reason '%s' action %d",
                 script, (int)o.result, (int)CHANNEL_RETRY, o.status, o.reason,
                 (int)o.device_action);
    }
    send_one(tokc, &o);
    expect(&o, CHANNEL_OK, 200, "", CHANNEL_DEVICE_NONE);
    struct rec_summary r;
    read_record(&r);
    assert_int_equal(r.sends, 2); /* the cut request was not sent twice */
    if (new_connection) {
        assert_int_equal(r.conns, 2);
    }
}

static void cut_case(const char *script, char tokc, bool new_connection)
{
    cut_case_args(script, tokc, new_connection, NULL);
}

static void test_cut_200_after_headers_retries(void **state)
{
    (void)state;
    cut_case("token * cut headers times 1\n", 'u', true);
}

static void test_cut_200_body_retries(void **state)
{
    (void)state;
    /* Half of {"name": ...}: not a success. */
    cut_case("token * status 200 cut body times 1\n", 'v', true);
}

static void test_cut_404_body_retries(void **state)
{
    (void)state;
    /* Half of a 404 UNREGISTERED: the token must not be disabled. */
    cut_case("token * status 404 cut body times 1\n", 'w', true);
}

static void test_cut_http1_body_retries(void **state)
{
    (void)state;
    /* Over HTTP/1.1 (libcurl): the head and half the body, then the close. */
    static const char *const extra[] = {"--alpn", "http/1.1", NULL};
    cut_case_args("token * status 200 cut body times 1\n", 'z', true, extra);
}

static void test_cut_reset_retries(void **state)
{
    (void)state;
    /* RST_STREAM INTERNAL_ERROR after the 200 HEADERS; the connection stays. */
    cut_case("token * status 200 cut reset times 1\n", 'x', false);
}

static void test_cut_goaway_error_retries(void **state)
{
    (void)state;
    /* GOAWAY INTERNAL_ERROR (last-stream-id = this stream) after the HEADERS. */
    cut_case("token * status 404 cut goaway times 1\n", 'y', true);
}

static void test_wrong_project_drops(void **state)
{
    (void)state;
    fake_start("");
    struct fcm_config c;
    config_for(&c, fake_port);
    set_key(&c, "fcm.project_id", "someone-else");
    chan_open(&c);
    struct channel_outcome o;
    fixture(&FX[0], 'u', 0);
    FX[0].dev.app = NULL;
    send_wait(&W, FX, 1);
    o = W.calls[0].o;
    expect(&o, CHANNEL_DROP, 403, "PERMISSION_DENIED", CHANNEL_DEVICE_NONE);
}

static void test_payload_too_large_never_sent(void **state)
{
    (void)state;
    fake_start("");
    chan_open_default();
    static char big[4200];
    memset(big, 'x', sizeof(big) - 1);
    fixture(&FX[0], 'v', 0);
    FX[0].n.body = big;
    send_wait(&W, FX, 1); /* asserts done did not run inside send */
    expect(&W.calls[0].o, CHANNEL_DROP, 0, "PayloadTooLarge", CHANNEL_DEVICE_NONE);
    struct rec_summary r;
    read_record(&r);
    assert_int_equal(r.lines, 0); /* not even a token fetch */
}

static int count_done;
static void on_count(void *ctx, const struct channel_outcome *o)
{
    (void)ctx;
    (void)o;
    count_done++;
}

/* Sends waiting for a slow token, one in flight: destroy calls no done. */
static void test_destroy_with_waiting_and_inflight(void **state)
{
    (void)state;
    fake_start("oauth delay 5000\n");
    struct fcm_config c;
    config_for(&c, fake_port);
    set_key(&c, "fcm.queue", "4");
    chan_open(&c);
    count_done = 0;
    for (int i = 0; i < 5; i++) {
        fixture(&FX[i], 'w', i);
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(fcm_channel.send(chan, &FX[i].d, on_count, NULL), 0);
    }
    assert_int_equal(fcm_channel.send(chan, &FX[4].d, on_count, NULL), -EBUSY);
    assert_true(stats().queued_now == 4);
    run_for(300);
    assert_int_equal(count_done, 0);
    fcm_channel.destroy(chan);
    chan = NULL;
    run_for(50);
    assert_int_equal(count_done, 0);
}

/* --- main ------------------------------------------------------------------------ */

static int group_setup(void **state)
{
    (void)state;
    if (harness_mkdtemp(dir, sizeof(dir), "fcm") < 0 || harness_gen_certs(gen_certs, dir, NULL) < 0) {
        return -1;
    }
    char sa[300], other[300], log[300];
    snprintf(sa, sizeof(sa), "%s/sa", dir);
    snprintf(other, sizeof(other), "%s/other", dir);
    snprintf(log, sizeof(log), "%s/gen.log", dir);
    const char *gen_sa[] = {gen_account, sa, PROJECT, NULL};
    const char *gen_other[] = {gen_account, other, PROJECT, NULL};
    if (harness_run(gen_sa, log) != 0 || harness_run(gen_other, log) != 0) {
        fprintf(stderr, "key generation failed (see %s)\n", log);
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
    if (argc != 4) {
        fprintf(stderr, "usage: %s FAKE_FCM GEN_CERTS_SH FCM_GEN_ACCOUNT_SH\n", argv[0]);
        return 2;
    }
    fake_bin = argv[1];
    gen_certs = argv[2];
    gen_account = argv[3];
    signal(SIGPIPE, SIG_IGN);
    log_set_level(getenv("TIDINGS_TEST_DEBUG") ? LOG_LVL_DEBUG : LOG_LVL_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ok_with_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unregistered_disables, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bare_not_found_keeps_device, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_argument_drops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_id_mismatch_flags, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quota_exceeded_retry_after, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unavailable_retry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_internal_retry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_third_party_auth_drops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_endpoint_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_endpoint_error_then_recovers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_assertion_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expired_access_token_one_refresh, setup, teardown),
        cmocka_unit_test_setup_teardown(test_200_concurrent_one_token_fetch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http1_server, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rate_bucket_paces, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dropped_connection_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_goaway_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cut_200_after_headers_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cut_200_body_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cut_404_body_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cut_http1_body_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cut_reset_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cut_goaway_error_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_project_drops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_payload_too_large_never_sent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_destroy_with_waiting_and_inflight, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
