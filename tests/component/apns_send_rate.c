/*
 * apns_send_rate.c - how fast the APNs channel sends to the fake APNs.
 *
 * usage: apns_send_rate FAKE_APNS GEN_CERTS_SH [N=200000] [WINDOW=2000]
 *                       [CONNECTIONS=2] [STREAMS=1000]
 *
 * Starts fake-apns (--no-record) on port 0 in a temp dir, opens the channel
 * against it and keeps WINDOW sends in flight until N are done; prints
 * sends/s and the outcome counts. Everything runs on one loop, as in the
 * hub. A figure, not a pass/fail test (DESIGN.md: bench/ prints figures).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "apns.h"
#include "config.h"
#include "error.h"
#include "log.h"
#include "loop.h"

#define KEY_ID "ABC123DEFG"
#define TEAM_ID "DEF123GHIJ"
#define TOPIC "com.example.tidings"

static loop_t *loop;
static void *chan;
static long total, window, started, finished, n_ok, n_retry, n_drop;
static char first_err[CHANNEL_REASON_MAX + 16];
static struct notification note;
static struct channel_device dev;
static struct channel_delivery del;
static char token[65];

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static void on_done(void *ctx, const struct channel_outcome *o);

static int start_one(void)
{
    int rc = apns_channel.send(chan, &del, on_done, NULL);
    if (rc == 0) {
        started++;
    }
    return rc;
}

static void on_done(void *ctx, const struct channel_outcome *o)
{
    (void)ctx;
    finished++;
    if (o->result == CHANNEL_OK) {
        n_ok++;
    } else {
        if (!first_err[0]) {
            snprintf(first_err, sizeof(first_err), "%d %s", o->status, o->reason);
        }
        if (o->result == CHANNEL_RETRY) {
            n_retry++;
        } else {
            n_drop++;
        }
    }
    if (started < total) {
        start_one();
    }
    if (finished == total) {
        loop_stop(loop);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s FAKE_APNS GEN_CERTS_SH [N] [WINDOW] [CONNS] [STREAMS]\n",
                argv[0]);
        return 2;
    }
    total = argc > 3 ? strtol(argv[3], NULL, 10) : 200000;
    window = argc > 4 ? strtol(argv[4], NULL, 10) : 2000;
    const char *conns = argc > 5 ? argv[5] : "2";
    const char *streams = argc > 6 ? argv[6] : "1000";
    signal(SIGPIPE, SIG_IGN);
    log_set_level(LOG_LVL_WARN);

    char dir[256] = "/tmp/tidings-rate-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    char cmd[800];
    snprintf(cmd, sizeof(cmd), "'%s' '%s' %s >/dev/null 2>&1", argv[2], dir, KEY_ID);
    if (system(cmd) != 0) {
        fprintf(stderr, "gen-certs failed\n");
        return 1;
    }
    char cert[300], key[300], pub[300], portf[300];
    snprintf(cert, sizeof(cert), "%s/server.crt", dir);
    snprintf(key, sizeof(key), "%s/server.key", dir);
    snprintf(pub, sizeof(pub), "%s/authkey_pub.pem", dir);
    snprintf(portf, sizeof(portf), "%s/port", dir);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execl(argv[1], argv[1], "--listen", "127.0.0.1:0", "--cert", cert, "--key", key,
              "--auth-key", pub, "--key-id", KEY_ID, "--team-id", TEAM_ID, "--no-record",
              "--port-file", portf, (char *)NULL);
        _exit(127);
    }
    int port = 0;
    for (int i = 0; i < 1000 && port == 0; i++) {
        FILE *f = fopen(portf, "r");
        if (f) {
            if (fscanf(f, "%d", &port) != 1) {
                port = 0;
            }
            fclose(f);
        }
        if (!port) {
            sleep_ms(10);
        }
    }
    int rc = 1;
    if (!port) {
        fprintf(stderr, "fake-apns did not start\n");
        goto out;
    }

    loop = loop_create();
    struct apns_config c;
    char err[256], v[512];
    const struct channel_ops *ops = &apns_channel;
    config_defaults(ops->config, ops->config_n, &c, err, sizeof(err));
    snprintf(v, sizeof(v), "https://127.0.0.1:%d", port);
    config_set(ops->config, ops->config_n, &c, "apns.url", v, err, sizeof(err));
    snprintf(v, sizeof(v), "%s/AuthKey_%s.p8", dir, KEY_ID);
    config_set(ops->config, ops->config_n, &c, "apns.key_file", v, err, sizeof(err));
    config_set(ops->config, ops->config_n, &c, "apns.key_id", KEY_ID, err, sizeof(err));
    config_set(ops->config, ops->config_n, &c, "apns.team_id", TEAM_ID, err, sizeof(err));
    snprintf(v, sizeof(v), "%s/ca.crt", dir);
    config_set(ops->config, ops->config_n, &c, "apns.ca_file", v, err, sizeof(err));
    if (config_set(ops->config, ops->config_n, &c, "apns.connections", conns, err, sizeof(err)) !=
            0 ||
        config_set(ops->config, ops->config_n, &c, "apns.max_streams", streams, err, sizeof(err)) !=
            0) {
        fprintf(stderr, "%s\n", err);
        goto out;
    }
    struct channel_env env = {.loop = loop};
    if (ops->init(&env, &c, &chan, err, sizeof(err)) != 0) {
        fprintf(stderr, "init: %s\n", err);
        goto out;
    }
    memset(token, 'a', 64);
    note.id = "rate-test-0001";
    note.title = "Hello";
    note.body = "A notification of a typical size, sent as fast as the channel can.";
    note.category = "orders";
    note.priority = PROTO_PRIO_HIGH;
    dev.token = token;
    dev.app = TOPIC;
    dev.environment = "production";
    del.n = &note;
    del.dev = &dev;

    uint64_t t0 = clock_mono_ms();
    for (long i = 0; i < window && started < total; i++) {
        int src = start_one();
        if (src < 0) {
            fprintf(stderr, "send: %s\n", tdg_strerror(src));
            break;
        }
    }
    loop_run(loop);
    uint64_t ms = clock_mono_ms() - t0;
    printf("apns_send_rate: n=%ld window=%ld connections=%s streams=%s time_ms=%" PRIu64
           " rate=%.0f/s ok=%ld retry=%ld drop=%ld%s%s\n",
           total, window, conns, streams, ms, ms ? (double)finished * 1000.0 / (double)ms : 0.0,
           n_ok, n_retry, n_drop, first_err[0] ? " first_error=" : "", first_err);
    rc = n_ok == total ? 0 : 1;
out:
    if (chan) {
        apns_channel.destroy(chan);
    }
    if (loop) {
        loop_destroy(loop);
    }
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0) {
        rc = 1;
    }
    return rc;
}
