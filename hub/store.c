/* store.c - SQLite backend of the hub store (see store.h). */
#include "store.h"
#include "store_int.h"
#include "store_engine.h"

#include "error.h"
#include "log.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <time.h>

/* Schema v8: attempts (v1) and decisions (v3, store_policy.c) without
 * AUTOINCREMENT. Each insert into an AUTOINCREMENT table reads and rewrites
 * its row of sqlite_sequence: measured 4-5k instructions per insert, two
 * inserts per notification on the hot path. A plain INTEGER PRIMARY KEY
 * gives max(id) + 1, the same ids as long as no row at the top is deleted,
 * and nothing deletes attempts or decisions (GDPR erasure redacts and
 * renames them in place: store_admin.c, store_policy.c). The tables are
 * rebuilt (SQLite cannot drop AUTOINCREMENT in place), ids kept. */
static const char store_sql_noautoinc[] =
    "CREATE TABLE attempts_v8 ("
    "  id INTEGER PRIMARY KEY,"
    "  notification_id TEXT NOT NULL,"
    "  channel TEXT NOT NULL,"
    "  device_id INTEGER,"
    "  state TEXT NOT NULL,"
    "  status INTEGER NOT NULL DEFAULT 0,"
    "  reason TEXT NOT NULL DEFAULT '',"
    "  provider_id TEXT NOT NULL DEFAULT '',"
    "  started_ms INTEGER NOT NULL,"
    "  finished_ms INTEGER"
    ");"
    "INSERT INTO attempts_v8(id, notification_id, channel, device_id, state, status, reason,"
    "  provider_id, started_ms, finished_ms)"
    " SELECT id, notification_id, channel, device_id, state, status, reason, provider_id,"
    "  started_ms, finished_ms FROM attempts ORDER BY id;"
    "DROP TABLE attempts;"
    "ALTER TABLE attempts_v8 RENAME TO attempts;"
    "CREATE INDEX attempts_by_notification ON attempts(notification_id);"
    "CREATE INDEX attempts_by_time ON attempts(started_ms);"
    "CREATE TABLE decisions_v8 ("
    "  id INTEGER PRIMARY KEY,"
    "  notification_id TEXT NOT NULL,"
    "  user_id TEXT NOT NULL,"
    "  channel TEXT NOT NULL DEFAULT '',"
    "  action TEXT NOT NULL,"
    "  rule TEXT NOT NULL,"
    "  until_ms INTEGER NOT NULL DEFAULT 0,"
    "  at_ms INTEGER NOT NULL"
    ");"
    "INSERT INTO decisions_v8(id, notification_id, user_id, channel, action, rule, until_ms, at_ms)"
    " SELECT id, notification_id, user_id, channel, action, rule, until_ms, at_ms FROM decisions"
    " ORDER BY id;"
    "DROP TABLE decisions;"
    "ALTER TABLE decisions_v8 RENAME TO decisions;"
    "CREATE INDEX decisions_by_notification ON decisions(notification_id);";

/* Schema v9: the work index holds the queue only ('queued'), no longer the
 * rows being delivered ('sending'). Every notification used to pay an index
 * insert when intake stored it taken and a delete when it ended (~7% of the
 * loop's CPU per notification at full load, hub-fanout); nothing hot reads
 * 'sending' rows by state. What did: the recovery at start (store_recover,
 * now a scan, as its attempts half always was) and the queue-depth counts
 * (now the fanout's count of deliveries in memory: observe.c, admin). */
static const char store_sql_work_queued[] =
    "DROP INDEX notifications_work;"
    "CREATE INDEX notifications_work ON notifications(state, priority DESC, received_ms)"
    "  WHERE state = 'queued';";

/* Schema v10: two indexes fewer for every notification to maintain.
 * - attempts_by_time goes: each attempt paid an index insert (~1.9k
 *   instructions, callgrind) for one admin query, per-channel stats over a
 *   window, which now finds the window's first attempt by a binary search
 *   over the ids (store_admin.c: ids grow with started_ms).
 * - notifications_scheduled (v3, on state WHERE state = 'scheduled', for
 *   a count) joins the work index: one partial index on both states. Every
 *   state change evaluated each partial index's WHERE on the old and new
 *   row (~1.9k per update, callgrind); "state = 'queued'" still implies the
 *   merged WHERE, so the take and both counts search it by state
 *   (test_store_hot checks the plans). */
static const char store_sql_fewer_indexes[] =
    "DROP INDEX IF EXISTS attempts_by_time;"
    "DROP INDEX IF EXISTS notifications_scheduled;"
    "DROP INDEX IF EXISTS notifications_work;"
    "CREATE INDEX notifications_work ON notifications(state, priority DESC, received_ms)"
    "  WHERE state = 'queued' OR state = 'scheduled';";

