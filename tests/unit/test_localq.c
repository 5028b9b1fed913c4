/*
 * test_localq.c - the durable local delivery queue (agent/localq.h) on a real
 * outbox in a temporary directory, a real loop, an injected wall clock and
 * two scripted delivery backends ("fake", channel local; "fakedesk", channel
 * desktop) built with deliver_create_ops. A before-sleep hook commits the
 * outbox once per iteration, as the agent does.
 *
 * Covered: delivery only after the commit; duplicates; channels; hold until
 * the quiet window ends across a restart; retry with the backend's delay and
 * with backoff; unavailable; failure; give-up; expiry (also of a held row);
 * every rule (suppress, drop, channel off, critical bypass); a preference
 * change releasing held rows; receipts; scheduled deliver_at; the budget
 * (early pruning, then full); retention; a failed commit (uncommitted adds
 * gone, a lost outcome delivered again after a pause, then recorded).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "deliver.h"
#include "error.h"
#include "ingest.h"
#include "localq.h"
#include "loop.h"
#include "outbox.h"
#include "policy.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <sqlite3.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* snprintf that fails the test instead of truncating. */
#define FMT(buf, ...) assert_true(snprintf(buf, sizeof(buf), __VA_ARGS__) < (int)sizeof(buf))

/* --- the scripted backends -------------------------------------------------- */

#define SCRIPT_MAX 16
#define JOBS_MAX 64

struct fake_job {
    struct fake *f;
    uint64_t timer;
    deliver_done_cb done;
    void *arg;
    struct deliver_result res;
};

struct fake {
    loop_t *loop;
    deliver_receipt_cb on_receipt;
    void *receipt_arg;
    struct deliver_result script[SCRIPT_MAX]; /* results in order; then ok */
    size_t nscript, next;
    unsigned calls;
    char last_id[PROTO_ID_MAX + 1];
    struct fake_job jobs[JOBS_MAX];
};

static struct fake F[2]; /* [0] "fake" (local), [1] "fakedesk" (desktop) */

static int fake_init_n(int i, const struct deliver_env *env, void **state)
{
    F[i].loop = env->loop;
    F[i].on_receipt = env->on_receipt;
    F[i].receipt_arg = env->receipt_arg;
    *state = &F[i];
    return 0;
}

static int fake_init0(const struct deliver_env *env, void **state, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    return fake_init_n(0, env, state);
}

static int fake_init1(const struct deliver_env *env, void **state, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    return fake_init_n(1, env, state);
}

static void fake_report(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    struct fake_job *j = arg;
    j->timer = 0;
    j->done(j->arg, &j->res);
}

/* Report later from the loop, never from inside deliver (the contract). */
static int fake_deliver(void *state, const struct notification *n, deliver_done_cb done, void *arg)
{
    struct fake *f = state;
    struct fake_job *j = NULL;
    for (size_t i = 0; i < JOBS_MAX; i++) {
        if (!f->jobs[i].timer) {
            j = &f->jobs[i];
            break;
        }
    }
    if (!j) {
        return -ENOMEM;
    }
    f->calls++;
    snprintf(f->last_id, sizeof(f->last_id), "%s", n->id);
    j->f = f;
    j->done = done;
    j->arg = arg;
    memset(&j->res, 0, sizeof(j->res));
    if (f->next < f->nscript) {
        j->res = f->script[f->next++];
    }
    j->timer = loop_timer_add(f->loop, 0, fake_report, j);
    return 0;
}

static void fake_destroy(void *state)
{
    struct fake *f = state;
    for (size_t i = 0; i < JOBS_MAX; i++) {
        if (f->jobs[i].timer) {
            loop_timer_cancel(f->loop, f->jobs[i].timer);
            f->jobs[i].timer = 0;
        }
    }
}

static const struct deliver_ops fake_ops = {.name = "fake",
                                            .channel = PROTO_CH_LOCAL,
                                            .init = fake_init0,
                                            .deliver = fake_deliver,
                                            .destroy = fake_destroy};
static const struct deliver_ops fakedesk_ops = {.name = "fakedesk",
                                                .channel = PROTO_CH_DESKTOP,
                                                .init = fake_init1,
                                                .deliver = fake_deliver,
                                                .destroy = fake_destroy};

