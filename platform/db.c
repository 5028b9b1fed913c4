/* db.c - SQLite open/migrate/close with WAL (see db.h). */
#include "db.h"

#include "error.h"
#include "log.h"
#include "memc.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

/* db_open's busy timeout (ms): how long a commit waits for another writer. */
#define DB_BUSY_MS 5000

int db_err(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_DONE:
    case SQLITE_ROW:
        return 0;
    case SQLITE_FULL:
        return TDG_EDB_FULL;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return TDG_EDB_CORRUPT;
    case SQLITE_NOMEM:
        return -ENOMEM;
    case SQLITE_PERM:
    case SQLITE_AUTH:
        return -EACCES;
    case SQLITE_READONLY:
        return -EROFS;
    case SQLITE_IOERR:
        return -EIO;
    case SQLITE_CANTOPEN:
        return -ENOENT;
    case SQLITE_CONSTRAINT:
        return TDG_EDUPLICATE;
    case SQLITE_TOOBIG:
        return TDG_ETOOBIG;
    default:
        return TDG_EDB;
    }
}

int db_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **out)
{
    int rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, out, NULL);
    if (rc != SQLITE_OK) {
        LOG_ERROR("db", "prepare failed: %s: %s", sqlite3_errmsg(db), sql);
        return TDG_EDB;
    }
    return 0;
}

/* Whether a failed write most likely met a lack of room rather than a
 * broken disk: SQLite only says SQLITE_FULL for ENOSPC, reports EFBIG (a
 * file-size limit) or EDQUOT (a quota) as SQLITE_IOERR_WRITE, and by the
 * time it returns, errno may already be overwritten by its unlock calls. So
 * also look: a finite RLIMIT_FSIZE, or less than 1 MiB free on the file's
 * file system. */
static bool no_room(sqlite3 *db)
{
    int sys = sqlite3_system_errno(db);
    if (sys == ENOSPC || sys == EFBIG || sys == EDQUOT) {
        return true;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        return true;
    }
    const char *file = sqlite3_db_filename(db, "main");
    struct statvfs vfs;
    if (file && file[0] && statvfs(file, &vfs) == 0) {
        uint64_t avail = (uint64_t)vfs.f_bavail * (uint64_t)vfs.f_frsize;
        return avail < 1024u * 1024u;
    }
    return false;
}

/* db_err, with a failed write that met a lack of room reported as
 * TDG_EDB_FULL ("database or disk is full") instead of an I/O error. */
static int db_err_sys(sqlite3 *db, int rc)
{
    int e = db_err(rc) ? db_err(rc) : TDG_EDB;
    if (e == -EIO &&
        (rc == SQLITE_IOERR_WRITE || rc == SQLITE_IOERR_TRUNCATE || rc == SQLITE_IOERR) &&
        no_room(db)) {
        return TDG_EDB_FULL;
    }
    return e;
}

/* sqlite3_exec with the result mapped; quiet leaves logging to the caller. */
static int exec_sql(sqlite3 *db, const char *sql, bool quiet)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        int e = db_err_sys(db, rc);
        if (!quiet) {
            LOG_ERROR("db", "%s (%s; sqlite=%d errno=%d)%s", msg ? msg : sqlite3_errstr(rc), sql,
                      sqlite3_extended_errcode(db), sqlite3_system_errno(db),
                      e == TDG_EDB_FULL && (rc & 0xff) != SQLITE_FULL
                          ? ": taken as no room (file-size limit, quota or disk full)"
                          : "");
        }
        sqlite3_free(msg);
        return e;
    }
    return 0;
}

int db_exec(sqlite3 *db, const char *sql)
{
    return exec_sql(db, sql, false);
}

int db_begin(sqlite3 *db)
{
    return db_exec(db, "BEGIN IMMEDIATE");
}

int db_commit(sqlite3 *db)
{
    return db_exec(db, "COMMIT");
}

int db_commit_quiet(sqlite3 *db)
{
    return exec_sql(db, "COMMIT", true);
}

