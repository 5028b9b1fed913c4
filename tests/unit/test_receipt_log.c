/* test_receipt_log.c - the receipts outbox (hub/store_engine.c) and the
 * history of receipts (receipt_log, schema in hub/store_admin.c): a receipt
 * is pending while its outbox row exists, confirmed with the deletion's time
 * once the row is deleted (the broker's PUBACK), counted once whatever
 * deletes it (with the publisher's tally or by counting the rows), read in
 * batches that never split a notification's attempts, and receipt_log is
 * pruned by age and by row count as receipts are confirmed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "proto.h"
#include "store.h"
#include "db.h"
#include "store_engine.h"
#include "testdb.h"

#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

static char dir[64], dbpath[128];
static store_t *S;

static int64_t wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static int setup(void **state)
{
    (void)state;
    if (testdb_tmpdir(dir, sizeof(dir), "/tmp/tidings-rlog-XXXXXX", dbpath, sizeof(dbpath), "hub.db") < 0) {
        return -1;
    }
    char err[256];
    return store_open(dbpath, DB_SYNC_NORMAL, &S, err, sizeof(err)) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    store_close(S);
    testdb_remove(dbpath, dir);
    return 0;
}

struct seen {
    unsigned n;
    char agent[32], state[16];
    int64_t queued_ms, confirmed_ms;
};

static void on_receipt(void *arg, const struct store_admin_receipt *r)
{
    struct seen *s = arg;
    s->n++;
    snprintf(s->agent, sizeof(s->agent), "%s", r->agent);
    snprintf(s->state, sizeof(s->state), "%s", r->state);
    s->queued_ms = r->queued_ms;
    s->confirmed_ms = r->confirmed_ms;
}

static int64_t max_seq;

static void on_outbox(void *arg, const struct store_receipt *r, const struct store_attempt_row *a)
{
    (void)arg;
    (void)a;
    max_seq = r->seq > max_seq ? r->seq : max_seq;
}

static void add_delivered(const char *id, int64_t now)
{
    char json[200];
    int len =
        snprintf(json, sizeof(json), "{\"id\":\"%s\",\"to\":\"user:u1\",\"title\":\"t\"}", id);
    struct notification n;
    struct proto_error perr;
    assert_int_equal(proto_parse(json, (size_t)len, &n, &perr), 0);
    bool inserted = false;
    assert_int_equal(store_add_notification(S, &n, "gw1", json, (size_t)len, now, &inserted), 0);
    assert_true(inserted);
    notification_free(&n);
    assert_int_equal(store_set_state(S, id, "delivered", "", now + 5), 0);
    assert_int_equal(store_commit(S), 0);
}

static void test_pending_then_confirmed(void **state)
{
    (void)state;
    int64_t now = wall_ms();
    add_delivered("r-1", now);
    struct seen s = {0};
    assert_int_equal(store_admin_receipts(S, "r-1", 10, on_receipt, &s), 1);
    assert_string_equal(s.agent, "gw1");
    assert_string_equal(s.state, "delivered");
    assert_int_equal(s.queued_ms, now + 5);
    assert_int_equal(s.confirmed_ms, 0); /* pending: still in the outbox */

    max_seq = 0;
    assert_true(store_receipts_next(S, 0, 100, on_outbox, NULL) >= 1);
    int64_t before = wall_ms();
    assert_int_equal(store_receipts_delete(S, "gw1", 1, max_seq, NULL), 0);
    assert_int_equal(store_commit(S), 0);
    int64_t after = wall_ms();
    memset(&s, 0, sizeof(s));
    assert_int_equal(store_admin_receipts(S, "r-1", 10, on_receipt, &s), 1);
    assert_string_equal(s.agent, "gw1");
    assert_int_equal(s.queued_ms, now + 5);
    /* the deletion's wall-clock time, in ms (SQLite's clock, rounded) */
    assert_true(s.confirmed_ms >= before - 1 && s.confirmed_ms <= after + 1);

    /* sent again (a dead letter retried) and delivered again: two receipts */
    assert_int_equal(store_set_state(S, "r-1", "queued", "", now + 10), 0);
    assert_int_equal(store_set_state(S, "r-1", "delivered", "", now + 20), 0);
    assert_int_equal(store_commit(S), 0);
    memset(&s, 0, sizeof(s));
    assert_int_equal(store_admin_receipts(S, "r-1", 10, on_receipt, &s), 2);
    assert_int_equal(s.queued_ms, now + 20); /* oldest first: the last is the new one */
    assert_int_equal(s.confirmed_ms, 0);
    memset(&s, 0, sizeof(s));
    assert_int_equal(store_admin_receipts(S, "nope", 10, on_receipt, &s), 0);
}

