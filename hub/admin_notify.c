/* admin_notify.c - admin commands about notifications: send, status, log,
 * stats and the dead-letter queue (see admin.h, docs/tidingsctl.md). */
#include "admin_int.h"

#include "config.h"
#include "error.h"
#include "log.h"
#include "proto.h"
#include "store_engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATUS_ATTEMPTS_MAX 200
#define STATUS_AUDIT_MAX 50
#define STATUS_RECEIPTS_MAX 50
#define LOG_LIMIT_MAX 1000
#define DLQ_RETRY_MAX 1000

static const char *const states[] = {"queued",     "sending", "scheduled", "delivered", "failed",
                                     "suppressed", "expired", "dropped",   NULL};

static bool in_list(const char *const *list, const char *v)
{
    for (size_t i = 0; list[i]; i++) {
        if (strcmp(list[i], v) == 0) {
            return true;
        }
    }
    return false;
}

static const char *priority_name(int p)
{
    return p >= PROTO_PRIO_LOW && p <= PROTO_PRIO_CRITICAL ? proto_priority_name(p) : "normal";
}

/* A time field: RFC 3339, or a duration ("90s", "15m", "2h", "7d") meaning
 * that long before now. 0 when absent. */
static int admin_time(struct admin_call *c, const char *key, int64_t *out)
{
    const char *v;
    *out = 0;
    if (admin_str(c, key, false, 64, &v) < 0) {
        return -1;
    }
    if (!v) {
        return 0;
    }
    uint64_t d;
    if (proto_parse_rfc3339(v, out) == 0) {
        return 0;
    }
    if (config_parse_duration(v, &d) == 0 && d <= (uint64_t)c->now_ms) {
        *out = c->now_ms - (int64_t)d;
        return 0;
    }
    return admin_fail(c, "bad_time", key,
                      "%s: an RFC 3339 time (2026-11-22T08:00:00Z) or a duration ago (15m, 2h, "
                      "7d), got '%s'",
                      key, v);
}

static cJSON *row_json(const struct store_admin_row *r, bool with_body)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) {
        return NULL;
    }
    admin_add_str(o, "id", r->id);
    admin_add_str(o, "to", r->recipient);
    admin_add_str(o, "agent", r->agent);
    admin_add_str(o, "category", r->category);
    admin_add_str(o, "priority", priority_name(r->priority));
    admin_add_str(o, "state", r->state);
    admin_add_str(o, "reason", r->reason);
    admin_add_int(o, "attempts", r->attempts);
    admin_add_str(o, "channels", r->channels);
    admin_add_time(o, "received", r->received_ms);
    admin_add_time(o, "updated", r->updated_ms);
    admin_add_time(o, "expires", r->expires_ms);
    admin_add_int(o, "seq", r->seq);
    admin_add_int(o, "updated_ms", r->updated_ms);
    if (with_body) {
        cJSON *body = cJSON_Parse(r->body);
        if (body) {
            cJSON_AddItemToObject(o, "notification", body);
        }
    }
    return o;
}

struct rows {
    cJSON *arr;
    int64_t last_seq, last_updated;
    unsigned n;
    bool oom;
};

static void add_row(void *arg, const struct store_admin_row *r)
{
    struct rows *rs = arg;
    cJSON *o = row_json(r, false);
    if (!o) {
        rs->oom = true;
        return;
    }
    cJSON_AddItemToArray(rs->arr, o);
    rs->last_seq = r->seq;
    rs->last_updated = r->updated_ms;
    rs->n++;
}

/* --- send -------------------------------------------------------------- */

int admin_send_dry_run(struct admin_call *c, const struct notification *n);