void db_rollback(sqlite3 *db)
{
    if (!sqlite3_get_autocommit(db)) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    }
}

static int query_int(sqlite3 *db, const char *sql, int *out)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            *out = sqlite3_column_int(st, 0);
            rc = SQLITE_OK;
        }
    }
    sqlite3_finalize(st);
    return rc;
}

/* SQLite's process-wide settings, once, before its first use in the
 * process (sqlite3_config refuses them afterwards: SQLITE_MISUSE, harmless;
 * then they stay as they were, which is only slower).
 *
 * Memory statistics off: with them on (Debian's default), every
 * sqlite3_malloc and sqlite3_free takes a global mutex to count bytes -
 * about 200 lock/unlock pairs per notification in the hub, 1/10 of its
 * instructions. Nothing here reads sqlite3_memory_used() or sets a soft
 * heap limit, which are all they serve. */
static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static bool global_done;        /* set by global_init */
static bool stmt_journal_mem;   /* db_stmt_journals_in_memory() */

/* Statement journals: SQLite's default (in memory up to 64 KiB, then a temp
 * file), or always in memory (db_stmt_journals_in_memory: the hub). A
 * statement inside a larger transaction that may fail half-way
 * (constraints, triggers, several rows), and a savepoint, journals every
 * page it changes so that it can be undone alone. The threshold must not
 * be raised: Debian 12's SQLite (3.40.1) fails a large statement with
 * SQLITE_FULL ("database or disk is full") once its journal spills past a
 * threshold above about 128 KiB (SQLITE_CONFIG_STMTJRNL_SPILL of 1 MiB, as
 * the hub had: schema v12's migration of a 400,000-row receipt_log failed
 * and the hub could not start; test_platform test_big_statement). A
 * negative threshold (never spill) does not take that path. */

/* --- SQLite's allocator: freed small blocks kept for reuse ----------------
 *
 * Debian's SQLite is built with SQLITE_OMIT_LOOKASIDE: every allocation of
 * a statement run (the registers' buffers, the record being built, cursors)
 * goes to malloc and back to free when the statement is reset - about 50
 * pairs per notification in the hub, ~12k instructions in glibc (its
 * per-thread cache holds only 7 blocks per size and overflows here). The
 * small-block allocator of memc.h keeps freed blocks per power-of-two size
 * class (32 B .. 4 KiB) for the next allocation of that class: a list pop
 * instead of malloc. Larger blocks go to malloc directly.
 *
 * Only the thread that owns memc's lists uses them (the event loop's: the
 * first db_open claims it, and it is the only user of the connections from
 * db_open); other threads (checkpoint workers) get and return their blocks
 * through malloc and free, so a block may be freed on any thread. Not
 * installed where memc is off (AddressSanitizer), so that ASan still sees
 * each of SQLite's blocks. */
static void *sq_malloc(int n)
{
    return n > 0 ? memc_alloc((size_t)n) : NULL;
}

static void sq_free(void *p)
{
    memc_free(p);
}

static void *sq_realloc(void *p, int n)
{
    return n > 0 ? memc_realloc(p, (size_t)n) : NULL;
}

static int sq_size(void *p)
{
    size_t n = memc_size(p);
    return n > INT32_MAX ? INT32_MAX : (int)n;
}

static int sq_roundup(int n)
{
    size_t r = memc_roundup(n > 0 ? (size_t)n : 1);
    return r > INT32_MAX ? n : (int)r;
}

static int sq_init(void *arg)
{
    (void)arg;
    return SQLITE_OK;
}

static void sq_shutdown(void *arg)
{
    (void)arg;
}