static int64_t count(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

static void exec(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    if (rc != SQLITE_OK) {
        fail_msg("%s: %s", sql, err ? err : "?");
    }
}

struct counts {
    int64_t delivered, failed;
};

static void on_count(void *arg, const char *state, int64_t n)
{
    struct counts *c = arg;
    if (strcmp(state, "delivered") == 0) {
        c->delivered = n;
    } else if (strcmp(state, "failed") == 0) {
        c->failed = n;
    }
}

/* Terminal counts are the outbox plus engine_counts (added by the delete):
 * unchanged by a delete; seqs above the outbox's top are reused after the
 * top rows go (no AUTOINCREMENT), and store_receipts_top says where. */
static void test_counts_and_seq_reuse(void **state)
{
    (void)state;
    struct counts c0 = {0}, c = {0};
    assert_int_equal(store_terminal_counts(S, on_count, &c0), 0);
    int64_t now = wall_ms();
    add_delivered("c-1", now);
    add_delivered("c-2", now);
    assert_int_equal(store_set_state(S, "c-2", "queued", "", now + 1), 0);
    assert_int_equal(store_set_state(S, "c-2", "failed", "x", now + 2), 0);
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(store_terminal_counts(S, on_count, &c), 0);
    assert_int_equal(c.delivered, c0.delivered + 2);
    assert_int_equal(c.failed, c0.failed + 1);

    int64_t top = 0;
    assert_int_equal(store_receipts_top(S, &top), 0);
    assert_true(top >= 3);
    /* confirm all: counted once, whatever deletes them (a range twice) */
    assert_int_equal(store_receipts_delete(S, "gw1", 1, top, NULL), 0);
    assert_int_equal(store_receipts_delete(S, "gw1", 1, top, NULL), 0);
    assert_int_equal(store_commit(S), 0);
    memset(&c, 0, sizeof(c));
    assert_int_equal(store_terminal_counts(S, on_count, &c), 0);
    assert_int_equal(c.delivered, c0.delivered + 2);
    assert_int_equal(c.failed, c0.failed + 1);
    int64_t empty = -1;
    assert_int_equal(store_receipts_top(S, &empty), 0);
    assert_int_equal(empty, 0);

    /* the outbox empty: a new row starts again from 1 */
    add_delivered("c-3", now);
    max_seq = 0;
    assert_int_equal(store_receipts_next(S, 0, 100, on_outbox, NULL), 1);
    assert_int_equal(max_seq, 1);
    struct seen s = {0};
    assert_int_equal(store_admin_receipts(S, "c-2", 10, on_receipt, &s), 2);
    assert_int_equal(store_receipts_delete(S, "gw1", 1, 1, NULL), 0);
    assert_int_equal(store_commit(S), 0);
    memset(&c, 0, sizeof(c));
    assert_int_equal(store_terminal_counts(S, on_count, &c), 0);
    assert_int_equal(c.delivered, c0.delivered + 3);
}

/* Confirm every receipt in the outbox (one message's worth), as the
 * publisher does after a PUBACK. */
static void confirm_all(const unsigned *tally)
{
    int64_t top = 0;
    assert_int_equal(store_receipts_top(S, &top), 0);
    assert_int_equal(store_receipts_delete(S, "gw1", 1, top, tally), 0);
    assert_int_equal(store_commit(S), 0);
}

static unsigned pruned_n;

/* n receipts confirmed in one message: n rows appended to receipt_log. */
static void confirm_new(unsigned n)
{
    int64_t now = wall_ms();
    for (unsigned i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof(id), "pr-%u", ++pruned_n);
        add_delivered(id, now);
    }
    confirm_all(NULL);
}

