/*
 * h2server - the TLS + HTTP/2 server core of fake-apns and fake-fcm (see
 * h2server.h for the contract, docs/fakes.md for the fakes).
 *
 * One thread, one epoll loop. Each connection is a non-blocking OpenSSL
 * stream feeding an nghttp2 server session through mem_recv/mem_send (or
 * the fake's HTTP/1.1 parser). Output is batched in one buffer per
 * connection; reading pauses while H2S_OUT_HIGH bytes wait.
 */
#include "h2server.h"

#include <openssl/err.h>

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256

enum ev_kind { EV_LISTEN, EV_SIGNAL, EV_CONN };

struct h2s_server {
    h2s_config cfg;
    int ep;
    int lfd;
    int sfd;
    h2s_ev listen_ev;
    h2s_ev signal_ev;
    h2s_conn *conns;
    size_t nconns;
    h2s_conn *dead;
    uint64_t next_conn_id;
    h2s_timer **heap;
    size_t heap_n;
    bool stop;
    bool warned_conns;
    uint8_t rbuf[H2S_READ_BUF];
};

/* ---- small helpers ------------------------------------------------------ */

static void logmsg(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void logmsg(const char *name, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int64_t h2s_now_mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t h2s_now_real_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void h2s_stop(h2s_server *s)
{
    s->stop = true;
}

void *h2s_user(const h2s_server *s)
{
    return s->cfg.user;
}

uint64_t h2s_connections(const h2s_server *s)
{
    return s->next_conn_id;
}

bool h2s_verbose(const h2s_server *s)
{
    return s->cfg.verbose;
}

/* ---- the timer heap ----------------------------------------------------- */

static void heap_swap(h2s_server *s, size_t i, size_t j)
{
    h2s_timer *t = s->heap[i];

    s->heap[i] = s->heap[j];
    s->heap[j] = t;
    s->heap[i]->idx = (int)i;
    s->heap[j]->idx = (int)j;
}

static void heap_up(h2s_server *s, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (s->heap[p]->due_ms <= s->heap[i]->due_ms) {
            break;
        }
        heap_swap(s, i, p);
        i = p;
    }
}

static void heap_down(h2s_server *s, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1;
        size_t r = l + 1;
        size_t m = i;
        if (l < s->heap_n && s->heap[l]->due_ms < s->heap[m]->due_ms) {
            m = l;
        }
        if (r < s->heap_n && s->heap[r]->due_ms < s->heap[m]->due_ms) {
            m = r;
        }
        if (m == i) {
            return;
        }
        heap_swap(s, i, m);
        i = m;
    }
}

void h2s_timer_add(h2s_server *s, h2s_timer *t, int64_t due_ms)
{
    if (t->idx >= 0 || s->heap_n >= s->cfg.max_timers) {
        /* Cannot happen while the fake keeps at most max_timers requests. */
        logmsg(s->cfg.name, "timer heap full or timer queued twice");
        return;
    }
    t->due_ms = due_ms;
    s->heap[s->heap_n] = t;
    t->idx = (int)s->heap_n;
    s->heap_n++;
    heap_up(s, s->heap_n - 1);
}

void h2s_timer_cancel(h2s_server *s, h2s_timer *t)
{
    size_t i;
    size_t last;

    if (t->idx < 0) {
        return;
    }
    i = (size_t)t->idx;
    last = --s->heap_n;
    if (i != last) {
        s->heap[i] = s->heap[last];
        s->heap[i]->idx = (int)i;
        heap_down(s, i);
        heap_up(s, i);
    }
    t->idx = -1;
}

/* Milliseconds until the next timer is due, or -1 for none. */
static int next_timeout(h2s_server *s)
{
    int64_t d;

    if (s->heap_n == 0) {
        return -1;
    }
    d = s->heap[0]->due_ms - h2s_now_mono_ms();
    if (d < 0) {
        return 0;
    }
    return d > INT_MAX ? INT_MAX : (int)d;
}

static void fire_timers(h2s_server *s)
{
    int64_t now = h2s_now_mono_ms();

    while (s->heap_n > 0 && s->heap[0]->due_ms <= now) {
        h2s_timer *t = s->heap[0];
        h2s_timer_cancel(s, t);
        s->cfg.hooks.timer(s, t);
    }
}