/* Schema v11: no AFTER INSERT trigger on notifications. It wrote the
 * receipt of a notification stored already expired; store_add_notifications
 * (the only writer of new notifications) now writes that row itself. A row
 * trigger made every insert run a trigger program, and made SQLite copy the
 * rows of a multi-row INSERT into a temporary table first: with it, 16 rows
 * in one statement cost as much per row as 16 statements (micro-benchmark
 * on this schema: 18.6k instructions per row either way; 11.5k for 16 rows
 * per statement without it, 16.3k for one). */
static const char store_sql_no_insert_trigger[] = "DROP TRIGGER IF EXISTS receipts_on_insert;";

/* Later schema versions live next to the queries that use them, one
 * domain per file (store_int.h). The numbers are fixed here, in order. */
static const struct db_migration migrations[] = {
    {1, "CREATE TABLE notifications ("
        "  id TEXT PRIMARY KEY,"
        "  agent TEXT NOT NULL,"
        "  recipient TEXT NOT NULL,"
        "  category TEXT,"
        "  priority INTEGER NOT NULL,"
        "  received_ms INTEGER NOT NULL,"
        "  expires_ms INTEGER NOT NULL DEFAULT 0,"
        "  body TEXT NOT NULL,"
        "  state TEXT NOT NULL,"
        "  reason TEXT NOT NULL DEFAULT '',"
        "  attempts INTEGER NOT NULL DEFAULT 0,"
        "  updated_ms INTEGER NOT NULL"
        ");"
        "CREATE INDEX notifications_work ON notifications(state, priority DESC, received_ms)"
        "  WHERE state IN ('queued', 'sending');"
        "CREATE TABLE attempts ("
        "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
        "  notification_id TEXT NOT NULL,"
        "  channel TEXT NOT NULL,"
        "  device_id INTEGER,"
        "  state TEXT NOT NULL,"
        "  status INTEGER NOT NULL DEFAULT 0,"
        "  reason TEXT NOT NULL DEFAULT '',"
        "  provider_id TEXT NOT NULL DEFAULT '',"
        "  started_ms INTEGER NOT NULL,"
        "  finished_ms INTEGER"
        ");"
        "CREATE INDEX attempts_by_notification ON attempts(notification_id);"
        "CREATE TABLE users ("
        "  id TEXT PRIMARY KEY,"
        "  tz TEXT NOT NULL DEFAULT 'UTC',"
        "  created_ms INTEGER NOT NULL"
        ");"
        "CREATE TABLE devices ("
        "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
        "  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
        "  platform TEXT NOT NULL,"
        "  token TEXT NOT NULL,"
        "  app TEXT NOT NULL DEFAULT '',"
        "  environment TEXT NOT NULL DEFAULT 'production',"
        "  state TEXT NOT NULL DEFAULT 'active',"
        "  state_reason TEXT NOT NULL DEFAULT '',"
        "  state_ms INTEGER,"
        "  registered_ms INTEGER NOT NULL,"
        "  UNIQUE(platform, token)"
        ");"
        "CREATE INDEX devices_by_user ON devices(user_id);"},
    {2, store_sql_directory},
    {3, store_sql_policy},
    {4, store_sql_sched},
    {5, store_sql_engine},
    {6, store_sql_channels},
    {7, store_sql_admin},
    {8, store_sql_noautoinc},
    {9, store_sql_work_queued},
    {10, store_sql_fewer_indexes},
    {11, store_sql_no_insert_trigger},
    {12, store_sql_receipts_v12},
};

enum {
    Q_TAKE,
    Q_SET_STATE,
    Q_SET_STATE_ROWID,
    Q_ATT_END,
    Q_COUNT_STATE,
    Q_N
};

_Static_assert(Q_N <= sizeof(((struct store *)0)->q) / sizeof(sqlite3_stmt *), "store.q too small");

