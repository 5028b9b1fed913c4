/* test_sched.c - the scheduler (hub/scheduler.c) on its durable timer store:
 * order, past-due timers firing at once, fallback steps on an injected
 * clock, cancellation, and timers surviving a close and reopen (restart);
 * and the fanout's fallback steps driven through the scheduler with the same
 * injected clock (fanout_opts.clock), with fake channels. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "error.h"
#include "fanout.h"
#include "loop.h"
#include "pii.h"
#include "policy.h"
#include "proto.h"
#include "scheduler.h"
#include "store.h"
#include "testchannel.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

struct fixture {
    char dir[64];
    char path[128];
    store_t *store;
    loop_t *loop;
    sched_t *sched;
    int64_t clock; /* injected wall clock */
    char fired[32][48];
    int nfired;
    int stop_after;
};

static int64_t fake_now(void *arg)
{
    return ((struct fixture *)arg)->clock;
}

static void on_fire(void *arg, const struct store_timer *t)
{
    struct fixture *f = arg;
    if (f->nfired < 32) {
        snprintf(f->fired[f->nfired], sizeof(f->fired[0]), "%s/%s/%s", t->kind,
                 t->notification_id, t->payload);
    }
    f->nfired++;
    if (f->stop_after && f->nfired >= f->stop_after) {
        loop_stop(f->loop);
    }
}

static void open_all(struct fixture *f, bool fake_clock)
{
    char err[256];
    assert_int_equal(store_open(f->path, DB_SYNC_NORMAL, &f->store, err, sizeof(err)), 0);
    f->loop = loop_create();
    assert_non_null(f->loop);
    struct sched_opts o = {.now = fake_clock ? fake_now : NULL, .clock_arg = f, .batch = 2};
    f->sched = sched_create(f->loop, f->store, on_fire, f, &o);
    assert_non_null(f->sched);
    assert_int_equal(sched_start(f->sched), 0);
}

