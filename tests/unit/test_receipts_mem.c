/* test_receipts_mem.c - receipts kept in memory for the publisher
 * (hub/store_engine.c, "Receipts from memory" in docs/engine.md) against
 * the outbox they stand for:
 * - nothing is handed out before its transaction commits; a rollback, a
 *   ROLLBACK TO and a failed COMMIT never let a receipt out of memory
 *   (the last turns the memory off);
 * - what the publisher reads (memory as far as it goes, then the table
 *   from there, as receipts_flush does) is exactly the table's receipts
 *   after any cursor: with receipts written by other paths in between,
 *   with the memory's bound passed, after deletes and seq reuse;
 * - the fanout's receipts from memory say byte for byte what the outbox
 *   joined with the attempts says (several devices and channels, a retry,
 *   a drop, a success). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "channel.h"
#include "fanout.h"
#include "loop.h"
#include "pii.h"
#include "proto.h"
#include "store.h"
#include "store_engine.h"
#include "testchannel.h"
#include "testdb.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64], dbpath[128];
static store_t *S;

static int setup(void **state)
{
    (void)state;
    if (testdb_tmpdir(dir, sizeof(dir), "/tmp/tidings-rmem-XXXXXX", dbpath, sizeof(dbpath), "hub.db") < 0) {
        return -1;
    }
    char err[256];
    return store_open(dbpath, DB_SYNC_NORMAL, &S, err, sizeof(err)) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    store_close(S);
    S = NULL;
    testdb_remove(dbpath, dir);
    return 0;
}

/* --- receipts as the publisher sees them ---------------------------------- */

struct rc {
    int64_t seq;
    char agent[PROTO_AGENT_MAX + 1];
    struct proto_receipt x;
    bool have_ok[PROTO_RECEIPT_MAX_CHANNELS];
};

struct rlist {
    struct rc *v;
    unsigned n, cap;
};

static struct rc *rl_add(struct rlist *l)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->v = realloc(l->v, l->cap * sizeof(*l->v));
        assert_non_null(l->v);
    }
    struct rc *r = &l->v[l->n++];
    memset(r, 0, sizeof(*r));
    return r;
}

/* The outbox joined with attempts, summed up per channel as proto.h states
 * it: channels in the order of their first attempt, attempts counted, the
 * result of the last successful attempt, else of the last one. */
static void on_row(void *arg, const struct store_receipt *row, const struct store_attempt_row *a)
{
    struct rlist *l = arg;
    struct rc *r = l->n ? &l->v[l->n - 1] : NULL;
    if (!r || r->seq != row->seq) {
        r = rl_add(l);
        r->seq = row->seq;
        store_copy_text(r->agent, sizeof(r->agent), row->agent);
        store_copy_text(r->x.id, sizeof(r->x.id), row->id);
        store_copy_text(r->x.state, sizeof(r->x.state), row->state);
        store_copy_text(r->x.reason, sizeof(r->x.reason), row->reason);
        r->x.at_ms = row->at_ms;
    }
    if (!a->channel) {
        return;
    }
    unsigned i = 0;
    while (i < r->x.nch && strcmp(r->x.ch[i].channel, a->channel) != 0) {
        i++;
    }
    if (i == r->x.nch) {
        assert_true(i < PROTO_RECEIPT_MAX_CHANNELS);
        r->x.nch++;
        store_copy_text(r->x.ch[i].channel, sizeof(r->x.ch[i].channel), a->channel);
    }
    struct proto_receipt_channel *c = &r->x.ch[i];
    c->attempts++;
    bool ok = strcmp(a->state, "ok") == 0;
    if (ok || !r->have_ok[i]) {
        store_copy_text(c->result, sizeof(c->result), a->state);
        store_copy_text(c->reason, sizeof(c->reason), a->reason);
        c->status = a->status;
        r->have_ok[i] = r->have_ok[i] || ok;
    }
}

static bool on_mem(void *arg, int64_t seq, const char *agent, const struct proto_receipt *x)
{
    struct rlist *l = arg;
    struct rc *r = rl_add(l);
    r->seq = seq;
    store_copy_text(r->agent, sizeof(r->agent), agent);
    r->x = *x;
    return true;
}

