/* test_dispatch.c - the dispatcher with scripted fake channels on a real
 * loop: token bucket backpressure and wake-up, concurrency bound, breaker
 * opening on 5xx, failover to the backup, fail-fast when all are open
 * (outcome never from inside send), half-open probe, closing, metrics. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channels/apns.h"
#include "channels/email.h"
#include "channels/fcm.h"
#include "channels/sms.h"
#include "dispatch.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"

/* --- a fake channel: answers each send after a 0 ms timer ------------------ */

struct fake_call {
    struct fake *f;
    channel_done_cb done;
    void *ctx;
    uint64_t timer;
};

struct fake {
    loop_t *loop;
    int status;       /* answer: 200 ok, 503 retry, 400 drop, 0 transport error */
    unsigned sends;   /* requests started */
    unsigned pending; /* not answered yet */
    bool hold;        /* do not answer until released */
    const char *reason; /* retry reason instead of the default one */
    struct fake_call *held[64];
    unsigned nheld;
    int destroyed;
};

static void answer(struct fake_call *c)
{
    struct channel_outcome o = {.status = c->f->status};
    if (c->f->status == 200) {
        o.result = CHANNEL_OK;
    } else if (c->f->status == 400) {
        o.result = CHANNEL_DROP;
        snprintf(o.reason, sizeof(o.reason), "BadDeviceToken");
    } else {
        o.result = CHANNEL_RETRY;
        snprintf(o.reason, sizeof(o.reason), "%s",
                 c->f->reason ? c->f->reason
                              : (c->f->status ? "ServiceUnavailable" : "connect"));
    }
    c->f->pending--;
    channel_done_cb done = c->done;
    void *ctx = c->ctx;
    free(c);
    done(ctx, &o);
}

static void on_fake_timer(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    answer(arg);
}

static int fake_send(void *state, const struct channel_delivery *d, channel_done_cb done, void *ctx)
{
    (void)d;
    struct fake *f = state;
    struct fake_call *c = calloc(1, sizeof(*c));
    c->f = f;
    c->done = done;
    c->ctx = ctx;
    f->sends++;
    f->pending++;
    if (f->hold) {
        f->held[f->nheld++] = c;
        return 0;
    }
    c->timer = loop_timer_add(f->loop, 0, on_fake_timer, c);
    return 0;
}

static void fake_destroy(void *state)
{
    struct fake *f = state;
    f->destroyed++;
}

static const struct channel_ops fake_ops = {
    .name = "apns", .send = fake_send, .destroy = fake_destroy};

/* --- the fanout's side ---------------------------------------------------- */

struct got {
    int n;
    bool in_send; /* set around dispatch_channel_ops.send */
    bool called_inside;
    struct channel_outcome last;
};

static struct got got;

static void on_outcome(void *ctx, const struct channel_outcome *o)
{
    (void)ctx;
    if (got.in_send) {
        got.called_inside = true;
    }
    got.n++;
    got.last = *o;
}

static int send_one(struct dispatch_chan *ch)
{
    static const struct channel_device dev = {.token = "t", .platform = "ios"};
    struct channel_delivery cd = {.attempt_id = 1, .dev = &dev};
    got.in_send = true;
    int rc = dispatch_channel_ops.send(ch, &cd, on_outcome, NULL);
    got.in_send = false;
    return rc;
}

static void on_stop(loop_t *loop, uint64_t id, void *arg)
{
    (void)id;
    (void)arg;
    loop_stop(loop);
}

/* Run the loop for about ms (timers and the fakes' answers fire). */
static void run_for(loop_t *loop, uint64_t ms)
{
    loop_timer_add(loop, ms, on_stop, NULL);
    loop_run(loop);
}

static struct dispatch_config cfg(void)
{
    return (struct dispatch_config){
        .br_failures = 2, .br_window = 10, .br_ratio = 0, .br_open_ms = 60, .br_probes = 1};
}

