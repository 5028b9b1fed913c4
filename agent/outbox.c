/* outbox.c - SQLite outbox (see outbox.h). */
#include "outbox.h"

#include "error.h"
#include "log.h"
#include "proto.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct db_migration migrations[] = {
    {1, "CREATE TABLE outbox ("
        "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        "  id TEXT NOT NULL UNIQUE,"
        "  priority INTEGER NOT NULL,"
        "  created_ms INTEGER NOT NULL,"
        "  expires_ms INTEGER NOT NULL DEFAULT 0,"
        "  inflight INTEGER NOT NULL DEFAULT 0,"
        "  body BLOB NOT NULL"
        ");"
        "CREATE INDEX outbox_send ON outbox(inflight, priority DESC, seq);"},
    /* The local delivery queue (agent/localq.c, docs/delivery.md): in this
     * file so its rows commit in the same transaction as the outbox's. One
     * row per notification and backend; seq orders rows and tells
     * committed rows from those of the open transaction. */
    {2, "CREATE TABLE local_queue ("
        "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        "  id TEXT NOT NULL,"
        "  backend TEXT NOT NULL,"
        "  source TEXT NOT NULL,"
        "  priority INTEGER NOT NULL,"
        "  accepted_ms INTEGER NOT NULL,"
        "  expires_ms INTEGER NOT NULL DEFAULT 0,"
        "  state TEXT NOT NULL,"
        "  due_ms INTEGER NOT NULL,"
        "  attempts INTEGER NOT NULL DEFAULT 0,"
        "  rule TEXT,"
        "  reason TEXT,"
        "  ref TEXT,"
        "  receipt TEXT,"
        "  updated_ms INTEGER NOT NULL,"
        "  body BLOB,"
        "  UNIQUE (id, backend)"
        ");"
        "CREATE INDEX local_due ON local_queue(due_ms) WHERE state = 'pending';"
        "CREATE INDEX local_done ON local_queue(updated_ms) WHERE state <> 'pending';"
        "CREATE INDEX local_state ON local_queue(state, rule);"},
    /* outbox.full_policy = drop_oldest_lowest: every row deleted to make
     * room is recorded here (DESIGN "Nothing vanishes": dropped, with its
     * reason), the newest OUTBOX_DROPPED_KEEP kept. */
    {3, "CREATE TABLE dropped ("
        "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        "  id TEXT NOT NULL,"
        "  priority INTEGER NOT NULL,"
        "  reason TEXT NOT NULL,"
        "  created_ms INTEGER NOT NULL,"
        "  dropped_ms INTEGER NOT NULL"
        ");"},
    /* The hub's receipts (agent/receipts.c, docs/agent.md "Receipts"): the
     * last outcome per notification id, about the newest receipts.max_rows
     * kept for receipts.retention; written in the outbox's transaction.
     * And dropped records become findable by id (status --id). */
    {4, "CREATE TABLE receipts ("
        "  seq INTEGER PRIMARY KEY,"
        "  id TEXT NOT NULL UNIQUE,"
        "  state TEXT NOT NULL,"
        "  reason TEXT NOT NULL,"
        "  at_ms INTEGER NOT NULL,"
        "  received_ms INTEGER NOT NULL,"
        "  channels TEXT NOT NULL"
        ");"
        "CREATE INDEX receipts_received ON receipts(received_ms);"
        "CREATE INDEX dropped_id ON dropped(id);"},
};

enum {
    ST_INSERT,
    ST_TAKE,
    ST_MARK,
    ST_UNTAKE,
    ST_UNTAKE_ALL,
    ST_DELETE,
    ST_COUNT,
    ST_VICTIM,
    ST_DROP_ROW,
    ST_DROP_REC,
    ST_DROP_PRUNE,
    ST_DROP_COUNT,
    ST_OLDEST,
    ST_FIND,
    ST_FIND_DROPPED,
    ST_N
};