static void table_read(struct rlist *l, int64_t after, unsigned max)
{
    assert_true(store_receipts_next(S, after, max, on_row, l) >= 0);
}

/* As receipts_flush reads: memory as far as it goes, then the table from
 * the last receipt memory gave. How many came from memory. */
static unsigned publisher_read(struct rlist *l, int64_t after, unsigned max)
{
    int n = store_receipts_mem_next(S, after, max, on_mem, l);
    assert_true(n >= 0 && (unsigned)n <= max);
    if (n > 0) {
        after = l->v[l->n - 1].seq;
    }
    if ((unsigned)n < max) {
        table_read(l, after, max - (unsigned)n);
    }
    return (unsigned)n;
}

/* Both lists hold the same receipts: same seqs, agents and bytes on the
 * wire. */
static void same(const struct rlist *a, const struct rlist *b)
{
    assert_int_equal(a->n, b->n);
    for (unsigned i = 0; i < a->n; i++) {
        assert_int_equal(a->v[i].seq, b->v[i].seq);
        assert_string_equal(a->v[i].agent, b->v[i].agent);
        char wa[8192], wb[8192];
        const struct proto_receipt *pa = &a->v[i].x, *pb = &b->v[i].x;
        size_t la = proto_receipts_write(wa, sizeof(wa), &pa, 1);
        size_t lb = proto_receipts_write(wb, sizeof(wb), &pb, 1);
        assert_true(la < sizeof(wa) && lb < sizeof(wb));
        assert_string_equal(wa, wb);
    }
}

/* For every cursor from 0 to past the top: the publisher's read is the
 * table's. Returns how many receipts memory gave over all cursors. */
static unsigned check_every_cursor(unsigned max)
{
    int64_t top = 0;
    assert_int_equal(store_receipts_top(S, &top), 0);
    unsigned from_mem = 0;
    /* Upwards, as the publisher's cursor moves: memory drops what is at
     * or below the cursor it is asked with. */
    for (int64_t after = 0; after <= top + 1; after++) {
        struct rlist t = {0}, p = {0};
        table_read(&t, after, max);
        from_mem += publisher_read(&p, after, max);
        same(&t, &p);
        free(t.v);
        free(p.v);
    }
    return from_mem;
}

static void add_n(const char *id, const char *agent, int64_t now)
{
    char json[200];
    int len = snprintf(json, sizeof(json), "{\"id\":\"%s\",\"to\":\"user:u1\",\"title\":\"t\"}",
                       id);
    struct notification n;
    struct proto_error perr;
    assert_int_equal(proto_parse(json, (size_t)len, &n, &perr), 0);
    bool inserted = false;
    assert_int_equal(store_add_notification(S, &n, agent, json, (size_t)len, now, &inserted), 0);
    assert_true(inserted);
    notification_free(&n);
}

static void set_mem(const char *id, const char *agent, const char *state, int64_t now)
{
    struct store_rcpt_ctx c = {
        .id = id, .state = state, .reason = "why \xc3\xa9", .at_ms = now, .agent = agent};
    assert_int_equal(store_set_state_receipt(S, &c), 0);
}

static unsigned held_committed(void)
{
    unsigned c, o;
    store_receipts_mem_held(S, &c, &o);
    return c;
}

static unsigned held_open(void)
{
    unsigned c, o;
    store_receipts_mem_held(S, &c, &o);
    return o;
}

/* Kept in memory from the state change, handed out only after the commit;
 * equal to the rows; a state set again makes no second receipt. */
static void test_only_after_commit(void **state)
{
    (void)state;
    int64_t now = 1700000000000;
    for (int i = 0; i < 3; i++) {
        char id[8];
        snprintf(id, sizeof(id), "n%d", i);
        add_n(id, i == 1 ? "gw2" : "gw1", now);
    }
    assert_int_equal(store_commit(S), 0);
    set_mem("n0", "gw1", "delivered", now + 1);
    set_mem("n1", "gw2", "failed", now + 2);
    set_mem("n2", "gw1", "expired", now + 3);
    set_mem("n2", "gw1", "expired", now + 4); /* no change of state: no row */
    assert_int_equal(held_open(), 3);
    assert_int_equal(held_committed(), 0);
    struct rlist p = {0};
    assert_int_equal(store_receipts_mem_next(S, 0, 100, on_mem, &p), 0);
    assert_int_equal(p.n, 0);
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(held_committed(), 3);
    assert_int_equal(check_every_cursor(100), 3 + 2 + 1); /* cursors 0, 1, 2 */
    free(p.v);
}

