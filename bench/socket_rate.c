/*
 * socket_rate - pipelined sends to the agent's unix socket, for bench/run.
 *
 *   socket_rate --socket PATH --count N [--conns C] [--id-prefix S] [--body-bytes B]
 *               [--timeout S]
 *   socket_rate --socket PATH --status
 *
 * Opens C connections and sends N notifications split over them
 * ({"op":"send","notification":{...}} lines, docs/agent.md). Each connection
 * has a writer thread and a reader thread, so it writes while it reads and
 * neither side waits on a full buffer. Every reply is read; a reply that is
 * not {"ok":true,...} counts as failed (the first one is printed on stderr).
 * The rate is replies / (last reply - first write): each reply means the row
 * is committed in the outbox.
 *
 * --status prints the agent's status object ({"op":"status"}) and exits.
 *
 * Prints one line of key=value pairs (times in Unix ms). Exit 0 when every
 * send was answered ok before --timeout, 1 otherwise.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

struct conn {
    int fd;
    int index;
    uint64_t n;          /* sends on this connection */
    uint64_t ok, failed; /* replies */
    uint64_t last_reply_us;
    bool eof;
};

static const char *g_prefix = "s";
static const char *g_body;
static pthread_mutex_t err_mu = PTHREAD_MUTEX_INITIALIZER;
static bool err_printed;

static uint64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int connect_to(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        fprintf(stderr, "socket_rate: path too long: %s\n", path);
        exit(2);
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        fprintf(stderr, "socket_rate: connect %s: %s\n", path, strerror(errno));
        exit(2);
    }
    return fd;
}

static bool write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return false;
        }
        p += w;
        len -= (size_t)w;
    }
    return true;
}

static void *writer(void *arg)
{
    struct conn *c = arg;
    enum { BUF = 64 * 1024 };
    char *buf = malloc(BUF);
    if (!buf) {
        return NULL;
    }
    size_t used = 0;
    for (uint64_t i = 0; i < c->n; i++) {
        char line[4096];
        int len = snprintf(line, sizeof(line),
                           "{\"op\":\"send\",\"notification\":{\"id\":\"%s-%d-%" PRIu64 "\","
                           "\"to\":\"user:alice\",\"category\":\"bench\",\"priority\":\"normal\","
                           "\"title\":\"Bench %" PRIu64 "\",\"body\":\"%s\"}}\n",
                           g_prefix, c->index, i, i, g_body);
        if (used + (size_t)len > BUF) {
            if (!write_all(c->fd, buf, used)) {
                break;
            }
            used = 0;
        }
        memcpy(buf + used, line, (size_t)len);
        used += (size_t)len;
    }
    if (used) {
        write_all(c->fd, buf, used);
    }
    free(buf);
    return NULL;
}

static void *reader(void *arg)
{
    struct conn *c = arg;
    char buf[65536];
    size_t have = 0;
    bool at_line_start = true;
    while (c->ok + c->failed < c->n) {
        ssize_t r = read(c->fd, buf + have, sizeof(buf) - have);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            c->eof = true;
            break;
        }
        have += (size_t)r;
        /* Replies are short; classify each by its start, skip to its newline. */
        size_t pos = 0;
        while (pos < have) {
            char *nl = memchr(buf + pos, '\n', have - pos);
            if (!nl) {
                break;
            }
            size_t len = (size_t)(nl - (buf + pos));
            if (at_line_start && len >= 10 && memcmp(buf + pos, "{\"ok\":true", 10) == 0) {
                c->ok++;
            } else {
                c->failed++;
                pthread_mutex_lock(&err_mu);
                if (!err_printed) {
                    fprintf(stderr, "socket_rate: reply: %.*s\n", (int)(len < 400 ? len : 400),
                            buf + pos);
                    err_printed = true;
                }
                pthread_mutex_unlock(&err_mu);
            }
            at_line_start = true;
            pos += len + 1;
        }
        memmove(buf, buf + pos, have - pos);
        have -= pos;
        if (have == sizeof(buf)) { /* a reply longer than the buffer: drop it */
            have = 0;
            at_line_start = false;
        }
    }
    c->last_reply_us = wall_us();
    return NULL;
}

