/*
 * apns_send_rate.c - how fast the APNs channel sends to the fake APNs, and
 * what h2load gets from the same fake in the same run.
 *
 * usage: apns_send_rate FAKE_APNS GEN_CERTS_SH [N=200000] [WINDOW=2000]
 *                       [CONNECTIONS=2] [STREAMS=1000] [WARMUP_MS=0]
 *                       [H2LOAD_ARGS]
 *
 * Starts fake-apns (--no-record) on port 0 in a temp dir, opens the channel
 * against it and keeps WINDOW sends in flight until N are done; prints
 * sends/s, the outcome counts and the CPU time of this process (the client:
 * channel + HTTP/2 + TLS) and of the fake during the measured part.
 * Everything runs on one loop, as in the hub. WARMUP_MS > 0 sends for that
 * long first and measures N sends after it (the second connection opens
 * only after the spacing, 2 s by default). H2LOAD_ARGS (e.g. "-c 2 -m 100")
 * then runs `h2load -n N H2LOAD_ARGS` against the same fake with the
 * channel's own headers and payload (taken from the channel's format) and
 * prints its rate and CPU beside ours. A figure, not a pass/fail test
 * (DESIGN.md: bench/ prints figures).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "apns.h"
#include "config.h"
#include "error.h"
#include "harness.h"
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

/* CPU seconds (user + system) of this process, or of reaped children. */
static double cpu_s(int who)
{
    struct rusage ru;
    getrusage(who, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* CPU seconds of a live process from /proc (the fake), -1 if unknown. */
static double proc_cpu_s(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) {
        return -1;
    }
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* fields after the command name */
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) {
        return -1;
    }
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static bool warming;
static uint64_t warm_until;
static long warm_started, warm_done;

static void on_done(void *ctx, const struct channel_outcome *o);

static int start_one(void)
{
    int rc = apns_channel.send(chan, &del, on_done, NULL);
    if (rc == 0) {
        if (warming) {
            warm_started++;
        } else {
            started++;
        }
    }
    return rc;
}

static void on_done(void *ctx, const struct channel_outcome *o)
{
    (void)ctx;
    if (warming) {
        warm_done++;
        if (clock_mono_ms() < warm_until) {
            start_one();
        } else if (warm_done == warm_started) {
            loop_stop(loop); /* drained: the measured part starts from zero */
        }
        return;
    }
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

/* Fill the window; 0 or the first send error. */
static int fill_window(void)
{
    for (long i = 0; i < window; i++) {
        if (!warming && started >= total) {
            break;
        }
        int rc = start_one();
        if (rc == -EBUSY) {
            break; /* WINDOW is over the channel's in-flight bound */
        }
        if (rc < 0) {
            fprintf(stderr, "send: %s\n", tdg_strerror(rc));
            return rc;
        }
    }
    return 0;
}

/*
 * h2load against the same fake with the channel's request: the headers and
 * body format builds for our delivery (format is pure), the body in a file.
 * Prints h2load's summary lines, its CPU and the fake's.
 */
static void run_h2load(const char *dir, pid_t fake, const char *args)
{
    static struct channel_request req;
    struct channel_outcome out;
    if (apns_channel.format(chan, &del, &req, &out) != 0) {
        fprintf(stderr, "format: %s\n", out.reason);
        return;
    }
    char bodyf[300], outf[300], n[32];
    snprintf(bodyf, sizeof(bodyf), "%s/body.json", dir);
    snprintf(outf, sizeof(outf), "%s/h2load.txt", dir);
    snprintf(n, sizeof(n), "%ld", total);
    FILE *f = fopen(bodyf, "w");
    if (!f || fwrite(req.body, 1, req.body_len, f) != req.body_len) {
        fprintf(stderr, "cannot write %s\n", bodyf);
        if (f) {
            fclose(f);
        }
        return;
    }
    fclose(f);
    static char argbuf[512];
    snprintf(argbuf, sizeof(argbuf), "%s", args);
    const char *argv[64];
    int k = 0;
    argv[k++] = "h2load";
    argv[k++] = "-n";
    argv[k++] = n;
    /* split on spaces, in place */
    for (char *t = argbuf; *t && k < 40;) {
        while (*t == ' ') {
            *t++ = '\0';
        }
        if (*t) {
            argv[k++] = t;
        }
        while (*t && *t != ' ') {
            t++;
        }
    }
    for (unsigned i = 0; i < req.nheaders && k < 60; i++) {
        argv[k++] = "-H";
        argv[k++] = req.headers[i];
    }
    argv[k++] = "-d";
    argv[k++] = bodyf;
    argv[k++] = req.url;
    argv[k] = NULL;
    double c0 = cpu_s(RUSAGE_CHILDREN), f0 = proc_cpu_s(fake);
    uint64_t t0 = clock_mono_ms();
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(outf, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execvp("h2load", (char *const *)argv);
        _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    uint64_t ms = clock_mono_ms() - t0;
    double c1 = cpu_s(RUSAGE_CHILDREN), f1 = proc_cpu_s(fake);
    f = fopen(outf, "r");
    char line[512];
    while (f && fgets(line, sizeof(line), f)) {
        if (strncmp(line, "finished in", 11) == 0 || strncmp(line, "requests:", 9) == 0 ||
            strncmp(line, "status codes:", 13) == 0) {
            printf("h2load: %s", line);
        }
    }
    if (f) {
        fclose(f);
    }
    printf("h2load: args=\"%s\" exit=%d wall_ms=%" PRIu64 " h2load_cpu_s=%.2f fake_cpu_s=%.2f\n",
           args, WIFEXITED(st) ? WEXITSTATUS(st) : -1, ms, c1 - c0, f1 - f0);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr,
                "usage: %s FAKE_APNS GEN_CERTS_SH [N] [WINDOW] [CONNS] [STREAMS] [WARMUP_MS] "
                "[H2LOAD_ARGS]\n",
                argv[0]);
        return 2;
    }
    total = argc > 3 ? strtol(argv[3], NULL, 10) : 200000;
    window = argc > 4 ? strtol(argv[4], NULL, 10) : 2000;
    const char *conns = argc > 5 ? argv[5] : "2";
    const char *streams = argc > 6 ? argv[6] : "1000";
    long warmup_ms = argc > 7 ? strtol(argv[7], NULL, 10) : 0;
    const char *h2load_args = argc > 8 ? argv[8] : NULL;
    if (total < 1 || window < 1 || warmup_ms < 0) {
        fprintf(stderr, "N and WINDOW must be >= 1, WARMUP_MS >= 0\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    log_set_level(LOG_LVL_WARN);

    char dir[256];
    if (harness_mkdtemp(dir, sizeof(dir), "rate") < 0) {
        perror("mkdtemp");
        return 1;
    }
    if (harness_gen_certs(argv[2], dir, KEY_ID) < 0) {
        harness_rmtree(dir);
        return 1;
    }
    char cert[300], key[300], pub[300], portf[300], logf[300], why[256];
    snprintf(cert, sizeof(cert), "%s/server.crt", dir);
    snprintf(key, sizeof(key), "%s/server.key", dir);
    snprintf(pub, sizeof(pub), "%s/authkey_pub.pem", dir);
    snprintf(portf, sizeof(portf), "%s/port", dir);
    snprintf(logf, sizeof(logf), "%s/fake.log", dir);
    const char *fargv[] = {argv[1],      "--listen", "127.0.0.1:0", "--cert",      cert,
                           "--key",      key,        "--auth-key",  pub,           "--key-id",
                           KEY_ID,       "--team-id", TEAM_ID,      "--no-record", "--port-file",
                           portf,        NULL};
    struct harness_child fake = {.pid = -1};
    pid_t pid = -1;
    int port = 0;
    int rc = 1;
    if (harness_start(&fake, "fake-apns", fargv, logf, portf, 10000, why, sizeof(why)) < 0) {
        fprintf(stderr, "%s\n", why);
        goto out;
    }
    pid = fake.pid;
    port = fake.port;

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

    if (warmup_ms > 0) {
        warming = true;
        warm_until = clock_mono_ms() + (uint64_t)warmup_ms;
        if (fill_window() < 0) {
            goto out;
        }
        loop_run(loop);
        warming = false;
    }
    double cpu0 = cpu_s(RUSAGE_SELF), fcpu0 = proc_cpu_s(pid);
    uint64_t t0 = clock_mono_ms();
    if (fill_window() < 0) {
        goto out;
    }
    loop_run(loop);
    uint64_t ms = clock_mono_ms() - t0;
    double cpu = cpu_s(RUSAGE_SELF) - cpu0, fcpu = proc_cpu_s(pid) - fcpu0;
    printf(
        "apns_send_rate: n=%ld window=%ld connections=%s streams=%s warmup_ms=%ld time_ms=%" PRIu64
        " rate=%.0f/s ok=%ld retry=%ld drop=%ld client_cpu_s=%.2f (%.1f us/send) "
        "fake_cpu_s=%.2f%s%s\n",
        total, window, conns, streams, warmup_ms, ms,
        ms ? (double)finished * 1000.0 / (double)ms : 0.0, n_ok, n_retry, n_drop, cpu,
        finished ? cpu * 1e6 / (double)finished : 0.0, fcpu, first_err[0] ? " first_error=" : "",
        first_err);
    rc = n_ok == total ? 0 : 1;
    if (h2load_args && *h2load_args) {
        run_h2load(dir, pid, h2load_args);
    }
out:
    if (chan) {
        apns_channel.destroy(chan);
    }
    if (loop) {
        loop_destroy(loop);
    }
    harness_stop(&fake);
    if (harness_rmtree(dir) != 0) {
        rc = 1;
    }
    return rc;
}