int admin_send(struct admin_call *c)
{
    const cJSON *nj = cJSON_GetObjectItemCaseSensitive(c->req, "notification");
    bool dry;
    if (!nj) {
        return admin_fail(c, "missing_field", "notification", "notification is required");
    }
    if (!cJSON_IsObject(nj)) {
        return admin_fail(c, "wrong_type", "notification", "notification must be an object");
    }
    if (admin_bool(c, "dry_run", false, &dry) < 0) {
        return -1;
    }
    char *text = cJSON_PrintUnformatted(nj);
    if (!text) {
        return admin_fail(c, "storage", "", "out of memory");
    }
    struct notification n;
    struct proto_error perr;
    int rc = proto_parse(text, strlen(text), &n, &perr);
    free(text);
    if (rc < 0) {
        char field[80];
        snprintf(field, sizeof(field), "notification%s%s", perr.field[0] ? "." : "", perr.field);
        return admin_fail(c, proto_reason_code(perr.reason), field, "%s%s%s",
                          proto_reason_message(perr.reason), perr.detail[0] ? ": " : "",
                          perr.detail);
    }
    int result = -1;
    if (n.to_kind == PROTO_TO_LOCAL) {
        admin_fail(c, "bad_recipient", "notification.to",
                   "'local' is delivered by an agent on its own box; send to user:<id> or "
                   "group:<id>");
        goto out;
    }
    int known = n.to_kind == PROTO_TO_USER ? store_user_exists(c->store, n.to_id)
                                           : store_group_exists(c->store, n.to_id);
    if (known < 0) {
        admin_fail_store(c, known, "notification.to", "recipient");
        goto out;
    }
    if (known == 0) {
        admin_fail(c, "unknown_recipient", "notification.to", "no such %s: %s",
                   n.to_kind == PROTO_TO_USER ? "user" : "group", n.to_id);
        goto out;
    }
    if (dry) {
        result = admin_send_dry_run(c, &n);
        goto out;
    }
    if (!n.id) {
        char id[PROTO_GENERATED_ID_LEN + 1];
        if (proto_id_new(id) < 0 || proto_set_id(&n, id) < 0) {
            admin_fail(c, "storage", "", "cannot assign an id");
            goto out;
        }
    }
    if (proto_set_accepted(&n, c->now_ms) < 0) {
        admin_fail(c, "too_large", "notification", "no room for accepted_at within %d bytes",
                   PROTO_MAX_WIRE);
        goto out;
    }
    size_t len = 0;
    char *json = proto_serialize(&n, &len);
    if (!json) {
        admin_fail(c, "storage", "", "out of memory");
        goto out;
    }
    bool inserted = false;
    rc = store_add_notification(c->store, &n, "admin", json, len, c->now_ms, &inserted);
    free(json);
    if (rc < 0) {
        admin_fail_store(c, rc, "", "store notification");
        goto out;
    }
    admin_add_str(c->out, "id", n.id);
    cJSON_AddBoolToObject(c->out, "duplicate", !inserted);
    result = 0;
out:
    notification_free(&n);
    return result;
}

/* --- status ------------------------------------------------------------ */

struct story {
    cJSON *attempts, *decisions, *audit, *receipts;
    bool found;
    char state[16];
    char reason[256];
    int64_t updated_ms, expires_ms;
    char drop_rule[64];
    /* for the explanation */
    char ok_channel[32], ok_provider[128];
    int64_t ok_ms;
    char last_channel[32], last_state[16], last_reason[200];
    int last_status;
    unsigned n_attempts, n_open;
    char hold_rule[64];
    int64_t hold_until;
    cJSON *row;
};

static void story_row(void *arg, const struct store_admin_row *r)
{
    struct story *st = arg;
    st->found = true;
    st->row = row_json(r, true);
    snprintf(st->state, sizeof(st->state), "%s", r->state);
    snprintf(st->reason, sizeof(st->reason), "%s", r->reason);
    st->updated_ms = r->updated_ms;
    st->expires_ms = r->expires_ms;
}

static void story_attempt(void *arg, const struct store_admin_attempt *a)
{
    struct story *st = arg;
    cJSON *o = cJSON_CreateObject();
    if (!o) {
        return;
    }
    admin_add_int(o, "attempt", a->id);
    admin_add_str(o, "channel", a->channel);
    admin_add_int(o, "device", a->device_id);
    admin_add_str(o, "platform", a->platform);
    admin_add_str(o, "state", a->state);
    admin_add_int(o, "status", a->status);
    admin_add_str(o, "reason", a->reason);
    admin_add_str(o, "provider_id", a->provider_id);
    admin_add_time(o, "started", a->started_ms);
    admin_add_time(o, "finished", a->finished_ms);
    cJSON_AddItemToArray(st->attempts, o);
    st->n_attempts++;
    if (strcmp(a->state, "sending") == 0) {
        st->n_open++;
    }
    if (strcmp(a->state, "ok") == 0 && !st->ok_channel[0]) {
        snprintf(st->ok_channel, sizeof(st->ok_channel), "%s", a->channel);
        snprintf(st->ok_provider, sizeof(st->ok_provider), "%s", a->provider_id);
        st->ok_ms = a->finished_ms;
    }
    snprintf(st->last_channel, sizeof(st->last_channel), "%s", a->channel);
    snprintf(st->last_state, sizeof(st->last_state), "%s", a->state);
    snprintf(st->last_reason, sizeof(st->last_reason), "%s", a->reason);
    st->last_status = a->status;
}

