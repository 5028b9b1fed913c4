/* localq.c - the durable local delivery queue (see localq.h). */
#include "localq.h"

#include "backoff.h"
#include "error.h"
#include "log.h"
#include "prefs.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PUMP_BATCH 32        /* candidate rows copied out per query */
#define PUMP_EXAMINE_MAX 512 /* rows decided per timer run; the rest in the next iteration */
#define PRUNE_EVERY_MS (60 * 60 * 1000)
#define PRUNE_BATCH 1000 /* rows deleted per prune statement */
#define DB_RETRY_MS 1000 /* after a failed write: try again this much later */
#define RECEIPT_MAX 200  /* bytes of receipts kept on a row */

static const char *const state_names[LOCALQ_STATE_COUNT] = {
    [LOCALQ_PENDING] = "pending",       [LOCALQ_DELIVERED] = "delivered",
    [LOCALQ_SUPPRESSED] = "suppressed", [LOCALQ_DROPPED] = "dropped",
    [LOCALQ_FAILED] = "failed",         [LOCALQ_EXPIRED] = "expired",
};

const char *localq_state_name(enum localq_state s)
{
    return (unsigned)s < LOCALQ_STATE_COUNT ? state_names[s] : "unknown";
}

enum {
    ST_EXISTS,
    ST_INSERT,
    ST_DUE,
    ST_NEXT,
    ST_FINISH,
    ST_DEFER,
    ST_RELEASE,
    ST_RECEIPT,
    ST_PRUNE_OLD,
    ST_PRUNE_EARLY,
    ST_FIND,
    ST_COUNT,
    ST_STATES,
    ST_SAVEPOINT,
    ST_SP_RELEASE,
    ST_SP_ROLLBACK,
    ST_N
};

/* Conditions repeat "state = 'pending'" / "state <> 'pending'" literally:
 * SQLite only uses the partial indexes (local_due, local_done) then. */
static const char *const sql[ST_N] = {
    [ST_EXISTS] = "SELECT 1 FROM local_queue WHERE id = ? LIMIT 1",
    [ST_INSERT] = "INSERT INTO local_queue (id, backend, source, priority, accepted_ms, "
                  "expires_ms, state, due_ms, reason, updated_ms, body) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    [ST_DUE] = "SELECT seq, id, backend, attempts, accepted_ms, expires_ms, body "
               "FROM local_queue WHERE state = 'pending' AND due_ms <= ? AND seq <= ? "
               "ORDER BY due_ms, seq LIMIT ?",
    [ST_NEXT] = "SELECT min(due_ms) FROM local_queue WHERE state = 'pending' AND due_ms > ?",
    [ST_FINISH] = "UPDATE local_queue SET state = ?, rule = coalesce(?, rule), reason = ?, "
                  "ref = ?, attempts = attempts + ?, updated_ms = ?, body = NULL "
                  "WHERE seq = ? AND state = 'pending'",
    [ST_DEFER] = "UPDATE local_queue SET due_ms = ?, rule = ?, reason = ?, "
                 "attempts = attempts + ?, updated_ms = ? WHERE seq = ? AND state = 'pending'",
    [ST_RELEASE] = "UPDATE local_queue SET due_ms = ? "
                   "WHERE state = 'pending' AND due_ms > ? AND rule = 'quiet_hours'",
    [ST_RECEIPT] = "UPDATE local_queue SET receipt = substr(coalesce(receipt || ' ', '') || ?, "
                   "1, 200), updated_ms = ? WHERE id = ? AND backend = ?",
    [ST_PRUNE_OLD] =
        "DELETE FROM local_queue WHERE seq IN (SELECT seq FROM local_queue "
        "WHERE state <> 'pending' AND updated_ms < ? ORDER BY updated_ms, seq LIMIT ?)",
    [ST_PRUNE_EARLY] = "DELETE FROM local_queue WHERE seq IN (SELECT seq FROM local_queue "
                       "WHERE state <> 'pending' ORDER BY updated_ms, seq LIMIT ?)",
    [ST_FIND] = "SELECT backend, source, state, rule, reason, attempts, priority, accepted_ms, "
                "expires_ms, due_ms, updated_ms, ref, receipt FROM local_queue "
                "WHERE id = ? ORDER BY seq",
    [ST_COUNT] = "SELECT count(*), coalesce(max(seq), 0) FROM local_queue",
    [ST_STATES] = "SELECT state, rule = 'quiet_hours', count(*) FROM local_queue GROUP BY 1, 2",
    [ST_SAVEPOINT] = "SAVEPOINT localq_add",
    [ST_SP_RELEASE] = "RELEASE localq_add",
    [ST_SP_ROLLBACK] = "ROLLBACK TO localq_add",
};

/* A due row copied out of the query (the statement is reset before any
 * row is updated). */
struct cand {
    int64_t seq, attempts, accepted_ms, expires_ms;
    char id[PROTO_ID_MAX + 1];
    char backend[32];
    size_t len;
    char body[PROTO_MAX_WIRE + 1];
};

/* One delivery in flight, or finished with its outcome not yet written
 * (a failed write: kept here, so the row is not delivered again, and
 * written at the next timer run). */
