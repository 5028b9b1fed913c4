/* test_outbox.c - the agent's durable queue. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "error.h"
#include "outbox.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64], path[128];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/tidings-outbox-XXXXXX");
    if (!mkdtemp(dir)) {
        return -1;
    }
    snprintf(path, sizeof(path), "%s/outbox.db", dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char p[160];
    const char *suffix[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof(p), "%s%s", path, suffix[i]);
        unlink(p);
    }
    rmdir(dir);
    return 0;
}

static outbox_t *open_ob(uint64_t max_rows)
{
    struct outbox_limits lim = {.max_rows = max_rows};
    outbox_t *ob = NULL;
    char err[256];
    int rc = outbox_open(path, DB_SYNC_NORMAL, &lim, &ob, err, sizeof(err));
    if (rc != 0) {
        fail_msg("outbox_open: %s", err);
    }
    return ob;
}

static int add(outbox_t *ob, const char *id, int prio)
{
    char json[64];
    int n = snprintf(json, sizeof(json), "{\"id\":\"%s\"}", id);
    return outbox_add(ob, id, prio, 1000, 0, json, (size_t)n);
}

struct seen {
    char ids[16][16];
    int64_t seqs[16];
    int n;
    int stop_at;
};

static int collect(void *arg, int64_t seq, const char *id, const char *json, size_t len)
{
    struct seen *s = arg;
    (void)json;
    (void)len;
    if (s->stop_at && s->n == s->stop_at) {
        return 1;
    }
    snprintf(s->ids[s->n], sizeof(s->ids[s->n]), "%s", id);
    s->seqs[s->n++] = seq;
    return 0;
}

static void test_order_and_ack(void **state)
{
    (void)state;
    outbox_t *ob = open_ob(0);
    assert_int_equal(add(ob, "low1", 0), 0);
    assert_int_equal(add(ob, "norm1", 1), 0);
    assert_int_equal(add(ob, "crit1", 3), 0);
    assert_int_equal(add(ob, "norm2", 1), 0);
    assert_int_equal(add(ob, "norm1", 1), TDG_EDUPLICATE);
    assert_int_equal(outbox_pending(ob), 4);
    assert_int_equal(outbox_commit(ob), 0);
    struct seen s = {.n = 0};
    assert_int_equal(outbox_take(ob, 10, collect, &s), 4);
    assert_string_equal(s.ids[0], "crit1");
    assert_string_equal(s.ids[1], "norm1");
    assert_string_equal(s.ids[2], "norm2");
    assert_string_equal(s.ids[3], "low1");
    /* in flight: nothing more to take */
    struct seen s2 = {.n = 0};
    assert_int_equal(outbox_take(ob, 10, collect, &s2), 0);
    const char *ids[] = {"crit1", "norm1", "gone"};
    size_t deleted = 0;
    assert_int_equal(outbox_ack(ob, ids, 3, &deleted), 0);
    assert_int_equal(deleted, 2);
    struct outbox_stats st;
    outbox_get_stats(ob, &st);
    assert_int_equal(st.rows, 2);
    assert_int_equal(st.inflight, 2);
    assert_int_equal(st.duplicates, 1);
    outbox_close(ob);
}

static void test_reopen_resends_inflight(void **state)
{
    (void)state;
    outbox_t *ob = open_ob(0);
    assert_int_equal(add(ob, "a", 1), 0);
    assert_int_equal(add(ob, "b", 1), 0);
    outbox_commit(ob);
    struct seen s = {.n = 0};
    assert_int_equal(outbox_take(ob, 10, collect, &s), 2);
    outbox_close(ob); /* as if the process stopped before any ack */
    ob = open_ob(0);
    struct seen s2 = {.n = 0};
    assert_int_equal(outbox_take(ob, 10, collect, &s2), 2);
    assert_string_equal(s2.ids[0], "a");
    /* untake puts rows back for the next batch */
    assert_int_equal(outbox_untake(ob, s2.seqs, 1), 0);
    struct seen s3 = {.n = 0};
    assert_int_equal(outbox_take(ob, 10, collect, &s3), 1);
    assert_string_equal(s3.ids[0], "a");
    outbox_close(ob);
}

static void test_take_stops_when_callback_refuses(void **state)
{
    (void)state;
    outbox_t *ob = open_ob(0);
    for (int i = 0; i < 5; i++) {
        char id[8];
        snprintf(id, sizeof(id), "r%d", i);
        assert_int_equal(add(ob, id, 1), 0);
    }
    struct seen s = {.n = 0, .stop_at = 2};
    assert_int_equal(outbox_take(ob, 10, collect, &s), 2);
    struct seen s2 = {.n = 0};
    assert_int_equal(outbox_take(ob, 10, collect, &s2), 3);
    assert_string_equal(s2.ids[0], "r2");
    outbox_close(ob);
}

