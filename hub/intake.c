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
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define INTAKE_MAX_GROUPS 256     /* distinct agents acked per iteration */
#define INTAKE_MAX_ACKS 65536     /* acks held per iteration */
#define PRINT_CAP (PROTO_MAX_WIRE + 64) /* an item printed back (prepare_item) */
#define NO_ACK SIZE_MAX

struct ack_group {
    char agent[PROTO_AGENT_MAX + 1];
    struct proto_ack *acks;
    size_t n, cap;
};

/* One item of a batch, prepared by prepare_item: what needs neither the
 * store nor the loop (the id, the printed text, proto_item_check). */
struct prep {
    cJSON *item;           /* the item's root (ours); NULL once freed or handed on */
    struct notification n; /* check == 0: points into item */
    size_t off, len;       /* check == 0: the printed text, in the batch's text */
    int check;             /* proto_item_check's result; -ENOMEM: no room for the text */
    bool id_ok;
    char id[PROTO_ID_MAX + 1];
    struct proto_error perr; /* check < 0 */
};

/* A batch on its way: with the parse thread, sent to it, parsed, then held
 * until the fanout has room; without, held raw while the fanout is full
 * (intake_handle_up). */
struct held {
    struct held *next;
    uint64_t at_ms; /* clock_mono_ms() when it arrived */
    size_t len;     /* of the payload: what intake.hold counts */
    char agent[PROTO_AGENT_MAX + 1];
    bool counted;  /* in st.held */
    bool borrowed; /* payload is the caller's (handled at once): not freed */
    char *payload; /* len bytes; NULL once parsed */
    /* Parsed (prepare_batch): */
    bool parsed;
    int env_rc;
    struct proto_error env_err;
    char env_agent[PROTO_AGENT_MAX + 1];
    struct prep *items;
    size_t n, cap;
    char *text; /* the items' printed texts, one after another */
    size_t text_len, text_cap;
};

/* The parse thread (intake_start_parser). Its only shared state is this
 * struct's two lists: the loop pushes to `sent` and signals `cv`; the
 * thread parses, pushes to `done` and writes the eventfd when `done` was
 * empty; the loop (on_parsed) takes all of `done`. A batch is in exactly
 * one place at a time. The thread never logs, never touches the loop or
 * the store. */
struct parser {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct held *sent, *sent_tail, *done, *done_tail;
    cJSON *graveyard; /* trees to free, chained through ->next (intake_release) */
    size_t sent_bytes; /* payload bytes sent and not yet back (the loop's count) */
    bool stop;
    int efd;
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
    struct held *hcounted; /* held batches up to this one are counted in st.held */
    size_t held_bytes, hold_bytes;
    uint64_t hold_ms, hold_timer;
    struct parser *parser; /* NULL: batches are parsed on the loop */
    char *slots; /* STORE_ADD_MAX texts of PRINT_CAP for batches parsed on the loop (lazy) */
    cJSON *rel_head, *rel_tail; /* released this iteration, for the parse thread */
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
    /* Accepted items not stored yet (pend_add, pend_flush): stored by
     * multi-row INSERTs, STORE_ADD_MAX at a time and at the batch's end,
     * then counted and handed to the fanout in order. Their acks are
     * placed (ok) when they are accepted, so acks keep the items' order,
     * and withdrawn if the store fails them. */
    unsigned npend;
    struct notification pend_n[STORE_ADD_MAX]; /* owned until flushed */
    size_t pend_ack[STORE_ADD_MAX];            /* index in g->acks, or NO_ACK */
    struct store_new rows[STORE_ADD_MAX];
    /* A batch parsed on the loop: the pending items' texts, one PRINT_CAP
     * slot each (slot i for pending item i). NULL: each item is stored as
     * it is accepted (no memory for the slots, or a quota is set). */
    char *slots;
};

/* snprintf(dst, cap, "%s", src) without printf (a few per notification):
 * at most cap - 1 bytes, cut where they end. */
