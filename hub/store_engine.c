/* store_engine.c - fanout engine tables: receipts outbox, terminal counters,
 * agent quotas (see store_engine.h and store_int.h). */
#include "store_engine.h"
#include "store_int.h"

#include "error.h"

#define TERMINAL "('delivered', 'failed', 'suppressed', 'expired', 'dropped')"
#define RECEIPT_ROW                                                                                \
    "INSERT INTO receipts(notification_id, agent, state, reason, at_ms)"                           \
    " VALUES (NEW.id, NEW.agent, NEW.state, NEW.reason, NEW.updated_ms);"

/* Schema v5 (store.c's migration list).
 *
 * receipts.seq is a plain rowid, not AUTOINCREMENT (which reads and writes
 * sqlite_sequence on every insert): a new row gets max(seq) + 1, so a seq
 * comes back only after the rows above it were deleted. The publisher
 * copes (receipts.c: store_receipts_top after each delete).
 *
 * engine_counts holds the terminal states whose receipts were confirmed
 * (counted per published message in store_receipts_delete, not per
 * notification); the rows still in the outbox are added at read time
 * (store_terminal_counts): the sum is every terminal state reached, durable,
 * in the transaction that reached it. */
const char store_sql_engine[] =
    "CREATE TABLE receipts ("
    "  seq INTEGER PRIMARY KEY,"
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
/* Confirming one message's rows [?2, ?3] of agent ?1: count them, keep
 * their history, delete them (one savepoint: all three or none). The rows
 * are found by the rowid range each time (no index on agent: the range
 * holds little else). receipt_log is schema v7's (store_admin.c). */
static const char SQL_DEL_SAVEPOINT[] = "SAVEPOINT receipts_delete";
static const char SQL_DEL_RELEASE[] = "RELEASE receipts_delete";
static const char SQL_DEL_ROLLBACK[] = "ROLLBACK TO receipts_delete";
static const char SQL_DEL_COUNT[] =
    "INSERT INTO engine_counts(state, n) SELECT state, count(*) FROM receipts"
    " WHERE seq BETWEEN ?2 AND ?3 AND agent = ?1 GROUP BY state"
    " ON CONFLICT(state) DO UPDATE SET n = n + excluded.n";
/* Wall-clock ms, as clock_wall_ms() (SQLite reads the time once per statement). */
static const char SQL_DEL_LOG[] =
    "INSERT INTO receipt_log(notification_id, agent, state, queued_ms, confirmed_ms)"
    " SELECT notification_id, agent, state, at_ms,"
    " CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)"
    " FROM receipts WHERE seq BETWEEN ?2 AND ?3 AND agent = ?1 ORDER BY seq";
static const char SQL_DELETE[] = "DELETE FROM receipts WHERE seq BETWEEN ?2 AND ?3 AND agent = ?1";
static const char SQL_TOP[] = "SELECT max(seq) FROM receipts";
static const char SQL_PENDING[] = "SELECT count(*) FROM receipts";
/* Confirmed (engine_counts) plus still in the outbox: read at scrape time
 * only (the outbox is small unless the broker is out of reach). */
static const char SQL_COUNTS[] =
    "SELECT state, sum(n) FROM (SELECT state, n FROM engine_counts"
    " UNION ALL SELECT state, count(*) AS n FROM receipts GROUP BY state)"
    " GROUP BY state ORDER BY state";
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

static int exec_named(store_t *s, const char *sql, const char *what)
{
    sqlite3_stmt *st = store_stmt(s, sql);
    return st ? store_run(s, st, what) : TDG_EDB;
}

static int run_range(store_t *s, const char *sql, const char *agent, int64_t from, int64_t to)
{
    sqlite3_stmt *st = store_stmt(s, sql);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_text(st, 1, agent, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, from);
    sqlite3_bind_int64(st, 3, to);
    return store_run(s, st, "receipts delete");
}

int store_receipts_delete(store_t *s, const char *agent, int64_t from, int64_t to)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    if ((rc = exec_named(s, SQL_DEL_SAVEPOINT, "receipts savepoint")) < 0) {
        return rc;
    }
    if ((rc = run_range(s, SQL_DEL_COUNT, agent, from, to)) < 0 ||
        (rc = run_range(s, SQL_DEL_LOG, agent, from, to)) < 0 ||
        (rc = run_range(s, SQL_DELETE, agent, from, to)) < 0) {
        /* Nothing half-done: counted and logged only with the deletion. */
        exec_named(s, SQL_DEL_ROLLBACK, "receipts rollback");
        exec_named(s, SQL_DEL_RELEASE, "receipts release");
        return rc;
    }
    return exec_named(s, SQL_DEL_RELEASE, "receipts release");
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

int store_receipts_top(store_t *s, int64_t *seq)
{
    return count_query(s, SQL_TOP, seq);
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
