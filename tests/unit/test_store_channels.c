/* test_store_channels.c - provider-side state (hub/store_channels.c):
 * delivery status by provider id, idempotent and never going backwards, and
 * SMS opt-out / opt-in on the number's endpoint. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "error.h"
#include "pii.h"
#include "store.h"
#include "testdb.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64], dbpath[128], keyfile[128];
static store_t *S;
static pii_t *K;
static const int64_t NOW = 1700000000000;

static int setup(void **state)
{
    (void)state;
    if (testdb_tmpdir(dir, sizeof(dir), "/tmp/tidings-stch-XXXXXX", dbpath, sizeof(dbpath), "hub.db") < 0) {
        return -1;
    }
    snprintf(keyfile, sizeof(keyfile), "%s/pii.keys", dir);
    char err[512] = "";
    if (pii_generate(keyfile, err, sizeof(err)) != 0 || pii_load(keyfile, &K, err, sizeof(err)) ||
        store_open(dbpath, DB_SYNC_NORMAL, &S, err, sizeof(err)) != 0) {
        fprintf(stderr, "setup: %s\n", err);
        return -1;
    }
    store_set_pii(S, K);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    store_close(S);
    pii_destroy(K);
    const char *suffix[] = {"", "-wal", "-shm"};
    char p[160];
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof(p), "%s%s", dbpath, suffix[i]);
        unlink(p);
    }
    unlink(keyfile);
    rmdir(dir);
    return 0;
}

static void expect_status(const char *sid, const char *want, int want_code, int64_t want_updates)
{
    char st[32];
    int code = -1;
    int64_t updates = -1;
    assert_int_equal(store_provider_status_get(S, "sms", sid, st, sizeof(st), &code, &updates), 1);
    assert_string_equal(st, want);
    assert_int_equal(code, want_code);
    assert_int_equal(updates, want_updates);
}

static void test_status_idempotent_and_monotonic(void **state)
{
    (void)state;
    const char *sid = "SM0123456789abcdef0123456789abcdef";
    char st[32];
    assert_int_equal(store_provider_status_get(S, "sms", sid, st, sizeof(st), NULL, NULL), 0);
    assert_int_equal(store_provider_status(S, "sms", sid, "queued", 0, NOW), 1);
    assert_int_equal(store_provider_status(S, "sms", sid, "sent", 0, NOW + 1), 1);
    /* the same report again (a poll and a callback, or a replayed callback) */
    assert_int_equal(store_provider_status(S, "sms", sid, "sent", 0, NOW + 2), 0);
    assert_int_equal(store_provider_status(S, "sms", sid, "undelivered", 30003, NOW + 3), 1);
    /* late, out of order: never backwards */
    assert_int_equal(store_provider_status(S, "sms", sid, "sending", 0, NOW + 4), 0);
    assert_int_equal(store_provider_status(S, "sms", sid, "delivered", 0, NOW + 5), 0);
    assert_int_equal(store_commit(S), 0);
    expect_status(sid, "undelivered", 30003, 3);
    /* channels keep their own ids */
    assert_int_equal(store_provider_status(S, "other", sid, "delivered", 0, NOW), 1);
    expect_status(sid, "undelivered", 30003, 3);
    /* bad input */
    assert_int_equal(store_provider_status(S, "sms", sid, "exploded", 0, NOW), TDG_EINVAL_INPUT);
    assert_int_equal(store_provider_status(S, "sms", "", "sent", 0, NOW), TDG_EINVAL_INPUT);
    assert_int_equal(store_status_rank("read"), 5);
    assert_int_equal(store_status_rank("accepted"), 1);
    assert_int_equal(store_status_rank(""), 0);
}

struct found {
    char state[16], reason[256];
    int64_t id;
    int n;
};

static void on_dev(void *arg, const struct store_device_info *d)
{
    struct found *f = arg;
    snprintf(f->state, sizeof(f->state), "%s", d->state);
    snprintf(f->reason, sizeof(f->reason), "%s", d->state_reason);
    f->id = d->id;
    f->n++;
}

static void phone_state(const char *num, struct found *f)
{
    memset(f, 0, sizeof(*f));
    assert_true(store_device_lookup(S, "sms", num, on_dev, f) >= 0);
    assert_int_equal(f->n, 1);
}

static void test_opt_out_and_in(void **state)
{
    (void)state;
    const char *num = "+4915112345678";
    struct found f;
    assert_int_equal(store_user_upsert(S, "alice", "UTC", NOW), 0);
    assert_int_equal(store_device_upsert(S, "alice", "sms", num, "", "production", NOW), 0);
    assert_int_equal(store_commit(S), 0);
    phone_state(num, &f);
    assert_string_equal(f.state, "active");

    assert_int_equal(store_sms_opt(S, num, true, "STOP", NOW + 1), 1);
    phone_state(num, &f);
    assert_string_equal(f.state, "disabled");
    assert_string_equal(f.reason, "opted_out:STOP");
    assert_int_equal(store_sms_opt(S, num, true, "STOP", NOW + 2), 0); /* again: nothing */

    assert_int_equal(store_sms_opt(S, num, false, "START", NOW + 3), 1);
    phone_state(num, &f);
    assert_string_equal(f.state, "active");

    /* disabled by a 21610 answer (what fanout does): START brings it back */
    assert_int_equal(store_device_set_state(S, f.id, "disabled", "opted_out:21610", NOW + 4), 0);
    assert_int_equal(store_sms_opt(S, num, false, "START", NOW + 5), 1);
    phone_state(num, &f);
    assert_string_equal(f.state, "active");
    /* disabled for another reason: START does not undo that */
    assert_int_equal(store_device_set_state(S, f.id, "disabled", "invalid_number:21211", NOW + 6),
                     0);
    assert_int_equal(store_sms_opt(S, num, false, "START", NOW + 7), 0);
    phone_state(num, &f);
    assert_string_equal(f.state, "disabled");
    /* an unknown number changes nothing; a bad one is refused */
    assert_int_equal(store_sms_opt(S, "+15550000000", true, "STOP", NOW), 0);
    assert_int_equal(store_sms_opt(S, "4915112345678", true, "STOP", NOW), TDG_EINVAL_INPUT);
    assert_int_equal(store_commit(S), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_status_idempotent_and_monotonic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_opt_out_and_in, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