/* Raw rows [from, to] of receipt_log, confirmed `age_days` before now. */
static void raw_rows(sqlite3 *db, int64_t from, int64_t to, int64_t age_days)
{
    char sql[512];
    snprintf(sql, sizeof(sql),
             "WITH RECURSIVE c(i) AS (SELECT %lld UNION ALL SELECT i + 1 FROM c WHERE i < %lld)"
             " INSERT INTO receipt_log(rowid, notification_id, agent, state, queued_ms,"
             " confirmed_ms) SELECT i, 'p-' || i, 'gw1', 'delivered', 1, %lld FROM c",
             (long long)from, (long long)to, (long long)(wall_ms() - age_days * 86400000));
    exec(db, sql);
}

static void test_pruned(void **state)
{
    (void)state;
    sqlite3 *db;
    assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    confirm_all(NULL); /* whatever earlier tests left in the outbox */
    exec(db, "DELETE FROM receipt_log");
    /* rows 1..600 are 40 days old, 601..766 are new (rows come in time
     * order: the age is measured from the confirmation that prunes) */
    raw_rows(db, 1, 600, 40);
    raw_rows(db, 601, 766, 0);
    confirm_new(1); /* rowid 767: no multiple of 256, nothing pruned */
    assert_int_equal(count(db, "SELECT count(*) FROM receipt_log"), 767);
    confirm_new(1); /* rowid 768: at most 512 of the oldest go: 1..512 */
    assert_int_equal(count(db, "SELECT min(rowid) FROM receipt_log"), 513);
    assert_int_equal(count(db, "SELECT count(*) FROM receipt_log"), 256);
    raw_rows(db, 769, 1022, 0);
    /* rowids 1023..1025 in one message: 1024 is among them; the rest of
     * the old ones go, 513..600; the new ones stay */
    confirm_new(3);
    assert_int_equal(count(db, "SELECT min(rowid) FROM receipt_log"), 601);
    assert_int_equal(count(db, "SELECT count(*) FROM receipt_log"), 425);
    /* more than 1,000,000 rows back: pruned whatever their age */
    raw_rows(db, 1000959, 1000959, 0);
    confirm_new(1); /* rowid 1000960: 601..960 go; 961..1025 are within */
    assert_int_equal(count(db, "SELECT min(rowid) FROM receipt_log"), 961);
    assert_int_equal(count(db, "SELECT count(*) FROM receipt_log"), 67);
    /* a message of 300 (rowids 1279..1578) crosses two multiples, 1280 and
     * 1536: pruned at each, as a check per row would (512 old rows, then
     * the other 488) */
    exec(db, "DELETE FROM receipt_log");
    raw_rows(db, 1, 1000, 40);
    raw_rows(db, 1001, 1278, 0);
    confirm_new(300);
    assert_int_equal(count(db, "SELECT min(rowid) FROM receipt_log"), 1001);
    assert_int_equal(count(db, "SELECT max(rowid) FROM receipt_log"), 1578);
    sqlite3_close(db);
}

/* The publisher's tally is what engine_counts gets when every receipt of
 * the message is still in the range; otherwise the rows are counted. */
