/*
 * hub_load - feeds the hub as agents would, for bench/run.
 *
 *   hub_load --port P [--host H] [--count N] [--agents A] [--batch B] [--window W]
 *            [--id-prefix S] [--body-bytes B] [--timeout S] [--probe-only]
 *
 * One MQTT 5 client plays A agents (ids "<S>-a0" ...). It first waits until
 * the hub answers: a one-item batch for an unknown user is published every
 * 250 ms until its ack (a rejection, so nothing is stored or sent) comes
 * back — a hub that acks is subscribed. With --probe-only it stops there.
 *
 * Then it publishes N notifications for user:alice in batch envelopes
 * (docs/proto.md) of B items to tidings/v1/agents/<agent>/up, QoS 1, round
 * robin over the agents, each agent keeping at most W batches unacked, like
 * the agent's uplink (uplink.batch_max 256, uplink.window 8). It counts the
 * items the hub acks (after its commit) on tidings/v1/agents/+/ack.
 *
 * Prints one line of key=value pairs (times in Unix ms). Exit 0 when every
 * item was acked ok before --timeout, 1 otherwise.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <mosquitto.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define MAX_AGENTS 64

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static bool connected, subscribed, probe_acked;
static uint64_t done_items[MAX_AGENTS], ok_items, rejected_items;
static uint64_t first_ack_us, last_ack_us;
static const char *g_prefix = "h";
static bool rej_printed;

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
    fprintf(stderr, "hub_load: %s: %s\n", what,
            rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
    exit(2);
}

static void on_connect(struct mosquitto *m, void *arg, int rc, int flags,
                       const mosquitto_property *p)
{
    (void)arg, (void)flags, (void)p;
    if (rc != 0) {
        fprintf(stderr, "hub_load: connect refused: %d\n", rc);
        exit(2);
    }
    int r = mosquitto_subscribe_v5(m, NULL, "tidings/v1/agents/+/ack", 1, 0, NULL);
    if (r != MOSQ_ERR_SUCCESS) {
        die("subscribe", r);
    }
    pthread_mutex_lock(&mu);
    connected = true;
    pthread_mutex_unlock(&mu);
}

static void on_subscribe(struct mosquitto *m, void *arg, int mid, int n, const int *qos,
                         const mosquitto_property *p)
{
    (void)m, (void)arg, (void)mid, (void)p;
    if (n < 1 || qos[0] >= 128) {
        fprintf(stderr, "hub_load: subscription refused\n");
        exit(2);
    }
    pthread_mutex_lock(&mu);
    subscribed = true;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

/* tidings/v1/agents/<prefix>-a<k>/ack -> k, or -1 */
static int agent_index(const char *topic)
{
    const char *base = "tidings/v1/agents/";
    size_t bl = strlen(base), pl = strlen(g_prefix);
    if (strncmp(topic, base, bl) != 0 || strncmp(topic + bl, g_prefix, pl) != 0 ||
        strncmp(topic + bl + pl, "-a", 2) != 0) {
        return -1;
    }
    char *end;
    long k = strtol(topic + bl + pl + 2, &end, 10);
    return (strcmp(end, "/ack") == 0 && k >= 0 && k < MAX_AGENTS) ? (int)k : -1;
}

static void on_message(struct mosquitto *m, void *arg, const struct mosquitto_message *msg,
                       const mosquitto_property *p)
{
    (void)m, (void)arg, (void)p;
    uint64_t now = wall_us();
    cJSON *root = cJSON_ParseWithLength(msg->payload, (size_t)msg->payloadlen);
    const cJSON *acks = root ? cJSON_GetObjectItemCaseSensitive(root, "acks") : NULL;
    if (!cJSON_IsArray(acks)) {
        fprintf(stderr, "hub_load: unreadable ack on %s\n", msg->topic);
        cJSON_Delete(root);
        return;
    }
    int k = agent_index(msg->topic);
    uint64_t ok = 0, rej = 0;
    bool probe = false;
    const cJSON *a;
    cJSON_ArrayForEach(a, acks)
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id");
        const cJSON *okj = cJSON_GetObjectItemCaseSensitive(a, "ok");
        if (cJSON_IsString(id) && strncmp(id->valuestring, "probe-", 6) == 0) {
            probe = true;
            continue;
        }
        if (cJSON_IsTrue(okj)) {
            ok++;
        } else {
            rej++;
            if (!rej_printed) {
                char *s = cJSON_PrintUnformatted(a);
                fprintf(stderr, "hub_load: rejected: %s\n", s ? s : "?");
                free(s);
                rej_printed = true;
            }
        }
    }
    cJSON_Delete(root);
    pthread_mutex_lock(&mu);
    if (probe) {
        probe_acked = true;
    }
    if (k >= 0 && ok + rej > 0) {
        done_items[k] += ok + rej;
        ok_items += ok;
        rejected_items += rej;
        if (!first_ack_us) {
            first_ack_us = now;
        }
        last_ack_us = now;
    }
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

