/* test_store_hot.c - the hub store's hot path (hub/store.c): schema v8
 * (attempts and decisions without AUTOINCREMENT, migrated with their rows
 * and ids), schema v9 (the work index holds the queue only, still used by
 * what reads it), the rowid hints of store_set_state (a stale hint never touches
 * another row), multi-row inserts (store_add_notifications: duplicates in
 * one statement and across statements, expired rows and their receipts,
 * schema v11 without the insert trigger), SQLite's allocator from
 * platform/db.c, the buffered decision and attempt rows of
 * hub/store_rows.c, and schema v10 (two indexes fewer). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "error.h"
#include "proto.h"
#include "store.h"
#include "store_engine.h"
#include "testdb.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64], dbpath[128];
static store_t *S;
static const int64_t NOW = 1700000000000;

static void open_store(void)
{
    char err[512] = "";
    if (store_open(dbpath, DB_SYNC_NORMAL, &S, err, sizeof(err)) != 0) {
        fail_msg("store_open: %s", err);
    }
}

static void close_store(void)
{
    store_close(S);
    S = NULL;
}

static int setup(void **state)
{
    (void)state;
    if (testdb_tmpdir(dir, sizeof(dir), "/tmp/tidings-hot-XXXXXX", dbpath, sizeof(dbpath), "hub.db") < 0) {
        return -1;
    }
    open_store();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (S) {
        close_store();
    }
    testdb_remove(dbpath, dir);
    return 0;
}

/* Insert a notification with this id; 1 inserted, 0 duplicate. */
static int add(const char *id)
{
    char json[256];
    int len = snprintf(json, sizeof(json),
                       "{\"id\":\"%s\",\"to\":\"user:alice\",\"title\":\"t\"}", id);
    struct notification n;
    struct proto_error pe;
    assert_int_equal(proto_parse(json, (size_t)len, &n, &pe), 0);
    bool ins = false;
    assert_int_equal(store_add_notification(S, &n, "gw1", json, (size_t)len, NOW, &ins), 0);
    notification_free(&n);
    return ins ? 1 : 0;
}

/* The state of notification id ("" when there is none). */
static void state_of(const char *id, char *state, size_t len)
{
    char body[PROTO_MAX_WIRE + 1];
    int64_t exp;
    state[0] = '\0';
    int rc = store_notification_get(S, id, body, sizeof(body), &exp, state, len);
    assert_true(rc >= 0);
    if (rc == 0) {
        state[0] = '\0';
    }
}

/* Run SQL on a second connection (the store closed); one integer back. */
static int64_t raw_int(const char *sql)
{
    return testdb_int(dbpath, sql);
}

static void raw_exec(const char *sql)
{
    testdb_exec(dbpath, sql);
}

/* A database as version 7 left it (AUTOINCREMENT, a sqlite_sequence ahead
 * of the rows) opens as version 8 with every row and id kept, and new ids
 * continue after the highest. */