static void test_tally(void **state)
{
    (void)state;
    confirm_all(NULL);
    struct counts c0 = {0}, c = {0};
    assert_int_equal(store_terminal_counts(S, on_count, &c0), 0);
    int64_t now = wall_ms();
    add_delivered("t-1", now);
    add_delivered("t-2", now);
    add_delivered("t-3", now);
    assert_int_equal(store_set_state(S, "t-3", "queued", "", now + 1), 0);
    assert_int_equal(store_set_state(S, "t-3", "failed", "x", now + 2), 0);
    assert_int_equal(store_commit(S), 0);
    /* 4 rows: t-1, t-2, t-3 delivered, t-3 failed */
    const unsigned tally[STORE_TERMINAL_N] = {3, 1, 0, 0, 0};
    assert_int_equal(store_terminal_index("failed"), 1);
    assert_int_equal(store_terminal_index("sending"), -1);
    confirm_all(tally);
    assert_int_equal(store_terminal_counts(S, on_count, &c), 0);
    assert_int_equal(c.delivered, c0.delivered + 3);
    assert_int_equal(c.failed, c0.failed + 1);
    struct seen s = {0};
    assert_int_equal(store_admin_receipts(S, "t-3", 10, on_receipt, &s), 2);
    assert_true(s.confirmed_ms > 0);

    /* A tally that does not match the rows (some were confirmed by another
     * message, the range was cut): the rows themselves are counted. */
    add_delivered("t-4", now);
    add_delivered("t-5", now);
    assert_int_equal(store_set_state(S, "t-5", "queued", "", now + 1), 0);
    assert_int_equal(store_set_state(S, "t-5", "failed", "y", now + 2), 0);
    assert_int_equal(store_commit(S), 0);
    const unsigned wrong[STORE_TERMINAL_N] = {2, 0, 0, 0, 0}; /* 3 rows */
    confirm_all(wrong);
    memset(&c, 0, sizeof(c));
    assert_int_equal(store_terminal_counts(S, on_count, &c), 0);
    assert_int_equal(c.delivered, c0.delivered + 5);
    assert_int_equal(c.failed, c0.failed + 2);
    /* the same range again (a message sent twice): nothing left to count */
    assert_int_equal(store_receipts_delete(S, "gw1", 1, INT64_MAX, tally), 0);
    assert_int_equal(store_commit(S), 0);
    memset(&c, 0, sizeof(c));
    assert_int_equal(store_terminal_counts(S, on_count, &c), 0);
    assert_int_equal(c.delivered, c0.delivered + 5);
    assert_int_equal(c.failed, c0.failed + 2);
}

struct batch {
    unsigned calls, receipts, attempts[8];
    int64_t last;
    char first[8][32];
};

static void on_batch(void *arg, const struct store_receipt *r, const struct store_attempt_row *a)
{
    struct batch *b = arg;
    b->calls++;
    if (b->receipts == 0 || r->seq != b->last) {
        assert_true(b->receipts == 0 || r->seq > b->last); /* oldest first */
        assert_true(b->receipts < 8);
        snprintf(b->first[b->receipts], sizeof(b->first[0]), "%s", r->id);
        b->receipts++;
        b->last = r->seq;
    }
    if (a->channel) {
        b->attempts[b->receipts - 1]++;
    }
}

/* A batch of max receipts carries all the attempts of each (the read stops
 * between notifications, never inside one), in order. */
static void test_next_batches(void **state)
{
    (void)state;
    confirm_all(NULL);
    int64_t now = wall_ms();
    const char *ids[] = {"b-1", "b-2", "b-3"};
    for (unsigned i = 0; i < 3; i++) {
        char json[200];
        int len = snprintf(json, sizeof(json), "{\"id\":\"%s\",\"to\":\"user:u1\",\"title\":\"t\"}",
                           ids[i]);
        struct notification n;
        struct proto_error perr;
        assert_int_equal(proto_parse(json, (size_t)len, &n, &perr), 0);
        bool inserted = false;
        assert_int_equal(store_add_notification(S, &n, "gw1", json, (size_t)len, now, &inserted),
                         0);
        notification_free(&n);
        /* b-1: none, b-2: three, b-3: two attempts */
        for (unsigned k = 0; k < (i == 0 ? 0 : i == 1 ? 3 : 2); k++) {
            int64_t att = 0;
            assert_int_equal(store_attempt_begin(S, ids[i], "apns", 1, now, &att), 0);
            assert_int_equal(store_attempt_end(S, att, "retry", 503, "", "", now), 0);
        }
        assert_int_equal(store_set_state(S, ids[i], "delivered", "", now + 5), 0);
    }
    assert_int_equal(store_commit(S), 0);
    struct batch b = {0};
    assert_int_equal(store_receipts_next(S, 0, 2, on_batch, &b), 4); /* 1 + 3 */
    assert_int_equal(b.receipts, 2);
    assert_string_equal(b.first[0], "b-1");
    assert_int_equal(b.attempts[0], 0);
    assert_string_equal(b.first[1], "b-2");
    assert_int_equal(b.attempts[1], 3);
    int64_t after = b.last;
    memset(&b, 0, sizeof(b));
    assert_int_equal(store_receipts_next(S, after, 2, on_batch, &b), 2);
    assert_int_equal(b.receipts, 1);
    assert_string_equal(b.first[0], "b-3");
    assert_int_equal(b.attempts[0], 2);
    memset(&b, 0, sizeof(b));
    assert_int_equal(store_receipts_next(S, b.last + 1000, 2, on_batch, &b), 0);
    confirm_all(NULL);
}

