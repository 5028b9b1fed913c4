/* mqtt.c - Tidings' MQTT 5 client on the event loop, TLS by mbedtls (see mqtt.h). */
#include "mqtt.h"

#include "backoff.h"
#include "error.h"
#include "log.h"
#include "mqtt_codec.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mbedtls/asn1.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

#define MOD "mqtt"
/* Bytes read from the socket per wake-up at most: a burst is taken in one
 * wake-up (and committed by the agent in one transaction), yet one busy
 * connection cannot starve the rest of the loop. */
#define MQTT_READ_BUDGET (256u * 1024u)
#define MQTT_READ_CHUNK (16u * 1024u)
#define MQTT_READ_BUFFER_KEEP (256u * 1024u)
#define MQTT_CONNECT_TIMEOUT_MS 30000u
#define MQTT_STABLE_MS 10000u /* a connection up this long resets the backoff */
#define MQTT_DEFAULT_MAX_PACKET (1024u * 1024u)
/* Bytes queued for the socket at most (publishes beyond are refused). */
#define MQTT_TX_MAX (64u * 1024u * 1024u)
#define MQTT_MAX_SUBS 32 /* SUBSCRIBEs awaiting their SUBACK */

enum state { ST_IDLE, ST_TCP, ST_TLS, ST_MQTT, ST_UP };

/* A QoS 1 message waiting beyond the window (already encoded). */
struct outmsg {
    struct outmsg *next;
    uint16_t mid;
    size_t len;
    uint8_t data[];
};

struct tls {
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_x509_crt ca, cert;
    mbedtls_pk_context key;
    mbedtls_ssl_config conf;
    mbedtls_ssl_context ssl;
    bool ssl_live;
    size_t pending; /* a write that returned WANT_WRITE: call again with this length */
    bool ip_host;   /* host is an IP literal: checked against the certificate's IP SANs */
};

struct sub {
    uint16_t mid;
    char topic[96]; /* for the log */
};

struct mqtt {
    loop_t *loop;
    struct mqtt_handlers h;
    const char *name;
    const char *host;
    int port;
    char *client_id, *username, *password, *will_topic, *will_payload;
    bool will_retain;
    int keepalive;     /* seconds; 0 = off (what the broker granted, once connected) */
    int keepalive_req; /* what we ask for in CONNECT */
    int busy_keepalive; /* seconds; 0 = off (mqtt_opts.busy_keepalive_s) */
    uint64_t busy_since; /* monotonic ms: the first of the unacknowledged QoS 1 publishes */
    int tcp_keepalive; /* seconds; 0 = off */
    uint32_t session_expiry;
    uint16_t receive_max;
    uint32_t max_packet;
    bool manual_ack;
    unsigned max_inflight_opt;
    unsigned window;            /* outbound QoS 1 window on this connection */
    uint32_t broker_max_packet; /* 0: no limit */
    uint64_t backoff_base, backoff_cap;
    unsigned attempt; /* consecutive failed connects, for backoff */
    enum state st;
    int fd;
    unsigned events; /* current watch */
    bool watched;
    struct addrinfo *ai_list, *ai_next;
    uint64_t conn_started;
    uint64_t misc_timer;
    uint64_t misc_due;
    uint64_t last_in, last_out; /* monotonic ms of the last read / write on the socket */
    uint64_t ping_sent;         /* monotonic ms of an unanswered PINGREQ, 0 = none */
    uint64_t retry_timer;
    uint64_t more_timer; /* TLS bytes decrypted and unread: go on without an fd event */
    bool connected;
    bool destroying;
    bool logged_down;  /* "connection lost" logged once per outage */
    bool rm_warned;    /* the broker exceeded our Receive Maximum (logged once a connection) */
    uint64_t up_since; /* monotonic ms of the last CONNACK */
    struct tls *tls;
    struct mqtt_buf rx, tx;
    size_t tx_off;
    /* outbound QoS 1 */
    uint8_t mid_used[8192]; /* in flight, queued, or a SUBSCRIBE */
    uint8_t mid_sent[8192]; /* in flight (counted in the window) */
    uint16_t next_mid;
    unsigned sent, queued;
    struct outmsg *wait_head, *wait_tail;
    /* inbound QoS 1 PUBACKs held (manual_ack) */
    uint16_t *held;
    unsigned nheld, held_cap;
    struct sub subs[MQTT_MAX_SUBS];
    unsigned nsubs;
    char *scratch; /* NUL-terminated topic + response topic for on_message */
    size_t scratch_cap;
};

static void sync_watch(mqtt_t *m);
static void schedule_reconnect(mqtt_t *m);
static void flush_tx(mqtt_t *m);
static void connect_next(mqtt_t *m);

static bool bit_get(const uint8_t *bits, uint16_t i)
{
    return bits[i >> 3] & (1u << (i & 7));
}

static void bit_set(uint8_t *bits, uint16_t i, bool v)
{
    if (v) {
        bits[i >> 3] |= (uint8_t)(1u << (i & 7));
    } else {
        bits[i >> 3] &= (uint8_t) ~(1u << (i & 7));
    }
}

static char *dup_opt(const char *s)
{
    return s && *s ? strdup(s) : NULL;
}

/* --- socket and TLS I/O ------------------------------------------------------ */

static int tls_send(void *ctx, const unsigned char *buf, size_t len)
{
    int fd = *(int *)ctx;
    ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
    if (n >= 0) {
        return (int)n;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        return MBEDTLS_ERR_SSL_WANT_WRITE;
    }
    return errno == EPIPE || errno == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET
                                                 : MBEDTLS_ERR_NET_SEND_FAILED;
}

static int tls_recv(void *ctx, unsigned char *buf, size_t len)
{
    int fd = *(int *)ctx;
    ssize_t n = recv(fd, buf, len, 0);
    if (n >= 0) {
        return (int)n;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        return MBEDTLS_ERR_SSL_WANT_READ;
    }
    return errno == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET : MBEDTLS_ERR_NET_RECV_FAILED;
}

static const char *tls_err(int rc, char *buf, size_t len)
{
    mbedtls_strerror(rc, buf, len);
    return buf;
}

