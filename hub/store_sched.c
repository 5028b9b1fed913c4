/* store_sched.c - the durable timers of the scheduler (see store.h
 * "Scheduler", hub/scheduler.h, docs/hub-policy.md). */
#include "store_int.h"

#include "error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Schema v4: see store.c's migration list. */
const char store_sql_sched[] =
    "CREATE TABLE timers ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  due_ms INTEGER NOT NULL,"
    "  kind TEXT NOT NULL,"
    "  notification_id TEXT NOT NULL,"
    "  payload TEXT NOT NULL DEFAULT ''"
    ");"
    "CREATE INDEX timers_due ON timers(due_ms, id);"
    "CREATE INDEX timers_by_notification ON timers(notification_id);";

static const char sql_add[] =
    "INSERT INTO timers(due_ms, kind, notification_id, payload) VALUES (?1, ?2, ?3, ?4)";
static const char sql_next[] = "SELECT min(due_ms) FROM timers";
static const char sql_due[] =
    "SELECT id, due_ms, kind, notification_id, payload FROM timers WHERE due_ms <= ?1"
    " ORDER BY due_ms, id LIMIT ?2";
static const char sql_del[] = "DELETE FROM timers WHERE id = ?";
static const char sql_cancel[] =
    "DELETE FROM timers WHERE notification_id = ?1 AND (?2 IS NULL OR kind = ?2)"
    " AND (?3 IS NULL OR substr(payload, 1, length(?3)) = ?3)";
static const char sql_count_of[] = "SELECT count(*) FROM timers WHERE notification_id = ?";
static const char sql_get[] =
    "SELECT body, expires_ms, state FROM notifications WHERE id = ?";

int store_timer_add(store_t *s, int64_t due_ms, const char *kind, const char *notification_id,
                    const char *payload, int64_t *id)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, sql_add);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_int64(st, 1, due_ms);
    sqlite3_bind_text(st, 2, kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, notification_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, payload ? payload : "", -1, SQLITE_STATIC);
    if ((rc = store_run(s, st, "timer add")) < 0) {
        return rc;
    }
    if (id) {
        *id = sqlite3_last_insert_rowid(s->db);
    }
    return 0;
}

int store_timer_next(store_t *s, int64_t *due_ms)
{
    sqlite3_stmt *st = store_stmt(s, sql_next);
    if (!st) {
        return TDG_EDB;
    }
    int rc = sqlite3_step(st);
    int ret;
    if (rc == SQLITE_ROW) {
        ret = sqlite3_column_type(st, 0) == SQLITE_NULL ? 0 : 1;
        *due_ms = ret ? sqlite3_column_int64(st, 0) : 0;
    } else {
        ret = store_fail(s, rc, "timer next");
    }
    sqlite3_reset(st);
    return ret;
}

int store_timer_take_due(store_t *s, int64_t now_ms, unsigned max, store_timer_cb cb, void *arg)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    /* Collect, then delete and call back: cb may add timers. */
    struct row {
        int64_t id, due;
        char kind[16];
        char nid[PROTO_ID_MAX + 1];
        char *payload;
    };
    if (max == 0) {
        return 0;
    }
    struct row *rows = calloc(max, sizeof(*rows));
    if (!rows) {
        return -ENOMEM;
    }
    sqlite3_stmt *st = store_stmt(s, sql_due);
    if (!st) {
        free(rows);
        return TDG_EDB;
    }
    sqlite3_bind_int64(st, 1, now_ms);
    sqlite3_bind_int(st, 2, (int)max);
    unsigned n = 0;
    int step;
    while (n < max && (step = sqlite3_step(st)) == SQLITE_ROW) {
        const char *kind = (const char *)sqlite3_column_text(st, 2);
        const char *nid = (const char *)sqlite3_column_text(st, 3);
        const char *pl = (const char *)sqlite3_column_text(st, 4);
        rows[n].payload = strdup(pl ? pl : "");
        if (!rows[n].payload) {
            break;
        }
        rows[n].id = sqlite3_column_int64(st, 0);
        rows[n].due = sqlite3_column_int64(st, 1);
        snprintf(rows[n].kind, sizeof(rows[n].kind), "%s", kind ? kind : "");
        snprintf(rows[n].nid, sizeof(rows[n].nid), "%s", nid ? nid : "");
        n++;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    sqlite3_stmt *del = store_stmt(s, sql_del);
    if (!del) {
        rc = TDG_EDB;
    }
    for (unsigned i = 0; i < n; i++) {
        if (rc == 0) {
            sqlite3_bind_int64(del, 1, rows[i].id);
            rc = store_run(s, del, "timer delete");
        }
        if (rc == 0) {
            struct store_timer t = {.id = rows[i].id,
                                    .due_ms = rows[i].due,
                                    .kind = rows[i].kind,
                                    .notification_id = rows[i].nid,
                                    .payload = rows[i].payload};
            cb(arg, &t);
        }
        free(rows[i].payload);
    }
    free(rows);
    return rc < 0 ? rc : (int)n;
}

