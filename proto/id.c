/*
 * id.c - time-ordered unique ids (ULID layout).
 *
 * 128 bits: a 48-bit Unix millisecond timestamp, then 80 random bits, written
 * as 26 characters of Crockford base32 (10 for the time, 16 for the random
 * part). The alphabet is in ASCII order, so ids sort as strings in time order.
 *
 * Within one process ids are strictly increasing: when the clock has not
 * moved past the last id's millisecond (same ms, or the clock stepped back),
 * the previous random part is incremented by one, carrying into the
 * timestamp if it overflows. Across processes and restarts uniqueness comes
 * from the 80 random bits (getrandom(2)). A fork()ed child notices its new
 * pid and draws fresh random bits, so it never continues the parent's
 * sequence.
 */
#include "proto.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define RAND_BYTES 10
#define TIME_MAX ((UINT64_C(1) << 48) - 1)

static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/* Last id handed out in this process; guarded by id_lock. */
static pthread_mutex_t id_lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t id_pid; /* 0: nothing generated yet in this process */
static uint64_t id_last_ms;
static uint8_t id_last_rand[RAND_BYTES];

/* Fill p with n random bytes. getrandom may be interrupted by a signal or
 * return fewer bytes than asked; loop until done. 0 or -errno. */
static int fill_random(uint8_t *p, size_t n)
{
    size_t got = 0;

    while (got < n) {
        ssize_t r = getrandom(p + got, n - got, 0);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        got += (size_t)r;
    }
    return 0;
}

static int now_ms(uint64_t *out)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) {
        return -errno;
    }
    /* Before 1970 (a board with no RTC and no NTP yet, not this early) is
     * treated as 0: ids stay valid and ordered, just not meaningful in time. */
    if (ts.tv_sec < 0) {
        *out = 0;
        return 0;
    }
    *out = (uint64_t)ts.tv_sec * 1000u + (uint64_t)(ts.tv_nsec / 1000000);
    return 0;
}

/* Add one to the big-endian 80-bit value; true when it wrapped to zero. */
static bool increment(uint8_t *r)
{
    for (int i = RAND_BYTES - 1; i >= 0; i--) {
        if (++r[i] != 0) {
            return false;
        }
    }
    return true;
}

/* Five bits starting at bit pos (0 = most significant) of the random part. */
static unsigned bits5(const uint8_t *b, unsigned pos)
{
    unsigned byte = pos / 8, shift = pos % 8;
    unsigned v = (unsigned)b[byte] << 8;

    if (byte + 1 < RAND_BYTES) {
        v |= b[byte + 1];
    }
    return (v >> (11 - shift)) & 31u;
}

static void encode(uint64_t ms, const uint8_t *rnd, char *out)
{
    for (int i = 9; i >= 0; i--) {
        out[i] = crockford[ms & 31u];
        ms >>= 5;
    }
    for (unsigned j = 0; j < 16; j++) {
        out[10 + j] = crockford[bits5(rnd, j * 5)];
    }
    out[PROTO_GENERATED_ID_LEN] = '\0';
}

int proto_id_new(char *out)
{
    uint64_t now = 0, ms;
    uint8_t rnd[RAND_BYTES];
    pid_t pid = getpid();
    int rc;

    if (!out) {
        return -EINVAL;
    }
    rc = now_ms(&now);
    if (rc) {
        return rc;
    }
    pthread_mutex_lock(&id_lock);
    /* Work on a copy; the state changes only when an id is handed out. */
    if (pid == id_pid && now <= id_last_ms) {
        ms = id_last_ms;
        memcpy(rnd, id_last_rand, sizeof(rnd));
        if (increment(rnd)) {
            /* 2^80 ids in one millisecond: carry into the timestamp. */
            ms++;
        }
    } else {
        rc = fill_random(rnd, sizeof(rnd));
        if (rc) {
            pthread_mutex_unlock(&id_lock);
            return rc;
        }
        ms = now;
    }
    if (ms > TIME_MAX) {
        /* The year 10889. Refuse rather than wrap and break the ordering. */
        pthread_mutex_unlock(&id_lock);
        return -EOVERFLOW;
    }
    id_pid = pid;
    id_last_ms = ms;
    memcpy(id_last_rand, rnd, sizeof(rnd));
    encode(ms, rnd, out);
    pthread_mutex_unlock(&id_lock);
    return 0;
}