/* A ROLLBACK TO, a rollback and a failed COMMIT: what they undid never
 * leaves memory; after a failed COMMIT memory stays off. */
static void test_rollbacks(void **state)
{
    (void)state;
    int64_t now = 1700000000000;
    add_n("a", "gw1", now);
    add_n("b", "gw1", now);
    add_n("c", "gw1", now);
    assert_int_equal(store_commit(S), 0);

    /* ROLLBACK TO a savepoint (the admin API's) after the capture. */
    assert_int_equal(store_admin_begin(S), 0);
    set_mem("a", "gw1", "delivered", now + 1);
    assert_int_equal(held_open(), 1);
    assert_int_equal(store_admin_end(S, false), 0);
    assert_int_equal(held_open(), 0);
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(testdb_int(dbpath, "SELECT count(*) FROM receipts"), 0);
    assert_int_equal(held_committed(), 0);

    /* The COMMIT fails: a buffered attempt row collides with one written
     * behind the store's back, so its INSERT OR IGNORE ignores it and the
     * store fails the transaction (store_rows.c). */
    int64_t aid = 0;
    assert_int_equal(store_attempt_begin(S, "b", "apns", 1, now, &aid), 0);
    assert_int_equal(store_commit(S), 0);
    char sql[200];
    snprintf(sql, sizeof(sql),
             "INSERT INTO attempts(id, notification_id, channel, device_id, state, started_ms)"
             " VALUES (%lld, 'b', 'apns', 1, 'sending', 0)",
             (long long)aid + 1);
    testdb_exec(dbpath, sql);
    int64_t aid2 = 0;
    assert_int_equal(store_attempt_begin(S, "b", "apns", 1, now, &aid2), 0);
    assert_int_equal(aid2, aid + 1);
    set_mem("b", "gw1", "delivered", now + 2);
    assert_int_equal(held_open(), 1);
    assert_true(store_commit(S) < 0);
    assert_int_equal(held_open() + held_committed(), 0);
    assert_int_equal(testdb_int(dbpath, "SELECT count(*) FROM receipts"), 0);

    /* Off for good: later receipts are read from the table. */
    set_mem("c", "gw1", "delivered", now + 3);
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(held_committed(), 0);
    assert_int_equal(testdb_int(dbpath, "SELECT count(*) FROM receipts"), 1);
    assert_int_equal(check_every_cursor(10), 0);
}

/* Receipts written by other paths in between, the memory's bound passed
 * within one transaction, a delete inside the kept range, seqs reused
 * after the top rows were deleted: at every cursor the publisher's read is
 * the table's, and memory did answer for most of it. */
