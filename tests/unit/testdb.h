/* testdb.h - what unit tests do to a SQLite database from outside the code
 * under test (the hub's store, platform/db.c): a query on a connection of
 * its own, and the files removed afterwards. Header-only; include after
 * <cmocka.h>. */
#ifndef TIDINGS_TESTDB_H
#define TIDINGS_TESTDB_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* Run sql on a second connection to path; its first column's integer
 * (-1 when there is no row). */
static inline int64_t testdb_int(const char *path, const char *sql)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    int64_t v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* Run sql on a second connection to path; the test fails on an error. */
static inline void testdb_exec(const char *path, const char *sql)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        fail_msg("%s: %s", sql, msg ? msg : "?");
    }
    sqlite3_close(db);
}

/* Make a fresh directory from tmpl (a mkdtemp template) into dir and put
 * the path of name in it into path: 0, or -1 when mkdtemp fails. */
static inline int testdb_tmpdir(char *dir, size_t dirlen, const char *tmpl, char *path,
                                size_t pathlen, const char *name)
{
    snprintf(dir, dirlen, "%s", tmpl);
    if (!mkdtemp(dir)) {
        return -1;
    }
    snprintf(path, pathlen, "%s/%s", dir, name);
    return 0;
}

/* Remove the database at path with its WAL and shared-memory files, then
 * its directory dir. */
static inline void testdb_remove(const char *path, const char *dir)
{
    const char *suffix[] = {"", "-wal", "-shm"};
    char p[256];
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof(p), "%s%s", path, suffix[i]);
        unlink(p);
    }
    rmdir(dir);
}

#endif