/* ---- answers broken off ------------------------------------------------- */

ssize_t h2s_cut_read(h2s_conn *c, nghttp2_session *h2, int32_t stream_id, enum fake_cut cut,
                     const char *resp, size_t resp_len, size_t *resp_off, uint8_t *buf,
                     size_t length)
{
    size_t n;

    switch (cut) {
    case FAKE_CUT_BODY:
        if (*resp_off == 0 && resp_len > 1) {
            n = resp_len / 2;
            if (n > length) {
                n = length;
            }
            memcpy(buf, resp, n);
            *resp_off = n;
            c->cut_close = true;
            return (ssize_t)n;
        }
        c->cut_close = true;
        return NGHTTP2_ERR_DEFERRED;
    case FAKE_CUT_RESET:
        /* nghttp2 answers this with RST_STREAM INTERNAL_ERROR */
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    case FAKE_CUT_GOAWAY:
        if (!c->cut_goaway) {
            c->cut_goaway = true;
            nghttp2_session_terminate_session2(h2, stream_id, NGHTTP2_INTERNAL_ERROR);
        }
        return NGHTTP2_ERR_DEFERRED;
    default:
        c->cut_close = true;
        return NGHTTP2_ERR_DEFERRED;
    }
}

/* ---- connections -------------------------------------------------------- */

void h2s_conn_kill(h2s_conn *c)
{
    h2s_server *s = c->srv;

    if (c->dead) {
        return;
    }
    c->dead = true;
    epoll_ctl(s->ep, EPOLL_CTL_DEL, c->fd, NULL);
    c->next_dead = s->dead;
    s->dead = c;
}

static void conn_free(h2s_conn *c)
{
    h2s_server *s = c->srv;

    /* nghttp2_session_del() calls no stream-close callbacks: the fake
     * releases what is left of its requests in conn_free. */
    if (c->h2 != NULL) {
        nghttp2_session_del(c->h2);
        c->h2 = NULL;
    }
    s->cfg.hooks.conn_free(c);
    SSL_free(c->ssl);
    close(c->fd);
    free(c->out);
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        s->conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    s->nconns--;
    free(c);
}

static void free_dead(h2s_server *s)
{
    while (s->dead != NULL) {
        h2s_conn *c = s->dead;
        s->dead = c->next_dead;
        conn_free(c);
    }
}

static size_t out_pending(const h2s_conn *c)
{
    return c->out_len - c->out_off;
}

int h2s_out_append(h2s_conn *c, const uint8_t *d, size_t n)
{
    if (c->out_off > 0 && c->out_cap - c->out_len < n) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    if (c->out_cap - c->out_len < n) {
        size_t ncap = c->out_cap == 0 ? c->srv->cfg.out_initial : c->out_cap * 2;
        uint8_t *nb;
        while (ncap - c->out_len < n) {
            ncap *= 2;
        }
        if (ncap > H2S_OUT_MAX) {
            return -1;
        }
        nb = realloc(c->out, ncap);
        if (nb == NULL) {
            return -1;
        }
        c->out = nb;
        c->out_cap = ncap;
    }
    memcpy(c->out + c->out_len, d, n);
    c->out_len += n;
    return 0;
}

static void conn_watch(h2s_conn *c, uint32_t events)
{
    struct epoll_event ev;

    if (c->dead || events == c->events) {
        return;
    }
    ev.events = events;
    ev.data.ptr = &c->ev;
    if (epoll_ctl(c->srv->ep, EPOLL_CTL_MOD, c->fd, &ev) == 0) {
        c->events = events;
    } else {
        h2s_conn_kill(c);
    }
}

static void log_ssl_error(h2s_conn *c, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256];

    if (!c->srv->cfg.verbose) {
        ERR_clear_error();
        return;
    }
    if (e != 0) {
        ERR_error_string_n(e, buf, sizeof(buf));
    } else {
        snprintf(buf, sizeof(buf), "%s", errno != 0 ? strerror(errno) : "connection closed");
    }
    logmsg(c->srv->cfg.name, "conn %" PRIu64 ": %s: %s", c->id, what, buf);
    ERR_clear_error();
}