static void test_migration_v8(void **state)
{
    (void)state;
    close_store();
    /* Put the v7 tables back, with rows: ids 1, 2 and 7. */
    raw_exec("BEGIN;"
             "DROP TABLE attempts; DROP TABLE decisions;"
             "CREATE TABLE attempts (id INTEGER PRIMARY KEY AUTOINCREMENT,"
             " notification_id TEXT NOT NULL, channel TEXT NOT NULL, device_id INTEGER,"
             " state TEXT NOT NULL, status INTEGER NOT NULL DEFAULT 0,"
             " reason TEXT NOT NULL DEFAULT '', provider_id TEXT NOT NULL DEFAULT '',"
             " started_ms INTEGER NOT NULL, finished_ms INTEGER);"
             "CREATE INDEX attempts_by_notification ON attempts(notification_id);"
             "CREATE INDEX attempts_by_time ON attempts(started_ms);"
             "CREATE TABLE decisions (id INTEGER PRIMARY KEY AUTOINCREMENT,"
             " notification_id TEXT NOT NULL, user_id TEXT NOT NULL,"
             " channel TEXT NOT NULL DEFAULT '', action TEXT NOT NULL, rule TEXT NOT NULL,"
             " until_ms INTEGER NOT NULL DEFAULT 0, at_ms INTEGER NOT NULL);"
             "CREATE INDEX decisions_by_notification ON decisions(notification_id);"
             "INSERT INTO attempts(id, notification_id, channel, device_id, state, status,"
             " reason, provider_id, started_ms, finished_ms) VALUES"
             " (1, 'n1', 'apns', 3, 'ok', 200, '', 'p1', 10, 11),"
             " (2, 'n1', 'apns', 4, 'drop', 410, 'Unregistered', 'p2', 12, 13),"
             " (7, 'n2', 'fcm', 5, 'sending', 0, '', '', 14, NULL);"
             "INSERT INTO decisions(id, notification_id, user_id, channel, action, rule,"
             " until_ms, at_ms) VALUES (1, 'n1', 'alice', 'push', 'allow', '', 0, 10),"
             " (7, 'n2', 'alice', '', 'hold', 'quiet_hours', 99, 11);"
             /* v12 runs again too: its columns, index and trigger out */
             "DROP TRIGGER receipts_on_state; DROP TRIGGER IF EXISTS receipts_on_insert;"
             "DROP INDEX receipt_log_by_received;"
             "ALTER TABLE receipt_log DROP COLUMN received_ms;"
             "ALTER TABLE receipts DROP COLUMN received_ms;"
             "CREATE INDEX receipt_log_by_id ON receipt_log(notification_id);"
             "PRAGMA user_version = 7;"
             "COMMIT;");
    assert_int_equal(raw_int("SELECT count(*) FROM sqlite_sequence"
                             " WHERE name IN ('attempts', 'decisions')"),
                     2);
    open_store();
    close_store();
    assert_int_equal(raw_int("PRAGMA user_version"), 12); /* the newest, through v8 */
    assert_int_equal(raw_int("SELECT count(*) FROM sqlite_master WHERE sql LIKE '%AUTOINCREMENT%'"
                             " AND name IN ('attempts', 'decisions')"),
                     0);
    assert_int_equal(raw_int("SELECT count(*) FROM sqlite_sequence"
                             " WHERE name IN ('attempts', 'decisions')"),
                     0);
    assert_int_equal(raw_int("SELECT count(*) FROM attempts"), 3);
    assert_int_equal(raw_int("SELECT status FROM attempts WHERE id = 2 AND reason = 'Unregistered'"
                             " AND provider_id = 'p2' AND device_id = 4 AND started_ms = 12"
                             " AND finished_ms = 13 AND notification_id = 'n1'"),
                     410);
    assert_int_equal(raw_int("SELECT count(*) FROM attempts WHERE id = 7 AND finished_ms IS NULL"),
                     1);
    assert_int_equal(raw_int("SELECT until_ms FROM decisions WHERE id = 7 AND rule = 'quiet_hours'"),
                     99);
    /* The indexes are back; attempts_by_time only until v10 dropped it. */
    assert_int_equal(raw_int("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name IN"
                             " ('attempts_by_notification', 'decisions_by_notification')"),
                     2);
    assert_int_equal(raw_int("SELECT count(*) FROM sqlite_master WHERE name = 'attempts_by_time'"),
                     0);
    open_store();
    int64_t att;
    assert_int_equal(store_attempt_begin(S, "n3", "apns", 3, NOW, &att), 0);
    assert_int_equal(att, 8);
    struct store_decision d = {.notification_id = "n3", .user_id = "alice", .channel = "push",
                               .action = "allow", .rule = "", .at_ms = NOW};
    assert_int_equal(store_decision_add(S, &d), 0);
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(store_decisions_of(S, "n3", NULL, NULL), 1);
    close_store();
    assert_int_equal(raw_int("SELECT max(id) FROM decisions"), 8);
    open_store();
}

static int64_t taken_n;
static void on_taken(void *arg, const char *id, const char *json, size_t len, int64_t exp);