struct job {
    localq_t *q;
    bool used;
    int64_t seq, attempts, accepted_ms, expires_ms;
    size_t backend;
    char id[PROTO_ID_MAX + 1];
    char rule[POLICY_RULE_MAX];
    /* the outcome to write */
    bool unrecorded;
    bool terminal; /* finish with `state`, else defer until `due` */
    enum localq_state state;
    int64_t due, when;
    char reason[DELIVER_REASON_MAX + 96];
    char ref[32];
};

struct localq {
    loop_t *loop;
    outbox_t *ob;
    sqlite3 *db;
    sqlite3_stmt *stmt[ST_N];
    deliver_t *d;
    struct localq_opts o;
    char local_user[POLICY_USER_ID_MAX + 1];
    const policy_snapshot_t *snap;
    uint64_t timer;
    uint64_t timer_at;  /* loop (monotonic) ms it fires */
    struct cand *cands; /* PUMP_BATCH, allocated once */
    struct job jobs[LOCALQ_INFLIGHT_MAX];
    unsigned inflight;
    int64_t committed_seq; /* rows up to this seq are committed: deliverable */
    int64_t last_seq;      /* the last row inserted */
    uint64_t rows;         /* committed rows */
    int64_t delta;         /* rows added (+) or deleted (-) in the open transaction */
    unsigned pending_adds; /* notifications added in the open transaction */
    bool wrote;            /* any write in the open transaction */
    bool full_logged, early_logged, db_err_logged;
    unsigned commit_failures; /* in a row: pause deliveries with backoff */
    uint64_t paused_until;    /* monotonic ms; 0 = not paused */
    int64_t last_prune_ms;
    struct localq_stats st;
};

static void on_timer(loop_t *loop, uint64_t id, void *arg);

static int64_t q_now(const localq_t *q)
{
    return q->o.clock ? q->o.clock(q->o.clock_arg) : clock_wall_ms();
}

/* Arm the one timer for delay_ms from now, unless it already fires sooner. */
static void arm(localq_t *q, uint64_t delay_ms)
{
    uint64_t at = clock_mono_ms() + delay_ms;
    if (q->timer) {
        if (q->timer_at <= at) {
            return;
        }
        loop_timer_cancel(q->loop, q->timer);
    }
    q->timer = loop_timer_add(q->loop, delay_ms, on_timer, q);
    q->timer_at = at;
    if (!q->timer) {
        LOG_ERROR("local", "cannot arm the delivery timer: out of memory");
    }
}

void localq_poke(localq_t *q)
{
    arm(q, 0);
}

static int db_fail(localq_t *q, const char *what, int src)
{
    int rc = db_err(src) ? db_err(src) : TDG_EDB;
    if (!q->db_err_logged) {
        LOG_ERROR("local", "%s: %s", what, sqlite3_errmsg(q->db));
        q->db_err_logged = true;
    }
    return rc;
}

/* Step a statement that returns no rows, then reset it and clear its
 * bindings. 0 or a mapped error (logged once until a write works again). */
static int run(localq_t *q, int which, const char *what)
{
    sqlite3_stmt *s = q->stmt[which];
    int src = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    if (src != SQLITE_DONE && src != SQLITE_ROW) {
        return db_fail(q, what, src);
    }
    q->db_err_logged = false;
    return 0;
}

/* The write transaction: every write joins the outbox's. */
static int begin(localq_t *q)
{
    int rc = outbox_begin(q->ob);
    if (rc < 0) {
        if (!q->db_err_logged) {
            LOG_ERROR("local", "cannot begin a write transaction: %s", tdg_strerror(rc));
            q->db_err_logged = true;
        }
        return rc;
    }
    q->wrote = true;
    return 0;
}

static void bind_text_or_null(sqlite3_stmt *s, int i, const char *v)
{
    if (v && v[0]) {
        sqlite3_bind_text(s, i, v, -1, SQLITE_TRANSIENT);
    } else {
        sqlite3_bind_null(s, i);
    }
}

/* A row ends in state (terminal). rule NULL keeps the row's rule. */
static int finish(localq_t *q, int64_t seq, enum localq_state state, const char *rule,
                  const char *reason, const char *ref, int attempts_inc, int64_t now)
{
    int rc = begin(q);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *s = q->stmt[ST_FINISH];
    sqlite3_bind_text(s, 1, state_names[state], -1, SQLITE_STATIC);
    bind_text_or_null(s, 2, rule);
    bind_text_or_null(s, 3, reason);
    bind_text_or_null(s, 4, ref);
    sqlite3_bind_int(s, 5, attempts_inc);
    sqlite3_bind_int64(s, 6, now);
    sqlite3_bind_int64(s, 7, seq);
    if ((rc = run(q, ST_FINISH, "finishing a row")) < 0) {
        return rc;
    }
    switch (state) {
    case LOCALQ_DELIVERED:
        q->st.delivered++;
        break;
    case LOCALQ_SUPPRESSED:
        q->st.suppressed++;
        break;
    case LOCALQ_DROPPED:
        q->st.dropped++;
        break;
    case LOCALQ_FAILED:
        q->st.failed++;
        break;
    case LOCALQ_EXPIRED:
        q->st.expired++;
        break;
    default:
        break;
    }
    return 0;
}

/* A row stays pending until due (rule and reason replace the row's). */
static int defer(localq_t *q, int64_t seq, int64_t due, const char *rule, const char *reason,
                 int attempts_inc, int64_t now)
{
    int rc = begin(q);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *s = q->stmt[ST_DEFER];
    sqlite3_bind_int64(s, 1, due);
    bind_text_or_null(s, 2, rule);
    bind_text_or_null(s, 3, reason);
    sqlite3_bind_int(s, 4, attempts_inc);
    sqlite3_bind_int64(s, 5, now);
    sqlite3_bind_int64(s, 6, seq);
    return run(q, ST_DEFER, "deferring a row");
}

