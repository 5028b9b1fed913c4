/* intake.c - validate, dedupe, store, ack after commit (see intake.h). */
#include "intake.h"

#include "agentlimit.h"
#include "error.h"
#include "fanout.h"
#include "log.h"
#include "loop.h"
#include "store_engine.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INTAKE_MAX_GROUPS 256     /* distinct agents acked per iteration */
#define INTAKE_MAX_ACKS 65536     /* acks held per iteration */

struct ack_group {
    char agent[PROTO_AGENT_MAX + 1];
    struct proto_ack *acks;
    size_t n, cap;
};

/* A batch held back while the fanout is full (intake_handle_up). */
struct held {
    struct held *next;
    uint64_t at_ms; /* clock_mono_ms() when it arrived */
    size_t len;
    char agent[PROTO_AGENT_MAX + 1];
    char payload[]; /* len bytes */
};

struct intake {
    store_t *store;
    struct ack_group groups[INTAKE_MAX_GROUPS];
    size_t ngroups, total;
    struct intake_stats st;
    bool overflow_logged;
    agentlimit_t *limits; /* not owned; NULL: no per-agent limits */
    fanout_t *fanout;     /* not owned; NULL: everything goes through the queue */
    /* Backpressure (intake_set_hold): batches not yet handled, oldest first. */
    loop_t *loop;
    struct held *hhead, *htail;
    size_t held_bytes, hold_bytes;
    uint64_t hold_ms, hold_timer;
};

/* Recipient checks already made in this batch: the directory cannot change
 * while one batch is handled (the loop runs nothing else meanwhile), and a
 * batch usually repeats a few recipients. */
#define RCPT_MEMO 8
struct rcpt_memo {
    char to[PROTO_TO_MAX + 1];
    char category[PROTO_CATEGORY_MAX + 1];
    bool has_category;
    int known, ok;
};

struct item_ctx {
    intake_t *in;
    struct rcpt_memo memo[RCPT_MEMO];
    unsigned nmemo, memo_next;
    struct ack_group *g;
    const char *agent;
    bool agent_mismatch;
    int64_t now;
    int rate; /* per-agent rate for this batch: 0 undecided, 1 admitted, 2 delayed */
    /* Hand this batch's notifications to the fanout (decided once per batch:
     * a batch that starts there ends there, parking past fanout.max_jobs if
     * it must, rather than send its tail through the store's queue). */
    bool direct;
    size_t ack_mark; /* g->n when the batch began */
};

static struct ack_group *group_for(intake_t *in, const char *agent)
{
    for (size_t i = 0; i < in->ngroups; i++) {
        if (strcmp(in->groups[i].agent, agent) == 0) {
            return &in->groups[i];
        }
    }
    if (in->ngroups >= INTAKE_MAX_GROUPS) {
        return NULL;
    }
    struct ack_group *g = &in->groups[in->ngroups++];
    snprintf(g->agent, sizeof(g->agent), "%s", agent);
    g->n = 0;
    return g;
}

static void add_ack(intake_t *in, struct ack_group *g, const char *id, bool ok,
                    enum proto_reason r, const char *field)
{
    if (in->total >= INTAKE_MAX_ACKS) {
        return; /* the agent's ack timeout resends it */
    }
    if (g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 64;
        struct proto_ack *a = realloc(g->acks, cap * sizeof(*a));
        if (!a) {
            return;
        }
        g->acks = a;
        g->cap = cap;
    }
    struct proto_ack *a = &g->acks[g->n++];
    if (!ok && (unsigned)r < PROTO_REASON_COUNT) {
        in->st.rejected_by[r]++;
    }
    memset(a, 0, sizeof(*a));
    snprintf(a->id, sizeof(a->id), "%s", id);
    a->ok = ok;
    a->reason = ok ? PROTO_OK : r;
    snprintf(a->field, sizeof(a->field), "%s", field ? field : "");
    in->total++;
}

/* item is ours (proto_batch_parse_owned): freed here, or kept by the
 * notification handed to the fanout. */
