/* store_engine.c - fanout engine tables: receipts outbox, terminal counters,
 * agent quotas (see store_engine.h and store_int.h). */
#include "store_engine.h"
#include "store_int.h"

#include "error.h"

#define TERMINAL "('delivered', 'failed', 'suppressed', 'expired', 'dropped')"
#define RECEIPT_ROW                                                                                \
    "INSERT INTO receipts(notification_id, agent, state, reason, at_ms)"                           \
    " VALUES (NEW.id, NEW.agent, NEW.state, NEW.reason, NEW.updated_ms);"                          \
    "INSERT INTO engine_counts(state, n) VALUES (NEW.state, 1)"                                    \
    " ON CONFLICT(state) DO UPDATE SET n = n + 1;"

/* Schema v5 (store.c's migration list). AUTOINCREMENT: a seq is never
 * reused after a delete, so the publisher's "seq > cursor" never skips one. */
const char store_sql_engine[] =
    "CREATE TABLE receipts ("
    "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  notification_id TEXT NOT NULL,"
    "  agent TEXT NOT NULL,"
    "  state TEXT NOT NULL,"
    "  reason TEXT NOT NULL DEFAULT '',"
    "  at_ms INTEGER NOT NULL"
    ");"
    "CREATE TABLE engine_counts ("
    "  state TEXT PRIMARY KEY,"
    "  n INTEGER NOT NULL"
    ") WITHOUT ROWID;"
    "CREATE TABLE agent_quota ("
    "  agent TEXT NOT NULL,"
    "  day INTEGER NOT NULL," /* UTC days since the epoch */
    "  n INTEGER NOT NULL,"
    "  PRIMARY KEY (agent, day)"
    ") WITHOUT ROWID;"
    "CREATE TRIGGER receipts_on_state AFTER UPDATE OF state ON notifications"
    "  WHEN NEW.state IN " TERMINAL " AND OLD.state IS NOT NEW.state"
    " BEGIN " RECEIPT_ROW " END;"
    "CREATE TRIGGER receipts_on_insert AFTER INSERT ON notifications"
    "  WHEN NEW.state IN " TERMINAL " BEGIN " RECEIPT_ROW " END;";

/* The batch first (LIMIT in the subquery), then its attempts by index. */
static const char SQL_NEXT[] =
    "SELECT r.seq, r.notification_id, r.agent, r.state, r.reason, r.at_ms,"
    " a.channel, a.state, a.status, a.reason"
    " FROM (SELECT seq, notification_id, agent, state, reason, at_ms FROM receipts"
    "       WHERE seq > ?1 ORDER BY seq LIMIT ?2) AS r"
    " LEFT JOIN attempts AS a ON a.notification_id = r.notification_id"
    " ORDER BY r.seq, a.id";
static const char SQL_DELETE[] = "DELETE FROM receipts WHERE seq BETWEEN ?2 AND ?3 AND agent = ?1";
static const char SQL_PENDING[] = "SELECT count(*) FROM receipts";
static const char SQL_COUNTS[] = "SELECT state, n FROM engine_counts ORDER BY state";
/* The IN term lets SQLite use the partial index notifications_work. */
static const char SQL_DEPTH[] = "SELECT state, count(*) FROM notifications"
                                " WHERE state IN ('queued', 'sending') GROUP BY state";
static const char SQL_QUOTA_GET[] = "SELECT n FROM agent_quota WHERE agent = ?1 AND day = ?2";
static const char SQL_QUOTA_ADD[] = "INSERT INTO agent_quota(agent, day, n) VALUES (?1, ?2, ?3)"
                                    " ON CONFLICT(agent, day) DO UPDATE SET n = n + excluded.n";
static const char SQL_KNOWN[] = "SELECT 1 FROM notifications WHERE id = ?";

static const char *col(sqlite3_stmt *st, int i)
{
    const char *v = (const char *)sqlite3_column_text(st, i);
    return v ? v : "";
}

int store_receipts_next(store_t *s, int64_t after, unsigned max, store_receipt_cb cb, void *arg)
{
    sqlite3_stmt *st = store_stmt(s, SQL_NEXT);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_int64(st, 1, after);
    sqlite3_bind_int64(st, 2, max);
    int n = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_receipt r = {
            .seq = sqlite3_column_int64(st, 0),
            .id = col(st, 1),
            .agent = col(st, 2),
            .state = col(st, 3),
            .reason = col(st, 4),
            .at_ms = sqlite3_column_int64(st, 5),
        };
        struct store_attempt_row a = {0};
        if (sqlite3_column_type(st, 6) != SQLITE_NULL) {
            a.channel = col(st, 6);
            a.state = col(st, 7);
            a.status = sqlite3_column_int(st, 8);
            a.reason = col(st, 9);
        }
        cb(arg, &r, &a);
        n++;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? n : store_fail(s, rc, "receipts");
}

int store_receipts_delete(store_t *s, const char *agent, int64_t from, int64_t to)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, SQL_DELETE);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_text(st, 1, agent, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, from);
    sqlite3_bind_int64(st, 3, to);
    return store_run(s, st, "receipts delete");
}

static int count_query(store_t *s, const char *sql, int64_t *out)
{
    sqlite3_stmt *st = store_stmt(s, sql);
    if (!st) {
        return TDG_EDB;
    }
    int rc = sqlite3_step(st);
    *out = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : store_fail(s, rc, "count");
}

int store_receipts_pending(store_t *s, int64_t *n)
{
    return count_query(s, SQL_PENDING, n);
}

int store_terminal_counts(store_t *s, store_state_count_cb cb, void *arg)
{
    sqlite3_stmt *st = store_stmt(s, SQL_COUNTS);
    if (!st) {
        return TDG_EDB;
    }
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *state = (const char *)sqlite3_column_text(st, 0);
        if (state) {
            cb(arg, state, sqlite3_column_int64(st, 1));
        }
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : store_fail(s, rc, "terminal counts");
}

int store_queue_depth(store_t *s, int64_t *queued, int64_t *sending)
{
    *queued = *sending = 0;
    sqlite3_stmt *st = store_stmt(s, SQL_DEPTH);
    if (!st) {
        return TDG_EDB;
    }
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *state = (const char *)sqlite3_column_text(st, 0);
        int64_t n = sqlite3_column_int64(st, 1);
        if (state && state[0] == 'q') {
            *queued = n;
        } else if (state) {
            *sending = n;
        }
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : store_fail(s, rc, "queue depth");
}

int store_quota_get(store_t *s, const char *agent, int64_t day, int64_t *n)
{
    sqlite3_stmt *st = store_stmt(s, SQL_QUOTA_GET);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_text(st, 1, agent, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, day);
    int rc = sqlite3_step(st);
    *n = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : store_fail(s, rc, "quota");
}

int store_quota_add(store_t *s, const char *agent, int64_t day, int64_t add)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, SQL_QUOTA_ADD);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_text(st, 1, agent, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, day);
    sqlite3_bind_int64(st, 3, add);
    return store_run(s, st, "quota add");
}

int store_notification_known(store_t *s, const char *id)
{
    sqlite3_stmt *st = store_stmt(s, SQL_KNOWN);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc == SQLITE_ROW) {
        return 1;
    }
    return rc == SQLITE_DONE ? 0 : store_fail(s, rc, "notification known");
}
