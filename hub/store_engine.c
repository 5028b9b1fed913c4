/* store_engine.c - fanout engine tables: receipts outbox, terminal counters,
 * agent quotas (see store_engine.h and store_int.h). */
#include "store_engine.h"
#include "store_int.h"

#include "error.h"
#include "loop.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* The WHEN clauses spell the terminal states out as = ... OR = ...: with
 * "state IN (<more than two constants>)" SQLite builds an ephemeral index
 * of the constants once per statement, and a trigger's program is a new
 * statement for every row it fires on, so each insert and each state
 * change paid for opening, filling and closing a temporary b-tree (about
 * 20k instructions; callgrind, hub-cost). The OR chain is a few string
 * compares. */
#define TERMINAL_NEW                                                                               \
    "(NEW.state = 'delivered' OR NEW.state = 'failed' OR NEW.state = 'suppressed' OR"              \
    " NEW.state = 'expired' OR NEW.state = 'dropped')"
#define RECEIPT_ROW_V5                                                                             \
    "INSERT INTO receipts(notification_id, agent, state, reason, at_ms)"                           \
    " VALUES (NEW.id, NEW.agent, NEW.state, NEW.reason, NEW.updated_ms);"
/* Since v12 the row carries the notification's received_ms: receipt_log's
 * key (store_sql_receipts_v12 below). */
#define RECEIPT_ROW                                                                                \
    "INSERT INTO receipts(notification_id, agent, state, reason, at_ms, received_ms)"              \
    " VALUES (NEW.id, NEW.agent, NEW.state, NEW.reason, NEW.updated_ms, NEW.received_ms);"
#define RECEIPT_STATE_TRIGGER(row)                                                                 \
    "CREATE TRIGGER receipts_on_state AFTER UPDATE OF state ON notifications"                      \
    "  WHEN " TERMINAL_NEW " AND OLD.state IS NOT NEW.state"                                       \
    " BEGIN " row " END;"
/* Schema v11 (store.c) drops this one: store_add_notifications writes it. */
#define RECEIPT_INSERT_TRIGGER(row)                                                                \
    "CREATE TRIGGER receipts_on_insert AFTER INSERT ON notifications"                              \
    "  WHEN " TERMINAL_NEW " BEGIN " row " END;"

const char *const store_terminal_states[STORE_TERMINAL_N] = {"delivered", "failed", "suppressed",
                                                             "expired", "dropped"};

int store_terminal_index(const char *state)
{
    for (int i = 0; i < STORE_TERMINAL_N; i++) {
        if (strcmp(state, store_terminal_states[i]) == 0) {
            return i;
        }
    }
    return -1;
}

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
    ") WITHOUT ROWID;" RECEIPT_STATE_TRIGGER(RECEIPT_ROW_V5) RECEIPT_INSERT_TRIGGER(RECEIPT_ROW_V5);

/* Schema v12: receipt_log found by the notification's received_ms instead
 * of its text id. Its index receipt_log_by_id took every confirmed receipt
 * at a random place (ids are random strings): a b-tree descent with text
 * compares and a page of its own dirtied per row. With 100,000 rows logged
 * (callgrind, per receipt): 11.8k -> 7.7k instructions in the delete, 7.4k
 * -> 0.9k in the commit; more as the log grows to its bound. A
 * notification's received_ms is set once at intake and never changes, and
 * receipts are confirmed about in the order notifications arrive, so the
 * new index grows at its end, in pages the transaction touched already.
 * `tidingsctl status` reads the notification's received_ms (its primary
 * key), then the log rows with that time, checking the id (at full rate
 * some tens of notifications share a millisecond).
 *
 * The outbox rows carry received_ms (the triggers copy NEW.received_ms)
 * so that confirming a message stays one INSERT ... SELECT from them. Rows
 * of earlier versions get theirs from their notification (notifications
 * are never deleted). */