static void global_init(void)
{
    global_done = true;
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    /* No bulk page-cache allocation: SQLite's default sets aside 20 pages
     * (~87 KiB of 4 KiB pages) per connection at its first read, and
     * links them into a free list, which touches every one: resident
     * memory for a connection whose database has 3 pages (the agent's
     * policy.db, the checkpoint workers'). Pages are then allocated one
     * at a time as a cache fills (docs/agent.md, "Memory"). */
    sqlite3_config(SQLITE_CONFIG_PAGECACHE, (void *)NULL, 0, 0);
    if (stmt_journal_mem) {
        sqlite3_config(SQLITE_CONFIG_STMTJRNL_SPILL, -1);
    }
    struct memc_stats ms;
    memc_get_stats(&ms);
    if (ms.enabled) {
        static const sqlite3_mem_methods methods = {
            sq_malloc, sq_free, sq_realloc, sq_size, sq_roundup, sq_init, sq_shutdown, NULL,
        };
        if (sqlite3_config(SQLITE_CONFIG_MALLOC, &methods) == SQLITE_OK) {
            memc_claim();
        }
    }
}

int db_stmt_journals_in_memory(void)
{
    if (global_done) {
        return -EBUSY;
    }
    stmt_journal_mem = true;
    return 0;
}

int db_open(const char *path, enum db_sync sync, const struct db_migration *migrations, size_t n,
            sqlite3 **out, char *err, size_t errlen)
{
    *out = NULL;
    pthread_once(&global_once, global_init);
    /* Create the file ourselves so its mode is 0600 whatever the umask. */
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(e));
        return -e;
    }
    close(fd);

    /* NOMUTEX: the connection is used by one thread only (the caller's
     * event loop: the agent's outbox and policy cache, the hub's store).
     * Every other thread has its own connection (db_ckpt_start's worker,
     * the hub's checkpoint worker). FULLMUTEX took the connection's mutex
     * in every sqlite3_step, _reset, _bind_* and _column_* call for
     * nothing. */
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close_v2(db);
        return db_err(rc) ? db_err(rc) : TDG_EDB;
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, DB_BUSY_MS);

    /* The first statement that reads the header finds out whether this is a
     * database at all; report it with the path instead of starting over. */
    char *msg = NULL;
    rc = sqlite3_exec(db, "PRAGMA journal_mode=WAL", NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        int e = db_err(rc);
        snprintf(err, errlen, "%s: %s%s", path, msg ? msg : sqlite3_errstr(rc),
                 e == TDG_EDB_CORRUPT ? " (not a database or corrupt; move it aside to start fresh)"
                                      : "");
        sqlite3_free(msg);
        sqlite3_close_v2(db);
        return e ? e : TDG_EDB;
    }
    static const char *const sync_sql[] = {"PRAGMA synchronous=OFF", "PRAGMA synchronous=NORMAL",
                                           "PRAGMA synchronous=FULL"};
    if (db_exec(db, sync_sql[sync]) < 0 || db_exec(db, "PRAGMA foreign_keys=ON") < 0) {
        snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(db));
        sqlite3_close_v2(db);
        return TDG_EDB;
    }

    int version = 0;
    rc = query_int(db, "PRAGMA user_version", &version);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(db));
        sqlite3_close_v2(db);
        return db_err(rc) ? db_err(rc) : TDG_EDB;
    }
    int newest = n ? migrations[n - 1].version : 0;
    if (version > newest) {
        snprintf(err, errlen, "%s: schema version %d is newer than this program (%d)", path,
                 version, newest);
        sqlite3_close_v2(db);
        return TDG_ESCHEMA;
    }
    for (size_t i = 0; i < n; i++) {
        if (migrations[i].version <= version) {
            continue;
        }
        char set[64];
        snprintf(set, sizeof(set), "PRAGMA user_version=%d", migrations[i].version);
        int e = db_begin(db);
        if (e == 0) {
            e = db_exec(db, migrations[i].sql);
        }
        if (e == 0) {
            e = db_exec(db, set);
        }
        if (e == 0) {
            e = db_commit(db);
        }
        if (e < 0) {
            snprintf(err, errlen, "%s: migration %d failed: %s", path, migrations[i].version,
                     sqlite3_errmsg(db));
            db_rollback(db);
            sqlite3_close_v2(db);
            return e;
        }
        LOG_INFO("db", "%s: schema migrated to version %d", path, migrations[i].version);
    }
    *out = db;
    return 0;
}

