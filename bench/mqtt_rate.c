/*
 * mqtt_rate - MQTT 5 QoS 1 load for bench/run: one publisher and, with --sub,
 * one subscriber on the same broker.
 *
 *   mqtt_rate --port P [--host H] [--topic T] [--count N] [--rate R] [--sub]
 *             [--id-prefix S] [--body-bytes B] [--window W] [--timeout S]
 *
 * Publishes N notifications (valid proto v1 JSON, each with a unique id
 * "<S>-<i>" and data.t_us = the wall-clock microsecond it was handed to the
 * library) with QoS 1 from one client. --rate R paces them at R per second
 * on absolute deadlines (a late message goes at once; the worst lateness is
 * reported as max_lag_us); without --rate they go as fast as the broker
 * acknowledges, at most --window unacknowledged (default 1000; libmosquitto's
 * MQTT send maximum, 20 by default, still applies on the wire).
 *
 * --sub: a second client subscribes to the topic first (QoS 1, clean
 * session); the rate is N / (last received - first published), and each
 * message's latency is its receive time - its stamp. Without --sub the tool
 * only publishes (the receiver is someone else, e.g. the agent) and reports
 * when the last PUBACK came back.
 *
 * Both clients run on one thread with ppoll() and libmosquitto's external
 * loop calls, so the tool spends little CPU per message (it must not be what
 * it measures).
 *
 * Prints one line of key=value pairs on stdout (times in Unix ms, latencies
 * in us). Exit 0 when everything was published (and received, with --sub)
 * before --timeout, 1 otherwise.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <mosquitto.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

struct opts {
    const char *host, *topic, *prefix;
    int port;
    uint64_t count;
    double rate;
    bool sub;
    int body_bytes;
    uint64_t window;
    double timeout_s;
};

static struct opts o = {.host = "127.0.0.1",
                        .topic = "tidings/v1/local/notify",
                        .prefix = "b",
                        .count = 10000,
                        .body_bytes = 100,
                        .window = 1000,
                        .timeout_s = 300};
static bool pub_connected, subscribed;
static uint64_t acked, received, bad_payload;
static uint64_t last_ack_us, last_recv_us;
static uint32_t *lat_us; /* per received message, in arrival order */

static uint64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "mqtt_rate: %s: %s\n", what,
            rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
    exit(2);
}

static void on_connect_pub(struct mosquitto *m, void *arg, int rc, int flags,
                           const mosquitto_property *p)
{
    (void)m, (void)arg, (void)flags, (void)p;
    if (rc != 0) {
        fprintf(stderr, "mqtt_rate: publisher connect refused: %d\n", rc);
        exit(2);
    }
    pub_connected = true;
}

static void on_publish(struct mosquitto *m, void *arg, int mid, int reason,
                       const mosquitto_property *p)
{
    (void)m, (void)arg, (void)mid, (void)p;
    if (reason >= 128) {
        fprintf(stderr, "mqtt_rate: PUBACK reason %d\n", reason);
    }
    acked++;
    last_ack_us = wall_us();
}

static void on_connect_sub(struct mosquitto *m, void *arg, int rc, int flags,
                           const mosquitto_property *p)
{
    (void)arg, (void)flags, (void)p;
    if (rc != 0) {
        fprintf(stderr, "mqtt_rate: subscriber connect refused: %d\n", rc);
        exit(2);
    }
    int r = mosquitto_subscribe_v5(m, NULL, o.topic, 1, 0, NULL);
    if (r != MOSQ_ERR_SUCCESS) {
        die("subscribe", r);
    }
}

static void on_subscribe(struct mosquitto *m, void *arg, int mid, int n, const int *qos,
                         const mosquitto_property *p)
{
    (void)m, (void)arg, (void)mid, (void)p;
    if (n < 1 || qos[0] >= 128) {
        fprintf(stderr, "mqtt_rate: subscription refused\n");
        exit(2);
    }
    subscribed = true;
}