/* Receipts of id, pending and confirmed (what `tidingsctl status` lists). */
static int receipts_of(const char *id, struct seen *s)
{
    memset(s, 0, sizeof(*s));
    return store_admin_receipts(S, id, 50, on_receipt, s);
}

static void add_one(const char *id, const char *to, int64_t now, int64_t accepted_at_ms)
{
    char json[200];
    int len = snprintf(json, sizeof(json), "{\"id\":\"%s\",\"to\":\"%s\",\"title\":\"t\"%s}", id,
                       to, accepted_at_ms ? ",\"ttl\":1" : "");
    struct notification n;
    struct proto_error perr;
    assert_int_equal(proto_parse(json, (size_t)len, &n, &perr), 0);
    n.accepted_at_ms = accepted_at_ms;
    bool inserted = false;
    assert_int_equal(store_add_notification(S, &n, "gw1", json, (size_t)len, now, &inserted), 0);
    assert_true(inserted);
    notification_free(&n);
}

/* Exactly one receipt per change into a terminal state, on every path that
 * sets one: store_set_state by its rowid hint and by id (a row the store
 * never saw inserted), a state set again to what it is (no new receipt,
 * the row still updated), stored already expired, and the GDPR erasure's
 * 'dropped' (only for what was still pending). Confirmed receipts stay
 * counted in the history. */
static void test_one_receipt_per_terminal_state(void **state)
{
    (void)state;
    confirm_all(NULL);
    int64_t now = wall_ms();
    struct seen s;
    add_one("o-1", "user:u1", now, 0);
    assert_int_equal(store_set_state(S, "o-1", "sending", "", now + 1), 0);
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(receipts_of("o-1", &s), 0);
    assert_int_equal(store_set_state(S, "o-1", "delivered", "", now + 2), 0);
    assert_int_equal(store_set_state(S, "o-1", "delivered", "again", now + 3), 0);
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(receipts_of("o-1", &s), 1);
    assert_int_equal(s.queued_ms, now + 2);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    char sql[256];
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM notifications WHERE id = 'o-1' AND updated_ms = %lld"
             " AND reason = 'again'",
             (long long)(now + 3));
    assert_int_equal(count(db, sql), 1); /* the row did change */
    assert_int_equal(store_set_state(S, "o-1", "queued", "", now + 4), 0);
    assert_int_equal(store_set_state(S, "o-1", "failed", "x", now + 5), 0);
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(receipts_of("o-1", &s), 2);
    assert_string_equal(s.state, "failed");

    /* by id: inserted behind the store's back, so it has no rowid hint */
    snprintf(sql, sizeof(sql),
             "INSERT INTO notifications(id, agent, recipient, priority, received_ms, body, state,"
             " updated_ms) VALUES ('o-2', 'gw2', 'user:u1', 2, %lld, '{}', 'sending', %lld)",
             (long long)now, (long long)now);
    exec(db, sql);
    assert_int_equal(store_set_state(S, "o-2", "expired", "ttl", now + 6), 0);
    assert_int_equal(store_set_state(S, "o-2", "expired", "ttl", now + 7), 0);
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(receipts_of("o-2", &s), 1);
    assert_string_equal(s.agent, "gw2");
    assert_string_equal(s.state, "expired");

    /* stored already expired (the ttl passed before the hub saw it) */
    add_one("o-3", "user:u1", now, now - 10000);
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(receipts_of("o-3", &s), 1);
    assert_string_equal(s.state, "expired");

    /* erasure: o-4 pending -> dropped (one receipt), o-5 ended already */
    add_one("o-4", "user:u9", now, 0);
    add_one("o-5", "user:u9", now, 0);
    assert_int_equal(store_set_state(S, "o-5", "delivered", "", now + 1), 0);
    assert_int_equal(store_admin_erase_notifications(S, "u9", now + 2, NULL), 0);
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(receipts_of("o-4", &s), 1);
    assert_string_equal(s.state, "dropped");
    assert_int_equal(receipts_of("o-5", &s), 1);
    assert_string_equal(s.state, "delivered");

    /* confirmed: the same receipts, now from the history */
    int64_t top = 0;
    assert_int_equal(store_receipts_top(S, &top), 0);
    assert_int_equal(store_receipts_delete(S, "gw2", 1, top, NULL), 0);
    confirm_all(NULL);
    const char *ids[] = {"o-1", "o-2", "o-3", "o-4", "o-5"};
    const int want[] = {2, 1, 1, 1, 1};
    for (unsigned i = 0; i < 5; i++) {
        assert_int_equal(receipts_of(ids[i], &s), want[i]);
        assert_true(s.confirmed_ms > 0);
    }
    sqlite3_close(db);
}