int db_move_aside(const char *path, int64_t now_s, char *moved, size_t movedlen, char *err,
                  size_t errlen)
{
    static const char *const sfx[] = {"", "-wal", "-shm"};
    char base[512];
    if ((size_t)snprintf(base, sizeof(base), "%s.corrupt-%lld", path, (long long)now_s) >=
        sizeof(base)) {
        snprintf(err, errlen, "%s: path too long to move aside", path);
        return -ENAMETOOLONG;
    }
    /* Never overwrite an earlier copy (two resets within one second). */
    struct stat sb;
    if (lstat(base, &sb) == 0) {
        snprintf(err, errlen, "%s: cannot move aside: %s already exists", path, base);
        return -EEXIST;
    }
    /* The main file last: if a rename fails half way, the database (with
     * whatever -wal/-shm remain) is still where the agent looks for it. */
    for (int i = 2; i >= 0; i--) {
        char from[520], to[520];
        if ((size_t)snprintf(from, sizeof(from), "%s%s", path, sfx[i]) >= sizeof(from) ||
            (size_t)snprintf(to, sizeof(to), "%s%s", base, sfx[i]) >= sizeof(to)) {
            snprintf(err, errlen, "%s: path too long to move aside", path);
            return -ENAMETOOLONG;
        }
        if (rename(from, to) < 0) {
            int e = errno;
            if (e == ENOENT) {
                continue; /* no -wal / -shm: nothing to move */
            }
            snprintf(err, errlen, "%s: cannot move to %s: %s", from, to, strerror(e));
            return -e;
        }
        /* rename keeps the mode; make sure of 0600 whatever it was. */
        if (chmod(to, 0600) < 0) {
            LOG_WARN("db", "%s: chmod 0600: %s", to, strerror(errno));
        }
        LOG_WARN("db", "moved unusable %s to %s", from, to);
    }
    snprintf(moved, movedlen, "%s", base);
    return 0;
}

void db_close(sqlite3 *db)
{
    if (!db) {
        return;
    }
    int rc = sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
    if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
        LOG_WARN("db", "checkpoint on close: %s", sqlite3_errmsg(db));
    }
    /* close_v2 defers until every prepared statement is finalized; owners
     * finalize theirs before calling db_close. */
    rc = sqlite3_close_v2(db);
    if (rc != SQLITE_OK) {
        LOG_WARN("db", "close: %s", sqlite3_errstr(rc));
    }
}

/* --- WAL checkpoints on a worker thread (db.h) ----------------------------
 *
 * Why the worker restarts the WAL (measured, docs/bench.md e2e-latency):
 * SQLite starts the WAL over only in a write transaction that begins when
 * every frame has been copied into the database (nBackfill == mxFrame). A
 * PASSIVE checkpoint copies what the WAL held when it began; under a steady
 * writer more frames arrive while it copies and syncs (at 5,000/s in the
 * agent, 50-100 pages during a 5-10 ms checkpoint), so the WAL was never
 * fully copied when the next transaction began, reached the restart bound,
 * and the caller's thread checkpointed itself: a WAL sync, a database sync
 * and the new WAL header's sync in its commits, every ~200 ms. Restarting
 * needs the writer held off for the last copy; the worker now does it
 * itself: a RESTART checkpoint (it takes the writer's lock, copies the few
 * pages left since its PASSIVE round, syncs, and waits for readers to leave
 * the WAL), then a one-page write transaction of its own (user_version
 * rewritten unchanged) that starts the WAL over and pays the header's
 * sync. A caller that commits all the time would keep taking the writer's
 * lock back, so while the worker restarts, the caller's WAL hook (after a
 * commit, outside any transaction) waits for it to finish: the caller's
 * wait is the worker's last copy and syncs, and it never syncs for a
 * checkpoint itself. */

/* How long the worker waits for the writer's lock (and for readers to leave
 * the WAL) in a RESTART before trying again at its next wake-up. */
#define CKPT_RESTART_WAIT_MS 250
/* The caller checkpoints itself only past this many times restart_pages
 * (the worker stuck or failing): the WAL stays bounded regardless. */
