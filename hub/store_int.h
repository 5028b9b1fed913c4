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

#define STORE_STMT_SLOTS 256 /* open addressing; far more than there are queries */

struct store_stmt_slot {
    const char *sql;
    sqlite3_stmt *st;
};

struct store {
    sqlite3 *db;
    sqlite3_stmt *q[16]; /* store.c's own hot statements */
    struct store_stmt_slot stmts[STORE_STMT_SLOTS];
    bool in_tx;
    struct pii *pii;           /* store_dir.c: the keyring (not owned) */
    int64_t reencrypt_after;   /* store_dir.c: store_dir_reencrypt's cursor */
    db_ckpt_t *ckpt;           /* WAL checkpoints off the loop (db_ckpt_start; NULL: SQLite's own) */
    struct dir_cache *dcache;  /* store_dir.c: users' active endpoints (NULL: none) */
    struct rowid_hint *hints;  /* store.c: notification id -> rowid (NULL: none) */
};

/* The migrations of the other domains (store.c lists them in order). */
extern const char store_sql_directory[]; /* v2, store_dir.c */
extern const char store_sql_policy[];    /* v3, store_policy.c */
extern const char store_sql_sched[];     /* v4, store_sched.c */
extern const char store_sql_engine[];    /* v5, store_engine.c */
extern const char store_sql_channels[];  /* v6, store_channels.c */
extern const char store_sql_admin[];     /* v7, store_admin.c */

/* store_dir.c: the cache of store_user_devices. store_dir_open installs
 * the connection's update, commit and rollback hooks (they keep the cache
 * right whatever writes `devices` or `users`: nothing else may install
 * those hooks); -ENOMEM leaves the store without a cache. store_dir_close
 * removes them and zeroes the cache; store_dir_cache_clear empties it. */
int store_dir_open(store_t *s);
void store_dir_close(store_t *s);
void store_dir_cache_clear(store_t *s);

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
