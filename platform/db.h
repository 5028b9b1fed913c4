/*
 * db.h - SQLite setup shared by the agent's outbox and the hub's store.
 *
 * db_open() creates the file with mode 0600 (SQLite gives the -wal and -shm
 * files the same mode), turns on WAL, sets `synchronous`, and brings the
 * schema to the newest version with numbered migrations, each in its own
 * transaction and recorded in PRAGMA user_version. A file that is not a
 * database or is corrupt is reported with its path, never reset.
 *
 * Threads: a connection from db_open() is opened SQLITE_OPEN_NOMUTEX, so it
 * must be used by one thread at a time (each user here has it on its event
 * loop's thread only; a worker opens its own connection). The first
 * db_open() in a process also turns SQLite's memory statistics off
 * (SQLITE_CONFIG_MEMSTATUS: a global mutex around every allocation), so
 * sqlite3_memory_used() and the soft heap limit are not available.
 */
#ifndef TIDINGS_DB_H
#define TIDINGS_DB_H

#include <stddef.h>
#include <stdint.h>

struct sqlite3;
struct sqlite3_stmt;

enum db_sync { DB_SYNC_OFF = 0, DB_SYNC_NORMAL, DB_SYNC_FULL };

struct db_migration {
    int version; /* 1, 2, 3 ... in order */
    const char *sql;
};

/* Keep every statement journal in memory (SQLite's default: a temp file
 * past 64 KiB), process-wide. For the hub: its transactions hold thousands
 * of notifications, and a journal that spilled was written with a pwrite
 * per page for the rest of the transaction; in memory, a statement holds
 * at most the pages it changes, freed when it ends. Not for the agent
 * (one statement may change much of a large outbox on a small box). Call
 * before the first db_open: 0, or -EBUSY once SQLite is set up. */
int db_stmt_journals_in_memory(void);

/* Open (creating if needed) path. 0 and *out, or a negative error
 * (TDG_EDB_CORRUPT, TDG_ESCHEMA, TDG_EDB, -errno) with err set to a sentence
 * naming the file. */
int db_open(const char *path, enum db_sync sync, const struct db_migration *migrations, size_t n,
            struct sqlite3 **out, char *err, size_t errlen);

/* Move an unusable database out of the way so the next db_open starts
 * fresh: path, path-wal and path-shm are renamed (same directory, so the
 * mode 0600 is kept) to <path>.corrupt-<unix time>[-wal|-shm]. Nothing is
 * deleted: an operator can still inspect or recover the old file. moved
 * gets the new name of the main file. 0, -EEXIST when that name is
 * taken, or -errno (err set naming both paths). Must not be called
 * while a connection to path is open. */
int db_move_aside(const char *path, int64_t now_s, char *moved, size_t movedlen, char *err,
                  size_t errlen);

/* Checkpoint the WAL into the main file and close. Safe with NULL. */
void db_close(struct sqlite3 *db);

/* Map a SQLite result code to a Tidings error (0 for OK/DONE/ROW). */
int db_err(int sqlite_rc);

/* Prepare a statement that lives as long as the connection. 0 or TDG_EDB. */
int db_prepare(struct sqlite3 *db, const char *sql, struct sqlite3_stmt **out);

/* Run SQL without results. 0 or a mapped error (message logged). */
int db_exec(struct sqlite3 *db, const char *sql);

/* BEGIN IMMEDIATE / COMMIT / ROLLBACK. */
int db_begin(struct sqlite3 *db);
int db_commit(struct sqlite3 *db);
void db_rollback(struct sqlite3 *db);
/* COMMIT without logging a failure: for a caller that logs a run of failed
 * commits (disk full) once rather than once per commit. A failed write
 * that met a lack of room (ENOSPC, EFBIG under a file-size limit, EDQUOT)
 * is TDG_EDB_FULL here and in db_exec/db_commit, not -EIO. */
int db_commit_quiet(struct sqlite3 *db);

/* WAL checkpoints off the caller's thread (docs/agent.md, "Checkpoints").
 *
 * SQLite's automatic checkpoint runs inside the COMMIT that crosses 1000 WAL
 * pages: it copies them into the database file and fdatasync()s it, in
 * the middle of the caller's event loop (measured: 5-10 ms on the agent,
 * several times a second under load). db_ckpt_start replaces it: a WAL
 * hook on db counts pages, and every `pages` new ones wakes a thread that
 * runs PASSIVE checkpoints on its own connection to path (they never take
 * the writer's lock, so the caller keeps committing meanwhile). Once the
 * WAL holds `restart_pages`, the worker also starts it over: a RESTART
 * checkpoint copies what came in during its PASSIVE one (the caller's
 * commits wait on the writer's lock for that, but never sync), then a
 * one-page transaction of the worker's own begins the WAL afresh. The
 * caller's thread checkpoints itself only if the WAL reaches 4 x
 * `restart_pages` (the worker stuck or failing; logged once), so the WAL
 * stays bounded whatever happens to the worker. Durability is unchanged:
 * checkpoints only move committed data; the WAL is the record, and the
 * worker's own transaction uses db's `synchronous`.
 *
 * While the worker restarts the WAL, the hook makes the caller wait after
 * its commit (outside any transaction) until it is done, and db has a busy
 * handler of the worker's that wakes a commit when it is (the limit stays
 * db_open's 5 s); db_ckpt_stop puts db_open's busy timeout back.
 *
 * The worker never logs; its errors are logged by the caller's thread from
 * the hook, once per change. Returns NULL (logged) when the thread or its
 * connection cannot be had: SQLite's automatic checkpoint then stays.
 * db must be used by one thread only (the caller's). Stop before closing
 * db; db_ckpt_stop(NULL) does nothing. */
typedef struct db_ckpt db_ckpt_t;
db_ckpt_t *db_ckpt_start(struct sqlite3 *db, const char *path, int pages, int restart_pages);
void db_ckpt_stop(db_ckpt_t *c);

/* Counts since db_ckpt_start, for tests and diagnostics. */
struct db_ckpt_stats {
    uint64_t passive;      /* PASSIVE checkpoints the worker ran */
    uint64_t restarts;     /* times the worker started the WAL over */
    uint64_t restart_busy; /* restarts tried and not done by the worker (busy; retried) */
    uint64_t wal_restarts; /* times the caller's commits saw the WAL start over */
    uint64_t parked;       /* commits after which the caller waited for a restart */
    int64_t parked_us_max; /* the longest of those waits (microseconds) */
    uint64_t caller_ckpts; /* checkpoints the caller's thread ran (past 4 x restart_pages) */
    int wal_pages;         /* WAL pages after the caller's last commit */
};
/* A copy of c's counts (all 0 for NULL). Any thread. db_ckpt_stop logs
 * them (INFO). */
void db_ckpt_stats(db_ckpt_t *c, struct db_ckpt_stats *out);

#endif