static const char *const q_sql[Q_N] = {
    /* "state = 'queued'" is one of the partial index's OR terms (schema
     * v10), which SQLite's planner takes as implying its WHERE; it then
     * seeks the index by state (test_store_hot checks the plan). */
    /* Take and mark in one statement: the rows are found by the partial
     * index, updated by rowid, and returned (RETURNING, SQLite >= 3.35) -
     * no second lookup by id per row. RETURNING does not keep the
     * subquery's order: store_take_queued sorts what it got. */
    [Q_TAKE] = "UPDATE notifications SET state = 'sending', attempts = attempts + 1,"
               " updated_ms = ?2 WHERE rowid IN (SELECT rowid FROM notifications"
               " WHERE state = 'queued'"
               " ORDER BY priority DESC, received_ms LIMIT ?1)"
               " RETURNING id, body, expires_ms, priority, received_ms, rowid",
    /* OR IGNORE: with the default ABORT, a NOT NULL column updated plus
     * the receipts trigger (a second write) made SQLite open a statement
     * journal for every state change, in case the statement failed half
     * way: ~3k instructions per notification (callgrind, hub-cost). The
     * values bound are never NULL and no other constraint covers these
     * columns, so nothing is ever ignored; the trigger's insert inherits
     * OR IGNORE (its columns come from the NOT NULL row, its key is new). */
    [Q_SET_STATE] = "UPDATE OR IGNORE notifications SET state = ?2, reason = ?3, updated_ms = ?4"
                    " WHERE id = ?1",
    /* The same row found by its rowid (a hint: see rowid_hint), the id
     * checked: a wrong hint changes nothing and the caller falls back. */
    [Q_SET_STATE_ROWID] =
        "UPDATE OR IGNORE notifications SET state = ?2, reason = ?3, updated_ms = ?4"
        " WHERE rowid = ?5 AND id = ?1",
    [Q_ATT_END] = "UPDATE attempts SET state = ?2, status = ?3, reason = ?4, provider_id = ?5,"
                  " finished_ms = ?6 WHERE id = ?1",
    [Q_COUNT_STATE] = "SELECT count(*) FROM notifications WHERE state = ?",
};

/* Attempts are buffered (store_rows.c) and get their ids from the store:
 * the caller needs the id now, before the row is written. One past the
 * largest at open; a rolled-back transaction leaves a gap, never a reuse. */
static const struct store_rows_def att_rows_def = {
    .head = "INSERT OR IGNORE INTO attempts(id, notification_id, channel, device_id, state,"
            " started_ms) VALUES ",
    .tuple = "(?, ?, ?, ?, 'sending', ?)",
    .ncols = 5,
    .text_mask = 1u << 1 | 1u << 2,
    .what = "attempt begin",
};

/* --- rowid hints -----------------------------------------------------------
 *
 * The fanout names a notification by its id when it changes its state; the
 * UPDATE then looks the id up in the primary key's index (text compares
 * down a b-tree) before it finds the row by rowid. The rowid is known when
 * the row is inserted or taken, so it is kept here, in a direct-mapped
 * table keyed by a hash of the id (a collision overwrites: it is a hint).
 * store_set_state tries the hinted rowid with the id checked in the same
 * WHERE, so a stale or wrong hint (a rolled-back insert whose rowid was
 * reused, a collision) changes no row, and it falls back to the id. */
#define HINT_SLOTS 4096u /* about fanout.max_jobs in flight; 64 KiB */

struct rowid_hint {
    uint64_t key; /* hash of the id; 0 = empty */
    int64_t rowid;
};

static uint64_t hint_key(const char *id)
{
    uint64_t h = 14695981039346656037u; /* FNV-1a 64 */
    for (const unsigned char *p = (const unsigned char *)id; *p; p++) {
        h = (h ^ *p) * 1099511628211u;
    }
    return h ? h : 1;
}

static void hint_put(store_t *s, const char *id, int64_t rowid)
{
    if (s->hints) {
        uint64_t k = hint_key(id);
        struct rowid_hint *h = &s->hints[k % HINT_SLOTS];
        h->key = k;
        h->rowid = rowid;
    }
}

/* The hinted rowid of id, or 0. */
static int64_t hint_get(store_t *s, const char *id)
{
    if (!s->hints) {
        return 0;
    }
    uint64_t k = hint_key(id);
    const struct rowid_hint *h = &s->hints[k % HINT_SLOTS];
    return h->key == k ? h->rowid : 0;
}

int store_fail(store_t *s, int rc, const char *what)
{
    LOG_ERROR("store", "%s: %s", what, sqlite3_errmsg(s->db));
    int e = db_err(rc);
    return e ? e : TDG_EDB;
}

int store_tx(store_t *s)
{
    if (s->in_tx) {
        return 0;
    }
    int rc = db_begin(s->db);
    if (rc == 0) {
        s->in_tx = true;
    }
    return rc;
}

int store_run(store_t *s, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        return store_fail(s, rc, what);
    }
    return 0;
}

void store_bind_text(sqlite3_stmt *st, int i, const char *v)
{
    if (v) {
        sqlite3_bind_text(st, i, v, -1, SQLITE_TRANSIENT);
    } else {
        sqlite3_bind_null(st, i);
    }
}