static void copy_cut(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

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

/* Queue an ack for the iteration's commit. False when there was no room:
 * the agent's ack timeout resends the item. */
static bool add_ack(intake_t *in, struct ack_group *g, const char *id, bool ok,
                    enum proto_reason r, const char *field)
{
    if (in->total >= INTAKE_MAX_ACKS) {
        return false;
    }
    if (g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 64;
        struct proto_ack *a = realloc(g->acks, cap * sizeof(*a));
        if (!a) {
            return false;
        }
        g->acks = a;
        g->cap = cap;
    }
    struct proto_ack *a = &g->acks[g->n++];
    if (!ok && (unsigned)r < PROTO_REASON_COUNT) {
        in->st.rejected_by[r]++;
    }
    memset(a, 0, sizeof(*a));
    copy_cut(a->id, sizeof(a->id), id);
    a->ok = ok;
    a->reason = ok ? PROTO_OK : r;
    copy_cut(a->field, sizeof(a->field), field ? field : "");
    in->total++;
    return true;
}

/* Store the pending items (one to four multi-row INSERTs), then for each
 * in order what storing one used to do at once: count it (accepted or
 * duplicate; the quota), hand a taken one to the fanout, or log the
 * store's error and withdraw its ack (no ack: the agent resends). Runs
 * before anything else can read the notifications table on this
 * connection: when full, before a quota check, at the end of every batch. */
static void pend_flush(struct item_ctx *c)
{
    unsigned n = c->npend;
    if (n == 0) {
        return;
    }
    c->npend = 0;
    intake_t *in = c->in;
    store_add_notifications(in->store, c->agent, c->now, c->rows, n);
    bool withdrawn = false;
    for (unsigned i = 0; i < n; i++) {
        const struct store_new *r = &c->rows[i];
        struct notification *nt = &c->pend_n[i];
        if (r->rc < 0) {
            LOG_ERROR("intake", "agent %s: cannot store id=%s: %s", c->agent, nt->id,
                      tdg_strerror(r->rc));
            if (c->pend_ack[i] != NO_ACK) {
                c->g->acks[c->pend_ack[i]].id[0] = '\0'; /* no valid id is empty */
                withdrawn = true;
            }
        } else if (r->inserted) {
            if (in->limits) {
                agentlimit_accepted(in->limits, c->agent, c->now);
            }
            in->st.accepted++;
            LOG_DEBUG("intake", "agent %s: stored id=%s", c->agent, nt->id);
        } else {
            in->st.duplicates++;
        }
        if (r->rc == 0 && r->taken) {
            fanout_take(in->fanout, nt, proto_expires_ms(nt, c->now), c->agent); /* nt moved */
        }
        notification_free(nt);
    }
    if (withdrawn) {
        /* Only this batch's acks can be withdrawn; later ones move up. */
        struct ack_group *g = c->g;
        size_t w = c->ack_mark;
        for (size_t k = c->ack_mark; k < g->n; k++) {
            if (g->acks[k].id[0]) {
                g->acks[w++] = g->acks[k];
            }
        }
        in->total -= g->n - w;
        g->n = w;
    }
}

/* An accepted item (n moved in; json, len bytes, valid until the batch is
 * freed) joins the pending ones; stored when STORE_ADD_MAX are pending. */
static void pend_add(struct item_ctx *c, struct notification *n, const char *json, size_t len)
{
    unsigned i = c->npend++;
    c->pend_n[i] = *n;
    memset(n, 0, sizeof(*n));
    c->rows[i] = (struct store_new){.n = &c->pend_n[i], .json = json, .len = len,
                                    .take = c->direct};
    c->pend_ack[i] = add_ack(c->in, c->g, c->pend_n[i].id, true, PROTO_OK, NULL) ? c->g->n - 1
                                                                                 : NO_ACK;
    if (c->npend == STORE_ADD_MAX) {
        pend_flush(c);
    }
}

/* The checks of an item that need neither the store nor the loop, so the
 * parse thread can make them: its id, and the item validated as it will be
 * stored and forwarded - printed back to compact JSON (into json, cap
 * bytes), so the 4096-byte limit applies to exactly those bytes; the
 * printed text is what is stored, and the tree the batch parse built is
 * checked in place (proto_item_check: no second parse). proto_json_print
 * writes cJSON's bytes; whatever does not fit the buffer is over the limit
 * anyway. item is ours (proto_batch_parse_owned); a failed check frees it. */
static void prepare_item(cJSON *item, struct prep *p, char *json, size_t cap)
{
    memset(p, 0, sizeof(*p));
    p->item = item;
    const cJSON *idj = cJSON_GetObjectItemCaseSensitive(item, "id");
    p->id_ok = cJSON_IsString(idj) && proto_id_valid(idj->valuestring);
    if (!p->id_ok) {
        return;
    }
    copy_cut(p->id, sizeof(p->id), idj->valuestring);
    long plen = proto_json_print(item, json, cap);
    p->len = plen < 0 ? cap : (size_t)plen;
    p->check = proto_item_check(item, p->len, &p->n, &p->perr);
    if (p->check < 0) {
        cJSON_Delete(item); /* n holds nothing */
        p->item = NULL;
        return;
    }
    p->n.json = item; /* n points into item, a root we own: keep them together */
}

/* The rest, on the loop: the agent's rate and binding, the recipient, the
 * store, the ack. json holds the printed text when p->check == 0. The item
 * is freed here, or kept by the notification handed to the fanout. */
static void accept_item(struct item_ctx *c, struct prep *p, const char *json)
{
    intake_t *in = c->in;
    in->st.items++;
    struct notification n = p->n;
    n.json = p->item; /* freed by notification_free unless handed over */
    p->item = NULL;
    const char *id = p->id;
    size_t len = p->len;
    if (!p->id_ok) {
        /* Without an id there is nothing to ack: the agent always assigns
         * one, so this is a foreign or broken publisher. */
        in->st.rejected++;
        LOG_WARN("intake", "agent %s: item without a valid id dropped", c->agent);
        notification_free(&n);
        return;
    }
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
    if (p->check == -ENOMEM) {
        notification_free(&n);
        return; /* no room for it: no ack, the agent resends */
    }
    if (p->check < 0) {
        in->st.rejected++;
        const struct proto_error *perr = &p->perr;
        LOG_WARN("intake", "agent %s: rejected id=%s: %s field=%s %s", c->agent, id,
                 proto_reason_code(perr->reason), perr->field[0] ? perr->field : "-",
                 perr->detail);
        add_ack(in, c->g, id, false, perr->reason, perr->field);
        return;
    }
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
                copy_cut(m->to, sizeof(m->to), n.to);
                m->has_category = n.category != NULL;
                copy_cut(m->category, sizeof(m->category), n.category ? n.category : "");
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
         * later); over the day's quota, rejected - unless already stored.
         * The quota counts stored items: those pending are stored first.
         * (Nothing is pending at the batch's first check, where the rate
         * may withdraw the batch's acks.) */
        if (c->npend > 0 && agentlimit_counts(in->limits)) {
            pend_flush(c);
        }
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
    /* Straight to delivery when the fanout has room and nothing is queued
     * ahead (c->direct): stored as taken and planned at the flush, in this
     * transaction, instead of queued, taken by the next pull and parsed
     * again. Either way a duplicate id is acked too, and stored once. */
    pend_add(c, &n, json, len);
}

/* An item straight from the batch parse, on the loop: printed into its
 * pending slot (kept until stored), or stored at once. */
static void on_item(cJSON *item, struct item_ctx *c)
{
    char json[PRINT_CAP];
    char *buf = c->slots ? c->slots + (size_t)c->npend * PRINT_CAP : json;
    struct prep p;
    prepare_item(item, &p, buf, PRINT_CAP);
    accept_item(c, &p, buf);
    if (!c->slots) {
        pend_flush(c);
    }
}

/* proto_batch_parse has copied the envelope's agent before the first item;
 * compare it once, then handle the item. */
struct item_pre {
    struct item_ctx *c;
    const char *env_agent;
    bool checked;
};

static void agent_check(struct item_pre *p)
{
    if (!p->checked) {
        p->checked = true;
        if (strcmp(p->env_agent, p->c->agent) != 0) {
            p->c->agent_mismatch = true;
            LOG_WARN("intake", "batch on agent %s's topic names agent '%s': refused",
                     p->c->agent, p->env_agent);
        }
    }
}

static void on_item_pre(cJSON *item, void *arg)
{
    struct item_pre *p = arg;
    agent_check(p);
    on_item(item, p->c);
}

static void held_free(struct held *h)
{
    for (size_t i = 0; i < h->n; i++) {
        cJSON_Delete(h->items[i].item);
    }
    free(h->items);
    free(h->text);
    if (!h->borrowed) {
        free(h->payload);
    }
    free(h);
}

/* Handle one batch: parse it here (h->parsed false) or take what the parse
 * thread made of it. Frees h. */
static void handle_up(intake_t *in, struct held *h)
{
    in->st.batches++;
    struct ack_group *g = group_for(in, h->agent);
    if (!g) {
        if (!in->overflow_logged) {
            LOG_WARN("intake", "more than %d agents in one iteration; later batches wait for "
                     "their resend", INTAKE_MAX_GROUPS);
            in->overflow_logged = true;
        }
        held_free(h);
        return;
    }
    struct item_ctx c = {.in = in,
                         .g = g,
                         .agent = h->agent,
                         .now = clock_wall_ms(),
                         .ack_mark = g->n,
                         .direct = in->fanout && fanout_ready(in->fanout)};
    /* The broker's ACL lets an agent publish only under its own topic; an
     * envelope naming another agent is refused item by item. */
    struct item_pre pre = {.c = &c, .env_agent = h->env_agent};
    if (!h->parsed) {
        /* Pending items' texts need a slot each until stored; with a quota
         * every item is stored before the next is checked anyway. */
        if (!in->slots) {
            in->slots = malloc((size_t)STORE_ADD_MAX * PRINT_CAP); /* NULL: one at a time */
        }
        c.slots = in->limits && agentlimit_counts(in->limits) ? NULL : in->slots;
        h->env_rc = proto_batch_parse_owned(h->payload, h->len, h->env_agent,
                                            sizeof(h->env_agent), on_item_pre, &pre, &h->env_err);
    } else {
        for (size_t i = 0; i < h->n; i++) {
            agent_check(&pre);
            accept_item(&c, &h->items[i], h->text ? h->text + h->items[i].off : "");
        }
    }
    pend_flush(&c); /* before the batch (its texts, its trees) is freed */
    if (h->env_rc < 0) {
        const struct proto_error *perr = &h->env_err;
        in->st.bad_envelopes++;
        LOG_WARN("intake", "agent %s: bad batch (%zu bytes): %s field=%s %s", h->agent, h->len,
                 proto_reason_code(perr->reason), perr->field[0] ? perr->field : "-",
                 perr->detail);
    }
    held_free(h);
}

/* --- the parse thread ------------------------------------------------------
 *
 * Parsing a batch, printing each item back and validating it (~30% of the
 * hub's loop time per notification at full load, callgrind) needs neither
 * the store nor the loop, so a thread does it while the loop stores,
 * plans and sends the batches before it. Batches come back in the order
 * they were sent, and are handled in that order (through the hold list
 * below), so nothing about the order of acks or of arrival changes. What
 * the thread made of a batch (trees, texts, errors) is handled on the loop
 * exactly as a batch parsed there: the same checks, logs and acks. */

/* The parse thread's item callback: prepare the item into h. */
static void on_prep_item(cJSON *item, void *arg)
{
    struct held *h = arg;
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        struct prep *it = realloc(h->items, cap * sizeof(*it));
        if (!it) {
            cJSON_Delete(item); /* not acked: the agent resends it */
            return;
        }
        h->items = it;
        h->cap = cap;
    }
    struct prep *p = &h->items[h->n++];
    char json[PRINT_CAP];
    prepare_item(item, p, json, sizeof(json));
    if (!p->id_ok || p->check < 0) {
        return;
    }
    if (h->text_cap - h->text_len < p->len) {
        size_t cap = h->text_cap ? h->text_cap : 8192;
        while (cap - h->text_len < p->len) {
            cap *= 2;
        }
        char *t = realloc(h->text, cap);
        if (!t) {
            notification_free(&p->n); /* frees the item */
            p->item = NULL;
            p->check = -ENOMEM;
            return;
        }
        h->text = t;
        h->text_cap = cap;
    }
    memcpy(h->text + h->text_len, json, p->len);
    p->off = h->text_len;
    h->text_len += p->len;
}

