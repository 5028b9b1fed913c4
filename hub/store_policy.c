/* store_policy.c - preferences, decisions, caps, the policy revision (see
 * store.h "Policy", docs/hub-policy.md). */
#include "store_int.h"

#include "error.h"
#include "policy.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Schema v3: see store.c's migration list. */
const char store_sql_policy[] =
    "CREATE TABLE prefs ("
    "  user_id TEXT PRIMARY KEY,"
    "  json TEXT NOT NULL,"
    "  updated_ms INTEGER NOT NULL"
    ");"
    /* One row per decision: notification, user and channel ("" for the
     * user as a whole: deliver_at, fallback steps). */
    "CREATE TABLE decisions ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  notification_id TEXT NOT NULL,"
    "  user_id TEXT NOT NULL,"
    "  channel TEXT NOT NULL DEFAULT '',"
    "  action TEXT NOT NULL,"
    "  rule TEXT NOT NULL,"
    "  until_ms INTEGER NOT NULL DEFAULT 0,"
    "  at_ms INTEGER NOT NULL"
    ");"
    "CREATE INDEX decisions_by_notification ON decisions(notification_id);"
    /* A notification of a capped category let through to a user. Rows older
     * than the longest window (30 days) are of no use and are pruned. */
    "CREATE TABLE cap_events ("
    "  user_id TEXT NOT NULL,"
    "  category TEXT NOT NULL,"
    "  notification_id TEXT NOT NULL,"
    "  at_ms INTEGER NOT NULL"
    ");"
    "CREATE INDEX cap_events_by_key ON cap_events(user_id, category, at_ms);"
    "CREATE TABLE policy_meta ("
    "  id INTEGER PRIMARY KEY CHECK (id = 1),"
    "  revision INTEGER NOT NULL"
    ");"
    "INSERT INTO policy_meta(id, revision) VALUES (1, 0);"
    /* Notifications waiting on a timer (deliver_at, hold, fallback), for
     * the queue depth metric: a partial index holds only those rows, so
     * the count reads no other row, and the hot path (queued -> sending ->
     * delivered) pays one WHERE evaluation per update, no index write.
     * Schema v10 (store.c) folds it into notifications_work. */
    "CREATE INDEX notifications_scheduled ON notifications(state)"
    "  WHERE state = 'scheduled';";

static const char sql_pref_get[] = "SELECT json FROM prefs WHERE user_id = ?";
static const char sql_pref_put[] =
    "INSERT INTO prefs(user_id, json, updated_ms) VALUES (?1, ?2, ?3)"
    " ON CONFLICT(user_id) DO UPDATE SET json = excluded.json, updated_ms = excluded.updated_ms";
static const char sql_pref_del[] = "DELETE FROM prefs WHERE user_id = ?";
static const char sql_user_exists[] = "SELECT 1 FROM users WHERE id = ?";
/* Decisions are buffered (store_rows.c, store_int.h). */
const struct store_rows_def store_dec_rows_def = {
    .head = "INSERT OR IGNORE INTO decisions(notification_id, user_id, channel, action, rule,"
            " until_ms, at_ms) VALUES ",
    .tuple = "(?, ?, ?, ?, ?, ?, ?)",
    .ncols = 7,
    .text_mask = 0x1f,
    .what = "decision add",
};
static const char sql_dec_of[] =
    "SELECT notification_id, user_id, channel, action, rule, until_ms, at_ms FROM decisions"
    " WHERE notification_id = ? ORDER BY id";
static const char sql_cap_add[] =
    "INSERT INTO cap_events(user_id, category, notification_id, at_ms) VALUES (?1, ?2, ?3, ?4)";
static const char sql_cap_count[] =
    "SELECT count(*) FROM cap_events WHERE user_id = ?1 AND category = ?2 AND at_ms > ?3";
static const char sql_cap_prune[] =
    "DELETE FROM cap_events WHERE user_id = ?1 AND category = ?2 AND at_ms <= ?3";
static const char sql_rev_get[] = "SELECT revision FROM policy_meta WHERE id = 1";
static const char sql_rev_bump[] = "UPDATE policy_meta SET revision = revision + 1 WHERE id = 1";

static int step_done(store_t *s, sqlite3_stmt *st, const char *what)
{
    return store_run(s, st, what);
}