static void test_rate_and_concurrency(void **state)
{
    (void)state;
    loop_t *loop = loop_create();
    dispatch_t *d = dispatch_create(loop, NULL);
    struct fake p = {.loop = loop, .status = 200};
    struct dispatch_config c = cfg();
    c.rate = 20; /* one token per 50 ms */
    c.burst = 2;
    struct dispatch_chan *ch = dispatch_add(d, "apns", &fake_ops, &p, NULL, &c);
    assert_non_null(ch);
    memset(&got, 0, sizeof(got));
    assert_int_equal(send_one(ch), 0);
    assert_int_equal(send_one(ch), 0);
    assert_int_equal(send_one(ch), -EBUSY); /* no token: backpressure, not an attempt */
    assert_int_equal(p.sends, 2);
    assert_int_equal(dispatch_inflight(d), 2);
    run_for(loop, 80); /* the answers, and a token is due */
    assert_int_equal(got.n, 2);
    assert_false(got.called_inside);
    assert_int_equal(dispatch_inflight(d), 0);
    assert_int_equal(send_one(ch), 0);
    run_for(loop, 5);
    dispatch_destroy(d);
    assert_int_equal(p.destroyed, 1);

    /* concurrency bound */
    d = dispatch_create(loop, NULL);
    struct fake q = {.loop = loop, .status = 200, .hold = true};
    c = cfg();
    c.concurrency = 2;
    ch = dispatch_add(d, "apns", &fake_ops, &q, NULL, &c);
    assert_int_equal(send_one(ch), 0);
    assert_int_equal(send_one(ch), 0);
    assert_int_equal(send_one(ch), -EBUSY);
    answer(q.held[0]);
    assert_int_equal(send_one(ch), 0);
    answer(q.held[1]);
    answer(q.held[2]);
    assert_int_equal(dispatch_inflight(d), 0);
    dispatch_destroy(d);
    loop_destroy(loop);
}

static void test_breaker_failover(void **state)
{
    (void)state;
    loop_t *loop = loop_create();
    metrics_t *m = metrics_create();
    dispatch_t *d = dispatch_create(loop, m);
    struct fake p = {.loop = loop, .status = 503}, b = {.loop = loop, .status = 200};
    struct dispatch_config c = cfg();
    struct dispatch_chan *ch = dispatch_add(d, "apns", &fake_ops, &p, &b, &c);
    memset(&got, 0, sizeof(got));
    /* two 503s in a row open the primary's breaker */
    assert_int_equal(send_one(ch), 0);
    assert_int_equal(send_one(ch), 0);
    run_for(loop, 5);
    assert_int_equal(got.n, 2);
    assert_int_equal(got.last.result, CHANNEL_RETRY);
    struct dispatch_provider_info pi[4];
    assert_int_equal(dispatch_providers(d, pi, 4), 2);
    assert_int_equal(pi[0].state, BREAKER_OPEN);
    assert_string_equal(pi[1].provider, "backup");
    assert_int_equal(pi[1].state, BREAKER_CLOSED);
    /* failover: the backup takes the sends */
    assert_int_equal(send_one(ch), 0);
    run_for(loop, 5);
    assert_int_equal(b.sends, 1);
    assert_int_equal(p.sends, 2);
    assert_int_equal(got.last.result, CHANNEL_OK);
    /* 4xx answers are about a device: they never open a breaker */
    b.status = 400;
    for (int i = 0; i < 5; i++) {
        assert_int_equal(send_one(ch), 0);
    }
    run_for(loop, 5);
    dispatch_providers(d, pi, 4);
    assert_int_equal(pi[1].state, BREAKER_CLOSED);
    /* the backup fails too: both open -> fail fast, never inside send */
    b.status = 0;
    assert_int_equal(send_one(ch), 0);
    assert_int_equal(send_one(ch), 0);
    run_for(loop, 5);
    dispatch_providers(d, pi, 4);
    assert_int_equal(pi[1].state, BREAKER_OPEN);
    unsigned before = p.sends + b.sends;
    got.called_inside = false;
    int n0 = got.n;
    assert_int_equal(send_one(ch), 0);
    assert_int_equal(got.n, n0); /* deferred */
    run_for(loop, 2);
    assert_int_equal(got.n, n0 + 1);
    assert_false(got.called_inside);
    assert_int_equal(p.sends + b.sends, before); /* nothing sent */
    assert_int_equal(got.last.result, CHANNEL_RETRY);
    assert_int_equal(got.last.status, 0);
    assert_true(got.last.retry_after_ms >= 1 && got.last.retry_after_ms <= 60);
    assert_non_null(strstr(got.last.reason, "circuit open"));
    /* after open_ms: half-open, one probe to the primary, which recovered */
    p.status = 200;
    run_for(loop, 70);
    p.hold = true;
    assert_int_equal(send_one(ch), 0);
    assert_int_equal(p.nheld, 1);
    dispatch_providers(d, pi, 4);
    assert_int_equal(pi[0].state, BREAKER_HALF_OPEN);
    /* while the probe is out, the backup (half-open too, its probe free)
     * takes the next send; then both have probes out: -EBUSY */
    b.hold = true;
    b.status = 200;
    assert_int_equal(send_one(ch), 0);
    assert_int_equal(send_one(ch), -EBUSY);
    answer(p.held[0]);
    dispatch_providers(d, pi, 4);
    assert_int_equal(pi[0].state, BREAKER_CLOSED);
    answer(b.held[0]);
    p.hold = false;
    assert_int_equal(send_one(ch), 0);
    run_for(loop, 5);
    assert_int_equal(got.last.result, CHANNEL_OK);
    size_t len;
    char *text = metrics_render(m, &len);
    assert_non_null(strstr(text, "tidings_hub_attempts_total{channel=\"apns\",provider=\"backup\","
                                 "result=\"ok\"} 2\n"));
    assert_non_null(strstr(text, "tidings_hub_breaker_opens_total{channel=\"apns\","
                                 "provider=\"primary\"} 1\n"));
    assert_non_null(strstr(text, "tidings_hub_breaker_rejected_total{channel=\"apns\"} 1\n"));
    assert_non_null(strstr(text, "tidings_hub_failures_total{channel=\"apns\","
                                 "reason=\"ServiceUnavailable\"} 2\n"));
    assert_non_null(
        strstr(text, "tidings_hub_breaker_state{channel=\"apns\",provider=\"primary\"} 0\n"));
    free(text);
    dispatch_destroy(d);
    metrics_destroy(m);
    loop_destroy(loop);
}