static void script(int i, enum deliver_status st, const char *reason, uint64_t retry_after)
{
    struct fake *f = &F[i];
    assert_true(f->nscript < SCRIPT_MAX);
    struct deliver_result *r = &f->script[f->nscript++];
    memset(r, 0, sizeof(*r));
    r->status = st;
    snprintf(r->reason, sizeof(r->reason), "%s", reason ? reason : "");
    r->retry_after_ms = retry_after;
    if (st == DELIVER_OK) {
        snprintf(r->ref, sizeof(r->ref), "ref-%zu", f->nscript);
    }
}

/* --- the harness ------------------------------------------------------------ */

static char dir[64], dbpath[128];
static loop_t *loop;
static outbox_t *ob;
static deliver_t *dl;
static localq_t *q;
static policy_snapshot_t *snap;
static int64_t fake_now;
static bool commit_on = true;
static bool (*stop_when)(void);
static struct localq_opts opts;

static int64_t fake_clock(void *arg)
{
    (void)arg;
    return fake_now;
}

static void hook(loop_t *l, void *arg)
{
    (void)arg;
    if (commit_on) {
        assert_int_equal(outbox_commit(ob), 0);
    }
    if (stop_when && stop_when()) {
        loop_stop(l);
    }
}

static void on_guard(loop_t *l, uint64_t id, void *arg)
{
    (void)id;
    *(bool *)arg = true;
    loop_stop(l);
}

/* Run the loop until pred() holds (checked before every sleep) or max_ms
 * passed. pred NULL: run for max_ms. Returns whether pred held. */
static bool run_until(bool (*pred)(void), uint64_t max_ms)
{
    bool timed_out = false;
    uint64_t g = loop_timer_add(loop, max_ms, on_guard, &timed_out);
    stop_when = pred;
    loop_run(loop);
    stop_when = NULL;
    if (!timed_out) {
        loop_timer_cancel(loop, g);
    }
    return pred ? pred() : true;
}

static void on_receipt(void *arg, const struct deliver_receipt *r)
{
    (void)arg;
    if (q) {
        localq_receipt(q, r);
    }
}

/* Open outbox, backends (n of fake, fakedesk) and queue with `opts`. */
static void open_all(size_t nbackends)
{
    char err[256];
    struct outbox_limits lim = {0};
    if (outbox_open(dbpath, DB_SYNC_NORMAL, &lim, &ob, err, sizeof(err)) < 0) {
        fail_msg("outbox_open: %s", err);
    }
    const struct deliver_ops *ops[2] = {&fake_ops, &fakedesk_ops};
    struct deliver_config dc;
    memset(&dc, 0, sizeof(dc));
    if (deliver_create_ops(loop, &dc, ops, nbackends, on_receipt, NULL, &dl, err, sizeof(err)) <
        0) {
        fail_msg("deliver_create_ops: %s", err);
    }
    opts.policy = snap;
    if (localq_create(loop, ob, dl, &opts, &q, err, sizeof(err)) < 0) {
        fail_msg("localq_create: %s", err);
    }
}

/* As the agent stops: backends, queue, outbox (commits what is open). */
static void close_all(void)
{
    deliver_destroy(dl);
    localq_destroy(q);
    outbox_close(ob);
    dl = NULL;
    q = NULL;
    ob = NULL;
}

static int64_t at(const char *rfc3339)
{
    int64_t ms = 0;
    assert_int_equal(proto_parse_rfc3339(rfc3339, &ms), 0);
    return ms;
}