static void story_decision(void *arg, const struct store_decision *d)
{
    struct story *st = arg;
    cJSON *o = cJSON_CreateObject();
    if (!o) {
        return;
    }
    admin_add_str(o, "user", d->user_id);
    admin_add_str(o, "channel", d->channel);
    admin_add_str(o, "action", d->action);
    admin_add_str(o, "rule", d->rule);
    admin_add_time(o, "until", d->until_ms);
    admin_add_time(o, "at", d->at_ms);
    cJSON_AddItemToArray(st->decisions, o);
    if (strcmp(d->action, "drop") == 0 && !st->drop_rule[0]) {
        snprintf(st->drop_rule, sizeof(st->drop_rule), "%s", d->rule);
    }
    if (d->until_ms > 0) {
        snprintf(st->hold_rule, sizeof(st->hold_rule), "%s", d->rule);
        st->hold_until = d->until_ms;
    }
}

static void story_audit(void *arg, const struct store_admin_audit *a)
{
    struct story *st = arg;
    cJSON *o = cJSON_CreateObject();
    if (!o) {
        return;
    }
    admin_add_time(o, "at", a->at_ms);
    admin_add_str(o, "command", a->command);
    admin_add_str(o, "detail", a->detail);
    admin_add_str(o, "client", a->client);
    cJSON_AddItemToArray(st->audit, o);
}

/* A receipt to the sending agent: confirmed (the broker had it; from
 * receipt_log) or still in the outbox. */
static void story_receipt(void *arg, const struct store_admin_receipt *r)
{
    struct story *st = arg;
    cJSON *o = cJSON_CreateObject();
    if (!o) {
        return;
    }
    char q[40] = "", t[40] = "", text[300];
    proto_format_rfc3339(r->queued_ms, q, sizeof(q));
    if (r->confirmed_ms > 0) {
        proto_format_rfc3339(r->confirmed_ms, t, sizeof(t));
        snprintf(text, sizeof(text),
                 "receipt to agent %s: %s (queued at %s, confirmed by the broker at %s)", r->agent,
                 r->state, q, t);
    } else {
        snprintf(text, sizeof(text),
                 "receipt to agent %s: %s pending (queued at %s, not yet confirmed by the broker)",
                 r->agent, r->state, q);
    }
    admin_add_str(o, "agent", r->agent);
    admin_add_str(o, "state", r->state);
    admin_add_time(o, "queued", r->queued_ms);
    admin_add_time(o, "confirmed", r->confirmed_ms);
    cJSON_AddBoolToObject(o, "pending", r->confirmed_ms <= 0);
    admin_add_str(o, "text", text);
    cJSON_AddItemToArray(st->receipts, o);
}