/* Wait on cv (mu held) for at most ms milliseconds. */
static void wait_ms(unsigned ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)ms * 1000000u;
    ts.tv_sec += (time_t)(ns / 1000000000u);
    ts.tv_nsec = (long)(ns % 1000000000u);
    pthread_cond_timedwait(&cv, &mu, &ts);
}

static void usage(void)
{
    fprintf(stderr, "usage: hub_load --port P [--host H] [--count N] [--agents A] [--batch B] "
                    "[--window W] [--id-prefix S] [--body-bytes B] [--timeout S] "
                    "[--probe-only]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 0, agents = 4, batch = 256, window = 8, body_bytes = 100;
    uint64_t count = 10000;
    double timeout_s = 600;
    bool probe_only = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--probe-only")) {
            probe_only = true;
            continue;
        }
        const char *v = i + 1 < argc ? argv[++i] : NULL;
        if (!v) {
            usage();
        }
        if (!strcmp(a, "--host")) {
            host = v;
        } else if (!strcmp(a, "--port")) {
            port = (int)strtol(v, NULL, 10);
        } else if (!strcmp(a, "--count")) {
            count = strtoull(v, NULL, 10);
        } else if (!strcmp(a, "--agents")) {
            agents = (int)strtol(v, NULL, 10);
        } else if (!strcmp(a, "--batch")) {
            batch = (int)strtol(v, NULL, 10);
        } else if (!strcmp(a, "--window")) {
            window = (int)strtol(v, NULL, 10);
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
    if (port <= 0 || agents < 1 || agents > MAX_AGENTS || batch < 1 || batch > 1024 || window < 1 ||
        body_bytes < 0 || body_bytes > 3000 || strlen(g_prefix) > 32) {
        usage();
    }
    uint64_t deadline = mono_ns() + (uint64_t)(timeout_s * 1e9);
    mosquitto_lib_init();
    char cid[64];
    snprintf(cid, sizeof(cid), "bench-hubload-%ld", (long)getpid());
    struct mosquitto *m = mosquitto_new(cid, true, NULL);
    if (!m) {
        die("mosquitto_new", MOSQ_ERR_ERRNO);
    }
    mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);
    mosquitto_connect_v5_callback_set(m, on_connect);
    mosquitto_subscribe_v5_callback_set(m, on_subscribe);
    mosquitto_message_v5_callback_set(m, on_message);
    int rc = mosquitto_connect_bind_v5(m, host, port, 60, NULL, NULL);
    if (rc != MOSQ_ERR_SUCCESS) {
        die("connect", rc);
    }
    if ((rc = mosquitto_loop_start(m)) != MOSQ_ERR_SUCCESS) {
        die("loop_start", rc);
    }
    pthread_mutex_lock(&mu);
    while (!subscribed && mono_ns() < deadline) {
        wait_ms(100);
    }
    pthread_mutex_unlock(&mu);

    /* 1. Probe until the hub acks. */
    char topic[160], agent[64];
    snprintf(agent, sizeof(agent), "%s-a0", g_prefix);
    snprintf(topic, sizeof(topic), "tidings/v1/agents/%s/up", agent);
    uint64_t probe_start = wall_us();
    unsigned probes = 0;
    bool ready = false;
    while (mono_ns() < deadline) {
        char env[512];
        int len = snprintf(env, sizeof(env),
                           "{\"v\":1,\"agent\":\"%s\",\"items\":[{\"id\":\"probe-%ld-%u\","
                           "\"to\":\"user:bench-probe-nobody\",\"title\":\"probe\"}]}",
                           agent, (long)getpid(), probes++);
        rc = mosquitto_publish_v5(m, NULL, topic, len, env, 1, false, NULL);
        if (rc != MOSQ_ERR_SUCCESS) {
            die("publish probe", rc);
        }
        pthread_mutex_lock(&mu);
        wait_ms(250);
        ready = probe_acked;
        pthread_mutex_unlock(&mu);
        if (ready) {
            break;
        }
    }
    if (!ready || probe_only) {
        printf("ready=%d probes=%u probe_ms=%" PRIu64 "\n", ready ? 1 : 0, probes,
               (wall_us() - probe_start) / 1000);
        mosquitto_disconnect_v5(m, 0, NULL);
        mosquitto_loop_stop(m, false);
        mosquitto_destroy(m);
        return ready ? 0 : 1;
    }

    /* 2. The load. */
    char *pad = malloc((size_t)body_bytes + 1);
    size_t cap = (size_t)batch * ((size_t)body_bytes + 400) + 256;
    char *env = malloc(cap);
    if (!pad || !env) {
        return 2;
    }
    memset(pad, 'x', (size_t)body_bytes);
    pad[body_bytes] = '\0';
    uint64_t sent[MAX_AGENTS] = {0}, total = 0, batches = 0;
    uint64_t start_us = wall_us();
    bool timed_out = false;
    int next = 0;
    while (total < count) {
        if (mono_ns() > deadline) {
            timed_out = true;
            break;
        }
        /* The next agent with room in its window, round robin. */
        int k = -1;
        pthread_mutex_lock(&mu);
        for (int t = 0; t < agents; t++) {
            int c = (next + t) % agents;
            if (sent[c] - done_items[c] <= (uint64_t)(window - 1) * (uint64_t)batch) {
                k = c;
                break;
            }
        }
        if (k < 0) {
            wait_ms(100);
            pthread_mutex_unlock(&mu);
            continue;
        }
        pthread_mutex_unlock(&mu);
        next = (k + 1) % agents;
        snprintf(agent, sizeof(agent), "%s-a%d", g_prefix, k);
        snprintf(topic, sizeof(topic), "tidings/v1/agents/%s/up", agent);
        size_t len = (size_t)snprintf(env, cap, "{\"v\":1,\"agent\":\"%s\",\"items\":[", agent);
        int n = 0;
        uint64_t stamp = wall_us();
        for (; n < batch && total < count; n++, total++) {
            len += (size_t)snprintf(env + len, cap - len,
                                    "%s{\"id\":\"%s-a%d-%" PRIu64 "\",\"to\":\"user:alice\","
                                    "\"category\":\"bench\",\"priority\":\"normal\","
                                    "\"title\":\"Bench %" PRIu64 "\",\"body\":\"%s\","
                                    "\"data\":{\"t_us\":%" PRIu64 "}}",
                                    n ? "," : "", g_prefix, k, sent[k] + (uint64_t)n, total, pad,
                                    stamp);
        }
        len += (size_t)snprintf(env + len, cap - len, "]}");
        rc = mosquitto_publish_v5(m, NULL, topic, (int)len, env, 1, false, NULL);
        if (rc != MOSQ_ERR_SUCCESS) {
            die("publish", rc);
        }
        pthread_mutex_lock(&mu);
        sent[k] += (uint64_t)n;
        pthread_mutex_unlock(&mu);
        batches++;
    }
    uint64_t sent_total = total;
    pthread_mutex_lock(&mu);
    while (!timed_out && ok_items + rejected_items < sent_total) {
        if (mono_ns() > deadline) {
            timed_out = true;
            break;
        }
        wait_ms(100);
    }
    uint64_t ok = ok_items, rej = rejected_items, t_last = last_ack_us;
    pthread_mutex_unlock(&mu);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                   (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    double el = t_last > start_us ? (double)(t_last - start_us) / 1e6 : 0;
    printf("ready=1 probes=%u sent=%" PRIu64 " batches=%" PRIu64 " acked_ok=%" PRIu64
           " rejected=%" PRIu64 " start_ms=%" PRIu64 " last_ack_ms=%" PRIu64
           " elapsed_s=%.3f intake_rate=%.0f cpu_s=%.3f timed_out=%d\n",
           probes, sent_total, batches, ok, rej, start_us / 1000, t_last / 1000, el,
           el > 0 ? (double)(ok + rej) / el : 0.0, cpu_s, timed_out ? 1 : 0);
    fflush(stdout);
    mosquitto_disconnect_v5(m, 0, NULL);
    mosquitto_loop_stop(m, false);
    mosquitto_destroy(m);
    mosquitto_lib_cleanup();
    free(pad);
    free(env);
    return ok == count ? 0 : 1;
}