static void set_snapshot(const char *json)
{
    policy_snapshot_free(snap);
    snap = NULL;
    if (json) {
        struct policy_error e;
        if (policy_snapshot_parse(json, strlen(json), &snap, &e) < 0) {
            fail_msg("snapshot: %s: %s", e.field, e.detail);
        }
    }
    if (q) {
        localq_set_policy(q, snap);
    }
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) < 0 ? -1 : 0;
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/tidings-localq-XXXXXX");
    if (!mkdtemp(dir)) {
        return -1;
    }
    snprintf(dbpath, sizeof(dbpath), "%s/outbox.db", dir);
    loop = loop_create();
    if (!loop || loop_before_sleep(loop, hook, NULL) < 0) {
        return -1;
    }
    memset(F, 0, sizeof(F));
    fake_now = at("2026-03-10T12:00:00Z");
    commit_on = true;
    snap = NULL;
    opts = (struct localq_opts){.max_rows = 1000,
                                .retention_ms = 7 * 86400000LL,
                                .retry_min_ms = 1000,
                                .retry_max_ms = 60000,
                                .retry_for_ms = 0,
                                .local_user = "alice",
                                .clock = fake_clock};
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (q || dl || ob) {
        close_all();
    }
    policy_snapshot_free(snap);
    snap = NULL;
    loop_destroy(loop);
    nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* Add a notification (JSON text) accepted at fake_now; ttl_s > 0 sets the
 * expiry from fake_now. Returns localq_add's result. */
static int add(const char *json, int64_t ttl_s)
{
    struct ingest_item it;
    struct ingest_result res;
    assert_int_equal(ingest_prepare("test", json, strlen(json), &it, &res, NULL), 0);
    it.created_ms = fake_now;
    it.expires_ms = ttl_s > 0 ? fake_now + ttl_s * 1000 : 0;
    int rc = localq_add(q, it.local ? "local" : "down", &it);
    ingest_item_free(&it);
    return rc;
}

/* The row of id on backend: a JSON object owned by *arr (free with
 * cJSON_Delete), or NULL when there is none. */
static const cJSON *row(const char *id, const char *backend, cJSON **arr)
{
    *arr = NULL;
    if (localq_find(q, id, arr) < 0) {
        return NULL;
    }
    const cJSON *r;
    cJSON_ArrayForEach(r, *arr)
    {
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(r, "backend");
        if (cJSON_IsString(b) && strcmp(b->valuestring, backend) == 0) {
            return r;
        }
    }
    return NULL;
}

static const char *field_str(const cJSON *r, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r, key);
    return cJSON_IsString(v) ? v->valuestring : "(null)";
}

static double field_num(const cJSON *r, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r, key);
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

/* Assert id on backend is in state with rule (NULL: don't care). */
static void expect_row(const char *id, const char *backend, const char *state, const char *rule)
{
    cJSON *arr;
    const cJSON *r = row(id, backend, &arr);
    if (!r) {
        cJSON_Delete(arr);
        fail_msg("no row %s/%s", id, backend);
    }
    assert_string_equal(field_str(r, "state"), state);
    if (rule) {
        assert_string_equal(field_str(r, "rule"), rule);
    }
    cJSON_Delete(arr);
}

static double row_num(const char *id, const char *backend, const char *key)
{
    cJSON *arr;
    const cJSON *r = row(id, backend, &arr);
    double v = r ? field_num(r, key) : -2;
    cJSON_Delete(arr);
    return v;
}

static const char *want_id, *want_backend, *want_state;
static bool row_in_state(void)
{
    cJSON *arr;
    const cJSON *r = row(want_id, want_backend, &arr);
    bool ok = r && strcmp(field_str(r, "state"), want_state) == 0;
    cJSON_Delete(arr);
    return ok;
}

static void wait_state(const char *id, const char *backend, const char *state)
{
    want_id = id;
    want_backend = backend;
    want_state = state;
    if (!run_until(row_in_state, 5000)) {
        cJSON *arr;
        const cJSON *r = row(id, backend, &arr);
        fail_msg("%s/%s: state %s, want %s", id, backend, r ? field_str(r, "state") : "none",
                 state);
    }
}

/* Settle: run the loop briefly so every zero timer and callback ran. */
static void settle(void)
{
    run_until(NULL, 50);
}

/* Quiet hours 22:00-07:00 in UTC for alice (hold, or drop), marketing opted
 * out, sms/desktop off for "security". */
#define SNAP_QUIET(mode)                                                                           \
    "{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"tz\":\"UTC\","                                 \
    "\"categories\":{\"marketing\":{\"opt_out\":true},"                                            \
    "\"security\":{\"channels_off\":[\"desktop\"]}},"                                              \
    "\"quiet_hours\":{\"start\":\"22:00\",\"end\":\"07:00\",\"mode\":\"" mode "\"}}}}"