/* One sentence: why the notification is where it is. */
static void explain(const struct story *st, char *buf, size_t len)
{
    char t[40] = "";
    const char *s = st->state;
    if (strcmp(s, "delivered") == 0) {
        proto_format_rfc3339(st->ok_ms ? st->ok_ms : st->updated_ms, t, sizeof(t));
        snprintf(buf, len, "delivered: %s accepted it at %s%s%s%s",
                 st->ok_channel[0] ? st->ok_channel : "the provider", t,
                 st->ok_provider[0] ? " (provider id " : "", st->ok_provider,
                 st->ok_provider[0] ? ")" : "");
    } else if (strcmp(s, "failed") == 0) {
        if (st->n_attempts) {
            snprintf(buf, len, "failed: %s; last attempt on %s ended %s (status %d%s%s)",
                     st->reason[0] ? st->reason : "no reason recorded", st->last_channel,
                     st->last_state, st->last_status, st->last_reason[0] ? ", " : "",
                     st->last_reason);
        } else {
            snprintf(buf, len, "failed before any attempt: %s",
                     st->reason[0] ? st->reason : "no reason recorded");
        }
    } else if (strcmp(s, "suppressed") == 0) {
        snprintf(buf, len, "suppressed by the recipient's preferences: rule %s",
                 st->reason[0] ? st->reason : "(none recorded)");
    } else if (strcmp(s, "expired") == 0) {
        char e[40] = "";
        if (st->expires_ms) {
            proto_format_rfc3339(st->expires_ms, e, sizeof(e));
        }
        char last[512] = "";
        if (st->n_attempts) {
            /* display text: a cut-off reason is acceptable */
            if (snprintf(last, sizeof(last),
                         "; %u attempt(s), the last on %s ended %s (status %d%s%s)",
                         st->n_attempts, st->last_channel, st->last_state, st->last_status,
                         st->last_reason[0] ? ", " : "", st->last_reason) >= (int)sizeof(last)) {
                last[sizeof(last) - 1] = '\0';
            }
        } else {
            snprintf(last, sizeof(last), "; no attempt was made");
        }
        if (snprintf(buf, len, "expired: %s%s%s%s%s",
                     st->reason[0] ? st->reason : "its ttl passed before it could be delivered",
                     e[0] ? " (ttl ended at " : "", e, e[0] ? ")" : "", last) >= (int)len) {
            buf[len - 1] = '\0'; /* display text, cut off */
        }
    } else if (strcmp(s, "dropped") == 0) {
        if (st->drop_rule[0] && strcmp(st->drop_rule, st->reason) == 0) {
            snprintf(buf, len, "dropped by the recipient's preferences: rule %s%s", st->reason,
                     strcmp(st->reason, "quiet_hours_drop") == 0
                         ? " (inside quiet hours in mode drop: not held, not sent)"
                         : "");
        } else {
            snprintf(buf, len, "dropped: %s", st->reason[0] ? st->reason : "no reason recorded");
        }
    } else if (strcmp(s, "sending") == 0) {
        snprintf(buf, len, "being sent: %u attempt(s) in flight", st->n_open);
    } else if (strcmp(s, "scheduled") == 0 || st->hold_until > 0) {
        proto_format_rfc3339(st->hold_until, t, sizeof(t));
        snprintf(buf, len, "%s: waiting until %s (rule %s)", s, st->hold_until ? t : "its time",
                 st->hold_rule[0] ? st->hold_rule : "deliver_at");
    } else if (strcmp(s, "queued") == 0) {
        if (st->n_attempts) {
            snprintf(buf, len,
                     "queued for another attempt after %u (last: %s on %s, status %d%s%s)",
                     st->n_attempts, st->last_state, st->last_channel, st->last_status,
                     st->last_reason[0] ? ", " : "", st->last_reason);
        } else {
            snprintf(buf, len, "queued: accepted, waiting for the fanout");
        }
    } else {
        snprintf(buf, len, "%s%s%s", s, st->reason[0] ? ": " : "", st->reason);
    }
}

int admin_status(struct admin_call *c)
{
    const char *id;
    if (admin_str(c, "id", true, PROTO_ID_MAX, &id) < 0) {
        return -1;
    }
    struct story st = {.attempts = cJSON_CreateArray(),
                       .decisions = cJSON_CreateArray(),
                       .audit = cJSON_CreateArray(),
                       .receipts = cJSON_CreateArray()};
    int result = -1;
    if (!st.attempts || !st.decisions || !st.audit || !st.receipts) {
        admin_fail(c, "storage", "", "out of memory");
        goto out;
    }
    int rc = store_admin_notification(c->store, id, story_row, &st);
    if (rc < 0) {
        admin_fail_store(c, rc, "id", "notification");
        goto out;
    }
    if (!st.found || !st.row) {
        admin_fail(c, "not_found", "id", "no notification with id %s", id);
        goto out;
    }
    if ((rc = store_decisions_of(c->store, id, story_decision, &st)) < 0 ||
        (rc = store_admin_attempts(c->store, id, STATUS_ATTEMPTS_MAX, story_attempt, &st)) < 0 ||
        (rc = store_admin_audit_of(c->store, id, STATUS_AUDIT_MAX, story_audit, &st)) < 0 ||
        (rc = store_admin_receipts(c->store, id, STATUS_RECEIPTS_MAX, story_receipt, &st)) < 0) {
        admin_fail_store(c, rc, "", "notification story");
        goto out;
    }
    char why[600];
    explain(&st, why, sizeof(why));
    cJSON_AddItemToObject(c->out, "notification", st.row);
    st.row = NULL;
    cJSON_AddItemToObject(c->out, "decisions", st.decisions);
    cJSON_AddItemToObject(c->out, "attempts", st.attempts);
    cJSON_AddItemToObject(c->out, "admin", st.audit);
    cJSON_AddItemToObject(c->out, "receipts", st.receipts);
    st.decisions = st.attempts = st.audit = st.receipts = NULL;
    bool terminal = in_list(
        (const char *const[]){"delivered", "failed", "suppressed", "expired", "dropped", NULL},
        st.state);
    cJSON_AddBoolToObject(c->out, "terminal", terminal);
    admin_add_str(c->out, "explanation", why);
    result = 0;
out:
    cJSON_Delete(st.row);
    cJSON_Delete(st.attempts);
    cJSON_Delete(st.decisions);
    cJSON_Delete(st.audit);
    cJSON_Delete(st.receipts);
    return result;
}