static const char *const sql[ST_N] = {
    [ST_INSERT] = "INSERT OR IGNORE INTO outbox(id, priority, created_ms, expires_ms, body) "
                  "VALUES (?, ?, ?, ?, ?)",
    /* priority >= ?2 lets a rate-limited drain still take critical rows */
    [ST_TAKE] = "SELECT seq, id, body FROM outbox WHERE inflight = 0 AND priority >= ?2 "
                "ORDER BY priority DESC, seq LIMIT ?1",
    [ST_MARK] = "UPDATE outbox SET inflight = 1 WHERE seq = ?",
    [ST_UNTAKE] = "UPDATE outbox SET inflight = 0 WHERE seq = ?",
    [ST_UNTAKE_ALL] = "UPDATE outbox SET inflight = 0 WHERE inflight = 1",
    [ST_DELETE] = "DELETE FROM outbox WHERE id = ? RETURNING length(body), priority",
    /* Once, at open: one pass over the table (no GROUP BY, so no sorter);
     * from then on the counts are kept in memory. */
    [ST_COUNT] = "SELECT count(*), coalesce(sum(length(body)), 0), coalesce(sum(inflight), 0), "
                 "coalesce(sum(priority = 0), 0), coalesce(sum(priority = 1), 0), "
                 "coalesce(sum(priority = 2), 0), coalesce(sum(priority = 3), 0) FROM outbox",
    /* The oldest row of one priority that is not in flight: over the send
     * index (inflight, priority DESC, seq), no sort. */
    [ST_VICTIM] = "SELECT seq, id, length(body), created_ms FROM outbox "
                  "WHERE inflight = 0 AND priority = ? ORDER BY seq LIMIT 1",
    [ST_DROP_ROW] = "DELETE FROM outbox WHERE seq = ?",
    [ST_DROP_REC] = "INSERT INTO dropped(id, priority, reason, created_ms, dropped_ms) "
                    "VALUES (?, ?, 'outbox over budget', ?, ?)",
    [ST_DROP_PRUNE] = "DELETE FROM dropped WHERE seq <= ?",
    [ST_DROP_COUNT] = "SELECT count(*) FROM dropped",
    /* seq grows with every insert: the smallest is the oldest row (rowid
     * order: one descent to the leftmost leaf). */
    [ST_OLDEST] = "SELECT created_ms FROM outbox ORDER BY seq LIMIT 1",
    [ST_FIND] = "SELECT inflight, created_ms FROM outbox WHERE id = ?",
    [ST_FIND_DROPPED] = "SELECT reason, dropped_ms FROM dropped WHERE id = ? "
                        "ORDER BY seq DESC LIMIT 1",
};

#define NPRIO 4 /* PROTO_PRIO_LOW .. PROTO_PRIO_CRITICAL */

static unsigned prio_index(int p)
{
    return p >= 0 && p < NPRIO ? (unsigned)p : NPRIO; /* NPRIO: not counted */
}

struct outbox {
    sqlite3 *db;
    sqlite3_stmt *st[ST_N];
    struct outbox_limits lim;
    bool in_tx;
    unsigned pending;
    uint64_t rows, bytes, inflight;
    uint64_t pending_rows, pending_bytes; /* added in the open transaction */
    /* committed rows dropped in the open transaction, and all its drops */
    uint64_t pend_del_rows, pend_del_bytes, pend_dropped;
    /* rows per priority: committed, added and deleted in the open transaction
     * (index NPRIO collects out-of-range priorities, never reported) */
    uint64_t rows_p[NPRIO + 1], pend_rows_p[NPRIO + 1], pend_del_p[NPRIO + 1];
    int64_t tx_first_seq; /* first row inserted in the open transaction; 0: none */
    uint64_t accepted, duplicates, rejected_full;
    uint64_t dropped, dropped_rows;
    bool full_logged;
    outbox_commit_cb on_commit;
    void *on_commit_arg;
    db_ckpt_t *ckpt; /* checkpoints on a worker thread; NULL: SQLite's own */
};