static void close_all(struct fixture *f)
{
    sched_destroy(f->sched);
    store_close(f->store); /* commits */
    loop_destroy(f->loop);
    f->sched = NULL;
    f->store = NULL;
    f->loop = NULL;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/test_sched.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/hub.db", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    if (f->sched) {
        close_all(f);
    }
    static const char *const sfx[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        char p[160];
        snprintf(p, sizeof(p), "%s%s", f->path, sfx[i]);
        unlink(p);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

/* Timers added, the hub "restarts" (close, reopen), and they fire in due
 * order on the real clock; the ones already past due fire at once. */
static void test_restart(void **state)
{
    struct fixture *f = *state;
    open_all(f, false);
    int64_t now = clock_wall_ms();
    assert_int_equal(sched_add(f->sched, now + 300, "deliver_at", "n3", ""), 0);
    assert_int_equal(sched_add(f->sched, now + 150, "hold", "n2", "alice"), 0);
    assert_int_equal(sched_add(f->sched, now - 60000, "fallback", "n1", "bob\n1"), 0);
    assert_int_equal(sched_add(f->sched, now - 1000, "retry", "n0", ""), 0);
    assert_int_equal(sched_armed(f->sched), now - 60000);
    assert_int_equal(store_commit(f->store), 0);
    close_all(f); /* nothing fired: the loop never ran */

    open_all(f, false);
    int64_t next;
    assert_int_equal(store_timer_next(f->store, &next), 1);
    assert_int_equal(next, now - 60000);
    f->stop_after = 4;
    assert_int_equal(loop_run(f->loop), 0);
    assert_int_equal(f->nfired, 4);
    assert_string_equal(f->fired[0], "fallback/n1/bob\n1");
    assert_string_equal(f->fired[1], "retry/n0/");
    assert_string_equal(f->fired[2], "hold/n2/alice");
    assert_string_equal(f->fired[3], "deliver_at/n3/");
    assert_true(clock_wall_ms() >= now + 300);
    assert_int_equal(store_commit(f->store), 0);
    /* Fired rows are gone once committed; nothing is armed. */
    assert_int_equal(store_timer_next(f->store, &next), 0);
    assert_int_equal(sched_armed(f->sched), 0);
    close_all(f);
}

/* A fired timer that was not committed (the hub died in that iteration)
 * fires again after the restart: at least once. The "hub" is a child
 * process that fires and exits without committing. */
static void test_uncommitted_fire_repeats(void **state)
{
    struct fixture *f = *state;
    open_all(f, true);
    f->clock = 1000;
    assert_int_equal(sched_add(f->sched, 2000, "hold", "n1", "u"), 0);
    assert_int_equal(store_commit(f->store), 0);
    close_all(f);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        open_all(f, true);
        f->clock = 2000;
        _exit(sched_run_due(f->sched) == 1 && f->nfired == 1 ? 0 : 1); /* no commit */
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    open_all(f, true);
    f->clock = 2000;
    assert_int_equal(sched_run_due(f->sched), 1);
    assert_string_equal(f->fired[0], "hold/n1/u");
    assert_int_equal(store_commit(f->store), 0);
    close_all(f);
    open_all(f, true);
    assert_int_equal(sched_run_due(f->sched), 0);
    close_all(f);
}

/* Fallback steps on an injected clock: push at 0, sms after 10 min, email
 * after 30 min; a provider success cancels the rest. */
static void test_fallback_timing(void **state)
{
    struct fixture *f = *state;
    open_all(f, true);
    int64_t t0 = 1700000000000;
    f->clock = t0;
    assert_int_equal(sched_add(f->sched, t0 + 600000, "fallback", "nA", "alice\n1"), 0);
    assert_int_equal(sched_add(f->sched, t0 + 1800000, "fallback", "nA", "alice\n2"), 0);
    assert_int_equal(sched_add(f->sched, t0 + 600000, "fallback", "nB", "bob\n1"), 0);
    assert_int_equal(sched_armed(f->sched), t0 + 600000);
    f->clock = t0 + 599999;
    assert_int_equal(sched_run_due(f->sched), 0);
    f->clock = t0 + 600000;
    assert_int_equal(sched_run_due(f->sched), 2);
    assert_string_equal(f->fired[0], "fallback/nA/alice\n1");
    assert_string_equal(f->fired[1], "fallback/nB/bob\n1");
    assert_int_equal(sched_armed(f->sched), t0 + 1800000);
    /* Bob's sms succeeded: nothing left for him. Alice's email step fires. */
    assert_int_equal(sched_cancel(f->sched, "nB", "fallback", NULL), 0);
    int64_t left;
    assert_int_equal(store_timer_count_of(f->store, "nA", &left), 0);
    assert_int_equal(left, 1);
    /* A success of alice's meanwhile cancels her last step. */
    assert_int_equal(sched_cancel(f->sched, "nA", "fallback", "alice\n2"), 1);
    f->clock = t0 + 1800000;
    assert_int_equal(sched_run_due(f->sched), 0);
    assert_int_equal(f->nfired, 2);
    assert_int_equal(sched_armed(f->sched), 0);
    close_all(f);
}

/* More due timers than one batch: all fire, earliest first; a handler may
 * add a timer that is already due and it fires in the same run. */
static void add_more(void *arg, const struct store_timer *t)
{
    struct fixture *f = arg;
    on_fire(f, t);
    if (strcmp(t->notification_id, "x0") == 0) {
        assert_int_equal(sched_add(f->sched, f->clock - 1, "retry", "late", ""), 0);
    }
}

static void test_batches(void **state)
{
    struct fixture *f = *state;
    char err[256];
    assert_int_equal(store_open(f->path, DB_SYNC_NORMAL, &f->store, err, sizeof(err)), 0);
    f->loop = loop_create();
    struct sched_opts o = {.now = fake_now, .clock_arg = f, .batch = 2};
    f->sched = sched_create(f->loop, f->store, add_more, f, &o);
    f->clock = 10000;
    for (int i = 4; i >= 0; i--) {
        char id[8];
        snprintf(id, sizeof(id), "x%d", i);
        assert_int_equal(sched_add(f->sched, 5000 + i, "deliver_at", id, ""), 0);
    }
    assert_int_equal(sched_run_due(f->sched), 6);
    assert_string_equal(f->fired[0], "deliver_at/x0/");
    assert_string_equal(f->fired[4], "deliver_at/x4/");
    assert_string_equal(f->fired[5], "retry/late/");
    struct sched_stats st;
    sched_get_stats(f->sched, &st);
    assert_int_equal(st.fired, 6);
    assert_int_equal(st.added, 6);
    close_all(f);
}

/* --- the fanout's fallback through the scheduler, on the injected clock --- */

struct ffx {
    struct fixture *f;
    fanout_t *fanout;
    pii_t *pii;
    struct testchannel ch; /* holds each send until the test answers it */
};

static void fire_fanout(void *arg, const struct store_timer *t)
{
    struct ffx *x = arg;
    on_fire(x->f, t);
    assert_int_equal(fanout_timer(x->fanout, t), 0);
}

static void answer(struct ffx *x, int i, enum channel_result r)
{
    testchannel_answer(&x->ch, i, r, r == CHANNEL_OK ? 200 : 400,
                       r == CHANNEL_OK ? "" : "BadPriority");
}

/* One loop iteration as hub.c runs it: pull, commit, send. */
static void iterate(struct ffx *x)
{
    fanout_pull(x->fanout);
    assert_int_equal(store_commit(x->f->store), 0);
    fanout_flush(x->fanout);
}

static void add_notification(struct ffx *x, const char *json)
{
    struct notification n;
    struct proto_error e;
    assert_int_equal(proto_parse(json, strlen(json), &n, &e), 0);
    bool inserted = false;
    assert_int_equal(store_add_notification(x->f->store, &n, "gw1", json, strlen(json),
                                            x->f->clock, &inserted),
                     0);
    assert_true(inserted);
    notification_free(&n);
}

struct dec_find {
    const char *rule;
    bool found;
};

static void dec_cb(void *arg, const struct store_decision *d)
{
    struct dec_find *df = arg;
    char both[160];
    snprintf(both, sizeof(both), "%s|%s", d->action, d->rule);
    df->found = df->found || strcmp(both, df->rule) == 0;
}

static bool has_decision(store_t *s, const char *id, const char *rule)
{
    struct dec_find df = {rule, false};
    assert_true(store_decisions_of(s, id, dec_cb, &df) >= 0);
    return df.found;
}

static void state_is(store_t *s, const char *id, const char *want)
{
    char body[PROTO_MAX_WIRE + 1], state[16];
    int64_t exp;
    assert_int_equal(store_notification_get(s, id, body, sizeof(body), &exp, state, sizeof(state)),
                     1);
    assert_string_equal(state, want);
}

/* alice: an iOS device and a phone; fallback push, then SMS after 10 min.
 * n1's push fails (400): nothing more until 10 min after the push, then the
 * SMS ('fallback|fallback:sms'), delivered. n2's push succeeds: its SMS step
 * is cancelled ('allow|fallback_done') and nothing is sent at 10 min. */
static void test_fanout_fallback_clock(void **state)
{
    struct fixture *f = *state;
    struct ffx x = {.f = f};
    char err[256], keyfile[160];
    snprintf(keyfile, sizeof(keyfile), "%s/pii.keys", f->dir);
    assert_int_equal(pii_generate(keyfile, err, sizeof(err)), 0);
    assert_int_equal(pii_load(keyfile, &x.pii, err, sizeof(err)), 0);
    assert_int_equal(store_open(f->path, DB_SYNC_NORMAL, &f->store, err, sizeof(err)), 0);
    store_set_pii(f->store, x.pii);
    f->loop = loop_create();
    assert_non_null(f->loop);
    int64_t t0 = 1700000000000;
    f->clock = t0;
    struct sched_opts so = {.now = fake_now, .clock_arg = f};
    f->sched = sched_create(f->loop, f->store, fire_fanout, &x, &so);
    assert_non_null(f->sched);
    struct fanout_route routes[] = {
        {.platform = "ios", .proto_class = PROTO_CH_PUSH, .channel = "apns", .ops = &testchannel_ops,
         .state = &x.ch},
        {.platform = "sms", .proto_class = PROTO_CH_SMS, .channel = "sms", .ops = &testchannel_ops,
         .state = &x.ch},
    };
    struct fanout_opts fo = {.max_jobs = 16, .max_attempts = 1, .retry_base_ms = 100,
                             .retry_cap_ms = 1000, .clock = fake_now, .clock_arg = f};
    x.fanout = fanout_create(f->loop, f->store, &fo, routes, 2);
    assert_non_null(x.fanout);
    fanout_set_sched(x.fanout, f->sched);
    assert_int_equal(sched_start(f->sched), 0);

    struct store_user u = {.id = "alice", .tz = "UTC", .phone = "+4915112345678"};
    assert_int_equal(store_user_put(f->store, &u, STORE_USER_ALL, t0), 0);
    char token[65];
    memset(token, 'a', 64);
    token[64] = '\0';
    assert_int_equal(store_device_add(f->store, "alice", "ios", token, "com.example", "", t0, NULL),
                     0);
    const char *prefs = "{\"fallback\":[{\"channel\":\"push\"},"
                        "{\"channel\":\"sms\",\"after\":\"10m\"}]}";
    struct policy_error perr;
    assert_int_equal(store_pref_set(f->store, "alice", prefs, strlen(prefs), t0, &perr), 0);
    assert_int_equal(store_commit(f->store), 0);

    /* n1: push first, the SMS step waits for t0 + 10 min. */
    add_notification(&x, "{\"id\":\"n1\",\"to\":\"user:alice\",\"title\":\"one\"}");
    iterate(&x);
    assert_int_equal(x.ch.nsent, 1);
    assert_string_equal(x.ch.sent[0].platform, "ios");
    assert_int_equal(sched_armed(f->sched), t0 + 600000);
    answer(&x, 0, CHANNEL_DROP); /* the push failed: the SMS step still waits */
    iterate(&x);
    state_is(f->store, "n1", "scheduled");
    f->clock = t0 + 599999;
    assert_int_equal(sched_run_due(f->sched), 0);
    iterate(&x);
    assert_int_equal(x.ch.nsent, 1);
    f->clock = t0 + 600000;
    assert_int_equal(sched_run_due(f->sched), 1);
    iterate(&x);
    assert_int_equal(x.ch.nsent, 2);
    assert_string_equal(x.ch.sent[1].platform, "sms");
    assert_string_equal(x.ch.sent[1].id, "n1");
    assert_true(has_decision(f->store, "n1", "fallback|fallback:sms"));
    answer(&x, 1, CHANNEL_OK);
    iterate(&x);
    state_is(f->store, "n1", "delivered");

    /* n2: the push succeeds, the SMS step is cancelled. */
    int64_t t1 = f->clock;
    add_notification(&x, "{\"id\":\"n2\",\"to\":\"user:alice\",\"title\":\"two\"}");
    iterate(&x);
    assert_int_equal(x.ch.nsent, 3);
    assert_string_equal(x.ch.sent[2].platform, "ios");
    int64_t left = 0;
    assert_int_equal(store_timer_count_of(f->store, "n2", &left), 0);
    assert_int_equal(left, 1);
    f->clock = t1 + 1000;
    answer(&x, 2, CHANNEL_OK);
    iterate(&x);
    assert_int_equal(store_timer_count_of(f->store, "n2", &left), 0);
    assert_int_equal(left, 0);
    assert_true(has_decision(f->store, "n2", "allow|fallback_done"));
    state_is(f->store, "n2", "delivered");
    f->clock = t1 + 600000;
    assert_int_equal(sched_run_due(f->sched), 0);
    iterate(&x);
    assert_int_equal(x.ch.nsent, 3);

    fanout_destroy(x.fanout);
    close_all(f);
    pii_destroy(x.pii);
    unlink(keyfile);
}

/* --- fanout on a store with fake channels: set-up shared by the tests below */

struct bulk { /* a fake channel that keeps every send until the test answers */
    struct testchannel_sent *s;
    unsigned n, cap;
};

static int bulk_send(void *state, const struct channel_delivery *d, channel_done_cb done,
                     void *ctx)
{
    struct bulk *b = state;
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 64;
        b->s = realloc(b->s, b->cap * sizeof(*b->s));
        assert_non_null(b->s);
    }
    struct testchannel_sent *s = &b->s[b->n++];
    snprintf(s->platform, sizeof(s->platform), "%s", d->dev->token); /* token, for counting */
    snprintf(s->id, sizeof(s->id), "%s", d->n->id);
    s->done = done;
    s->ctx = ctx;
    return 0;
}