int store_pref_get(store_t *s, const char *user_id, char *buf, size_t len)
{
    sqlite3_stmt *st = store_stmt(s, sql_pref_get);
    if (!st) {
        return TDG_EDB;
    }
    if (len > 0) {
        buf[0] = '\0';
    }
    sqlite3_bind_text(st, 1, user_id, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    int ret = 0;
    if (rc == SQLITE_ROW) {
        const char *j = (const char *)sqlite3_column_text(st, 0);
        size_t l = (size_t)sqlite3_column_bytes(st, 0);
        if (l + 1 > len) {
            ret = -ENOSPC;
        } else {
            memcpy(buf, j ? j : "", l + 1);
            ret = 1;
        }
    } else if (rc != SQLITE_DONE) {
        ret = store_fail(s, rc, "pref get");
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return ret;
}

int store_pref_set(store_t *s, const char *user_id, const char *json, size_t len, int64_t now_ms,
                   struct policy_error *err)
{
    if (err) {
        err->field[0] = err->detail[0] = '\0';
    }
    if (json && len > STORE_PREF_MAX) {
        if (err) {
            snprintf(err->detail, sizeof(err->detail), "preferences are %zu bytes, %d max", len,
                     STORE_PREF_MAX);
        }
        return TDG_ETOOBIG;
    }
    if (json && len > 0) {
        policy_prefs_t *p = NULL;
        int rc = policy_prefs_parse(json, len, &p, err);
        if (rc < 0) {
            return rc;
        }
        policy_prefs_free(p);
    }
    sqlite3_stmt *ex = store_stmt(s, sql_user_exists);
    if (!ex) {
        return TDG_EDB;
    }
    sqlite3_bind_text(ex, 1, user_id, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(ex);
    sqlite3_reset(ex);
    sqlite3_clear_bindings(ex);
    if (rc == SQLITE_DONE) {
        if (err) {
            snprintf(err->field, sizeof(err->field), "user");
            snprintf(err->detail, sizeof(err->detail), "no such user");
        }
        return TDG_ENOTFOUND;
    }
    if (rc != SQLITE_ROW) {
        return store_fail(s, rc, "pref set: user");
    }
    if ((rc = store_tx(s)) < 0) {
        return rc;
    }
    sqlite3_stmt *st;
    if (json && len > 0) {
        if (!(st = store_stmt(s, sql_pref_put))) {
            return TDG_EDB;
        }
        sqlite3_bind_text(st, 1, user_id, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 2, json, (int)len, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 3, now_ms);
    } else {
        if (!(st = store_stmt(s, sql_pref_del))) {
            return TDG_EDB;
        }
        sqlite3_bind_text(st, 1, user_id, -1, SQLITE_TRANSIENT);
    }
    if ((rc = step_done(s, st, "pref set")) < 0) {
        return rc;
    }
    int64_t rev;
    return store_policy_revision_bump(s, &rev);
}

int store_decision_add(store_t *s, const struct store_decision *d)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    const struct store_rows_in row[] = {
        {.s = d->notification_id}, {.s = d->user_id}, {.s = d->channel}, {.s = d->action},
        {.s = d->rule},            {.i = d->until_ms}, {.i = d->at_ms},
    };
    return store_rows_add(s, &s->dec_rows, row);
}

int store_decisions_of(store_t *s, const char *notification_id, store_decision_cb cb, void *arg)
{
    sqlite3_stmt *st = store_stmt(s, sql_dec_of);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_text(st, 1, notification_id, -1, SQLITE_TRANSIENT);
    int n = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_decision d = {
            .notification_id = (const char *)sqlite3_column_text(st, 0),
            .user_id = (const char *)sqlite3_column_text(st, 1),
            .channel = (const char *)sqlite3_column_text(st, 2),
            .action = (const char *)sqlite3_column_text(st, 3),
            .rule = (const char *)sqlite3_column_text(st, 4),
            .until_ms = sqlite3_column_int64(st, 5),
            .at_ms = sqlite3_column_int64(st, 6),
        };
        if (cb) {
            cb(arg, &d);
        }
        n++;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_DONE) {
        return store_fail(s, rc, "decisions of");
    }
    return n;
}

int store_cap_record(store_t *s, const char *user_id, const char *category,
                     const char *notification_id, int64_t now_ms)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    /* Keep the table bounded: what is older than the longest window can
     * never count again (indexed range delete, usually nothing). */
    sqlite3_stmt *pr = store_stmt(s, sql_cap_prune);
    if (!pr) {
        return TDG_EDB;
    }
    sqlite3_bind_text(pr, 1, user_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(pr, 2, category, -1, SQLITE_STATIC);
    sqlite3_bind_int64(pr, 3, now_ms - POLICY_WINDOW_MAX_MS);
    if ((rc = step_done(s, pr, "cap prune")) < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, sql_cap_add);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_text(st, 1, user_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, category, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, notification_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, now_ms);
    return step_done(s, st, "cap record");
}

int store_cap_count(store_t *s, const char *user_id, const char *category, int64_t since_ms,
                    int64_t *count)
{
    sqlite3_stmt *st = store_stmt(s, sql_cap_count);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_text(st, 1, user_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, category, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, since_ms);
    int rc = sqlite3_step(st);
    *count = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_ROW ? 0 : store_fail(s, rc, "cap count");
}

int store_policy_revision(store_t *s, int64_t *rev)
{
    sqlite3_stmt *st = store_stmt(s, sql_rev_get);
    if (!st) {
        return TDG_EDB;
    }
    int rc = sqlite3_step(st);
    *rev = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 0 : store_fail(s, rc, "policy revision");
}

int store_policy_revision_bump(store_t *s, int64_t *rev)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, sql_rev_bump);
    if (!st) {
        return TDG_EDB;
    }
    if ((rc = step_done(s, st, "policy revision bump")) < 0) {
        return rc;
    }
    return store_policy_revision(s, rev);
}