sqlite3_stmt *store_stmt(store_t *s, const char *sql)
{
    uintptr_t h = (uintptr_t)sql;
    h ^= h >> 17;
    h *= (uintptr_t)0x9E3779B1u;
    for (size_t i = 0; i < STORE_STMT_SLOTS; i++) {
        struct store_stmt_slot *slot = &s->stmts[(h + i) % STORE_STMT_SLOTS];
        if (slot->sql == sql) {
            if (slot->flush && (s->dec_rows.n > 0 || s->att_rows.n > 0) &&
                store_pending_flush(s) < 0) {
                return NULL;
            }
            if (slot->rollback) {
                store_rmem_undo(s); /* what it undoes is not known here */
            }
            return slot->st;
        }
        if (!slot->sql) {
            if (db_prepare(s->db, sql, &slot->st) < 0) {
                return NULL;
            }
            slot->sql = sql;
            /* Conservative: a column named like the table (notifications.
             * attempts) only costs a flush that was not needed. */
            slot->flush = strstr(sql, "attempts") || strstr(sql, "decisions") ||
                          strstr(sql, "SAVEPOINT") || strstr(sql, "ROLLBACK") ||
                          strstr(sql, "RELEASE");
            slot->rollback = strstr(sql, "ROLLBACK") != NULL;
            if (slot->rollback) {
                store_rmem_undo(s);
            }
            if (slot->flush && store_pending_flush(s) < 0) {
                return NULL;
            }
            return slot->st;
        }
    }
    LOG_ERROR("store", "more than %d statements", STORE_STMT_SLOTS);
    return NULL;
}

/* --- WAL checkpoints on a worker thread ------------------------------------
 *
 * SQLite's automatic checkpoint runs inside the COMMIT that crosses 1000 WAL
 * pages (copy + fdatasync on the loop: measured as the hub's largest single
 * stall under load). db_ckpt_start (platform/db.h, shared with the agent)
 * moves it to a worker with its own connection running PASSIVE checkpoints,
 * which also starts the WAL over once it holds CKPT_RESTART_PAGES (the loop
 * waits for that at one commit; it checkpoints itself only past 4 x, the
 * worker stuck). */
#define CKPT_PAGES 1000          /* wake the worker every this many new pages */
#define CKPT_RESTART_PAGES 16384 /* 64 MiB of 4 KiB pages: the worker rewinds the WAL */

int store_open(const char *path, enum db_sync sync, store_t **out, char *err, size_t errlen)
{
    store_t *s = calloc(1, sizeof(*s));
    if (!s) {
        return -ENOMEM;
    }
    int rc = db_open(path, sync, migrations, sizeof(migrations) / sizeof(migrations[0]), &s->db,
                     err, errlen);
    if (rc < 0) {
        free(s);
        return rc;
    }
    for (int i = 0; i < Q_N; i++) {
        if ((rc = db_prepare(s->db, q_sql[i], &s->q[i])) < 0) {
            snprintf(err, errlen, "%s: cannot prepare statements", path);
            store_close(s);
            return rc;
        }
    }
    s->dec_rows.def = &store_dec_rows_def;
    s->att_rows.def = &att_rows_def;
    sqlite3_stmt *max_id = NULL;
    if ((rc = db_prepare(s->db, "SELECT coalesce(max(id), 0) + 1 FROM attempts", &max_id)) < 0 ||
        sqlite3_step(max_id) != SQLITE_ROW) {
        sqlite3_finalize(max_id);
        snprintf(err, errlen, "%s: cannot read the attempts' ids", path);
        store_close(s);
        return rc < 0 ? rc : TDG_EDB;
    }
    s->next_attempt_id = sqlite3_column_int64(max_id, 0);
    sqlite3_finalize(max_id);
    s->hints = calloc(HINT_SLOTS, sizeof(*s->hints)); /* NULL: no hints, only slower */
    if (store_dir_open(s) < 0) {
        LOG_WARN("store", "no cache of users' endpoints: out of memory");
    }
    /* The worker of platform/db.c (the agent's too); NULL: SQLite's own
     * checkpoints in the commits, slower, never wrong (logged). */
    s->ckpt = db_ckpt_start(s->db, path, CKPT_PAGES, CKPT_RESTART_PAGES);
    *out = s;
    return 0;
}

void store_close(store_t *s)
{
    if (!s) {
        return;
    }
    store_commit(s);
    store_rows_close(&s->dec_rows);
    store_rows_close(&s->att_rows);
    store_dir_close(s);
    db_ckpt_stop(s->ckpt);
    s->ckpt = NULL;
    for (int i = 0; i < Q_N; i++) {
        sqlite3_finalize(s->q[i]);
    }
    for (size_t i = 0; i < STORE_STMT_SLOTS; i++) {
        sqlite3_finalize(s->stmts[i].st);
    }
    db_close(s->db);
    free(s->hints);
    store_rmem_free(s);
    free(s);
}

