/*
 * sock_load.c - a pipelining client of the agent's unix socket for the kill
 * tests: sends notifications PREFIX-FIRST .. PREFIX-(FIRST+COUNT-1), at most
 * WINDOW unanswered at once, and appends each id whose reply was ok (the
 * agent committed it) to ACKED, one line each, flushed as it comes, so a test
 * can watch progress. When the agent goes away (kill -9), every request
 * without a reply is sent again, same id, once the socket accepts again
 * (a committed one comes back "duplicate": still ok). Gives up when no
 * connection succeeds, or no reply comes, for 60 s.
 *
 * RATE (per second, 0: as fast as the agent answers) paces the sends so
 * that a test can kill the agent while they are still under way.
 *
 *   usage: sock_load SOCKET PREFIX FIRST COUNT ACKED [WINDOW [RATE]]
 * Exit 0 when every id was acknowledged, 1 otherwise.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define GIVE_UP_MS 60000
#define LINE_MAX_LEN 512
#define WINDOW_MAX 1024

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static long parse_num(const char *s, long lo, long hi)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || !end || *end || v < lo || v > hi) {
        fprintf(stderr, "sock_load: bad number '%s'\n", s);
        exit(2);
    }
    return v;
}

/* Connect, retrying while the agent restarts. fd, or -1 after GIVE_UP_MS. */
static int connect_retry(const char *path)
{
    long long deadline = now_ms() + GIVE_UP_MS;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    while (now_ms() < deadline) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            return -1;
        }
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
            return fd;
        }
        close(fd);
        /* Not listening yet (restarting): the only way to learn it is up
         * is to try again. */
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return -1;
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: sock_load SOCKET PREFIX FIRST COUNT ACKED [WINDOW [RATE]]\n");
        return 2;
    }
    const char *path = argv[1];
    const char *prefix = argv[2];
    long first = parse_num(argv[3], 0, 1000000000L);
    long count = parse_num(argv[4], 1, 10000000L);
    long window = argc > 6 ? parse_num(argv[6], 1, WINDOW_MAX) : 128;
    long rate = argc > 7 ? parse_num(argv[7], 0, 10000000L) : 0;
    long long started = now_ms();
    FILE *acked = fopen(argv[5], "a");
    if (!acked) {
        perror(argv[5]);
        return 2;
    }
    long done = 0; /* answered: first .. first+done-1 */
    long next = 0; /* requests written on this connection: up to first+next-1 */
    long reconnects = 0, refused = 0, dups = 0;
    static char out[WINDOW_MAX * LINE_MAX_LEN];
    static char in[1 << 16];
    size_t inlen = 0;
    int fd = connect_retry(path);
    while (fd >= 0 && done < count) {
        /* Fill the window, no further than the pace allows. */
        long allowed = count;
        if (rate > 0) {
            allowed = (long)((now_ms() - started) * rate / 1000) + 1;
            if (next >= allowed && done == next) {
                struct timespec ts = {0, 2 * 1000 * 1000};
                nanosleep(&ts, NULL); /* pacing, not waiting for an event */
                continue;
            }
        }
        size_t olen = 0;
        while (next < count && next < allowed && next - done < window) {
            int n = snprintf(out + olen, sizeof(out) - olen,
                             "{\"op\":\"send\",\"notification\":{\"id\":\"%s-%ld\",\"to\":"
                             "\"user:alice\",\"title\":\"kill %ld\",\"body\":\"socket kill "
                             "test\"}}\n",
                             prefix, first + next, first + next);
            if (n < 0 || (size_t)n >= sizeof(out) - olen) {
                break;
            }
            olen += (size_t)n;
            next++;
        }
        errno = 0;
        int lost = olen > 0 && write_all(fd, out, olen) < 0;
        /* Read at least one reply. */
        while (!lost && done < next) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            int pr = poll(&p, 1, GIVE_UP_MS);
            if (pr == 0) {
                fprintf(stderr, "sock_load %s: no reply for %d ms\n", prefix, GIVE_UP_MS);
                fclose(acked);
                return 1;
            }
            ssize_t n = pr < 0 ? -1 : read(fd, in + inlen, sizeof(in) - inlen);
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                lost = 1;
                break;
            }
            inlen += (size_t)n;
            char *start = in;
            char *nl;
            while ((nl = memchr(start, '\n', inlen - (size_t)(start - in))) != NULL) {
                *nl = '\0';
                char want[128];
                snprintf(want, sizeof(want), "%s-%ld", prefix, first + done);
                char okp[192];
                snprintf(okp, sizeof(okp), "{\"ok\":true,\"id\":\"%s\"", want);
                if (strncmp(start, okp, strlen(okp)) == 0) {
                    fprintf(acked, "%s\n", want);
                    fflush(acked);
                    if (strstr(start, "\"duplicate\":true")) {
                        dups++;
                    }
                } else {
                    /* Not accepted: counted, not recorded (never sent again). */
                    refused++;
                    fprintf(stderr, "sock_load %s: %s refused: %s\n", prefix, want, start);
                }
                done++;
                start = nl + 1;
            }
            inlen -= (size_t)(start - in);
            memmove(in, start, inlen);
            if (done == next) {
                break;
            }
        }
        if (lost) {
            /* The agent is gone: what has no reply is sent again. */
            fprintf(stderr,
                    "sock_load %s: connection lost (%s) with %ld unanswered; reconnecting\n",
                    prefix, errno ? strerror(errno) : "closed", next - done);
            close(fd);
            reconnects++;
            next = done;
            inlen = 0;
            fd = connect_retry(path);
        }
    }
    if (fd >= 0) {
        close(fd);
    }
    fclose(acked);
    fprintf(stderr,
            "sock_load %s: %ld of %ld answered, %ld refused, %ld duplicate, %ld reconnects\n",
            prefix, done, count, refused, dups, reconnects);
    return done == count && refused == 0 ? 0 : 1;
}
