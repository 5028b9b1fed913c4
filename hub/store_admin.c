/* store_admin.c - the queries of the admin API that no other domain owns
 * (see store.h, "Admin", and docs/tidingsctl.md). */
#include "store_int.h"

#include "error.h"

#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

/* Schema v7 (store.c's migration list).
 * - admin_audit: every change made through the admin API, e.g. a dead
 *   letter sent again; `tidingsctl status` shows those of a notification.
 * - attempts_by_time: per-channel stats over a window (dropped in v10:
 *   store_admin_channel_stats finds the window by the ids instead).
 * - notifications_dlq: the dead letters (failed, dropped) by time. A
 *   partial index holds only those rows, so the hot path (queued ->
 *   sending -> delivered) pays one WHERE evaluation per update, no insert.
 * - receipt_log: what became of each receipt (store_engine.c's outbox rows
 *   are deleted on the broker's PUBACK, receipts.c): store_receipts_delete
 *   copies the rows of the message with the time of their deletion (=
 *   confirmed by the broker; nothing else deletes receipts) in one INSERT
 *   ... SELECT per message, in the savepoint of the deletion (a per-row
 *   AFTER DELETE trigger cost a trigger program per receipt). Bounded by
 *   age and row count: store_receipts_delete prunes it too (its
 *   SQL_LOG_PRUNE; no trigger, whose program ran for every row inserted).
 *   One row and one index entry per receipt: its cost on the confirm path.
 *   Schema v12 (store_engine.c) replaces the index on the text id with one
 *   on the notification's received_ms, which grows at its end. */
#define STORE_SQL_RECEIPT_LOG                                                                      \
    "CREATE TABLE receipt_log ("                                                                   \
    "  notification_id TEXT NOT NULL,"                                                             \
    "  agent TEXT NOT NULL,"                                                                       \
    "  state TEXT NOT NULL,"                                                                       \
    "  queued_ms INTEGER NOT NULL,"   /* the receipt row's at_ms: the terminal state's time */     \
    "  confirmed_ms INTEGER NOT NULL" /* deleted from the outbox: the broker had it */             \
    ");"                                                                                           \
    "CREATE INDEX receipt_log_by_id ON receipt_log(notification_id);" /* v12: by received_ms */

const char store_sql_admin[] = "CREATE TABLE admin_audit ("
                               "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
                               "  at_ms INTEGER NOT NULL,"
                               "  command TEXT NOT NULL,"
                               "  target TEXT NOT NULL DEFAULT '',"
                               "  detail TEXT NOT NULL DEFAULT '',"
                               "  client TEXT NOT NULL DEFAULT ''"
                               ");"
                               "CREATE INDEX admin_audit_by_target ON admin_audit(target);"
                               "CREATE INDEX attempts_by_time ON attempts(started_ms);"
                               "CREATE INDEX notifications_dlq ON notifications(updated_ms)"
                               "  WHERE state IN ('failed', 'dropped');" STORE_SQL_RECEIPT_LOG;

static const char SQL_SAVEPOINT[] = "SAVEPOINT admin";
static const char SQL_RELEASE[] = "RELEASE admin";
static const char SQL_ROLLBACK_TO[] = "ROLLBACK TO admin";

int store_admin_begin(store_t *s)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, SQL_SAVEPOINT);
    return st ? store_run(s, st, "admin savepoint") : TDG_EDB;
}

int store_admin_end(store_t *s, bool keep)
{
    sqlite3_stmt *st;
    int rc = 0;
    if (!keep) {
        st = store_stmt(s, SQL_ROLLBACK_TO);
        rc = st ? store_run(s, st, "admin rollback") : TDG_EDB;
    }
    st = store_stmt(s, SQL_RELEASE);
    int rc2 = st ? store_run(s, st, "admin release") : TDG_EDB;
    return rc < 0 ? rc : rc2;
}