/* Close the socket and forget everything about the connection. */
static void close_conn(mqtt_t *m)
{
    if (m->watched) {
        loop_fd_del(m->loop, m->fd);
        m->watched = false;
    }
    if (m->tls && m->tls->ssl_live) {
        mbedtls_ssl_free(&m->tls->ssl);
        m->tls->ssl_live = false;
        m->tls->pending = 0;
    }
    if (m->fd >= 0) {
        close(m->fd);
        m->fd = -1;
    }
    m->events = 0;
    if (m->misc_timer) {
        loop_timer_cancel(m->loop, m->misc_timer);
        m->misc_timer = 0;
    }
    if (m->more_timer) {
        loop_timer_cancel(m->loop, m->more_timer);
        m->more_timer = 0;
    }
    if (m->ai_list) {
        freeaddrinfo(m->ai_list);
        m->ai_list = m->ai_next = NULL;
    }
    m->st = ST_IDLE;
    m->rx.len = 0;
    m->tx.len = 0;
    m->tx_off = 0;
    m->ping_sent = 0;
    /* Unacknowledged outbound messages are forgotten (mqtt.h). */
    memset(m->mid_used, 0, sizeof(m->mid_used));
    memset(m->mid_sent, 0, sizeof(m->mid_sent));
    while (m->wait_head) {
        struct outmsg *o = m->wait_head;
        m->wait_head = o->next;
        free(o);
    }
    m->wait_tail = NULL;
    m->sent = m->queued = 0;
    m->nheld = 0;
    m->nsubs = 0;
    m->rm_warned = false;
}

/*
 * The connection failed or was lost: close it, tell the owner (if it was
 * up), log (once per outage; protocol errors always), reconnect later.
 * rc: the broker's reason code (>= 0) or a negative error.
 */
static void conn_failed(mqtt_t *m, int rc, const char *what)
{
    bool was = m->connected;
    bool connecting = m->st == ST_TCP || m->st == ST_TLS || m->st == ST_IDLE;
    close_conn(m);
    m->connected = false;
    /* The backoff starts over only after a connection that lasted: one
     * the broker (or we) close right away again and again - a protocol
     * error repeated at every session resume, commits failing - backs
     * off like a failing connect. */
    if (was && clock_mono_ms() - m->up_since >= MQTT_STABLE_MS) {
        m->attempt = 0;
    }
    if (!m->logged_down || rc == TDG_EMQTT) {
        LOG_WARN(MOD, "%s: %s %s:%d%s: %s", m->name,
                 connecting ? "cannot connect to" : "connection to", m->host, m->port,
                 connecting ? "" : " lost", what);
        m->logged_down = true;
    }
    if (was && !m->destroying && m->h.on_disconnect) {
        m->h.on_disconnect(m->h.arg, rc); /* not while its owner is tearing it down */
    }
    schedule_reconnect(m);
}

/* A malformed packet or a protocol violation: say so to the broker (best
 * effort), log what it was, close and reconnect. */
static void protocol_error(mqtt_t *m, uint8_t reason, const char *why)
{
    char what[MQTT_WHY_MAX + 64];
    snprintf(what, sizeof(what), "%s from the broker: %s; closing the connection",
             reason == 0x81 ? "malformed packet" : "protocol error", why);
    if (m->st == ST_UP || m->st == ST_MQTT) {
        m->tx.len = m->tx_off = 0;
        if (m->tls) {
            m->tls->pending = 0;
        }
        if (mqtt_enc_disconnect(&m->tx, reason) == 0) {
            flush_tx(m);
        }
    }
    if (m->fd >= 0) {
        conn_failed(m, TDG_EMQTT, what);
    }
}

/* Write what is queued, as far as the socket takes it. On a hard error the
 * connection is failed (m->fd < 0 afterwards). */
static void flush_tx(mqtt_t *m)
{
    bool wrote = false;
    while (m->fd >= 0 && m->tx_off < m->tx.len) {
        size_t left = m->tx.len - m->tx_off;
        ssize_t n;
        if (m->tls) {
            size_t chunk = m->tls->pending          ? m->tls->pending
                           : left > MQTT_READ_CHUNK ? MQTT_READ_CHUNK
                                                    : left;
            int r = mbedtls_ssl_write(&m->tls->ssl, m->tx.p + m->tx_off, chunk);
            if (r == MBEDTLS_ERR_SSL_WANT_WRITE || r == MBEDTLS_ERR_SSL_WANT_READ) {
                m->tls->pending = chunk;
                break;
            }
            if (r < 0) {
                char eb[128];
                conn_failed(m, -EIO, tls_err(r, eb, sizeof(eb)));
                return;
            }
            m->tls->pending = 0;
            n = r;
        } else {
            n = send(m->fd, m->tx.p + m->tx_off, left, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                    break;
                }
                conn_failed(m, -errno, strerror(errno));
                return;
            }
        }
        m->tx_off += (size_t)n;
        wrote = true;
    }
    if (wrote) {
        m->last_out = clock_mono_ms();
    }
    if (m->tx_off == m->tx.len) {
        m->tx.len = m->tx_off = 0;
    } else if (m->tx_off >= 64 * 1024 && (!m->tls || !m->tls->pending)) {
        memmove(m->tx.p, m->tx.p + m->tx_off, m->tx.len - m->tx_off);
        m->tx.len -= m->tx_off;
        m->tx_off = 0;
    }
}

/* --- keepalive and the connect deadline ---------------------------------------- */

/*
 * One timer, armed only when something is due: while connecting, the
 * connect deadline; when up with keepalive on, the moment a PINGREQ is due
 * (keepalive after the last packet either way) or, with one unanswered,
 * the moment its PINGRESP is overdue. Up with keepalive 0: no timer, so an
 * idle connection never wakes the process. While our QoS 1 publishes are
 * unacknowledged, busy_keepalive (when shorter than the keepalive) makes a
 * PINGREQ due that long after the later of the broker's last packet and
 * the first of them.
 */
/* The busy keepalive applies: publishes await their PUBACK and it is
 * shorter than the keepalive (off, or the broker's Server Keep Alive). */
static bool busy_rule(const mqtt_t *m)
{
    return m->busy_keepalive > 0 && m->sent + m->queued > 0 &&
           (m->keepalive <= 0 || m->busy_keepalive < m->keepalive);
}

static bool misc_deadline(const mqtt_t *m, uint64_t *due)
{
    if (m->fd < 0 || m->destroying) {
        return false;
    }
    if (m->st != ST_UP) {
        *due = m->conn_started + MQTT_CONNECT_TIMEOUT_MS;
        return true;
    }
    if (busy_rule(m)) {
        uint64_t ka = (uint64_t)m->busy_keepalive * 1000u;
        if (m->ping_sent) {
            *due = m->ping_sent + ka;
        } else {
            *due = (m->last_in > m->busy_since ? m->last_in : m->busy_since) + ka;
        }
        return true;
    }
    if (m->keepalive <= 0) {
        return false;
    }
    uint64_t ka = (uint64_t)m->keepalive * 1000u;
    if (m->ping_sent) {
        *due = m->ping_sent + ka;
    } else {
        *due = (m->last_in < m->last_out ? m->last_in : m->last_out) + ka;
    }
    return true;
}