static const struct channel_ops bulk_ops = {.name = "fake", .send = bulk_send};

struct bfx {
    struct fixture *f;
    fanout_t *fanout;
    pii_t *pii;
    struct bulk b;
    char keyfile[160];
};

static void bulk_fire(void *arg, const struct store_timer *t)
{
    struct bfx *x = arg;
    on_fire(x->f, t);
    assert_int_equal(fanout_timer(x->fanout, t), 0);
}

static void bulk_open(struct bfx *x, struct fixture *f)
{
    x->f = f;
    char err[256];
    snprintf(x->keyfile, sizeof(x->keyfile), "%s/pii.keys", f->dir);
    assert_int_equal(pii_generate(x->keyfile, err, sizeof(err)), 0);
    assert_int_equal(pii_load(x->keyfile, &x->pii, err, sizeof(err)), 0);
    assert_int_equal(store_open(f->path, DB_SYNC_NORMAL, &f->store, err, sizeof(err)), 0);
    store_set_pii(f->store, x->pii);
    f->loop = loop_create();
    assert_non_null(f->loop);
    f->clock = 1700000000000;
    struct sched_opts so = {.now = fake_now, .clock_arg = f};
    f->sched = sched_create(f->loop, f->store, bulk_fire, x, &so);
    assert_non_null(f->sched);
    struct fanout_route routes[] = {
        {.platform = "ios", .proto_class = PROTO_CH_PUSH, .channel = "apns", .ops = &bulk_ops,
         .state = &x->b},
    };
    struct fanout_opts fo = {.max_jobs = 16, .max_attempts = 1, .retry_base_ms = 100,
                             .retry_cap_ms = 1000, .clock = fake_now, .clock_arg = f};
    x->fanout = fanout_create(f->loop, f->store, &fo, routes, 1);
    assert_non_null(x->fanout);
    fanout_set_sched(x->fanout, f->sched);
    assert_int_equal(sched_start(f->sched), 0);
}