/* The columns of a notification row, in the order row_from() reads them. */
#define NOTIF_COLS                                                                                 \
    "n.rowid, n.id, n.agent, n.recipient, n.category, n.priority, n.received_ms,"                  \
    " n.updated_ms, n.expires_ms, n.state, n.reason, n.attempts, n.body,"                          \
    " (SELECT group_concat(channel, ',') FROM (SELECT DISTINCT channel FROM attempts a"            \
    "  WHERE a.notification_id = n.id ORDER BY channel))"

static const char *col_text(sqlite3_stmt *st, int i)
{
    const char *v = (const char *)sqlite3_column_text(st, i);
    return v ? v : "";
}

static void row_from(sqlite3_stmt *st, struct store_admin_row *r)
{
    *r = (struct store_admin_row){
        .seq = sqlite3_column_int64(st, 0),
        .id = col_text(st, 1),
        .agent = col_text(st, 2),
        .recipient = col_text(st, 3),
        .category = col_text(st, 4),
        .priority = sqlite3_column_int(st, 5),
        .received_ms = sqlite3_column_int64(st, 6),
        .updated_ms = sqlite3_column_int64(st, 7),
        .expires_ms = sqlite3_column_int64(st, 8),
        .state = col_text(st, 9),
        .reason = col_text(st, 10),
        .attempts = sqlite3_column_int(st, 11),
        .body = col_text(st, 12),
        .channels = col_text(st, 13),
    };
}

/* Step a read statement, handing each row to cb; reset and clear it. The
 * number of rows or a negative error. */
static int each_row(store_t *s, sqlite3_stmt *st, const char *what,
                    void (*fn)(sqlite3_stmt *st, void *cb, void *arg), void *cb, void *arg)
{
    int n = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        fn(st, cb, arg);
        n++;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? n : store_fail(s, rc, what);
}

static void notif_row(sqlite3_stmt *st, void *cb, void *arg)
{
    struct store_admin_row r;
    row_from(st, &r);
    ((store_admin_row_cb)cb)(arg, &r);
}

static const char SQL_NOTIF[] = "SELECT " NOTIF_COLS " FROM notifications n WHERE n.id = ?1";

int store_admin_notification(store_t *s, const char *id, store_admin_row_cb cb, void *arg)
{
    sqlite3_stmt *st = store_stmt(s, SQL_NOTIF);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, id);
    return each_row(s, st, "admin notification", notif_row, (void *)cb, arg);
}

static const char SQL_ATTEMPTS[] =
    "SELECT a.id, a.channel, a.device_id, a.state, a.status, a.reason, a.provider_id,"
    " a.started_ms, coalesce(a.finished_ms, 0), coalesce(d.platform, '')"
    " FROM attempts a LEFT JOIN devices d ON d.id = a.device_id"
    " WHERE a.notification_id = ?1 ORDER BY a.id LIMIT ?2";

static void attempt_row(sqlite3_stmt *st, void *cb, void *arg)
{
    struct store_admin_attempt a = {
        .id = sqlite3_column_int64(st, 0),
        .channel = col_text(st, 1),
        .device_id = sqlite3_column_int64(st, 2),
        .state = col_text(st, 3),
        .status = sqlite3_column_int(st, 4),
        .reason = col_text(st, 5),
        .provider_id = col_text(st, 6),
        .started_ms = sqlite3_column_int64(st, 7),
        .finished_ms = sqlite3_column_int64(st, 8),
        .platform = col_text(st, 9),
    };
    ((store_admin_attempt_cb)cb)(arg, &a);
}

int store_admin_attempts(store_t *s, const char *id, unsigned max, store_admin_attempt_cb cb,
                         void *arg)
{
    sqlite3_stmt *st = store_stmt(s, SQL_ATTEMPTS);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, id);
    sqlite3_bind_int64(st, 2, max);
    return each_row(s, st, "admin attempts", attempt_row, (void *)cb, arg);
}

/* Receipts still in the outbox (a scan of it: no index on the hot path's
 * table; it is small unless a backlog waits for the broker), then those
 * confirmed (receipt_log, by its index on the notification's received_ms,
 * schema v12: store_engine.c; the id picks this notification's among the
 * rows of that millisecond). */
