/* test_intake.c - hub intake (hub/intake.c) against a real store: accepted
 * items are stored in multi-row INSERTs (store_add_notifications), and what
 * storing one at a time guaranteed still holds - each id stored once (the
 * first of its items), duplicates inside one batch and across batches of
 * one iteration answered as duplicates, a bad item between good ones
 * rejected while the good ones behind it are stored, no ack for the items
 * of a statement that failed, the daily quota exact. Batches parsed on the
 * loop and on the parse thread. Acks are counted here (intake_pending); their
 * contents and order are checked end to end (e2e_directory). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "agentlimit.h"
#include "intake.h"
#include "loop.h"
#include "proto.h"
#include "store.h"
#include "testdb.h"

#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64], dbpath[128];
static store_t *S;
static intake_t *IN;
static loop_t *L;
static bool thread_mode, hooked;
static uint64_t want_batches;

static void open_store(void)
{
    char err[512] = "";
    if (store_open(dbpath, DB_SYNC_NORMAL, &S, err, sizeof(err)) != 0) {
        fail_msg("store_open: %s", err);
    }
}

static int64_t raw_int(const char *sql)
{
    return testdb_int(dbpath, sql);
}

static void raw_exec(const char *sql)
{
    testdb_exec(dbpath, sql);
}

static int setup_common(bool thread)
{
    if (testdb_tmpdir(dir, sizeof(dir), "/tmp/tidings-intake-XXXXXX", dbpath, sizeof(dbpath), "hub.db") < 0) {
        return -1;
    }
    open_store();
    int64_t now = clock_wall_ms();
    if (store_user_upsert(S, "alice", "UTC", now) < 0 ||
        store_binding_add(S, "gw1", "*", "*", now) < 0 || store_commit(S) < 0) {
        return -1;
    }
    IN = intake_create(S);
    L = loop_create();
    if (!IN || !L) {
        return -1;
    }
    thread_mode = thread;
    hooked = false;
    if (thread && intake_start_parser(IN, L) != 0) {
        return -1;
    }
    return 0;
}

static int setup_loop(void **state)
{
    (void)state;
    return setup_common(false);
}

static int setup_thread(void **state)
{
    (void)state;
    return setup_common(true);
}

static int teardown(void **state)
{
    (void)state;
    intake_destroy(IN);
    IN = NULL;
    loop_destroy(L);
    L = NULL;
    store_close(S);
    S = NULL;
    testdb_remove(dbpath, dir);
    return 0;
}

/* The parse thread's batches are handled by intake_resume, before sleep. */
static void before_sleep(loop_t *loop, void *arg)
{
    (void)arg;
    intake_resume(IN);
    struct intake_stats st;
    intake_get_stats(IN, &st);
    if (st.batches >= want_batches) {
        loop_stop(loop);
    }
}

static void on_timeout(loop_t *loop, uint64_t id, void *arg)
{
    (void)id;
    (void)arg;
    loop_stop(loop);
}

/* Hand the batches (each a JSON array's inside, as agent gw1) to intake in
 * one loop iteration's worth: without the parse thread each is handled at
 * once; with it, they are handled together by intake_resume. */
static void up_all(const char *const *batches, size_t n)
{
    struct intake_stats st;
    intake_get_stats(IN, &st);
    want_batches = st.batches + n;
    for (size_t i = 0; i < n; i++) {
        char payload[8192];
        int len = snprintf(payload, sizeof(payload), "{\"v\":1,\"agent\":\"gw1\",\"items\":[%s]}",
                           batches[i]);
        assert_true(len > 0 && (size_t)len < sizeof(payload));
        intake_handle_up(IN, "gw1", payload, (size_t)len);
    }
    if (thread_mode) {
        if (!hooked) {
            assert_int_equal(loop_before_sleep(L, before_sleep, NULL), 0);
            hooked = true;
        }
        uint64_t t = loop_timer_add(L, 10000, on_timeout, NULL);
        loop_run(L);
        loop_timer_cancel(L, t);
    }
    intake_get_stats(IN, &st);
    assert_int_equal(st.batches, want_batches);
}

