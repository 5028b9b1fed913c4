/* test_breaker.c - circuit breaker states and transitions on a fake clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "breaker.h"
#include "log.h"

static const struct breaker_opts opts = {
    .failures = 3, .window = 10, .ratio_pct = 50, .open_ms = 1000, .probes = 2};

static void test_consecutive_failures_open(void **state)
{
    (void)state;
    struct breaker b;
    breaker_init(&b, "apns", &opts);
    assert_int_equal(breaker_state(&b, 0), BREAKER_CLOSED);
    for (int i = 0; i < 2; i++) {
        assert_true(breaker_allow(&b, 0));
        breaker_record(&b, true, 0);
    }
    assert_int_equal(breaker_state(&b, 0), BREAKER_CLOSED);
    breaker_record(&b, false, 0); /* a success resets the run */
    breaker_record(&b, true, 0);
    breaker_record(&b, true, 0);
    assert_int_equal(breaker_state(&b, 0), BREAKER_CLOSED);
    breaker_record(&b, true, 5);
    assert_int_equal(breaker_state(&b, 5), BREAKER_OPEN);
    assert_int_equal(b.opens, 1);
    assert_false(breaker_allow(&b, 5));
    assert_int_equal(breaker_retry_in(&b, 5), 1000);
    assert_int_equal(breaker_retry_in(&b, 1004), 1);
    /* late outcomes of requests sent before it opened change nothing */
    breaker_record(&b, false, 6);
    assert_int_equal(breaker_state(&b, 6), BREAKER_OPEN);
}

static void test_ratio_window(void **state)
{
    (void)state;
    struct breaker b;
    breaker_init(&b, "sms", &opts);
    /* alternate: never 3 in a row, but 5 of 10 failed once the window is full */
    for (int i = 0; i < 9; i++) {
        breaker_record(&b, i % 2 == 0, 0);
        assert_int_equal(breaker_state(&b, 0), BREAKER_CLOSED);
    }
    breaker_record(&b, false, 0); /* window full: 5 failures of 10 */
    assert_int_equal(breaker_state(&b, 0), BREAKER_OPEN);
    /* with 4 of 10 failing it stays closed however long it runs */
    breaker_init(&b, "sms", &opts);
    for (int i = 0; i < 1000; i++) {
        breaker_record(&b, i % 5 == 0 || i % 5 == 2, 0);
        assert_int_equal(breaker_state(&b, 0), BREAKER_CLOSED);
    }
}

static void test_half_open_probes_close(void **state)
{
    (void)state;
    struct breaker b;
    breaker_init(&b, "apns", &opts);
    for (int i = 0; i < 3; i++) {
        breaker_record(&b, true, 100);
    }
    assert_int_equal(breaker_state(&b, 1099), BREAKER_OPEN);
    assert_int_equal(breaker_state(&b, 1100), BREAKER_HALF_OPEN);
    assert_int_equal(breaker_retry_in(&b, 1100), 0);
    /* two probes at once, not a third */
    assert_true(breaker_allow(&b, 1100));
    assert_true(breaker_allow(&b, 1100));
    assert_false(breaker_allow(&b, 1100));
    breaker_record(&b, false, 1150);
    assert_int_equal(breaker_state(&b, 1150), BREAKER_HALF_OPEN);
    /* one success so far: the freed slot does not admit more than probes in total */
    assert_false(breaker_allow(&b, 1150));
    breaker_record(&b, false, 1160);
    assert_int_equal(breaker_state(&b, 1160), BREAKER_CLOSED);
    assert_true(breaker_allow(&b, 1160));
}

static void test_half_open_failure_reopens(void **state)
{
    (void)state;
    struct breaker b;
    breaker_init(&b, "apns", &opts);
    for (int i = 0; i < 3; i++) {
        breaker_record(&b, true, 0);
    }
    assert_true(breaker_allow(&b, 1000));
    assert_int_equal(breaker_state(&b, 1000), BREAKER_HALF_OPEN);
    breaker_record(&b, true, 1010);
    assert_int_equal(breaker_state(&b, 1010), BREAKER_OPEN);
    assert_int_equal(b.opens, 2);
    assert_int_equal(breaker_retry_in(&b, 1010), 1000);
    assert_int_equal(breaker_state(&b, 2010), BREAKER_HALF_OPEN);
    /* a probe that was never sent gives its slot back */
    assert_true(breaker_allow(&b, 2010));
    assert_true(breaker_allow(&b, 2010));
    breaker_release(&b);
    assert_true(breaker_allow(&b, 2010));
    assert_false(breaker_allow(&b, 2010));
}

static void test_clamped_options(void **state)
{
    (void)state;
    struct breaker b;
    struct breaker_opts o = {.failures = 0, .window = 500, .ratio_pct = 300, .probes = 0};
    breaker_init(&b, "x", &o);
    assert_int_equal(b.o.failures, 1);
    assert_int_equal(b.o.window, 64);
    assert_int_equal(b.o.ratio_pct, 100);
    assert_int_equal(b.o.probes, 1);
    breaker_record(&b, true, 0);
    assert_int_equal(breaker_state(&b, 0), BREAKER_OPEN);
    assert_string_equal(breaker_state_name(BREAKER_HALF_OPEN), "half_open");
}

int main(void)
{
    log_set_level(LOG_LVL_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_consecutive_failures_open),
        cmocka_unit_test(test_ratio_window),
        cmocka_unit_test(test_half_open_probes_close),
        cmocka_unit_test(test_half_open_failure_reopens),
        cmocka_unit_test(test_clamped_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