static void on_message(struct mosquitto *m, void *arg, const struct mosquitto_message *msg,
                       const mosquitto_property *p)
{
    (void)m, (void)arg, (void)p;
    uint64_t now = wall_us();
    uint64_t stamp = 0;
    const char *s =
        msg->payload ? memmem(msg->payload, (size_t)msg->payloadlen, "\"t_us\":", 7) : NULL;
    if (s) {
        stamp = strtoull(s + 7, NULL, 10);
    }
    if (!stamp) {
        bad_payload++;
    } else if (received < o.count) {
        uint64_t d = now > stamp ? now - stamp : 0;
        lat_us[received] = d < UINT32_MAX ? (uint32_t)d : UINT32_MAX;
    }
    received++;
    last_recv_us = now;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static uint32_t pct(const uint32_t *v, uint64_t n, double p)
{
    if (n == 0) {
        return 0;
    }
    uint64_t i = (uint64_t)(p * (double)n);
    return v[i < n ? i : n - 1];
}

static void usage(void)
{
    fprintf(stderr, "usage: mqtt_rate --port P [--host H] [--topic T] [--count N] [--rate R] "
                    "[--sub] [--id-prefix S] [--body-bytes B] [--window W] [--timeout S]\n");
    exit(2);
}

static struct mosquitto *client(const char *role)
{
    char cid[64];
    snprintf(cid, sizeof(cid), "bench-%s-%ld", role, (long)getpid());
    struct mosquitto *m = mosquitto_new(cid, true, NULL);
    if (!m) {
        die("mosquitto_new", MOSQ_ERR_ERRNO);
    }
    mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);
    return m;
}

/*
 * One round of I/O for the clients: poll their sockets (for writing too when
 * libmosquitto has output queued) for at most timeout_ns, then read, write
 * and run keepalive housekeeping. ppoll: pacing needs sub-millisecond waits.
 */