/* The plan of sql (EXPLAIN QUERY PLAN, every detail joined) on a second
 * connection. */
static void plan_of(const char *sql, char *out, size_t cap)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
    char q[512];
    snprintf(q, sizeof(q), "EXPLAIN QUERY PLAN %s", sql);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, q, -1, &st, NULL), SQLITE_OK);
    size_t n = 0;
    out[0] = '\0';
    while (sqlite3_step(st) == SQLITE_ROW && n + 1 < cap) {
        int w = snprintf(out + n, cap - n, "%s; ", (const char *)sqlite3_column_text(st, 3));
        n += w > 0 ? (size_t)w : 0;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* Schema v9: the work index holds the queue only, and what reads the queue
 * still finds it through the index (a scan here would be a silent cliff);
 * rows being delivered are not in it, and the recovery at start still puts
 * them back in the queue. */
static void test_work_index_v9(void **state)
{
    (void)state;
    assert_int_equal(raw_int("SELECT count(*) FROM sqlite_master WHERE name = 'notifications_work'"
                             " AND sql LIKE '%WHERE state = ''queued''%'"),
                     1);
    char plan[512];
    plan_of("SELECT rowid FROM notifications WHERE state = 'queued'"
            " ORDER BY priority DESC, received_ms LIMIT 10",
            plan, sizeof(plan));
    assert_non_null(strstr(plan, "notifications_work"));
    assert_null(strstr(plan, "TEMP B-TREE"));
    plan_of("SELECT count(*) FROM notifications WHERE state = 'queued'", plan, sizeof(plan));
    assert_non_null(strstr(plan, "notifications_work"));
    assert_int_equal(add("w1"), 1);
    assert_int_equal(add("w2"), 1);
    assert_int_equal(store_commit(S), 0);
    int64_t q = -1;
    assert_int_equal(store_queue_depth(S, &q), 0);
    assert_int_equal(q, 2);
    taken_n = 0;
    assert_int_equal(store_take_queued(S, 10, on_taken, NULL), 2);
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(store_queue_depth(S, &q), 0);
    assert_int_equal(q, 0);
    assert_int_equal(raw_int("SELECT count(*) FROM notifications INDEXED BY notifications_work"
                             " WHERE state = 'queued'"),
                     0);
    /* a restart finds them 'sending' and queues them again */
    assert_int_equal(store_recover(S, NOW), 2);
    assert_int_equal(store_queue_depth(S, &q), 0);
    assert_int_equal(q, 2);
}

/* A hint left by a rolled-back insert points at a rowid that a later
 * insert reuses: setting the first id's state must not touch that row. */
static void test_stale_hint(void **state)
{
    (void)state;
    assert_int_equal(add("keep-0"), 1);
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(store_admin_begin(S), 0);
    assert_int_equal(add("ghost"), 1);
    assert_int_equal(store_admin_end(S, false), 0); /* ROLLBACK TO: ghost is gone */
    assert_int_equal(add("other"), 1);              /* max(rowid) + 1: ghost's rowid */
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(store_set_state(S, "ghost", "delivered", "", NOW), 0);
    assert_int_equal(store_commit(S), 0);
    char st[32];
    state_of("other", st, sizeof(st));
    assert_string_equal(st, "queued");
    state_of("ghost", st, sizeof(st));
    assert_string_equal(st, "");
    /* The hinted and the unhinted (a new connection: no hints) paths. */
    assert_int_equal(store_set_state(S, "other", "delivered", "", NOW), 0);
    assert_int_equal(store_commit(S), 0);
    state_of("other", st, sizeof(st));
    assert_string_equal(st, "delivered");
    close_store();
    open_store();
    assert_int_equal(store_set_state(S, "keep-0", "failed", "x", NOW), 0);
    assert_int_equal(store_commit(S), 0);
    state_of("keep-0", st, sizeof(st));
    assert_string_equal(st, "failed");
}

static void on_taken(void *arg, const char *id, const char *json, size_t len, int64_t exp)
{
    (void)arg;
    (void)json;
    (void)len;
    (void)exp;
    (void)id;
    taken_n++;
}

/* Many notifications through add, take and set_state (hints of both, and
 * colliding slots: more ids than hint slots). */
static void test_hints_many(void **state)
{
    (void)state;
    enum { N = 5000 };
    char id[32];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "n-%d", i);
        assert_int_equal(add(id), 1);
    }
    assert_int_equal(store_commit(S), 0);
    taken_n = 0;
    while (store_take_queued(S, 1000, on_taken, NULL) > 0) {
    }
    assert_int_equal(taken_n, N);
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "n-%d", i);
        assert_int_equal(store_set_state(S, id, i % 2 ? "delivered" : "failed", "", NOW), 0);
    }
    assert_int_equal(store_commit(S), 0);
    int64_t n;
    assert_int_equal(store_count_state(S, "delivered", &n), 0);
    assert_int_equal(n, N / 2);
    assert_int_equal(store_count_state(S, "failed", &n), 0);
    assert_int_equal(n, N / 2);
    assert_int_equal(store_count_state(S, "sending", &n), 0);
    assert_int_equal(n, 0);
}