int store_commit(store_t *s)
{
    if (!s->in_tx) {
        return 0;
    }
    s->in_tx = false;
    int rc = store_pending_flush(s);
    s->pend_err = 0;
    if (rc == 0) {
        rc = db_commit(s->db);
    }
    if (rc < 0) {
        db_rollback(s->db);
    }
    /* Only now may receipts kept in memory be published. */
    store_rmem_committed(s, rc == 0);
    return rc;
}

/* --- inserting notifications ----------------------------------------------
 *
 * One INSERT per notification cost ~16k instructions on the loop's thread
 * (callgrind, hub-cost), much of it the statement's fixed cost (starting
 * the VDBE program, opening the table's and both indexes' cursors) rather
 * than the row. A multi-row INSERT pays that once for up to STORE_ADD_MAX
 * rows. INSERT OR IGNORE skips a known id.
 *
 * Which rows were inserted: sqlite3_changes() counts them. All of them
 * (the usual case, no duplicate): each row got the largest rowid so far + 1
 * in VALUES order - SQLite's documented choice for a rowid not given,
 * until the largest possible one has been used - so the last insert rowid
 * gives every row's (kept only as hints, checked where used). Some of them:
 * each row's rowid is looked up by id; the rows inserted are exactly those
 * whose rowid is above the last insert rowid minus the count, the first of
 * their id in the statement (a second row with the same id is ignored as a
 * duplicate). RETURNING would name them directly, but SQLite runs it as a
 * trigger per row into a temporary table: measured, the 16-row statement
 * then cost more per row than single-row INSERTs.
 *
 * Statements for 16, 8, 4, 2 and 1 rows: n rows run as the binary digits
 * of n (13 = 8 + 4 + 1). Parameters: ?1 the agent, ?2 the time; then 8 per
 * row, numbered by position (an unnumbered ? takes the largest number so
 * far + 1), so row i's are 3 + 8i .. 10 + 8i in the order id, recipient,
 * category, priority, expires_ms, body, state, reason. */
#define ADD_HEAD                                                                             \
    "INSERT OR IGNORE INTO notifications(agent, received_ms, id, recipient, category, priority," \
    " expires_ms, body, state, reason, updated_ms) VALUES "
#define ADD_ROW "(?1, ?2, ?, ?, ?, ?, ?, ?, ?, ?, ?2)"
#define ADD_ROW2 ADD_ROW "," ADD_ROW
#define ADD_ROW4 ADD_ROW2 "," ADD_ROW2
#define ADD_ROW8 ADD_ROW4 "," ADD_ROW4
#define ADD_ROW16 ADD_ROW8 "," ADD_ROW8
#define ADD_PARAMS 8 /* per row */

static const char add_sql1[] = ADD_HEAD ADD_ROW;
static const char add_sql2[] = ADD_HEAD ADD_ROW2;
static const char add_sql4[] = ADD_HEAD ADD_ROW4;
static const char add_sql8[] = ADD_HEAD ADD_ROW8;
static const char add_sql16[] = ADD_HEAD ADD_ROW16;
static const char add_sql_rowid[] = "SELECT rowid FROM notifications WHERE id = ?1";
/* The receipt the AFTER INSERT trigger wrote before schema v11 (its
 * RECEIPT_ROW in store_engine.c), for a notification stored expired. */
static const char add_sql_receipt[] =
    "INSERT INTO receipts(notification_id, agent, state, reason, at_ms, received_ms)"
    " VALUES (?1, ?2, 'expired', ?3, ?4, ?4)"; /* received now, as the row (v12's column) */

_Static_assert(STORE_ADD_MAX == 16, "add_sql16 is the largest statement");

static const char *add_sql(size_t rows)
{
    switch (rows) {
    case 16:
        return add_sql16;
    case 8:
        return add_sql8;
    case 4:
        return add_sql4;
    case 2:
        return add_sql2;
    default:
        return add_sql1;
    }
}

static const char expired_reason[] = "ttl passed before the hub received it";

/* Some of rows[0..k) were inserted, `changes` of them, the last with rowid
 * `last` (see above): mark them and keep their hints. */
