/* test_sched.c - the scheduler (hub/scheduler.c) on its durable timer store:
 * order, past-due timers firing at once, fallback steps on an injected
 * clock, cancellation, and timers surviving a close and reopen (restart). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "error.h"
#include "loop.h"
#include "scheduler.h"
#include "store.h"

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_uncommitted_fire_repeats, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fallback_timing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batches, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