/* Rows for store_add_notifications: ids[i], parsed into ns[i]; ttl 1 s
 * accepted long ago (expired at NOW) where expired[i]. */
#define ADD_N 40
static char add_json[ADD_N][256];
static struct notification add_ns[ADD_N];

static void make_rows(struct store_new *rows, const char *const *ids, const bool *expired,
                      size_t n, bool take)
{
    assert_true(n <= ADD_N);
    for (size_t i = 0; i < n; i++) {
        int len = snprintf(add_json[i], sizeof(add_json[i]),
                           "{\"id\":\"%s\",\"to\":\"user:alice\",\"title\":\"t%zu\"%s}",
                           ids[i], i,
                           expired && expired[i] ? ",\"ttl\":1,\"accepted_at\":\"2020-01-01T00:00:00Z\"" : "");
        struct proto_error pe;
        assert_int_equal(proto_parse(add_json[i], (size_t)len, &add_ns[i], &pe), 0);
        rows[i] = (struct store_new){
            .n = &add_ns[i], .json = add_json[i], .len = (size_t)len, .take = take};
    }
}

static void free_rows(size_t n)
{
    for (size_t i = 0; i < n; i++) {
        notification_free(&add_ns[i]);
    }
}

/* Multi-row inserts: 21 rows (statements of 16, 4 and 1) with a row stored
 * before, an id twice in the first statement, an id of the first statement
 * again in the second and third, and expired rows: each id stored once, the
 * first of its rows inserted, the others duplicates; taken only when
 * inserted and not expired; an expired row gets its receipt (schema v11
 * dropped the insert trigger that wrote it); new rows get consecutive
 * rowids in the order given (what the hints assume). */