/* Due, but never after the notification expires (it then ends expired on
 * time instead of waiting out a hold or a backoff). */
static int64_t cap_expiry(int64_t due, int64_t expires_ms)
{
    return expires_ms > 0 && due > expires_ms ? expires_ms : due;
}

static void fmt_time(int64_t ms, char *buf, size_t len)
{
    proto_format_rfc3339(ms, buf, len);
}

/* --- delivery results ------------------------------------------------------ */

/* Write a job's outcome; on success the slot is free again. 0 or an error
 * (the job keeps it, marked unrecorded). */
static int record(localq_t *q, struct job *j)
{
    int rc = j->terminal ? finish(q, j->seq, j->state, j->rule, j->reason, j->ref, 1, j->when)
                         : defer(q, j->seq, j->due, j->rule, j->reason, 1, j->when);
    if (rc < 0) {
        j->unrecorded = true;
        return rc;
    }
    j->used = false;
    j->unrecorded = false;
    q->inflight--;
    return 0;
}

static void on_done(void *arg, const struct deliver_result *res)
{
    struct job *j = arg;
    localq_t *q = j->q;
    int64_t now = q_now(q);
    const char *bname = deliver_name(q->d, j->backend);
    int64_t attempt = j->attempts + 1;
    j->when = now;
    j->terminal = true;
    j->reason[0] = '\0';
    j->ref[0] = '\0';
    switch (res->status) {
    case DELIVER_OK:
        j->state = LOCALQ_DELIVERED;
        snprintf(j->ref, sizeof(j->ref), "%s", res->ref);
        LOG_INFO("local", "delivered id=%s backend=%s rule=%s attempt=%lld%s%s", j->id, bname,
                 j->rule, (long long)attempt, res->ref[0] ? " ref=" : "", res->ref);
        break;
    case DELIVER_FAIL:
        j->state = LOCALQ_FAILED;
        snprintf(j->reason, sizeof(j->reason), "%s", res->reason);
        LOG_WARN("local", "failed id=%s backend=%s attempt=%lld: %s", j->id, bname,
                 (long long)attempt, res->reason);
        break;
    case DELIVER_RETRY:
    case DELIVER_UNAVAILABLE:
    default: {
        if (q->o.retry_for_ms && now - j->accepted_ms >= (int64_t)q->o.retry_for_ms) {
            j->state = LOCALQ_FAILED;
            snprintf(j->reason, sizeof(j->reason), "gave up after %lld attempts over %llus: %s",
                     (long long)attempt, (unsigned long long)(q->o.retry_for_ms / 1000),
                     res->reason);
            LOG_WARN("local", "failed id=%s backend=%s: %s", j->id, bname, j->reason);
            break;
        }
        /* The backend's suggestion when it has one; else capped full jitter. */
        uint64_t delay = res->status == DELIVER_RETRY && res->retry_after_ms
                             ? res->retry_after_ms
                             : backoff_delay((unsigned)(attempt - 1 < 30 ? attempt - 1 : 30),
                                             q->o.retry_min_ms, q->o.retry_max_ms);
        j->terminal = false;
        j->due = cap_expiry(now + (int64_t)delay, j->expires_ms);
        snprintf(j->reason, sizeof(j->reason), "%s", res->reason);
        q->st.retries++;
        if (res->status == DELIVER_RETRY) {
            LOG_INFO("local", "retry id=%s backend=%s in %lldms (attempt %lld): %s", j->id, bname,
                     (long long)(j->due - now), (long long)attempt, res->reason);
        } else {
            /* The backend says "unavailable" once per outage itself. */
            LOG_DEBUG("local", "unavailable id=%s backend=%s: again in %lldms: %s", j->id, bname,
                      (long long)(j->due - now), res->reason);
        }
        break;
    }
    }
    if (record(q, j) < 0) {
        arm(q, DB_RETRY_MS); /* written at the next run; the row stays claimed */
        return;
    }
    arm(q, 0); /* a slot is free: due rows may wait for it */
}

/* --- deciding due rows ----------------------------------------------------- */

static bool find_backend(const localq_t *q, const char *name, size_t *idx)
{
    for (size_t i = 0; i < deliver_count(q->d); i++) {
        if (strcmp(deliver_name(q->d, i), name) == 0) {
            *idx = i;
            return true;
        }
    }
    return false;
}

/* Whose preferences apply: the configured local user for "to":"local",
 * the user for "user:<id>", nobody for a group (the hub expands those). */
static const char *user_of(const localq_t *q, const struct notification *n)
{
    switch (n->to_kind) {
    case PROTO_TO_LOCAL:
        return q->local_user;
    case PROTO_TO_USER:
        return n->to_id;
    default:
        return NULL;
    }
}

/* "deliver_at" as UTC ms, 0 when none. A wall time with "tz":"user" is read
 * in the user's zone from the snapshot (UTC when there is none), as the hub
 * reads it (proto/prefs.h). */
static int64_t deliver_at(const localq_t *q, const struct notification *n, const char *user)
{
    return prefs_deliver_at(n, policy_user_tz(q->snap, user));
}

