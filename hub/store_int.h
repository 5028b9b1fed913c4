/*
 * store_int.h - private to the store_*.c files: the SQLite backend's handle
 * and the helpers every query file uses.
 *
 * The store is one SQLite connection and one iteration transaction, split by
 * domain into files that each own their tables, their migration and their
 * queries: store.c (notifications, attempts), store_dir.c (users, devices,
 * groups, agent bindings), store_policy.c (preferences, decisions, caps),
 * store_sched.c (durable timers), store_engine.c (fanout engine, receipts),
 * store_channels.c (provider-side state such as SMS status), store_admin.c
 * (queries of the admin API). Schema versions are numbered in store.c.
 *
 * Statements are prepared once: store_stmt() keeps each one, keyed by the
 * address of its SQL text, for the life of the connection. Use it with a
 * string constant (static storage), never a buffer.
 */
#ifndef TIDINGS_STORE_INT_H
#define TIDINGS_STORE_INT_H

#include "store.h"

#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STORE_STMT_SLOTS 256 /* open addressing; far more than there are queries */

struct store_stmt_slot {
    const char *sql;
    sqlite3_stmt *st;
    bool flush; /* reads or writes a table with buffered rows, or a savepoint: flush first */
    bool rollback; /* a ROLLBACK TO: receipts captured in memory may be undone (store_rmem_undo) */
};

/* --- Buffered rows (store_rows.c) ------------------------------------------
 *
 * The rows of one INSERT, kept in the iteration and written up to
 * STORE_ROWS_MAX per statement (INSERT ... VALUES (...), (...)): decisions
 * and attempts, the two rows every notification adds that nothing reads
 * back in the same iteration. They are written before the COMMIT
 * (store_commit), before any statement store_stmt hands out that names
 * their tables or a savepoint (so a read sees them, and a ROLLBACK TO
 * undoes exactly what was added after its SAVEPOINT), and by
 * store_pending_flush wherever SQL bypasses store_stmt. A failed write
 * fails the transaction (store_commit rolls it back), as the failed
 * statement would have.
 *
 * The statements are INSERT OR IGNORE: with ABORT, a statement of several
 * rows must be undoable alone, so SQLite journals every page it changes
 * (a statement journal, a temp file past 64 KiB: ~0.3 pwrite per
 * notification at full load). No row can be ignored (every NOT NULL column
 * is bound; attempt ids are new); store_rows_flush checks that every row
 * was written and fails the transaction if one was not. */
#define STORE_ROWS_MAX 16
#define STORE_ROWS_SIZES 5 /* statements for 1, 2, 4, 8, 16 rows */
#define STORE_ROWS_COLS 8

struct store_rows_def {
    const char *head;   /* "INSERT INTO t(a, b, c) VALUES " */
    const char *tuple;  /* "(?, ?, 'constant', ?)": ncols placeholders */
    unsigned ncols;     /* <= STORE_ROWS_COLS */
    unsigned text_mask; /* bit c: column c is text, else an integer */
    const char *what;   /* for errors */
};

struct store_rows_in {
    const char *s; /* text columns (NULL: "") */
    int64_t i;     /* integer columns */
};

struct store_rows_val {
    int64_t i;
    uint32_t off, len; /* text: in arena */
};

struct store_rows {
    const struct store_rows_def *def;
    unsigned n; /* rows buffered */
    struct store_rows_val v[STORE_ROWS_MAX][STORE_ROWS_COLS];
    size_t used;
    char arena[8192]; /* the texts of the buffered rows */
    sqlite3_stmt *st[STORE_ROWS_SIZES];
};

/* Buffer one row (in: def->ncols values); writes the buffer first when it
 * is full. 0 or a negative error. */
int store_rows_add(store_t *s, struct store_rows *r, const struct store_rows_in *in);
/* Write the buffered rows; the buffer is empty afterwards, written or not. */
int store_rows_flush(store_t *s, struct store_rows *r);
void store_rows_drop(struct store_rows *r);
void store_rows_close(struct store_rows *r);
/* Write every buffer of the store (decisions, attempts). A failure sticks
 * (s->pend_err) until the transaction ends. */
