/* mqtt.c - libmosquitto on the Tidings event loop (see mqtt.h). */
#include "mqtt.h"

#include "backoff.h"
#include "error.h"
#include "log.h"

#include <errno.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>

struct mqtt {
    loop_t *loop;
    struct mosquitto *mosq;
    struct mqtt_handlers h;
    const char *name;
    const char *host;
    int port;
    int keepalive;      /* seconds; 0 = off (what the broker granted, once connected) */
    int keepalive_req;  /* what we ask for in CONNECT */
    int tcp_keepalive;  /* seconds; 0 = off */
    uint32_t session_expiry;
    uint64_t backoff_base, backoff_cap;
    unsigned attempt;   /* consecutive failed connects, for backoff */
    int fd;             /* watched socket or -1 */
    unsigned events;    /* current watch */
    uint64_t misc_timer;
    uint64_t misc_due;  /* monotonic ms the misc timer is armed for */
    uint64_t last_in, last_out; /* monotonic ms of the last read / write on the socket */
    uint64_t retry_timer;
    bool connected;
    bool destroying;
    bool logged_down;   /* "connection lost" logged once per outage */
    unsigned inflight;
};

static int lib_refs;

static void schedule_reconnect(mqtt_t *m);
static void sync_watch(mqtt_t *m);

static void drop_watch(mqtt_t *m)
{
    if (m->fd >= 0) {
        loop_fd_del(m->loop, m->fd);
        m->fd = -1;
        m->events = 0;
    }
    if (m->misc_timer) {
        loop_timer_cancel(m->loop, m->misc_timer);
        m->misc_timer = 0;
    }
}

/*
 * Housekeeping (mosquitto_loop_misc). In libmosquitto 2.0.11 it does one
 * thing: the keepalive check (send PINGREQ when `keepalive` seconds passed
 * without traffic either way, or drop the connection when the last PINGREQ
 * got no answer within `keepalive`). In-flight QoS 1 messages are not retried
 * on a timer (MQTT 3.1.1 and 5 resend them only on reconnect), so with
 * keepalive 0 there is nothing for it to do and no timer is armed: an idle
 * connection then wakes the process never.
 *
 * With keepalive > 0 the timer is armed for the moment a PINGREQ is due,
 * tracked from our own read/write times (mirroring libmosquitto's), plus one
 * second because libmosquitto counts in whole seconds. An idle connection
 * thus costs one timer wake-up (PINGREQ) and one socket wake-up (PINGRESP)
 * per keepalive period, and the broker never waits longer than keepalive +
 * 1 s for a packet from us (it allows 1.5 x keepalive).
 */
static uint64_t misc_deadline(const mqtt_t *m)
{
    uint64_t last = m->last_in < m->last_out ? m->last_in : m->last_out;
    return last + (uint64_t)m->keepalive * 1000u + 1000u;
}

static void arm_misc(mqtt_t *m);

static void on_misc(loop_t *loop, uint64_t id, void *arg)
{
    (void)id;
    mqtt_t *m = arg;
    m->misc_timer = 0;
    (void)loop;
    uint64_t now = clock_mono_ms();
    if (m->fd < 0 || m->keepalive <= 0) {
        return;
    }
    if (now < misc_deadline(m)) {
        /* Traffic since the timer was set: nothing is due yet. */
        arm_misc(m);
        return;
    }
    int rc = mosquitto_loop_misc(m->mosq);
    if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN) {
        LOG_DEBUG("mqtt", "%s: housekeeping: %s", m->name, mosquitto_strerror(rc));
    }
    /* Our deadline is never earlier than libmosquitto's (it counts whole
     * seconds, we add one), so it has now sent a PINGREQ - usually written
     * straight to the socket from inside loop_misc, bypassing our write
     * path, so want_write cannot tell - or, with one unanswered, closed the
     * connection. Like libmosquitto, count the next period from now. (Treating
     * "nothing queued" as "not sent yet" re-armed this timer every second
     * forever after the first PINGREQ.) */
    m->last_in = m->last_out = now;
    sync_watch(m);
}