static void test_add_many(void **state)
{
    (void)state;
    assert_int_equal(add("old"), 1);
    assert_int_equal(store_commit(S), 0);
    static const char *const ids[21] = {
        "m0",  "m1",  "old", "m3",  "m1",  "m5",  "m6",  "m7", "m8",  "m9",  "m10",
        "m11", "m12", "m13", "m14", "m15", "m16", "m3",  "m18", "m19", "m18"};
    bool expired[21] = {false};
    expired[6] = expired[19] = true;
    /* duplicates: index 2 (stored before), 4 (= 1), 17 (= 3), 20 (= 18) */
    struct store_new rows[21];
    make_rows(rows, ids, expired, 21, true);
    assert_int_equal(store_add_notifications(S, "gw1", NOW, rows, 21), 0);
    for (size_t i = 0; i < 21; i++) {
        bool dup = i == 2 || i == 4 || i == 17 || i == 20;
        assert_int_equal(rows[i].rc, 0);
        assert_int_equal(rows[i].inserted, !dup);
        assert_int_equal(rows[i].taken, !dup && !expired[i]);
    }
    assert_int_equal(store_commit(S), 0);
    free_rows(21);
    close_store();
    assert_int_equal(raw_int("SELECT count(*) FROM notifications"), 18); /* 17 + old */
    assert_int_equal(raw_int("SELECT count(*) FROM notifications WHERE state = 'sending'"), 15);
    assert_int_equal(raw_int("SELECT count(*) FROM notifications WHERE state = 'queued'"), 1);
    assert_int_equal(raw_int("SELECT count(*) FROM notifications WHERE state = 'expired'"
                             " AND reason != ''"),
                     2);
    assert_int_equal(raw_int("SELECT count(*) FROM notifications WHERE id = 'm1'"
                             " AND body LIKE '%\"t1\"%'"),
                     1); /* the first row of m1, not the second */
    assert_int_equal(raw_int("SELECT count(*) FROM receipts WHERE state = 'expired' AND agent = 'gw1'"
                             " AND notification_id IN ('m6', 'm19') AND at_ms = 1700000000000"),
                     2);
    assert_int_equal(raw_int("SELECT count(*) FROM receipts"), 2);
    assert_int_equal(raw_int("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'"
                             " AND tbl_name = 'notifications' AND sql LIKE '%AFTER INSERT%'"),
                     0);
    /* rowids in the order given, the duplicates skipped */
    assert_int_equal(raw_int("SELECT count(*) FROM notifications AS a JOIN notifications AS b"
                             " ON b.rowid = a.rowid + 1 WHERE a.id = 'm0' AND b.id = 'm1'"),
                     1);
    assert_int_equal(raw_int("SELECT count(*) FROM notifications AS a JOIN notifications AS b"
                             " ON b.rowid = a.rowid + 1 WHERE a.id = 'm16' AND b.id = 'm18'"),
                     1);
    open_store();
    /* Every row found again by its (hinted) rowid and by id. */
    for (size_t i = 0; i < 21; i++) {
        assert_int_equal(store_set_state(S, ids[i], "delivered", "", NOW), 0);
    }
    assert_int_equal(store_commit(S), 0);
    int64_t n;
    assert_int_equal(store_count_state(S, "delivered", &n), 0);
    assert_int_equal(n, 18);
    /* All duplicates: nothing inserted, nothing taken. */
    make_rows(rows, ids, NULL, 5, true);
    assert_int_equal(store_add_notifications(S, "gw1", NOW, rows, 5), 0);
    for (size_t i = 0; i < 5; i++) {
        assert_false(rows[i].inserted);
        assert_false(rows[i].taken);
    }
    free_rows(5);
    assert_int_equal(store_commit(S), 0);
}

/* A statement that fails stores none of its rows and says so in each; the
 * other statements of the call still run. */
static void test_add_fails(void **state)
{
    (void)state;
    close_store();
    raw_exec("CREATE TRIGGER boom BEFORE INSERT ON notifications WHEN NEW.id = 'f-boom'"
             " BEGIN SELECT RAISE(ABORT, 'boom'); END;");
    open_store();
    static const char *const ids[6] = {"f-0", "f-1", "f-boom", "f-3", "f-4", "f-5"};
    struct store_new rows[6]; /* statements of 4 and 2 rows */
    make_rows(rows, ids, NULL, 6, false);
    assert_true(store_add_notifications(S, "gw1", NOW, rows, 6) < 0);
    for (size_t i = 0; i < 6; i++) {
        assert_int_equal(rows[i].rc < 0, i < 4);
        assert_int_equal(rows[i].inserted, i >= 4);
        assert_false(rows[i].taken);
    }
    free_rows(6);
    assert_int_equal(store_commit(S), 0);
    close_store();
    assert_int_equal(raw_int("SELECT count(*) FROM notifications"), 2);
    assert_int_equal(raw_int("SELECT count(*) FROM notifications WHERE id IN ('f-4', 'f-5')"
                             " AND state = 'queued'"),
                     2);
    open_store();
}

