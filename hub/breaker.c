/* breaker.c - circuit breaker (see breaker.h). */
#include "breaker.h"

#include "log.h"

#include <stdio.h>

const char *breaker_state_name(enum breaker_state s)
{
    switch (s) {
    case BREAKER_CLOSED:
        return "closed";
    case BREAKER_OPEN:
        return "open";
    case BREAKER_HALF_OPEN:
        return "half_open";
    }
    return "unknown";
}

void breaker_init(struct breaker *b, const char *name, const struct breaker_opts *o)
{
    *b = (struct breaker){.o = *o};
    snprintf(b->name, sizeof(b->name), "%s", name ? name : "");
    if (b->o.failures < 1) {
        b->o.failures = 1;
    }
    if (b->o.window < 1) {
        b->o.window = 1;
    }
    if (b->o.window > 64) {
        b->o.window = 64;
    }
    if (b->o.ratio_pct > 100) {
        b->o.ratio_pct = 100;
    }
    if (b->o.probes < 1) {
        b->o.probes = 1;
    }
    if (b->o.open_ms < 1) {
        b->o.open_ms = 1;
    }
}

static void reset_counts(struct breaker *b)
{
    b->consecutive = 0;
    b->ring = 0;
    b->ring_n = b->ring_fail = 0;
    b->probing = b->probe_ok = 0;
}

static void to_open(struct breaker *b, uint64_t now_ms, const char *why)
{
    LOG_WARN("breaker", "%s: %s -> open for %llums (%s)", b->name, breaker_state_name(b->state),
             (unsigned long long)b->o.open_ms, why);
    b->state = BREAKER_OPEN;
    b->opened_ms = now_ms;
    b->opens++;
    reset_counts(b);
}

enum breaker_state breaker_state(struct breaker *b, uint64_t now_ms)
{
    if (b->state == BREAKER_OPEN && now_ms >= b->opened_ms + b->o.open_ms) {
        b->state = BREAKER_HALF_OPEN;
        reset_counts(b);
        LOG_INFO("breaker", "%s: open -> half_open (up to %u probe(s))", b->name, b->o.probes);
    }
    return b->state;
}

bool breaker_allow(struct breaker *b, uint64_t now_ms)
{
    switch (breaker_state(b, now_ms)) {
    case BREAKER_CLOSED:
        return true;
    case BREAKER_OPEN:
        return false;
    case BREAKER_HALF_OPEN:
        if (b->probing + b->probe_ok >= b->o.probes) {
            return false;
        }
        b->probing++;
        return true;
    }
    return false;
}

void breaker_release(struct breaker *b)
{
    if (b->state == BREAKER_HALF_OPEN && b->probing > 0) {
        b->probing--;
    }
}

void breaker_record(struct breaker *b, bool failure, uint64_t now_ms)
{
    switch (b->state) {
    case BREAKER_OPEN:
        /* A request let through before it opened: its verdict is already
         * counted in the opening. */
        return;
    case BREAKER_HALF_OPEN:
        if (b->probing == 0) {
            return; /* sent while closed, answered after the state moved on */
        }
        b->probing--;
        if (failure) {
            to_open(b, now_ms, "a half-open probe failed");
            return;
        }
        if (++b->probe_ok >= b->o.probes) {
            LOG_INFO("breaker", "%s: half_open -> closed (%u probe(s) succeeded)", b->name,
                     b->probe_ok);
            b->state = BREAKER_CLOSED;
            reset_counts(b);
        }
        return;
    case BREAKER_CLOSED:
        break;
    }
    b->consecutive = failure ? b->consecutive + 1 : 0;
    uint64_t top = (uint64_t)1 << (b->o.window - 1);
    if (b->ring_n == b->o.window) {
        if (b->ring & top) {
            b->ring_fail--;
        }
    } else {
        b->ring_n++;
    }
    b->ring = ((b->ring << 1) | (failure ? 1u : 0u)) & (top | (top - 1));
    if (failure) {
        b->ring_fail++;
    }
    char why[96];
    if (b->consecutive >= b->o.failures) {
        snprintf(why, sizeof(why), "%u failures in a row", b->consecutive);
        to_open(b, now_ms, why);
    } else if (b->o.ratio_pct && b->ring_n == b->o.window &&
               (uint64_t)b->ring_fail * 100 >= (uint64_t)b->o.ratio_pct * b->o.window) {
        snprintf(why, sizeof(why), "%u of the last %u outcomes failed", b->ring_fail, b->ring_n);
        to_open(b, now_ms, why);
    }
}

uint64_t breaker_retry_in(struct breaker *b, uint64_t now_ms)
{
    if (breaker_state(b, now_ms) != BREAKER_OPEN) {
        return 0;
    }
    uint64_t at = b->opened_ms + b->o.open_ms;
    return at > now_ms ? at - now_ms : 1;
}
