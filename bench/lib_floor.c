/* lib_floor.c - the RSS floor of a set of shared libraries: what a process
 * that loads them (as the dynamic linker would: dlopen RTLD_NOW, every
 * relocation done) and opens one SQLite database in WAL mode holds in memory,
 * with none of the program's own code or data. bench/run agent-footprint
 * prints it beside the agent's RSS: the part of the agent's VmRSS that no
 * change to the agent's code can remove.
 *
 *   lib_floor DB LIB...   (LIB: paths, e.g. from ldd; libc is already there)
 *
 * Prints "VmRSS RssAnon RssFile" in kB on one line. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

typedef int (*open_fn)(const char *, void **, int, const char *);
typedef int (*exec_fn)(void *, const char *, void *, void *, char **);
typedef int (*close_fn)(void *);

static long status_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t kl = strlen(key);
    while (f && fgets(line, sizeof(line), f)) {
        if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
            sscanf(line + kl + 1, "%ld", &v);
            break;
        }
    }
    if (f) {
        fclose(f);
    }
    return v;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: lib_floor DB [LIB...]\n");
        return 2;
    }
    void *sqlite = NULL;
    for (int i = 2; i < argc; i++) {
        void *h = dlopen(argv[i], RTLD_NOW | RTLD_GLOBAL);
        if (!h) {
            fprintf(stderr, "lib_floor: %s\n", dlerror());
            return 1;
        }
        if (strstr(argv[i], "libsqlite3")) {
            sqlite = h;
        }
    }
    if (sqlite) {
        /* What the agent's outbox does at start, roughly: open, WAL, a table. */
        open_fn op = (open_fn)(size_t)dlsym(sqlite, "sqlite3_open_v2");
        exec_fn ex = (exec_fn)(size_t)dlsym(sqlite, "sqlite3_exec");
        close_fn cl = (close_fn)(size_t)dlsym(sqlite, "sqlite3_close");
        void *db = NULL;
        if (!op || !ex || !cl || op(argv[1], &db, 0x6 /* READWRITE | CREATE */, NULL) != 0 ||
            ex(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                   "CREATE TABLE IF NOT EXISTS t(id TEXT PRIMARY KEY, body TEXT);"
                   "INSERT OR IGNORE INTO t VALUES('a', 'b'); SELECT count(*) FROM t;",
               NULL, NULL, NULL) != 0) {
            fprintf(stderr, "lib_floor: sqlite on %s failed\n", argv[1]);
            return 1;
        }
        long rss = status_kb("VmRSS"), anon = status_kb("RssAnon"), file = status_kb("RssFile");
        printf("%ld %ld %ld\n", rss, anon, file);
        cl(db);
        return 0;
    }
    printf("%ld %ld %ld\n", status_kb("VmRSS"), status_kb("RssAnon"), status_kb("RssFile"));
    return 0;
}
