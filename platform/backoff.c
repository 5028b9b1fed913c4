/* backoff.c - capped full-jitter backoff (see backoff.h). */
#include "backoff.h"

#include <sys/random.h>
#include <time.h>

static uint64_t s[2];

static void seed(void)
{
    if (getrandom(s, sizeof(s), GRND_NONBLOCK) != (ssize_t)sizeof(s) || (s[0] | s[1]) == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        s[0] = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull + 1;
        s[1] = (uint64_t)ts.tv_sec ^ 0xD1B54A32D192ED03ull;
    }
}

uint64_t rand_u64(void)
{
    if ((s[0] | s[1]) == 0) {
        seed();
    }
    uint64_t x = s[0];
    const uint64_t y = s[1];
    s[0] = y;
    x ^= x << 23;
    s[1] = x ^ y ^ (x >> 17) ^ (y >> 26);
    return s[1] + y;
}

uint64_t backoff_delay(unsigned attempt, uint64_t base_ms, uint64_t cap_ms)
{
    if (base_ms == 0) {
        return 0;
    }
    uint64_t ceiling = base_ms;
    /* Double without overflow until the cap is reached. */
    for (unsigned i = 0; i < attempt && ceiling < cap_ms; i++) {
        ceiling = ceiling > UINT64_MAX / 2 ? UINT64_MAX : ceiling * 2;
    }
    if (ceiling > cap_ms) {
        ceiling = cap_ms;
    }
    /* A ceiling of UINT64_MAX (cap_ms = UINT64_MAX) has no ceiling + 1: every
     * 64-bit value is in range, and the modulo would divide by zero. */
    uint64_t d = ceiling == UINT64_MAX ? rand_u64() : rand_u64() % (ceiling + 1);
    return d ? d : 1;
}