/* --- log / tail --------------------------------------------------------- */

static bool channel_known(const struct admin_call *c, const char *ch)
{
    for (size_t i = 0; i < c->env->nroutes; i++) {
        if (strcmp(c->env->routes[i].channel, ch) == 0) {
            return true;
        }
    }
    return false;
}

int admin_log(struct admin_call *c)
{
    struct store_admin_filter f = {.changed_after_ms = -1};
    int64_t limit, before, changed, cursor;
    if (admin_user(c, "user", false, &f.user) < 0 ||
        admin_str(c, "category", false, PROTO_CATEGORY_MAX, &f.category) < 0 ||
        admin_str(c, "channel", false, 16, &f.channel) < 0 ||
        admin_str(c, "state", false, 16, &f.state) < 0 || admin_time(c, "since", &f.since_ms) < 0 ||
        admin_time(c, "until", &f.until_ms) < 0 ||
        admin_int(c, "limit", 1, LOG_LIMIT_MAX, 50, &limit) < 0 ||
        admin_int(c, "before", 1, INT64_MAX, 0, &before) < 0 ||
        admin_int(c, "changed_after", 0, INT64_MAX, -1, &changed) < 0 ||
        admin_int(c, "cursor", 0, INT64_MAX, 0, &cursor) < 0) {
        return -1;
    }
    if (f.state && !in_list(states, f.state)) {
        return admin_fail(c, "bad_value", "state",
                          "state must be one of queued, sending, scheduled, delivered, failed, "
                          "suppressed, expired, dropped; got '%s'",
                          f.state);
    }
    if (f.channel && !channel_known(c, f.channel)) {
        return admin_fail(c, "bad_value", "channel", "no channel '%s' (apns, fcm, sms, email)",
                          f.channel);
    }
    if (f.since_ms && f.until_ms && f.until_ms < f.since_ms) {
        return admin_fail(c, "bad_value", "until", "until is before since");
    }
    if (changed >= 0 && before) {
        return admin_fail(c, "bad_value", "before",
                          "before pages the log; changed_after follows it");
    }
    f.limit = (unsigned)limit;
    f.changed_after_ms = changed;
    f.cursor = changed >= 0 ? cursor : before;
    struct rows rs = {.arr = cJSON_CreateArray(), .last_updated = changed};
    if (!rs.arr) {
        return admin_fail(c, "storage", "", "out of memory");
    }
    int rc = store_admin_log(c->store, &f, add_row, &rs);
    if (rc < 0 || rs.oom) {
        cJSON_Delete(rs.arr);
        return rc < 0 ? admin_fail_store(c, rc, "", "log")
                      : admin_fail(c, "storage", "", "out of memory");
    }
    cJSON_AddItemToObject(c->out, "items", rs.arr);
    if (changed >= 0) {
        /* The cursor for the next poll: after the last change seen. */
        admin_add_int(c->out, "changed_after", rs.n ? rs.last_updated : changed);
        admin_add_int(c->out, "cursor", rs.n ? rs.last_seq : cursor);
    } else if (rs.n == f.limit) {
        admin_add_int(c->out, "next", rs.last_seq);
    } else {
        cJSON_AddNullToObject(c->out, "next");
    }
    admin_add_int(c->out, "now_ms", c->now_ms);
    return 0;
}

/* --- stats -------------------------------------------------------------- */

struct chan_stat {
    char channel[32];
    int64_t ok, retry, drop, interrupted, sending;
    double mean_ms;
    int64_t mean_n;
};

struct stats_ctx {
    struct chan_stat ch[FANOUT_MAX_ROUTES + 8];
    size_t n;
    cJSON *queues;
};