static void prepare_batch(struct held *h)
{
    h->env_rc = proto_batch_parse_owned(h->payload, h->len, h->env_agent, sizeof(h->env_agent),
                                        on_prep_item, h, &h->env_err);
    free(h->payload);
    h->payload = NULL;
    h->parsed = true;
}

static void *parser_main(void *arg)
{
    struct parser *ps = arg;
    pthread_mutex_lock(&ps->mu);
    for (;;) {
        while (!ps->sent && !ps->graveyard && !ps->stop) {
            pthread_cond_wait(&ps->cv, &ps->mu);
        }
        if (ps->stop) {
            break;
        }
        if (ps->graveyard) {
            cJSON *dead = ps->graveyard;
            ps->graveyard = NULL;
            pthread_mutex_unlock(&ps->mu);
            cJSON_Delete(dead); /* the chain: cJSON_Delete follows ->next */
            pthread_mutex_lock(&ps->mu);
            continue;
        }
        struct held *h = ps->sent;
        ps->sent = h->next;
        if (!ps->sent) {
            ps->sent_tail = NULL;
        }
        pthread_mutex_unlock(&ps->mu);
        h->next = NULL;
        prepare_batch(h);
        pthread_mutex_lock(&ps->mu);
        bool wake = ps->done == NULL;
        if (ps->done_tail) {
            ps->done_tail->next = h;
        } else {
            ps->done = h;
        }
        ps->done_tail = h;
        if (wake) {
            uint64_t one = 1;
            ssize_t w = write(ps->efd, &one, sizeof(one)); /* a counter: cannot block */
            (void)w;
        }
    }
    pthread_mutex_unlock(&ps->mu);
    return NULL;
}

