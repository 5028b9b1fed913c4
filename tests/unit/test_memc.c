/* test_memc.c - the small-block allocator (platform/memc.h): size classes,
 * reuse by the owner thread, the per-class bound, blocks allocated on one
 * thread and freed on another, realloc growth, and cJSON on it through its
 * hooks (as the hub runs it). Under AddressSanitizer memc keeps nothing
 * (enabled = false): the same tests then check that nothing is kept. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "memc.h"

static bool enabled(void)
{
    struct memc_stats st;
    memc_get_stats(&st);
    return st.enabled;
}

static size_t kept_blocks(int k)
{
    struct memc_stats st;
    memc_get_stats(&st);
    return st.kept_blocks[k];
}

static void check_bound(void)
{
    struct memc_stats st;
    memc_get_stats(&st);
    for (int k = 0; k < MEMC_CLASSES; k++) {
        assert_true(st.kept_bytes[k] <= st.keep);
        if (!st.enabled) {
            assert_int_equal(st.kept_blocks[k], 0);
        }
    }
}

static void test_classes(void **state)
{
    (void)state;
    assert_int_equal(memc_roundup(0), 32);
    assert_int_equal(memc_roundup(1), 32);
    assert_int_equal(memc_roundup(32), 32);
    assert_int_equal(memc_roundup(33), 64);
    assert_int_equal(memc_roundup(64), 64);
    assert_int_equal(memc_roundup(65), 128);
    assert_int_equal(memc_roundup(2049), 4096);
    assert_int_equal(memc_roundup(4096), 4096);
    assert_int_equal(memc_roundup(4097), 4104); /* beyond the classes: to 8 */
    assert_int_equal(memc_roundup(SIZE_MAX), SIZE_MAX);
    /* Every size is given a block that holds it, fully writable (ASan checks the
     * write where memc is off; where it is on, memc_size is glibc's). */
    for (size_t n = 0; n <= 5000; n += (n < 300 ? 1 : 97)) {
        unsigned char *p = memc_alloc(n);
        assert_non_null(p);
        assert_true(memc_size(p) >= n);
        if (enabled()) {
            assert_true(memc_size(p) >= memc_roundup(n));
        }
        memset(p, 0xA5, n);
        memc_free(p);
    }
    memc_free(NULL);
    assert_int_equal(memc_size(NULL), 0);
    memc_trim();
    check_bound();
}

static void test_reuse(void **state)
{
    (void)state;
    assert_true(memc_claim()); /* main() claimed: still the owner */
    memc_set_keep(MEMC_KEEP_DEFAULT);
    memc_trim();
    enum { N = 100 };
    void *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = memc_alloc(40 + (size_t)i % 24); /* class 64 */
        assert_non_null(p[i]);
    }
    for (int i = 0; i < N; i++) {
        memc_free(p[i]);
    }
    struct memc_stats before, after;
    memc_get_stats(&before);
    assert_int_equal(before.kept_blocks[1], enabled() ? N : 0);
    /* Last freed, first reused; a request of the class in any size. */
    void *q = memc_alloc(64);
    memc_get_stats(&after);
    if (enabled()) {
        assert_ptr_equal(q, p[N - 1]);
        assert_int_equal(after.reused, before.reused + 1);
        assert_int_equal(after.kept_blocks[1], N - 1);
    } else {
        assert_int_equal(after.reused, 0);
    }
    memc_free(q);
    /* Blocks beyond the largest class are never kept. */
    void *big = memc_alloc(MEMC_MAX + 1);
    memc_free(big);
    big = memc_alloc(3 * MEMC_MAX);
    memc_free(big);
    check_bound();
    memc_trim();
    for (int k = 0; k < MEMC_CLASSES; k++) {
        assert_int_equal(kept_blocks(k), 0);
    }
}

static void test_bounds(void **state)
{
    (void)state;
    memc_trim();
    memc_set_keep(1024);
    enum { N = 200 };
    void *p[N];
    for (int k = 0; k < MEMC_CLASSES; k++) {
        size_t sz = (size_t)MEMC_MIN << k;
        for (int i = 0; i < N; i++) {
            p[i] = memc_alloc(sz);
            assert_non_null(p[i]);
        }
        for (int i = 0; i < N; i++) {
            memc_free(p[i]);
        }
        size_t want = enabled() ? 1024 / sz : 0;
        assert_int_equal(kept_blocks(k), want < N ? want : N);
        check_bound();
    }
    /* A plain malloc block of any size may be given back too. */
    for (size_t sz = 1; sz < 20000; sz = sz * 3 + 1) {
        memc_free(malloc(sz));
        check_bound();
    }
    memc_set_keep(SIZE_MAX);
    struct memc_stats st;
    memc_get_stats(&st);
    assert_int_equal(st.keep, MEMC_KEEP_MAX);
    memc_set_keep(MEMC_KEEP_DEFAULT);
    memc_trim();
}