static void stats_count(void *arg, const char *state, int64_t n)
{
    struct stats_ctx *sc = arg;
    cJSON *old = cJSON_GetObjectItemCaseSensitive(sc->queues, state);
    if (old) {
        cJSON_SetNumberValue(old, (double)n);
    }
}

static struct chan_stat *chan_slot(struct stats_ctx *sc, const char *channel)
{
    for (size_t i = 0; i < sc->n; i++) {
        if (strcmp(sc->ch[i].channel, channel) == 0) {
            return &sc->ch[i];
        }
    }
    if (sc->n >= sizeof(sc->ch) / sizeof(sc->ch[0])) {
        return NULL;
    }
    struct chan_stat *s = &sc->ch[sc->n++];
    memset(s, 0, sizeof(*s));
    snprintf(s->channel, sizeof(s->channel), "%s", channel);
    return s;
}

static void stats_channel(void *arg, const char *channel, const char *state, int64_t n,
                          double mean_ms)
{
    struct stats_ctx *sc = arg;
    struct chan_stat *s = chan_slot(sc, channel);
    if (!s) {
        return;
    }
    if (strcmp(state, "ok") == 0) {
        s->ok += n;
    } else if (strcmp(state, "retry") == 0) {
        s->retry += n;
    } else if (strcmp(state, "drop") == 0) {
        s->drop += n;
    } else if (strcmp(state, "interrupted") == 0) {
        s->interrupted += n;
    } else if (strcmp(state, "sending") == 0) {
        s->sending += n;
    }
    if (strcmp(state, "sending") != 0 && n > 0) {
        s->mean_ms =
            (s->mean_ms * (double)s->mean_n + mean_ms * (double)n) / (double)(s->mean_n + n);
        s->mean_n += n;
    }
}

static void stats_total(void *arg, const char *state, int64_t n)
{
    admin_add_int(arg, state, n);
}