static void hold_push(intake_t *in, struct held *h)
{
    h->next = NULL;
    if (in->htail) {
        in->htail->next = h;
    } else {
        in->hhead = h;
    }
    in->htail = h;
    in->held_bytes += h->len;
}

/* The loop's side: parsed batches join the hold list, in order; the
 * before-sleep hook (intake_resume) handles them. */
static void on_parsed(loop_t *loop, int fd, unsigned events, void *arg)
{
    (void)loop;
    (void)events;
    intake_t *in = arg;
    struct parser *ps = in->parser;
    uint64_t v;
    ssize_t r = read(fd, &v, sizeof(v));
    (void)r;
    pthread_mutex_lock(&ps->mu);
    struct held *h = ps->done;
    ps->done = ps->done_tail = NULL;
    pthread_mutex_unlock(&ps->mu);
    while (h) {
        struct held *next = h->next;
        ps->sent_bytes -= h->len;
        hold_push(in, h);
        h = next;
    }
}

static void parser_stop(intake_t *in)
{
    struct parser *ps = in->parser;
    if (!ps) {
        return;
    }
    pthread_mutex_lock(&ps->mu);
    ps->stop = true;
    pthread_cond_signal(&ps->cv);
    pthread_mutex_unlock(&ps->mu);
    pthread_join(ps->th, NULL);
    loop_fd_del(in->loop, ps->efd);
    close(ps->efd);
    /* never acked: their agents resend them */
    for (struct held *h = ps->sent, *next; h; h = next) {
        next = h->next;
        held_free(h);
    }
    for (struct held *h = ps->done, *next; h; h = next) {
        next = h->next;
        held_free(h);
    }
    cJSON_Delete(ps->graveyard);
    cJSON_Delete(in->rel_head);
    in->rel_head = in->rel_tail = NULL;
    pthread_cond_destroy(&ps->cv);
    pthread_mutex_destroy(&ps->mu);
    free(ps);
    in->parser = NULL;
}