/* SQLite's allocator from db_open (platform/db.c): every size class and
 * beyond, realloc keeping the bytes, blocks freed on another thread. */
static void *other_thread(void *arg)
{
    void **blocks = arg;
    sqlite3_free(blocks[0]); /* the loop thread's block, freed here */
    for (int n = 1; n < 9000; n = n * 3 + 1) {
        unsigned char *p = sqlite3_malloc(n);
        if (!p) {
            return (void *)1;
        }
        memset(p, 0x5a, (size_t)n);
        blocks[1] = p; /* the last one goes back to the loop thread */
        if (n * 3 + 1 < 9000) {
            sqlite3_free(p);
        }
    }
    return NULL;
}

static void test_allocator(void **state)
{
    (void)state;
    /* S is open: db_open has configured SQLite. */
    for (int round = 0; round < 3; round++) {
        unsigned char *keep[64];
        int k = 0;
        for (int n = 1; n <= 10000 && k < 64; n += 1 + n / 3, k++) {
            unsigned char *p = sqlite3_malloc(n);
            assert_non_null(p);
            assert_true(sqlite3_msize(p) >= (sqlite3_uint64)n);
            memset(p, (int)(n & 0xff), (size_t)n);
            keep[k] = p;
        }
        for (int i = 0; i < k; i++) {
            int n = (int)sqlite3_msize(keep[i]);
            unsigned char *q = sqlite3_realloc(keep[i], n * 2 + 5);
            assert_non_null(q);
            assert_true(sqlite3_msize(q) >= (sqlite3_uint64)(n * 2 + 5));
            keep[i] = q;
        }
        for (int i = 0; i < k; i++) {
            sqlite3_free(keep[i]);
        }
    }
    /* realloc keeps the bytes across classes */
    unsigned char *p = sqlite3_malloc(20);
    assert_non_null(p);
    for (int i = 0; i < 20; i++) {
        p[i] = (unsigned char)i;
    }
    p = sqlite3_realloc(p, 5000);
    assert_non_null(p);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(p[i], i);
    }
    sqlite3_free(p);
    void *blocks[2] = {sqlite3_malloc(100), NULL};
    assert_non_null(blocks[0]);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, other_thread, blocks), 0);
    void *ret = (void *)1;
    assert_int_equal(pthread_join(th, &ret), 0);
    assert_null(ret);
    assert_non_null(blocks[1]);
    sqlite3_free(blocks[1]); /* another thread's block, freed here */
    /* and the store still works */
    assert_int_equal(add("after-alloc"), 1);
    assert_int_equal(store_commit(S), 0);
}

/* Schema v10: attempts_by_time and notifications_scheduled are gone; the
 * work index holds 'queued' and 'scheduled' rows and still serves the take
 * and both counts. */