/*
 * Moves nghttp2's output (h2) into the connection buffer and the buffer
 * into TLS until there is nothing more or the socket is full. The
 * before_write hook runs first (fake-apns flushes its record there, so every
 * answer's line is on disk before the answer leaves).
 */
static void conn_write(h2s_conn *c)
{
    h2s_server *s = c->srv;

    for (;;) {
        int w;
        int e;
        size_t pend;

        while (c->proto == H2S_H2 && out_pending(c) < H2S_OUT_HIGH) {
            const uint8_t *d;
            ssize_t n = nghttp2_session_mem_send(c->h2, &d);
            if (n < 0) {
                if (s->cfg.verbose) {
                    logmsg(s->cfg.name, "conn %" PRIu64 ": nghttp2: %s", c->id,
                           nghttp2_strerror((int)n));
                }
                h2s_conn_kill(c);
                return;
            }
            if (n == 0) {
                break;
            }
            if (h2s_out_append(c, d, (size_t)n) != 0) {
                logmsg(s->cfg.name, "conn %" PRIu64 ": output over %d bytes, closing", c->id,
                       H2S_OUT_MAX);
                h2s_conn_kill(c);
                return;
            }
        }
        pend = out_pending(c);
        if (pend == 0) {
            if (c->cut_close) {
                /* A cut answer is on the wire: close the TCP connection,
                 * no GOAWAY, no close_notify. */
                h2s_conn_kill(c);
            }
            return;
        }
        if (s->cfg.hooks.before_write != NULL) {
            s->cfg.hooks.before_write(s);
        }
        ERR_clear_error();
        w = SSL_write(c->ssl, c->out + c->out_off, pend > INT_MAX ? INT_MAX : (int)pend);
        if (w > 0) {
            c->ssl_want_write = false;
            c->out_off += (size_t)w;
            if (c->out_off == c->out_len) {
                c->out_off = 0;
                c->out_len = 0;
            }
            continue;
        }
        e = SSL_get_error(c->ssl, w);
        if (e == SSL_ERROR_WANT_WRITE) {
            c->ssl_want_write = true;
            return;
        }
        if (e == SSL_ERROR_WANT_READ) {
            return;
        }
        log_ssl_error(c, "write");
        h2s_conn_kill(c);
        return;
    }
}

/* Feeds what TLS delivered to the connection's protocol. -1: drop now. */
static int conn_feed(h2s_conn *c, const uint8_t *d, size_t n)
{
    h2s_server *s = c->srv;

    if (c->proto == H2S_H2) {
        ssize_t rv = nghttp2_session_mem_recv(c->h2, d, n);
        if (rv < 0) {
            if (!c->drop && s->cfg.verbose) {
                logmsg(s->cfg.name, "conn %" PRIu64 ": nghttp2: %s", c->id,
                       nghttp2_strerror((int)rv));
            }
            return -1;
        }
        return 0;
    }
    return s->cfg.hooks.h1_feed(c, d, n);
}

/*
 * Reads and feeds the protocol until TLS has no more input or too much
 * output waits. Answers are written between reads to keep latency low.
 */
static void conn_read(h2s_conn *c)
{
    h2s_server *s = c->srv;

    while (!c->dead && !c->peer_gone && out_pending(c) < H2S_OUT_HIGH) {
        int n;
        int e;

        ERR_clear_error();
        errno = 0;
        n = SSL_read(c->ssl, s->rbuf, sizeof(s->rbuf));
        if (n > 0) {
            if (conn_feed(c, s->rbuf, (size_t)n) != 0) {
                if (c->drop) {
                    /* Answers already queued for earlier requests go out
                     * (best effort) so the record stays true; nothing
                     * after the dropped request was even parsed. */
                    conn_write(c);
                }
                h2s_conn_kill(c);
                return;
            }
            conn_write(c);
            continue;
        }
        e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ) {
            return;
        }
        if (e == SSL_ERROR_WANT_WRITE) {
            c->ssl_want_write = true;
            return;
        }
        if (e != SSL_ERROR_ZERO_RETURN) {
            log_ssl_error(c, "read");
        }
        c->peer_gone = true;
    }
}