int intake_start_parser(intake_t *in, loop_t *loop)
{
    if (in->parser) {
        return 0;
    }
    struct parser *ps = calloc(1, sizeof(*ps));
    if (!ps) {
        return -ENOMEM;
    }
    ps->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ps->efd < 0) {
        int e = -errno;
        free(ps);
        return e;
    }
    int rc = -ENOMEM;
    if (pthread_mutex_init(&ps->mu, NULL) != 0) {
        goto fail_fd;
    }
    if (pthread_cond_init(&ps->cv, NULL) != 0) {
        goto fail_mu;
    }
    in->loop = loop;
    if ((rc = loop_fd_add(loop, ps->efd, LOOP_READ, on_parsed, in)) < 0) {
        goto fail_cv;
    }
    pthread_attr_t attr;
    bool have_attr = pthread_attr_init(&attr) == 0;
    if (have_attr) {
        /* prepare_item's buffer and cJSON's recursion (depth-limited by
         * proto): far below this */
        pthread_attr_setstacksize(&attr, 256 * 1024);
    }
    int e = pthread_create(&ps->th, have_attr ? &attr : NULL, parser_main, ps);
    if (have_attr) {
        pthread_attr_destroy(&attr);
    }
    if (e != 0) {
        rc = -e;
        loop_fd_del(loop, ps->efd);
        goto fail_cv;
    }
    in->parser = ps;
    return 0;
fail_cv:
    pthread_cond_destroy(&ps->cv);
fail_mu:
    pthread_mutex_destroy(&ps->mu);