int store_timer_cancel(store_t *s, const char *notification_id, const char *kind,
                       const char *payload)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, sql_cancel);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_text(st, 1, notification_id, -1, SQLITE_STATIC);
    store_bind_text(st, 2, kind);
    store_bind_text(st, 3, payload);
    if ((rc = store_run(s, st, "timer cancel")) < 0) {
        return rc;
    }
    return sqlite3_changes(s->db);
}

int store_timer_count_of(store_t *s, const char *notification_id, int64_t *count)
{
    sqlite3_stmt *st = store_stmt(s, sql_count_of);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_text(st, 1, notification_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    *count = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_ROW ? 0 : store_fail(s, rc, "timer count");
}

int store_notification_get(store_t *s, const char *id, char *buf, size_t len,
                           int64_t *expires_ms, char *state, size_t state_len)
{
    sqlite3_stmt *st = store_stmt(s, sql_get);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    int ret = 0;
    if (rc == SQLITE_ROW) {
        const char *b = (const char *)sqlite3_column_text(st, 0);
        size_t l = (size_t)sqlite3_column_bytes(st, 0);
        const char *sv = (const char *)sqlite3_column_text(st, 2);
        if (l + 1 > len) {
            ret = -ENOSPC;
        } else {
            memcpy(buf, b ? b : "", l + 1);
            if (expires_ms) {
                *expires_ms = sqlite3_column_int64(st, 1);
            }
            if (state && state_len) {
                snprintf(state, state_len, "%s", sv ? sv : "");
            }
            ret = 1;
        }
    } else if (rc != SQLITE_DONE) {
        ret = store_fail(s, rc, "notification get");
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return ret;
}

/* GDPR erasure: the user's timers (payload "<user>\n...") stay, so their
 * notifications still end when the timer fires, but name no one: the
 * planner finds no user "(removed)" and the part ends. ?1 = "<user>\n". */
static const char sql_forget[] =
    "UPDATE timers SET payload = '" STORE_REMOVED_USER "' || substr(payload, length(?1))"
    " WHERE kind IN ('deliver_at', 'hold', 'fallback')"
    " AND substr(payload, 1, length(?1)) = ?1";

int store_timer_forget_user(store_t *s, const char *user_id)
{
    char prefix[STORE_USER_ID_MAX + 2];
    int n = snprintf(prefix, sizeof(prefix), "%s\n", user_id);
    if (n < 2 || (size_t)n >= sizeof(prefix)) {
        return TDG_EINVAL_INPUT;
    }
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, sql_forget);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, prefix);
    if ((rc = store_run(s, st, "timer forget user")) < 0) {
        return rc;
    }
    return sqlite3_changes(s->db);
}

static const char sql_of_user[] =
    "SELECT id, due_ms, kind, notification_id, payload FROM timers"
    " WHERE kind IN ('deliver_at', 'hold', 'fallback') AND id > ?2"
    " AND substr(payload, 1, length(?1)) = ?1 ORDER BY id LIMIT ?3";

int store_timer_of_user(store_t *s, const char *user_id, int64_t after_id, unsigned max,
                        store_timer_cb cb, void *arg)
{
    char prefix[STORE_USER_ID_MAX + 2];
    int n = snprintf(prefix, sizeof(prefix), "%s\n", user_id);
    if (n < 2 || (size_t)n >= sizeof(prefix)) {
        return TDG_EINVAL_INPUT;
    }
    sqlite3_stmt *st = store_stmt(s, sql_of_user);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, prefix);
    sqlite3_bind_int64(st, 2, after_id);
    sqlite3_bind_int(st, 3, max > INT32_MAX ? INT32_MAX : (int)max);
    int count = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *kind = (const char *)sqlite3_column_text(st, 2);
        const char *nid = (const char *)sqlite3_column_text(st, 3);
        const char *pl = (const char *)sqlite3_column_text(st, 4);
        struct store_timer t = {.id = sqlite3_column_int64(st, 0),
                                .due_ms = sqlite3_column_int64(st, 1),
                                .kind = kind ? kind : "",
                                .notification_id = nid ? nid : "",
                                .payload = pl ? pl : ""};
        cb(arg, &t);
        count++;
    }
    int ret = rc == SQLITE_DONE ? count : store_fail(s, rc, "timers of user");
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return ret;
}

int store_timer_delete(store_t *s, int64_t id)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, sql_del);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_int64(st, 1, id);
    if ((rc = store_run(s, st, "timer delete")) < 0) {
        return rc;
    }
    return sqlite3_changes(s->db) > 0 ? 1 : 0;
}

static const char sql_hold_retries[] =
    "UPDATE notifications SET state = 'scheduled', reason = ''"
    " WHERE id IN (SELECT notification_id FROM timers WHERE kind = 'retry')"
    " AND state IN ('queued', 'sending')";

int store_timer_hold_retries(store_t *s)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, sql_hold_retries);
    if (!st) {
        return TDG_EDB;
    }
    if ((rc = store_run(s, st, "hold retries")) < 0) {
        return rc;
    }
    return sqlite3_changes(s->db);
}