#define SNAP_NONE "{\"v\":1,\"version\":2,\"users\":{\"alice\":{\"tz\":\"UTC\"}}}"

/* --- tests ------------------------------------------------------------------ */

static void test_after_commit(void **state)
{
    (void)state;
    open_all(1);
    settle();
    commit_on = false;
    assert_int_equal(add("{\"id\":\"a1\",\"to\":\"local\",\"title\":\"t\"}", 0), 0);
    assert_int_equal(localq_pending(q), 1);
    localq_poke(q);
    settle();
    assert_int_equal(F[0].calls, 0); /* not committed: not delivered */
    expect_row("a1", "fake", "pending", NULL);
    commit_on = true;
    wait_state("a1", "fake", "delivered");
    assert_int_equal(F[0].calls, 1);
    expect_row("a1", "fake", "delivered", "no_preference");
    assert_int_equal(row_num("a1", "fake", "attempts"), 1);
    cJSON *arr;
    const cJSON *r = row("a1", "fake", &arr);
    assert_string_equal(field_str(r, "ref"), "(null)"); /* the fake gave none */
    cJSON_Delete(arr);
    assert_int_equal(localq_pending(q), 0);
}

static void test_duplicates_and_channels(void **state)
{
    (void)state;
    open_all(2);
    assert_int_equal(add("{\"id\":\"d1\",\"to\":\"local\",\"title\":\"t\"}", 0), 0);
    assert_int_equal(add("{\"id\":\"d1\",\"to\":\"local\",\"title\":\"again\"}", 0),
                     TDG_EDUPLICATE);
    /* Only the desktop channel: one row, on fakedesk. */
    assert_int_equal(
        add("{\"id\":\"d2\",\"to\":\"local\",\"title\":\"t\",\"channels\":[\"desktop\"]}", 0), 0);
    /* No enabled backend takes push: kept as a dropped row. */
    assert_int_equal(
        add("{\"id\":\"d3\",\"to\":\"local\",\"title\":\"t\",\"channels\":[\"push\"]}", 0), 0);
    wait_state("d2", "fakedesk", "delivered");
    wait_state("d1", "fake", "delivered");
    wait_state("d1", "fakedesk", "delivered");
    cJSON *arr;
    assert_null(row("d2", "fake", &arr));
    cJSON_Delete(arr);
    expect_row("d3", LOCALQ_BACKEND_NONE, "dropped", NULL);
    const cJSON *r = row("d3", LOCALQ_BACKEND_NONE, &arr);
    assert_non_null(strstr(field_str(r, "reason"), "no enabled backend"));
    cJSON_Delete(arr);
    /* Still a duplicate after delivery (until pruned). */
    assert_int_equal(add("{\"id\":\"d1\",\"to\":\"local\",\"title\":\"t\"}", 0), TDG_EDUPLICATE);
    assert_int_equal(F[0].calls + F[1].calls, 3);
    struct localq_counts c;
    assert_int_equal(localq_count(q, &c), 0);
    assert_int_equal(c.by_state[LOCALQ_DELIVERED], 3);
    assert_int_equal(c.by_state[LOCALQ_DROPPED], 1);
    assert_true(localq_find(q, "nope", &arr) == TDG_ENOTFOUND);
}

static void test_hold_across_restart(void **state)
{
    (void)state;
    set_snapshot(SNAP_QUIET("hold"));
    fake_now = at("2026-03-10T23:00:00Z");
    open_all(1);
    assert_int_equal(add("{\"id\":\"h1\",\"to\":\"local\",\"title\":\"t\"}", 0), 0);
    settle();
    expect_row("h1", "fake", "pending", "quiet_hours");
    assert_int_equal((int64_t)row_num("h1", "fake", "due_ms"), at("2026-03-11T07:00:00Z"));
    struct localq_counts c;
    assert_int_equal(localq_count(q, &c), 0);
    assert_int_equal(c.held, 1);
    struct localq_stats st;
    localq_get_stats(q, &st);
    assert_int_equal(st.next_due_ms, at("2026-03-11T07:00:00Z"));
    assert_int_equal(F[0].calls, 0);

    /* Stop, and start again a minute before the end: still held. */
    close_all();
    fake_now = at("2026-03-11T06:59:00Z");
    open_all(1);
    settle();
    expect_row("h1", "fake", "pending", "quiet_hours");
    assert_int_equal(F[0].calls, 0);
    /* The window ends: delivered. */
    fake_now = at("2026-03-11T07:00:00Z");
    localq_poke(q);
    wait_state("h1", "fake", "delivered");
    expect_row("h1", "fake", "delivered", "allow");
    assert_int_equal(F[0].calls, 1);
}

