/* main.c - tidings-hub: arguments, signals, loop. */
#include "error.h"
#include "hub.h"
#include "log.h"
#include "db.h"
#include "memc.h"
#include "proto.h"

#include <cjson/cJSON.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out, "usage: tidings-hub [-c FILE] [-o key=value]... [--help-config] [--version]\n"
                 "  -c FILE          configuration file (key = value)\n"
                 "  -o key=value     override one setting (after the file)\n"
                 "  --help-config    print every setting with its default and exit\n");
}

/* First SIGTERM/SIGINT: graceful drain bounded by shutdown.grace
 * (hub_shutdown); a second one: stop now (in-flight work is recovered at
 * the next start). arg: the hub_t pointer, NULL until it exists. */
static void on_signal(loop_t *loop, int signo, void *arg)
{
    hub_t **hp = arg;
    static int seen;
    if (*hp && seen++ == 0) {
        LOG_INFO("hub", "signal %d: shutting down gracefully (again to stop at once)", signo);
        hub_shutdown(*hp);
        return;
    }
    LOG_INFO("hub", "signal %d: shutting down", signo);
    loop_stop(loop);
}

int main(int argc, char **argv)
{
    char err[1024];
    hub_settings_t *s = hub_settings_create(err, sizeof(err));
    if (!s) {
        fprintf(stderr, "tidings-hub: %s\n", err);
        return 1;
    }
    const char *file = NULL;
    int rc = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) {
            file = argv[++i];
        } else if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) {
            i++; /* applied after the file, below */
        } else if (strcmp(argv[i], "--help-config") == 0) {
            hub_settings_print(s, stdout);
            hub_settings_destroy(s);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("tidings-hub 0.1.0 (proto v%d)\n", PROTO_VERSION);
            hub_settings_destroy(s);
            return 0;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            hub_settings_destroy(s);
            return 0;
        } else {
            fprintf(stderr, "tidings-hub: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            hub_settings_destroy(s);
            return 2;
        }
    }
    if (file && hub_settings_load(s, file, err, sizeof(err)) < 0) {
        fprintf(stderr, "tidings-hub: %s\n", err);
        hub_settings_destroy(s);
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) {
            char kv[1024];
            snprintf(kv, sizeof(kv), "%s", argv[++i]);
            char *eq = strchr(kv, '=');
            if (!eq) {
                fprintf(stderr, "tidings-hub: -o %s: expected key=value\n", kv);
                hub_settings_destroy(s);
                return 2;
            }
            *eq = '\0';
            if (hub_settings_set(s, kv, eq + 1, err, sizeof(err)) < 0) {
                fprintf(stderr, "tidings-hub: -o: %s\n", err);
                hub_settings_destroy(s);
                return 1;
            }
        } else if (strcmp(argv[i], "-c") == 0) {
            i++;
        }
    }
    /* cJSON's blocks from the loop thread's small-block lists (memc.h): intake
     * parses every notification into a tree of ~25 blocks, freed when its
     * delivery ends, thousands per loop iteration - more than glibc's
     * per-thread cache holds. 256 KiB kept per class (2 MiB at most) covers
     * the trees of a few batches of 256. Blocks stay plain malloc blocks, so
     * any thread may free them, with cJSON_free or free. */
    /* Before any database is opened (platform/db.h). */
    db_stmt_journals_in_memory();
    if (memc_claim()) {
        memc_set_keep(256 * 1024);
        cJSON_Hooks hooks = {.malloc_fn = memc_alloc, .free_fn = memc_free};
        cJSON_InitHooks(&hooks);
    }
    loop_t *loop = loop_create();
    if (!loop) {
        fprintf(stderr, "tidings-hub: cannot create event loop\n");
        hub_settings_destroy(s);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    hub_t *h = NULL;
    loop_signal(loop, SIGINT, on_signal, &h);
    loop_signal(loop, SIGTERM, on_signal, &h);
    rc = hub_create(loop, s, &h, err, sizeof(err));
    hub_settings_destroy(s);
    if (rc < 0) {
        fprintf(stderr, "tidings-hub: %s\n", err);
        loop_destroy(loop);
        return 1;
    }
    rc = loop_run(loop);
    hub_destroy(h);
    loop_destroy(loop);
    return rc < 0 ? 1 : 0;
}
