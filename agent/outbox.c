/* outbox.c - SQLite outbox (see outbox.h). */
#include "outbox.h"

#include "error.h"
#include "log.h"

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
};

enum { ST_INSERT, ST_TAKE, ST_MARK, ST_UNTAKE, ST_UNTAKE_ALL, ST_DELETE, ST_COUNT, ST_N };

static const char *const sql[ST_N] = {
    [ST_INSERT] = "INSERT OR IGNORE INTO outbox(id, priority, created_ms, expires_ms, body) "
                  "VALUES (?, ?, ?, ?, ?)",
    [ST_TAKE] = "SELECT seq, id, body FROM outbox WHERE inflight = 0 "
                "ORDER BY priority DESC, seq LIMIT ?",
    [ST_MARK] = "UPDATE outbox SET inflight = 1 WHERE seq = ?",
    [ST_UNTAKE] = "UPDATE outbox SET inflight = 0 WHERE seq = ?",
    [ST_UNTAKE_ALL] = "UPDATE outbox SET inflight = 0 WHERE inflight = 1",
    [ST_DELETE] = "DELETE FROM outbox WHERE id = ? RETURNING length(body)",
    [ST_COUNT] = "SELECT count(*), coalesce(sum(length(body)), 0), "
                 "coalesce(sum(inflight), 0) FROM outbox",
};

struct outbox {
    sqlite3 *db;
    sqlite3_stmt *st[ST_N];
    struct outbox_limits lim;
    bool in_tx;
    unsigned pending;
    uint64_t rows, bytes, inflight;
    uint64_t pending_rows, pending_bytes; /* added in the open transaction */
    uint64_t accepted, duplicates, rejected_full;
    bool full_logged;
    outbox_commit_cb on_commit;
    void *on_commit_arg;
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
    for (int i = 0; i < ST_N; i++) {
        if ((rc = db_prepare(ob->db, sql[i], &ob->st[i])) < 0) {
            snprintf(err, errlen, "%s: cannot prepare statements", path);
            outbox_close(ob);
            return rc;
        }
    }
    /* Whatever was in flight when we stopped was never acked: send again. */
    if ((rc = step_done(ob, ob->st[ST_UNTAKE_ALL])) < 0) {
        snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(ob->db));
        outbox_close(ob);
        return rc;
    }
    sqlite3_stmt *c = ob->st[ST_COUNT];
    if (sqlite3_step(c) == SQLITE_ROW) {
        ob->rows = (uint64_t)sqlite3_column_int64(c, 0);
        ob->bytes = (uint64_t)sqlite3_column_int64(c, 1);
    }
    sqlite3_reset(c);
    LOG_INFO("outbox", "opened %s: rows=%llu bytes=%llu", path, (unsigned long long)ob->rows,
             (unsigned long long)ob->bytes);
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
    db_close(ob->db);
    free(ob);
}

static bool over_budget(const outbox_t *ob, size_t len)
{
    uint64_t rows = ob->rows + ob->pending_rows + 1;
    uint64_t bytes = ob->bytes + ob->pending_bytes + len;
    return (ob->lim.max_rows && rows > ob->lim.max_rows) ||
           (ob->lim.max_bytes && bytes > ob->lim.max_bytes);
}

int outbox_add(outbox_t *ob, const char *id, int priority, int64_t created_ms, int64_t expires_ms,
               const char *json, size_t len)
{
    if (over_budget(ob, len)) {
        ob->rejected_full++;
        if (!ob->full_logged) {
            LOG_WARN("outbox", "full: rows=%llu bytes=%llu max_rows=%llu max_bytes=%llu; "
                     "rejecting new notifications",
                     (unsigned long long)(ob->rows + ob->pending_rows),
                     (unsigned long long)(ob->bytes + ob->pending_bytes),
                     (unsigned long long)ob->lim.max_rows, (unsigned long long)ob->lim.max_bytes);
            ob->full_logged = true;
        }
        return TDG_EFULL;
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
    int rc = step_done(ob, st);
    sqlite3_clear_bindings(st);
    if (rc < 0) {
        return rc;
    }
    if (sqlite3_changes(ob->db) == 0) {
        ob->duplicates++;
        return TDG_EDUPLICATE;
    }
    ob->pending++;
    ob->pending_rows++;
    ob->pending_bytes += len;
    return 0;
}

int outbox_commit(outbox_t *ob)
{
    if (!ob->in_tx) {
        return 0;
    }
    int rc = db_commit(ob->db);
    ob->in_tx = false;
    if (rc < 0) {
        db_rollback(ob->db);
        ob->pending = 0;
        ob->pending_rows = ob->pending_bytes = 0;
    } else {
        ob->accepted += ob->pending;
        ob->rows += ob->pending_rows;
        ob->bytes += ob->pending_bytes;
        ob->pending = 0;
        ob->pending_rows = ob->pending_bytes = 0;
    }
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
    for (size_t i = 0; i < n; i++) {
        sqlite3_bind_text(d, 1, ids[i], -1, SQLITE_STATIC);
        int s = sqlite3_step(d);
        if (s == SQLITE_ROW) {
            bytes += (uint64_t)sqlite3_column_int64(d, 0);
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
    if (ob->full_logged && !over_budget(ob, 0)) {
        LOG_INFO("outbox", "below budget again: rows=%llu bytes=%llu (rejected %llu while full)",
                 (unsigned long long)ob->rows, (unsigned long long)ob->bytes,
                 (unsigned long long)ob->rejected_full);
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
}
