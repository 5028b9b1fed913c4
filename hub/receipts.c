/* receipts.c - the receipts outbox to MQTT (see receipts.h). */
#include "receipts.h"

#include "error.h"
#include "log.h"
#include "proto.h"
#include "store_engine.h"

#include <errno.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define MOD "receipts"
#define MAX_GROUPS 16  /* agents per flush */
#define MAX_PENDING 64 /* messages awaiting PUBACK; beyond, wait */

struct item {
    struct proto_receipt x;
    int64_t seq;
    unsigned group;
    int state; /* index in store_terminal_states, -1: none of them */
    bool have_ok[PROTO_RECEIPT_MAX_CHANNELS];
};

struct group {
    char agent[PROTO_AGENT_MAX + 1];
    unsigned n;
};

/* One published message: the receipts of one agent, seq from..to. */
struct pending {
    int mid;
    unsigned n;
    int64_t from, to;
    bool tally_ok;                    /* every receipt's state is in tally */
    unsigned tally[STORE_TERMINAL_N]; /* its receipts per terminal state */
    char agent[PROTO_AGENT_MAX + 1];
};

struct receipts {
    store_t *store;
    unsigned batch;
    int64_t cursor; /* highest seq published on this connection, at most
                     * the outbox's top after a delete (clamp_to_top) */
    struct item *items;
    const struct proto_receipt **group_items; /* one group's receipts, for the writer */
    char *buf;                                /* the message being written */
    size_t cap;                               /* grows to the largest message so far: at most batch
                                               * receipts of bounded fields (proto_receipt) */
    unsigned nitems;
    struct group groups[MAX_GROUPS];
    unsigned ngroups;
    bool stop; /* the batch hit MAX_GROUPS: the rest waits */
    struct pending pend[MAX_PENDING];
    unsigned npend;
    bool store_err_logged, pub_err_logged;
    uint64_t from_memory; /* receipts taken from the store's memory (tests) */
    struct metric *m_published, *m_confirmed, *m_pending, *m_memory;
};

/* At scrape time only: a count over the outbox is too dear per iteration
 * when a backlog has built up. */
static void collect(void *arg)
{
    receipts_t *r = arg;
    int64_t n = 0;
    if (r->m_pending && store_receipts_pending(r->store, &n) == 0) {
        r->m_pending->v = n;
    }
}

receipts_t *receipts_create(store_t *store, metrics_t *metrics, unsigned batch)
{
    receipts_t *r = calloc(1, sizeof(*r));
    if (!r) {
        return NULL;
    }
    r->store = store;
    r->batch = batch ? batch : 1;
    r->items = calloc(r->batch, sizeof(*r->items));
    r->group_items = calloc(r->batch, sizeof(*r->group_items));
    if (!r->items || !r->group_items) {
        receipts_destroy(r);
        return NULL;
    }
    if (metrics) {
        r->m_published =
            metrics_series(metrics, METRIC_COUNTER, "tidings_hub_receipts_published_total",
                           "Receipts published to agents (a resend counts again)", "");
        r->m_confirmed =
            metrics_series(metrics, METRIC_COUNTER, "tidings_hub_receipts_confirmed_total",
                           "Receipts acknowledged by the broker and deleted", "");
        r->m_memory = metrics_series(metrics, METRIC_COUNTER,
                                     "tidings_hub_receipts_from_memory_total",
                                     "Receipts published from the store's memory, not read back",
                                     "");
        r->m_pending = metrics_series(metrics, METRIC_GAUGE, "tidings_hub_receipts_pending",
                                      "Receipts in the outbox, published or not", "");
        if (metrics_on_collect(metrics, collect, r) < 0) {
            receipts_destroy(r);
            return NULL;
        }
    }
    return r;
}

void receipts_destroy(receipts_t *r)
{
    if (!r) {
        return;
    }
    free(r->items);
    free(r->group_items);
    free(r->buf);
    free(r);
}

/* Texts from the store, cut at a UTF-8 character boundary when too long:
 * the agent rejects an envelope whose text is not valid UTF-8. */
#define copy_text store_copy_text

/* Count attempt a into item t's per-channel outcome. */
static void add_attempt(struct item *t, const struct store_attempt_row *a)
{
    struct proto_receipt *x = &t->x;
    unsigned i = 0;
    while (i < x->nch && strcmp(x->ch[i].channel, a->channel) != 0) {
        i++;
    }
    if (i == x->nch) {
        if (x->nch == PROTO_RECEIPT_MAX_CHANNELS) {
            return;
        }
        x->nch++;
        copy_text(x->ch[i].channel, sizeof(x->ch[i].channel), a->channel);
        x->ch[i].attempts = 0;
        t->have_ok[i] = false;
    }
    struct proto_receipt_channel *c = &x->ch[i];
    c->attempts++;
    bool ok = strcmp(a->state, "ok") == 0;
    /* The deciding attempt: the last success, else the last one. */
    if (ok || !t->have_ok[i]) {
        copy_text(c->result, sizeof(c->result), a->state);
        copy_text(c->reason, sizeof(c->reason), a->reason);
        c->status = a->status;
        t->have_ok[i] = t->have_ok[i] || ok;
    }
}