static const char SQL_RECEIPTS_OF[] =
    "SELECT agent, state, at_ms, 0 FROM receipts WHERE notification_id = ?1"
    " UNION ALL SELECT agent, state, queued_ms, confirmed_ms FROM receipt_log"
    " WHERE received_ms = (SELECT received_ms FROM notifications WHERE id = ?1)"
    " AND notification_id = ?1 ORDER BY 3, 4 LIMIT ?2";

static void receipt_row(sqlite3_stmt *st, void *cb, void *arg)
{
    struct store_admin_receipt r = {
        .agent = col_text(st, 0),
        .state = col_text(st, 1),
        .queued_ms = sqlite3_column_int64(st, 2),
        .confirmed_ms = sqlite3_column_int64(st, 3),
    };
    ((store_admin_receipt_cb)cb)(arg, &r);
}

int store_admin_receipts(store_t *s, const char *id, unsigned max, store_admin_receipt_cb cb,
                         void *arg)
{
    sqlite3_stmt *st = store_stmt(s, SQL_RECEIPTS_OF);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, id);
    sqlite3_bind_int64(st, 2, max);
    return each_row(s, st, "admin receipts", receipt_row, (void *)cb, arg);
}

/* Filters are bound as NULL when unused: one statement serves every mix. */
#define LOG_FILTERS                                                                                \
    " AND (?3 IS NULL OR n.recipient = ?3)"                                                        \
    " AND (?4 IS NULL OR n.category = ?4)"                                                         \
    " AND (?5 IS NULL OR n.state = ?5)"                                                            \
    " AND (?6 IS NULL OR EXISTS (SELECT 1 FROM attempts a WHERE a.notification_id = n.id"          \
    "      AND a.channel = ?6))"                                                                   \
    " AND n.received_ms >= ?7 AND n.received_ms <= ?8"

/* Newest first by arrival (rowid order: no index needed). */
static const char SQL_LOG[] = "SELECT " NOTIF_COLS " FROM notifications n"
                              " WHERE n.rowid < ?1" LOG_FILTERS " ORDER BY n.rowid DESC LIMIT ?2";

/* What changed since a cursor, among the newest ?9 notifications, oldest
 * change first: `tidingsctl tail`. */
static const char SQL_CHANGES[] =
    "SELECT " NOTIF_COLS " FROM (SELECT rowid, * FROM notifications ORDER BY rowid DESC LIMIT ?9) n"
    " WHERE (n.updated_ms > ?10 OR (n.updated_ms = ?10 AND n.rowid > ?1))" LOG_FILTERS
    " ORDER BY n.updated_ms, n.rowid LIMIT ?2";

#define STORE_ADMIN_TAIL_WINDOW 10000

int store_admin_log(store_t *s, const struct store_admin_filter *f, store_admin_row_cb cb,
                    void *arg)
{
    bool changes = f->changed_after_ms >= 0;
    sqlite3_stmt *st = store_stmt(s, changes ? SQL_CHANGES : SQL_LOG);
    if (!st) {
        return TDG_EDB;
    }
    char to[160];
    const char *rcpt = NULL;
    if (f->user) {
        snprintf(to, sizeof(to), "user:%s", f->user);
        rcpt = to;
    }
    if (changes) {
        sqlite3_bind_int64(st, 1, f->cursor);
        sqlite3_bind_int64(st, 9, STORE_ADMIN_TAIL_WINDOW);
        sqlite3_bind_int64(st, 10, f->changed_after_ms);
    } else {
        sqlite3_bind_int64(st, 1, f->cursor > 0 ? f->cursor : INT64_MAX);
    }
    sqlite3_bind_int64(st, 2, f->limit);
    store_bind_text(st, 3, rcpt);
    store_bind_text(st, 4, f->category);
    store_bind_text(st, 5, f->state);
    store_bind_text(st, 6, f->channel);
    sqlite3_bind_int64(st, 7, f->since_ms);
    sqlite3_bind_int64(st, 8, f->until_ms > 0 ? f->until_ms : INT64_MAX);
    return each_row(s, st, "admin log", notif_row, (void *)cb, arg);
}