static void test_budget(void **state)
{
    (void)state;
    outbox_t *ob = open_ob(3);
    assert_int_equal(add(ob, "a", 1), 0);
    assert_int_equal(add(ob, "b", 1), 0);
    assert_int_equal(add(ob, "c", 1), 0);
    assert_int_equal(add(ob, "d", 1), TDG_EFULL);
    outbox_commit(ob);
    assert_int_equal(add(ob, "e", 1), TDG_EFULL);
    const char *ids[] = {"a"};
    size_t deleted;
    assert_int_equal(outbox_ack(ob, ids, 1, &deleted), 0);
    assert_int_equal(add(ob, "e", 1), 0);
    struct outbox_stats st;
    outbox_get_stats(ob, &st);
    assert_int_equal(st.rejected_full, 2);
    outbox_close(ob);
}

static outbox_t *open_drop(uint64_t max_rows)
{
    struct outbox_limits lim = {.max_rows = max_rows,
                                .full_policy = OUTBOX_FULL_DROP_OLDEST_LOWEST};
    outbox_t *ob = NULL;
    char err[256];
    if (outbox_open(path, DB_SYNC_NORMAL, &lim, &ob, err, sizeof(err)) != 0) {
        fail_msg("outbox_open: %s", err);
    }
    return ob;
}

/* The `dropped` table as "id:priority:reason," in drop order. */
static void dropped_list(outbox_t *ob, char *buf, size_t len)
{
    sqlite3_stmt *st = NULL;
    buf[0] = '\0';
    assert_int_equal(sqlite3_prepare_v2(outbox_db(ob),
                                        "SELECT id, priority, reason FROM dropped ORDER BY seq", -1,
                                        &st, NULL),
                     SQLITE_OK);
    size_t used = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        int n = snprintf(buf + used, len - used, "%s:%d:%s,", sqlite3_column_text(st, 0),
                         sqlite3_column_int(st, 1), sqlite3_column_text(st, 2));
        assert_true(n > 0 && (size_t)n < len - used);
        used += (size_t)n;
    }
    sqlite3_finalize(st);
}

/* drop_oldest_lowest: the oldest of the lowest priority <= the new one's
 * goes, recorded; never a higher priority (a low never displaces a normal or
 * a critical), never a row in flight, nothing for a duplicate. */
static void test_drop_oldest_lowest(void **state)
{
    (void)state;
    outbox_t *ob = open_drop(3);
    assert_int_equal(add(ob, "a-low", 0), 0);
    assert_int_equal(add(ob, "b-norm", 1), 0);
    assert_int_equal(add(ob, "c-low", 0), 0);
    assert_int_equal(outbox_commit(ob), 0);
    /* normal in: the oldest low goes */
    assert_int_equal(add(ob, "d-norm", 1), 0);
    assert_int_equal(outbox_commit(ob), 0);
    /* a duplicate needs no room: nothing dropped */
    assert_int_equal(add(ob, "d-norm", 1), TDG_EDUPLICATE);
    /* critical in: the remaining low goes */
    assert_int_equal(add(ob, "e-crit", 3), 0);
    assert_int_equal(outbox_commit(ob), 0);
    /* low in: only normal and critical left, never dropped for a low */
    assert_int_equal(add(ob, "f-low", 0), TDG_EFULL);
    /* normal in: the oldest normal goes (priority equal to the new one's) */
    assert_int_equal(add(ob, "g-norm", 1), 0);
    assert_int_equal(outbox_commit(ob), 0);
    struct outbox_stats st;
    outbox_get_stats(ob, &st);
    assert_int_equal(st.rows, 3);
    assert_int_equal(st.dropped, 3);
    assert_int_equal(st.dropped_rows, 3);
    assert_int_equal(st.rejected_full, 1);
    char list[512];
    dropped_list(ob, list, sizeof(list));
    assert_string_equal(list, "a-low:0:outbox over budget,c-low:0:outbox over budget,"
                              "b-norm:1:outbox over budget,");
    struct seen s = {.n = 0};
    assert_int_equal(outbox_take(ob, 10, collect, &s), 3);
    assert_string_equal(s.ids[0], "e-crit");
    assert_string_equal(s.ids[1], "d-norm");
    assert_string_equal(s.ids[2], "g-norm");
    /* all in flight: nothing may be dropped, even for a critical */
    assert_int_equal(add(ob, "h-crit", 3), TDG_EFULL);
    outbox_close(ob);
    /* the records survive a restart */
    ob = open_drop(3);
    outbox_get_stats(ob, &st);
    assert_int_equal(st.dropped, 0);
    assert_int_equal(st.dropped_rows, 3);
    assert_int_equal(st.rows, 3);
    outbox_close(ob);
}