static void on_item(cJSON *item, struct item_ctx *c)
{
    intake_t *in = c->in;
    in->st.items++;
    struct notification n = {0};
    n.json = item; /* freed by notification_free unless handed over */
    const cJSON *idj = cJSON_GetObjectItemCaseSensitive(item, "id");
    if (!cJSON_IsString(idj) || !proto_id_valid(idj->valuestring)) {
        /* Without an id there is nothing to ack: the agent always assigns
         * one, so this is a foreign or broken publisher. */
        in->st.rejected++;
        LOG_WARN("intake", "agent %s: item without a valid id dropped", c->agent);
        notification_free(&n);
        return;
    }
    char id[PROTO_ID_MAX + 1];
    snprintf(id, sizeof(id), "%s", idj->valuestring);
    if (c->rate == 2) {
        in->st.delayed++; /* the batch is over the agent's rate: no ack at all */
        notification_free(&n);
        return;
    }
    if (c->agent_mismatch) {
        in->st.rejected++;
        add_ack(in, c->g, id, false, PROTO_R_BAD_VALUE, "agent");
        notification_free(&n);
        return;
    }
    /* Validate the item as it will be stored and forwarded: printed back
     * to compact JSON, so the 4096-byte limit applies to exactly those
     * bytes; the printed text is what is stored, and the tree the batch
     * parse built is checked in place (proto_item_check: no second parse).
     * proto_json_print writes cJSON's bytes; whatever does not fit the
     * buffer is over the limit anyway. */
    char json[PROTO_MAX_WIRE + 64];
    long plen = proto_json_print(item, json, sizeof(json));
    size_t len = plen < 0 ? sizeof(json) : (size_t)plen;
    struct proto_error perr;
    if (proto_item_check(item, len, &n, &perr) < 0) {
        cJSON_Delete(item); /* n holds nothing */
        in->st.rejected++;
        LOG_WARN("intake", "agent %s: rejected id=%s: %s field=%s %s", c->agent, id,
                 proto_reason_code(perr.reason), perr.field[0] ? perr.field : "-", perr.detail);
        add_ack(in, c->g, id, false, perr.reason, perr.field);
        return;
    }
    n.json = item; /* n points into item, a root we own: keep them together */
    if (n.to_kind == PROTO_TO_USER || n.to_kind == PROTO_TO_GROUP) {
        /* Existence first, then the agent's bindings (docs/directory.md):
         * unknown ids keep their unknown_recipient; an agent can tell them
         * from known recipients it is not bound to, but send to neither. */
        struct rcpt_memo *m = NULL;
        for (unsigned i = 0; i < c->nmemo; i++) {
            struct rcpt_memo *e = &c->memo[i];
            if (strcmp(e->to, n.to) == 0 && e->has_category == (n.category != NULL) &&
                (!n.category || strcmp(e->category, n.category) == 0)) {
                m = e;
                break;
            }
        }
        int known, ok;
        if (m) {
            known = m->known;
            ok = m->ok;
        } else {
            known = n.to_kind == PROTO_TO_USER ? store_user_exists(in->store, n.to_id)
                                               : store_group_exists(in->store, n.to_id);
            ok = known > 0 ? store_agent_allowed(in->store, c->agent, n.to, n.category) : 1;
            if (known >= 0 && ok >= 0) {
                m = &c->memo[c->memo_next];
                c->memo_next = (c->memo_next + 1) % RCPT_MEMO;
                if (c->nmemo < RCPT_MEMO) {
                    c->nmemo++;
                }
                snprintf(m->to, sizeof(m->to), "%s", n.to);
                m->has_category = n.category != NULL;
                snprintf(m->category, sizeof(m->category), "%s", n.category ? n.category : "");
                m->known = known;
                m->ok = ok;
            }
        }
        if (ok == 0) {
            const char *field = "to";
            /* Bound to the recipient, but not for this category (or for
             * none, when the item has no category): the category is wrong. */
            if (store_agent_reaches(in->store, c->agent, n.to) == 1) {
                field = "category";
            }
            in->st.rejected++;
            const char *what = strcmp(field, "to") == 0 ? n.to
                               : n.category                ? n.category
                                                           : "none";
            LOG_WARN("intake", "agent %s: rejected id=%s: not_allowed (%s %s)", c->agent, id,
                     field, what);
            add_ack(in, c->g, id, false, PROTO_R_NOT_ALLOWED, field);
            notification_free(&n);
            return;
        }
        if (ok < 0) {
            known = ok;
        }
        if (known == 0) {
            in->st.rejected++;
            LOG_WARN("intake", "agent %s: rejected id=%s: unknown recipient %s", c->agent, id,
                     n.to);
            add_ack(in, c->g, id, false, PROTO_R_UNKNOWN_RECIPIENT, "to");
            notification_free(&n);
            return;
        }
        if (known < 0) {
            notification_free(&n);
            return; /* store trouble: no ack, the agent resends */
        }
    }
    if (in->limits) {
        /* Per-agent limits (agentlimit.h): over the rate, no ack (resent
         * later); over the day's quota, rejected - unless already stored. */
        bool first = c->rate == 0;
        enum agentlimit_verdict v =
            c->rate == 2 ? AGENTLIMIT_DELAY
                         : agentlimit_check(in->limits, c->agent, first, clock_mono_ms(), c->now);
        if (first && v == AGENTLIMIT_DELAY) {
            /* The whole batch waits (agentlimit.h): withdraw the acks of
             * its items rejected so far, so none of it is acked. */
            c->rate = 2;
            in->total -= c->g->n - c->ack_mark;
            c->g->n = c->ack_mark;
        } else if (first) {
            c->rate = 1;
        }
        int known = v == AGENTLIMIT_OVER_QUOTA ? store_notification_known(in->store, id) : 0;
        if (v != AGENTLIMIT_OK && known != 1) {
            if (v == AGENTLIMIT_OVER_QUOTA && known == 0) {
                in->st.rejected++;
                add_ack(in, c->g, id, false, PROTO_R_OVER_QUOTA, "");
            } else {
                in->st.delayed++; /* over the rate (or a store error): no ack */
            }
            notification_free(&n);
            return;
        }
    }
    bool inserted = false, taken = false;
    /* Straight to delivery when the fanout has room and nothing is queued
     * ahead: stored as taken and planned now, in this transaction, instead
     * of queued, taken by the next pull and parsed again. */
    int rc = c->direct
                 ? store_add_notification_taken(in->store, &n, c->agent, json, len, c->now,
                                                &inserted, &taken)
                 : store_add_notification(in->store, &n, c->agent, json, len, c->now,
                                          &inserted);
    if (rc == 0 && taken) {
        fanout_take(in->fanout, &n, proto_expires_ms(&n, c->now)); /* n moved */
    }
    notification_free(&n);
    if (rc < 0) {
        LOG_ERROR("intake", "agent %s: cannot store id=%s: %s", c->agent, id, tdg_strerror(rc));
        return;
    }
    if (inserted && in->limits) {
        agentlimit_accepted(in->limits, c->agent, c->now);
    }
    if (inserted) {
        in->st.accepted++;
        LOG_DEBUG("intake", "agent %s: stored id=%s", c->agent, id);
    } else {
        in->st.duplicates++;
    }
    add_ack(in, c->g, id, true, PROTO_OK, NULL);
}