static int step_done(outbox_t *ob, sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        LOG_ERROR("outbox", "%s", sqlite3_errmsg(ob->db));
        return db_err(rc) ? db_err(rc) : TDG_EDB;
    }
    return 0;
}

int outbox_open(const char *path, enum db_sync sync, const struct outbox_limits *lim,
                outbox_t **out, char *err, size_t errlen)
{
    outbox_t *ob = calloc(1, sizeof(*ob));
    if (!ob) {
        return -ENOMEM;
    }
    ob->lim = *lim;
    int rc = db_open(path, sync, migrations, sizeof(migrations) / sizeof(migrations[0]), &ob->db,
                     err, errlen);
    if (rc < 0) {
        free(ob);
        return rc;
    }
    /* Memory that must not grow with the queue (docs/bench.md,
     * agent-footprint): a small page cache; no memory-mapped I/O (mapped
     * pages of a 1M-row file would count as the agent's RSS); temporary
     * tables and sorts, which no statement here needs, on disk; the WAL file
     * cut back after checkpoints. */
    uint64_t cache = lim->cache_bytes ? lim->cache_bytes : OUTBOX_CACHE_DEFAULT;
    char pragmas[200];
    snprintf(pragmas, sizeof(pragmas),
             "PRAGMA cache_size=-%llu; PRAGMA mmap_size=0; PRAGMA temp_store=FILE; "
             "PRAGMA journal_size_limit=%d",
             (unsigned long long)((cache + 1023) / 1024), OUTBOX_WAL_LIMIT);
    if ((rc = db_exec(ob->db, pragmas)) < 0) {
        snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(ob->db));
        outbox_close(ob);
        return rc;
    }
    for (int i = 0; i < ST_N; i++) {
        if ((rc = db_prepare(ob->db, sql[i], &ob->st[i])) < 0) {
            snprintf(err, errlen, "%s: cannot prepare statements", path);
            outbox_close(ob);
            return rc;
        }
    }
    /* Checkpoints off the loop (docs/agent.md, "Checkpoints"): SQLite's
     * own, every 1000 pages inside a commit, stalled the loop 5-10 ms
     * several times a second under load - the e2e latency tail. */
    ob->ckpt = db_ckpt_start(ob->db, path, OUTBOX_CKPT_PAGES, OUTBOX_CKPT_RESTART_PAGES);
    /* Whatever was in flight when we stopped was never acked: send again. */
    if ((rc = step_done(ob, ob->st[ST_UNTAKE_ALL])) < 0) {
        snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(ob->db));
        outbox_close(ob);
        return rc;
    }
    sqlite3_stmt *c = ob->st[ST_COUNT];
    if ((rc = sqlite3_step(c)) == SQLITE_ROW) {
        ob->rows = (uint64_t)sqlite3_column_int64(c, 0);
        ob->bytes = (uint64_t)sqlite3_column_int64(c, 1);
        uint64_t counted = 0;
        for (int p = 0; p < NPRIO; p++) {
            ob->rows_p[p] = (uint64_t)sqlite3_column_int64(c, 3 + p);
            counted += ob->rows_p[p];
        }
        ob->rows_p[NPRIO] = ob->rows >= counted ? ob->rows - counted : 0;
    }
    sqlite3_reset(c);
    if (rc != SQLITE_ROW) {
        /* As before the counts were kept in memory: start, and let the
         * statements that meet a broken page report it. */
        LOG_WARN("outbox", "%s: cannot count the outbox: %s; counts start at 0", path,
                 sqlite3_errmsg(ob->db));
    }
    if (sqlite3_step(ob->st[ST_DROP_COUNT]) == SQLITE_ROW) {
        ob->dropped_rows = (uint64_t)sqlite3_column_int64(ob->st[ST_DROP_COUNT], 0);
    }
    sqlite3_reset(ob->st[ST_DROP_COUNT]);
    LOG_INFO("outbox", "opened %s: rows=%llu bytes=%llu dropped_records=%llu full_policy=%s", path,
             (unsigned long long)ob->rows, (unsigned long long)ob->bytes,
             (unsigned long long)ob->dropped_rows,
             lim->full_policy == OUTBOX_FULL_DROP_OLDEST_LOWEST ? "drop_oldest_lowest" : "reject");
    *out = ob;
    return 0;
}