static void test_gaps_bound_deletes(void **state)
{
    (void)state;
    int64_t now = 1700000000000;
    char id[16];
    unsigned total = STORE_RMEM_MAX + 40;
    for (unsigned i = 0; i < total; i++) {
        snprintf(id, sizeof(id), "g%u", i);
        add_n(id, i % 3 ? "gw1" : "gw2", now);
    }
    assert_int_equal(store_commit(S), 0);
    /* g0..g9 from memory, g10 by another path (the table's trigger, not
     * captured), g11..g19 from memory, g20 by another path at the end. */
    for (unsigned i = 0; i < 21; i++) {
        snprintf(id, sizeof(id), "g%u", i);
        if (i == 10 || i == 20) {
            assert_int_equal(store_set_state(S, id, "dropped", "admin", now + i), 0);
        } else {
            set_mem(id, i % 3 ? "gw1" : "gw2", "delivered", now + i);
        }
    }
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(held_committed(), 10); /* g0..g9: g10 froze it (g20 is at seq 21) */
    assert_int_equal(check_every_cursor(7), 7 + 7 + 7 + 7 + 6 + 5 + 4 + 3 + 2 + 1);

    /* More than the bound in one transaction: the first STORE_RMEM_MAX are
     * kept (seq 22 on), the rest are the table's. */
    for (unsigned i = 21; i < total; i++) {
        snprintf(id, sizeof(id), "g%u", i);
        set_mem(id, i % 3 ? "gw1" : "gw2", "failed", now + i);
    }
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(held_committed(), STORE_RMEM_MAX);
    int64_t top = 0;
    assert_int_equal(store_receipts_top(S, &top), 0);
    assert_int_equal(top, (int64_t)total);
    struct rlist t = {0}, p = {0};
    table_read(&t, 21, 2 * total);
    assert_int_equal(publisher_read(&p, 21, 2 * total), STORE_RMEM_MAX);
    same(&t, &p);
    free(t.v);
    free(p.v);

    /* A delete inside what memory holds empties it (the publisher never
     * deletes unpublished rows: this is the unexpected case). */
    assert_int_equal(store_receipts_delete(S, "gw1", 100, 110, NULL), 0);
    assert_int_equal(held_committed(), 0);
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(check_every_cursor(300), 0);

    /* Every row deleted; the seqs come back for new receipts, which memory
     * holds again, and they are the table's. */
    assert_int_equal(store_receipts_delete(S, "gw1", 1, top, NULL), 0);
    assert_int_equal(store_receipts_delete(S, "gw2", 1, top, NULL), 0);
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(testdb_int(dbpath, "SELECT count(*) FROM receipts"), 0);
    for (unsigned i = 0; i < 5; i++) {
        snprintf(id, sizeof(id), "r%u", i);
        add_n(id, "gw1", now);
        set_mem(id, "gw1", "delivered", now + i);
    }
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(testdb_int(dbpath, "SELECT min(seq) FROM receipts"), 1);
    assert_int_equal(check_every_cursor(3), 3 + 3 + 3 + 2 + 1); /* cursors 0..4 */
}

/* --- the fanout's receipts ------------------------------------------------- */

struct fx {
    loop_t *loop;
    fanout_t *fanout;
    pii_t *pii;
    struct testchannel ch; /* holds each send until the test answers it */
};

static void answer(struct fx *x, int i, enum channel_result r, int status, const char *reason)
{
    testchannel_answer(&x->ch, i, r, status, reason);
}

static void iterate(struct fx *x)
{
    fanout_pull(x->fanout);
    assert_int_equal(store_commit(S), 0);
    fanout_flush(x->fanout);
}

static void on_stop(loop_t *loop, uint64_t id, void *arg)
{
    (void)id;
    (void)arg;
    loop_stop(loop);
}

/* Stored taken and handed over as intake does (fanout_take, agent gw1). */
static void take(struct fx *x, const char *id)
{
    char json[200];
    int len = snprintf(json, sizeof(json), "{\"id\":\"%s\",\"to\":\"user:alice\",\"title\":\"t\"}",
                       id);
    struct notification n;
    struct proto_error perr;
    assert_int_equal(proto_parse(json, (size_t)len, &n, &perr), 0);
    bool inserted = false, taken = false;
    assert_int_equal(store_add_notification_taken(S, &n, "gw1", json, (size_t)len,
                                                  clock_wall_ms(), &inserted, &taken),
                     0);
    assert_true(inserted && taken);
    fanout_take(x->fanout, &n, 0, "gw1"); /* n moved */
}

/* alice: two iOS devices (apns) and an Android one (fcm). n1: both iOS
 * accepted, Android dropped. n2: one iOS retried then accepted, the other
 * dropped, Android failed twice (retry, then out of attempts). n3: every
 * device dropped. Each receipt from memory is the outbox's, byte for byte. */