static void test_v10_indexes(void **state)
{
    (void)state;
    assert_int_equal(raw_int("SELECT count(*) FROM sqlite_master WHERE name IN"
                             " ('attempts_by_time', 'notifications_scheduled')"),
                     0);
    assert_int_equal(raw_int("SELECT count(*) FROM sqlite_master WHERE name = 'notifications_work'"
                             " AND sql LIKE '%state = ''queued'' OR state = ''scheduled''%'"),
                     1);
    char plan[512];
    plan_of("SELECT count(*) FROM notifications WHERE state = 'scheduled'", plan, sizeof(plan));
    assert_non_null(strstr(plan, "notifications_work"));
    assert_int_equal(add("s1"), 1);
    assert_int_equal(add("s2"), 1);
    assert_int_equal(add("s3"), 1);
    assert_int_equal(store_set_state(S, "s2", "scheduled", "", NOW), 0);
    assert_int_equal(store_commit(S), 0);
    int64_t n = -1;
    assert_int_equal(store_count_scheduled(S, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(store_queue_depth(S, &n), 0);
    assert_int_equal(n, 2);
    taken_n = 0;
    assert_int_equal(store_take_queued(S, 10, on_taken, NULL), 2); /* not the scheduled one */
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(store_count_scheduled(S, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(raw_int("SELECT count(*) FROM notifications INDEXED BY notifications_work"
                             " WHERE state = 'scheduled'"),
                     1);
}

struct stats_sum {
    int64_t n;
    int rows;
};

static void stats_cb(void *arg, const char *channel, const char *st, int64_t n, double mean_ms)
{
    (void)st;
    (void)mean_ms;
    struct stats_sum *ss = arg;
    if (strcmp(channel, "apns") == 0) {
        ss->n += n;
        ss->rows++;
    }
}

static int64_t stats_since(int64_t since)
{
    struct stats_sum ss = {0};
    int rows = store_admin_channel_stats(S, since, stats_cb, &ss);
    assert_int_equal(rows, ss.rows); /* the count of rows, one per (channel, state) */
    return ss.n;
}

/* Per-channel stats over a window find the window by the attempts' ids
 * (no index on started_ms since v10): exact at every boundary, and still
 * right after the wall clock stepped back by less than the slack. */
static void test_channel_stats_window(void **state)
{
    (void)state;
    assert_int_equal(stats_since(NOW), 0); /* no attempts at all */
    assert_int_equal(add("st-1"), 1);
    int64_t att = 0;
    const int64_t step = 10000; /* 300 attempts 10 s apart: 50 minutes */
    for (int i = 0; i < 300; i++) {
        assert_int_equal(store_attempt_begin(S, "st-1", "apns", 1, NOW + i * step, &att), 0);
        if (i % 3 == 0) {
            assert_int_equal(store_attempt_end(S, att, "ok", 200, "", "", NOW + i * step + 5), 0);
        }
    }
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(stats_since(NOW - 1), 300);
    assert_int_equal(stats_since(NOW), 300);
    assert_int_equal(stats_since(NOW + 1), 299);
    assert_int_equal(stats_since(NOW + 100 * step), 200);
    assert_int_equal(stats_since(NOW + 100 * step + 1), 199);
    assert_int_equal(stats_since(NOW + 299 * step), 1);
    assert_int_equal(stats_since(NOW + 299 * step + 1), 0);
    /* the wall clock stepped back 200 s (less than the search's slack):
     * ten more attempts, the newest ids, with earlier times than the last */
    for (int k = 0; k < 10; k++) {
        assert_int_equal(store_attempt_begin(S, "st-1", "apns", 1, NOW + 279 * step + k, &att), 0);
    }
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(stats_since(NOW + 278 * step), 22 + 10);
    assert_int_equal(stats_since(NOW + 290 * step), 10);
    assert_int_equal(stats_since(NOW + 100 * step), 200 + 10);
}

/* Decisions and attempts are buffered and written several rows per
 * statement (hub/store_rows.c): a read in the same transaction sees them,
 * in order; an attempt can end in the iteration that began it; a savepoint
 * rolled back takes exactly what was added after it; ids continue after a
 * reopen. */
struct dec_seen {
    int n;
    char last[32];
    bool ordered;
};

static void dec_cb(void *arg, const struct store_decision *d)
{
    struct dec_seen *ds = arg;
    char want[32];
    snprintf(want, sizeof(want), "r%d", ds->n);
    if (strncmp(d->rule, "r", 1) == 0 && strcmp(d->rule, want) != 0) {
        ds->ordered = false;
    }
    snprintf(ds->last, sizeof(ds->last), "%s", d->rule);
    ds->n++;
}

static void test_buffered_rows(void **state)
{
    (void)state;
    assert_int_equal(add("buf-1"), 1);
    char rule[32];
    for (int i = 0; i < 37; i++) { /* two full statements and a remainder of 5 */
        snprintf(rule, sizeof(rule), "r%d", i);
        struct store_decision d = {.notification_id = "buf-1", .user_id = "alice",
                                   .channel = "push", .action = "allow", .rule = rule,
                                   .at_ms = NOW + i};
        assert_int_equal(store_decision_add(S, &d), 0);
    }
    struct dec_seen ds = {.ordered = true};
    assert_int_equal(store_decisions_of(S, "buf-1", dec_cb, &ds), 37);
    assert_int_equal(ds.n, 37);
    assert_true(ds.ordered);
    assert_string_equal(ds.last, "r36");

    int64_t first = 0, id = 0;
    for (int i = 0; i < 21; i++) {
        assert_int_equal(store_attempt_begin(S, "buf-1", "push", 7, NOW, &id), 0);
        if (i == 0) {
            first = id;
        }
        assert_int_equal(id, first + i);
    }
    /* ended before any commit: its row was still buffered */
    assert_int_equal(store_attempt_end(S, id, "ok", 200, "", "p-1", NOW + 5), 0);
    assert_int_equal(store_commit(S), 0);

    /* a savepoint rolled back: the row before it stays, the one inside goes */
    struct store_decision before = {.notification_id = "buf-1", .user_id = "alice",
                                    .action = "hold", .rule = "before", .at_ms = NOW};
    struct store_decision inside = before;
    inside.rule = "inside";
    assert_int_equal(store_decision_add(S, &before), 0);
    assert_int_equal(store_admin_begin(S), 0);
    assert_int_equal(store_decision_add(S, &inside), 0);
    assert_int_equal(store_admin_end(S, false), 0);
    assert_int_equal(store_commit(S), 0);
    close_store();

    assert_int_equal(raw_int("SELECT count(*) FROM decisions WHERE notification_id = 'buf-1'"), 38);
    assert_int_equal(raw_int("SELECT count(*) FROM decisions WHERE rule = 'before'"), 1);
    assert_int_equal(raw_int("SELECT count(*) FROM decisions WHERE rule = 'inside'"), 0);
    assert_int_equal(raw_int("SELECT count(*) FROM attempts WHERE notification_id = 'buf-1'"), 21);
    assert_int_equal(raw_int("SELECT count(*) FROM attempts WHERE state = 'ok'"
                             " AND provider_id = 'p-1' AND finished_ms > 0"),
                     1);
    assert_int_equal(raw_int("SELECT id FROM attempts WHERE provider_id = 'p-1'"), id);

    /* a new connection continues after the highest id */
    open_store();
    int64_t next = 0;
    assert_int_equal(store_attempt_begin(S, "buf-1", "push", 7, NOW, &next), 0);
    assert_int_equal(next, id + 1);
    assert_int_equal(store_commit(S), 0);

    /* The inserts are OR IGNORE: a row that would be ignored (here an id
     * taken behind the store's back) fails the commit instead of being
     * lost silently, and the store goes on. */
    char sql[200];
    snprintf(sql, sizeof(sql),
             "INSERT INTO attempts(id, notification_id, channel, state, started_ms)"
             " VALUES (%lld, 'other', 'apns', 'ok', 1)",
             (long long)(next + 1));
    raw_exec(sql);
    int64_t clash = 0;
    assert_int_equal(store_attempt_begin(S, "buf-1", "push", 7, NOW, &clash), 0);
    assert_int_equal(clash, next + 1);
    assert_true(store_commit(S) < 0);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM attempts WHERE id = %lld"
             " AND notification_id = 'other'", (long long)clash);
    assert_int_equal(raw_int(sql), 1);
    int64_t after = 0;
    assert_int_equal(store_attempt_begin(S, "buf-1", "push", 7, NOW, &after), 0);
    assert_int_equal(store_commit(S), 0);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM attempts WHERE id = %lld"
             " AND notification_id = 'buf-1'", (long long)after);
    assert_int_equal(raw_int(sql), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_migration_v8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_hint, setup, teardown),
        cmocka_unit_test_setup_teardown(test_work_index_v9, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hints_many, setup, teardown),
        cmocka_unit_test_setup_teardown(test_add_many, setup, teardown),
        cmocka_unit_test_setup_teardown(test_add_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_allocator, setup, teardown),
        cmocka_unit_test_setup_teardown(test_buffered_rows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v10_indexes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_channel_stats_window, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
