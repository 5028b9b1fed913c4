/* memc.c - freed small blocks kept for reuse by one thread (see memc.h). */
#include "memc.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Left out under AddressSanitizer, so that it still sees every block (a
 * block kept here would hide a use after free), and where the C library
 * cannot say how large a malloc block is (the class of a freed block comes
 * from that, since blocks carry no header). */
#if defined(__SANITIZE_ADDRESS__)
#define MEMC_ON 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MEMC_ON 0
#endif
#endif
#if defined(__GLIBC__)
#include <malloc.h>
#define MEMC_HAVE_USABLE 1
#else
#define MEMC_HAVE_USABLE 0
#endif
#ifndef MEMC_ON
#define MEMC_ON MEMC_HAVE_USABLE
#endif

#define MEMC_MIN_SHIFT 5 /* 32 bytes */

struct memc_block {
    struct memc_block *next;
};

static struct {
    struct memc_block *head[MEMC_CLASSES];
    size_t blocks[MEMC_CLASSES];
    size_t max[MEMC_CLASSES]; /* keep / class size, set with keep */
    size_t keep;
    uint64_t reused, fresh;
} lists = {.keep = MEMC_KEEP_DEFAULT}; /* the owner thread's only */

static _Thread_local bool owner;
static atomic_int claimed;

/* The class that holds n bytes (n >= 1), or -1 beyond MEMC_MAX. */
static int class_up(size_t n)
{
    if (n <= MEMC_MIN) {
        return 0;
    }
    if (n > MEMC_MAX) {
        return -1;
    }
    /* bits needed for n - 1: 2^bits is the smallest power of two >= n */
    return 64 - __builtin_clzll((unsigned long long)(n - 1)) - MEMC_MIN_SHIFT;
}

#if MEMC_ON
/* The largest class a block of usable size u can serve, or -1 when it is
 * smaller than the smallest class or at least twice the largest (such a
 * block is not worth its keep). */
static int class_down(size_t u)
{
    if (u < MEMC_MIN || u >= 2 * (size_t)MEMC_MAX) {
        return -1;
    }
    return 63 - __builtin_clzll((unsigned long long)u) - MEMC_MIN_SHIFT;
}
#endif

static size_t class_size(int k)
{
    return (size_t)1 << (k + MEMC_MIN_SHIFT);
}

static void set_keep(size_t bytes)
{
    lists.keep = bytes > MEMC_KEEP_MAX ? MEMC_KEEP_MAX : bytes;
    for (int k = 0; k < MEMC_CLASSES; k++) {
        lists.max[k] = lists.keep / class_size(k);
    }
}

void *memc_alloc(size_t n)
{
    if (n == 0) {
        n = 1;
    }
    int k = class_up(n);
    if (k < 0 || !MEMC_ON) {
        return malloc(n); /* exact under ASan, so it sees an overrun */
    }
#if MEMC_ON
    if (owner) {
        struct memc_block *b = lists.head[k];
        if (b) {
            lists.head[k] = b->next;
            lists.blocks[k]--;
            lists.reused++;
            return b;
        }
        lists.fresh++;
    }
#endif
    /* The whole class, so that the block serves any request of it later. */
    return malloc(class_size(k));
}

void memc_free(void *p)
{
    if (!p) {
        return;
    }
#if MEMC_ON
    if (owner) {
        int k = class_down(malloc_usable_size(p));
        /* Counted at the class size: a kept block holds less than twice that. */
        if (k >= 0 && lists.blocks[k] < lists.max[k]) {
            struct memc_block *b = p;
            b->next = lists.head[k];
            lists.head[k] = b;
            lists.blocks[k]++;
            return;
        }
    }
#endif
    free(p);
}

size_t memc_size(const void *p)
{
#if MEMC_HAVE_USABLE
    return p ? malloc_usable_size((void *)p) : 0;
#else
    (void)p;
    return 0; /* unknown: db.c does not install memc then (memc_get_stats) */
#endif
}

void *memc_realloc(void *p, size_t n)
{
    if (!p) {
        return memc_alloc(n);
    }
    if (n == 0) {
        n = 1;
    }
    size_t old = memc_size(p);
    if (n <= old) {
        return p; /* the block already holds n bytes */
    }
    if (n > MEMC_MAX || !MEMC_ON) {
        return realloc(p, n); /* a plain malloc block: glibc may grow it in place */
    }
    void *q = memc_alloc(n);
    if (q) {
        memcpy(q, p, old);
        memc_free(p);
    }
    return q;
}

size_t memc_roundup(size_t n)
{
    int k = class_up(n ? n : 1);
    if (k >= 0) {
        return class_size(k);
    }
    return n > SIZE_MAX - 7 ? n : (n + 7) & ~(size_t)7;
}

bool memc_claim(void)
{
    if (owner) {
        return true;
    }
    int expect = 0;
    if (atomic_compare_exchange_strong(&claimed, &expect, 1)) {
        set_keep(lists.keep);
        owner = true;
    }
    return owner;
}

void memc_set_keep(size_t bytes)
{
    if (owner) {
        set_keep(bytes);
    }
}

void memc_trim(void)
{
    if (!owner) {
        return;
    }
    for (int k = 0; k < MEMC_CLASSES; k++) {
        while (lists.head[k]) {
            struct memc_block *b = lists.head[k];
            lists.head[k] = b->next;
            free(b);
        }
        lists.blocks[k] = 0;
    }
}

void memc_get_stats(struct memc_stats *st)
{
    memset(st, 0, sizeof(*st));
    st->enabled = MEMC_ON;
    if (!owner) {
        return;
    }
    st->keep = lists.keep;
    for (int k = 0; k < MEMC_CLASSES; k++) {
        st->kept_blocks[k] = lists.blocks[k];
        st->kept_bytes[k] = lists.blocks[k] * class_size(k);
    }
    st->reused = lists.reused;
    st->fresh = lists.fresh;
}