static void test_retry_and_backoff(void **state)
{
    (void)state;
    script(0, DELIVER_RETRY, "queue full", 5000);
    script(0, DELIVER_UNAVAILABLE, "no notification server", 0);
    script(0, DELIVER_OK, NULL, 0);
    open_all(1);
    int64_t t0 = fake_now;
    assert_int_equal(add("{\"id\":\"r1\",\"to\":\"local\",\"title\":\"t\"}", 0), 0);
    run_until(NULL, 100);
    /* The backend's own delay. */
    expect_row("r1", "fake", "pending", NULL);
    assert_int_equal(row_num("r1", "fake", "attempts"), 1);
    assert_int_equal((int64_t)row_num("r1", "fake", "due_ms"), t0 + 5000);
    cJSON *arr;
    const cJSON *r = row("r1", "fake", &arr);
    assert_string_equal(field_str(r, "reason"), "queue full");
    cJSON_Delete(arr);
    localq_poke(q); /* not due yet */
    settle();
    assert_int_equal(F[0].calls, 1);
    /* Due: unavailable, then capped full-jitter backoff (attempt 1: 1..2 s). */
    fake_now = t0 + 5000;
    localq_poke(q);
    run_until(NULL, 100);
    assert_int_equal(F[0].calls, 2);
    assert_int_equal(row_num("r1", "fake", "attempts"), 2);
    int64_t due = (int64_t)row_num("r1", "fake", "due_ms");
    assert_true(due >= fake_now + 1 && due <= fake_now + 2000);
    fake_now = due;
    localq_poke(q);
    wait_state("r1", "fake", "delivered");
    assert_int_equal(row_num("r1", "fake", "attempts"), 3);
    r = row("r1", "fake", &arr);
    assert_string_equal(field_str(r, "ref"), "ref-3");
    cJSON_Delete(arr);
}

static void test_fail_and_give_up(void **state)
{
    (void)state;
    script(0, DELIVER_FAIL, "exit 3", 0);
    for (int i = 0; i < 6; i++) {
        script(0, DELIVER_RETRY, "busy", 1000);
    }
    opts.retry_for_ms = 10000;
    open_all(1);
    assert_int_equal(add("{\"id\":\"f1\",\"to\":\"local\",\"title\":\"t\"}", 0), 0);
    wait_state("f1", "fake", "failed");
    cJSON *arr;
    const cJSON *r = row("f1", "fake", &arr);
    assert_string_equal(field_str(r, "reason"), "exit 3");
    cJSON_Delete(arr);

    int64_t t0 = fake_now;
    assert_int_equal(add("{\"id\":\"f2\",\"to\":\"local\",\"title\":\"t\"}", 0), 0);
    run_until(NULL, 100);
    expect_row("f2", "fake", "pending", NULL);
    fake_now = t0 + 11000; /* past retry_for */
    localq_poke(q);
    wait_state("f2", "fake", "failed");
    r = row("f2", "fake", &arr);
    assert_non_null(strstr(field_str(r, "reason"), "gave up after 2 attempts"));
    cJSON_Delete(arr);
}