static void arm_misc(mqtt_t *m);

static void on_misc(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    mqtt_t *m = arg;
    m->misc_timer = 0;
    uint64_t due, now = clock_mono_ms();
    if (!misc_deadline(m, &due)) {
        return;
    }
    if (now < due) {
        arm_misc(m); /* traffic since the timer was set: nothing is due yet */
        return;
    }
    if (m->st != ST_UP) {
        char what[96];
        snprintf(what, sizeof(what), "not connected within %us (%s)",
                 MQTT_CONNECT_TIMEOUT_MS / 1000,
                 m->st == ST_TCP   ? "TCP connect"
                 : m->st == ST_TLS ? "TLS handshake"
                                   : "no CONNACK");
        conn_failed(m, -ETIMEDOUT, what);
        return;
    }
    if (m->ping_sent) {
        char what[96];
        if (!busy_rule(m)) {
            snprintf(what, sizeof(what), "no PINGRESP within the keepalive (%ds)", m->keepalive);
        } else {
            snprintf(what, sizeof(what),
                     "no PINGRESP within %ds while %u publish(es) await their PUBACK",
                     m->busy_keepalive, m->sent + m->queued);
        }
        conn_failed(m, -ETIMEDOUT, what);
        return;
    }
    if (mqtt_enc_pingreq(&m->tx) < 0) {
        conn_failed(m, -ENOMEM, "out of memory");
        return;
    }
    m->ping_sent = now;
    flush_tx(m);
    if (m->fd >= 0) {
        sync_watch(m);
    }
}

