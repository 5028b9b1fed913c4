/*
 * mqtt_load.c - an IoT device for the kill tests: publishes notifications
 * PREFIX-FIRST .. PREFIX-(FIRST+COUNT-1) over MQTT 5, QoS 1, on TOPIC, in
 * that order on one connection, at most WINDOW unacknowledged at once, and
 * appends each id whose PUBACK came back with a success reason (< 128) to
 * ACKED, one line each, flushed as it comes. That file is what the device
 * was promised; mosquitto_pub cannot tell which messages were acknowledged.
 *
 * The PUBACK comes from the broker: it means "the broker has it", which is
 * all an MQTT publisher is ever told. What the agent does next (its own
 * PUBACK to the broker, then its commit) is what the test checks.
 *
 * RATE (per second, 0: as fast as PUBACKs come) paces the publishes so that
 * a test can kill the agent while they are under way. The broker is not
 * restarted by the tests that use this: a lost connection is a failure
 * (exit 1), since the fate of what was unacknowledged is then unknown.
 * Gives up when no PUBACK comes for 60 s.
 *
 *   usage: mqtt_load HOST PORT TOPIC PREFIX FIRST COUNT ACKED [WINDOW [RATE]]
 * Exit 0 when every message was acknowledged, 1 otherwise, 2 on bad usage.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define GIVE_UP_MS 60000
#define WINDOW_MAX 1024
#define MID_SLOTS 65536 /* MQTT packet ids are 16 bits */

struct load {
    const char *prefix;
    FILE *acked;
    long ids[MID_SLOTS]; /* mid -> notification number, -1: none */
    long inflight, done, refused;
    bool connected, lost, conn_refused;
    long long last_progress;
};

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
        fprintf(stderr, "mqtt_load: bad number '%s' (%ld..%ld)\n", s, lo, hi);
        exit(2);
    }
    return v;
}

static void on_connect(struct mosquitto *m, void *arg, int rc, int flags,
                       const mosquitto_property *props)
{
    (void)m;
    (void)flags;
    (void)props;
    struct load *l = arg;
    if (rc == 0) {
        l->connected = true;
    } else {
        fprintf(stderr, "mqtt_load %s: connection refused: %s\n", l->prefix,
                mosquitto_reason_string(rc));
        l->conn_refused = true;
    }
}

static void on_disconnect(struct mosquitto *m, void *arg, int rc, const mosquitto_property *props)
{
    (void)m;
    (void)props;
    struct load *l = arg;
    if (rc != 0) {
        fprintf(stderr, "mqtt_load %s: connection lost (%d) with %ld unacknowledged\n",
                l->prefix, rc, l->inflight);
    }
    l->connected = false;
    l->lost = true;
}

static void on_publish(struct mosquitto *m, void *arg, int mid, int reason,
                       const mosquitto_property *props)
{
    (void)m;
    (void)props;
    struct load *l = arg;
    if (mid < 0 || mid >= MID_SLOTS || l->ids[mid] < 0) {
        fprintf(stderr, "mqtt_load %s: PUBACK for unknown mid %d\n", l->prefix, mid);
        return;
    }
    long n = l->ids[mid];
    l->ids[mid] = -1;
    l->inflight--;
    l->done++;
    l->last_progress = now_ms();
    if (reason < 128) {
        fprintf(l->acked, "%s-%ld\n", l->prefix, n);
        fflush(l->acked);
    } else {
        /* Not accepted by the broker: counted, never recorded as acked. */
        l->refused++;
        fprintf(stderr, "mqtt_load %s: %s-%ld refused: %s\n", l->prefix, l->prefix, n,
                mosquitto_reason_string(reason));
    }
}

