/*
 * sqlite_rate - the raw SQLite insert-and-commit rate the agent's outbox
 * stands on, for bench/run.
 *
 *   sqlite_rate --db PATH --count N --batch B[,B...] [--sync normal|full] [--body-bytes B]
 *
 * For each batch size B: a fresh database at PATH (PATH, -wal, -shm removed
 * first) opened as platform/db.c opens the outbox (FULLMUTEX, WAL, the given
 * synchronous, foreign_keys=ON, busy timeout), the outbox's own table and
 * index (agent/outbox.c, migration 1), then N rows inserted with the
 * outbox's prepared INSERT OR IGNORE, one BEGIN IMMEDIATE ... COMMIT per B
 * rows. Bodies are notification JSON of the size the agent stores for the
 * bench's notifications (with id and accepted_at).
 *
 * Prints one line per batch size: batch=B rows=N elapsed_s=... rate=...
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char schema[] = "CREATE TABLE outbox ("
                             "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                             "  id TEXT NOT NULL UNIQUE,"
                             "  priority INTEGER NOT NULL,"
                             "  created_ms INTEGER NOT NULL,"
                             "  expires_ms INTEGER NOT NULL DEFAULT 0,"
                             "  inflight INTEGER NOT NULL DEFAULT 0,"
                             "  body BLOB NOT NULL"
                             ");"
                             "CREATE INDEX outbox_send ON outbox(inflight, priority DESC, seq);";

static const char insert_sql[] =
    "INSERT OR IGNORE INTO outbox(id, priority, created_ms, expires_ms, body) "
    "VALUES (?, ?, ?, ?, ?)";

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void check(sqlite3 *db, int rc, const char *what)
{
    if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
        fprintf(stderr, "sqlite_rate: %s: %s\n", what, sqlite3_errmsg(db));
        exit(1);
    }
}

static void exec(sqlite3 *db, const char *sql)
{
    check(db, sqlite3_exec(db, sql, NULL, NULL, NULL), sql);
}

static void usage(void)
{
    fprintf(stderr, "usage: sqlite_rate --db PATH --count N --batch B[,B...] "
                    "[--sync normal|full] [--body-bytes B]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *path = NULL, *batches = NULL, *sync = "normal";
    long long count = 0;
    int body_bytes = 100;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--db")) {
            path = argv[i + 1];
        } else if (!strcmp(argv[i], "--count")) {
            count = strtoll(argv[i + 1], NULL, 10);
        } else if (!strcmp(argv[i], "--batch")) {
            batches = argv[i + 1];
        } else if (!strcmp(argv[i], "--sync")) {
            sync = argv[i + 1];
        } else if (!strcmp(argv[i], "--body-bytes")) {
            body_bytes = (int)strtol(argv[i + 1], NULL, 10);
        } else {
            usage();
        }
    }
    if (!path || !batches || count <= 0 || body_bytes < 0 || body_bytes > 3000 ||
        (strcmp(sync, "normal") != 0 && strcmp(sync, "full") != 0)) {
        usage();
    }
    char *pad = malloc((size_t)body_bytes + 1);
    if (!pad) {
        return 2;
    }
    memset(pad, 'x', (size_t)body_bytes);
    pad[body_bytes] = '\0';

    const char *p = batches;
    while (*p) {
        char *end;
        long long batch = strtoll(p, &end, 10);
        if (batch <= 0 || end == p) {
            usage();
        }
        p = *end == ',' ? end + 1 : end;

        char aux[4200];
        unlink(path);
        snprintf(aux, sizeof(aux), "%s-wal", path);
        unlink(aux);
        snprintf(aux, sizeof(aux), "%s-shm", path);
        unlink(aux);
        sqlite3 *db = NULL;
        int rc = sqlite3_open_v2(
            path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL);
        check(db, rc, "open");
        sqlite3_busy_timeout(db, 5000);
        exec(db, "PRAGMA journal_mode=WAL");
        exec(db,
             strcmp(sync, "full") == 0 ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
        exec(db, "PRAGMA foreign_keys=ON");
        exec(db, schema);
        sqlite3_stmt *st = NULL;
        check(db, sqlite3_prepare_v3(db, insert_sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL),
              "prepare");

        char id[64], body[4096];
        double t0 = mono_s();
        long long commits = 0;
        for (long long i = 0; i < count; i++) {
            if (i % batch == 0) {
                exec(db, "BEGIN IMMEDIATE");
            }
            snprintf(id, sizeof(id), "sq%lld-0-%lld", batch, i);
            int64_t now = wall_ms();
            /* What the agent stores: the serialized notification, id first,
             * accepted_at stamped. */
            int len = snprintf(body, sizeof(body),
                               "{\"id\":\"%s\",\"to\":\"user:alice\",\"category\":\"bench\","
                               "\"priority\":\"normal\",\"title\":\"Bench %lld\",\"body\":\"%s\","
                               "\"accepted_at\":\"2026-01-01T00:00:00.000Z\"}",
                               id, i, pad);
            sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
            sqlite3_bind_int(st, 2, 1);
            sqlite3_bind_int64(st, 3, now);
            sqlite3_bind_int64(st, 4, 0);
            sqlite3_bind_blob(st, 5, body, len, SQLITE_STATIC);
            rc = sqlite3_step(st);
            sqlite3_reset(st);
            sqlite3_clear_bindings(st);
            check(db, rc, "insert");
            if ((i + 1) % batch == 0 || i + 1 == count) {
                exec(db, "COMMIT");
                commits++;
            }
        }
        double el = mono_s() - t0;
        printf("batch=%lld rows=%lld commits=%lld sync=%s elapsed_s=%.3f rate=%.0f\n", batch, count,
               commits, sync, el, el > 0 ? (double)count / el : 0.0);
        fflush(stdout);
        sqlite3_finalize(st);
        sqlite3_close_v2(db);
    }
    free(pad);
    return 0;
}