void outbox_close(outbox_t *ob)
{
    if (!ob) {
        return;
    }
    if (ob->in_tx) {
        outbox_commit(ob);
    }
    for (int i = 0; i < ST_N; i++) {
        sqlite3_finalize(ob->st[i]);
    }
    db_ckpt_stop(ob->ckpt);
    db_close(ob->db);
    free(ob);
}

/* Whether the outbox, as the open transaction leaves it, plus extra_rows
 * rows of len bytes, is over budget. */
static bool over_budget_n(const outbox_t *ob, uint64_t extra_rows, size_t len)
{
    uint64_t rows = ob->rows + ob->pending_rows - ob->pend_del_rows + extra_rows;
    uint64_t bytes = ob->bytes + ob->pending_bytes - ob->pend_del_bytes + len;
    return (ob->lim.max_rows && rows > ob->lim.max_rows) ||
           (ob->lim.max_bytes && bytes > ob->lim.max_bytes);
}

static bool over_budget(const outbox_t *ob, size_t len)
{
    return over_budget_n(ob, 1, len);
}

static void log_full(outbox_t *ob, const char *what)
{
    if (ob->full_logged) {
        return;
    }
    LOG_WARN("outbox", "full: rows=%llu bytes=%llu max_rows=%llu max_bytes=%llu; %s",
             (unsigned long long)(ob->rows + ob->pending_rows - ob->pend_del_rows),
             (unsigned long long)(ob->bytes + ob->pending_bytes - ob->pend_del_bytes),
             (unsigned long long)ob->lim.max_rows, (unsigned long long)ob->lim.max_bytes, what);
    ob->full_logged = true;
}

/* Drop one row to make room: the oldest not in flight with priority p, not
 * the row `keep` (the one just inserted). 1 dropped, 0 none there, or a
 * negative error. Counts go to *rows and *bytes (committed rows) or to *prow
 * and *pbytes (rows of this transaction), and per priority to del_p / pdel_p. */