static int add_rows_which(store_t *s, struct store_new *rows, size_t k, int changes, int64_t last)
{
    sqlite3_stmt *q = store_stmt(s, add_sql_rowid);
    if (!q) {
        return TDG_EDB;
    }
    int found = 0;
    for (size_t i = 0; i < k; i++) {
        sqlite3_bind_text(q, 1, rows[i].n->id, -1, SQLITE_STATIC);
        int step = sqlite3_step(q);
        int64_t rowid = step == SQLITE_ROW ? sqlite3_column_int64(q, 0) : 0;
        sqlite3_reset(q);
        sqlite3_clear_bindings(q);
        if (step != SQLITE_ROW && step != SQLITE_DONE) {
            return store_fail(s, step, "insert notifications: rowid");
        }
        if (step != SQLITE_ROW || rowid <= last - changes || rowid > last) {
            continue; /* stored before this statement */
        }
        bool first = true;
        for (size_t j = 0; j < i && first; j++) {
            first = !rows[j].inserted || strcmp(rows[j].n->id, rows[i].n->id) != 0;
        }
        if (first) {
            rows[i].inserted = true;
            hint_put(s, rows[i].n->id, rowid);
            found++;
        }
    }
    if (found != changes) {
        /* Only if SQLite chose rowids otherwise than documented. */
        LOG_ERROR("store", "insert notifications: %d rows inserted, %d found", changes, found);
    }
    return 0;
}

/* One statement for rows[0..k) (k one of 16, 8, 4, 2, 1). */
static int add_rows(store_t *s, const char *agent, int64_t now_ms, struct store_new *rows,
                    size_t k)
{
    int rc = 0;
    sqlite3_stmt *st = store_stmt(s, add_sql(k));
    bool expired[STORE_ADD_MAX];
    for (size_t i = 0; i < k; i++) {
        rows[i].rc = 0;
        rows[i].inserted = false;
        rows[i].taken = false;
    }
    if (!st) {
        rc = TDG_EDB;
        goto fail;
    }
    sqlite3_bind_text(st, 1, agent, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now_ms);
    for (size_t i = 0; i < k; i++) {
        const struct notification *n = rows[i].n;
        int p = 3 + (int)i * ADD_PARAMS;
        /* The ttl counts from when the agent accepted it: after a long
         * outage it may have passed before the hub ever saw it. Such a
         * notification is still recorded (never silently dropped), as
         * expired. */
        int64_t expires = proto_expires_ms(n, now_ms);
        expired[i] = expires > 0 && expires <= now_ms;
        /* SQLITE_STATIC: everything bound outlives the statement's run
         * (the bindings are cleared before return). */
        sqlite3_bind_text(st, p, n->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, p + 1, n->to, -1, SQLITE_STATIC);
        if (n->category) {
            sqlite3_bind_text(st, p + 2, n->category, -1, SQLITE_STATIC);
        } else {
            sqlite3_bind_null(st, p + 2);
        }
        sqlite3_bind_int(st, p + 3, (int)n->priority);
        sqlite3_bind_int64(st, p + 4, expires);
        sqlite3_bind_text(st, p + 5, rows[i].json, (int)rows[i].len, SQLITE_STATIC);
        if (expired[i]) {
            sqlite3_bind_text(st, p + 6, "expired", 7, SQLITE_STATIC);
            sqlite3_bind_text(st, p + 7, expired_reason, (int)sizeof(expired_reason) - 1,
                              SQLITE_STATIC);
        } else {
            sqlite3_bind_text(st, p + 6, rows[i].take ? "sending" : "queued",
                              rows[i].take ? 7 : 6, SQLITE_STATIC);
            sqlite3_bind_text(st, p + 7, "", 0, SQLITE_STATIC);
        }
    }
    if ((rc = store_run(s, st, "insert notifications")) < 0) {
        goto fail; /* the statement is undone as a whole: none of its rows stored */
    }
    int changes = sqlite3_changes(s->db);
    int64_t last = sqlite3_last_insert_rowid(s->db);
    if (changes == (int)k) {
        for (size_t i = 0; i < k; i++) {
            rows[i].inserted = true;
            hint_put(s, rows[i].n->id, last - (int64_t)(k - 1 - i));
        }
    } else if (changes > 0 && (rc = add_rows_which(s, rows, k, changes, last)) < 0) {
        /* Stored, but which rows cannot be told: none is acked (the agent
         * resends and gets duplicates; the rows stored taken are requeued
         * as 'sending' rows are at the next start). */
        goto fail;
    }
    for (size_t i = 0; i < k; i++) {
        rows[i].taken = rows[i].take && rows[i].inserted && !expired[i];
        if (rows[i].inserted && expired[i]) {
            sqlite3_stmt *r = store_stmt(s, add_sql_receipt);
            if (!r) {
                rc = TDG_EDB;
                goto fail;
            }
            sqlite3_bind_text(r, 1, rows[i].n->id, -1, SQLITE_STATIC);
            sqlite3_bind_text(r, 2, agent, -1, SQLITE_STATIC);
            sqlite3_bind_text(r, 3, expired_reason, (int)sizeof(expired_reason) - 1,
                              SQLITE_STATIC);
            sqlite3_bind_int64(r, 4, now_ms);
            if ((rc = store_run(s, r, "insert notifications: receipt")) < 0) {
                goto fail; /* not acked: see above */
            }
        }
    }
    return 0;
fail:
    for (size_t i = 0; i < k; i++) {
        rows[i].rc = rc;
        rows[i].inserted = false;
    }
    return rc;
}