static void arm_misc(mqtt_t *m)
{
    uint64_t due;
    if (!misc_deadline(m, &due)) {
        if (m->misc_timer) {
            loop_timer_cancel(m->loop, m->misc_timer);
            m->misc_timer = 0;
        }
        return;
    }
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

/* --- inbound packets ---------------------------------------------------------- */

static void on_connack(mqtt_t *m, const struct mqtt_pkt *p)
{
    if (p->reason != 0) {
        LOG_WARN(MOD, "%s: broker %s:%d refused the connection: %s (0x%02x)", m->name, m->host,
                 m->port, mqtt_reason_string(p->reason), (unsigned)p->reason);
        m->logged_down = true;
        conn_failed(m, p->reason, "refused");
        return;
    }
    m->st = ST_UP;
    m->connected = true;
    m->up_since = clock_mono_ms();
    m->busy_since = m->up_since; /* a persistent session's publishes go out again */
    m->ping_sent = 0;
    m->broker_max_packet = p->max_packet;
    unsigned win = m->max_inflight_opt ? m->max_inflight_opt : 65535u;
    m->window = win < p->receive_max ? win : p->receive_max;
    /* An MQTT 5 broker may impose its own keepalive (Server Keep Alive, e.g.
     * its max_keepalive when we asked for 0): the timer follows it. */
    if (p->has_server_keepalive) {
        if ((int)p->server_keepalive != m->keepalive_req) {
            LOG_INFO(MOD, "%s: broker %s:%d set keepalive %us (asked for %ds)", m->name, m->host,
                     m->port, (unsigned)p->server_keepalive, m->keepalive_req);
        }
        m->keepalive = p->server_keepalive;
    }
    /* The connect deadline is over: the timer now follows the keepalive (or
     * there is none), rather than waking the process once at the old
     * deadline only to re-arm (arm_misc keeps a timer that fires early). */
    if (m->misc_timer) {
        loop_timer_cancel(m->loop, m->misc_timer);
        m->misc_timer = 0;
    }
    arm_misc(m);
    if (p->max_qos < 1) {
        LOG_WARN(MOD, "%s: broker %s:%d takes QoS 0 only: QoS 1 publishes will be refused", m->name,
                 m->host, m->port);
    }
    LOG_INFO(MOD, "%s: connected to %s:%d", m->name, m->host, m->port);
    m->logged_down = false;
    if (m->h.on_connect) {
        m->h.on_connect(m->h.arg);
    }
}

/* Copy topic and response topic, NUL-terminated, into the scratch buffer. */
static bool scratch_strings(mqtt_t *m, const struct mqtt_pkt *p, const char **topic,
                            const char **rt)
{
    size_t need = p->topic_len + 1 + p->response_topic_len + 1;
    if (need > m->scratch_cap) {
        char *s = realloc(m->scratch, need);
        if (!s) {
            return false;
        }
        m->scratch = s;
        m->scratch_cap = need;
    }
    memcpy(m->scratch, p->topic, p->topic_len);
    m->scratch[p->topic_len] = '\0';
    *topic = m->scratch;
    *rt = NULL;
    if (p->response_topic) {
        char *r = m->scratch + p->topic_len + 1;
        memcpy(r, p->response_topic, p->response_topic_len);
        r[p->response_topic_len] = '\0';
        *rt = r;
    }
    return true;
}

static void on_publish_in(mqtt_t *m, const struct mqtt_pkt *p)
{
    if (p->qos == 1 && m->manual_ack && m->nheld >= m->receive_max) {
        /* The broker went past our Receive Maximum. mosquitto 2.0.11 does
         * so when a persistent session resumes (it resends what was in
         * flight and then fills a fresh quota): closing with 0x93 would
         * only repeat at every reconnect. Take them, say so once; the hard
         * bound is the packet identifier space. */
        if (m->nheld >= 65535u) {
            protocol_error(m, 0x93, "PUBLISH: 65535 QoS 1 messages unacknowledged");
            return;
        }
        if (!m->rm_warned) {
            LOG_WARN(MOD,
                     "%s: broker %s:%d sent more than our receive maximum (%u) QoS 1 "
                     "messages unacknowledged: taking them",
                     m->name, m->host, m->port, (unsigned)m->receive_max);
            m->rm_warned = true;
        }
    }
    struct mqtt_msg msg = {
        .payload = p->payload_len ? (const void *)p->payload : "",
        .len = p->payload_len,
        .qos = p->qos,
        .retain = p->retain,
        .mid = p->id,
        .corr = p->corr_len ? p->corr : NULL,
        .corr_len = p->corr_len,
        .has_expiry = p->has_expiry,
        .expiry_s = p->expiry,
    };
    if (!scratch_strings(m, p, &msg.topic, &msg.response_topic)) {
        conn_failed(m, -ENOMEM, "out of memory");
        return;
    }
    if (p->qos == 1 && m->manual_ack) {
        if (m->nheld >= m->held_cap) {
            unsigned cap = m->held_cap ? m->held_cap * 2 : 64;
            cap = cap > 65535u ? 65535u : cap;
            uint16_t *h = realloc(m->held, cap * sizeof(*h));
            if (!h) {
                conn_failed(m, -ENOMEM, "out of memory");
                return;
            }
            m->held = h;
            m->held_cap = cap;
        }
        m->held[m->nheld++] = p->id;
    }
    if (m->h.on_message) {
        m->h.on_message(m->h.arg, &msg);
    }
    if (p->qos == 1 && !m->manual_ack && m->fd >= 0 && mqtt_enc_puback(&m->tx, p->id, 0) < 0) {
        conn_failed(m, -ENOMEM, "out of memory");
    }
}

/* Move queued messages into the window as it opens. */
static void fill_window(mqtt_t *m)
{
    while (m->wait_head && m->sent < m->window) {
        struct outmsg *o = m->wait_head;
        if (mqtt_buf_reserve(&m->tx, o->len) < 0) {
            return; /* tx at its ceiling: later */
        }
        memcpy(m->tx.p + m->tx.len, o->data, o->len);
        m->tx.len += o->len;
        m->wait_head = o->next;
        if (!m->wait_head) {
            m->wait_tail = NULL;
        }
        bit_set(m->mid_sent, o->mid, true);
        m->sent++;
        m->queued--;
        free(o);
    }
}

static void on_puback(mqtt_t *m, const struct mqtt_pkt *p)
{
    if (!bit_get(m->mid_sent, p->id)) {
        LOG_DEBUG(MOD, "%s: PUBACK for mid %u not in flight: ignored", m->name, (unsigned)p->id);
        return;
    }
    bit_set(m->mid_sent, p->id, false);
    bit_set(m->mid_used, p->id, false);
    m->sent--;
    fill_window(m);
    if (m->busy_keepalive > 0 && m->sent + m->queued == 0 && m->misc_timer) {
        /* Nothing awaited any more: back to the keepalive, or no timer
         * (arm_misc would keep the earlier busy one and wake for it). */
        loop_timer_cancel(m->loop, m->misc_timer);
        m->misc_timer = 0;
        arm_misc(m);
    }
    if (p->reason >= 0x80) {
        LOG_DEBUG(MOD, "%s: publish mid %u refused: %s", m->name, (unsigned)p->id,
                  mqtt_reason_string(p->reason));
    }
    if (m->h.on_publish) {
        m->h.on_publish(m->h.arg, p->id, p->reason);
    }
}

static void on_suback(mqtt_t *m, const struct mqtt_pkt *p)
{
    for (unsigned i = 0; i < m->nsubs; i++) {
        if (m->subs[i].mid != p->id) {
            continue;
        }
        if (p->reason >= 0x80) {
            LOG_ERROR(MOD, "%s: subscribe %s refused by %s:%d: %s (0x%02x)", m->name,
                      m->subs[i].topic, m->host, m->port, mqtt_reason_string(p->reason),
                      (unsigned)p->reason);
        }
        bit_set(m->mid_used, p->id, false);
        m->subs[i] = m->subs[--m->nsubs];
        return;
    }
    char why[64];
    snprintf(why, sizeof(why), "SUBACK for packet identifier %u never sent", (unsigned)p->id);
    protocol_error(m, 0x82, why);
}

static void handle_packet(mqtt_t *m, const uint8_t *data, size_t len)
{
    struct mqtt_pkt p;
    char why[MQTT_WHY_MAX];
    if (mqtt_decode(data, len, &p, why, sizeof(why)) < 0) {
        protocol_error(m, 0x81, why);
        return;
    }
    if (m->st == ST_MQTT && p.type != MQTT_CONNACK && p.type != MQTT_DISCONNECT) {
        snprintf(why, sizeof(why), "%s before CONNACK", mqtt_type_name(p.type));
        protocol_error(m, 0x82, why);
        return;
    }
    switch (p.type) {
    case MQTT_CONNACK:
        if (m->st == ST_UP) {
            protocol_error(m, 0x82, "a second CONNACK");
            return;
        }
        on_connack(m, &p);
        break;
    case MQTT_PUBLISH:
        on_publish_in(m, &p);
        break;
    case MQTT_PUBACK:
        on_puback(m, &p);
        break;
    case MQTT_SUBACK:
        on_suback(m, &p);
        break;
    case MQTT_PINGRESP:
        m->ping_sent = 0;
        break;
    case MQTT_DISCONNECT: {
        char what[MQTT_WHY_MAX + 64];
        snprintf(what, sizeof(what), "the broker disconnected: %s (0x%02x)%s%.*s",
                 mqtt_reason_string(p.reason), (unsigned)p.reason, p.reason_string ? ": " : "",
                 (int)(p.reason_string_len > 96 ? 96 : p.reason_string_len),
                 p.reason_string ? p.reason_string : "");
        m->logged_down = false; /* say why, even within an outage */
        conn_failed(m, p.reason, what);
        break;
    }
    default:
        break; /* mqtt_decode refuses every other type */
    }
}

/* Decode every complete packet in rx; keep a partial one. */
static void process_rx(mqtt_t *m)
{
    size_t off = 0;
    while (m->fd >= 0 && m->rx.len - off >= 2) {
        size_t total;
        char why[MQTT_WHY_MAX];
        int r = mqtt_frame(m->rx.p + off, m->rx.len - off, m->max_packet, &total, why, sizeof(why));
        if (r < 0) {
            protocol_error(m, r == -1 && strstr(why, "maximum packet") ? 0x95 : 0x81, why);
            return;
        }
        if (r == 0 || m->rx.len - off < total) {
            break;
        }
        handle_packet(m, m->rx.p + off, total);
        off += total;
    }
    if (m->fd < 0) {
        return; /* closed: rx was reset */
    }
    if (off > 0) {
        memmove(m->rx.p, m->rx.p + off, m->rx.len - off);
        m->rx.len -= off;
    }
    if (m->rx.len == 0 && m->rx.cap > 4 * MQTT_READ_BUFFER_KEEP) {
        /* one big message (a 16 MiB batch at the hub) does not keep its
         * buffer for the life of the connection */
        mqtt_buf_free(&m->rx);
    }
}

static void on_more(loop_t *loop, uint64_t id, void *arg);

/* Read what the socket has (up to the budget) and handle whole packets. */
static void do_read(mqtt_t *m)
{
    size_t budget = MQTT_READ_BUDGET;
    bool got = false;
    while (m->fd >= 0 && budget > 0) {
        if (mqtt_buf_reserve(&m->rx, MQTT_READ_CHUNK) < 0) {
            conn_failed(m, -ENOMEM, "out of memory for the receive buffer");
            return;
        }
        size_t room = m->rx.cap - m->rx.len;
        ssize_t n;
        if (m->tls) {
            int r = mbedtls_ssl_read(&m->tls->ssl, m->rx.p + m->rx.len, room);
            if (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE) {
                break;
            }
            if (r == 0 || r == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {
                conn_failed(m, -ECONNRESET, "closed by the broker");
                return;
            }
            if (r < 0) {
                char eb[128];
                conn_failed(m, -EIO, tls_err(r, eb, sizeof(eb)));
                return;
            }
            n = r;
        } else {
            n = recv(m->fd, m->rx.p + m->rx.len, room, 0);
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                    break;
                }
                conn_failed(m, -errno, strerror(errno));
                return;
            }
            if (n == 0) {
                conn_failed(m, -ECONNRESET, "closed by the broker");
                return;
            }
        }
        got = true;
        m->rx.len += (size_t)n;
        budget = (size_t)n >= budget ? 0 : budget - (size_t)n;
        process_rx(m);
    }
    if (m->fd < 0) {
        return;
    }
    if (got) {
        m->last_in = clock_mono_ms();
    }
    /* Bytes epoll cannot see: decrypted and unread inside mbedtls, or a
     * whole record in its input buffer. A plain socket with bytes left
     * stays readable (level-triggered). */
    if (m->tls && !m->more_timer &&
        (mbedtls_ssl_get_bytes_avail(&m->tls->ssl) > 0 ||
         mbedtls_ssl_check_pending(&m->tls->ssl))) {
        m->more_timer = loop_timer_add(m->loop, 0, on_more, m);
    }
}

