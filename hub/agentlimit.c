/* agentlimit.c - per-agent rate and daily quota (see agentlimit.h). */
#include "agentlimit.h"

#include "bucket.h"
#include "error.h"
#include "log.h"
#include "proto.h"
#include "store_engine.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DAY_MS 86400000

struct slot {
    char agent[PROTO_AGENT_MAX + 1]; /* "" = free */
    struct bucket bucket;
    int64_t day;   /* quota day of `count`; -1 = not loaded */
    int64_t count; /* accepted on that day */
    uint64_t used; /* LRU clock */
    bool limited;  /* over the rate: logged once per episode */
    bool over;     /* over the quota: logged once per day */
};

struct agentlimit {
    store_t *store;
    uint64_t rate, burst;
    int64_t quota;
    uint64_t clock;
    struct slot slots[AGENTLIMIT_SLOTS];
};

agentlimit_t *agentlimit_create(store_t *store, uint64_t rate, uint64_t burst, int64_t quota)
{
    agentlimit_t *al = calloc(1, sizeof(*al));
    if (al) {
        al->store = store;
        al->rate = rate;
        al->burst = burst;
        al->quota = quota;
    }
    return al;
}

void agentlimit_destroy(agentlimit_t *al)
{
    free(al);
}

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) {
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    }
    return h;
}

static struct slot *slot_for(agentlimit_t *al, const char *agent, uint64_t mono_ms)
{
    uint64_t h = hash(agent);
    struct slot *victim = NULL;
    for (unsigned i = 0; i < AGENTLIMIT_PROBE; i++) {
        struct slot *s = &al->slots[(h + i) % AGENTLIMIT_SLOTS];
        if (strcmp(s->agent, agent) == 0) {
            s->used = ++al->clock;
            return s;
        }
        /* the victim: the first free slot, else the least recently used */
        if (!s->agent[0]) {
            if (!victim || victim->agent[0]) {
                victim = s;
            }
        } else if (!victim || (victim->agent[0] && s->used < victim->used)) {
            victim = s;
        }
    }
    /* New agent (or forgotten): a full bucket; the quota is read back. */
    memset(victim, 0, sizeof(*victim));
    snprintf(victim->agent, sizeof(victim->agent), "%s", agent);
    bucket_init(&victim->bucket, al->rate, al->burst, mono_ms);
    victim->day = -1;
    victim->used = ++al->clock;
    return victim;
}

static int load_day(agentlimit_t *al, struct slot *s, int64_t day)
{
    if (s->day == day) {
        return 0;
    }
    int64_t n = 0;
    int rc = store_quota_get(al->store, s->agent, day, &n);
    if (rc < 0) {
        return rc;
    }
    s->day = day;
    s->count = n;
    s->over = false;
    return 0;
}

enum agentlimit_verdict agentlimit_check(agentlimit_t *al, const char *agent, bool first,
                                         uint64_t mono_ms, int64_t wall_ms)
{
    if (al->rate == 0 && al->quota == 0) {
        return AGENTLIMIT_OK;
    }
    struct slot *s = slot_for(al, agent, mono_ms);
    if (al->quota > 0) {
        if (load_day(al, s, wall_ms / DAY_MS) < 0) {
            return AGENTLIMIT_DELAY;
        }
        if (s->count >= al->quota) {
            if (!s->over) {
                LOG_WARN("intake",
                         "agent %s: daily quota of %lld reached; new notifications "
                         "are rejected (over_quota) until 00:00 UTC",
                         agent, (long long)al->quota);
                s->over = true;
            }
            return AGENTLIMIT_OVER_QUOTA;
        }
    }
    if (!first) {
        bucket_charge(&s->bucket, mono_ms);
        return AGENTLIMIT_OK;
    }
    if (!bucket_take(&s->bucket, mono_ms)) {
        if (!s->limited) {
            LOG_WARN("intake",
                     "agent %s: over its rate of %llu/s; batches left un-acked for "
                     "the agent to resend",
                     agent, (unsigned long long)al->rate);
            s->limited = true;
        }
        return AGENTLIMIT_DELAY;
    }
    if (s->limited) {
        LOG_INFO("intake", "agent %s: back under its rate", agent);
        s->limited = false;
    }
    return AGENTLIMIT_OK;
}

bool agentlimit_counts(const agentlimit_t *al)
{
    return al->quota > 0;
}

void agentlimit_accepted(agentlimit_t *al, const char *agent, int64_t wall_ms)
{
    if (al->quota == 0) {
        return;
    }
    struct slot *s = slot_for(al, agent, 0);
    int64_t day = wall_ms / DAY_MS;
    if (load_day(al, s, day) < 0) {
        return;
    }
    /* In memory at once (checks later in this iteration see it), on disk in
     * the iteration's transaction. A failed commit leaves memory ahead of
     * disk: conservative (counts more, never less). */
    s->count++;
    int rc = store_quota_add(al->store, agent, day, 1);
    if (rc < 0) {
        LOG_ERROR("intake", "agent %s: cannot count quota: %s", agent, tdg_strerror(rc));
    }
}