static const char SQL_DLQ[] = "SELECT " NOTIF_COLS " FROM notifications n"
                              " WHERE n.state IN ('failed', 'dropped')"
                              " AND (?2 IS NULL OR n.state = ?2)"
                              " ORDER BY n.updated_ms DESC LIMIT ?1";

int store_admin_dlq(store_t *s, const char *state, unsigned limit, store_admin_row_cb cb, void *arg)
{
    sqlite3_stmt *st = store_stmt(s, SQL_DLQ);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_int64(st, 1, limit);
    store_bind_text(st, 2, state);
    return each_row(s, st, "admin dlq", notif_row, (void *)cb, arg);
}

static const char SQL_REQUEUE[] =
    "UPDATE notifications SET state = 'queued', reason = '', updated_ms = ?2"
    " WHERE id = ?1 AND state IN ('failed', 'dropped') AND recipient <> 'erased'";

int store_admin_requeue(store_t *s, const char *id, int64_t now_ms)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, SQL_REQUEUE);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, id);
    sqlite3_bind_int64(st, 2, now_ms);
    if ((rc = store_run(s, st, "admin requeue")) < 0) {
        return rc;
    }
    return sqlite3_changes(s->db) > 0 ? 0 : TDG_ENOTFOUND;
}

static const char SQL_AUDIT_ADD[] =
    "INSERT INTO admin_audit(at_ms, command, target, detail, client) VALUES (?1, ?2, ?3, ?4, ?5)";

int store_admin_audit(store_t *s, int64_t now_ms, const char *command, const char *target,
                      const char *detail, const char *client)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, SQL_AUDIT_ADD);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_int64(st, 1, now_ms);
    store_bind_text(st, 2, command);
    store_bind_text(st, 3, target ? target : "");
    store_bind_text(st, 4, detail ? detail : "");
    store_bind_text(st, 5, client ? client : "");
    return store_run(s, st, "admin audit");
}

static const char SQL_AUDIT_OF[] = "SELECT at_ms, command, detail, client FROM admin_audit"
                                   " WHERE target = ?1 ORDER BY id LIMIT ?2";

static void audit_row(sqlite3_stmt *st, void *cb, void *arg)
{
    struct store_admin_audit a = {
        .at_ms = sqlite3_column_int64(st, 0),
        .command = col_text(st, 1),
        .detail = col_text(st, 2),
        .client = col_text(st, 3),
    };
    ((store_admin_audit_cb)cb)(arg, &a);
}

int store_admin_audit_of(store_t *s, const char *target, unsigned max, store_admin_audit_cb cb,
                         void *arg)
{
    sqlite3_stmt *st = store_stmt(s, SQL_AUDIT_OF);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, target);
    sqlite3_bind_int64(st, 2, max);
    return each_row(s, st, "admin audit of", audit_row, (void *)cb, arg);
}

/* Counts that use an index: the work queue (partial index
 * notifications_work: 'queued' only since v9; the caller has 'sending' from
 * the fanout) and the dead letters (notifications_dlq). */
static const char SQL_COUNT_WORK[] = "SELECT 'queued', count(*) FROM notifications"
                                     " WHERE state = 'queued'";
static const char SQL_COUNT_DLQ[] = "SELECT state, count(*) FROM notifications"
                                    " WHERE state IN ('failed', 'dropped') GROUP BY state";
/* The attempts from id ?2 on (a range of the table's own b-tree) that
 * started at or after ?1. */
static const char SQL_CHANNEL_STATS[] =
    "SELECT channel, state, count(*), coalesce(avg(CASE WHEN finished_ms IS NOT NULL"
    " THEN finished_ms - started_ms END), 0) FROM attempts WHERE id >= ?2 AND started_ms >= ?1"
    " GROUP BY channel, state ORDER BY channel, state";