/* A new item for the receipt with this seq, in agent's group; NULL (and
 * r->stop) when the batch or the groups are full: the rest waits. */
static struct item *new_item(receipts_t *r, int64_t seq, const char *agent)
{
    if (r->nitems == r->batch) {
        r->stop = true;
        return NULL;
    }
    unsigned g = 0;
    while (g < r->ngroups && strcmp(r->groups[g].agent, agent) != 0) {
        g++;
    }
    if (g == r->ngroups) {
        if (r->ngroups == MAX_GROUPS) {
            r->stop = true; /* this receipt and later ones: next flush */
            return NULL;
        }
        copy_text(r->groups[g].agent, sizeof(r->groups[g].agent), agent);
        r->groups[g].n = 0;
        r->ngroups++;
    }
    struct item *t = &r->items[r->nitems++];
    t->seq = seq;
    t->group = g;
    r->groups[g].n++;
    return t;
}

static void on_row(void *arg, const struct store_receipt *row, const struct store_attempt_row *a)
{
    receipts_t *r = arg;
    if (r->stop) {
        return;
    }
    struct item *t = r->nitems ? &r->items[r->nitems - 1] : NULL;
    if (!t || t->seq != row->seq) {
        if (!(t = new_item(r, row->seq, row->agent))) {
            return;
        }
        /* Field by field: the item is large (every channel's buffers) and
         * only what nch covers is read. */
        t->state = store_terminal_index(row->state);
        copy_text(t->x.id, sizeof(t->x.id), row->id);
        copy_text(t->x.state, sizeof(t->x.state), row->state);
        copy_text(t->x.reason, sizeof(t->x.reason), row->reason);
        t->x.at_ms = row->at_ms;
        t->x.nch = 0;
    }
    if (a->channel) {
        add_attempt(t, a);
    }
}

/* A receipt kept in memory by the store: the same item as its rows give. */
static bool on_mem(void *arg, int64_t seq, const char *agent, const struct proto_receipt *x)
{
    receipts_t *r = arg;
    struct item *t = new_item(r, seq, agent);
    if (!t) {
        return false;
    }
    t->state = store_terminal_index(x->state);
    /* Only what nch covers: the channels' buffers are most of it. */
    memcpy(&t->x, x, offsetof(struct proto_receipt, ch) + x->nch * sizeof(x->ch[0]));
    r->from_memory++;
    if (r->m_memory) {
        r->m_memory->v++;
    }
    return true;
}

/* Write the group's receipts into r->buf (grown when too small). Length,
 * or 0 when out of memory. */
static size_t write_group(receipts_t *r, unsigned k)
{
    size_t len = proto_receipts_write(r->buf, r->cap, r->group_items, k);
    if (len >= r->cap) {
        size_t cap = len + 1 > 2 * r->cap ? len + 1 : 2 * r->cap;
        char *b = realloc(r->buf, cap);
        if (!b) {
            return 0;
        }
        r->buf = b;
        r->cap = cap;
        len = proto_receipts_write(r->buf, r->cap, r->group_items, k);
    }
    return len;
}

/* Publish group gi's receipts as one message. */
static bool publish_group(receipts_t *r, mqtt_t *mqtt, unsigned gi, int64_t *max_seq)
{
    struct group *g = &r->groups[gi];
    struct pending p = {.tally_ok = true};
    unsigned k = 0;
    int64_t from = INT64_MAX, to = 0;
    for (unsigned i = 0; i < r->nitems; i++) {
        const struct item *t = &r->items[i];
        if (t->group == gi) {
            r->group_items[k++] = &t->x;
            from = t->seq < from ? t->seq : from;
            to = t->seq > to ? t->seq : to;
            if (t->state >= 0) {
                p.tally[t->state]++;
            } else {
                p.tally_ok = false;
            }
        }
    }
    size_t len = write_group(r, k);
    char topic[160];
    int mid = 0, rc = -ENOMEM;
    if (len > 0 && proto_topic(topic, sizeof(topic), PROTO_TOPIC_RECEIPTS, g->agent) == 0) {
        rc = mqtt_publish(mqtt, topic, r->buf, len, 1, false, 0, NULL, &mid);
    }
    if (rc < 0) {
        if (!r->pub_err_logged) {
            LOG_WARN(MOD, "agent %s: %u receipt(s) not published (%s); kept for later", g->agent, k,
                     tdg_strerror(rc));
            r->pub_err_logged = true;
        }
        return false;
    }
    r->pub_err_logged = false;
    /* Every row of this agent in [from, to] is in this message: the batch
     * is contiguous in seq, and all its rows of one agent go to one group. */
    p.mid = mid;
    p.n = k;
    p.from = from;
    p.to = to;
    copy_text(p.agent, sizeof(p.agent), g->agent);
    r->pend[r->npend++] = p;
    *max_seq = to > *max_seq ? to : *max_seq;
    if (r->m_published) {
        r->m_published->v += k;
    }
    LOG_DEBUG(MOD, "agent %s: published %u receipt(s) mid=%d", g->agent, k, mid);
    return true;
}