/* True when nothing is left to do on c and it may be closed politely. */
static bool conn_done(h2s_conn *c)
{
    if (out_pending(c) > 0) {
        return false;
    }
    if (c->proto == H2S_H1) {
        return c->srv->cfg.hooks.h1_done(c);
    }
    if (nghttp2_session_want_write(c->h2)) {
        return false;
    }
    if (c->goaway) {
        /* Close once every stream we promised to answer is answered. */
        return !c->srv->cfg.hooks.goaway_pending(c);
    }
    return !nghttp2_session_want_read(c->h2);
}

static int conn_start(h2s_conn *c)
{
    const h2s_config *cfg = &c->srv->cfg;
    const unsigned char *alpn = NULL;
    unsigned int alen = 0;

    SSL_get0_alpn_selected(c->ssl, &alpn, &alen);
    if (alen == 2 && memcmp(alpn, "h2", 2) == 0) {
        nghttp2_settings_entry iv[] = {
            {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, cfg->max_concurrent_streams},
            {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, cfg->max_header_list},
        };
        c->proto = H2S_H2;
        if (nghttp2_session_server_new(&c->h2, cfg->cbs, c) != 0 ||
            nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0])) !=
                0) {
            return -1;
        }
        /* A large connection window spares a WINDOW_UPDATE every 32 KB. */
        if (cfg->local_window > 0 &&
            nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0,
                                                  cfg->local_window) != 0) {
            return -1;
        }
        return 0;
    }
    if (cfg->hooks.h1_start == NULL) {
        return -1;
    }
    /* http/1.1 chosen, or no ALPN at all (only when the fake allows it). */
    c->proto = H2S_H1;
    return cfg->hooks.h1_start(c);
}

void h2s_conn_pump(h2s_conn *c)
{
    uint32_t ev;

    if (c->dead) {
        return;
    }
    if (c->proto == H2S_NONE) {
        int rc;
        ERR_clear_error();
        errno = 0;
        rc = SSL_do_handshake(c->ssl);
        if (rc != 1) {
            int e = SSL_get_error(c->ssl, rc);
            if (e == SSL_ERROR_WANT_READ) {
                conn_watch(c, EPOLLIN);
            } else if (e == SSL_ERROR_WANT_WRITE) {
                conn_watch(c, EPOLLOUT);
            } else {
                log_ssl_error(c, "TLS handshake");
                h2s_conn_kill(c);
            }
            return;
        }
        if (conn_start(c) != 0) {
            logmsg(c->srv->cfg.name, "conn %" PRIu64 ": cannot start a session", c->id);
            h2s_conn_kill(c);
            return;
        }
    }
    conn_read(c);
    if (c->dead) {
        return;
    }
    conn_write(c);
    if (c->dead) {
        return;
    }
    if (c->peer_gone || conn_done(c)) {
        /* One polite try at close_notify; we never wait for the peer's. */
        SSL_shutdown(c->ssl);
        h2s_conn_kill(c);
        return;
    }
    ev = 0;
    if (out_pending(c) < H2S_OUT_HIGH) {
        ev |= EPOLLIN;
    }
    if (out_pending(c) > 0 || c->ssl_want_write) {
        ev |= EPOLLOUT;
    }
    conn_watch(c, ev);
}