static void on_more(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    mqtt_t *m = arg;
    m->more_timer = 0;
    if (m->fd >= 0 && (m->st == ST_UP || m->st == ST_MQTT)) {
        do_read(m);
        if (m->fd >= 0) {
            sync_watch(m);
        }
    }
}

/* --- connecting ------------------------------------------------------------- */

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
        setsockopt(sock, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof(user_timeout)) < 0) {
        LOG_WARN(MOD, "%s: TCP keepalive: %s", m->name, strerror(errno));
    }
}

static void send_connect(mqtt_t *m)
{
    const char *wp = m->will_payload ? m->will_payload : "";
    struct mqtt_connect_params c = {
        .client_id = m->client_id,
        .username = m->username,
        .password = m->username ? (m->password ? m->password : "") : NULL,
        .clean_start = m->session_expiry == 0,
        .keepalive = (uint16_t)m->keepalive_req,
        .session_expiry = m->session_expiry,
        .receive_max = m->receive_max,
        .max_packet = m->max_packet,
        .will_topic = m->will_topic,
        .will_payload = wp,
        .will_len = strlen(wp),
        .will_qos = 1,
        .will_retain = m->will_retain,
    };
    m->keepalive = m->keepalive_req;
    int rc = mqtt_enc_connect(&m->tx, &c);
    if (rc < 0) {
        conn_failed(m, rc, "cannot encode CONNECT (a field over 65535 bytes)");
        return;
    }
    m->st = ST_MQTT;
    flush_tx(m);
}

/* The peer certificate names host (an IP literal) in an iPAddress SAN?
 * mbedtls 2.28 checks DNS names only, so IP SANs are read here from the
 * raw extensions. */
static bool cert_has_ip(const mbedtls_x509_crt *crt, const char *host)
{
    unsigned char want[16];
    size_t wlen;
    if (inet_pton(AF_INET, host, want) == 1) {
        wlen = 4;
    } else if (inet_pton(AF_INET6, host, want) == 1) {
        wlen = 16;
    } else {
        return false;
    }
    unsigned char *p = crt->v3_ext.p;
    if (!p) {
        return false;
    }
    const unsigned char *end = p + crt->v3_ext.len;
    size_t len;
    /* Extensions ::= SEQUENCE OF Extension (v3_ext points inside the
     * [3] EXPLICIT tag; skip it too should it not) */
    if (*p == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_ASN1_CONSTRUCTED | 3) &&
        mbedtls_asn1_get_tag(&p, end, &len,
                             MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_ASN1_CONSTRUCTED | 3) != 0) {
        return false;
    }
    if (mbedtls_asn1_get_tag(&p, end, &len, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) !=
        0) {
        return false;
    }
    end = p + len;
    while (p < end) {
        if (mbedtls_asn1_get_tag(&p, end, &len, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) !=
            0) {
            return false;
        }
        unsigned char *ext_end = p + len;
        mbedtls_x509_buf oid;
        if (mbedtls_asn1_get_tag(&p, ext_end, &oid.len, MBEDTLS_ASN1_OID) != 0) {
            return false;
        }
        oid.p = p;
        p += oid.len;
        int crit;
        if (mbedtls_asn1_get_bool(&p, ext_end, &crit) != 0 && p < ext_end &&
            *p == MBEDTLS_ASN1_BOOLEAN) {
            return false;
        }
        size_t olen;
        if (mbedtls_asn1_get_tag(&p, ext_end, &olen, MBEDTLS_ASN1_OCTET_STRING) != 0) {
            return false;
        }
        if (MBEDTLS_OID_CMP(MBEDTLS_OID_SUBJECT_ALT_NAME, &oid) == 0) {
            unsigned char *q = p;
            const unsigned char *qend = p + olen;
            size_t sl;
            if (mbedtls_asn1_get_tag(&q, qend, &sl,
                                     MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) != 0) {
                return false;
            }
            qend = q + sl;
            while (q < qend) {
                unsigned char tag = *q++;
                size_t nl;
                if (mbedtls_asn1_get_len(&q, qend, &nl) != 0) {
                    return false;
                }
                if (tag == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 7) && nl == wlen &&
                    memcmp(q, want, wlen) == 0) {
                    return true;
                }
                q += nl;
            }
        }
        p = ext_end;
    }
    return false;
}

