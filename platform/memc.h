/*
 * memc.h - freed small blocks kept for reuse by one thread: a list pop
 * instead of a malloc on the hot path.
 *
 * What it is for: SQLite (Debian's has no lookaside: every statement run
 * mallocs and frees its buffers; db.c installs it with
 * SQLITE_CONFIG_MALLOC) and, in the hub, cJSON (the trees intake parses
 * and the fanout frees; hub/main.c installs it with cJSON_InitHooks).
 * Both allocate in bursts of thousands of small blocks, more than glibc's
 * per-thread cache holds (7 per size), so glibc walks its bins.
 *
 * Blocks are plain malloc blocks, with no header: a block from memc_alloc
 * may be freed with free(), and memc_free takes any malloc block. A freed
 * block's size class comes from malloc_usable_size (glibc): power-of-two
 * classes 32 B .. 4 KiB. So a string printed by cJSON through the hooks
 * and released with free() is fine, and hooks installed after some blocks
 * were allocated are fine too.
 *
 * Threads: one thread in the process owns the lists (memc_claim: the event
 * loop's thread) and needs no lock. Every other thread takes its blocks
 * from malloc and returns them with free, so a block may be allocated and
 * freed on any thread. At most memc_set_keep() bytes stay kept per class
 * (16 KiB unless set: 128 KiB in all).
 *
 * Left out (plain malloc and free, nothing kept) under AddressSanitizer,
 * so it still sees every block, and without glibc's malloc_usable_size.
 */
#ifndef TIDINGS_MEMC_H
#define TIDINGS_MEMC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MEMC_CLASSES 8 /* 32, 64, ... 4096 bytes */
#define MEMC_MIN 32    /* the smallest class */
#define MEMC_MAX 4096  /* the largest class; larger blocks are never kept */
#define MEMC_KEEP_DEFAULT (16 * 1024)
#define MEMC_KEEP_MAX (4 * 1024 * 1024)

/* n bytes (n = 0 is taken as 1), or NULL when out of memory. The block
 * holds at least memc_roundup(n) bytes. Any thread. */
void *memc_alloc(size_t n);

/* Return p (NULL: nothing) from memc_alloc, memc_realloc or malloc. Kept
 * for reuse when this thread owns the lists and its class has room, else
 * free(). Any thread. */
void memc_free(void *p);

/* realloc: p unchanged when it already holds n bytes, else a new block with
 * p's bytes and p freed; NULL (p untouched) when out of memory. p NULL is
 * memc_alloc(n). Any thread. */
void *memc_realloc(void *p, size_t n);

/* The bytes p can hold (at least what was asked), 0 for NULL. */
size_t memc_size(const void *p);

/* What memc_alloc(n) makes room for: the class for n <= MEMC_MAX, else n
 * rounded up to 8. */
size_t memc_roundup(size_t n);

/* Make the calling thread the owner of the lists. true when it is (now or
 * already), false when another thread owns them (this one then uses
 * malloc and free). Ownership is never given up. */
bool memc_claim(void);

/* Bytes kept per class, at most MEMC_KEEP_MAX (larger is cut). The owner
 * thread; takes effect on the next free (nothing is released now). */
void memc_set_keep(size_t bytes);

/* Release every kept block (the owner thread; nothing elsewhere). */
void memc_trim(void);

struct memc_stats {
    bool enabled; /* false under ASan or without malloc_usable_size */
    size_t keep;  /* bytes kept at most per class */
    size_t kept_blocks[MEMC_CLASSES];
    size_t kept_bytes[MEMC_CLASSES];
    uint64_t reused; /* allocations served from a list */
    uint64_t fresh;  /* owner allocations that went to malloc */
};

/* The owner thread's counters and setting (all zero elsewhere but enabled). */
void memc_get_stats(struct memc_stats *st);

#endif