#define CKPT_HARD_FACTOR 4

struct db_ckpt {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* wakes the worker */
    pthread_cond_t done_cv; /* restarting went false */
    pthread_cond_t park_cv; /* parked went true */
    bool want, stop;        /* under mu */
    bool restarting;        /* under mu: the worker holds or wants the writer's lock */
    bool parked;            /* under mu: the caller waits in its hook, outside a transaction */
    int last_rc;            /* under mu: the worker's last result */
    struct db_ckpt_stats st; /* under mu (the caller's fields too) */
    sqlite3 *wdb;           /* the worker's connection */
    int wpages;             /* the worker's thread: WAL pages after its last commit */
    struct timespec wbusy_t0; /* the worker's thread: start of its busy wait */
    /* the caller's side only */
    sqlite3 *db;
    int pages, restart_pages, hard_pages;
    int mark;  /* WAL pages when the worker was last woken */
    int last;  /* WAL pages after the previous commit */
    int logged_rc;
    bool hard_logged;
    struct timespec busy_t0; /* the caller's busy handler: start of this wait */
};

/* The CLOCK_REALTIME moment ms from now: pthread_cond_timedwait's deadline. */
static struct timespec realtime_in(int64_t ms)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    int64_t ns = t.tv_nsec + (ms % 1000) * 1000000;
    t.tv_sec += (time_t)(ms / 1000 + ns / 1000000000);
    t.tv_nsec = (long)(ns % 1000000000);
    return t;
}

/* Microseconds and milliseconds on CLOCK_MONOTONIC since t0. */
static int64_t us_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)(now.tv_sec - t0->tv_sec) * 1000000 + (now.tv_nsec - t0->tv_nsec) / 1000;
}

static int64_t ms_since(const struct timespec *t0)
{
    return us_since(t0) / 1000;
}

/* The worker connection's WAL hook: only records the size (and, being set,
 * keeps SQLite's automatic checkpoint off on this connection too). */
static int ckpt_worker_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    (void)db;
    (void)name;
    ((struct db_ckpt *)arg)->wpages = pages;
    return SQLITE_OK;
}

/* The worker connection's busy handler: the caller's writer's lock is
 * released at its next commit, where the caller parks (ckpt_hook) while
 * restarting is set; wait for that rather than polling a lock the caller
 * takes again at once. Gives up after CKPT_RESTART_WAIT_MS. */
static int ckpt_worker_busy(void *arg, int count)
{
    struct db_ckpt *c = arg;
    if (count == 0) {
        clock_gettime(CLOCK_MONOTONIC, &c->wbusy_t0);
    }
    if (ms_since(&c->wbusy_t0) >= CKPT_RESTART_WAIT_MS) {
        return 0;
    }
    struct timespec until = realtime_in(1); /* 1 ms: a holder other than the caller is polled */
    pthread_mutex_lock(&c->mu);
    if (!c->parked) {
        pthread_cond_timedwait(&c->park_cv, &c->mu, &until);
    }
    pthread_mutex_unlock(&c->mu);
    return 1;
}

/* Start the WAL over (see above). Called by the worker with mu unlocked,
 * restarting set. */
static int ckpt_restart(struct db_ckpt *c)
{
    int rc = sqlite3_wal_checkpoint_v2(c->wdb, NULL, SQLITE_CHECKPOINT_RESTART, NULL, NULL);
    if (rc != SQLITE_OK) {
        return rc;
    }
    /* Every frame is in the database and no reader uses the WAL: the next
     * write transaction starts it over. Be that one. Rewriting user_version
     * unchanged is a one-page transaction that no schema or statement of
     * the caller notices. */
    int v = 0;
    rc = sqlite3_exec(c->wdb, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc == SQLITE_OK) {
        rc = query_int(c->wdb, "PRAGMA user_version", &v);
    }
    if (rc == SQLITE_OK) {
        char sql[48];
        snprintf(sql, sizeof(sql), "PRAGMA user_version=%d", v);
        rc = sqlite3_exec(c->wdb, sql, NULL, NULL, NULL);
    }
    if (rc == SQLITE_OK) {
        c->wpages = -1;
        rc = sqlite3_exec(c->wdb, "COMMIT", NULL, NULL, NULL);
    }
    if (rc != SQLITE_OK && !sqlite3_get_autocommit(c->wdb)) {
        sqlite3_exec(c->wdb, "ROLLBACK", NULL, NULL, NULL);
    }
    return rc;
}