static int drop_one(outbox_t *ob, int p, int64_t keep, int64_t now_ms, uint64_t *rows,
                    uint64_t *bytes, uint64_t *prow, uint64_t *pbytes, uint64_t *del_p,
                    uint64_t *pdel_p)
{
    sqlite3_stmt *v = ob->st[ST_VICTIM];
    sqlite3_bind_int(v, 1, p);
    int step = sqlite3_step(v);
    if (step != SQLITE_ROW) {
        sqlite3_reset(v);
        return step == SQLITE_DONE ? 0 : (db_err(step) ? db_err(step) : TDG_EDB);
    }
    int64_t seq = sqlite3_column_int64(v, 0);
    char id[PROTO_ID_MAX + 1];
    const char *vid = (const char *)sqlite3_column_text(v, 1);
    snprintf(id, sizeof(id), "%s", vid ? vid : "");
    uint64_t len = (uint64_t)sqlite3_column_int64(v, 2);
    int64_t created = sqlite3_column_int64(v, 3);
    sqlite3_reset(v);
    if (seq == keep) {
        return 0;
    }
    sqlite3_bind_int64(ob->st[ST_DROP_ROW], 1, seq);
    int rc = step_done(ob, ob->st[ST_DROP_ROW]);
    if (rc == 0) {
        sqlite3_stmt *r = ob->st[ST_DROP_REC];
        sqlite3_bind_text(r, 1, id, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int(r, 2, p);
        sqlite3_bind_int64(r, 3, created);
        sqlite3_bind_int64(r, 4, now_ms);
        rc = step_done(ob, r);
        sqlite3_clear_bindings(r);
    }
    if (rc == 0) {
        int64_t rec = sqlite3_last_insert_rowid(ob->db);
        if (rec > OUTBOX_DROPPED_KEEP) {
            sqlite3_bind_int64(ob->st[ST_DROP_PRUNE], 1, rec - OUTBOX_DROPPED_KEEP);
            rc = step_done(ob, ob->st[ST_DROP_PRUNE]);
        }
    }
    if (rc < 0) {
        return rc;
    }
    if (ob->tx_first_seq > 0 && seq >= ob->tx_first_seq) {
        (*prow)++;
        *pbytes += len;
        pdel_p[prio_index(p)]++;
    } else {
        (*rows)++;
        *bytes += len;
        del_p[prio_index(p)]++;
    }
    LOG_DEBUG("outbox", "dropped id=%s priority=%d (outbox over budget)", id, p);
    return 1;
}

/* Under drop_oldest_lowest: insert the row (already known to be over
 * budget), then drop the oldest rows of the lowest priorities <= priority
 * until it fits, all inside a savepoint, so that a row that cannot be made
 * room for leaves nothing dropped. 0 (added), TDG_EDUPLICATE, TDG_EFULL, or
 * a negative error. */
static int add_dropping(outbox_t *ob, sqlite3_stmt *ins, int priority, int64_t now_ms, size_t len)
{
    int rc = db_exec(ob->db, "SAVEPOINT make_room");
    if (rc < 0) {
        return rc;
    }
    rc = step_done(ob, ins);
    if (rc == 0 && sqlite3_changes(ob->db) == 0) {
        db_exec(ob->db, "RELEASE make_room");
        return TDG_EDUPLICATE;
    }
    int64_t keep = sqlite3_last_insert_rowid(ob->db);
    uint64_t rows = 0, bytes = 0, prow = 0, pbytes = 0, n = 0;
    uint64_t del_p[NPRIO + 1] = {0}, pdel_p[NPRIO + 1] = {0};
    int p = 0;
    /* The new row counts as added from here: over_budget_n(.., 0, 0). */
    ob->pending_rows++;
    ob->pending_bytes += len;
    while (rc == 0 && p <= priority) {
        ob->pend_del_rows += rows;
        ob->pend_del_bytes += bytes;
        ob->pending_rows -= prow;
        ob->pending_bytes -= pbytes;
        bool over = over_budget_n(ob, 0, 0);
        ob->pend_del_rows -= rows;
        ob->pend_del_bytes -= bytes;
        ob->pending_rows += prow;
        ob->pending_bytes += pbytes;
        if (!over) {
            break;
        }
        int d = drop_one(ob, p, keep, now_ms, &rows, &bytes, &prow, &pbytes, del_p, pdel_p);
        if (d < 0) {
            rc = d;
        } else if (d == 0) {
            p++;
        } else {
            n++;
        }
    }
    ob->pending_rows--;
    ob->pending_bytes -= len;
    if (rc == 0 && p > priority) {
        rc = TDG_EFULL; /* nothing left that may be dropped for it */
    }
    if (rc < 0) {
        db_exec(ob->db, "ROLLBACK TO make_room");
        db_exec(ob->db, "RELEASE make_room");
        return rc;
    }
    if ((rc = db_exec(ob->db, "RELEASE make_room")) < 0) {
        return rc;
    }
    if (!ob->tx_first_seq) {
        ob->tx_first_seq = keep;
    }
    ob->pend_del_rows += rows;
    ob->pend_del_bytes += bytes;
    ob->pending_rows -= prow;
    ob->pending_bytes -= pbytes;
    ob->pend_dropped += n;
    for (int i = 0; i <= NPRIO; i++) {
        ob->pend_del_p[i] += del_p[i];
        ob->pend_rows_p[i] -= pdel_p[i];
    }
    log_full(ob, "full_policy=drop_oldest_lowest: dropping the oldest of the lowest priority "
                 "(<= the new one's) to make room, each recorded in table dropped");
    return 0;
}

int outbox_add(outbox_t *ob, const char *id, int priority, int64_t created_ms, int64_t expires_ms,
               const char *json, size_t len)
{
    bool drop = false;
    if (over_budget(ob, len)) {
        if (ob->lim.full_policy != OUTBOX_FULL_DROP_OLDEST_LOWEST) {
            ob->rejected_full++;
            log_full(ob, "rejecting new notifications");
            return TDG_EFULL;
        }
        drop = true;
    }
    int brc = outbox_begin(ob);
    if (brc < 0) {
        return brc;
    }
    sqlite3_stmt *st = ob->st[ST_INSERT];
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, priority);
    sqlite3_bind_int64(st, 3, created_ms);
    sqlite3_bind_int64(st, 4, expires_ms);
    sqlite3_bind_blob(st, 5, json, (int)len, SQLITE_STATIC);
    int rc;
    if (drop) {
        rc = add_dropping(ob, st, priority, created_ms, len);
        sqlite3_clear_bindings(st);
        if (rc == TDG_EFULL) {
            ob->rejected_full++;
            log_full(ob, "full_policy=drop_oldest_lowest, but nothing of a priority <= the new "
                         "one's is left to drop: rejecting it");
        }
    } else {
        rc = step_done(ob, st);
        sqlite3_clear_bindings(st);
        if (rc == 0 && sqlite3_changes(ob->db) == 0) {
            rc = TDG_EDUPLICATE;
        } else if (rc == 0 && !ob->tx_first_seq) {
            ob->tx_first_seq = sqlite3_last_insert_rowid(ob->db);
        }
    }
    if (rc == TDG_EDUPLICATE) {
        ob->duplicates++;
    }
    if (rc < 0) {
        return rc;
    }
    ob->pending++;
    ob->pending_rows++;
    ob->pending_bytes += len;
    ob->pend_rows_p[prio_index(priority)]++;
    return 0;
}

