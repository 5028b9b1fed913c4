/* test_outbox.c - the agent's durable queue. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "error.h"
#include "outbox.h"

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_order_and_ack, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_resends_inflight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_take_stops_when_callback_refuses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget, setup, teardown),
        cmocka_unit_test_setup_teardown(test_modes_and_corrupt, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