static int start(localq_t *q, const struct cand *c, size_t bi, const struct notification *n,
                 const char *rule, int64_t now)
{
    struct job *j = NULL;
    for (size_t i = 0; i < LOCALQ_INFLIGHT_MAX; i++) {
        if (!q->jobs[i].used) {
            j = &q->jobs[i];
            break;
        }
    }
    if (!j) {
        return 0; /* not reached: the pump stops at LOCALQ_INFLIGHT_MAX */
    }
    *j = (struct job){.q = q,
                      .used = true,
                      .seq = c->seq,
                      .attempts = c->attempts,
                      .accepted_ms = c->accepted_ms,
                      .expires_ms = c->expires_ms,
                      .backend = bi};
    snprintf(j->id, sizeof(j->id), "%s", c->id);
    snprintf(j->rule, sizeof(j->rule), "%s", rule);
    int rc = deliver_send(q->d, bi, n, on_done, j);
    if (rc < 0) {
        j->used = false;
        char why[96];
        snprintf(why, sizeof(why), "cannot start: %s", tdg_strerror(rc));
        uint64_t delay = backoff_delay((unsigned)(c->attempts < 30 ? c->attempts : 30),
                                       q->o.retry_min_ms, q->o.retry_max_ms);
        q->st.retries++;
        LOG_WARN("local", "id=%s backend=%s %s; again in %llums", c->id, c->backend, why,
                 (unsigned long long)delay);
        return defer(q, c->seq, cap_expiry(now + (int64_t)delay, c->expires_ms), rule, why, 0, now);
    }
    q->inflight++;
    LOG_DEBUG("local", "delivering id=%s backend=%s rule=%s", c->id, c->backend, rule);
    return 0;
}

/* Decide one due row: expire, schedule, ask the preferences, deliver. 0 or a
 * database error. */
static int decide(localq_t *q, const struct cand *c, int64_t now)
{
    struct notification n;
    struct proto_error pe;
    if (proto_parse(c->body, c->len, &n, &pe) < 0) {
        char why[DELIVER_REASON_MAX];
        snprintf(why, sizeof(why), "stored notification does not parse: %s %s",
                 proto_reason_code(pe.reason), pe.field);
        LOG_ERROR("local", "id=%s backend=%s: %s", c->id, c->backend, why);
        return finish(q, c->seq, LOCALQ_FAILED, NULL, why, NULL, 0, now);
    }
    int rc = 0;
    size_t bi = 0;
    if (c->expires_ms > 0 && now >= c->expires_ms) {
        char when[32];
        fmt_time(c->expires_ms, when, sizeof(when));
        char why[64];
        snprintf(why, sizeof(why), "ttl passed at %s", when);
        LOG_INFO("local", "expired id=%s backend=%s (%s)", c->id, c->backend, why);
        rc = finish(q, c->seq, LOCALQ_EXPIRED, NULL, why, NULL, 0, now);
        goto out;
    }
    if (!find_backend(q, c->backend, &bi)) {
        char why[96];
        snprintf(why, sizeof(why), "backend %s is not enabled (deliver.backends)", c->backend);
        LOG_WARN("local", "dropped id=%s: %s", c->id, why);
        rc = finish(q, c->seq, LOCALQ_DROPPED, NULL, why, NULL, 0, now);
        goto out;
    }
    const char *user = user_of(q, &n);
    int64_t at = deliver_at(q, &n, user);
    if (at > now) {
        rc = defer(q, c->seq, cap_expiry(at, c->expires_ms), "scheduled", NULL, 0, now);
        goto out;
    }
    struct policy_decision d;
    policy_decide(q->snap, &n, user, (enum proto_channel)deliver_channel(q->d, bi), now, &d);
    switch (d.action) {
    case POLICY_SUPPRESS:
        LOG_INFO("local", "suppressed id=%s backend=%s rule=%s", c->id, c->backend, d.rule);
        rc = finish(q, c->seq, LOCALQ_SUPPRESSED, d.rule, NULL, NULL, 0, now);
        break;
    case POLICY_DROP:
        LOG_INFO("local", "dropped id=%s backend=%s rule=%s", c->id, c->backend, d.rule);
        rc = finish(q, c->seq, LOCALQ_DROPPED, d.rule, NULL, NULL, 0, now);
        break;
    case POLICY_HOLD: {
        char until[32];
        fmt_time(d.hold_until_ms, until, sizeof(until));
        LOG_INFO("local", "held id=%s backend=%s rule=%s until=%s", c->id, c->backend, d.rule,
                 until);
        q->st.held++;
        rc = defer(q, c->seq, cap_expiry(d.hold_until_ms, c->expires_ms), d.rule, NULL, 0, now);
        break;
    }
    case POLICY_ALLOW:
    default:
        rc = start(q, c, bi, &n, d.rule, now);
        break;
    }
out:
    notification_free(&n);
    return rc;
}

static bool in_flight(const localq_t *q, int64_t seq)
{
    for (size_t i = 0; i < LOCALQ_INFLIGHT_MAX; i++) {
        if (q->jobs[i].used && q->jobs[i].seq == seq) {
            return true;
        }
    }
    return false;
}