static void arm_misc(mqtt_t *m)
{
    if (m->destroying || m->fd < 0 || m->keepalive <= 0) {
        if (m->misc_timer) {
            loop_timer_cancel(m->loop, m->misc_timer);
            m->misc_timer = 0;
        }
        return;
    }
    uint64_t due = misc_deadline(m);
    if (m->misc_timer) {
        /* An armed timer that fires early only re-arms (on_misc); one that
         * would fire late is moved. */
        if (m->misc_due <= due) {
            return;
        }
        loop_timer_cancel(m->loop, m->misc_timer);
        m->misc_timer = 0;
    }
    /* Timers count from the loop's clock, taken at this wake-up, so the
     * delay from it ends at or after due. */
    uint64_t now = loop_now_ms(m->loop);
    m->misc_due = due > now ? due : now;
    m->misc_timer = loop_timer_add(m->loop, m->misc_due - now, on_misc, m);
}

/* Kernel keepalive probes on a TCP socket: they cost the process no
 * wake-up, and find a dead peer on an idle connection in about twice
 * tcp_keepalive; TCP_USER_TIMEOUT bounds how long sent data (a batch, a
 * PINGREQ) may stay unacknowledged before the kernel fails the socket. */
static void set_tcp_keepalive(mqtt_t *m, int sock)
{
    if (m->tcp_keepalive <= 0) {
        return;
    }
    int on = 1;
    int idle = m->tcp_keepalive;
    int intvl = idle / 3 > 0 ? idle / 3 : 1;
    int cnt = 3;
    unsigned user_timeout = (unsigned)(idle + intvl * cnt) * 1000u;
    if (setsockopt(sock, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on)) < 0 ||
        setsockopt(sock, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)) < 0 ||
        setsockopt(sock, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl)) < 0 ||
        setsockopt(sock, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt)) < 0 ||
        setsockopt(sock, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof(user_timeout)) <
            0) {
        LOG_WARN("mqtt", "%s: TCP keepalive: %s", m->name, strerror(errno));
    }
}

static void handle_io_error(mqtt_t *m, int rc)
{
    if (rc == MOSQ_ERR_SUCCESS) {
        return;
    }
    drop_watch(m);
    if (m->connected) {
        m->connected = false;
        if (m->h.on_disconnect) {
            m->h.on_disconnect(m->h.arg, rc);
        }
    }
    if (!m->logged_down) {
        LOG_WARN("mqtt", "%s: connection to %s:%d lost: %s", m->name, m->host, m->port,
                 mosquitto_strerror(rc));
        m->logged_down = true;
    }
    schedule_reconnect(m);
}

#define MQTT_READS_PER_WAKEUP 256

/* Does a complete-or-partial packet wait to be read without a new event? */
static bool read_pending(mqtt_t *m)
{
    SSL *ssl = mosquitto_ssl_get(m->mosq);
    if (ssl && SSL_pending(ssl) > 0) {
        return true;
    }
    int sock = mosquitto_socket(m->mosq);
    int avail = 0;
    return sock >= 0 && ioctl(sock, FIONREAD, &avail) == 0 && avail > 0;
}

static void on_fd(loop_t *loop, int fd, unsigned events, void *arg)
{
    (void)loop;
    (void)fd;
    mqtt_t *m = arg;
    int rc = MOSQ_ERR_SUCCESS;
    if (events & (LOOP_READ | LOOP_ERROR)) {
        /* libmosquitto reads one packet per call. Keep reading while bytes
         * wait (in the socket, or already decrypted inside OpenSSL, where
         * epoll cannot see them), so one wake-up takes a burst and the
         * agent commits it in one transaction. Bounded per wake-up. */
        for (int i = 0; i < MQTT_READS_PER_WAKEUP; i++) {
            rc = mosquitto_loop_read(m->mosq, 1);
            if (rc != MOSQ_ERR_SUCCESS || !read_pending(m)) {
                break;
            }
        }
        m->last_in = clock_mono_ms();
    }
    if (rc == MOSQ_ERR_SUCCESS && (events & LOOP_WRITE)) {
        rc = mosquitto_loop_write(m->mosq, 1);
        m->last_out = clock_mono_ms();
    }
    if (rc != MOSQ_ERR_SUCCESS) {
        handle_io_error(m, rc);
        return;
    }
    sync_watch(m);
}