int store_add_notifications(store_t *s, const char *agent, int64_t now_ms, struct store_new *rows,
                            size_t n)
{
    int rc = store_tx(s);
    if (rc < 0) {
        for (size_t i = 0; i < n; i++) {
            rows[i].rc = rc;
            rows[i].inserted = rows[i].taken = false;
        }
        return rc;
    }
    int first = 0;
    size_t done = 0;
    for (size_t k = STORE_ADD_MAX; k > 0; k /= 2) {
        while (n - done >= k) {
            rc = add_rows(s, agent, now_ms, rows + done, k);
            if (rc < 0 && first == 0) {
                first = rc;
            }
            done += k;
        }
    }
    return first;
}

int store_add_notification(store_t *s, const struct notification *n, const char *agent,
                           const char *json, size_t len, int64_t now_ms, bool *inserted)
{
    struct store_new r = {.n = n, .json = json, .len = len};
    int rc = store_add_notifications(s, agent, now_ms, &r, 1);
    *inserted = r.inserted;
    return rc;
}

int store_add_notification_taken(store_t *s, const struct notification *n, const char *agent,
                                 const char *json, size_t len, int64_t now_ms, bool *inserted,
                                 bool *taken)
{
    struct store_new r = {.n = n, .json = json, .len = len, .take = true};
    int rc = store_add_notifications(s, agent, now_ms, &r, 1);
    *inserted = r.inserted;
    *taken = r.taken;
    return rc;
}

#define TAKE_BATCH 1024u

struct take_row {
    char id[PROTO_ID_MAX + 1];
    char *body;
    size_t len;
    int64_t expires_ms;
    int64_t received_ms;
    int64_t rowid;
    int priority;
};

/* Priority first, then oldest (then arrival): the order of the old SELECT. */
static int take_cmp(const void *pa, const void *pb)
{
    const struct take_row *a = pa, *b = pb;
    if (a->priority != b->priority) {
        return a->priority > b->priority ? -1 : 1;
    }
    if (a->received_ms != b->received_ms) {
        return a->received_ms < b->received_ms ? -1 : 1;
    }
    return a->rowid < b->rowid ? -1 : a->rowid > b->rowid;
}

int store_take_queued(store_t *s, unsigned max, store_notification_cb cb, void *arg)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    /* At most TAKE_BATCH per call: the rows array was once calloc'ed for
     * max (fanout.max_jobs, 20000: 2 MB zeroed on every loop iteration, a
     * quarter of the hub's instructions under load). The next iteration
     * takes the rest. */
    if (max > TAKE_BATCH) {
        max = TAKE_BATCH;
    }
    if (max == 0) {
        return 0;
    }
    struct take_row *rows = malloc(max * sizeof(*rows));
    if (!rows) {
        return -ENOMEM;
    }
    int64_t now = 0;
    {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    }
    /* Every row is marked sending by the statement's first step; all of them
     * are read (a row left unread would stay 'sending' with no job), and the
     * callbacks run after the reset: they write with other statements. */
    sqlite3_stmt *t = s->q[Q_TAKE];
    sqlite3_bind_int(t, 1, (int)max);
    sqlite3_bind_int64(t, 2, now);
    unsigned n = 0;
    int step;
    while ((step = sqlite3_step(t)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(t, 0);
        const char *body = (const char *)sqlite3_column_text(t, 1);
        int blen = sqlite3_column_bytes(t, 1);
        if (!id || !body || n >= max) {
            continue; /* NOT NULL columns; LIMIT max */
        }
        struct take_row *r = &rows[n];
        /* memcpy, not snprintf("%s"): 600 instructions per row saved */
        size_t idlen = (size_t)sqlite3_column_bytes(t, 0);
        if (idlen > PROTO_ID_MAX) {
            idlen = PROTO_ID_MAX; /* cannot be: intake checks the length */
        }
        memcpy(r->id, id, idlen);
        r->id[idlen] = '\0';
        /* After a failed allocation the rest is only listed, to be undone. */
        r->body = rc == 0 ? malloc((size_t)blen + 1) : NULL;
        if (r->body) {
            memcpy(r->body, body, (size_t)blen + 1);
        } else {
            rc = -ENOMEM;
        }
        r->len = (size_t)blen;
        r->expires_ms = sqlite3_column_int64(t, 2);
        r->priority = sqlite3_column_int(t, 3);
        r->received_ms = sqlite3_column_int64(t, 4);
        r->rowid = sqlite3_column_int64(t, 5);
        n++;
    }
    sqlite3_reset(t);
    sqlite3_clear_bindings(t);
    if (step != SQLITE_DONE && rc == 0) {
        rc = store_fail(s, step, "take queued");
    }
    if (rc < 0) {
        /* Nothing handed out: undo the marks of the rows read (the failed
         * statement itself changed nothing, or the iteration's commit is
         * withheld anyway). */
        for (unsigned i = 0; i < n; i++) {
            store_set_state(s, rows[i].id, "queued", "", now);
            free(rows[i].body);
        }
        free(rows);
        return rc;
    }
    qsort(rows, n, sizeof(*rows), take_cmp);
    for (unsigned i = 0; i < n; i++) {
        hint_put(s, rows[i].id, rows[i].rowid);
    }
    for (unsigned i = 0; i < n; i++) {
        cb(arg, rows[i].id, rows[i].body, rows[i].len, rows[i].expires_ms);
        free(rows[i].body);
    }
    free(rows);
    return (int)n;
}

