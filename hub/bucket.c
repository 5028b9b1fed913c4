/* bucket.c - token bucket (see bucket.h). */
#include "bucket.h"

#define MILLI 1000u

void bucket_init(struct bucket *b, uint64_t rate, uint64_t burst, uint64_t now_ms)
{
    if (rate > UINT32_MAX) {
        rate = UINT32_MAX; /* keeps rate * elapsed below overflow for years */
    }
    if (burst == 0) {
        burst = rate ? rate : 1;
    }
    if (burst > UINT32_MAX) {
        burst = UINT32_MAX;
    }
    b->rate = rate;
    b->cap = burst * MILLI;
    b->level = (int64_t)b->cap;
    b->last_ms = now_ms;
}

static void refill(struct bucket *b, uint64_t now_ms)
{
    if (now_ms <= b->last_ms) {
        return; /* the same ms, or a clock that went back: nothing new */
    }
    uint64_t elapsed = now_ms - b->last_ms;
    /* rate tokens/s = rate thousandths per ms. Cap elapsed so the product
     * cannot overflow: a full refill never needs more than cap/rate ms. */
    uint64_t full_ms = 2 * (b->cap / b->rate + 1); /* from a full debt */
    if (elapsed > full_ms) {
        elapsed = full_ms;
    }
    b->level += (int64_t)(elapsed * b->rate);
    if (b->level > (int64_t)b->cap) {
        b->level = (int64_t)b->cap;
    }
    b->last_ms = now_ms;
}

bool bucket_take(struct bucket *b, uint64_t now_ms)
{
    if (b->rate == 0) {
        return true;
    }
    refill(b, now_ms);
    if (b->level < (int64_t)MILLI) {
        return false;
    }
    b->level -= MILLI;
    return true;
}

void bucket_charge(struct bucket *b, uint64_t now_ms)
{
    if (b->rate == 0) {
        return;
    }
    refill(b, now_ms);
    if (b->level - (int64_t)MILLI >= -(int64_t)b->cap) {
        b->level -= MILLI;
    }
}

uint64_t bucket_wait_ms(struct bucket *b, uint64_t now_ms)
{
    if (b->rate == 0) {
        return 0;
    }
    refill(b, now_ms);
    if (b->level >= (int64_t)MILLI) {
        return 0;
    }
    uint64_t missing = (uint64_t)((int64_t)MILLI - b->level);
    return (missing + b->rate - 1) / b->rate; /* round up: never early */
}