void receipts_flush(receipts_t *r, mqtt_t *mqtt)
{
    if (!mqtt || !mqtt_connected(mqtt) || r->npend + MAX_GROUPS > MAX_PENDING) {
        return; /* wait for the connection, or for PUBACKs */
    }
    r->nitems = 0;
    r->ngroups = 0;
    r->stop = false;
    /* From memory as far as the store holds the receipts after the cursor
     * there (committed, consecutive seqs), then the table from where memory
     * ended: usually no row, one index seek. */
    int64_t after = r->cursor;
    int n = store_receipts_mem_next(r->store, after, r->batch, on_mem, r);
    if (n > 0) {
        after = r->items[r->nitems - 1].seq;
    }
    if (!r->stop && r->nitems < r->batch) {
        n = store_receipts_next(r->store, after, r->batch - r->nitems, on_row, r);
    }
    if (n < 0) {
        if (!r->store_err_logged) {
            LOG_ERROR(MOD, "cannot read receipts: %s", tdg_strerror(n));
            r->store_err_logged = true;
        }
        return;
    }
    r->store_err_logged = false;
    int64_t max_seq = r->cursor;
    for (unsigned gi = 0; gi < r->ngroups; gi++) {
        if (!publish_group(r, mqtt, gi, &max_seq)) {
            /* What did go out is confirmed and deleted as usual; the rest
             * is read again from the oldest (a duplicate is harmless: at
             * least once). */
            r->cursor = 0;
            return;
        }
    }
    r->cursor = max_seq;
}

/* Seqs above the outbox's top may be given to new rows (store_engine.h):
 * nothing may still point there. The cursor drops to the top (every row at
 * or below it that was published is still covered), and pending messages
 * forget the part of their range above it: those rows are gone already
 * (their receipts went out twice and another PUBACK deleted them). */
static void clamp_to_top(receipts_t *r)
{
    int64_t top = 0;
    if (store_receipts_top(r->store, &top) < 0) {
        /* Unknown: start over from the oldest, and let pending messages
         * delete nothing (their rows are read and sent again). */
        top = 0;
    }
    if (r->cursor > top) {
        r->cursor = top;
    }
    for (unsigned i = 0; i < r->npend; i++) {
        if (r->pend[i].to > top) {
            r->pend[i].to = top;
        }
    }
}

void receipts_on_puback(receipts_t *r, int mid, int reason)
{
    for (unsigned i = 0; i < r->npend; i++) {
        if (r->pend[i].mid != mid) {
            continue;
        }
        struct pending p = r->pend[i];
        r->pend[i] = r->pend[--r->npend];
        if (reason >= 0x80) {
            /* Refused by the broker (e.g. its ACL): keep the rows; they go
             * out again after the next connect. */
            LOG_WARN(MOD, "broker refused %u receipt(s) for agent %s (reason 0x%02x); kept", p.n,
                     p.agent, reason);
            return;
        }
        if (p.from > p.to) {
            return; /* clipped away: its rows were deleted already */
        }
        int rc =
            store_receipts_delete(r->store, p.agent, p.from, p.to, p.tally_ok ? p.tally : NULL);
        if (rc < 0) {
            LOG_ERROR(MOD, "cannot delete confirmed receipts: %s", tdg_strerror(rc));
            return;
        }
        clamp_to_top(r);
        if (r->m_confirmed) {
            r->m_confirmed->v += p.n;
        }
        return;
    }
}

void receipts_on_connect(receipts_t *r)
{
    r->npend = 0;
    r->cursor = 0;
}

unsigned receipts_inflight(const receipts_t *r)
{
    return r->npend;
}

uint64_t receipts_from_memory(const receipts_t *r)
{
    return r->from_memory;
}