/* Blocks cross threads both ways: the worker is not the owner, so it keeps
 * nothing and its blocks are plain malloc blocks of the class size. */
struct xthread {
    void *from_main[64];
    void *from_worker[64];
    bool worker_claimed;
    size_t worker_kept;
};

static void *worker(void *arg)
{
    struct xthread *x = arg;
    x->worker_claimed = memc_claim();
    for (int i = 0; i < 64; i++) {
        memc_free(x->from_main[i]); /* allocated by the owner */
        x->from_worker[i] = memc_alloc(100);
        if (x->from_worker[i]) {
            memset(x->from_worker[i], i, 100);
        }
    }
    struct memc_stats st;
    memc_get_stats(&st);
    for (int k = 0; k < MEMC_CLASSES; k++) {
        x->worker_kept += st.kept_blocks[k];
    }
    return NULL;
}

static void test_cross_thread(void **state)
{
    (void)state;
    memc_trim();
    struct xthread x = {0};
    for (int i = 0; i < 64; i++) {
        x.from_main[i] = memc_alloc(200);
        assert_non_null(x.from_main[i]);
    }
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, worker, &x), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_false(x.worker_claimed);
    assert_int_equal(x.worker_kept, 0);
    for (int k = 0; k < MEMC_CLASSES; k++) {
        assert_int_equal(kept_blocks(k), 0); /* the worker freed to malloc */
    }
    for (int i = 0; i < 64; i++) {
        assert_non_null(x.from_worker[i]);
        assert_true(memc_size(x.from_worker[i]) >= 100);
        for (int j = 0; j < 100; j++) {
            assert_int_equal(((unsigned char *)x.from_worker[i])[j], i);
        }
        if (i % 2) {
            memc_free(x.from_worker[i]); /* kept by the owner */
        } else {
            free(x.from_worker[i]); /* plain free works too: no header */
        }
    }
    assert_int_equal(kept_blocks(2), enabled() ? 32 : 0); /* class 128 */
    check_bound();
    memc_trim();
}

static void test_growth(void **state)
{
    (void)state;
    unsigned char *p = memc_realloc(NULL, 10);
    assert_non_null(p);
    for (int i = 0; i < 10; i++) {
        p[i] = (unsigned char)i;
    }
    size_t have = 10;
    for (size_t n = 11; n <= 40000; n = n * 2 + 3) {
        unsigned char *q = memc_realloc(p, n);
        assert_non_null(q);
        for (size_t i = 0; i < have; i++) {
            assert_int_equal(q[i], (unsigned char)i);
        }
        for (size_t i = have; i < n; i++) {
            q[i] = (unsigned char)i;
        }
        p = q;
        have = n;
    }
    /* Shrinking, or growing within the block, keeps the block. */
    unsigned char *q = memc_realloc(p, 100);
    assert_ptr_equal(q, p);
    for (size_t i = 0; i < 100; i++) {
        assert_int_equal(q[i], (unsigned char)i);
    }
    memc_free(q);
    void *s = memc_alloc(33);
    assert_ptr_equal(memc_realloc(s, memc_size(s)), s);
    memc_free(s);
    memc_trim();
}

/* As the hub runs cJSON: trees, printed text freed with cJSON_free or free. */
static void test_cjson_hooks(void **state)
{
    (void)state;
    memc_set_keep(256 * 1024);
    cJSON_Hooks hooks = {.malloc_fn = memc_alloc, .free_fn = memc_free};
    cJSON *early = cJSON_CreateString("made before the hooks");
    cJSON_InitHooks(&hooks);
    const char *doc = "{\"id\":\"n1\",\"to\":\"user:alice\",\"title\":\"Hello\","
                      "\"body\":\"a body long enough for the 128-byte class, written out in "
                      "full so that it is\",\"data\":{\"k\":[1,2.5,true,null,\"v\"]}}";
    for (int round = 0; round < 50; round++) {
        cJSON *root = cJSON_Parse(doc);
        assert_non_null(root);
        char *text = cJSON_PrintUnformatted(root);
        assert_non_null(text);
        assert_string_equal(text, doc);
        if (round % 2) {
            cJSON_free(text);
        } else {
            free(text);
        }
        cJSON_Delete(root);
    }
    struct memc_stats st;
    memc_get_stats(&st);
    if (st.enabled) {
        assert_true(st.reused > 0);
    }
    check_bound();
    cJSON_Delete(early); /* a plain malloc block, freed through the hook */
    cJSON_InitHooks(NULL);
    memc_set_keep(MEMC_KEEP_DEFAULT);
    memc_trim();
}

int main(void)
{
    memc_claim();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classes), cmocka_unit_test(test_reuse),
        cmocka_unit_test(test_bounds),  cmocka_unit_test(test_cross_thread),
        cmocka_unit_test(test_growth),  cmocka_unit_test(test_cjson_hooks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