/* proto_batch_parse has copied the envelope's agent before the first item;
 * compare it once, then handle the item. */
struct item_pre {
    struct item_ctx *c;
    const char *env_agent;
    bool checked;
};

static void on_item_pre(cJSON *item, void *arg)
{
    struct item_pre *p = arg;
    if (!p->checked) {
        p->checked = true;
        if (strcmp(p->env_agent, p->c->agent) != 0) {
            p->c->agent_mismatch = true;
            LOG_WARN("intake", "batch on agent %s's topic names agent '%s': refused",
                     p->c->agent, p->env_agent);
        }
    }
    on_item(item, p->c);
}

static void handle_up(intake_t *in, const char *topic_agent, const char *payload, size_t len)
{
    in->st.batches++;
    char env_agent[PROTO_AGENT_MAX + 1] = "";
    struct ack_group *g = group_for(in, topic_agent);
    if (!g) {
        if (!in->overflow_logged) {
            LOG_WARN("intake", "more than %d agents in one iteration; later batches wait for "
                     "their resend", INTAKE_MAX_GROUPS);
            in->overflow_logged = true;
        }
        return;
    }
    struct item_ctx c = {.in = in,
                         .g = g,
                         .agent = topic_agent,
                         .now = clock_wall_ms(),
                         .ack_mark = g->n,
                         .direct = in->fanout && fanout_ready(in->fanout)};
    /* The broker's ACL lets an agent publish only under its own topic; an
     * envelope naming another agent is refused item by item. */
    struct proto_error perr;
    struct item_pre pre = {.c = &c, .env_agent = env_agent};
    int rc = proto_batch_parse_owned(payload, len, env_agent, sizeof(env_agent), on_item_pre,
                                     &pre, &perr);
    if (rc < 0) {
        in->st.bad_envelopes++;
        LOG_WARN("intake", "agent %s: bad batch (%zu bytes): %s field=%s %s", topic_agent, len,
                 proto_reason_code(perr.reason), perr.field[0] ? perr.field : "-", perr.detail);
    }
}