static void io_round(struct mosquitto **ms, int n, uint64_t timeout_ns)
{
    struct timespec ts = {.tv_sec = (time_t)(timeout_ns / 1000000000u),
                          .tv_nsec = (long)(timeout_ns % 1000000000u)};
    struct pollfd pf[2];
    for (int i = 0; i < n; i++) {
        pf[i].fd = mosquitto_socket(ms[i]);
        pf[i].events = POLLIN | (mosquitto_want_write(ms[i]) ? POLLOUT : 0);
        pf[i].revents = 0;
    }
    int r = ppoll(pf, (nfds_t)n, &ts, NULL);
    if (r < 0 && errno != EINTR) {
        die("poll", MOSQ_ERR_ERRNO);
    }
    for (int i = 0; i < n; i++) {
        int rc;
        if (pf[i].revents & (POLLIN | POLLHUP | POLLERR)) {
            if ((rc = mosquitto_loop_read(ms[i], 64)) != MOSQ_ERR_SUCCESS) {
                die("read", rc);
            }
        }
        if (mosquitto_want_write(ms[i])) {
            if ((rc = mosquitto_loop_write(ms[i], 64)) != MOSQ_ERR_SUCCESS &&
                rc != MOSQ_ERR_ERRNO) {
                die("write", rc);
            }
        }
        mosquitto_loop_misc(ms[i]);
    }
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--sub")) {
            o.sub = true;
            continue;
        }
        const char *v = i + 1 < argc ? argv[++i] : NULL;
        if (!v) {
            usage();
        }
        if (!strcmp(a, "--host")) {
            o.host = v;
        } else if (!strcmp(a, "--port")) {
            o.port = (int)strtol(v, NULL, 10);
        } else if (!strcmp(a, "--topic")) {
            o.topic = v;
        } else if (!strcmp(a, "--count")) {
            o.count = strtoull(v, NULL, 10);
        } else if (!strcmp(a, "--rate")) {
            o.rate = strtod(v, NULL);
        } else if (!strcmp(a, "--id-prefix")) {
            o.prefix = v;
        } else if (!strcmp(a, "--body-bytes")) {
            o.body_bytes = (int)strtol(v, NULL, 10);
        } else if (!strcmp(a, "--window")) {
            o.window = strtoull(v, NULL, 10);
        } else if (!strcmp(a, "--timeout")) {
            o.timeout_s = strtod(v, NULL);
        } else {
            usage();
        }
    }
    if (o.port <= 0 || o.count == 0 || o.body_bytes < 0 || o.body_bytes > 3000 || o.window == 0) {
        usage();
    }
    lat_us = calloc(o.count, sizeof(*lat_us));
    char *body = malloc((size_t)o.body_bytes + 1);
    if (!lat_us || !body) {
        fprintf(stderr, "mqtt_rate: out of memory\n");
        return 2;
    }
    memset(body, 'x', (size_t)o.body_bytes);
    body[o.body_bytes] = '\0';

    mosquitto_lib_init();
    uint64_t deadline = mono_ns() + (uint64_t)(o.timeout_s * 1e9);
    struct mosquitto *ms[2];
    int nm = 0, rc;
    if (o.sub) {
        struct mosquitto *sub = client("sub");
        mosquitto_connect_v5_callback_set(sub, on_connect_sub);
        mosquitto_subscribe_v5_callback_set(sub, on_subscribe);
        mosquitto_message_v5_callback_set(sub, on_message);
        if ((rc = mosquitto_connect_bind_v5(sub, o.host, o.port, 60, NULL, NULL)) != 0) {
            die("subscriber connect", rc);
        }
        ms[nm++] = sub;
        while (!subscribed) {
            if (mono_ns() > deadline) {
                fprintf(stderr, "mqtt_rate: no SUBACK\n");
                return 1;
            }
            io_round(ms, nm, 100000000u);
        }
    }
    struct mosquitto *pub = client("pub");
    mosquitto_connect_v5_callback_set(pub, on_connect_pub);
    mosquitto_publish_v5_callback_set(pub, on_publish);
    if ((rc = mosquitto_connect_bind_v5(pub, o.host, o.port, 60, NULL, NULL)) != 0) {
        die("publisher connect", rc);
    }
    ms[nm++] = pub;
    while (!pub_connected) {
        if (mono_ns() > deadline) {
            fprintf(stderr, "mqtt_rate: publisher did not connect\n");
            return 1;
        }
        io_round(ms, nm, 100000000u);
    }

    char payload[4096];
    uint64_t start_us = wall_us(), start_ns = mono_ns();
    uint64_t max_lag_ns = 0, sent = 0, pub_done_us = 0;
    bool timed_out = false;
    for (;;) {
        uint64_t now = mono_ns();
        if (now > deadline) {
            timed_out = true;
            break;
        }
        /* Publish what is due (paced) or what the window allows. */
        uint64_t timeout_ns = 100000000u;
        while (sent < o.count) {
            if (o.rate > 0) {
                uint64_t due = start_ns + (uint64_t)((double)sent * 1e9 / o.rate);
                now = mono_ns();
                if (now < due) {
                    break;
                }
                if (now - due > max_lag_ns) {
                    max_lag_ns = now - due;
                }
            } else if (sent - acked >= o.window) {
                break;
            }
            int len = snprintf(payload, sizeof(payload),
                               "{\"id\":\"%s-%" PRIu64 "\",\"to\":\"user:alice\","
                               "\"category\":\"bench\",\"priority\":\"normal\","
                               "\"title\":\"Bench %" PRIu64 "\",\"body\":\"%s\","
                               "\"data\":{\"t_us\":%" PRIu64 "}}",
                               o.prefix, sent, sent, body, wall_us());
            rc = mosquitto_publish_v5(pub, NULL, o.topic, len, payload, 1, false, NULL);
            if (rc != MOSQ_ERR_SUCCESS) {
                die("publish", rc);
            }
            sent++;
            if (o.rate > 0) {
                break; /* one per round: keep reading acks and messages between sends */
            }
        }
        if (sent == o.count && !pub_done_us) {
            pub_done_us = wall_us();
        }
        if (sent == o.count && acked >= o.count && (!o.sub || received >= o.count)) {
            break;
        }
        if (o.rate > 0 && sent < o.count) {
            uint64_t due = start_ns + (uint64_t)((double)sent * 1e9 / o.rate);
            now = mono_ns();
            timeout_ns = now >= due ? 0 : due - now;
            timeout_ns = timeout_ns < 100000000u ? timeout_ns : 100000000u;
        }
        io_round(ms, nm, timeout_ns);
    }

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                   (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    printf("sent=%" PRIu64 " acked=%" PRIu64 " start_ms=%" PRIu64 " pub_done_ms=%" PRIu64
           " last_ack_ms=%" PRIu64 " pub_rate=%.0f max_lag_us=%" PRIu64 " cpu_s=%.3f",
           sent, acked, start_us / 1000, pub_done_us / 1000, last_ack_us / 1000,
           last_ack_us > start_us ? (double)acked * 1e6 / (double)(last_ack_us - start_us) : 0.0,
           max_lag_ns / 1000, cpu_s);
    if (o.sub) {
        uint64_t n = received < o.count ? received : o.count;
        qsort(lat_us, n, sizeof(*lat_us), cmp_u32);
        printf(" received=%" PRIu64 " last_recv_ms=%" PRIu64 " rate=%.0f lat_p50_us=%u "
               "lat_p99_us=%u lat_p999_us=%u lat_max_us=%u bad_payload=%" PRIu64,
               received, last_recv_us / 1000,
               last_recv_us > start_us ? (double)received * 1e6 / (double)(last_recv_us - start_us)
                                       : 0.0,
               pct(lat_us, n, 0.50), pct(lat_us, n, 0.99), pct(lat_us, n, 0.999),
               n ? lat_us[n - 1] : 0, bad_payload);
    }
    printf(" timed_out=%d\n", timed_out ? 1 : 0);
    fflush(stdout);
    for (int i = 0; i < nm; i++) {
        mosquitto_disconnect_v5(ms[i], 0, NULL);
        mosquitto_loop_write(ms[i], 1);
        mosquitto_destroy(ms[i]);
    }
    mosquitto_lib_cleanup();
    free(lat_us);
    free(body);
    return timed_out ? 1 : 0;
}