/* Rows of the same open transaction may be dropped too; the counts follow. */
static void test_drop_within_transaction(void **state)
{
    (void)state;
    outbox_t *ob = open_drop(2);
    assert_int_equal(add(ob, "x", 0), 0);
    assert_int_equal(add(ob, "y", 0), 0);
    assert_int_equal(add(ob, "z", 0), 0); /* x goes, uncommitted */
    assert_int_equal(outbox_commit(ob), 0);
    struct outbox_stats st;
    outbox_get_stats(ob, &st);
    assert_int_equal(st.rows, 2);
    assert_int_equal(st.dropped, 1);
    struct seen s = {.n = 0};
    assert_int_equal(outbox_take(ob, 10, collect, &s), 2);
    assert_string_equal(s.ids[0], "y");
    assert_string_equal(s.ids[1], "z");
    /* acks bring it below budget: adds without drops again */
    const char *ids[] = {"y", "z"};
    size_t deleted = 0;
    assert_int_equal(outbox_ack(ob, ids, 2, &deleted), 0);
    assert_int_equal(deleted, 2);
    assert_int_equal(add(ob, "w", 0), 0);
    assert_int_equal(outbox_commit(ob), 0);
    outbox_get_stats(ob, &st);
    assert_int_equal(st.rows, 1);
    assert_int_equal(st.dropped, 1);
    outbox_close(ob);
}

/* The per-priority counts kept in memory equal a count of the table. */
static void check_by_priority(outbox_t *ob)
{
    uint64_t db[4] = {0};
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(outbox_db(ob),
                                        "SELECT priority, count(*) FROM outbox GROUP BY 1", -1, &st,
                                        NULL),
                     SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
        int p = sqlite3_column_int(st, 0);
        assert_true(p >= 0 && p < 4);
        db[p] = (uint64_t)sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    struct outbox_stats os;
    outbox_get_stats(ob, &os);
    uint64_t sum = 0;
    for (int p = 0; p < 4; p++) {
        assert_int_equal(os.by_priority[p], db[p]);
        sum += os.by_priority[p];
    }
    assert_int_equal(sum, os.rows);
}

/* Status reads by_priority and the oldest row without counting the table:
 * adds, duplicates, drops (committed rows and rows of the open transaction)
 * and acks keep the counts; a reopen counts once. */
static void test_counts_and_oldest(void **state)
{
    (void)state;
    outbox_t *ob = open_drop(4);
    int64_t oldest = -1;
    assert_int_equal(outbox_oldest(ob, &oldest), 0);
    assert_int_equal(oldest, 0);
    char json[32];
    int n = snprintf(json, sizeof(json), "{}");
    assert_int_equal(outbox_add(ob, "n1", 1, 5000, 0, json, (size_t)n), 0);
    assert_int_equal(outbox_add(ob, "l1", 0, 6000, 0, json, (size_t)n), 0);
    assert_int_equal(outbox_add(ob, "n1", 1, 7000, 0, json, (size_t)n), TDG_EDUPLICATE);
    assert_int_equal(outbox_commit(ob), 0);
    check_by_priority(ob);
    assert_int_equal(outbox_oldest(ob, &oldest), 0);
    assert_int_equal(oldest, 5000);
    assert_int_equal(add(ob, "h1", 2), 0);
    assert_int_equal(add(ob, "l2", 0), 0);
    assert_int_equal(add(ob, "c1", 3), 0); /* drops l1 (committed) */
    assert_int_equal(add(ob, "c2", 3), 0); /* drops l2 (this transaction) */
    assert_int_equal(outbox_commit(ob), 0);
    check_by_priority(ob);
    struct outbox_stats os;
    outbox_get_stats(ob, &os);
    assert_int_equal(os.by_priority[0], 0);
    assert_int_equal(os.by_priority[1], 1);
    assert_int_equal(os.by_priority[2], 1);
    assert_int_equal(os.by_priority[3], 2);
    struct seen s = {.n = 0};
    assert_int_equal(outbox_take(ob, 2, collect, &s), 2);
    const char *ids[] = {"c1", "n1", "nope"};
    size_t deleted = 0;
    assert_int_equal(outbox_ack(ob, ids, 3, &deleted), 0);
    assert_int_equal(deleted, 2);
    check_by_priority(ob);
    assert_int_equal(outbox_oldest(ob, &oldest), 0);
    assert_int_equal(oldest, 1000); /* h1, added by add() */
    outbox_close(ob);
    ob = open_drop(4);
    check_by_priority(ob);
    outbox_get_stats(ob, &os);
    assert_int_equal(os.rows, 2);
    assert_int_equal(os.by_priority[2], 1);
    assert_int_equal(os.by_priority[3], 1);
    outbox_close(ob);
}

