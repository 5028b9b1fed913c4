/* main.c - tidings-agent: arguments, signals, loop. */
#include "agent.h"
#include "cli.h"
#include "error.h"
#include "log.h"

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: tidings-agent [-c FILE] [-o key=value]... [--reset-corrupt-db] [--help-config]\n"
            "                     [--version]\n"
            "       tidings-agent send --title T --body B [--to ..] [...]   (see send --help)\n"
            "       tidings-agent status [--json] [--id ID]                (see status --help)\n"
            "  -c FILE          configuration file (key = value)\n"
            "  -o key=value     override one setting (after the file)\n"
            "  --reset-corrupt-db  move an unusable outbox.db/policy.db aside to\n"
            "                   <name>.corrupt-<unix time> and start fresh (outbox.reset_corrupt)\n"
            "  --help-config    print every setting with its default and exit\n"
            "  send, status     talk to the running agent over its unix socket\n");
}

static void on_signal(loop_t *loop, int signo, void *arg)
{
    (void)arg;
    LOG_INFO("agent", "signal %d: shutting down", signo);
    loop_stop(loop);
}

int main(int argc, char **argv)
{
    if (argc > 1 && cli_is_command(argv[1])) {
        return cli_run(argc - 1, argv + 1);
    }
    static struct agent_config cfg;
    char err[CONFIG_ERR_MAX + 256];
    const struct config_entry *t = agent_config_table;
    size_t n = agent_config_table_len;
    if (config_defaults(t, n, &cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "tidings-agent: %s\n", err);
        return 1;
    }
    const char *file = NULL;
    bool reset_corrupt = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) {
            file = argv[++i];
        } else if (strcmp(argv[i], "--reset-corrupt-db") == 0) {
            reset_corrupt = true;
        } else if (strcmp(argv[i], "--help-config") == 0) {
            config_print(t, n, stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("tidings-agent %s (proto v%d)\n", TIDINGS_VERSION, PROTO_VERSION);
            return 0;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) {
            i++; /* applied after the file, below */
        } else {
            fprintf(stderr, "tidings-agent: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (file && config_load(t, n, &cfg, file, err, sizeof(err)) < 0) {
        fprintf(stderr, "tidings-agent: %s\n", err);
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) {
            char kv[CONFIG_ERR_MAX * 2];
            snprintf(kv, sizeof(kv), "%s", argv[++i]);
            char *eq = strchr(kv, '=');
            if (!eq) {
                fprintf(stderr, "tidings-agent: -o %s: expected key=value\n", kv);
                return 2;
            }
            *eq = '\0';
            if (config_set(t, n, &cfg, kv, eq + 1, err, sizeof(err)) < 0) {
                fprintf(stderr, "tidings-agent: -o: %s\n", err);
                return 1;
            }
        } else if (strcmp(argv[i], "-c") == 0) {
            i++;
        }
    }

    if (reset_corrupt) {
        cfg.reset_corrupt_db = true;
    }

    loop_t *loop = loop_create();
    if (!loop) {
        fprintf(stderr, "tidings-agent: cannot create event loop\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    /* Under a file-size limit (RLIMIT_FSIZE) a write past it raises SIGXFSZ,
     * which kills by default: ignored, the write fails with EFBIG, SQLite
     * reports it, and the agent answers "storage" and keeps what it has. */
    signal(SIGXFSZ, SIG_IGN);
    loop_signal(loop, SIGINT, on_signal, NULL);
    loop_signal(loop, SIGTERM, on_signal, NULL);
    agent_t *a = NULL;
    int rc = agent_create(loop, &cfg, &a, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "tidings-agent: %s\n", err);
        loop_destroy(loop);
        return 1;
    }
    rc = loop_run(loop);
    agent_destroy(a);
    loop_destroy(loop);
    return rc < 0 ? 1 : 0;
}