int outbox_commit(outbox_t *ob)
{
    if (!ob->in_tx) {
        return 0;
    }
    /* Quiet: the agent logs a run of failed commits once (disk full). */
    int rc = db_commit_quiet(ob->db);
    ob->in_tx = false;
    if (rc < 0) {
        db_rollback(ob->db);
    } else {
        ob->accepted += ob->pending;
        ob->rows += ob->pending_rows - ob->pend_del_rows;
        ob->bytes += ob->pending_bytes - ob->pend_del_bytes;
        ob->dropped += ob->pend_dropped;
        ob->dropped_rows += ob->pend_dropped;
        for (int i = 0; i <= NPRIO; i++) {
            ob->rows_p[i] += ob->pend_rows_p[i];
            ob->rows_p[i] -= ob->pend_del_p[i] <= ob->rows_p[i] ? ob->pend_del_p[i] : ob->rows_p[i];
        }
        if (ob->dropped_rows > OUTBOX_DROPPED_KEEP) {
            ob->dropped_rows = OUTBOX_DROPPED_KEEP;
        }
    }
    ob->pending = 0;
    ob->pending_rows = ob->pending_bytes = 0;
    ob->pend_del_rows = ob->pend_del_bytes = ob->pend_dropped = 0;
    memset(ob->pend_rows_p, 0, sizeof(ob->pend_rows_p));
    memset(ob->pend_del_p, 0, sizeof(ob->pend_del_p));
    ob->tx_first_seq = 0;
    if (ob->on_commit) {
        ob->on_commit(ob->on_commit_arg, rc);
    }
    return rc;
}

struct sqlite3 *outbox_db(outbox_t *ob)
{
    return ob->db;
}

int outbox_begin(outbox_t *ob)
{
    if (ob->in_tx) {
        return 0;
    }
    int rc = db_begin(ob->db);
    if (rc == 0) {
        ob->in_tx = true;
    }
    return rc;
}

void outbox_on_commit(outbox_t *ob, outbox_commit_cb cb, void *arg)
{
    ob->on_commit = cb;
    ob->on_commit_arg = arg;
}