/* receipt_log is found by the notification's received_ms (schema v12):
 * notifications received in the same millisecond each see only their own
 * receipts, and the old index on the text id is gone. */
static void test_log_by_received_ms(void **state)
{
    (void)state;
    confirm_all(NULL);
    int64_t now = wall_ms();
    char id[16];
    for (unsigned i = 0; i < 6; i++) {
        snprintf(id, sizeof(id), "same-%u", i);
        add_one(id, "user:u1", now, 0);
        assert_int_equal(store_set_state(S, id, i % 2 ? "failed" : "delivered", "", now + i), 0);
    }
    assert_int_equal(store_set_state(S, "same-0", "queued", "", now + 9), 0);
    assert_int_equal(store_set_state(S, "same-0", "failed", "", now + 10), 0);
    assert_int_equal(store_commit(S), 0);
    confirm_all(NULL);
    struct seen s;
    for (unsigned i = 0; i < 6; i++) {
        snprintf(id, sizeof(id), "same-%u", i);
        assert_int_equal(receipts_of(id, &s), i == 0 ? 2 : 1);
        assert_int_equal(s.queued_ms, i == 0 ? now + 10 : now + (int64_t)i);
        assert_string_equal(s.state, i % 2 || i == 0 ? "failed" : "delivered");
    }
    sqlite3 *db;
    assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
    char sql[160];
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM receipt_log WHERE notification_id LIKE 'same-%%'"
             " AND received_ms = %lld",
             (long long)now);
    assert_int_equal(count(db, sql), 7);
    assert_int_equal(count(db, "SELECT count(*) FROM sqlite_master WHERE type = 'index'"
                               " AND name = 'receipt_log_by_received'"),
                     1);
    assert_int_equal(count(db, "SELECT count(*) FROM sqlite_master WHERE type = 'index'"
                               " AND name = 'receipt_log_by_id'"),
                     0);
    sqlite3_close(db);
}

/* A database as version 9 left it (receipt_log by text id, outbox rows
 * without received_ms, the v5 triggers) opens as version 12 (v11 drops the
 * insert trigger, v12 keys the log by received_ms): its log rows
 * and pending receipts get their notification's received_ms, are found by
 * it, and the new triggers write receipts as before. */