static void bulk_close(struct bfx *x)
{
    fanout_destroy(x->fanout);
    close_all(x->f);
    pii_destroy(x->pii);
    unlink(x->keyfile);
    free(x->b.s);
}

static void bulk_iterate(struct bfx *x)
{
    fanout_pull(x->fanout);
    assert_int_equal(store_commit(x->f->store), 0);
    fanout_flush(x->fanout);
}

static void bulk_add(struct bfx *x, const char *json)
{
    struct ffx fx = {.f = x->f};
    add_notification(&fx, json);
}

static void bulk_answer(struct bfx *x, unsigned from, unsigned to)
{
    for (unsigned i = from; i < to; i++) {
        struct channel_outcome o = {.result = CHANNEL_OK, .status = 200};
        snprintf(o.provider_id, sizeof(o.provider_id), "p%u", i);
        x->b.s[i].done(x->b.s[i].ctx, &o);
    }
}

/* APNs 410 "Unregistered" with its timestamp (DESIGN, Channels): the device
 * is disabled unless it was registered again after that time. */
static void test_fanout_410_reregistered(void **state)
{
    struct fixture *f = *state;
    struct bfx x = {0};
    bulk_open(&x, f);
    int64_t t0 = f->clock;
    struct store_user u = {.id = "bob", .tz = "UTC"};
    assert_int_equal(store_user_put(f->store, &u, STORE_USER_ALL, t0), 0);
    int64_t dev = 0;
    assert_int_equal(store_device_add(f->store, "bob", "ios", "tok-bob", "com.example", "", t0,
                                      &dev),
                     0);
    assert_int_equal(store_commit(f->store), 0);

    /* n1 is sent; the app registers the token again at t0 + 5 s; then the
     * 410 arrives saying "invalid since t0 + 1 s": the device stays. */
    bulk_add(&x, "{\"id\":\"n1\",\"to\":\"user:bob\",\"title\":\"one\"}");
    bulk_iterate(&x);
    assert_int_equal(x.b.n, 1);
    assert_int_equal(store_device_add(f->store, "bob", "ios", "tok-bob", "com.example", "",
                                      t0 + 5000, NULL),
                     0);
    struct channel_outcome o = {.result = CHANNEL_DROP,
                                .status = 410,
                                .device_action = CHANNEL_DEVICE_DISABLE,
                                .token_invalid_since_ms = t0 + 1000};
    snprintf(o.reason, sizeof(o.reason), "Unregistered");
    x.b.s[0].done(x.b.s[0].ctx, &o);
    bulk_iterate(&x);
    struct store_device_info info;
    assert_int_equal(store_device_get(f->store, dev, &info), 1);
    assert_string_equal(info.state, "active");
    state_is(f->store, "n1", "failed");

    /* n2: a 410 whose timestamp is after the registration disables it. */
    bulk_add(&x, "{\"id\":\"n2\",\"to\":\"user:bob\",\"title\":\"two\"}");
    bulk_iterate(&x);
    assert_int_equal(x.b.n, 2);
    o.token_invalid_since_ms = t0 + 9000;
    x.b.s[1].done(x.b.s[1].ctx, &o);
    bulk_iterate(&x);
    assert_int_equal(store_device_get(f->store, dev, &info), 1);
    assert_string_equal(info.state, "disabled");
    assert_string_equal(info.state_reason, "Unregistered");
    bulk_close(&x);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(((const struct testchannel_sent *)a)->platform,
                  ((const struct testchannel_sent *)b)->platform);
}