unsigned outbox_pending(const outbox_t *ob)
{
    return ob->pending;
}

int outbox_take(outbox_t *ob, unsigned max, outbox_row_cb cb, void *arg)
{
    return outbox_take_prio(ob, max, 0, cb, arg);
}

int outbox_take_prio(outbox_t *ob, unsigned max, int min_priority, outbox_row_cb cb, void *arg)
{
    /* Marks are written in their own transaction; commit pending adds first
     * so a failure here never undoes an accepted notification. */
    int rc = outbox_commit(ob);
    if (rc < 0) {
        return rc;
    }
    if ((rc = db_begin(ob->db)) < 0) {
        return rc;
    }
    sqlite3_stmt *t = ob->st[ST_TAKE];
    sqlite3_stmt *m = ob->st[ST_MARK];
    sqlite3_bind_int(t, 1, (int)max);
    sqlite3_bind_int(t, 2, min_priority);
    int marked = 0;
    int step;
    while ((step = sqlite3_step(t)) == SQLITE_ROW) {
        int64_t seq = sqlite3_column_int64(t, 0);
        const char *id = (const char *)sqlite3_column_text(t, 1);
        const char *body = sqlite3_column_blob(t, 2);
        int len = sqlite3_column_bytes(t, 2);
        if (!id || !body || len <= 0 || cb(arg, seq, id, body, (size_t)len) != 0) {
            break;
        }
        sqlite3_bind_int64(m, 1, seq);
        if ((rc = step_done(ob, m)) < 0) {
            break;
        }
        marked++;
    }
    if (step != SQLITE_ROW && step != SQLITE_DONE) {
        rc = db_err(step);
    }
    sqlite3_reset(t);
    if (rc < 0) {
        db_rollback(ob->db);
        return rc;
    }
    if ((rc = db_commit(ob->db)) < 0) {
        db_rollback(ob->db);
        return rc;
    }
    ob->inflight += (uint64_t)marked;
    return marked;
}

int outbox_untake(outbox_t *ob, const int64_t *seqs, size_t n)
{
    /* Like take and ack: never open a transaction over pending adds. */
    int rc = outbox_commit(ob);
    if (rc < 0) {
        return rc;
    }
    rc = db_begin(ob->db);
    if (rc < 0) {
        return rc;
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        sqlite3_bind_int64(ob->st[ST_UNTAKE], 1, seqs[i]);
        rc = step_done(ob, ob->st[ST_UNTAKE]);
        if (rc == 0 && sqlite3_changes(ob->db) > 0 && ob->inflight > 0) {
            ob->inflight--;
        }
    }
    if (rc < 0) {
        db_rollback(ob->db);
        return rc;
    }
    return db_commit(ob->db);
}

int outbox_untake_all(outbox_t *ob)
{
    int rc = outbox_commit(ob);
    if (rc < 0) {
        return rc;
    }
    rc = step_done(ob, ob->st[ST_UNTAKE_ALL]);
    if (rc == 0) {
        ob->inflight = 0;
    }
    return rc;
}