static void tls_step(mqtt_t *m)
{
    int r = mbedtls_ssl_handshake(&m->tls->ssl);
    if (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE) {
        unsigned want = LOOP_READ | (r == MBEDTLS_ERR_SSL_WANT_WRITE ? LOOP_WRITE : 0);
        if (want != m->events && loop_fd_mod(m->loop, m->fd, want) == 0) {
            m->events = want;
        }
        return;
    }
    char what[384];
    if (r != 0) {
        char eb[128];
        uint32_t flags = mbedtls_ssl_get_verify_result(&m->tls->ssl);
        char vb[200] = "";
        if (flags != 0 && flags != (uint32_t)-1) {
            mbedtls_x509_crt_verify_info(vb, sizeof(vb), "", flags);
            for (char *s = vb; *s; s++) {
                if (*s == '\n') {
                    *s = ' ';
                }
            }
        }
        snprintf(what, sizeof(what), "TLS handshake failed: %s%s%s", tls_err(r, eb, sizeof(eb)),
                 vb[0] ? ": " : "", vb);
        conn_failed(m, -EPROTO, what);
        return;
    }
    if (m->tls->ip_host) {
        const mbedtls_x509_crt *peer = mbedtls_ssl_get_peer_cert(&m->tls->ssl);
        if (!peer || !cert_has_ip(peer, m->host)) {
            snprintf(what, sizeof(what),
                     "TLS: the broker's certificate does not name the IP address %s", m->host);
            conn_failed(m, -EPROTO, what);
            return;
        }
    }
    send_connect(m);
    if (m->fd >= 0) {
        sync_watch(m);
    }
}

static void tcp_connected(mqtt_t *m)
{
    freeaddrinfo(m->ai_list);
    m->ai_list = m->ai_next = NULL;
    if (!m->tls) {
        send_connect(m);
        return;
    }
    mbedtls_ssl_init(&m->tls->ssl);
    m->tls->ssl_live = true;
    m->tls->pending = 0;
    int r = mbedtls_ssl_setup(&m->tls->ssl, &m->tls->conf);
    if (r == 0 && !m->tls->ip_host) {
        r = mbedtls_ssl_set_hostname(&m->tls->ssl, m->host);
    }
    if (r != 0) {
        char eb[128];
        conn_failed(m, -EPROTO, tls_err(r, eb, sizeof(eb)));
        return;
    }
    mbedtls_ssl_set_bio(&m->tls->ssl, &m->fd, tls_send, tls_recv, NULL);
    m->st = ST_TLS;
    tls_step(m);
}

