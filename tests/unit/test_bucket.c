/* test_bucket.c - token bucket and breaker on a fake clock; backoff bounds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "backoff.h"
#include "bucket.h"

static void test_unlimited(void **state)
{
    (void)state;
    struct bucket b;
    bucket_init(&b, 0, 0, 0);
    for (int i = 0; i < 100000; i++) {
        assert_true(bucket_take(&b, 0));
    }
    assert_int_equal(bucket_wait_ms(&b, 0), 0);
}

static void test_burst_then_rate(void **state)
{
    (void)state;
    struct bucket b;
    bucket_init(&b, 10, 5, 1000); /* 10/s, burst 5 */
    for (int i = 0; i < 5; i++) {
        assert_true(bucket_take(&b, 1000));
    }
    assert_false(bucket_take(&b, 1000));
    assert_int_equal(bucket_wait_ms(&b, 1000), 100);
    assert_false(bucket_take(&b, 1099));
    assert_int_equal(bucket_wait_ms(&b, 1099), 1);
    assert_true(bucket_take(&b, 1100));
    assert_false(bucket_take(&b, 1100));
    /* a long pause refills only up to the burst */
    int got = 0;
    while (bucket_take(&b, 100000)) {
        got++;
    }
    assert_int_equal(got, 5);
    /* over one simulated second at 1 ms steps: rate tokens, not more */
    got = 0;
    for (uint64_t t = 100001; t <= 101000; t++) {
        got += bucket_take(&b, t) ? 1 : 0;
    }
    assert_int_equal(got, 10);
}

static void test_default_burst_and_clock_back(void **state)
{
    (void)state;
    struct bucket b;
    bucket_init(&b, 3, 0, 50); /* burst = rate */
    assert_true(bucket_take(&b, 50));
    assert_true(bucket_take(&b, 50));
    assert_true(bucket_take(&b, 50));
    assert_false(bucket_take(&b, 40)); /* clock went back: nothing new, no underflow */
    assert_int_equal(bucket_wait_ms(&b, 50), 334);
    /* a fast rate: several tokens per ms */
    bucket_init(&b, 5000, 1, 0);
    assert_true(bucket_take(&b, 0));
    assert_false(bucket_take(&b, 0));
    assert_int_equal(bucket_wait_ms(&b, 0), 1);
    assert_true(bucket_take(&b, 1));
    /* huge values do not overflow */
    bucket_init(&b, UINT64_MAX, UINT64_MAX, 0);
    assert_true(bucket_take(&b, UINT64_MAX / 2));
}

static void test_charge_debt(void **state)
{
    (void)state;
    struct bucket b;
    bucket_init(&b, 10, 2, 0); /* 10/s, burst 2 */
    assert_true(bucket_take(&b, 0));
    /* a batch admitted by its first token: the rest is charged as debt */
    for (int i = 0; i < 10; i++) {
        bucket_charge(&b, 0);
    }
    /* debt is bounded by one burst: 1 left - 2 charged to -2 (stays there) */
    assert_false(bucket_take(&b, 0));
    assert_int_equal(bucket_wait_ms(&b, 0), 300);
    assert_false(bucket_take(&b, 299));
    assert_true(bucket_take(&b, 300));
    /* unlimited buckets ignore charges */
    bucket_init(&b, 0, 0, 0);
    bucket_charge(&b, 0);
    assert_true(bucket_take(&b, 0));
}

static void test_backoff_bounds(void **state)
{
    (void)state;
    /* full jitter: 1 <= delay <= min(cap, base * 2^attempt), never above cap */
    for (unsigned attempt = 0; attempt < 80; attempt++) {
        uint64_t ceiling = 100;
        for (unsigned i = 0; i < attempt && ceiling < 5000; i++) {
            ceiling *= 2;
        }
        if (ceiling > 5000) {
            ceiling = 5000;
        }
        uint64_t max_seen = 0;
        for (int i = 0; i < 2000; i++) {
            uint64_t d = backoff_delay(attempt, 100, 5000);
            assert_true(d >= 1);
            assert_true(d <= ceiling);
            if (d > max_seen) {
                max_seen = d;
            }
        }
        /* the jitter spans the range: with 2000 draws the top half is hit */
        assert_true(max_seen > ceiling / 2);
    }
    assert_int_equal(backoff_delay(3, 0, 100), 0);
    /* doubling never overflows */
    assert_true(backoff_delay(1000, UINT64_MAX / 2, UINT64_MAX - 1) >= 1);
}

/* A cap of UINT64_MAX ("no cap") once computed rand % (UINT64_MAX + 1), a
 * division by zero (SIGFPE). Every attempt count, including ones that reach
 * the ceiling, must give a delay >= 1 and below the uncapped ceiling. */
static void test_backoff_uncapped(void **state)
{
    (void)state;
    int big = 0;
    for (unsigned attempt = 0; attempt < 200; attempt++) {
        for (int i = 0; i < 50; i++) {
            uint64_t d = backoff_delay(attempt, 100, UINT64_MAX);
            assert_true(d >= 1);
            if (attempt < 10) {
                assert_true(d <= (100ull << attempt));
            }
            if (d > UINT64_MAX / 4) {
                big++;
            }
        }
    }
    /* beyond 2^64 the whole 64-bit range is used, not only a small part */
    assert_true(big > 0);
    /* base already at UINT64_MAX: no doubling, still no division by zero */
    assert_true(backoff_delay(0, UINT64_MAX, UINT64_MAX) >= 1);
    assert_true(backoff_delay(5, UINT64_MAX, UINT64_MAX) >= 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unlimited),
        cmocka_unit_test(test_burst_then_rate),
        cmocka_unit_test(test_default_burst_and_clock_back),
        cmocka_unit_test(test_charge_debt),
        cmocka_unit_test(test_backoff_bounds),
        cmocka_unit_test(test_backoff_uncapped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