fail_fd:
    close(ps->efd);
    free(ps);
    return rc;
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
 * crash the agent resends it, as for any unacked batch. With the parse
 * thread every batch passes through this list, parsed (its trees take a
 * few times its size); without, only held ones, raw. */
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

/* Payload bytes sent to the parse thread and not back yet, beyond which a
 * batch is parsed on the loop instead: the loop then slows to the pace it
 * can parse at, as without the thread, instead of queueing without bound. */
#define PARSER_MAX_BYTES (8u * 1024u * 1024u)

void intake_handle_up(intake_t *in, const char *topic_agent, const char *payload, size_t len)
{
    struct parser *ps = in->parser;
    bool to_parser = ps && ps->sent_bytes + len <= PARSER_MAX_BYTES;
    bool hold = !to_parser && in->fanout && in->hold_bytes > 0 &&
                len <= in->hold_bytes - in->held_bytes &&
                (in->hhead || !fanout_ready(in->fanout));
    struct held *h = calloc(1, sizeof(*h));
    char *copy = h && (to_parser || hold) ? malloc(len ? len : 1) : NULL;
    if (h && (to_parser || hold) && !copy) {
        free(h);
        h = NULL;
    }
    if (!h) {
        LOG_WARN("intake", "agent %s: out of memory for a batch of %zu bytes; the agent resends",
                 topic_agent, len);
        return;
    }
    h->at_ms = clock_mono_ms();
    h->len = len;
    snprintf(h->agent, sizeof(h->agent), "%s", topic_agent);
    if (!to_parser && !hold) {
        h->payload = (char *)payload; /* handled now */
        h->borrowed = true;
        handle_up(in, h);
        return;
    }
    memcpy(copy, payload, len);
    h->payload = copy;
    if (hold) {
        hold_push(in, h);
        in->st.held++;
        h->counted = true;
        hold_arm(in, h->at_ms);
        return;
    }
    pthread_mutex_lock(&ps->mu);
    if (ps->sent_tail) {
        ps->sent_tail->next = h;
    } else {
        ps->sent = h;
    }
    ps->sent_tail = h;
    pthread_cond_signal(&ps->cv);
    pthread_mutex_unlock(&ps->mu);
    ps->sent_bytes += len;
}

void intake_resume(intake_t *in)
{
    uint64_t now = clock_mono_ms();
    struct held *h;
    while ((h = in->hhead)) {
        bool room = !in->fanout || in->hold_bytes == 0 || fanout_ready(in->fanout) ||
                    now - h->at_ms >= in->hold_ms || in->held_bytes > in->hold_bytes;
        if (!room) {
            /* held from here on: each counted once, the walk starting after
             * the last one counted (not over the whole list every time) */
            for (struct held *x = in->hcounted ? in->hcounted->next : h; x; x = x->next) {
                if (!x->counted) {
                    x->counted = true;
                    in->st.held++;
                }
            }
            in->hcounted = in->htail;
            break;
        }
        in->hhead = h->next;
        if (!in->hhead) {
            in->htail = NULL;
        }
        if (in->hcounted == h) {
            in->hcounted = NULL; /* FIFO: everything counted is handled now */
        }
        in->held_bytes -= h->len;
        handle_up(in, h);
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

void intake_release(void *arg, cJSON *root)
{
    intake_t *in = arg;
    if (!root) {
        return;
    }
    if (!in->parser) {
        cJSON_Delete(root);
        return;
    }
    root->next = NULL; /* a root has no siblings: the link is ours */
    root->prev = NULL;
    if (in->rel_tail) {
        in->rel_tail->next = root;
    } else {
        in->rel_head = root;
    }
    in->rel_tail = root;
}

/* The trees released in this iteration go to the parse thread at once. */
static void release_flush(intake_t *in)
{
    struct parser *ps = in->parser;
    if (!ps || !in->rel_head) {
        return;
    }
    pthread_mutex_lock(&ps->mu);
    in->rel_tail->next = ps->graveyard; /* order does not matter */
    ps->graveyard = in->rel_head;
    pthread_cond_signal(&ps->cv);
    pthread_mutex_unlock(&ps->mu);
    in->rel_head = in->rel_tail = NULL;
}

void intake_flush(intake_t *in, mqtt_t *mqtt, bool committed)
{
    release_flush(in);
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
    parser_stop(in);
    while (in->hhead) { /* never acked: their agents resend them */
        struct held *h = in->hhead;
        in->hhead = h->next;
        held_free(h);
    }
    free(in->slots);
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