static void on_accept(h2s_server *s)
{
    for (;;) {
        int one = 1;
        struct epoll_event ev;
        h2s_conn *c;
        int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                logmsg(s->cfg.name, "accept: %s", strerror(errno));
            }
            return;
        }
        if (s->nconns >= H2S_MAX_CONNS) {
            if (!s->warned_conns) {
                s->warned_conns = true;
                logmsg(s->cfg.name, "%d connections open: refusing more (reported once)",
                       H2S_MAX_CONNS);
            }
            close(fd);
            continue;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c = calloc(1, s->cfg.conn_size);
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->ev.kind = EV_CONN;
        c->ev.owner = c;
        c->srv = s;
        c->fd = fd;
        c->id = ++s->next_conn_id;
        c->ssl = SSL_new(s->cfg.ctx);
        if (c->ssl == NULL || SSL_set_fd(c->ssl, fd) != 1) {
            SSL_free(c->ssl);
            free(c);
            close(fd);
            continue;
        }
        SSL_set_accept_state(c->ssl);
        ev.events = EPOLLIN;
        ev.data.ptr = &c->ev;
        if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            SSL_free(c->ssl);
            free(c);
            close(fd);
            continue;
        }
        c->events = EPOLLIN;
        c->next = s->conns;
        if (s->conns != NULL) {
            s->conns->prev = c;
        }
        s->conns = c;
        s->nconns++;
        s->cfg.hooks.conn_open(c);
    }
}

/* ---- TLS ---------------------------------------------------------------- */

SSL_CTX *h2s_tls_ctx_new(const char *name, const char *cert, const char *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    char buf[256];

    if (ctx == NULL) {
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* Clients (curl, h2load) often close without close_notify; that is an
     * ordinary end of connection here, not an error worth a log line. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_num_tickets(ctx, 0);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
        logmsg(name, "--cert %s: %s", cert, buf);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
        logmsg(name, "--key %s: %s", key, buf);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* ---- listening, signals, the loop --------------------------------------- */

/*
 * Splits "host:port" or "[v6]:port" and binds a non-blocking listener.
 * Returns the socket, with the bound address printed into where
 * ("127.0.0.1:PORT" or "[::1]:PORT"), or -1 after logging why.
 */
static int make_listener(const char *name, const char *spec, char *where, size_t wlen)
{
    char host[256];
    const char *colon;
    const char *port;
    size_t hlen;
    struct addrinfo hints;
    struct addrinfo *ai = NULL;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int fd;
    int one = 1;
    int rc;

    if (spec[0] == '[') {
        const char *rb = strchr(spec, ']');
        if (rb == NULL || rb[1] != ':') {
            logmsg(name, "--listen %s: expected HOST:PORT or [V6ADDR]:PORT", spec);
            return -1;
        }
        hlen = (size_t)(rb - spec - 1);
        port = rb + 2;
        spec++;
    } else {
        colon = strrchr(spec, ':');
        if (colon == NULL) {
            logmsg(name, "--listen %s: expected HOST:PORT", spec);
            return -1;
        }
        hlen = (size_t)(colon - spec);
        port = colon + 1;
    }
    if (hlen == 0 || hlen >= sizeof(host) || port[0] == '\0') {
        logmsg(name, "--listen: expected HOST:PORT");
        return -1;
    }
    memcpy(host, spec, hlen);
    host[hlen] = '\0';
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        logmsg(name, "--listen %s:%s: %s", host, port, gai_strerror(rc));
        return -1;
    }
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        logmsg(name, "socket: %s", strerror(errno));
        freeaddrinfo(ai);
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 1024) != 0 ||
        getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) {
        logmsg(name, "--listen %s:%s: %s", host, port, strerror(errno));
        freeaddrinfo(ai);
        close(fd);
        return -1;
    }
    freeaddrinfo(ai);
    {
        char h[INET6_ADDRSTRLEN + 1];
        char p[16];
        if (getnameinfo((struct sockaddr *)&ss, sl, h, sizeof(h), p, sizeof(p),
                        NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
            logmsg(name, "getnameinfo failed");
            close(fd);
            return -1;
        }
        snprintf(where, wlen, ss.ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", h, p);
    }
    return fd;
}

/* Writes the port to path atomically: a temporary file, then rename(2). */
static int write_port_file(const char *name, const char *path, const char *port)
{
    char tmp[4096];
    FILE *f;
    int n = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());

    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        logmsg(name, "--port-file %s: path too long", path);
        return -1;
    }
    f = fopen(tmp, "w");
    if (f == NULL) {
        logmsg(name, "--port-file %s: %s", tmp, strerror(errno));
        return -1;
    }
    fprintf(f, "%s\n", port);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        logmsg(name, "--port-file %s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

static void on_signal(h2s_server *s)
{
    struct signalfd_siginfo si;

    while (read(s->sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGHUP) {
            if (s->cfg.hooks.reload != NULL) {
                s->cfg.hooks.reload(s);
            }
        } else {
            s->stop = true;
        }
    }
}

int h2s_create(const h2s_config *cfg, h2s_server **out)
{
    h2s_server *s = calloc(1, sizeof(*s));
    struct epoll_event ev;
    sigset_t mask;
    char where[INET6_ADDRSTRLEN + 16];
    int rc = 1;

    *out = NULL;
    if (s == NULL) {
        logmsg(cfg->name, "out of memory");
        return 1;
    }
    s->cfg = *cfg;
    s->lfd = -1;
    s->sfd = -1;
    s->ep = -1;
    s->heap = calloc(cfg->max_timers > 0 ? cfg->max_timers : 1, sizeof(*s->heap));
    if (s->heap == NULL) {
        logmsg(cfg->name, "out of memory");
        goto fail;
    }
    s->lfd = make_listener(cfg->name, cfg->listen, where, sizeof(where));
    if (s->lfd < 0) {
        rc = 2;
        goto fail;
    }
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) != 0) {
        logmsg(cfg->name, "sigprocmask: %s", strerror(errno));
        goto fail;
    }
    s->sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    s->ep = epoll_create1(EPOLL_CLOEXEC);
    if (s->sfd < 0 || s->ep < 0) {
        logmsg(cfg->name, "signalfd/epoll: %s", strerror(errno));
        goto fail;
    }
    s->listen_ev.kind = EV_LISTEN;
    s->signal_ev.kind = EV_SIGNAL;
    ev.events = EPOLLIN;
    ev.data.ptr = &s->listen_ev;
    if (epoll_ctl(s->ep, EPOLL_CTL_ADD, s->lfd, &ev) != 0) {
        logmsg(cfg->name, "epoll_ctl: %s", strerror(errno));
        goto fail;
    }
    ev.data.ptr = &s->signal_ev;
    if (epoll_ctl(s->ep, EPOLL_CTL_ADD, s->sfd, &ev) != 0) {
        logmsg(cfg->name, "epoll_ctl: %s", strerror(errno));
        goto fail;
    }
    printf("%s listening on %s\n", cfg->name, where);
    fflush(stdout);
    if (cfg->port_file != NULL &&
        write_port_file(cfg->name, cfg->port_file, strrchr(where, ':') + 1) != 0) {
        rc = 2;
        goto fail;
    }
    *out = s;
    return 0;