static void *ckpt_main(void *arg)
{
    struct db_ckpt *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->want && !c->stop) {
            pthread_cond_wait(&c->cv, &c->mu);
        }
        if (c->stop) {
            break;
        }
        c->want = false;
        pthread_mutex_unlock(&c->mu);
        /* The bulk of the copy, without the writer's lock. */
        int nlog = 0;
        int rc = sqlite3_wal_checkpoint_v2(c->wdb, NULL, SQLITE_CHECKPOINT_PASSIVE, &nlog, NULL);
        bool restart = rc == SQLITE_OK && nlog >= c->restart_pages;
        int rrc = SQLITE_OK;
        if (restart) {
            pthread_mutex_lock(&c->mu);
            c->restarting = true;
            pthread_mutex_unlock(&c->mu);
            rrc = ckpt_restart(c);
        }
        pthread_mutex_lock(&c->mu);
        c->st.passive++;
        if (restart) {
            c->restarting = false;
            pthread_cond_broadcast(&c->done_cv);
            if (rrc == SQLITE_OK && c->wpages == 1) {
                c->st.restarts++;
            } else {
                c->st.restart_busy++; /* the caller got there first, or busy: next time */
            }
        }
        /* BUSY: another checkpoint was running, or the writer's lock or a
         * reader did not come free in time; the next wake-up retries.
         * nlog -1: the connection does not see a WAL (cannot happen after
         * the read in db_ckpt_start; reported rather than silently idle). */
        c->last_rc = rc == SQLITE_BUSY ? SQLITE_OK : rc == SQLITE_OK && nlog < 0 ? SQLITE_MISUSE : rc;
        if (c->last_rc == SQLITE_OK && (rrc & 0xff) != SQLITE_BUSY) {
            c->last_rc = rrc;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* The caller's connection's busy handler while the worker runs: a commit
 * that finds the writer's lock taken by the worker's restart waits for the
 * worker to say it is done (a few milliseconds) instead of SQLite's
 * stepped sleeps (1, 2, 5, 10 ... ms); any other holder (another process)
 * is polled in short steps. Gives up after DB_BUSY_MS, as db_open's. */
static int ckpt_busy(void *arg, int count)
{
    struct db_ckpt *c = arg;
    if (count == 0) {
        clock_gettime(CLOCK_MONOTONIC, &c->busy_t0);
    }
    int64_t left = DB_BUSY_MS - ms_since(&c->busy_t0);
    if (left <= 0) {
        return 0;
    }
    int64_t step_ms = count < 10 ? 1 : count < 100 ? 5 : 20;
    if (step_ms > left) {
        step_ms = left;
    }
    pthread_mutex_lock(&c->mu);
    if (c->restarting) {
        struct timespec until = realtime_in(step_ms > 20 ? step_ms : 20);
        while (c->restarting &&
               pthread_cond_timedwait(&c->done_cv, &c->mu, &until) == 0) {
        }
        pthread_mutex_unlock(&c->mu);
        return 1;
    }
    pthread_mutex_unlock(&c->mu);
    struct timespec ts = {0, (long)(step_ms * 1000000)};
    nanosleep(&ts, NULL);
    return 1;
}

static void wake_worker(struct db_ckpt *c)
{
    pthread_mutex_lock(&c->mu);
    c->want = true;
    int wrc = c->last_rc;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (wrc != c->logged_rc) {
        c->logged_rc = wrc;
        if (wrc != SQLITE_OK) {
            LOG_WARN("db", "background checkpoint: %s (the WAL grows to %d pages, then the "
                     "loop checkpoints)", sqlite3_errstr(wrc), c->hard_pages);
        } else {
            LOG_INFO("db", "background checkpoint works again");
        }
    }
}

/* sqlite3_wal_hook: after each commit of the caller's connection, outside
 * its transaction, with the WAL's size in pages. Never checkpoints unless
 * the WAL is past hard_pages (the worker stuck or failing). */
static int ckpt_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    struct db_ckpt *c = arg;
    pthread_mutex_lock(&c->mu);
    if (c->restarting) {
        /* The worker wants the writer's lock for its restart, which a
         * caller that commits all the time would keep taking back: wait
         * here, between transactions, until it is done (its copy of the
         * last pages and its syncs: the wait a commit would have had on
         * the lock). Bounded by db_open's busy timeout. */
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        struct timespec until = realtime_in(DB_BUSY_MS);
        c->parked = true;
        pthread_cond_signal(&c->park_cv);
        while (c->restarting && pthread_cond_timedwait(&c->done_cv, &c->mu, &until) == 0) {
        }
        c->parked = false;
        int64_t us = us_since(&t0);
        c->st.parked++;
        c->st.parked_us_max = us > c->st.parked_us_max ? us : c->st.parked_us_max;
    }
    if (pages < c->last) {
        c->mark = 0; /* the WAL started over */
        c->st.wal_restarts++;
    }
    c->st.wal_pages = pages;
    pthread_mutex_unlock(&c->mu);
    c->last = pages;
    if (pages >= c->hard_pages) {
        if (!c->hard_logged) {
            c->hard_logged = true;
            LOG_WARN("db", "checkpoint worker behind: the WAL holds %d pages; checkpointing in "
                     "the commit until it starts over", pages);
        }
        /* BUSY (the worker is in a checkpoint): returns at once; the next
         * commit tries again. */
        int rc = sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
            LOG_WARN("db", "checkpoint: %s", sqlite3_errstr(rc));
        }
        if (rc != SQLITE_BUSY) {
            pthread_mutex_lock(&c->mu);
            c->st.caller_ckpts++;
            pthread_mutex_unlock(&c->mu);
        }
        return SQLITE_OK;
    }
    if (c->hard_logged && pages < c->restart_pages) {
        c->hard_logged = false;
        LOG_INFO("db", "checkpoint worker caught up: the WAL started over");
    }
    if (pages - c->mark >= c->pages || (pages >= c->restart_pages && c->mark < c->restart_pages)) {
        c->mark = pages;
        wake_worker(c);
    }
    return SQLITE_OK;
}