static void test_fanout_receipts(void **state)
{
    (void)state;
    struct fx x = {0};
    char err[256], keyfile[160];
    snprintf(keyfile, sizeof(keyfile), "%s/pii.keys", dir);
    assert_int_equal(pii_generate(keyfile, err, sizeof(err)), 0);
    assert_int_equal(pii_load(keyfile, &x.pii, err, sizeof(err)), 0);
    store_set_pii(S, x.pii);
    x.loop = loop_create();
    assert_non_null(x.loop);
    struct fanout_route routes[] = {
        {.platform = "ios", .proto_class = PROTO_CH_PUSH, .channel = "apns", .ops = &testchannel_ops,
         .state = &x.ch},
        {.platform = "android", .proto_class = PROTO_CH_PUSH, .channel = "fcm", .ops = &testchannel_ops,
         .state = &x.ch},
    };
    struct fanout_opts fo = {.max_jobs = 16, .max_attempts = 2, .retry_base_ms = 1,
                             .retry_cap_ms = 2};
    x.fanout = fanout_create(x.loop, S, &fo, routes, 2);
    assert_non_null(x.fanout);
    int64_t now = clock_wall_ms();
    assert_int_equal(store_user_upsert(S, "alice", "UTC", now), 0);
    const char *const dev[][2] = {{"ios", "a"}, {"android", "b"}, {"ios", "c"}};
    for (int i = 0; i < 3; i++) {
        char token[65];
        memset(token, dev[i][1][0], 64);
        token[64] = '\0';
        assert_int_equal(store_device_add(S, "alice", dev[i][0], token, "com.example", "", now,
                                          NULL),
                         0);
    }
    assert_int_equal(store_commit(S), 0);
    int64_t top0 = 0;
    assert_int_equal(store_receipts_top(S, &top0), 0);

    take(&x, "n1");
    take(&x, "n2");
    take(&x, "n3");
    iterate(&x);
    assert_int_equal(x.ch.nsent, 9);
    for (int i = 0; i < 9; i++) {
        const char *id = x.ch.sent[i].id, *pf = x.ch.sent[i].platform;
        if (strcmp(id, "n1") == 0) {
            bool ios = strcmp(pf, "ios") == 0;
            answer(&x, i, ios ? CHANNEL_OK : CHANNEL_DROP, ios ? 200 : 404,
                   ios ? "" : "UNREGISTERED");
        } else if (strcmp(id, "n2") == 0) {
            answer(&x, i, CHANNEL_RETRY, 503, "Unavailable");
        } else {
            answer(&x, i, CHANNEL_DROP, 400, "BadDeviceToken");
        }
    }
    iterate(&x);
    assert_int_equal(held_committed(), 2); /* n1, n3; n2 waits for retries */
    /* n2's retries come due on loop timers. */
    int guard = 0;
    while (x.ch.nsent < 12 && guard++ < 100) {
        loop_timer_add(x.loop, 5, on_stop, NULL);
        loop_run(x.loop);
        iterate(&x);
    }
    assert_int_equal(x.ch.nsent, 12);
    bool first_ios = true;
    for (int i = 9; i < 12; i++) {
        assert_string_equal(x.ch.sent[i].id, "n2");
        if (strcmp(x.ch.sent[i].platform, "ios") == 0) {
            answer(&x, i, first_ios ? CHANNEL_OK : CHANNEL_DROP, first_ios ? 200 : 410,
                   first_ios ? "" : "Unregistered");
            first_ios = false;
        } else {
            answer(&x, i, CHANNEL_RETRY, 500, "Internal \"quoted\"");
        }
    }
    iterate(&x);
    assert_int_equal(held_committed(), 3);
    assert_int_equal(testdb_int(dbpath, "SELECT count(*) FROM receipts"), 3);
    struct rlist t = {0}, p = {0};
    table_read(&t, top0, 100);
    assert_int_equal(publisher_read(&p, top0, 100), 3);
    same(&t, &p);
    /* What the table says, spelled out for one: n2. */
    const struct rc *n2 = NULL;
    for (unsigned i = 0; i < t.n; i++) {
        n2 = strcmp(t.v[i].x.id, "n2") == 0 ? &t.v[i] : n2;
    }
    assert_non_null(n2);
    assert_string_equal(n2->x.state, "delivered");
    assert_int_equal(n2->x.nch, 2);
    for (unsigned c = 0; c < 2; c++) {
        const struct proto_receipt_channel *ch = &n2->x.ch[c];
        if (strcmp(ch->channel, "apns") == 0) {
            assert_int_equal(ch->attempts, 4);
            assert_string_equal(ch->result, "ok");
        } else {
            assert_string_equal(ch->channel, "fcm");
            assert_int_equal(ch->attempts, 2);
            assert_string_equal(ch->result, "retry");
            assert_int_equal(ch->status, 500);
        }
    }
    free(t.v);
    free(p.v);
    fanout_destroy(x.fanout);
    loop_destroy(x.loop);
    store_set_pii(S, NULL);
    pii_destroy(x.pii);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_only_after_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rollbacks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gaps_bound_deletes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fanout_receipts, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