/* Copy up to PUMP_BATCH committed due rows that are not in flight. */
static int read_due(localq_t *q, int64_t now, size_t *nc)
{
    *nc = 0;
    sqlite3_stmt *s = q->stmt[ST_DUE];
    sqlite3_bind_int64(s, 1, now);
    sqlite3_bind_int64(s, 2, q->committed_seq);
    /* Rows in flight are pending and due too: read past them. */
    sqlite3_bind_int(s, 3, (int)(q->inflight + PUMP_BATCH));
    int src;
    while ((src = sqlite3_step(s)) == SQLITE_ROW && *nc < PUMP_BATCH) {
        int64_t seq = sqlite3_column_int64(s, 0);
        if (in_flight(q, seq)) {
            continue;
        }
        struct cand *c = &q->cands[*nc];
        const char *id = (const char *)sqlite3_column_text(s, 1);
        const char *be = (const char *)sqlite3_column_text(s, 2);
        const void *body = sqlite3_column_blob(s, 6);
        int len = sqlite3_column_bytes(s, 6);
        c->seq = seq;
        c->attempts = sqlite3_column_int64(s, 3);
        c->accepted_ms = sqlite3_column_int64(s, 4);
        c->expires_ms = sqlite3_column_int64(s, 5);
        snprintf(c->id, sizeof(c->id), "%s", id ? id : "");
        snprintf(c->backend, sizeof(c->backend), "%s", be ? be : "");
        c->len = body && len > 0 && len <= PROTO_MAX_WIRE ? (size_t)len : 0;
        memcpy(c->body, body ? body : "", c->len);
        c->body[c->len] = '\0';
        (*nc)++;
    }
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    if (src != SQLITE_ROW && src != SQLITE_DONE) {
        *nc = 0;
        return db_fail(q, "reading due rows", src);
    }
    return 0;
}

/* Remove finished rows: past retention (at most once an hour), or the
 * oldest `early` ones now (budget). Returns rows deleted or an error. */
static int prune(localq_t *q, int64_t now, int64_t early)
{
    int rc = begin(q);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *s;
    int which;
    if (early > 0) {
        which = ST_PRUNE_EARLY;
        s = q->stmt[which];
        sqlite3_bind_int64(s, 1, early);
    } else {
        which = ST_PRUNE_OLD;
        s = q->stmt[which];
        sqlite3_bind_int64(s, 1, now - (int64_t)q->o.retention_ms);
        sqlite3_bind_int(s, 2, PRUNE_BATCH);
    }
    if ((rc = run(q, which, "pruning finished rows")) < 0) {
        return rc;
    }
    int n = sqlite3_changes(q->db);
    q->delta -= n;
    return n;
}

/* Retention: returns true when more rows are left to prune now. */
static bool maybe_prune(localq_t *q, int64_t now)
{
    if (!q->o.retention_ms || (q->last_prune_ms && now - q->last_prune_ms < PRUNE_EVERY_MS)) {
        return false;
    }
    int n = prune(q, now, 0);
    if (n < 0) {
        return false;
    }
    if (n > 0) {
        q->st.pruned += (uint64_t)n;
        LOG_INFO("local", "pruned %d finished rows older than %llus (deliver.retention)", n,
                 (unsigned long long)(q->o.retention_ms / 1000));
    }
    if (n == PRUNE_BATCH) {
        return true;
    }
    q->last_prune_ms = now;
    return false;
}

static void rearm(localq_t *q, int64_t now, bool more)
{
    q->st.next_due_ms = 0;
    if (more) {
        arm(q, 0);
        return;
    }
    if (q->inflight >= LOCALQ_INFLIGHT_MAX) {
        return; /* a finished delivery pokes */
    }
    sqlite3_stmt *s = q->stmt[ST_NEXT];
    sqlite3_bind_int64(s, 1, now);
    int src = sqlite3_step(s);
    int64_t next = 0;
    if (src == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL) {
        next = sqlite3_column_int64(s, 0);
    }
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    if (src != SQLITE_ROW && src != SQLITE_DONE) {
        db_fail(q, "reading the next due time", src);
        arm(q, DB_RETRY_MS);
        return;
    }
    if (next > now) {
        uint64_t delay = (uint64_t)(next - now);
        arm(q, delay < LOCALQ_TIMER_MAX_MS ? delay : LOCALQ_TIMER_MAX_MS);
        q->st.next_due_ms = next;
    }
}

static void on_timer(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    localq_t *q = arg;
    q->timer = 0;
    uint64_t mono = clock_mono_ms();
    if (q->paused_until > mono) {
        /* Commits keep failing (disk full?): starting deliveries whose
         * outcome cannot be stored would only repeat them. */
        arm(q, q->paused_until - mono);
        return;
    }
    int64_t now = q_now(q);
    /* Outcomes whose write failed before: write them first. */
    for (size_t i = 0; i < LOCALQ_INFLIGHT_MAX; i++) {
        if (q->jobs[i].used && q->jobs[i].unrecorded && record(q, &q->jobs[i]) < 0) {
            arm(q, DB_RETRY_MS);
            return;
        }
    }
    bool more = maybe_prune(q, now);
    unsigned examined = 0;
    while (q->inflight < LOCALQ_INFLIGHT_MAX && examined < PUMP_EXAMINE_MAX) {
        size_t nc = 0;
        if (read_due(q, now, &nc) < 0) {
            arm(q, DB_RETRY_MS);
            return;
        }
        if (nc == 0) {
            break;
        }
        for (size_t i = 0; i < nc && q->inflight < LOCALQ_INFLIGHT_MAX; i++) {
            if (decide(q, &q->cands[i], now) < 0) {
                /* A write failed: the row is still due; do not spin on it. */
                arm(q, DB_RETRY_MS);
                return;
            }
            examined++;
        }
    }
    rearm(q, now, more || examined >= PUMP_EXAMINE_MAX);
}

