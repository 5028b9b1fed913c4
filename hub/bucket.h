/*
 * bucket.h - a token bucket: `rate` tokens per second, at most `burst` saved.
 *
 * Plain value type, no allocation, O(1) per call; the caller passes the
 * monotonic time in ms (loop_now_ms), so tests drive it with a fake clock.
 * Tokens are counted in thousandths so rates below one per ms stay exact.
 * Used per provider by the dispatcher and per agent by intake.
 */
#ifndef TIDINGS_BUCKET_H
#define TIDINGS_BUCKET_H

#include <stdbool.h>
#include <stdint.h>

struct bucket {
    uint64_t rate; /* tokens per second; 0 = unlimited (take always succeeds) */
    uint64_t cap;  /* burst, in thousandths of a token */
    int64_t level; /* thousandths of a token available; < 0: debt (bucket_charge) */
    uint64_t last_ms;
};

/* rate per second (0 = unlimited); burst = tokens that may be saved up
 * (0 means rate, at least 1). The bucket starts full. */
void bucket_init(struct bucket *b, uint64_t rate, uint64_t burst, uint64_t now_ms);

/* Take one token: true, or false when none is available (nothing taken). */
bool bucket_take(struct bucket *b, uint64_t now_ms);

/* Take one token even when none is available: the bucket goes into debt
 * (at most one burst deep), which later takes wait out. For work admitted
 * as a whole (a batch whose first item took a real token). */
void bucket_charge(struct bucket *b, uint64_t now_ms);

/* Milliseconds until one token is available: 0 when one is now. */
uint64_t bucket_wait_ms(struct bucket *b, uint64_t now_ms);

#endif