/* A group of 2,500 members, each with a device: planned a page of 1000 at a
 * time through "group_page" timers; every member gets exactly one request;
 * 'scheduled' while a page is still to come; 'delivered' at the end. */
static void test_fanout_group_pages(void **state)
{
    struct fixture *f = *state;
    struct bfx x = {0};
    bulk_open(&x, f);
    int64_t t0 = f->clock;
    enum { MEMBERS = 2500 };
    assert_int_equal(store_group_add(f->store, "everyone", t0), 0);
    for (int i = 0; i < MEMBERS; i++) {
        struct store_user u = {.tz = "UTC"};
        snprintf(u.id, sizeof(u.id), "u%05d", i);
        char tok[32];
        snprintf(tok, sizeof(tok), "tok-%05d", i);
        assert_int_equal(store_user_put(f->store, &u, STORE_USER_ALL, t0), 0);
        assert_int_equal(store_device_add(f->store, u.id, "ios", tok, "com.example", "", t0, NULL),
                         0);
        assert_int_equal(store_group_member_add(f->store, "everyone", u.id, t0), 0);
    }
    assert_int_equal(store_commit(f->store), 0);

    bulk_add(&x, "{\"id\":\"g1\",\"to\":\"group:everyone\",\"title\":\"all\"}");
    bulk_iterate(&x);
    assert_int_equal(x.b.n, 1000);
    int64_t left = 0;
    assert_int_equal(store_timer_count_of(f->store, "g1", &left), 0);
    assert_int_equal(left, 1);
    /* page 1 answered before page 2 starts: the notification waits */
    bulk_answer(&x, 0, 1000);
    bulk_iterate(&x);
    state_is(f->store, "g1", "scheduled");
    assert_int_equal(sched_run_due(f->sched), 1);
    bulk_iterate(&x);
    assert_int_equal(x.b.n, 2000);
    /* page 3 starts while page 2 is in flight */
    assert_int_equal(sched_run_due(f->sched), 1);
    bulk_iterate(&x);
    assert_int_equal(x.b.n, MEMBERS);
    assert_int_equal(store_timer_count_of(f->store, "g1", &left), 0);
    assert_int_equal(left, 0);
    assert_int_equal(sched_run_due(f->sched), 0);
    state_is(f->store, "g1", "sending");
    bulk_answer(&x, 1000, MEMBERS);
    bulk_iterate(&x);
    state_is(f->store, "g1", "delivered");
    /* every member once */
    qsort(x.b.s, x.b.n, sizeof(*x.b.s), cmp_str);
    for (unsigned i = 0; i < x.b.n; i++) {
        char tok[32];
        snprintf(tok, sizeof(tok), "tok-%05u", i);
        assert_string_equal(x.b.s[i].platform, tok);
    }
    assert_int_equal(fanout_jobs(x.fanout), 0);
    bulk_close(&x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_uncommitted_fire_repeats, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fallback_timing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batches, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fanout_fallback_clock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fanout_410_reregistered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fanout_group_pages, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