/* Make the loop's watch match libmosquitto's socket and write interest. */
static void sync_watch(mqtt_t *m)
{
    if (m->destroying) {
        return;
    }
    int sock = mosquitto_socket(m->mosq);
    if (sock != m->fd) {
        drop_watch(m);
        if (sock < 0) {
            return;
        }
        if (loop_fd_add(m->loop, sock, LOOP_READ, on_fd, m) < 0) {
            LOG_ERROR("mqtt", "%s: cannot watch socket", m->name);
            return;
        }
        m->fd = sock;
        m->events = LOOP_READ;
        m->last_in = m->last_out = clock_mono_ms();
        set_tcp_keepalive(m, sock);
    }
    unsigned want = LOOP_READ | (mosquitto_want_write(m->mosq) ? LOOP_WRITE : 0);
    if (want != m->events && loop_fd_mod(m->loop, m->fd, want) == 0) {
        m->events = want;
    }
    arm_misc(m);
}

static void before_sleep(loop_t *loop, void *arg)
{
    (void)loop;
    mqtt_t *m = arg;
    if (m->fd >= 0 && mosquitto_want_write(m->mosq)) {
        int rc = mosquitto_loop_write(m->mosq, 1);
        m->last_out = clock_mono_ms();
        if (rc != MOSQ_ERR_SUCCESS) {
            handle_io_error(m, rc);
            return;
        }
    }
    if (m->fd >= 0) {
        sync_watch(m);
    }
}

/* Start a connection: non-blocking, or blocking with a session expiry
 * property for a persistent session on a local broker (see mqtt.h). */
static int start_connect(mqtt_t *m, bool first)
{
    if (m->session_expiry == 0) {
        m->keepalive = m->keepalive_req;
        return first ? mosquitto_connect_async(m->mosq, m->host, m->port, m->keepalive)
                     : mosquitto_reconnect_async(m->mosq);
    }
    m->keepalive = m->keepalive_req;
    mosquitto_property *props = NULL;
    int rc = mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL,
                                          m->session_expiry);
    if (rc == MOSQ_ERR_SUCCESS) {
        rc = mosquitto_connect_bind_v5(m->mosq, m->host, m->port, m->keepalive, NULL, props);
    }
    mosquitto_property_free_all(&props);
    return rc;
}

static void try_connect(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    mqtt_t *m = arg;
    m->retry_timer = 0;
    int rc = start_connect(m, false);
    if (rc != MOSQ_ERR_SUCCESS) {
        if (!m->logged_down) {
            LOG_WARN("mqtt", "%s: cannot connect to %s:%d: %s", m->name, m->host, m->port,
                     rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
            m->logged_down = true;
        }
        schedule_reconnect(m);
        return;
    }
    sync_watch(m);
    /* A TCP connect in progress shows up as writability. */
    if (m->fd >= 0) {
        loop_fd_mod(m->loop, m->fd, LOOP_READ | LOOP_WRITE);
        m->events = LOOP_READ | LOOP_WRITE;
    }
}

static void schedule_reconnect(mqtt_t *m)
{
    if (m->destroying || m->retry_timer) {
        return;
    }
    uint64_t d = backoff_delay(m->attempt, m->backoff_base, m->backoff_cap);
    if (m->attempt < 32) {
        m->attempt++;
    }
    m->retry_timer = loop_timer_add(m->loop, d, try_connect, m);
}

static void cb_connect(struct mosquitto *mosq, void *obj, int rc, int flags,
                       const mosquitto_property *props)
{
    (void)mosq;
    (void)flags;
    mqtt_t *m = obj;
    if (rc != 0) {
        LOG_WARN("mqtt", "%s: broker %s:%d refused the connection: %s", m->name, m->host, m->port,
                 mosquitto_reason_string(rc));
        m->logged_down = true;
        /* libmosquitto keeps the socket; close it and retry later. */
        mosquitto_disconnect(m->mosq);
        return;
    }
    m->connected = true;
    m->attempt = 0;
    m->inflight = 0;
    /* An MQTT 5 broker may impose its own keepalive (Server Keep Alive,
     * e.g. its max_keepalive when we asked for 0); libmosquitto adopts it,
     * and so must the housekeeping timer. */
    uint16_t server_ka = 0;
    if (mosquitto_property_read_int16(props, MQTT_PROP_SERVER_KEEP_ALIVE, &server_ka, false)) {
        if ((int)server_ka != m->keepalive) {
            LOG_INFO("mqtt", "%s: broker %s:%d set keepalive %us (asked for %ds)", m->name,
                     m->host, m->port, (unsigned)server_ka, m->keepalive_req);
        }
        m->keepalive = server_ka;
    }
    LOG_INFO("mqtt", "%s: connected to %s:%d", m->name, m->host, m->port);
    m->logged_down = false;
    if (m->h.on_connect) {
        m->h.on_connect(m->h.arg);
    }
}

static void cb_disconnect(struct mosquitto *mosq, void *obj, int rc,
                          const mosquitto_property *props)
{
    (void)mosq;
    (void)props;
    mqtt_t *m = obj;
    bool was = m->connected;
    m->connected = false;
    if (m->destroying) {
        return;
    }
    if (was && m->h.on_disconnect) {
        m->h.on_disconnect(m->h.arg, rc);
    }
    if (!m->logged_down) {
        LOG_WARN("mqtt", "%s: disconnected from %s:%d: %s", m->name, m->host, m->port,
                 rc == MOSQ_ERR_CONN_LOST ? "connection lost" : mosquitto_reason_string(rc));
        m->logged_down = true;
    }
    schedule_reconnect(m);
}

static void cb_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg,
                       const mosquitto_property *props)
{
    (void)mosq;
    mqtt_t *m = obj;
    if (m->h.on_message) {
        m->h.on_message(m->h.arg, msg, props);
    }
}

