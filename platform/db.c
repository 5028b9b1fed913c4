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
#include <unistd.h>

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
    sqlite3_busy_timeout(db, 5000);

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

/* --- WAL checkpoints on a worker thread (db.h) ---------------------------- */

struct db_ckpt {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool want, stop; /* under mu */
    int last_rc;     /* under mu: the worker's last result */
    sqlite3 *wdb;    /* the worker's connection */
    /* the caller's side only */
    sqlite3 *db;
    int pages, restart_pages;
    int mark; /* WAL pages when the worker was last woken */
    int logged_rc;
};

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
        int nlog = 0;
        int rc = sqlite3_wal_checkpoint_v2(c->wdb, NULL, SQLITE_CHECKPOINT_PASSIVE, &nlog, NULL);
        pthread_mutex_lock(&c->mu);
        /* BUSY: another checkpoint was running; the next wake-up retries.
         * nlog -1: the connection does not see a WAL (cannot happen after
         * the read in db_ckpt_start; reported rather than silently idle). */
        c->last_rc = rc == SQLITE_BUSY ? SQLITE_OK : rc == SQLITE_OK && nlog < 0 ? SQLITE_MISUSE : rc;
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* sqlite3_wal_hook: after each commit of the caller's connection, outside
 * its transaction, with the WAL's size in pages. */
static int ckpt_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    struct db_ckpt *c = arg;
    if (pages < c->mark) {
        c->mark = 0; /* the WAL started over */
    }
    if (pages >= c->restart_pages) {
        int rc = sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
            LOG_WARN("db", "checkpoint: %s", sqlite3_errstr(rc));
        }
        c->mark = 0;
        return SQLITE_OK;
    }
    if (pages - c->mark >= c->pages) {
        c->mark = pages;
        pthread_mutex_lock(&c->mu);
        c->want = true;
        int wrc = c->last_rc;
        pthread_cond_signal(&c->cv);
        pthread_mutex_unlock(&c->mu);
        if (wrc != c->logged_rc) {
            c->logged_rc = wrc;
            if (wrc != SQLITE_OK) {
                LOG_WARN("db", "background checkpoint: %s (the WAL grows to %d pages, then the "
                         "loop checkpoints)", sqlite3_errstr(wrc), c->restart_pages);
            } else {
                LOG_INFO("db", "background checkpoint works again");
            }
        }
    }
    return SQLITE_OK;
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
    int rc = sqlite3_open_v2(path, &c->wdb, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_busy_timeout(c->wdb, 1000);
        /* A connection opens the WAL only in its first read transaction;
         * until then SQLite (3.40) takes the file for a rollback-journal
         * database and a checkpoint returns OK having done nothing. A small
         * cache: checkpoints copy frames without it. */
        rc = sqlite3_exec(c->wdb,
                          "PRAGMA cache_size=-16; PRAGMA mmap_size=0;"
                          " SELECT count(*) FROM sqlite_master",
                          NULL, NULL, NULL);
    }
    if (rc != SQLITE_OK || pthread_mutex_init(&c->mu, NULL) != 0) {
        LOG_WARN("db", "%s: checkpoints stay in commits: %s", path, sqlite3_errstr(rc));
        sqlite3_close_v2(c->wdb);
        free(c);
        return NULL;
    }
    if (pthread_cond_init(&c->cv, NULL) != 0) {
        LOG_WARN("db", "%s: checkpoints stay in commits: no condition variable", path);
        pthread_mutex_destroy(&c->mu);
        sqlite3_close_v2(c->wdb);
        free(c);
        return NULL;
    }
    /* A small stack: the worker only runs sqlite3_wal_checkpoint_v2, and
     * touched stack pages count as RSS (docs/bench.md, agent-footprint). */
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
        LOG_WARN("db", "%s: checkpoints stay in commits: %s", path, strerror(rc));
        pthread_cond_destroy(&c->cv);
        pthread_mutex_destroy(&c->mu);
        sqlite3_close_v2(c->wdb);
        free(c);
        return NULL;
    }
    sqlite3_wal_hook(db, ckpt_hook, c); /* replaces the automatic checkpoint */
    return c;
}

void db_ckpt_stop(db_ckpt_t *c)
{
    if (!c) {
        return;
    }
    sqlite3_wal_autocheckpoint(c->db, 1000); /* SQLite's own again (also drops our hook) */
    pthread_mutex_lock(&c->mu);
    c->stop = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->th, NULL);
    sqlite3_close_v2(c->wdb);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c);
}