int main(int argc, char **argv)
{
    if (argc < 8) {
        fprintf(stderr,
                "usage: mqtt_load HOST PORT TOPIC PREFIX FIRST COUNT ACKED [WINDOW [RATE]]\n");
        return 2;
    }
    const char *host = argv[1];
    int port = (int)parse_num(argv[2], 1, 65535);
    const char *topic = argv[3];
    static struct load l;
    l.prefix = argv[4];
    if (strlen(l.prefix) > 32) {
        fprintf(stderr, "mqtt_load: PREFIX longer than 32 bytes\n");
        return 2;
    }
    long first = parse_num(argv[5], 0, 1000000000L);
    long count = parse_num(argv[6], 1, 10000000L);
    long window = argc > 8 ? parse_num(argv[8], 1, WINDOW_MAX) : 100;
    long rate = argc > 9 ? parse_num(argv[9], 0, 10000000L) : 0;
    for (long i = 0; i < MID_SLOTS; i++) {
        l.ids[i] = -1;
    }
    l.acked = fopen(argv[7], "a");
    if (!l.acked) {
        perror(argv[7]);
        return 2;
    }

    mosquitto_lib_init();
    char client_id[64];
    snprintf(client_id, sizeof(client_id), "mqtt_load-%ld", (long)getpid());
    struct mosquitto *m = mosquitto_new(client_id, true, &l);
    if (!m) {
        fprintf(stderr, "mqtt_load: mosquitto_new failed\n");
        return 1;
    }
    mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_connect_v5_callback_set(m, on_connect);
    mosquitto_disconnect_v5_callback_set(m, on_disconnect);
    mosquitto_publish_v5_callback_set(m, on_publish);
    int rc = mosquitto_connect_bind_v5(m, host, port, 30, NULL, NULL);
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "mqtt_load: connect to %s:%d: %s\n", host, port, mosquitto_strerror(rc));
        return 1;
    }
    long long deadline = now_ms() + GIVE_UP_MS;
    while (!l.connected && !l.conn_refused && !l.lost && now_ms() < deadline) {
        rc = mosquitto_loop(m, 100, 1);
        if (rc != MOSQ_ERR_SUCCESS) {
            break;
        }
    }
    if (!l.connected) {
        fprintf(stderr, "mqtt_load %s: not connected to %s:%d\n", l.prefix, host, port);
        return 1;
    }

    long long started = now_ms();
    l.last_progress = started;
    long next = 0; /* published: first .. first+next-1 */
    char payload[256];
    while (l.done < count && !l.lost) {
        long allowed = count;
        if (rate > 0) {
            allowed = (long)((now_ms() - started) * rate / 1000) + 1;
        }
        while (next < count && next < allowed && l.inflight < window) {
            long n = first + next;
            int len = snprintf(payload, sizeof(payload),
                               "{\"id\":\"%s-%ld\",\"to\":\"user:alice\",\"title\":\"kill %ld\","
                               "\"body\":\"mqtt kill test\"}",
                               l.prefix, n, n);
            int mid = 0;
            rc = mosquitto_publish_v5(m, &mid, topic, len, payload, 1, false, NULL);
            if (rc != MOSQ_ERR_SUCCESS) {
                fprintf(stderr, "mqtt_load %s: publish %s-%ld: %s\n", l.prefix, l.prefix, n,
                        mosquitto_strerror(rc));
                l.lost = true;
                break;
            }
            if (mid <= 0 || mid >= MID_SLOTS || l.ids[mid] >= 0) {
                fprintf(stderr, "mqtt_load %s: mid %d reused while in flight\n", l.prefix, mid);
                return 1;
            }
            l.ids[mid] = n;
            l.inflight++;
            next++;
        }
        /* Short timeout: the pace needs the loop back soon. */
        rc = mosquitto_loop(m, rate > 0 ? 2 : 100, 1);
        if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN) {
            if (!l.lost) {
                fprintf(stderr, "mqtt_load %s: %s\n", l.prefix, mosquitto_strerror(rc));
            }
            l.lost = true;
        }
        if (now_ms() - l.last_progress > GIVE_UP_MS) {
            fprintf(stderr, "mqtt_load %s: no PUBACK for %d ms\n", l.prefix, GIVE_UP_MS);
            break;
        }
    }
    if (!l.lost) {
        mosquitto_disconnect_v5(m, 0, NULL);
    }
    mosquitto_destroy(m);
    mosquitto_lib_cleanup();
    fclose(l.acked);
    fprintf(stderr, "mqtt_load %s: %ld of %ld published, %ld acknowledged, %ld refused\n",
            l.prefix, next, count, l.done - l.refused, l.refused);
    return l.done == count && l.refused == 0 ? 0 : 1;
}