/* A 429 opens the breaker only when it is about the provider or account:
 * APNs TooManyRequests is about one device token (it backs off alone), FCM
 * QUOTA_EXCEEDED and SMS 20429 are the project's / sender's quota. */
static void test_429_per_device(void **state)
{
    (void)state;
    static const struct {
        const char *channel, *reason;
        bool opens;
    } cases[] = {
        {"apns", "TooManyRequests", false},
        {"apns", "HTTP 429", true}, /* no APNs reason: not known to be per device */
        {"fcm", "QUOTA_EXCEEDED", true},
        {"sms", "rate_limited:20429", true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        loop_t *loop = loop_create();
        dispatch_t *d = dispatch_create(loop, NULL);
        struct fake p = {.loop = loop, .status = 429, .reason = cases[i].reason};
        struct dispatch_config c = cfg(); /* opens after 2 failures in a row */
        struct channel_ops ops = fake_ops;
        ops.name = cases[i].channel;
        struct dispatch_chan *ch = dispatch_add(d, cases[i].channel, &ops, &p, NULL, &c);
        assert_non_null(ch);
        memset(&got, 0, sizeof(got));
        for (int k = 0; k < 5; k++) {
            assert_int_equal(send_one(ch), 0);
            run_for(loop, 2);
        }
        struct dispatch_provider_info pi[2];
        assert_int_equal(dispatch_providers(d, pi, 2), 1);
        if (cases[i].opens) {
            assert_int_equal(pi[0].state, BREAKER_OPEN);
            assert_int_equal(p.sends, 2); /* the rest failed fast */
        } else {
            assert_int_equal(pi[0].state, BREAKER_CLOSED);
            assert_int_equal(p.sends, 5);
        }
        assert_int_equal(got.n, 5);
        assert_int_equal(got.last.result, CHANNEL_RETRY);
        dispatch_destroy(d);
        loop_destroy(loop);
    }
}

static const struct config_entry *find_key(const struct channel_ops *ops, const char *key)
{
    for (size_t i = 0; i < ops->config_n; i++) {
        if (strcmp(ops->config[i].key, key) == 0) {
            return &ops->config[i];
        }
    }
    fail_msg("no key %s in channel %s", key, ops->name);
    return NULL;
}

static void test_backup_settings(void **state)
{
    (void)state;
    /* a channel config of two strings and an int */
    struct cc {
        char url[64];
        char key[64];
        int64_t n;
    };
    static const struct config_entry table[] = {
        {"apns.url", CONFIG_STRING, "https://primary", offsetof(struct cc, url), 64, "url", NULL, 0,
         0},
        {"apns.key_file", CONFIG_STRING, "", offsetof(struct cc, key), 64, "key", NULL, 0, 0},
        {"apns.connections", CONFIG_INT, "2", offsetof(struct cc, n), sizeof(int64_t), "n", NULL,
         1, 9},
    };
    struct channel_ops ops = {
        .name = "apns", .config = table, .config_n = 3, .config_size = sizeof(struct cc)};
    struct config_entry out[3];
    char *keys = NULL;
    assert_int_equal(dispatch_backup_table(&ops, 1000, out, &keys), 0);
    assert_string_equal(out[0].key, "apns.backup.url");
    assert_string_equal(out[2].key, "apns.backup.connections");
    assert_int_equal(out[1].offset, 1000 + offsetof(struct cc, key));
    free(keys);
    struct config_entry e[DISPATCH_CONFIG_N];
    assert_int_equal(dispatch_config_table("sms", 64, e, &keys), 0);
    assert_string_equal(e[0].key, "sms.engine.rate");
    assert_string_equal(e[DISPATCH_CONFIG_N - 1].key, "sms.backup.enabled");
    free(keys);

    struct cc prim = {"https://primary", "secret", 5}, bk;
    char err[256];
    /* nothing set: no backup */
    assert_int_equal(config_defaults(table, 3, &bk, err, sizeof(err)), 0);
    assert_int_equal(dispatch_backup_resolve(&ops, &prim, &bk, false), 0);
    /* enabled alone: the primary's transport and tuning, never its
     * credential (the key file) */
    assert_int_equal(dispatch_backup_resolve(&ops, &prim, &bk, true), 1);
    assert_string_equal(bk.url, "https://primary");
    assert_string_equal(bk.key, "");
    assert_int_equal(bk.n, 5);
    /* one key set: enabled, the rest inherited but the credential */
    assert_int_equal(config_defaults(table, 3, &bk, err, sizeof(err)), 0);
    snprintf(bk.url, sizeof(bk.url), "https://backup");
    assert_int_equal(dispatch_backup_resolve(&ops, &prim, &bk, false), 1);
    assert_string_equal(bk.url, "https://backup");
    assert_string_equal(bk.key, "");
    assert_int_equal(bk.n, 5);
    /* its own credential stays its own */
    assert_int_equal(config_defaults(table, 3, &bk, err, sizeof(err)), 0);
    snprintf(bk.key, sizeof(bk.key), "backup-secret");
    assert_int_equal(dispatch_backup_resolve(&ops, &prim, &bk, false), 1);
    assert_string_equal(bk.key, "backup-secret");
    assert_string_equal(bk.url, "https://primary");
}

/* Every key of every real channel is classified (a new key must be
 * decided on: inherit or never), and the credentials of each are never
 * inherited. The help of a backup credential key says so. */
static void test_backup_key_classes(void **state)
{
    (void)state;
    const struct channel_ops *chans[] = {&apns_channel, &fcm_channel, &sms_channel,
                                         &email_channel};
    for (size_t c = 0; c < 4; c++) {
        for (size_t i = 0; i < chans[c]->config_n; i++) {
            const char *k = chans[c]->config[i].key;
            if (dispatch_backup_inherits(k) < 0) {
                fail_msg("channel key %s: not classified for backups (hub/dispatch.c)", k);
            }
        }
    }
    const char *never[] = {"apns.key_file", "apns.key_id", "apns.team_id", "apns.cert_file",
                           "apns.cert_key_file", "apns.cert_password_file", "apns.topics",
                           "apns.tenants_dir", "fcm.service_account_file", "fcm.project_id",
                           "fcm.tenants_dir", "sms.account_sid", "sms.auth_token",
                           "sms.auth_token_file", "sms.from", "sms.messaging_service_sid",
                           "sms.tenants_dir", "email.username", "email.password",
                           "email.password_file"};
    for (size_t i = 0; i < sizeof(never) / sizeof(never[0]); i++) {
        if (dispatch_backup_inherits(never[i]) != 0) {
            fail_msg("%s must never pass to a backup", never[i]);
        }
    }
    const char *inherit[] = {"apns.url", "apns.timeout", "apns.ca_file", "apns.connections",
                             "fcm.timeout", "sms.timeout", "sms.api_url", "email.timeout",
                             "email.smtp_url"};
    for (size_t i = 0; i < sizeof(inherit) / sizeof(inherit[0]); i++) {
        assert_int_equal(dispatch_backup_inherits(inherit[i]), 1);
    }
    assert_int_equal(dispatch_backup_inherits("apns.no_such_key"), -1);
}

/* The real APNs table: a certificate-based primary with tenants, a
 * key-based backup that names only its URL and key. The backup gets the
 * primary's transport settings, but no certificate, topics or tenants
 * (which made its init fail: "cert_file and key_file"). */
static void test_backup_apns_auth_kinds(void **state)
{
    (void)state;
    const struct channel_ops *ops = &apns_channel;
    char *prim = calloc(1, ops->config_size), *bk = calloc(1, ops->config_size);
    assert_non_null(prim);
    assert_non_null(bk);
    char err[256];
    assert_int_equal(config_defaults(ops->config, ops->config_n, prim, err, sizeof(err)), 0);
    assert_int_equal(config_defaults(ops->config, ops->config_n, bk, err, sizeof(err)), 0);
    const struct config_entry *e;
#define SETSTR(base, k, v)                                                                         \
    do {                                                                                           \
        e = find_key(ops, k);                                                                      \
        snprintf((base) + e->offset, e->size, "%s", v);                                            \
    } while (0)
    SETSTR(prim, "apns.cert_file", "/etc/tidings/apns.crt");
    SETSTR(prim, "apns.cert_key_file", "/etc/tidings/apns.key");
    SETSTR(prim, "apns.cert_password_file", "/etc/tidings/apns.pass");
    SETSTR(prim, "apns.topics", "com.example.a");
    SETSTR(prim, "apns.tenants_dir", "/etc/tidings/apns.d");
    SETSTR(prim, "apns.ca_file", "/etc/tidings/ca.crt");
    SETSTR(prim, "apns.topic", "com.example.a");
    e = find_key(ops, "apns.timeout");
    assert_int_equal(e->type, CONFIG_DURATION);
    int64_t timeout = 12345;
    memcpy(prim + e->offset, &timeout, sizeof(timeout));
    SETSTR(bk, "apns.url", "https://relay.example.net");
    SETSTR(bk, "apns.key_file", "/etc/tidings/AuthKey_K.p8");
    SETSTR(bk, "apns.key_id", "K");
    SETSTR(bk, "apns.team_id", "T");
    assert_int_equal(dispatch_backup_resolve(ops, prim, bk, false), 1);
    assert_string_equal(bk + find_key(ops, "apns.cert_file")->offset, "");
    assert_string_equal(bk + find_key(ops, "apns.cert_key_file")->offset, "");
    assert_string_equal(bk + find_key(ops, "apns.cert_password_file")->offset, "");
    assert_string_equal(bk + find_key(ops, "apns.topics")->offset, "");
    assert_string_equal(bk + find_key(ops, "apns.tenants_dir")->offset, "");
    assert_string_equal(bk + find_key(ops, "apns.key_file")->offset, "/etc/tidings/AuthKey_K.p8");
    assert_string_equal(bk + find_key(ops, "apns.url")->offset, "https://relay.example.net");
    assert_string_equal(bk + find_key(ops, "apns.ca_file")->offset, "/etc/tidings/ca.crt");
    assert_string_equal(bk + find_key(ops, "apns.topic")->offset, "com.example.a");
    int64_t tmo = 0;
    memcpy(&tmo, bk + find_key(ops, "apns.timeout")->offset, sizeof(tmo));
    assert_int_equal(tmo, 12345);
#undef SETSTR
    free(prim);
    free(bk);
}

int main(void)
{
    log_set_level(LOG_LVL_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rate_and_concurrency),
        cmocka_unit_test(test_breaker_failover),
        cmocka_unit_test(test_429_per_device),
        cmocka_unit_test(test_backup_settings),
        cmocka_unit_test(test_backup_key_classes),
        cmocka_unit_test(test_backup_apns_auth_kinds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