static void test_expiry(void **state)
{
    (void)state;
    set_snapshot(SNAP_QUIET("hold"));
    fake_now = at("2026-03-10T23:00:00Z");
    open_all(1);
    /* Held until 07:00, but its ttl ends at 23:01: due then, and expired. */
    assert_int_equal(add("{\"id\":\"e1\",\"to\":\"local\",\"title\":\"t\",\"ttl\":60}", 60), 0);
    settle();
    expect_row("e1", "fake", "pending", "quiet_hours");
    assert_int_equal((int64_t)row_num("e1", "fake", "due_ms"), at("2026-03-10T23:01:00Z"));
    fake_now = at("2026-03-10T23:01:00Z");
    localq_poke(q);
    wait_state("e1", "fake", "expired");
    assert_int_equal(F[0].calls, 0);
    /* A retry never waits past the expiry either. */
    set_snapshot(NULL);
    script(0, DELIVER_RETRY, "busy", 3600000);
    assert_int_equal(add("{\"id\":\"e2\",\"to\":\"local\",\"title\":\"t\",\"ttl\":30}", 30), 0);
    run_until(NULL, 100);
    assert_int_equal((int64_t)row_num("e2", "fake", "due_ms"), fake_now + 30000);
    fake_now += 30000;
    localq_poke(q);
    wait_state("e2", "fake", "expired");
}

static void test_rules(void **state)
{
    (void)state;
    set_snapshot(SNAP_QUIET("drop"));
    fake_now = at("2026-03-10T23:00:00Z");
    open_all(2);
    assert_int_equal(
        add("{\"id\":\"m1\",\"to\":\"local\",\"title\":\"t\",\"category\":\"marketing\"}", 0), 0);
    assert_int_equal(add("{\"id\":\"q1\",\"to\":\"local\",\"title\":\"t\"}", 0), 0);
    assert_int_equal(
        add("{\"id\":\"c1\",\"to\":\"local\",\"title\":\"t\",\"priority\":\"critical\","
            "\"category\":\"security\"}",
            0),
        0);
    /* Another user, not in the snapshot; and a group: no preference. */
    assert_int_equal(add("{\"id\":\"u1\",\"to\":\"user:bob\",\"title\":\"t\"}", 0), 0);
    assert_int_equal(add("{\"id\":\"g1\",\"to\":\"group:ops\",\"title\":\"t\"}", 0), 0);
    wait_state("u1", "fakedesk", "delivered");
    wait_state("c1", "fake", "delivered");
    wait_state("g1", "fake", "delivered");
    expect_row("m1", "fake", "suppressed", "category_opt_out:marketing");
    expect_row("m1", "fakedesk", "suppressed", "category_opt_out:marketing");
    expect_row("q1", "fake", "dropped", "quiet_hours_drop");
    expect_row("q1", "fakedesk", "dropped", "quiet_hours_drop");
    expect_row("c1", "fake", "delivered", "critical_bypass");
    expect_row("c1", "fakedesk", "suppressed", "channel_off:desktop");
    expect_row("u1", "fake", "delivered", "no_preference");
    expect_row("g1", "fakedesk", "delivered", "no_preference");
    /* A notification for alice from the hub follows alice's preferences. */
    assert_int_equal(
        add("{\"id\":\"a1\",\"to\":\"user:alice\",\"title\":\"t\",\"category\":\"marketing\"}", 0),
        0);
    settle();
    expect_row("a1", "fake", "suppressed", "category_opt_out:marketing");
}

static void test_policy_change_releases(void **state)
{
    (void)state;
    set_snapshot(SNAP_QUIET("hold"));
    fake_now = at("2026-03-10T23:00:00Z");
    open_all(1);
    assert_int_equal(add("{\"id\":\"p1\",\"to\":\"local\",\"title\":\"t\"}", 0), 0);
    assert_int_equal(
        add("{\"id\":\"p2\",\"to\":\"local\",\"title\":\"t\",\"category\":\"marketing\"}", 0), 0);
    settle();
    expect_row("p1", "fake", "pending", "quiet_hours");
    expect_row("p2", "fake", "suppressed", NULL);
    /* The user drops quiet hours (and the marketing opt-out): released now;
     * the suppressed one stays suppressed (terminal). */
    set_snapshot(SNAP_NONE);
    wait_state("p1", "fake", "delivered");
    expect_row("p1", "fake", "delivered", "allow");
    expect_row("p2", "fake", "suppressed", "category_opt_out:marketing");
    /* A later change can also turn a held row into a suppressed one. */
    set_snapshot(SNAP_QUIET("hold"));
    assert_int_equal(
        add("{\"id\":\"p3\",\"to\":\"local\",\"title\":\"t\",\"category\":\"news\"}", 0), 0);
    settle();
    expect_row("p3", "fake", "pending", "quiet_hours");
    set_snapshot("{\"v\":1,\"version\":3,\"users\":{\"alice\":{\"opt_out\":true}}}");
    wait_state("p3", "fake", "suppressed");
    expect_row("p3", "fake", "suppressed", "opt_out");
}