int admin_stats(struct admin_call *c)
{
    const char *w;
    uint64_t window_ms = 3600000;
    if (admin_str(c, "window", false, 16, &w) < 0) {
        return -1;
    }
    if (w && (config_parse_duration(w, &window_ms) < 0 || window_ms < 1000 ||
              window_ms > 30ull * 86400000)) {
        return admin_fail(c, "bad_value", "window", "window: a duration from 1s to 30d, got '%s'",
                          w);
    }
    struct stats_ctx sc = {.queues = cJSON_CreateObject()};
    if (!sc.queues) {
        return admin_fail(c, "storage", "", "out of memory");
    }
    cJSON_AddItemToObject(c->out, "queues", sc.queues);
    const char *qs[] = {"queued", "sending", "scheduled", "failed", "dropped"};
    for (size_t i = 0; i < sizeof(qs) / sizeof(qs[0]); i++) {
        cJSON_AddNumberToObject(sc.queues, qs[i], 0);
    }
    for (size_t i = 0; i < c->env->nroutes; i++) {
        chan_slot(&sc, c->env->routes[i].channel);
    }
    int rc = store_admin_queue_counts(c->store, stats_count, &sc);
    if (rc >= 0) {
        rc =
            store_admin_channel_stats(c->store, c->now_ms - (int64_t)window_ms, stats_channel, &sc);
    }
    if (rc < 0) {
        return admin_fail_store(c, rc, "", "stats");
    }
    if (c->env->fanout) {
        /* the rows being delivered are the fanout's (store_queue_depth) */
        cJSON_ReplaceItemInObjectCaseSensitive(sc.queues, "sending",
                                               cJSON_CreateNumber(fanout_jobs(c->env->fanout)));
        admin_add_int(sc.queues, "in_memory", fanout_jobs(c->env->fanout));
    }
    if (c->env->intake) {
        admin_add_int(sc.queues, "acks_pending", (int64_t)intake_pending(c->env->intake));
    }
    admin_add_int(c->out, "window_s", (int64_t)(window_ms / 1000));
    cJSON *chans = cJSON_AddArrayToObject(c->out, "channels");
    for (size_t i = 0; chans && i < sc.n; i++) {
        const struct chan_stat *s = &sc.ch[i];
        cJSON *o = cJSON_CreateObject();
        if (!o) {
            break;
        }
        bool enabled = false, known = false;
        for (size_t r = 0; r < c->env->nroutes; r++) {
            if (strcmp(c->env->routes[r].channel, s->channel) == 0) {
                known = true;
                enabled = enabled || c->env->routes[r].ops != NULL;
            }
        }
        admin_add_str(o, "channel", s->channel);
        cJSON_AddBoolToObject(o, "enabled", enabled || !known);
        admin_add_int(o, "sent", s->ok);
        admin_add_int(o, "failed", s->drop);
        admin_add_int(o, "retried", s->retry);
        admin_add_int(o, "interrupted", s->interrupted);
        admin_add_int(o, "in_flight", s->sending);
        int64_t done = s->ok + s->drop;
        if (done > 0) {
            cJSON_AddNumberToObject(o, "success_rate", (double)s->ok / (double)done);
        } else {
            cJSON_AddNullToObject(o, "success_rate");
        }
        cJSON_AddNumberToObject(o, "per_second", (double)s->ok * 1000.0 / (double)window_ms);
        cJSON_AddNumberToObject(o, "mean_ms", s->mean_ms);
        cJSON_AddItemToArray(chans, o);
    }
    if (c->env->dispatch) {
        struct dispatch_provider_info pi[2 * FANOUT_MAX_ROUTES];
        size_t np = dispatch_providers(c->env->dispatch, pi, sizeof(pi) / sizeof(pi[0]));
        cJSON *provs = cJSON_AddArrayToObject(c->out, "providers");
        for (size_t i = 0; provs && i < np && i < sizeof(pi) / sizeof(pi[0]); i++) {
            cJSON *o = cJSON_CreateObject();
            if (!o) {
                break;
            }
            admin_add_str(o, "channel", pi[i].channel);
            admin_add_str(o, "provider", pi[i].provider);
            admin_add_str(o, "breaker", breaker_state_name(pi[i].state));
            admin_add_int(o, "in_flight", pi[i].inflight);
            cJSON_AddItemToArray(provs, o);
            /* The channel row shows its primary's breaker. */
            const cJSON *row;
            cJSON_ArrayForEach(row, chans)
            {
                const char *name =
                    cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(row, "channel"));
                if (name && strcmp(name, pi[i].channel) == 0 &&
                    strcmp(pi[i].provider, "primary") == 0) {
                    admin_add_str((cJSON *)row, "breaker", breaker_state_name(pi[i].state));
                }
            }
        }
    }
    cJSON *totals = cJSON_AddObjectToObject(c->out, "totals");
    if (totals && (rc = store_terminal_counts(c->store, stats_total, totals)) < 0) {
        return admin_fail_store(c, rc, "", "totals");
    }
    cJSON *since = cJSON_AddObjectToObject(c->out, "since_start");
    if (since && c->env->fanout) {
        struct fanout_stats fs;
        fanout_get_stats(c->env->fanout, &fs);
        admin_add_int(since, "delivered", (int64_t)fs.delivered);
        admin_add_int(since, "failed", (int64_t)fs.failed);
        admin_add_int(since, "expired", (int64_t)fs.expired);
        admin_add_int(since, "attempts", (int64_t)fs.attempts);
        admin_add_int(since, "retries", (int64_t)fs.retries);
        admin_add_int(since, "backpressure", (int64_t)fs.backpressure);
    }
    if (since && c->env->intake) {
        struct intake_stats is;
        intake_get_stats(c->env->intake, &is);
        admin_add_int(since, "batches", (int64_t)is.batches);
        admin_add_int(since, "accepted", (int64_t)is.accepted);
        admin_add_int(since, "duplicates", (int64_t)is.duplicates);
        admin_add_int(since, "rejected", (int64_t)is.rejected);
    }
    return 0;
}

/* --- dead letters -------------------------------------------------------- */

static int dlq_state(struct admin_call *c, const char **state)
{
    if (admin_str(c, "state", false, 16, state) < 0) {
        return -1;
    }
    if (*state && strcmp(*state, "failed") != 0 && strcmp(*state, "dropped") != 0) {
        return admin_fail(c, "bad_value", "state", "state must be failed or dropped, got '%s'",
                          *state);
    }
    return 0;
}

int admin_dlq_list(struct admin_call *c)
{
    const char *state;
    int64_t limit;
    if (dlq_state(c, &state) < 0 || admin_int(c, "limit", 1, LOG_LIMIT_MAX, 50, &limit) < 0) {
        return -1;
    }
    struct rows rs = {.arr = cJSON_CreateArray()};
    if (!rs.arr) {
        return admin_fail(c, "storage", "", "out of memory");
    }
    int rc = store_admin_dlq(c->store, state, (unsigned)limit, add_row, &rs);
    if (rc < 0) {
        cJSON_Delete(rs.arr);
        return admin_fail_store(c, rc, "", "dlq");
    }
    cJSON_AddItemToObject(c->out, "items", rs.arr);
    return 0;
}

