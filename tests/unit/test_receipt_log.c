/* test_receipt_log.c - the history of receipts (hub/store_admin.c,
 * receipt_log): a receipt is pending while its outbox row exists, confirmed
 * with the deletion's time once the row is deleted (the broker's PUBACK),
 * and receipt_log is pruned by age and by row count. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "proto.h"
#include "store.h"
#include "store_engine.h"

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
    snprintf(dir, sizeof(dir), "/tmp/tidings-rlog-XXXXXX");
    if (!mkdtemp(dir)) {
        return -1;
    }
    snprintf(dbpath, sizeof(dbpath), "%s/hub.db", dir);
    char err[256];
    return store_open(dbpath, DB_SYNC_NORMAL, &S, err, sizeof(err)) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    store_close(S);
    const char *suffix[] = {"", "-wal", "-shm"};
    char p[160];
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof(p), "%s%s", dbpath, suffix[i]);
        unlink(p);
    }
    rmdir(dir);
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
    assert_int_equal(store_receipts_delete(S, "gw1", 1, max_seq), 0);
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

static void test_pruned(void **state)
{
    (void)state;
    sqlite3 *db;
    assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    exec(db, "DELETE FROM receipt_log");
    /* rows 1..600 are 40 days old, 601.. are new (rows come in time order:
     * the age is measured from the row that prunes). */
    exec(db, "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 767)"
             " INSERT INTO receipt_log(rowid, notification_id, agent, state, queued_ms,"
             " confirmed_ms) SELECT i, 'p-' || i, 'gw1', 'delivered', 1,"
             " CASE WHEN i <= 600 THEN 1700000000000 - 40 * 86400000 ELSE 1700000000000 END"
             " FROM c");
    /* rowids 256 and 512 were old themselves: nothing is 30 days older */
    assert_int_equal(count(db, "SELECT count(*) FROM receipt_log"), 767);
    exec(db, "INSERT INTO receipt_log(rowid, notification_id, agent, state, queued_ms,"
             " confirmed_ms) VALUES (768, 'p-768', 'gw1', 'delivered', 1, 1700000000000)");
    /* rowid 768: at most 512 of the oldest go: 1..512 */
    assert_int_equal(count(db, "SELECT min(rowid) FROM receipt_log"), 513);
    assert_int_equal(count(db, "SELECT count(*) FROM receipt_log"), 256);
    exec(db, "WITH RECURSIVE c(i) AS (SELECT 769 UNION ALL SELECT i + 1 FROM c WHERE i < 1024)"
             " INSERT INTO receipt_log(rowid, notification_id, agent, state, queued_ms,"
             " confirmed_ms) SELECT i, 'p-' || i, 'gw1', 'delivered', 1, 1700000000000 FROM c");
    /* rowid 1024: the rest of the old ones, 513..600; the new ones stay */
    assert_int_equal(count(db, "SELECT min(rowid) FROM receipt_log"), 601);
    assert_int_equal(count(db, "SELECT count(*) FROM receipt_log"), 424);
    /* more than 1,000,000 rows back: pruned whatever their age */
    exec(db, "INSERT INTO receipt_log(rowid, notification_id, agent, state, queued_ms,"
             " confirmed_ms) VALUES (1000960, 'p-big', 'gw1', 'delivered', 1, 1700000000000)");
    /* (601..960 went; 961..1024 are within the last 1,000,000) */
    assert_int_equal(count(db, "SELECT min(rowid) FROM receipt_log"), 961);
    assert_int_equal(count(db, "SELECT count(*) FROM receipt_log"), 65);
    /* not on other rows: 1000961 is no multiple of 256 */
    exec(db, "INSERT INTO receipt_log(notification_id, agent, state, queued_ms, confirmed_ms)"
             " VALUES ('p-next', 'gw1', 'delivered', 1, 1)");
    assert_int_equal(count(db, "SELECT count(*) FROM receipt_log"), 66);
    sqlite3_close(db);
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
    assert_int_equal(store_receipts_delete(S, "gw1", 1, top), 0);
    assert_int_equal(store_receipts_delete(S, "gw1", 1, top), 0);
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
    assert_int_equal(store_receipts_delete(S, "gw1", 1, 1), 0);
    assert_int_equal(store_commit(S), 0);
    memset(&c, 0, sizeof(c));
    assert_int_equal(store_terminal_counts(S, on_count, &c), 0);
    assert_int_equal(c.delivered, c0.delivered + 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pending_then_confirmed),
        cmocka_unit_test(test_counts_and_seq_reuse),
        cmocka_unit_test(test_pruned),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