static void on_fd(loop_t *loop, int fd, unsigned events, void *arg)
{
    (void)loop;
    (void)fd;
    mqtt_t *m = arg;
    switch (m->st) {
    case ST_TCP: {
        int err = 0;
        socklen_t el = sizeof(err);
        if (getsockopt(m->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0) {
            err = errno;
        }
        if (err != 0) {
            if (m->ai_next) {
                /* the next address of the name */
                loop_fd_del(m->loop, m->fd);
                m->watched = false;
                close(m->fd);
                m->fd = -1;
                connect_next(m);
                return;
            }
            conn_failed(m, -err, strerror(err));
            return;
        }
        if (!(events & LOOP_WRITE)) {
            return;
        }
        tcp_connected(m);
        break;
    }
    case ST_TLS:
        tls_step(m);
        return;
    case ST_MQTT:
    case ST_UP:
        if (events & (LOOP_READ | LOOP_ERROR)) {
            do_read(m);
        }
        if (m->fd >= 0 && (events & LOOP_WRITE)) {
            flush_tx(m);
        }
        break;
    default:
        return;
    }
    if (m->fd >= 0) {
        sync_watch(m);
    }
}

/* Make the watch match what the connection waits for. */
static void sync_watch(mqtt_t *m)
{
    if (m->destroying || m->fd < 0 || !m->watched) {
        return;
    }
    unsigned want = m->events;
    if (m->st == ST_MQTT || m->st == ST_UP) {
        want = LOOP_READ | (m->tx_off < m->tx.len ? LOOP_WRITE : 0);
    }
    if (want != m->events && loop_fd_mod(m->loop, m->fd, want) == 0) {
        m->events = want;
    }
    arm_misc(m);
}

/* Start a non-blocking connect to the next address of the name; on none
 * left, the attempt has failed. */
static void connect_next(mqtt_t *m)
{
    int last_err = ECONNREFUSED;
    while (m->ai_next) {
        struct addrinfo *ai = m->ai_next;
        m->ai_next = ai->ai_next;
        int s =
            socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (s < 0) {
            last_err = errno;
            continue;
        }
        /* Acks and small batches must not wait for Nagle + delayed ACK. */
        int one = 1;
        setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        set_tcp_keepalive(m, s);
        if (connect(s, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
            last_err = errno;
            close(s);
            continue;
        }
        if (loop_fd_add(m->loop, s, LOOP_READ | LOOP_WRITE, on_fd, m) < 0) {
            close(s);
            last_err = ENOMEM;
            break;
        }
        m->fd = s;
        m->watched = true;
        m->events = LOOP_READ | LOOP_WRITE;
        m->st = ST_TCP;
        m->last_in = m->last_out = clock_mono_ms();
        arm_misc(m);
        return;
    }
    conn_failed(m, -last_err, strerror(last_err));
}

static void try_connect(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    mqtt_t *m = arg;
    m->retry_timer = 0;
    char port[8];
    snprintf(port, sizeof(port), "%d", m->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(m->host, port, &hints, &res);
    if (rc != 0) {
        if (!m->logged_down) {
            LOG_WARN(MOD, "%s: cannot connect to %s:%d: %s", m->name, m->host, m->port,
                     gai_strerror(rc));
            m->logged_down = true;
        }
        schedule_reconnect(m);
        return;
    }
    m->ai_list = m->ai_next = res;
    m->conn_started = clock_mono_ms();
    connect_next(m);
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

static void before_sleep(loop_t *loop, void *arg)
{
    (void)loop;
    mqtt_t *m = arg;
    if (m->fd >= 0 && (m->st == ST_UP || m->st == ST_MQTT)) {
        if (m->tx_off < m->tx.len) {
            flush_tx(m);
        }
        if (m->fd >= 0) {
            sync_watch(m);
        }
    }
}

/* --- TLS set-up (once per client) ----------------------------------------------- */

static void tls_free(struct tls *t)
{
    if (!t) {
        return;
    }
    if (t->ssl_live) {
        mbedtls_ssl_free(&t->ssl);
    }
    mbedtls_ssl_config_free(&t->conf);
    mbedtls_pk_free(&t->key);
    mbedtls_x509_crt_free(&t->cert);
    mbedtls_x509_crt_free(&t->ca);
    mbedtls_ctr_drbg_free(&t->drbg);
    mbedtls_entropy_free(&t->entropy);
    free(t);
}

static struct tls *tls_create(mqtt_t *m, const struct mqtt_opts *o)
{
    struct tls *t = calloc(1, sizeof(*t));
    if (!t) {
        return NULL;
    }
    mbedtls_entropy_init(&t->entropy);
    mbedtls_ctr_drbg_init(&t->drbg);
    mbedtls_x509_crt_init(&t->ca);
    mbedtls_x509_crt_init(&t->cert);
    mbedtls_pk_init(&t->key);
    mbedtls_ssl_config_init(&t->conf);
    char eb[128];
    static const unsigned char pers[] = "tidings-mqtt";
    int r =
        mbedtls_ctr_drbg_seed(&t->drbg, mbedtls_entropy_func, &t->entropy, pers, sizeof(pers) - 1);
    if (r != 0) {
        LOG_ERROR(MOD, "%s: TLS random generator: %s", m->name, tls_err(r, eb, sizeof(eb)));
        goto fail;
    }
    if ((r = mbedtls_x509_crt_parse_file(&t->ca, o->cafile)) != 0) {
        LOG_ERROR(MOD, "%s: TLS CA file %s: %s", m->name, o->cafile, tls_err(r, eb, sizeof(eb)));
        goto fail;
    }
    bool cert = o->certfile && *o->certfile, key = o->keyfile && *o->keyfile;
    if (cert != key) {
        LOG_ERROR(MOD, "%s: TLS client certificate and key go together (certfile %s, keyfile %s)",
                  m->name, cert ? o->certfile : "none", key ? o->keyfile : "none");
        goto fail;
    }
    if (cert) {
        if ((r = mbedtls_x509_crt_parse_file(&t->cert, o->certfile)) != 0) {
            LOG_ERROR(MOD, "%s: TLS certificate file %s: %s", m->name, o->certfile,
                      tls_err(r, eb, sizeof(eb)));
            goto fail;
        }
        if ((r = mbedtls_pk_parse_keyfile(&t->key, o->keyfile, NULL)) != 0) {
            LOG_ERROR(MOD, "%s: TLS key file %s: %s", m->name, o->keyfile,
                      tls_err(r, eb, sizeof(eb)));
            goto fail;
        }
    }
    if ((r = mbedtls_ssl_config_defaults(&t->conf, MBEDTLS_SSL_IS_CLIENT,
                                         MBEDTLS_SSL_TRANSPORT_STREAM,
                                         MBEDTLS_SSL_PRESET_DEFAULT)) != 0) {
        LOG_ERROR(MOD, "%s: TLS configuration: %s", m->name, tls_err(r, eb, sizeof(eb)));
        goto fail;
    }
    mbedtls_ssl_conf_min_version(&t->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3); /* TLS 1.2 */
    mbedtls_ssl_conf_authmode(&t->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    mbedtls_ssl_conf_ca_chain(&t->conf, &t->ca, NULL);
    mbedtls_ssl_conf_rng(&t->conf, mbedtls_ctr_drbg_random, &t->drbg);
    if (cert && (r = mbedtls_ssl_conf_own_cert(&t->conf, &t->cert, &t->key)) != 0) {
        LOG_ERROR(MOD, "%s: TLS client certificate %s: %s", m->name, o->certfile,
                  tls_err(r, eb, sizeof(eb)));
        goto fail;
    }
    unsigned char ip[16];
    t->ip_host = inet_pton(AF_INET, o->host, ip) == 1 || inet_pton(AF_INET6, o->host, ip) == 1;
    return t;
fail:
    tls_free(t);
    return NULL;
}

/* --- API ---------------------------------------------------------------------- */

static void free_client(mqtt_t *m)
{
    close_conn(m);
    tls_free(m->tls);
    mqtt_buf_free(&m->rx);
    mqtt_buf_free(&m->tx);
    free(m->held);
    free(m->scratch);
    free(m->client_id);
    free(m->username);
    free(m->password);
    free(m->will_topic);
    free(m->will_payload);
    free(m);
}

mqtt_t *mqtt_create(loop_t *loop, const struct mqtt_opts *o, const struct mqtt_handlers *h)
{
    mqtt_t *m = calloc(1, sizeof(*m));
    if (!m) {
        LOG_ERROR(MOD, "%s: out of memory", o->name ? o->name : "mqtt");
        return NULL;
    }
    m->loop = loop;
    m->h = *h;
    m->name = o->name ? o->name : "mqtt";
    m->host = o->host;
    m->port = o->port;
    m->fd = -1;
    /* 0 (off) or 5..65535 s (MQTT's field is 16 bits). */
    m->keepalive_req = o->keepalive_s == 0      ? 0
                       : o->keepalive_s < 5     ? 5
                       : o->keepalive_s > 65535 ? 65535
                                                : o->keepalive_s;
    m->keepalive = m->keepalive_req;
    m->busy_keepalive = o->busy_keepalive_s <= 0       ? 0
                        : o->busy_keepalive_s > 65535 ? 65535
                                                      : o->busy_keepalive_s;
    m->tcp_keepalive = o->tcp_keepalive_s > 0 ? o->tcp_keepalive_s : 0;
    m->backoff_base = o->backoff_base_ms ? o->backoff_base_ms : 500;
    m->backoff_cap = o->backoff_cap_ms ? o->backoff_cap_ms : 60000;
    bool persistent = o->session_expiry_s > 0 && o->client_id && *o->client_id;
    m->session_expiry = persistent ? o->session_expiry_s : 0;
    m->receive_max = o->receive_max ? o->receive_max : 65535;
    m->max_packet = o->max_packet ? o->max_packet : MQTT_DEFAULT_MAX_PACKET;
    m->rx.max = (size_t)m->max_packet + MQTT_READ_CHUNK;
    m->tx.max = MQTT_TX_MAX;
    m->manual_ack = o->manual_ack;
    m->max_inflight_opt = o->max_inflight;
    m->window = 1;
    m->next_mid = 1;
    m->will_retain = o->will_retain;
    if ((o->client_id && *o->client_id && !(m->client_id = dup_opt(o->client_id))) ||
        (o->username && *o->username &&
         (!(m->username = dup_opt(o->username)) ||
          (o->password && *o->password && !(m->password = dup_opt(o->password))))) ||
        (o->will_topic && *o->will_topic &&
         (!(m->will_topic = dup_opt(o->will_topic)) ||
          (o->will_payload && *o->will_payload &&
           !(m->will_payload = dup_opt(o->will_payload)))))) {
        LOG_ERROR(MOD, "%s: out of memory", m->name);
        free_client(m);
        return NULL;
    }
    if (o->cafile && *o->cafile && !(m->tls = tls_create(m, o))) {
        free_client(m);
        return NULL;
    }
    if (loop_before_sleep(loop, before_sleep, m) < 0) {
        LOG_ERROR(MOD, "%s: no room for another before-sleep hook", m->name);
        free_client(m);
        return NULL;
    }
    try_connect(loop, 0, m);
    return m;
}

void mqtt_destroy(mqtt_t *m)
{
    if (!m) {
        return;
    }
    m->destroying = true;
    if (m->st == ST_UP && m->fd >= 0) {
        /* Best effort: what is queued (e.g. a retained "offline"), then a
         * normal DISCONNECT (the broker drops the will). */
        if (mqtt_enc_disconnect(&m->tx, 0) == 0) {
            flush_tx(m);
        }
        if (m->fd >= 0 && m->tls && m->tls->ssl_live) {
            mbedtls_ssl_close_notify(&m->tls->ssl);
        }
    }
    if (m->retry_timer) {
        loop_timer_cancel(m->loop, m->retry_timer);
        m->retry_timer = 0;
    }
    /* The loop cannot drop a before-sleep hook: as before, owners destroy
     * their clients only once the loop has stopped, just before it. */
    free_client(m);
}

bool mqtt_connected(const mqtt_t *m)
{
    return m->connected;
}

unsigned mqtt_inflight(const mqtt_t *m)
{
    return m->sent + m->queued;
}

unsigned mqtt_held_acks(const mqtt_t *m)
{
    return m->nheld;
}

/* A free packet identifier, or 0 when all 65535 are taken. */
static uint16_t alloc_mid(mqtt_t *m)
{
    for (unsigned i = 0; i < 65535u; i++) {
        uint16_t id = m->next_mid;
        m->next_mid = (uint16_t)(id == 65535 ? 1 : id + 1);
        if (!bit_get(m->mid_used, id)) {
            bit_set(m->mid_used, id, true);
            return id;
        }
    }
    return 0;
}

int mqtt_publish(mqtt_t *m, const char *topic, const void *payload, size_t len, int qos,
                 bool retain, uint32_t expiry_s, const struct mqtt_pub_props *props, int *mid)
{
    if (mid) {
        *mid = 0;
    }
    if (!m->connected || m->fd < 0) {
        return -ENOTCONN;
    }
    if (qos < 0 || qos > 1) {
        return -EINVAL;
    }
    struct mqtt_publish_params pp = {
        .topic = topic,
        .payload = payload,
        .len = len,
        .qos = qos,
        .retain = retain,
        .id = 1, /* placeholder for the size */
        .expiry_s = expiry_s,
        .response_topic = props ? props->response_topic : NULL,
        .corr = props ? props->corr : NULL,
        .corr_len = props ? props->corr_len : 0,
    };
    size_t size = mqtt_publish_size(&pp);
    if (size == 0) {
        return len > MQTT_MAX_REMAINING ? TDG_ETOOBIG : -EINVAL;
    }
    if (m->broker_max_packet && size > m->broker_max_packet) {
        LOG_WARN(MOD, "%s: publish to %s: %zu bytes over the broker's maximum packet size %u",
                 m->name, topic, size, (unsigned)m->broker_max_packet);
        return TDG_ETOOBIG;
    }
    if (qos == 0) {
        int rc = mqtt_enc_publish(&m->tx, &pp);
        return rc == TDG_EFULL ? TDG_EFULL : rc;
    }
    uint16_t id = alloc_mid(m);
    if (id == 0) {
        return TDG_EFULL;
    }
    pp.id = id;
    int rc;
    bool was_idle = m->sent + m->queued == 0;
    if (m->sent < m->window && !m->wait_head) {
        rc = mqtt_enc_publish(&m->tx, &pp);
        if (rc == 0) {
            bit_set(m->mid_sent, id, true);
            m->sent++;
        }
    } else {
        struct outmsg *o = malloc(sizeof(*o) + size);
        rc = -ENOMEM;
        if (o) {
            struct mqtt_buf b = {.p = o->data, .cap = size, .max = size};
            rc = mqtt_enc_publish(&b, &pp);
            if (rc == 0) {
                o->next = NULL;
                o->mid = id;
                o->len = b.len;
                if (m->wait_tail) {
                    m->wait_tail->next = o;
                } else {
                    m->wait_head = o;
                }
                m->wait_tail = o;
                m->queued++;
            } else {
                free(o);
            }
        }
    }
    if (rc < 0) {
        bit_set(m->mid_used, id, false);
        return rc;
    }
    if (was_idle && m->busy_keepalive > 0) {
        m->busy_since = clock_mono_ms();
        arm_misc(m);
    }
    if (mid) {
        *mid = id;
    }
    return 0;
}

int mqtt_subscribe(mqtt_t *m, const char *topic, int qos)
{
    if (!m->connected || m->fd < 0 || m->nsubs >= MQTT_MAX_SUBS) {
        LOG_ERROR(MOD, "%s: subscribe %s: %s", m->name, topic,
                  m->connected ? "too many subscriptions awaiting their SUBACK" : "not connected");
        return TDG_EMQTT;
    }
    uint16_t id = alloc_mid(m);
    int rc = id ? mqtt_enc_subscribe(&m->tx, id, topic, qos) : TDG_EFULL;
    if (rc < 0) {
        if (id) {
            bit_set(m->mid_used, id, false);
        }
        LOG_ERROR(MOD, "%s: subscribe %s: %s", m->name, topic, tdg_strerror(rc));
        return TDG_EMQTT;
    }
    struct sub *s = &m->subs[m->nsubs++];
    s->mid = id;
    snprintf(s->topic, sizeof(s->topic), "%s", topic);
    return 0;
}

void mqtt_release_acks(mqtt_t *m)
{
    if (m->fd < 0 || m->st != ST_UP) {
        m->nheld = 0;
        return;
    }
    for (unsigned i = 0; i < m->nheld; i++) {
        if (mqtt_enc_puback(&m->tx, m->held[i], 0) < 0) {
            /* The send buffer is at its ceiling or memory is out: these
             * are not acked, the broker resends them after a reconnect. */
            conn_failed(m, -ENOMEM, "cannot queue PUBACKs");
            return;
        }
    }
    m->nheld = 0;
}

void mqtt_reconnect(mqtt_t *m)
{
    if (m->fd < 0) {
        return;
    }
    m->logged_down = false;
    conn_failed(m, -ECONNABORTED, "closed by the application (held messages not acknowledged)");
}