struct retry_ctx {
    char (*ids)[PROTO_ID_MAX + 1];
    char (*why)[300];
    size_t n, cap;
};

static void collect_dead(void *arg, const struct store_admin_row *r)
{
    struct retry_ctx *rc = arg;
    if (rc->n < rc->cap && strcmp(r->recipient, "erased") != 0) {
        snprintf(rc->ids[rc->n], sizeof(rc->ids[0]), "%s", r->id);
        snprintf(rc->why[rc->n], sizeof(rc->why[0]), "%s: %s", r->state, r->reason);
        rc->n++;
    }
}

static int requeue_one(struct admin_call *c, const char *id, const char *why, cJSON *done)
{
    int rc = store_admin_requeue(c->store, id, c->now_ms);
    if (rc < 0) {
        return rc;
    }
    char detail[400];
    snprintf(detail, sizeof(detail), "sent again from %s", why);
    if ((rc = store_admin_audit(c->store, c->now_ms, "dlq/retry", id, detail, c->client)) < 0) {
        return rc;
    }
    cJSON_AddItemToArray(done, cJSON_CreateString(id));
    return 0;
}

struct one_state {
    bool found;
    char state[16], reason[256], recipient[16];
};

static void get_state(void *arg, const struct store_admin_row *r)
{
    struct one_state *o = arg;
    o->found = true;
    snprintf(o->state, sizeof(o->state), "%s", r->state);
    snprintf(o->reason, sizeof(o->reason), "%s", r->reason);
    snprintf(o->recipient, sizeof(o->recipient), "%s", r->recipient);
}

int admin_dlq_retry(struct admin_call *c)
{
    const char *id;
    bool all;
    int64_t limit;
    if (admin_str(c, "id", false, PROTO_ID_MAX, &id) < 0 || admin_bool(c, "all", false, &all) < 0 ||
        admin_int(c, "limit", 1, DLQ_RETRY_MAX, 100, &limit) < 0) {
        return -1;
    }
    if (!id && !all) {
        return admin_fail(c, "missing_field", "id", "id is required (or all: true)");
    }
    if (id && all) {
        return admin_fail(c, "bad_value", "all", "give either id or all, not both");
    }
    cJSON *done = cJSON_AddArrayToObject(c->out, "requeued");
    if (!done) {
        return admin_fail(c, "storage", "", "out of memory");
    }
    int rc;
    if (id) {
        struct one_state o = {0};
        if ((rc = store_admin_notification(c->store, id, get_state, &o)) < 0) {
            return admin_fail_store(c, rc, "id", "notification");
        }
        if (!o.found) {
            return admin_fail(c, "not_found", "id", "no notification with id %s", id);
        }
        if (strcmp(o.state, "failed") != 0 && strcmp(o.state, "dropped") != 0) {
            return admin_fail(c, "bad_state", "id",
                              "%s is %s; only failed or dropped notifications can be retried", id,
                              o.state);
        }
        if (strcmp(o.recipient, "erased") == 0) {
            return admin_fail(c, "bad_state", "id", "%s was to a removed user", id);
        }
        char why[300];
        snprintf(why, sizeof(why), "%s: %s", o.state, o.reason);
        if ((rc = requeue_one(c, id, why, done)) < 0) {
            return admin_fail_store(c, rc, "id", "requeue");
        }
        return 0;
    }
    struct retry_ctx rctx = {.cap = (size_t)limit};
    rctx.ids = calloc(rctx.cap, sizeof(*rctx.ids));
    rctx.why = calloc(rctx.cap, sizeof(*rctx.why));
    if (!rctx.ids || !rctx.why) {
        free(rctx.ids);
        free(rctx.why);
        return admin_fail(c, "storage", "", "out of memory");
    }
    rc = store_admin_dlq(c->store, NULL, (unsigned)limit, collect_dead, &rctx);
    for (size_t i = 0; rc >= 0 && i < rctx.n; i++) {
        rc = requeue_one(c, rctx.ids[i], rctx.why[i], done);
    }
    free(rctx.ids);
    free(rctx.why);
    if (rc < 0) {
        return admin_fail_store(c, rc, "", "requeue");
    }
    return 0;
}