/* --- the write transaction ends ------------------------------------------ */

static void on_commit(void *arg, int rc)
{
    localq_t *q = arg;
    if (rc == 0) {
        if (q->commit_failures) {
            LOG_INFO("local", "commits work again after %u failures: deliveries resume",
                     q->commit_failures);
            q->commit_failures = 0;
            q->paused_until = 0;
            arm(q, 0);
        }
        q->rows = (uint64_t)((int64_t)q->rows + q->delta >= 0 ? (int64_t)q->rows + q->delta : 0);
        if (q->last_seq > q->committed_seq) {
            q->committed_seq = q->last_seq;
        }
        if (q->pending_adds > 0) {
            arm(q, 0); /* stored: now they may be delivered */
        }
    } else if (q->wrote) {
        /* Rolled back: new rows are gone, and so are state changes (a row
         * delivered then is delivered again: at least once). Count again
         * and look at due rows anew. */
        if (q->pending_adds) {
            LOG_WARN("local", "commit failed: %u local notifications not stored (%s)",
                     q->pending_adds, tdg_strerror(rc));
        }
        q->last_seq = q->committed_seq;
        sqlite3_stmt *s = q->stmt[ST_COUNT];
        if (sqlite3_step(s) == SQLITE_ROW) {
            q->rows = (uint64_t)sqlite3_column_int64(s, 0);
        }
        sqlite3_reset(s);
        uint64_t pause = backoff_delay(q->commit_failures < 30 ? q->commit_failures : 30,
                                       q->o.retry_min_ms, q->o.retry_max_ms);
        q->commit_failures++;
        q->paused_until = clock_mono_ms() + pause;
        if (q->commit_failures == 1) {
            LOG_WARN("local", "commit failed (%s): deliveries paused, retried with backoff",
                     tdg_strerror(rc));
        }
        arm(q, pause);
    }
    q->delta = 0;
    q->pending_adds = 0;
    q->wrote = false;
}

/* --- adding ---------------------------------------------------------------- */

/* Make room for `need` rows under the budget: prune the oldest finished rows
 * early if that helps. 0 or TDG_EFULL (or a database error). */
static int make_room(localq_t *q, int64_t need, int64_t now)
{
    if (!q->o.max_rows) {
        return 0;
    }
    int64_t max = (int64_t)q->o.max_rows;
    int64_t total = (int64_t)q->rows + q->delta;
    if (total + need <= max) {
        return 0;
    }
    int n = prune(q, now, total + need - max);
    if (n < 0) {
        return n;
    }
    if (n > 0) {
        q->st.pruned_early += (uint64_t)n;
        if (!q->early_logged) {
            LOG_WARN("local",
                     "queue at its budget (deliver.max_rows=%lld): pruning the oldest "
                     "finished rows before deliver.retention (%d now)",
                     (long long)max, n);
            q->early_logged = true;
        }
    }
    total = (int64_t)q->rows + q->delta;
    if (total + need > max) {
        q->st.rejected_full++;
        if (!q->full_logged) {
            LOG_WARN("local",
                     "full: rows=%lld max_rows=%lld, all pending; rejecting new local "
                     "notifications",
                     (long long)total, (long long)max);
            q->full_logged = true;
        }
        return TDG_EFULL;
    }
    return 0;
}

static int insert(localq_t *q, const char *source, const struct ingest_item *it,
                  const char *backend, enum localq_state state, const char *reason, int64_t now)
{
    sqlite3_stmt *s = q->stmt[ST_INSERT];
    sqlite3_bind_text(s, 1, it->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, backend, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, source, -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 4, it->priority);
    sqlite3_bind_int64(s, 5, it->created_ms);
    sqlite3_bind_int64(s, 6, it->expires_ms);
    sqlite3_bind_text(s, 7, state_names[state], -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 8, now);
    bind_text_or_null(s, 9, reason);
    sqlite3_bind_int64(s, 10, now);
    if (state == LOCALQ_PENDING) {
        sqlite3_bind_blob(s, 11, it->json, (int)it->len, SQLITE_STATIC);
    } else {
        sqlite3_bind_null(s, 11);
    }
    int rc = run(q, ST_INSERT, "adding a local notification");
    if (rc == 0) {
        q->last_seq = sqlite3_last_insert_rowid(q->db);
    }
    return rc;
}