int store_set_state(store_t *s, const char *id, const char *state, const char *reason,
                    int64_t now_ms)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    int64_t rowid = hint_get(s, id);
    for (int by_id = rowid == 0; by_id < 2; by_id++) {
        sqlite3_stmt *st = s->q[by_id ? Q_SET_STATE : Q_SET_STATE_ROWID];
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, state, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, reason ? reason : "", -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, now_ms);
        if (!by_id) {
            sqlite3_bind_int64(st, 5, rowid);
        }
        if ((rc = store_run(s, st, "set state")) < 0 || sqlite3_changes(s->db) > 0) {
            return rc;
        }
    }
    return 0;
}

int store_set_state_receipt(store_t *s, const struct store_rcpt_ctx *c)
{
    /* The trigger's insert reaches the update hook during the UPDATE: the
     * ring takes it with c's content (store_engine.c). */
    store_rmem_capture(s, c);
    int rc = store_set_state(s, c->id, c->state, c->reason, c->at_ms);
    bool took = store_rmem_captured(s);
    store_rmem_capture(s, NULL);
    if (rc < 0 && took) {
        /* The statement failed after its trigger ran (it has no statement
         * journal: SQLite rolled the transaction back, or will at the
         * commit): nothing it wrote may be published. */
        store_rmem_undo(s);
    }
    return rc;
}

int store_attempt_begin(store_t *s, const char *id, const char *channel, int64_t device_id,
                        int64_t now_ms, int64_t *attempt_id)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    const struct store_rows_in row[] = {
        {.i = s->next_attempt_id}, {.s = id}, {.s = channel}, {.i = device_id}, {.i = now_ms},
    };
    if ((rc = store_rows_add(s, &s->att_rows, row)) < 0) {
        return rc;
    }
    *attempt_id = s->next_attempt_id++;
    return 0;
}

int store_attempt_end(store_t *s, int64_t attempt_id, const char *state, int status,
                      const char *reason, const char *provider_id, int64_t now_ms)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    /* Its row may still be in the buffer (a send that ended in the
     * iteration that began it). */
    if (s->att_rows.n > 0 && (rc = store_pending_flush(s)) < 0) {
        return rc;
    }
    sqlite3_stmt *st = s->q[Q_ATT_END];
    sqlite3_bind_int64(st, 1, attempt_id);
    sqlite3_bind_text(st, 2, state, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 3, status);
    sqlite3_bind_text(st, 4, reason ? reason : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, provider_id ? provider_id : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, now_ms);
    return store_run(s, st, "attempt end");
}

/* Users and devices: store_dir.c. */

int store_recover(store_t *s, int64_t now_ms)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    if ((rc = store_pending_flush(s)) < 0) {
        return rc;
    }
    char sql_att[160];
    snprintf(sql_att, sizeof(sql_att),
             "UPDATE attempts SET state = 'interrupted', finished_ms = %lld"
             " WHERE state = 'sending'",
             (long long)now_ms);
    if ((rc = db_exec(s->db, sql_att)) < 0) {
        return rc;
    }
    char sql_n[160];
    snprintf(sql_n, sizeof(sql_n),
             "UPDATE notifications SET state = 'queued', updated_ms = %lld"
             " WHERE state = 'sending'",
             (long long)now_ms);
    if ((rc = db_exec(s->db, sql_n)) < 0) {
        return rc;
    }
    int n = sqlite3_changes(s->db);
    if ((rc = store_commit(s)) < 0) {
        return rc;
    }
    return n;
}

int store_count_state(store_t *s, const char *state, int64_t *out)
{
    sqlite3_stmt *st = s->q[Q_COUNT_STATE];
    sqlite3_bind_text(st, 1, state, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    *out = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_ROW ? 0 : store_fail(s, rc, "count");
}