static void cb_publish(struct mosquitto *mosq, void *obj, int mid, int reason,
                       const mosquitto_property *props)
{
    (void)mosq;
    (void)props;
    mqtt_t *m = obj;
    if (m->inflight > 0) {
        m->inflight--;
    }
    if (m->h.on_publish) {
        m->h.on_publish(m->h.arg, mid, reason);
    }
}

mqtt_t *mqtt_create(loop_t *loop, const struct mqtt_opts *o, const struct mqtt_handlers *h)
{
    if (lib_refs++ == 0) {
        mosquitto_lib_init();
    }
    mqtt_t *m = calloc(1, sizeof(*m));
    if (!m) {
        goto fail;
    }
    m->loop = loop;
    m->h = *h;
    m->name = o->name ? o->name : "mqtt";
    m->host = o->host;
    m->port = o->port;
    /* 0 (off) or 5..65535 s (MQTT's field is 16 bits; libmosquitto refuses
     * 1..4). */
    m->keepalive_req = o->keepalive_s == 0 ? 0
                       : o->keepalive_s < 5 ? 5
                       : o->keepalive_s > 65535 ? 65535
                                                : o->keepalive_s;
    m->keepalive = m->keepalive_req;
    m->tcp_keepalive = o->tcp_keepalive_s > 0 ? o->tcp_keepalive_s : 0;
    m->backoff_base = o->backoff_base_ms ? o->backoff_base_ms : 500;
    m->backoff_cap = o->backoff_cap_ms ? o->backoff_cap_ms : 60000;
    m->fd = -1;
    m->session_expiry = o->session_expiry_s;
    bool persistent = m->session_expiry > 0 && o->client_id && *o->client_id;
    if (!persistent) {
        m->session_expiry = 0;
    }
    m->mosq = mosquitto_new(o->client_id && *o->client_id ? o->client_id : NULL, !persistent, m);
    if (!m->mosq) {
        LOG_ERROR("mqtt", "%s: mosquitto_new: %s", m->name, strerror(errno));
        goto fail;
    }
    mosquitto_int_option(m->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    /* Acks and small batches must not wait for Nagle + delayed ACK (40 ms). */
    mosquitto_int_option(m->mosq, MOSQ_OPT_TCP_NODELAY, 1);
    if (o->max_inflight) {
        mosquitto_int_option(m->mosq, MOSQ_OPT_SEND_MAXIMUM, (int)o->max_inflight);
    }
    mosquitto_connect_v5_callback_set(m->mosq, cb_connect);
    mosquitto_disconnect_v5_callback_set(m->mosq, cb_disconnect);
    mosquitto_message_v5_callback_set(m->mosq, cb_message);
    mosquitto_publish_v5_callback_set(m->mosq, cb_publish);
    if (o->username && *o->username) {
        if (mosquitto_username_pw_set(m->mosq, o->username, o->password) != MOSQ_ERR_SUCCESS) {
            goto fail;
        }
    }
    if (o->cafile && *o->cafile) {
        int rc = mosquitto_tls_set(m->mosq, o->cafile, NULL,
                                   o->certfile && *o->certfile ? o->certfile : NULL,
                                   o->keyfile && *o->keyfile ? o->keyfile : NULL, NULL);
        if (rc != MOSQ_ERR_SUCCESS) {
            LOG_ERROR("mqtt", "%s: TLS setup (ca %s): %s", m->name, o->cafile,
                      mosquitto_strerror(rc));
            goto fail;
        }
    }
    if (o->will_topic && *o->will_topic) {
        const char *p = o->will_payload ? o->will_payload : "";
        if (mosquitto_will_set_v5(m->mosq, o->will_topic, (int)strlen(p), p, 1, o->will_retain,
                                  NULL) != MOSQ_ERR_SUCCESS) {
            goto fail;
        }
    }
    if (loop_before_sleep(loop, before_sleep, m) < 0) {
        goto fail;
    }
    int rc = start_connect(m, true);
    if (rc != MOSQ_ERR_SUCCESS) {
        LOG_WARN("mqtt", "%s: cannot connect to %s:%d: %s (will retry)", m->name, m->host,
                 m->port, rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
        m->logged_down = true;
        schedule_reconnect(m);
    } else {
        sync_watch(m);
        if (m->fd >= 0) {
            loop_fd_mod(m->loop, m->fd, LOOP_READ | LOOP_WRITE);
            m->events = LOOP_READ | LOOP_WRITE;
        }
    }
    return m;
fail:
    if (m) {
        if (m->mosq) {
            mosquitto_destroy(m->mosq);
        }
        free(m);
    }
    if (--lib_refs == 0) {
        mosquitto_lib_cleanup();
    }
    return NULL;
}

void mqtt_destroy(mqtt_t *m)
{
    if (!m) {
        return;
    }
    m->destroying = true;
    if (m->connected) {
        mosquitto_disconnect(m->mosq);
        /* Best effort flush of DISCONNECT. */
        mosquitto_loop_write(m->mosq, 1);
    }
    drop_watch(m);
    if (m->misc_timer) {
        loop_timer_cancel(m->loop, m->misc_timer);
    }
    if (m->retry_timer) {
        loop_timer_cancel(m->loop, m->retry_timer);
    }
    mosquitto_destroy(m->mosq);
    free(m);
    if (--lib_refs == 0) {
        mosquitto_lib_cleanup();
    }
}

bool mqtt_connected(const mqtt_t *m)
{
    return m->connected;
}

unsigned mqtt_inflight(const mqtt_t *m)
{
    return m->inflight;
}

int mqtt_publish(mqtt_t *m, const char *topic, const void *payload, size_t len, int qos,
                 bool retain, uint32_t expiry_s, const mosquitto_property *props, int *mid)
{
    if (!m->connected) {
        return -ENOTCONN;
    }
    if (len > INT32_MAX) {
        return TDG_ETOOBIG;
    }
    mosquitto_property *all = NULL;
    if (expiry_s > 0) {
        if (mosquitto_property_copy_all(&all, props) != MOSQ_ERR_SUCCESS ||
            mosquitto_property_add_int32(&all, MQTT_PROP_MESSAGE_EXPIRY_INTERVAL, expiry_s) !=
                MOSQ_ERR_SUCCESS) {
            mosquitto_property_free_all(&all);
            return -ENOMEM;
        }
        props = all;
    }
    int rc = mosquitto_publish_v5(m->mosq, mid, topic, (int)len, payload, qos, retain, props);
    mosquitto_property_free_all(&all);
    if (rc != MOSQ_ERR_SUCCESS) {
        LOG_DEBUG("mqtt", "%s: publish to %s: %s", m->name, topic, mosquitto_strerror(rc));
        return rc == MOSQ_ERR_NO_CONN ? -ENOTCONN : TDG_EMQTT;
    }
    if (qos > 0) {
        m->inflight++;
    }
    return 0;
}

int mqtt_subscribe(mqtt_t *m, const char *topic, int qos)
{
    int rc = mosquitto_subscribe_v5(m->mosq, NULL, topic, qos, 0, NULL);
    if (rc != MOSQ_ERR_SUCCESS) {
        LOG_ERROR("mqtt", "%s: subscribe %s: %s", m->name, topic, mosquitto_strerror(rc));
        return TDG_EMQTT;
    }
    return 0;
}