int localq_add(localq_t *q, const char *source, const struct ingest_item *it)
{
    if (!it->json || it->len == 0 || it->len > PROTO_MAX_WIRE) {
        return -EINVAL;
    }
    int rc = begin(q);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *s = q->stmt[ST_EXISTS];
    sqlite3_bind_text(s, 1, it->id, -1, SQLITE_STATIC);
    int src = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    if (src == SQLITE_ROW) {
        q->st.duplicates++;
        return TDG_EDUPLICATE;
    }
    if (src != SQLITE_DONE) {
        return db_fail(q, "looking up an id", src);
    }
    /* Every enabled backend whose channel the notification allows (fan-out). */
    size_t take[DELIVER_BACKENDS_MAX];
    size_t k = 0;
    for (size_t i = 0; i < deliver_count(q->d) && k < DELIVER_BACKENDS_MAX; i++) {
        if (it->channels & deliver_channel(q->d, i)) {
            take[k++] = i;
        }
    }
    int64_t now = q_now(q);
    if ((rc = make_room(q, k ? (int64_t)k : 1, now)) < 0) {
        return rc;
    }
    /* All rows of the notification or none ("never half-applied"). */
    if ((rc = run(q, ST_SAVEPOINT, "savepoint")) < 0) {
        return rc;
    }
    for (size_t i = 0; i < k && rc == 0; i++) {
        rc = insert(q, source, it, deliver_name(q->d, take[i]), LOCALQ_PENDING, NULL, now);
    }
    char why[DELIVER_REASON_MAX];
    if (k == 0) {
        /* Kept as a finished row so the outcome can be looked up. */
        snprintf(why, sizeof(why), "no enabled backend takes its channels (deliver.backends)");
        rc = insert(q, source, it, LOCALQ_BACKEND_NONE, LOCALQ_DROPPED, why, now);
    }
    if (rc < 0) {
        run(q, ST_SP_ROLLBACK, "savepoint rollback");
        run(q, ST_SP_RELEASE, "savepoint release");
        return rc;
    }
    if ((rc = run(q, ST_SP_RELEASE, "savepoint release")) < 0) {
        return rc;
    }
    q->delta += k ? (int64_t)k : 1;
    q->pending_adds++;
    q->st.added++;
    if (k == 0) {
        q->st.dropped++;
        LOG_WARN("local", "dropped id=%s: %s", it->id, why);
    }
    if (q->full_logged) {
        LOG_INFO("local", "room again: rows=%lld max_rows=%llu (rejected %llu while full)",
                 (long long)((int64_t)q->rows + q->delta), (unsigned long long)q->o.max_rows,
                 (unsigned long long)q->st.rejected_full);
        q->full_logged = false;
    }
    return 0;
}

unsigned localq_pending(const localq_t *q)
{
    return q->pending_adds;
}

/* --- policy, receipts, queries --------------------------------------------- */

void localq_set_policy(localq_t *q, const policy_snapshot_t *s)
{
    q->snap = s;
    int64_t now = q_now(q);
    if (begin(q) < 0) {
        return;
    }
    sqlite3_bind_int64(q->stmt[ST_RELEASE], 1, now);
    sqlite3_bind_int64(q->stmt[ST_RELEASE], 2, now);
    if (run(q, ST_RELEASE, "re-deciding held rows") == 0) {
        int n = sqlite3_changes(q->db);
        if (n > 0) {
            LOG_INFO("local", "preferences changed: deciding %d held rows again", n);
        }
    }
    arm(q, 0);
}

void localq_receipt(localq_t *q, const struct deliver_receipt *r)
{
    const char *kind = r->kind == DELIVER_RECEIPT_ACTION ? "action" : "closed";
    char text[96];
    snprintf(text, sizeof(text), "%s:%s", kind, r->detail ? r->detail : "");
    LOG_INFO("local", "receipt id=%s backend=%s %s", r->id, r->backend, text);
    if (begin(q) < 0) {
        return;
    }
    sqlite3_stmt *s = q->stmt[ST_RECEIPT];
    sqlite3_bind_text(s, 1, text, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 2, q_now(q));
    sqlite3_bind_text(s, 3, r->id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 4, r->backend, -1, SQLITE_TRANSIENT);
    run(q, ST_RECEIPT, "recording a receipt");
}

static bool add_col_text(cJSON *o, const char *key, sqlite3_stmt *s, int col)
{
    const char *v = (const char *)sqlite3_column_text(s, col);
    return v ? cJSON_AddStringToObject(o, key, v) != NULL : cJSON_AddNullToObject(o, key) != NULL;
}

/* "key": RFC 3339 and "key_ms": the same in Unix ms; null for 0. */
static bool add_col_time(cJSON *o, const char *key, int64_t ms)
{
    char key_ms[48];
    snprintf(key_ms, sizeof(key_ms), "%s_ms", key);
    if (ms <= 0) {
        return cJSON_AddNullToObject(o, key) && cJSON_AddNullToObject(o, key_ms);
    }
    char buf[32];
    fmt_time(ms, buf, sizeof(buf));
    return cJSON_AddStringToObject(o, key, buf) && cJSON_AddNumberToObject(o, key_ms, (double)ms);
}