static void test_receipts(void **state)
{
    (void)state;
    open_all(2);
    assert_int_equal(add("{\"id\":\"rc1\",\"to\":\"local\",\"title\":\"t\"}", 0), 0);
    wait_state("rc1", "fakedesk", "delivered");
    struct deliver_receipt r1 = {
        .backend = "fakedesk", .id = "rc1", .kind = DELIVER_RECEIPT_ACTION, .detail = "default"};
    struct deliver_receipt r2 = {
        .backend = "fakedesk", .id = "rc1", .kind = DELIVER_RECEIPT_CLOSED, .detail = "dismissed"};
    F[1].on_receipt(F[1].receipt_arg, &r1);
    F[1].on_receipt(F[1].receipt_arg, &r2);
    settle();
    cJSON *arr;
    const cJSON *r = row("rc1", "fakedesk", &arr);
    assert_string_equal(field_str(r, "receipt"), "action:default closed:dismissed");
    cJSON_Delete(arr);
    r = row("rc1", "fake", &arr);
    assert_string_equal(field_str(r, "receipt"), "(null)");
    cJSON_Delete(arr);
}

static void test_deliver_at(void **state)
{
    (void)state;
    set_snapshot("{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"tz\":\"Europe/Berlin\"}}}");
    open_all(1);
    /* Absolute, and a wall time in alice's zone (CET: 08:00 = 07:00Z). */
    assert_int_equal(add("{\"id\":\"s1\",\"to\":\"local\",\"title\":\"t\","
                         "\"deliver_at\":\"2026-03-10T13:00:00Z\"}",
                         0),
                     0);
    assert_int_equal(add("{\"id\":\"s2\",\"to\":\"local\",\"title\":\"t\","
                         "\"deliver_at\":\"2026-03-11T08:00\",\"tz\":\"user\"}",
                         0),
                     0);
    settle();
    expect_row("s1", "fake", "pending", "scheduled");
    assert_int_equal((int64_t)row_num("s1", "fake", "due_ms"), at("2026-03-10T13:00:00Z"));
    assert_int_equal((int64_t)row_num("s2", "fake", "due_ms"), at("2026-03-11T07:00:00Z"));
    fake_now = at("2026-03-10T13:00:00Z");
    localq_poke(q);
    wait_state("s1", "fake", "delivered");
    expect_row("s2", "fake", "pending", "scheduled");
}

static void test_budget(void **state)
{
    (void)state;
    opts.max_rows = 3;
    open_all(1);
    for (int i = 0; i < 3; i++) {
        char js[96];
        FMT(js, "{\"id\":\"b%d\",\"to\":\"local\",\"title\":\"t\"}", i);
        assert_int_equal(add(js, 0), 0);
        fake_now += 1000;
    }
    wait_state("b2", "fake", "delivered");
    /* At the budget with finished rows: the oldest goes first. */
    assert_int_equal(add("{\"id\":\"b3\",\"to\":\"local\",\"title\":\"t\"}", 0), 0);
    cJSON *arr = NULL;
    assert_int_equal(localq_find(q, "b0", &arr), TDG_ENOTFOUND);
    wait_state("b3", "fake", "delivered");
    struct localq_stats st;
    localq_get_stats(q, &st);
    assert_int_equal(st.pruned_early, 1);
    assert_int_equal(st.rows, 3);
    /* Every row pending (held): new ones are refused. */
    set_snapshot(SNAP_QUIET("hold"));
    fake_now = at("2026-03-10T23:00:00Z");
    for (int i = 4; i < 7; i++) {
        char js[96];
        FMT(js, "{\"id\":\"b%d\",\"to\":\"local\",\"title\":\"t\"}", i);
        assert_int_equal(add(js, 0), 0);
    }
    assert_int_equal(add("{\"id\":\"b7\",\"to\":\"local\",\"title\":\"t\"}", 0), TDG_EFULL);
    settle();
    localq_get_stats(q, &st);
    assert_int_equal(st.rejected_full, 1);
    struct localq_counts c;
    assert_int_equal(localq_count(q, &c), 0);
    assert_int_equal(c.by_state[LOCALQ_PENDING], 3);
    assert_int_equal(c.held, 3);
}