/* One good item: {"id":ID,"to":"user:alice","title":TITLE}. */
static size_t item(char *buf, size_t cap, const char *id, const char *title)
{
    int n = snprintf(buf, cap, "{\"id\":\"%s\",\"to\":\"user:alice\",\"title\":\"%s\"}", id,
                     title);
    assert_true(n > 0 && (size_t)n < cap);
    return (size_t)n;
}

/* Append ",item" (or "item" when buf is empty). */
static void add_item(char *buf, size_t cap, const char *id, const char *title)
{
    size_t len = strlen(buf);
    if (len) {
        assert_true(len + 1 < cap);
        buf[len++] = ',';
        buf[len] = '\0';
    }
    item(buf + len, cap - len, id, title);
}

static void add_raw(char *buf, size_t cap, const char *raw)
{
    size_t len = strlen(buf);
    int n = snprintf(buf + len, cap - len, "%s%s", len ? "," : "", raw);
    assert_true(n > 0 && (size_t)n < cap - len);
}

static int64_t count_id(const char *id)
{
    char sql[160];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM notifications WHERE id = '%s'", id);
    return raw_int(sql);
}

/* Duplicates inside one batch (in one statement and across the statements
 * of STORE_ADD_MAX), across two batches of one iteration, a bad item and an
 * item without an id between good ones. */
static void test_dupes_and_bad(void **state)
{
    (void)state;
    char b1[8192] = "", b2[2048] = "";
    add_item(b1, sizeof(b1), "a0", "first");
    add_item(b1, sizeof(b1), "a1", "first");
    add_item(b1, sizeof(b1), "a0", "second"); /* duplicate in the same statement */
    add_raw(b1, sizeof(b1), "{\"id\":\"x-bad\",\"to\":\"user:alice\"}"); /* no content */
    char id[16];
    for (int i = 4; i <= 15; i++) {
        snprintf(id, sizeof(id), "a%d", i);
        add_item(b1, sizeof(b1), id, "first");
    }
    add_item(b1, sizeof(b1), "a1", "second"); /* the next statement: duplicate of a stored one */
    add_item(b1, sizeof(b1), "a17", "first");
    add_raw(b1, sizeof(b1), "{\"id\":\"bad id!\",\"to\":\"user:alice\",\"title\":\"x\"}");
    add_item(b1, sizeof(b1), "a19", "first");
    add_raw(b1, sizeof(b1), "{\"id\":\"x-unknown\",\"to\":\"user:mallory\",\"title\":\"x\"}");
    add_item(b1, sizeof(b1), "a21", "first");
    /* The second batch of the same iteration. */
    add_item(b2, sizeof(b2), "a17", "second");
    add_item(b2, sizeof(b2), "b1", "first");
    add_item(b2, sizeof(b2), "a4", "second");
    add_item(b2, sizeof(b2), "b1", "second");
    const char *batches[] = {b1, b2};
    up_all(batches, 2);

    struct intake_stats st;
    intake_get_stats(IN, &st);
    assert_int_equal(st.items, 26);
    assert_int_equal(st.accepted, 2 + 12 + 3 + 1); /* a0 a1, a4..a15, a17 a19 a21, b1 */
    assert_int_equal(st.duplicates, 5);            /* a0 a1 a17 a4 b1 */
    assert_int_equal(st.rejected, 3);              /* x-bad, bad id!, x-unknown */
    assert_int_equal(st.rejected_by[PROTO_R_NO_CONTENT], 1);
    assert_int_equal(st.rejected_by[PROTO_R_UNKNOWN_RECIPIENT], 1);
    assert_int_equal(intake_pending(IN), 26 - 1); /* every item with a valid id */
    assert_int_equal(store_commit(S), 0);
    intake_flush(IN, NULL, false);

    assert_int_equal(raw_int("SELECT count(*) FROM notifications"), 18);
    assert_int_equal(raw_int("SELECT count(*) FROM notifications WHERE state = 'queued'"), 18);
    assert_int_equal(raw_int("SELECT count(*) FROM notifications WHERE body LIKE '%second%'"), 0);
    assert_int_equal(count_id("x-bad"), 0);
    assert_int_equal(count_id("x-unknown"), 0);
    assert_int_equal(count_id("a21"), 1);
    assert_int_equal(count_id("b1"), 1);

    /* The next iteration: all of them again, all duplicates. */
    up_all(batches, 2);
    intake_get_stats(IN, &st);
    assert_int_equal(st.accepted, 18);
    assert_int_equal(st.duplicates, 5 + 18 + 5);
    assert_int_equal(intake_pending(IN), 26 - 1);
    assert_int_equal(store_commit(S), 0);
    intake_flush(IN, NULL, false);
    assert_int_equal(raw_int("SELECT count(*) FROM notifications"), 18);
}