int localq_find(localq_t *q, const char *id, cJSON **out)
{
    *out = NULL;
    cJSON *arr = cJSON_CreateArray();
    if (!arr) {
        return -ENOMEM;
    }
    sqlite3_stmt *s = q->stmt[ST_FIND];
    sqlite3_bind_text(s, 1, id, -1, SQLITE_TRANSIENT);
    int src;
    bool ok = true;
    while (ok && (src = sqlite3_step(s)) == SQLITE_ROW) {
        cJSON *o = cJSON_CreateObject();
        ok = o && cJSON_AddItemToArray(arr, o);
        if (!ok) {
            cJSON_Delete(o);
            break;
        }
        const char *state = (const char *)sqlite3_column_text(s, 2);
        int prio = sqlite3_column_int(s, 6);
        ok =
            add_col_text(o, "backend", s, 0) && add_col_text(o, "source", s, 1) &&
            add_col_text(o, "state", s, 2) && add_col_text(o, "rule", s, 3) &&
            add_col_text(o, "reason", s, 4) &&
            cJSON_AddNumberToObject(o, "attempts", (double)sqlite3_column_int64(s, 5)) &&
            cJSON_AddStringToObject(o, "priority",
                                    proto_priority_name((enum proto_priority)(prio & 3))) &&
            add_col_time(o, "accepted", sqlite3_column_int64(s, 7)) &&
            add_col_time(o, "expires", sqlite3_column_int64(s, 8)) &&
            add_col_time(o, "due",
                         state && strcmp(state, "pending") == 0 ? sqlite3_column_int64(s, 9) : 0) &&
            add_col_time(o, "updated", sqlite3_column_int64(s, 10)) &&
            add_col_text(o, "ref", s, 11) && add_col_text(o, "receipt", s, 12);
    }
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    if (!ok) {
        cJSON_Delete(arr);
        return -ENOMEM;
    }
    if (src != SQLITE_DONE) {
        cJSON_Delete(arr);
        return db_fail(q, "looking up a notification", src);
    }
    if (cJSON_GetArraySize(arr) == 0) {
        cJSON_Delete(arr);
        return TDG_ENOTFOUND;
    }
    *out = arr;
    return 0;
}

int localq_count(localq_t *q, struct localq_counts *c)
{
    memset(c, 0, sizeof(*c));
    sqlite3_stmt *s = q->stmt[ST_STATES];
    int src;
    while ((src = sqlite3_step(s)) == SQLITE_ROW) {
        const char *state = (const char *)sqlite3_column_text(s, 0);
        bool held = sqlite3_column_int(s, 1) != 0;
        uint64_t n = (uint64_t)sqlite3_column_int64(s, 2);
        for (int i = 0; i < LOCALQ_STATE_COUNT; i++) {
            if (state && strcmp(state, state_names[i]) == 0) {
                c->by_state[i] += n;
                if (i == LOCALQ_PENDING && held) {
                    c->held += n;
                }
                break;
            }
        }
    }
    sqlite3_reset(s);
    return src == SQLITE_DONE ? 0 : db_fail(q, "counting rows", src);
}

void localq_get_stats(const localq_t *q, struct localq_stats *st)
{
    *st = q->st;
    st->rows = q->rows;
    st->max_rows = q->o.max_rows;
    st->in_flight = q->inflight;
}

/* --- lifetime -------------------------------------------------------------- */

int localq_create(loop_t *loop, outbox_t *ob, deliver_t *d, const struct localq_opts *o,
                  localq_t **out, char *err, size_t errlen)
{
    if (o->retry_min_ms < 1 || o->retry_max_ms < o->retry_min_ms) {
        snprintf(err, errlen, "deliver.retry_min must be >= 1ms and <= deliver.retry_max");
        return TDG_ECONFIG;
    }
    localq_t *q = calloc(1, sizeof(*q));
    if (!q) {
        return -ENOMEM;
    }
    q->cands = calloc(PUMP_BATCH, sizeof(*q->cands));
    if (!q->cands) {
        free(q);
        return -ENOMEM;
    }
    q->loop = loop;
    q->ob = ob;
    q->db = outbox_db(ob);
    q->d = d;
    q->o = *o;
    snprintf(q->local_user, sizeof(q->local_user), "%s", o->local_user ? o->local_user : "");
    q->o.local_user = q->local_user;
    q->snap = o->policy;
    int rc;
    for (int i = 0; i < ST_N; i++) {
        if ((rc = db_prepare(q->db, sql[i], &q->stmt[i])) < 0) {
            snprintf(err, errlen, "local queue: cannot prepare statements: %s",
                     sqlite3_errmsg(q->db));
            localq_destroy(q);
            return rc;
        }
    }
    sqlite3_stmt *s = q->stmt[ST_COUNT];
    int src = sqlite3_step(s);
    if (src == SQLITE_ROW) {
        q->rows = (uint64_t)sqlite3_column_int64(s, 0);
        q->committed_seq = q->last_seq = sqlite3_column_int64(s, 1);
    }
    sqlite3_reset(s);
    if (src != SQLITE_ROW) {
        snprintf(err, errlen, "local queue: %s", sqlite3_errmsg(q->db));
        localq_destroy(q);
        return db_err(src) ? db_err(src) : TDG_EDB;
    }
    struct localq_counts c;
    if ((rc = localq_count(q, &c)) < 0) {
        snprintf(err, errlen, "local queue: %s", sqlite3_errmsg(q->db));
        localq_destroy(q);
        return rc;
    }
    outbox_on_commit(ob, on_commit, q);
    LOG_INFO("local", "queue: rows=%llu pending=%llu held=%llu max_rows=%llu backends=%zu",
             (unsigned long long)q->rows, (unsigned long long)c.by_state[LOCALQ_PENDING],
             (unsigned long long)c.held, (unsigned long long)o->max_rows, deliver_count(d));
    /* Whatever is due (held until a time already past, retries, rows that
     * were being delivered when the agent stopped) runs now. */
    arm(q, 0);
    *out = q;
    return 0;
}

void localq_destroy(localq_t *q)
{
    if (!q) {
        return;
    }
    if (q->timer) {
        loop_timer_cancel(q->loop, q->timer);
    }
    outbox_on_commit(q->ob, NULL, NULL);
    for (int i = 0; i < ST_N; i++) {
        sqlite3_finalize(q->stmt[i]);
    }
    free(q->cands);
    free(q);
}