int outbox_ack(outbox_t *ob, const char *const *ids, size_t n, size_t *deleted)
{
    *deleted = 0;
    int rc = outbox_commit(ob);
    if (rc < 0) {
        return rc;
    }
    if ((rc = db_begin(ob->db)) < 0) {
        return rc;
    }
    sqlite3_stmt *d = ob->st[ST_DELETE];
    uint64_t bytes = 0;
    uint64_t del_p[NPRIO + 1] = {0};
    for (size_t i = 0; i < n; i++) {
        sqlite3_bind_text(d, 1, ids[i], -1, SQLITE_STATIC);
        int s = sqlite3_step(d);
        if (s == SQLITE_ROW) {
            bytes += (uint64_t)sqlite3_column_int64(d, 0);
            del_p[prio_index(sqlite3_column_int(d, 1))]++;
            (*deleted)++;
            s = sqlite3_step(d);
        }
        sqlite3_reset(d);
        if (s != SQLITE_DONE) {
            rc = db_err(s) ? db_err(s) : TDG_EDB;
            LOG_ERROR("outbox", "ack delete: %s", sqlite3_errmsg(ob->db));
            break;
        }
    }
    if (rc < 0) {
        db_rollback(ob->db);
        *deleted = 0;
        return rc;
    }
    if ((rc = db_commit(ob->db)) < 0) {
        db_rollback(ob->db);
        *deleted = 0;
        return rc;
    }
    ob->rows -= *deleted <= ob->rows ? *deleted : ob->rows;
    ob->bytes -= bytes <= ob->bytes ? bytes : ob->bytes;
    ob->inflight -= *deleted <= ob->inflight ? *deleted : ob->inflight;
    for (int i = 0; i <= NPRIO; i++) {
        ob->rows_p[i] -= del_p[i] <= ob->rows_p[i] ? del_p[i] : ob->rows_p[i];
    }
    if (ob->full_logged && !over_budget(ob, 0)) {
        LOG_INFO("outbox",
                 "below budget again: rows=%llu bytes=%llu (since start: rejected %llu, "
                 "dropped %llu)",
                 (unsigned long long)ob->rows, (unsigned long long)ob->bytes,
                 (unsigned long long)ob->rejected_full, (unsigned long long)ob->dropped);
        ob->full_logged = false;
    }
    return 0;
}

void outbox_get_stats(const outbox_t *ob, struct outbox_stats *st)
{
    st->rows = ob->rows;
    st->bytes = ob->bytes;
    st->inflight = ob->inflight;
    st->accepted = ob->accepted;
    st->duplicates = ob->duplicates;
    st->rejected_full = ob->rejected_full;
    st->dropped = ob->dropped;
    st->dropped_rows = ob->dropped_rows;
    memcpy(st->by_priority, ob->rows_p, sizeof(st->by_priority));
}

int outbox_oldest(outbox_t *ob, int64_t *ms)
{
    *ms = 0;
    sqlite3_stmt *o = ob->st[ST_OLDEST];
    int step = sqlite3_step(o);
    if (step == SQLITE_ROW) {
        *ms = sqlite3_column_int64(o, 0);
    }
    sqlite3_reset(o);
    if (step != SQLITE_ROW && step != SQLITE_DONE) {
        LOG_WARN("outbox", "oldest row: %s", sqlite3_errmsg(ob->db));
        return db_err(step) ? db_err(step) : TDG_EDB;
    }
    return 0;
}

int outbox_find(outbox_t *ob, const char *id, struct outbox_found *f)
{
    memset(f, 0, sizeof(*f));
    sqlite3_stmt *q = ob->st[ST_FIND];
    sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    int step = sqlite3_step(q);
    if (step == SQLITE_ROW) {
        f->state = sqlite3_column_int(q, 0) ? OUTBOX_FOUND_IN_FLIGHT : OUTBOX_FOUND_QUEUED;
        f->at_ms = sqlite3_column_int64(q, 1);
    }
    sqlite3_reset(q);
    sqlite3_clear_bindings(q);
    if (step == SQLITE_DONE) {
        q = ob->st[ST_FIND_DROPPED];
        sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
        step = sqlite3_step(q);
        if (step == SQLITE_ROW) {
            f->state = OUTBOX_FOUND_DROPPED;
            const unsigned char *r = sqlite3_column_text(q, 0);
            snprintf(f->reason, sizeof(f->reason), "%s", r ? (const char *)r : "");
            f->at_ms = sqlite3_column_int64(q, 1);
        }
        sqlite3_reset(q);
        sqlite3_clear_bindings(q);
    }
    if (step != SQLITE_ROW && step != SQLITE_DONE) {
        LOG_WARN("outbox", "find %s: %s", id, sqlite3_errmsg(ob->db));
        return db_err(step) ? db_err(step) : TDG_EDB;
    }
    return f->state == OUTBOX_FOUND_NONE ? TDG_ENOTFOUND : 0;
}
