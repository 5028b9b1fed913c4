/*
 * backoff.h - capped full-jitter exponential backoff, and the random numbers
 * it needs. The one place retry delays are computed (AWS "full jitter":
 * sleep = random(0, min(cap, base * 2^attempt))).
 */
#ifndef TIDINGS_BACKOFF_H
#define TIDINGS_BACKOFF_H

#include <stdint.h>

/* Delay in ms before retry number `attempt` (0-based). Never more than cap_ms
 * (cap_ms = UINT64_MAX: no cap, the whole 64-bit range); never 0 when
 * base_ms > 0 (at least 1 ms, even with cap_ms = 0), so a retry is never a
 * busy loop. */
uint64_t backoff_delay(unsigned attempt, uint64_t base_ms, uint64_t cap_ms);

/* Uniform 64-bit pseudo-random value (xorshift128+, seeded from getrandom).
 * For jitter only: not for keys or ids. Not thread-safe. */
uint64_t rand_u64(void);

#endif