const char store_sql_receipts_v12[] =
    "ALTER TABLE receipts ADD COLUMN received_ms INTEGER NOT NULL DEFAULT 0;"
    "UPDATE receipts SET received_ms = coalesce((SELECT n.received_ms FROM notifications n"
    "  WHERE n.id = receipts.notification_id), 0);"
    "ALTER TABLE receipt_log ADD COLUMN received_ms INTEGER NOT NULL DEFAULT 0;"
    "UPDATE receipt_log SET received_ms = coalesce((SELECT n.received_ms FROM notifications n"
    "  WHERE n.id = receipt_log.notification_id), 0);"
    "DROP INDEX receipt_log_by_id;"
    "CREATE INDEX receipt_log_by_received ON receipt_log(received_ms);"
    "DROP TRIGGER IF EXISTS receipts_on_state;" RECEIPT_STATE_TRIGGER(RECEIPT_ROW);

/* Receipts after the cursor joined with their attempts, in (seq, attempt
 * id) order, which the plan gives as it walks (receipts by rowid, then
 * attempts_by_notification, whose entries end in the rowid): no temporary
 * b-tree, and the caller stops stepping after max receipts instead of a
 * LIMIT in a subquery (whose rows the outer ORDER BY had to sort). */
static const char SQL_NEXT[] =
    "SELECT r.seq, r.notification_id, r.agent, r.state, r.reason, r.at_ms,"
    " a.channel, a.state, a.status, a.reason"
    " FROM receipts AS r LEFT JOIN attempts AS a ON a.notification_id = r.notification_id"
    " WHERE r.seq > ?1 ORDER BY r.seq, a.id";
/* Confirming one message's rows [?2, ?3] of agent ?1: keep their history,
 * count them, delete them (one savepoint: all or none). The rows are found
 * by the rowid range each time (no index on agent: the range holds little
 * else). receipt_log is schema v7's (store_admin.c), keyed by v12. */
static const char SQL_DEL_SAVEPOINT[] = "SAVEPOINT receipts_delete";
static const char SQL_DEL_RELEASE[] = "RELEASE receipts_delete";
static const char SQL_DEL_ROLLBACK[] = "ROLLBACK TO receipts_delete";
static const char SQL_DEL_LOG[] =
    "INSERT INTO receipt_log(notification_id, agent, state, queued_ms, confirmed_ms, received_ms)"
    " SELECT notification_id, agent, state, at_ms, ?4, received_ms"
    " FROM receipts WHERE seq BETWEEN ?2 AND ?3 AND agent = ?1 ORDER BY seq";
/* Only when the caller's tally cannot be used (see store_receipts_delete). */
static const char SQL_DEL_COUNT[] =
    "INSERT INTO engine_counts(state, n) SELECT state, count(*) FROM receipts"
    " WHERE seq BETWEEN ?2 AND ?3 AND agent = ?1 GROUP BY state"
    " ON CONFLICT(state) DO UPDATE SET n = n + excluded.n";
static const char SQL_ADD_COUNT[] = "INSERT INTO engine_counts(state, n) VALUES (?1, ?2)"
                                    " ON CONFLICT(state) DO UPDATE SET n = n + excluded.n";
static const char SQL_DELETE[] = "DELETE FROM receipts WHERE seq BETWEEN ?2 AND ?3 AND agent = ?1";
/* receipt_log is bounded: whenever its rowids pass a multiple of 256 (?1),
 * if its oldest row is due (SQL_LOG_DUE: older than RECEIPT_LOG_KEEP_MS
 * before ?2, the confirmation time, or more than RECEIPT_LOG_MAX_ROWS
 * behind ?1), up to 512 of the oldest due rows go (SQL_LOG_PRUNE). Rowid
 * order is time order: rows are only appended, here, and pruned from the
 * start. Run by the one writer of receipt_log rather than by a trigger,
 * whose program ran for every row inserted. */
#define RECEIPT_LOG_KEEP_MS "2592000000" /* 30 days */
#define RECEIPT_LOG_MAX_ROWS "1000000"
#define RECEIPT_LOG_EVERY 256
#define RECEIPT_LOG_IS_DUE                                                                         \
    " WHERE t < ?2 - " RECEIPT_LOG_KEEP_MS " OR r <= ?1 - " RECEIPT_LOG_MAX_ROWS