void db_ckpt_stats(db_ckpt_t *c, struct db_ckpt_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!c) {
        return;
    }
    pthread_mutex_lock(&c->mu);
    *out = c->st;
    pthread_mutex_unlock(&c->mu);
}

db_ckpt_t *db_ckpt_start(sqlite3 *db, const char *path, int pages, int restart_pages)
{
    struct db_ckpt *c = calloc(1, sizeof(*c));
    if (!c) {
        LOG_WARN("db", "%s: checkpoints stay in commits: out of memory", path);
        return NULL;
    }
    c->db = db;
    c->pages = pages > 0 ? pages : 1000;
    c->restart_pages = restart_pages > c->pages ? restart_pages : c->pages * 4;
    c->hard_pages = c->restart_pages > INT32_MAX / CKPT_HARD_FACTOR
                        ? INT32_MAX
                        : c->restart_pages * CKPT_HARD_FACTOR;
    /* The worker commits (ckpt_restart) with the caller's synchronous
     * setting, so its commit is as durable as the caller's would be. */
    int sync = 1;
    if (query_int(db, "PRAGMA synchronous", &sync) != SQLITE_OK || sync < 0 || sync > 3) {
        sync = 2;
    }
    /* Its commit starts the WAL over, so it is the one that cuts the file
     * back to the caller's journal_size_limit. */
    int jlimit = -1;
    if (query_int(db, "PRAGMA journal_size_limit", &jlimit) != SQLITE_OK) {
        jlimit = -1;
    }
    int rc = sqlite3_open_v2(path, &c->wdb, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_extended_result_codes(c->wdb, 1);
        sqlite3_busy_timeout(c->wdb, CKPT_RESTART_WAIT_MS);
        char pragma[96];
        snprintf(pragma, sizeof(pragma), "PRAGMA synchronous=%d; PRAGMA journal_size_limit=%d",
                 sync, jlimit);
        rc = sqlite3_exec(c->wdb, pragma, NULL, NULL, NULL);
    }
    if (rc == SQLITE_OK) {
        /* A connection opens the WAL only in its first read transaction;
         * until then SQLite (3.40) takes the file for a rollback-journal
         * database and a checkpoint returns OK having done nothing. A small
         * cache: checkpoints copy frames without it. */
        rc = sqlite3_exec(c->wdb,
                          "PRAGMA cache_size=-16; PRAGMA mmap_size=0;"
                          " SELECT count(*) FROM sqlite_master",
                          NULL, NULL, NULL);
    }
    /* What is set up so far, undone in reverse on failure. */
    int stage = 0; /* 1: the mutex; then one more per condition variable */
    const char *why = NULL;
    pthread_cond_t *const cvs[] = {&c->cv, &c->done_cv, &c->park_cv};
    if (rc != SQLITE_OK) {
        why = sqlite3_errstr(rc);
    } else if (pthread_mutex_init(&c->mu, NULL) != 0) {
        why = "no mutex";
    } else {
        stage = 1;
        while (stage < 4 && pthread_cond_init(cvs[stage - 1], NULL) == 0) {
            stage++;
        }
        if (stage < 4) {
            why = "no condition variable";
        }
    }
    if (!why) {
        /* A small stack: the worker only runs checkpoints, and touched
         * stack pages count as RSS (docs/bench.md, agent-footprint). */
        pthread_attr_t attr;
        bool have_attr = pthread_attr_init(&attr) == 0;
        if (have_attr) {
            pthread_attr_setstacksize(&attr, 256 * 1024);
        }
        rc = pthread_create(&c->th, have_attr ? &attr : NULL, ckpt_main, c);
        if (have_attr) {
            pthread_attr_destroy(&attr);
        }
        if (rc != 0) {
            why = strerror(rc);
        }
    }
    if (why) {
        LOG_WARN("db", "%s: checkpoints stay in commits: %s", path, why);
        for (; stage > 1; stage--) {
            pthread_cond_destroy(cvs[stage - 2]);
        }
        if (stage == 1) {
            pthread_mutex_destroy(&c->mu);
        }
        sqlite3_close_v2(c->wdb);
        free(c);
        return NULL;
    }
    sqlite3_wal_hook(c->wdb, ckpt_worker_hook, c);
    sqlite3_busy_handler(c->wdb, ckpt_worker_busy, c);
    sqlite3_wal_hook(db, ckpt_hook, c); /* replaces the automatic checkpoint */
    sqlite3_busy_handler(db, ckpt_busy, c);
    return c;
}

void db_ckpt_stop(db_ckpt_t *c)
{
    if (!c) {
        return;
    }
    struct db_ckpt_stats st;
    db_ckpt_stats(c, &st);
    LOG_INFO("db", "checkpoints: %llu passive and %llu restarts by the worker (%llu tried again "
             "later); the loop waited for %llu restarts (at most %lld us) and checkpointed %llu "
             "times itself",
             (unsigned long long)st.passive, (unsigned long long)st.restarts,
             (unsigned long long)st.restart_busy, (unsigned long long)st.parked,
             (long long)st.parked_us_max, (unsigned long long)st.caller_ckpts);
    sqlite3_wal_autocheckpoint(c->db, 1000); /* SQLite's own again (also drops our hook) */
    sqlite3_busy_timeout(c->db, DB_BUSY_MS);  /* db_open's again (drops ckpt_busy) */
    pthread_mutex_lock(&c->mu);
    c->stop = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->th, NULL);
    sqlite3_close_v2(c->wdb);
    pthread_cond_destroy(&c->park_cv);
    pthread_cond_destroy(&c->done_cv);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c);
}