/* Backpressure. While the fanout has no room (every job slot and parking
 * place taken, or rows waiting in the store's queue), a batch is held, not
 * handled: not stored, not acked. The agent's window of unacked batches
 * (uplink.window) then stops it, and the backlog waits in the agents'
 * outboxes - made for exactly that - instead of going through the store's
 * queue, where each notification would cost a second write and a second
 * parse. Held batches are handled as room frees (intake_resume, before
 * every commit); one held longer than hold_ms, or any beyond hold_bytes,
 * is handled at once as before (stored queued, acked), so an agent never
 * waits near its ack timeout. A held batch is in memory only: after a
 * crash the agent resends it, as for any unacked batch. */
static void on_hold_timer(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    intake_t *in = arg;
    in->hold_timer = 0; /* the wake-up itself runs intake_resume (before_sleep) */
}

static void hold_arm(intake_t *in, uint64_t now)
{
    if (!in->hhead || in->hold_timer || !in->loop) {
        return;
    }
    uint64_t due = in->hhead->at_ms + in->hold_ms;
    in->hold_timer = loop_timer_add(in->loop, due > now ? due - now : 0, on_hold_timer, in);
}

void intake_handle_up(intake_t *in, const char *topic_agent, const char *payload, size_t len)
{
    if (in->fanout && in->hold_bytes > 0 && len <= in->hold_bytes - in->held_bytes &&
        (in->hhead || !fanout_ready(in->fanout))) {
        struct held *h = malloc(sizeof(*h) + len);
        if (h) {
            h->next = NULL;
            h->at_ms = clock_mono_ms();
            h->len = len;
            snprintf(h->agent, sizeof(h->agent), "%s", topic_agent);
            memcpy(h->payload, payload, len);
            if (in->htail) {
                in->htail->next = h;
            } else {
                in->hhead = h;
            }
            in->htail = h;
            in->held_bytes += len;
            in->st.held++;
            hold_arm(in, h->at_ms);
            return;
        }
    }
    handle_up(in, topic_agent, payload, len);
}

void intake_resume(intake_t *in)
{
    uint64_t now = clock_mono_ms();
    struct held *h;
    while ((h = in->hhead) &&
           (now - h->at_ms >= in->hold_ms || !in->fanout || fanout_ready(in->fanout))) {
        in->hhead = h->next;
        if (!in->hhead) {
            in->htail = NULL;
        }
        in->held_bytes -= h->len;
        handle_up(in, h->agent, h->payload, h->len);
        free(h);
    }
    hold_arm(in, now);
}

size_t intake_held_bytes(const intake_t *in)
{
    return in->held_bytes;
}

void intake_set_hold(intake_t *in, loop_t *loop, size_t max_bytes, uint64_t max_ms)
{
    in->loop = loop;
    in->hold_bytes = max_bytes;
    in->hold_ms = max_ms;
}

void intake_flush(intake_t *in, mqtt_t *mqtt, bool committed)
{
    for (size_t i = 0; i < in->ngroups; i++) {
        struct ack_group *g = &in->groups[i];
        if (committed && g->n > 0) {
            char topic[160];
            size_t plen = 0;
            char *payload = proto_acks_serialize(g->acks, g->n, &plen);
            if (payload && proto_topic(topic, sizeof(topic), PROTO_TOPIC_ACK, g->agent) == 0) {
                int rc = mqtt_publish(mqtt, topic, payload, plen, 1, false, 0, NULL, NULL);
                if (rc < 0) {
                    LOG_WARN("intake", "agent %s: ack of %zu not sent (%s); the agent resends",
                             g->agent, g->n, tdg_strerror(rc));
                }
            }
            free(payload);
        }
        g->n = 0;
    }
    in->ngroups = 0;
    in->total = 0;
    in->overflow_logged = false;
}

size_t intake_pending(const intake_t *in)
{
    return in->total;
}

intake_t *intake_create(store_t *store)
{
    intake_t *in = calloc(1, sizeof(*in));
    if (in) {
        in->store = store;
    }
    return in;
}

void intake_destroy(intake_t *in)
{
    if (!in) {
        return;
    }
    for (size_t i = 0; i < INTAKE_MAX_GROUPS; i++) {
        free(in->groups[i].acks);
    }
    if (in->hold_timer) {
        loop_timer_cancel(in->loop, in->hold_timer);
    }
    while (in->hhead) { /* never acked: their agents resend them */
        struct held *h = in->hhead;
        in->hhead = h->next;
        free(h);
    }
    free(in);
}

void intake_set_limits(intake_t *in, struct agentlimit *limits)
{
    in->limits = limits;
}

void intake_set_fanout(intake_t *in, fanout_t *f)
{
    in->fanout = f;
}

void intake_get_stats(const intake_t *in, struct intake_stats *st)
{
    *st = in->st;
}