fail:
    h2s_destroy(s);
    return rc;
}

int h2s_run(h2s_server *s)
{
    struct epoll_event evs[MAX_EVENTS];

    while (!s->stop) {
        int n = epoll_wait(s->ep, evs, MAX_EVENTS, next_timeout(s));
        int i;

        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            logmsg(s->cfg.name, "epoll_wait: %s", strerror(errno));
            return -1;
        }
        for (i = 0; i < n; i++) {
            h2s_ev *h = evs[i].data.ptr;
            switch (h->kind) {
            case EV_LISTEN:
                on_accept(s);
                break;
            case EV_SIGNAL:
                on_signal(s);
                break;
            default:
                h2s_conn_pump(h->owner);
                break;
            }
        }
        fire_timers(s);
        /* Before closing sockets (a drop is seen by the client as the
         * close) and before sleeping. */
        if (s->cfg.hooks.end_of_turn != NULL) {
            s->cfg.hooks.end_of_turn(s);
        }
        free_dead(s);
    }
    return 0;
}

void h2s_destroy(h2s_server *s)
{
    if (s == NULL) {
        return;
    }
    while (s->conns != NULL) {
        h2s_conn *c = s->conns;
        if (!c->dead) {
            if (c->proto != H2S_NONE) {
                SSL_shutdown(c->ssl);
            }
            h2s_conn_kill(c);
        }
        free_dead(s);
    }
    free(s->heap);
    if (s->lfd >= 0) {
        close(s->lfd);
    }
    if (s->sfd >= 0) {
        close(s->sfd);
    }
    if (s->ep >= 0) {
        close(s->ep);
    }
    free(s);
}