static const char sql_out_att[] =
    "SELECT count(*), coalesce(sum(state = 'ok'), 0) FROM attempts WHERE notification_id = ?";
static const char sql_out_last[] =
    "SELECT channel, status, reason FROM attempts WHERE notification_id = ?"
    " AND state IN ('drop', 'retry') ORDER BY id DESC LIMIT 1";
static const char sql_out_rule[] =
    "SELECT rule FROM decisions WHERE notification_id = ?1 AND action = ?2 ORDER BY id LIMIT 1";

static int first_rule(store_t *s, const char *id, const char *action, char *out, size_t len)
{
    sqlite3_stmt *st = store_stmt(s, sql_out_rule);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, action, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    out[0] = '\0';
    if (rc == SQLITE_ROW) {
        const char *r = (const char *)sqlite3_column_text(st, 0);
        snprintf(out, len, "%s", r ? r : "");
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : store_fail(s, rc, "outcome rule");
}

int store_outcome_of(store_t *s, const char *notification_id, struct store_outcome *o)
{
    memset(o, 0, sizeof(*o));
    sqlite3_stmt *st = store_stmt(s, sql_out_att);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_text(st, 1, notification_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        o->attempts = sqlite3_column_int64(st, 0);
        o->ok_attempts = sqlite3_column_int64(st, 1);
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_ROW) {
        return store_fail(s, rc, "outcome attempts");
    }
    if (!(st = store_stmt(s, sql_out_last))) {
        return TDG_EDB;
    }
    sqlite3_bind_text(st, 1, notification_id, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *ch = (const char *)sqlite3_column_text(st, 0);
        const char *r = (const char *)sqlite3_column_text(st, 2);
        snprintf(o->last_reason, sizeof(o->last_reason), "%s: %d %s", ch ? ch : "",
                 sqlite3_column_int(st, 1), r ? r : "");
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        return store_fail(s, rc, "outcome last");
    }
    if ((rc = first_rule(s, notification_id, "drop", o->drop_rule, sizeof(o->drop_rule))) < 0) {
        return rc;
    }
    return first_rule(s, notification_id, "suppress", o->suppress_rule, sizeof(o->suppress_rule));
}

static const char sql_pref_load[] =
    "SELECT u.tz, p.json FROM users u LEFT JOIN prefs p ON p.user_id = u.id WHERE u.id = ?";

int store_pref_load(store_t *s, const char *user_id, char *buf, size_t len, char *tz,
                    size_t tz_len)
{
    sqlite3_stmt *st = store_stmt(s, sql_pref_load);
    if (!st) {
        return TDG_EDB;
    }
    if (len > 0) {
        buf[0] = '\0';
    }
    sqlite3_bind_text(st, 1, user_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    int ret = 0;
    if (rc == SQLITE_ROW) {
        const char *z = (const char *)sqlite3_column_text(st, 0);
        snprintf(tz, tz_len, "%s", z ? z : "UTC");
        const char *j = (const char *)sqlite3_column_text(st, 1);
        size_t l = j ? (size_t)sqlite3_column_bytes(st, 1) : 0;
        if (l + 1 > len) {
            ret = -ENOSPC;
        } else {
            memcpy(buf, j ? j : "", l + 1);
            ret = 1;
        }
    } else if (rc != SQLITE_DONE) {
        ret = store_fail(s, rc, "pref load");
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return ret;
}

/* GDPR erasure (store_admin_forget_user). Preferences and cap events exist
 * only for this user: deleted. Decisions are the delivery log of their
 * notifications (which rule, when): kept, the user id replaced. */
static const char sql_forget_prefs[] = "DELETE FROM prefs WHERE user_id = ?1";
static const char sql_forget_caps[] = "DELETE FROM cap_events WHERE user_id = ?1";
static const char sql_forget_decisions[] =
    "UPDATE decisions SET user_id = '" STORE_REMOVED_USER "' WHERE user_id = ?1";

int store_policy_forget_user(store_t *s, const char *user_id)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    const char *const sqls[] = {sql_forget_prefs, sql_forget_caps, sql_forget_decisions};
    for (size_t i = 0; i < sizeof(sqls) / sizeof(sqls[0]); i++) {
        sqlite3_stmt *st = store_stmt(s, sqls[i]);
        if (!st) {
            return TDG_EDB;
        }
        store_bind_text(st, 1, user_id);
        if ((rc = store_run(s, st, "policy forget user")) < 0) {
            return rc;
        }
    }
    return 0;
}

static const char sql_count_scheduled[] =
    "SELECT count(*) FROM notifications WHERE state = 'scheduled'";

int store_count_scheduled(store_t *s, int64_t *n)
{
    sqlite3_stmt *st = store_stmt(s, sql_count_scheduled);
    if (!st) {
        return TDG_EDB;
    }
    int rc = sqlite3_step(st);
    *n = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 0 : store_fail(s, rc, "scheduled count");
}