/* A statement the store fails: none of its items is acked (the agent
 * resends them), the rejection among them keeps its ack, the items stored
 * by the next statement are acked. */
static void test_store_error(void **state)
{
    (void)state;
    raw_exec("CREATE TRIGGER boom BEFORE INSERT ON notifications WHEN NEW.id = 'c-boom'"
             " BEGIN SELECT RAISE(ABORT, 'boom'); END;");
    char b[8192] = "";
    add_item(b, sizeof(b), "c0", "t");
    add_raw(b, sizeof(b), "{\"id\":\"c-bad\",\"to\":\"user:alice\"}"); /* no content */
    add_item(b, sizeof(b), "c-boom", "t");
    char id[16];
    for (int i = 3; i < 20; i++) { /* c0, c-boom, c3..c16: 16; c17..c19 after */
        snprintf(id, sizeof(id), "c%d", i);
        add_item(b, sizeof(b), id, "t");
    }
    const char *batches[] = {b};
    up_all(batches, 1);
    struct intake_stats st;
    intake_get_stats(IN, &st);
    assert_int_equal(st.accepted, 3);
    assert_int_equal(st.rejected, 1);
    assert_int_equal(intake_pending(IN), 1 + 3);
    assert_int_equal(store_commit(S), 0);
    intake_flush(IN, NULL, false);
    assert_int_equal(raw_int("SELECT count(*) FROM notifications"), 3);
    assert_int_equal(count_id("c17") + count_id("c18") + count_id("c19"), 3);
}

/* With a daily quota every item is stored before the next is checked:
 * exactly the quota is accepted, a resent stored id is acked and not
 * counted, the rest is over_quota. */
static void test_quota(void **state)
{
    (void)state;
    agentlimit_t *al = agentlimit_create(S, 0, 0, 5);
    assert_non_null(al);
    intake_set_limits(IN, al);
    char b[4096] = "";
    add_item(b, sizeof(b), "q0", "t");
    add_item(b, sizeof(b), "q1", "t");
    add_item(b, sizeof(b), "q0", "t"); /* duplicate: not counted */
    for (int i = 2; i < 8; i++) {
        char id[16];
        snprintf(id, sizeof(id), "q%d", i);
        add_item(b, sizeof(b), id, "t");
    }
    add_item(b, sizeof(b), "q1", "t"); /* stored: acked even over the quota */
    const char *batches[] = {b};
    up_all(batches, 1);
    struct intake_stats st;
    intake_get_stats(IN, &st);
    assert_int_equal(st.accepted, 5);
    assert_int_equal(st.duplicates, 2);
    assert_int_equal(st.rejected_by[PROTO_R_OVER_QUOTA], 3);
    assert_int_equal(intake_pending(IN), 10);
    assert_int_equal(store_commit(S), 0);
    intake_flush(IN, NULL, false);
    assert_int_equal(raw_int("SELECT count(*) FROM notifications"), 5);
    intake_set_limits(IN, NULL);
    agentlimit_destroy(al);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_dupes_and_bad, setup_loop, teardown),
        cmocka_unit_test_setup_teardown(test_dupes_and_bad, setup_thread, teardown),
        cmocka_unit_test_setup_teardown(test_store_error, setup_loop, teardown),
        cmocka_unit_test_setup_teardown(test_store_error, setup_thread, teardown),
        cmocka_unit_test_setup_teardown(test_quota, setup_loop, teardown),
        cmocka_unit_test_setup_teardown(test_quota, setup_thread, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