static void test_migration_v12(void **state)
{
    (void)state;
    confirm_all(NULL);
    store_close(S);
    S = NULL;
    sqlite3 *db;
    assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
    exec(db, "BEGIN;"
             "DROP TRIGGER receipts_on_state; DROP TRIGGER IF EXISTS receipts_on_insert;"
             "DROP INDEX receipt_log_by_received;"
             /* before the triggers: their receipts are set below */
             "INSERT INTO notifications(id, agent, recipient, priority, received_ms, body, state,"
             " updated_ms) VALUES ('m-1', 'gw1', 'user:u1', 2, 1234, '{}', 'delivered', 1300),"
             " ('m-2', 'gw1', 'user:u1', 2, 1234, '{}', 'failed', 1400);"
             /* a log large enough that the migration's UPDATE journals
              * megabytes (platform/db.c: SQLite 3.40.1 failed it with
              * SQLITE_FULL when the journal spilled past a raised
              * threshold; the hub keeps journals in memory) */
             "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 60000)"
             " INSERT INTO notifications(id, agent, recipient, priority, received_ms, body, state,"
             " updated_ms) SELECT printf('bulk-%08x-%d', (i * 2654435761) % 4294967296, i),"
             " 'gw1', 'user:u1', 2, 5000 + i, '{}', 'delivered', 6000 + i FROM c;"
             "INSERT INTO receipt_log(notification_id, agent, state, queued_ms, confirmed_ms)"
             " SELECT id, agent, state, updated_ms, updated_ms + 5 FROM notifications"
             " WHERE id LIKE 'bulk-%';"
             "ALTER TABLE receipt_log DROP COLUMN received_ms;"
             "ALTER TABLE receipts DROP COLUMN received_ms;"
             "CREATE INDEX receipt_log_by_id ON receipt_log(notification_id);"
             "CREATE TRIGGER receipts_on_state AFTER UPDATE OF state ON notifications"
             "  WHEN (NEW.state = 'delivered' OR NEW.state = 'failed' OR NEW.state = 'suppressed'"
             "  OR NEW.state = 'expired' OR NEW.state = 'dropped') AND OLD.state IS NOT NEW.state"
             " BEGIN INSERT INTO receipts(notification_id, agent, state, reason, at_ms)"
             " VALUES (NEW.id, NEW.agent, NEW.state, NEW.reason, NEW.updated_ms); END;"
             "CREATE TRIGGER receipts_on_insert AFTER INSERT ON notifications"
             "  WHEN (NEW.state = 'delivered' OR NEW.state = 'failed' OR NEW.state = 'suppressed'"
             "  OR NEW.state = 'expired' OR NEW.state = 'dropped')"
             " BEGIN INSERT INTO receipts(notification_id, agent, state, reason, at_ms)"
             " VALUES (NEW.id, NEW.agent, NEW.state, NEW.reason, NEW.updated_ms); END;"
             "INSERT INTO receipt_log(notification_id, agent, state, queued_ms, confirmed_ms)"
             " VALUES ('m-1', 'gw1', 'delivered', 1300, 1350);"
             "INSERT INTO receipts(notification_id, agent, state, reason, at_ms)"
             " VALUES ('m-2', 'gw1', 'failed', 'x', 1400);"
             "PRAGMA user_version = 9;"
             "COMMIT;");
    char err[256];
    assert_int_equal(store_open(dbpath, DB_SYNC_NORMAL, &S, err, sizeof(err)), 0);
    assert_int_equal(count(db, "PRAGMA user_version"), 12);
    assert_int_equal(count(db, "SELECT count(*) FROM receipt_log WHERE notification_id LIKE 'bulk-%'"
                               " AND received_ms > 5000"),
                     60000);
    assert_int_equal(count(db, "SELECT received_ms FROM receipt_log WHERE notification_id = 'm-1'"),
                     1234);
    assert_int_equal(count(db, "SELECT received_ms FROM receipts WHERE notification_id = 'm-2'"),
                     1234);
    struct seen s;
    assert_int_equal(receipts_of("m-1", &s), 1);
    assert_int_equal(s.confirmed_ms, 1350);
    assert_int_equal(receipts_of("m-2", &s), 1);
    assert_int_equal(s.confirmed_ms, 0);
    /* the v12 trigger: a new terminal state, one more receipt */
    assert_int_equal(store_set_state(S, "m-1", "queued", "", 1500), 0);
    assert_int_equal(store_set_state(S, "m-1", "failed", "y", 1600), 0);
    assert_int_equal(store_commit(S), 0);
    confirm_all(NULL);
    assert_int_equal(receipts_of("m-1", &s), 2);
    assert_int_equal(s.queued_ms, 1600);
    assert_true(s.confirmed_ms > 0);
    assert_int_equal(receipts_of("m-2", &s), 1);
    assert_true(s.confirmed_ms > 0);
    assert_int_equal(count(db, "SELECT count(*) FROM receipt_log WHERE received_ms = 1234"), 3);
    sqlite3_close(db);
}

int main(void)
{
    /* The hub's setting (hub/main.c), before any database is opened. */
    if (db_stmt_journals_in_memory() < 0) {
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pending_then_confirmed),
        cmocka_unit_test(test_counts_and_seq_reuse),
        cmocka_unit_test(test_pruned),
        cmocka_unit_test(test_tally),
        cmocka_unit_test(test_next_batches),
        cmocka_unit_test(test_one_receipt_per_terminal_state),
        cmocka_unit_test(test_log_by_received_ms),
        cmocka_unit_test(test_migration_v12),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