static int status(const char *path)
{
    int fd = connect_to(path);
    const char req[] = "{\"op\":\"status\"}\n";
    if (!write_all(fd, req, sizeof(req) - 1)) {
        return 1;
    }
    char buf[65536];
    size_t have = 0;
    while (have < sizeof(buf) - 1) {
        ssize_t r = read(fd, buf + have, sizeof(buf) - 1 - have);
        if (r <= 0) {
            break;
        }
        have += (size_t)r;
        if (memchr(buf, '\n', have)) {
            break;
        }
    }
    buf[have] = '\0';
    fputs(buf, stdout);
    close(fd);
    return have > 0 ? 0 : 1;
}

static void usage(void)
{
    fprintf(stderr, "usage: socket_rate --socket PATH (--count N [--conns C] [--id-prefix S] "
                    "[--body-bytes B] [--timeout S] | --status)\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    uint64_t count = 0;
    int conns = 1, body_bytes = 100;
    double timeout_s = 600;
    bool want_status = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--status")) {
            want_status = true;
            continue;
        }
        const char *v = i + 1 < argc ? argv[++i] : NULL;
        if (!v) {
            usage();
        }
        if (!strcmp(a, "--socket")) {
            path = v;
        } else if (!strcmp(a, "--count")) {
            count = strtoull(v, NULL, 10);
        } else if (!strcmp(a, "--conns")) {
            conns = (int)strtol(v, NULL, 10);
        } else if (!strcmp(a, "--id-prefix")) {
            g_prefix = v;
        } else if (!strcmp(a, "--body-bytes")) {
            body_bytes = (int)strtol(v, NULL, 10);
        } else if (!strcmp(a, "--timeout")) {
            timeout_s = strtod(v, NULL);
        } else {
            usage();
        }
    }
    if (!path) {
        usage();
    }
    if (want_status) {
        return status(path);
    }
    if (count == 0 || conns < 1 || conns > 64 || body_bytes < 0 || body_bytes > 3000) {
        usage();
    }
    char *body = malloc((size_t)body_bytes + 1);
    struct conn *cs = calloc((size_t)conns, sizeof(*cs));
    pthread_t *wt = calloc((size_t)conns, sizeof(*wt)), *rt = calloc((size_t)conns, sizeof(*rt));
    if (!body || !cs || !wt || !rt) {
        return 2;
    }
    memset(body, 'x', (size_t)body_bytes);
    body[body_bytes] = '\0';
    g_body = body;
    for (int i = 0; i < conns; i++) {
        cs[i].fd = connect_to(path);
        cs[i].index = i;
        cs[i].n = count / (uint64_t)conns + ((uint64_t)i < count % (uint64_t)conns ? 1 : 0);
        /* The socket stops reading a client above 64 KiB of unread replies;
         * a timeout on our reads bounds a stuck run. */
        struct timeval tv = {.tv_sec = (time_t)timeout_s};
        setsockopt(cs[i].fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    }
    uint64_t start = wall_us();
    for (int i = 0; i < conns; i++) {
        pthread_create(&rt[i], NULL, reader, &cs[i]);
        pthread_create(&wt[i], NULL, writer, &cs[i]);
    }
    uint64_t ok = 0, failed = 0, last = start;
    bool short_read = false;
    for (int i = 0; i < conns; i++) {
        pthread_join(wt[i], NULL);
        pthread_join(rt[i], NULL);
        ok += cs[i].ok;
        failed += cs[i].failed;
        last = cs[i].last_reply_us > last ? cs[i].last_reply_us : last;
        short_read |= cs[i].eof;
        close(cs[i].fd);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                   (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    double el = (double)(last - start) / 1e6;
    printf("sent=%" PRIu64 " ok=%" PRIu64 " failed=%" PRIu64 " conns=%d start_ms=%" PRIu64
           " end_ms=%" PRIu64 " elapsed_s=%.3f rate=%.0f cpu_s=%.3f short=%d\n",
           count, ok, failed, conns, start / 1000, last / 1000, el,
           el > 0 ? (double)(ok + failed) / el : 0.0, cpu_s, short_read ? 1 : 0);
    free(body);
    free(cs);
    free(wt);
    free(rt);
    return ok == count ? 0 : 1;
}