int store_pending_flush(store_t *s);

struct store {
    sqlite3 *db;
    sqlite3_stmt *q[16]; /* store.c's own hot statements */
    struct store_stmt_slot stmts[STORE_STMT_SLOTS];
    bool in_tx;
    struct pii *pii;          /* store_dir.c: the keyring (not owned) */
    int64_t reencrypt_after;  /* store_dir.c: store_dir_reencrypt's cursor */
    db_ckpt_t *ckpt;          /* WAL checkpoints off the loop (db_ckpt_start; NULL: SQLite's own) */
    struct dir_cache *dcache; /* store_dir.c: users' active endpoints (NULL: none) */
    struct rowid_hint *hints; /* store.c: notification id -> rowid (NULL: none) */
    struct store_rows dec_rows; /* store_policy.c: decisions (store_rows.c) */
    struct store_rows att_rows; /* store.c: attempts */
    int64_t next_attempt_id;    /* store.c: attempts get their ids here, not from SQLite */
    int pend_err;               /* a buffered write failed: the transaction must roll back */
    struct rmem *rmem;          /* store_engine.c: receipts kept in memory (NULL until used) */
};

/* The migrations of the other domains (store.c lists them in order). */
extern const char store_sql_directory[]; /* v2, store_dir.c */
extern const char store_sql_policy[];    /* v3, store_policy.c */
extern const char store_sql_sched[];     /* v4, store_sched.c */
extern const char store_sql_engine[];    /* v5, store_engine.c */
extern const char store_sql_channels[];  /* v6, store_channels.c */
extern const char store_sql_admin[];     /* v7, store_admin.c */
extern const char store_sql_receipts_v12[]; /* v12, store_engine.c */

extern const struct store_rows_def store_dec_rows_def; /* store_policy.c: decisions */

/* store_dir.c: the cache of store_user_devices. store_dir_open installs
 * the connection's update, commit and rollback hooks (they keep the cache
 * right whatever writes `devices` or `users`, and pass every row to the
 * receipts kept in memory, store_rmem_on_update: nothing else may install
 * those hooks); -ENOMEM leaves the store without a cache and without
 * receipts in memory (the table answers). store_dir_close
 * removes them and zeroes the cache; store_dir_cache_clear empties it. */
int store_dir_open(store_t *s);
void store_dir_close(store_t *s);
void store_dir_cache_clear(store_t *s);

/* store_engine.c: receipts kept in memory for the publisher (docs/engine.md,
 * "Receipts from memory"). The connection's update hook (store_dir.c
 * installs the hooks, one set for both) passes every row written;
 * store_rmem_on_update looks at `receipts` only. A rollback, a ROLLBACK TO
 * (store_stmt hands one out) and a commit tell it what became durable. */
struct store_rcpt_ctx;
void store_rmem_on_update(store_t *s, int op, const char *table, int64_t rowid);
void store_rmem_undo(store_t *s);                 /* rollback, ROLLBACK TO: drop uncommitted */
void store_rmem_committed(store_t *s, bool ok);   /* after store_commit's COMMIT */
void store_rmem_capture(store_t *s, const struct store_rcpt_ctx *ctx); /* NULL: stop */
bool store_rmem_captured(store_t *s);             /* the last capture took a row */
void store_rmem_free(store_t *s);

/* The statement for sql, prepared on first use. NULL on error (logged). */
sqlite3_stmt *store_stmt(store_t *s, const char *sql);

/* Log sqlite's message for what, return the mapped error. */
int store_fail(store_t *s, int rc, const char *what);

/* Open the iteration's transaction on first write. */
int store_tx(store_t *s);

/* Step a write statement to completion, reset and clear it. 0 or error. */
int store_run(store_t *s, sqlite3_stmt *st, const char *what);

/* Bind text, or NULL when v is NULL (copied: SQLITE_TRANSIENT). */
void store_bind_text(sqlite3_stmt *st, int i, const char *v);

#endif