static const char SQL_ATTEMPT_AT[] =
    "SELECT id, started_ms FROM attempts WHERE id >= ?1 ORDER BY id LIMIT 1";
static const char SQL_ATTEMPT_MAX[] = "SELECT coalesce(max(id), 0) FROM attempts";

/* A window may start this long before since_ms in the ids' order: attempts
 * written after the wall clock stepped back by up to this much are still
 * found (started_ms >= since_ms still filters them). */
#define STATS_CLOCK_SLACK_MS 300000

/* The first attempt id whose started_ms >= since_ms (max + 1 when none),
 * by a binary search over the ids: ids are handed out in the order attempts
 * start (store.c), so started_ms grows with them, save for wall-clock steps
 * back (STATS_CLOCK_SLACK_MS). About 2 log2(rows) point reads instead of an
 * index every attempt would pay for. */
static int first_attempt_since(store_t *s, int64_t since_ms, int64_t *first)
{
    sqlite3_stmt *mx = store_stmt(s, SQL_ATTEMPT_MAX), *at = store_stmt(s, SQL_ATTEMPT_AT);
    if (!mx || !at) {
        return TDG_EDB;
    }
    int rc = sqlite3_step(mx);
    int64_t hi = rc == SQLITE_ROW ? sqlite3_column_int64(mx, 0) + 1 : 0;
    sqlite3_reset(mx);
    if (rc != SQLITE_ROW) {
        return store_fail(s, rc, "attempts max");
    }
    int64_t lo = 0, bound = since_ms - STATS_CLOCK_SLACK_MS;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        sqlite3_bind_int64(at, 1, mid);
        rc = sqlite3_step(at);
        bool after = true; /* no row at or past mid: as if it were after */
        int64_t id = 0;
        if (rc == SQLITE_ROW) {
            id = sqlite3_column_int64(at, 0);
            after = sqlite3_column_int64(at, 1) >= bound;
        }
        sqlite3_reset(at);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
            return store_fail(s, rc, "attempts search");
        }
        if (after) {
            hi = mid; /* ids in [mid, id) do not exist */
        } else {
            lo = id + 1;
        }
    }
    *first = lo;
    return 0;
}

static void count_row(sqlite3_stmt *st, void *cb, void *arg)
{
    ((store_admin_count_cb)cb)(arg, col_text(st, 0), sqlite3_column_int64(st, 1));
}

int store_admin_queue_counts(store_t *s, store_admin_count_cb cb, void *arg)
{
    sqlite3_stmt *st = store_stmt(s, SQL_COUNT_WORK);
    if (!st) {
        return TDG_EDB;
    }
    int rc = each_row(s, st, "admin counts", count_row, (void *)cb, arg);
    if (rc < 0) {
        return rc;
    }
    int64_t scheduled = 0;
    if ((rc = store_count_scheduled(s, &scheduled)) < 0) {
        return rc;
    }
    cb(arg, "scheduled", scheduled);
    if (!(st = store_stmt(s, SQL_COUNT_DLQ))) {
        return TDG_EDB;
    }
    return each_row(s, st, "admin counts", count_row, (void *)cb, arg);
}

static void channel_row(sqlite3_stmt *st, void *cb, void *arg)
{
    ((store_admin_channel_cb)cb)(arg, col_text(st, 0), col_text(st, 1), sqlite3_column_int64(st, 2),
                                 sqlite3_column_double(st, 3));
}

int store_admin_channel_stats(store_t *s, int64_t since_ms, store_admin_channel_cb cb, void *arg)
{
    int64_t first = 0;
    int rc = first_attempt_since(s, since_ms, &first);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, SQL_CHANNEL_STATS);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_int64(st, 1, since_ms);
    sqlite3_bind_int64(st, 2, first);
    return each_row(s, st, "admin channel stats", channel_row, (void *)cb, arg);
}