static const char SQL_LOG_DUE[] = "SELECT 1 FROM (SELECT rowid AS r, confirmed_ms AS t"
                                  " FROM receipt_log ORDER BY rowid LIMIT 1)" RECEIPT_LOG_IS_DUE;
static const char SQL_LOG_PRUNE[] =
    "DELETE FROM receipt_log WHERE rowid IN (SELECT r FROM (SELECT rowid AS r,"
    " confirmed_ms AS t FROM receipt_log ORDER BY rowid LIMIT 512)" RECEIPT_LOG_IS_DUE ")";
static const char SQL_TOP[] = "SELECT max(seq) FROM receipts";
static const char SQL_PENDING[] = "SELECT count(*) FROM receipts";
/* Confirmed (engine_counts) plus still in the outbox: read at scrape time
 * only (the outbox is small unless the broker is out of reach). */
static const char SQL_COUNTS[] =
    "SELECT state, sum(n) FROM (SELECT state, n FROM engine_counts"
    " UNION ALL SELECT state, count(*) AS n FROM receipts GROUP BY state)"
    " GROUP BY state ORDER BY state";
/* The partial index notifications_work holds exactly these rows. */
static const char SQL_DEPTH[] = "SELECT count(*) FROM notifications WHERE state = 'queued'";
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
    int n = 0, rc;
    unsigned receipts = 0;
    int64_t last = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t seq = sqlite3_column_int64(st, 0);
        if (receipts == 0 || seq != last) {
            if (receipts == max) {
                rc = SQLITE_DONE; /* the next receipt: for another call */
                break;
            }
            receipts++;
            last = seq;
        }
        struct store_receipt r = {
            .seq = seq,
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

static int run_range(store_t *s, const char *sql, const char *agent, int64_t from, int64_t to,
                     const char *what)
{
    sqlite3_stmt *st = store_stmt(s, sql);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_text(st, 1, agent, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, from);
    sqlite3_bind_int64(st, 3, to);
    return store_run(s, st, what);
}

/* Copy the rows to receipt_log; *copied: how many there were, *last: the
 * rowid of the last one (the new rows are (*last - *copied, *last]: each
 * gets max(rowid) + 1). */
static int log_range(store_t *s, const char *agent, int64_t from, int64_t to, int64_t now_ms,
                     int64_t *copied, int64_t *last)
{
    sqlite3_stmt *st = store_stmt(s, SQL_DEL_LOG);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_text(st, 1, agent, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, from);
    sqlite3_bind_int64(st, 3, to);
    sqlite3_bind_int64(st, 4, now_ms);
    int rc = store_run(s, st, "receipt log");
    *copied = rc == 0 ? sqlite3_changes64(s->db) : 0;
    *last = sqlite3_last_insert_rowid(s->db);
    return rc;
}

static int add_count(store_t *s, const char *state, int64_t n)
{
    sqlite3_stmt *st = store_stmt(s, SQL_ADD_COUNT);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_text(st, 1, state, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, n);
    return store_run(s, st, "receipts count");
}

static int log_query(store_t *s, const char *sql, int64_t m, int64_t now_ms, bool *row)
{
    sqlite3_stmt *st = store_stmt(s, sql);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_int64(st, 1, m);
    sqlite3_bind_int64(st, 2, now_ms);
    int rc = sqlite3_step(st);
    *row = rc == SQLITE_ROW;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : store_fail(s, rc, "receipt log prune");
}

/* The log's new rows are (last - n, last]: prune at each multiple of
 * RECEIPT_LOG_EVERY among them (as often as a per-row check would). */
static int prune_log(store_t *s, int64_t n, int64_t last, int64_t now_ms)
{
    int64_t m = (last - n) / RECEIPT_LOG_EVERY * RECEIPT_LOG_EVERY + RECEIPT_LOG_EVERY;
    for (; m <= last; m += RECEIPT_LOG_EVERY) {
        bool due = false, row;
        int rc = log_query(s, SQL_LOG_DUE, m, now_ms, &due);
        if (rc == 0 && due) {
            rc = log_query(s, SQL_LOG_PRUNE, m, now_ms, &row);
        }
        if (rc < 0) {
            return rc;
        }
    }
    return 0;
}

static int delete_range(store_t *s, const char *agent, int64_t from, int64_t to,
                        const unsigned tally[STORE_TERMINAL_N])
{
    int64_t now_ms = clock_wall_ms(), copied = 0, last = 0, expected = 0;
    int rc = log_range(s, agent, from, to, now_ms, &copied, &last);
    if (rc < 0) {
        return rc;
    }
    if (copied == 0) {
        return 0; /* confirmed already (a message sent twice) */
    }
    for (int i = 0; tally && i < STORE_TERMINAL_N; i++) {
        expected += tally[i];
    }
    /* The range holds no row that was not in the message (receipts.c), so
     * as many rows as the message had means these are its rows. */
    if (tally && copied == expected) {
        for (int i = 0; i < STORE_TERMINAL_N && rc == 0; i++) {
            if (tally[i]) {
                rc = add_count(s, store_terminal_states[i], tally[i]);
            }
        }
    } else {
        rc = run_range(s, SQL_DEL_COUNT, agent, from, to, "receipts count");
    }
    if (rc < 0 || (rc = run_range(s, SQL_DELETE, agent, from, to, "receipts delete")) < 0) {
        return rc;
    }
    return prune_log(s, copied, last, now_ms);
}

int store_receipts_delete(store_t *s, const char *agent, int64_t from, int64_t to,
                          const unsigned tally[STORE_TERMINAL_N])
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    if ((rc = exec_named(s, SQL_DEL_SAVEPOINT, "receipts savepoint")) < 0) {
        return rc;
    }
    if ((rc = delete_range(s, agent, from, to, tally)) < 0) {
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

int store_queue_depth(store_t *s, int64_t *queued)
{
    *queued = 0;
    sqlite3_stmt *st = store_stmt(s, SQL_DEPTH);
    if (!st) {
        return TDG_EDB;
    }
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *queued = sqlite3_column_int64(st, 0);
        rc = SQLITE_DONE;
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

/* --- receipts from memory (store_engine.h) ---------------------------------
 *
 * A ring of receipt rows with consecutive seqs, oldest first: the first
 * `committed` are durable (their transaction's COMMIT returned), the rest
 * were written in the open transaction. What keeps the ring equal to the
 * table, whatever else writes it:
 * - a row enters only through the update hook, with the seq SQLite gave it
 *   and the content of the store_set_state_receipt call that wrote it, and
 *   only right behind the last one (seq + 1): once a row is not taken (not
 *   captured, the ring full, a seq that does not follow) the ring is
 *   `frozen` until the publisher has taken all of it; the table answers
 *   from the first row not kept;
 * - a delete (or update) of a receipts row with a seq inside the ring
 *   empties it (the publisher deletes only published rows, which the ring
 *   has dropped already: this is the unexpected case);
 * - a rollback or a ROLLBACK TO drops the uncommitted part (and freezes
 *   what is left: rows behind it may stay); a failed COMMIT
 *   turns the ring off for good: the fanout's memory of attempts may then
 *   disagree with the rolled-back table.
 * The ring is allocated on first use. */
struct rmem_entry {
    int64_t seq;
    char agent[PROTO_AGENT_MAX + 1];
    struct proto_receipt x;
};

struct rmem {
    struct rmem_entry *e; /* STORE_RMEM_MAX */
    unsigned head, n, committed;
    bool frozen; /* a row behind the last entry is not here: append nothing */
    bool off;
    const struct store_rcpt_ctx *ctx; /* the statement running captures for it */
    bool captured;
};

void store_copy_text(char *dst, size_t size, const char *src)
{
    size_t n = strnlen(src, size);
    if (n == size) {
        n = size - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80) {
            n--; /* src[n] continues a character that would be cut */
        }
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static struct rmem_entry *rmem_at(struct rmem *m, unsigned i)
{
    return &m->e[(m->head + i) % STORE_RMEM_MAX];
}

static void rmem_clear(struct rmem *m)
{
    m->n = m->committed = 0;
    m->frozen = false;
}

void store_rmem_capture(store_t *s, const struct store_rcpt_ctx *ctx)
{
    struct rmem *m = s->rmem;
    if (!m && ctx) {
        m = calloc(1, sizeof(*m));
        if (m) {
            m->e = malloc(STORE_RMEM_MAX * sizeof(*m->e));
        }
        if (!m || !m->e) {
            free(m);
            return; /* the table answers */
        }
        s->rmem = m;
    }
    if (m) {
        m->ctx = m->off ? NULL : ctx;
        m->captured = false;
    }
}

bool store_rmem_captured(store_t *s)
{
    return s->rmem && s->rmem->captured;
}

static void rmem_insert(struct rmem *m, int64_t seq)
{
    const struct store_rcpt_ctx *c = m->ctx;
    m->ctx = NULL; /* one row per capture; another one is not ours */
    if (m->n == 0) {
        m->head = 0;
        m->frozen = false;
    } else if (m->frozen || m->n == STORE_RMEM_MAX || rmem_at(m, m->n - 1)->seq + 1 != seq) {
        m->frozen = true;
        return; /* the table answers from the first row not kept */
    }
    if (!c) {
        m->frozen = m->n > 0;
        return; /* not ours: the table answers from this seq on */
    }
    struct rmem_entry *e = rmem_at(m, m->n);
    e->seq = seq;
    store_copy_text(e->agent, sizeof(e->agent), c->agent);
    struct proto_receipt *x = &e->x;
    store_copy_text(x->id, sizeof(x->id), c->id);
    store_copy_text(x->state, sizeof(x->state), c->state);
    store_copy_text(x->reason, sizeof(x->reason), c->reason ? c->reason : "");
    x->at_ms = c->at_ms;
    x->nch = c->nch < PROTO_RECEIPT_MAX_CHANNELS ? c->nch : PROTO_RECEIPT_MAX_CHANNELS;
    if (x->nch) {
        memcpy(x->ch, c->ch, x->nch * sizeof(x->ch[0]));
    }
    m->n++;
    m->captured = true;
}

void store_rmem_on_update(store_t *s, int op, const char *table, int64_t rowid)
{
    struct rmem *m = s->rmem;
    /* called for every row the hot path writes: one comparison for most */
    if (!m || table[0] != 'r' || strcmp(table, "receipts") != 0) {
        return;
    }
    if (op == SQLITE_INSERT) {
        rmem_insert(m, rowid);
    } else if (m->n > 0 && rowid >= rmem_at(m, 0)->seq && rowid <= rmem_at(m, m->n - 1)->seq) {
        rmem_clear(m);
    }
}

void store_rmem_undo(store_t *s)
{
    struct rmem *m = s->rmem;
    if (m && m->n > m->committed) {
        m->n = m->committed;
        m->frozen = m->n > 0;
    }
}

void store_rmem_committed(store_t *s, bool ok)
{
    struct rmem *m = s->rmem;
    if (!m) {
        return;
    }
    if (ok) {
        m->committed = m->n;
    } else {
        rmem_clear(m);
        m->off = true;
    }
}

void store_rmem_free(store_t *s)
{
    if (s->rmem) {
        free(s->rmem->e);
        free(s->rmem);
        s->rmem = NULL;
    }
}

int store_receipts_mem_next(store_t *s, int64_t after, unsigned max, store_receipt_mem_cb cb,
                            void *arg)
{
    struct rmem *m = s->rmem;
    if (!m) {
        return 0;
    }
    while (m->committed > 0 && rmem_at(m, 0)->seq <= after) {
        m->head = (m->head + 1) % STORE_RMEM_MAX;
        m->n--;
        m->committed--;
    }
    if (m->n == 0) {
        m->frozen = false;
    }
    if (m->committed == 0 || rmem_at(m, 0)->seq != after + 1) {
        return 0;
    }
    unsigned k = 0;
    while (k < m->committed && k < max) {
        const struct rmem_entry *e = rmem_at(m, k);
        if (!cb(arg, e->seq, e->agent, &e->x)) {
            break;
        }
        k++;
    }
    return (int)k;
}

void store_receipts_mem_held(store_t *s, unsigned *committed, unsigned *open)
{
    *committed = s->rmem ? s->rmem->committed : 0;
    *open = s->rmem ? s->rmem->n - s->rmem->committed : 0;
}