static void test_retention(void **state)
{
    (void)state;
    set_snapshot(SNAP_QUIET("hold"));
    fake_now = at("2026-03-10T12:00:00Z");
    open_all(1);
    assert_int_equal(add("{\"id\":\"old\",\"to\":\"local\",\"title\":\"t\"}", 0), 0);
    wait_state("old", "fake", "delivered");
    fake_now = at("2026-03-10T23:00:00Z");
    assert_int_equal(add("{\"id\":\"held\",\"to\":\"local\",\"title\":\"t\"}", 0), 0);
    settle();
    /* Restart 8 days later: the finished row is past its 7-day retention and
     * pruned; the pending one is not. */
    close_all();
    fake_now = at("2026-03-18T13:00:00Z");
    open_all(1);
    settle();
    cJSON *arr = NULL;
    assert_int_equal(localq_find(q, "old", &arr), TDG_ENOTFOUND);
    expect_row("held", "fake", "delivered", "allow"); /* its window ended long ago */
    struct localq_stats st;
    localq_get_stats(q, &st);
    assert_int_equal(st.pruned, 1);
}

/* Force the next commit to fail as a full disk would: roll the open
 * transaction back behind the outbox's back, so its COMMIT errors out and
 * every write since the last commit is gone. */
static void fail_next_commit(void)
{
    assert_int_equal(sqlite3_exec(outbox_db(ob), "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    assert_true(outbox_commit(ob) < 0);
}

static unsigned want_calls;
static bool calls_reached(void)
{
    return F[0].calls >= want_calls;
}

static void test_commit_failure(void **state)
{
    (void)state;
    opts.retry_min_ms = 50;
    opts.retry_max_ms = 200;
    open_all(1);
    settle();
    /* An add whose commit fails is not stored, and never delivered. */
    commit_on = false;
    assert_int_equal(add("{\"id\":\"x1\",\"to\":\"local\",\"title\":\"t\"}", 0), 0);
    fail_next_commit();
    commit_on = true;
    settle();
    cJSON *arr = NULL;
    assert_int_equal(localq_find(q, "x1", &arr), TDG_ENOTFOUND);
    assert_int_equal(F[0].calls, 0);
    /* Stored, delivered, but the commit carrying "delivered" fails: the
     * row is pending again and is delivered again after a pause (at least
     * once), then recorded. */
    assert_int_equal(add("{\"id\":\"y1\",\"to\":\"local\",\"title\":\"t\"}", 0), 0);
    assert_int_equal(outbox_commit(ob), 0);
    commit_on = false;
    want_calls = 1;
    assert_true(run_until(calls_reached, 5000));
    settle(); /* the outcome is written into the open transaction */
    fail_next_commit();
    expect_row("y1", "fake", "pending", NULL);
    commit_on = true;
    wait_state("y1", "fake", "delivered");
    assert_int_equal(F[0].calls, 2);
    /* Commits work again: a new one goes straight through. */
    assert_int_equal(add("{\"id\":\"z1\",\"to\":\"local\",\"title\":\"t\"}", 0), 0);
    wait_state("z1", "fake", "delivered");
    assert_int_equal(F[0].calls, 3);
    struct localq_stats st;
    localq_get_stats(q, &st);
    assert_int_equal(st.rows, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_after_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicates_and_channels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hold_across_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_and_backoff, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fail_and_give_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(test_policy_change_releases, setup, teardown),
        cmocka_unit_test_setup_teardown(test_receipts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deliver_at, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retention, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commit_failure, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