/* GDPR erasure of the notifications addressed to a user: what is still
 * pending ends 'dropped' (nothing vanishes), then every body is replaced
 * and the recipient forgotten. No index on recipient (it would cost every
 * insert on the hot path): a full scan, for a rare operation. */
static const char SQL_ERASE_PENDING[] =
    "UPDATE notifications SET state = 'dropped', reason = 'recipient removed', updated_ms = ?2"
    " WHERE recipient = ?1 AND state NOT IN ('delivered', 'failed', 'suppressed', 'expired',"
    " 'dropped')";
/* A failed notification's reason is the provider's text (an SMS API's error
 * may quote the number): redacted, in the receipts not yet published too.
 * Other states' reasons are policy rules ("category_opt_out:marketing"). */
static const char SQL_ERASE_RECEIPTS[] =
    "UPDATE receipts SET reason = 'redacted' WHERE state = 'failed' AND reason <> ''"
    " AND notification_id IN (SELECT id FROM notifications WHERE recipient = ?1)";
static const char SQL_ERASE_BODIES[] =
    "UPDATE notifications SET body = '{\"redacted\":true}', recipient = 'erased',"
    " reason = CASE WHEN state = 'failed' AND reason <> '' THEN 'redacted' ELSE reason END,"
    " updated_ms = ?2 WHERE recipient = ?1";
/* The audit trail may name them too ("allow user:<id> ..."). */
static const char SQL_ERASE_AUDIT[] =
    "UPDATE admin_audit SET detail = replace(detail, ?1, 'user:(removed)')"
    " WHERE instr(detail, ?1) > 0";

int store_admin_erase_notifications(store_t *s, const char *user_id, int64_t now_ms,
                                    int64_t *erased)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    char to[160];
    snprintf(to, sizeof(to), "user:%s", user_id);
    /* The bodies last: they forget the recipient the others select by, and
     * sqlite3_changes() below counts them. */
    const char *const sqls[] = {SQL_ERASE_PENDING, SQL_ERASE_AUDIT, SQL_ERASE_RECEIPTS,
                                SQL_ERASE_BODIES};
    for (size_t i = 0; i < sizeof(sqls) / sizeof(sqls[0]); i++) {
        sqlite3_stmt *st = store_stmt(s, sqls[i]);
        if (!st) {
            return TDG_EDB;
        }
        store_bind_text(st, 1, to);
        if (sqlite3_bind_parameter_count(st) >= 2) {
            sqlite3_bind_int64(st, 2, now_ms);
        }
        if ((rc = store_run(s, st, "admin erase")) < 0) {
            return rc;
        }
    }
    if (erased) {
        *erased = sqlite3_changes(s->db);
    }
    return 0;
}

/* The provider's answers about the user's endpoints and notifications
 * (attempts.reason: an SMS API's error text may quote the number). Run
 * before the devices and the recipient are gone: they select the rows.
 * A full scan of attempts, for a rare operation. */
static const char SQL_ERASE_ATTEMPTS[] =
    "UPDATE attempts SET reason = 'redacted' WHERE reason <> ''"
    " AND (device_id IN (SELECT id FROM devices WHERE user_id = ?1)"
    "      OR notification_id IN (SELECT id FROM notifications WHERE recipient = ?2))";

int store_admin_forget_user(store_t *s, const char *user_id, int64_t now_ms, int64_t *erased)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    char to[STORE_USER_ID_MAX + 8];
    snprintf(to, sizeof(to), "user:%s", user_id);
    sqlite3_stmt *st = store_stmt(s, SQL_ERASE_ATTEMPTS);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, user_id);
    store_bind_text(st, 2, to);
    if ((rc = store_run(s, st, "admin erase attempts")) < 0 ||
        (rc = store_policy_forget_user(s, user_id)) < 0 ||
        (rc = store_timer_forget_user(s, user_id)) < 0 ||
        (rc = store_user_remove(s, user_id)) < 0) {
        return rc;
    }
    return store_admin_erase_notifications(s, user_id, now_ms, erased);
}