static int64_t pragma_int(outbox_t *ob, const char *sql)
{
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(outbox_db(ob), sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* Memory must not grow with the queue: a small page cache (outbox.cache_size,
 * in KiB for SQLite), no memory-mapped I/O, temporary storage on disk, a WAL
 * cut back after checkpoints. */
static void test_memory_pragmas(void **state)
{
    (void)state;
    outbox_t *ob = open_ob(0);
    assert_int_equal(pragma_int(ob, "PRAGMA cache_size"), -(int64_t)(OUTBOX_CACHE_DEFAULT / 1024));
    assert_int_equal(pragma_int(ob, "PRAGMA mmap_size"), 0);
    assert_int_equal(pragma_int(ob, "PRAGMA temp_store"), 1);
    assert_int_equal(pragma_int(ob, "PRAGMA journal_size_limit"), OUTBOX_WAL_LIMIT);
    outbox_close(ob);
    struct outbox_limits lim = {.cache_bytes = 1000 * 1024 + 1};
    char err[256];
    assert_int_equal(outbox_open(path, DB_SYNC_NORMAL, &lim, &ob, err, sizeof(err)), 0);
    assert_int_equal(pragma_int(ob, "PRAGMA cache_size"), -1001);
    outbox_close(ob);
}

/* The default stays reject: nothing is ever dropped. */
static void test_reject_is_default(void **state)
{
    (void)state;
    outbox_t *ob = open_ob(1);
    assert_int_equal(add(ob, "l", 0), 0);
    assert_int_equal(add(ob, "c", 3), TDG_EFULL);
    assert_int_equal(outbox_commit(ob), 0);
    struct outbox_stats st;
    outbox_get_stats(ob, &st);
    assert_int_equal(st.dropped, 0);
    assert_int_equal(st.rows, 1);
    outbox_close(ob);
}

static void test_modes_and_corrupt(void **state)
{
    (void)state;
    outbox_t *ob = open_ob(0);
    outbox_close(ob);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    /* a file that is not a database is reported, never reset */
    teardown(NULL);
    setup(NULL);
    FILE *f = fopen(path, "w");
    fputs("this is not an sqlite database, it is a text file of some length........", f);
    fclose(f);
    struct outbox_limits lim = {0};
    char err[256];
    assert_int_equal(outbox_open(path, DB_SYNC_NORMAL, &lim, &ob, err, sizeof(err)),
                     TDG_EDB_CORRUPT);
    assert_non_null(strstr(err, path));
    f = fopen(path, "r");
    char buf[16] = "";
    assert_non_null(fgets(buf, sizeof(buf), f));
    fclose(f);
    assert_string_equal(buf, "this is not an ");
}

/* A rate-limited drain takes only critical rows while its bucket is empty. */
static void test_take_min_priority(void **state)
{
    (void)state;
    outbox_t *ob = open_ob(0);
    assert_int_equal(add(ob, "n1", 1), 0);
    assert_int_equal(add(ob, "c1", 3), 0);
    assert_int_equal(add(ob, "h1", 2), 0);
    assert_int_equal(add(ob, "c2", 3), 0);
    struct seen s = {.n = 0};
    assert_int_equal(outbox_take_prio(ob, 10, 3, collect, &s), 2);
    assert_string_equal(s.ids[0], "c1");
    assert_string_equal(s.ids[1], "c2");
    struct seen s2 = {.n = 0};
    assert_int_equal(outbox_take_prio(ob, 10, 0, collect, &s2), 2);
    assert_string_equal(s2.ids[0], "h1");
    assert_string_equal(s2.ids[1], "n1");
    outbox_close(ob);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_order_and_ack, setup, teardown),
        cmocka_unit_test_setup_teardown(test_take_min_priority, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_resends_inflight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_take_stops_when_callback_refuses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget, setup, teardown),
        cmocka_unit_test_setup_teardown(test_modes_and_corrupt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drop_oldest_lowest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drop_within_transaction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reject_is_default, setup, teardown),
        cmocka_unit_test_setup_teardown(test_counts_and_oldest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_memory_pragmas, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
