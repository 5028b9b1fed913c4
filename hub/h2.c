/*
 * h2.c - HTTP/2 client on libnghttp2 and OpenSSL, driven by the loop.
 *
 * Shape:
 *   origin   one per https host:port. A FIFO of requests waiting for a
 *            stream, and up to max_host_connections connections.
 *   conn     one TCP + TLS connection with one nghttp2 client session, fed
 *            through nghttp2_session_mem_recv / mem_send. States: TCP
 *            connect, TLS handshake, ready (ALPN h2); "draining" once a
 *            GOAWAY came or stream ids run low (no new streams; closed when
 *            its last stream ends).
 *   h2_req   one request, pooled: the copied request (pseudo-headers and
 *            headers point into its own text buffer, nghttp2 does not copy
 *            them), the captured headers in fixed buffers, the body in a
 *            bounded buffer (inline first, heap up to HTTP_BODY_MAX).
 *
 * Flow: h2_request copies the request, appends it to its origin's queue
 * and hands queued requests to the ready connection with the most free
 * streams. A further connection is opened only when every usable one is at
 * its stream limit (min of ours and the server's
 * SETTINGS_MAX_CONCURRENT_STREAMS), one at a time and at most every
 * connection_spacing_ms. Frames are not written per request: connections
 * are marked dirty and flushed once per loop wake-up (a 0 ms "kick" timer,
 * or the end of the fd or timer callback that got us here), so a burst of
 * requests becomes a few large TLS writes.
 *
 * Callbacks: nghttp2's callbacks only record (status, captured headers,
 * body, stream closed). Finished requests go to a completion FIFO that is
 * run at the end of every loop callback, outside nghttp2 and never inside
 * h2_request, so a done callback may start new requests; those are written
 * in the same flush.
 *
 * Failure rules:
 *   - a stream closed with REFUSED_STREAM before any answer (nghttp2 does
 *     this for every stream above a GOAWAY's last_stream_id, and for
 *     requests it never sent) was not processed: it goes back to the front
 *     of the queue and is sent again on another connection (at most
 *     MAX_REPLAYS times). Streams at or below last_stream_id finish normally.
 *   - a connection that dies fails the streams that were written with a
 *     transport error (the channel retries: they may have been processed)
 *     and replays the ones whose HEADERS never left nghttp2.
 *   - a request that times out, or whose answer is over HTTP_BODY_MAX, is
 *     answered at once and its stream reset (CANCEL); its object stays with
 *     the stream until nghttp2 closes it (nghttp2 still points into it).
 *     A stream that finished normally is never reset.
 *
 * Timers (the loop's timer cancel is a linear search, so nothing here arms a
 * timer per request): one deadline timer for all requests (a list sorted by
 * deadline, appended at the tail in the common case of equal timeouts), one
 * kick timer, per connection one set-up timer and one idle timer (re-armed
 * lazily: PING after ping_interval without a frame from the server, dead
 * when that PING is not answered by the next tick, closed after idle_close
 * without requests), per origin one timer for the connection spacing.
 *
 * Blocking: none, except getaddrinfo() for a host name, called once per new
 * connection (IP literals skip it). Connections are opened seconds apart at
 * most, so a slow resolver delays the loop rarely; a resolver thread would
 * cost more than it saves here.
 */
#include "h2.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "error.h"
#include "log.h"

#define MOD "h2"

#define DEF_MAX_INFLIGHT 1024u
#define DEF_HOST_CONNECTIONS 2u
#define MAX_HOST_CONNECTIONS 64u
#define DEF_STREAMS 100u
#define MAX_STREAMS 100000u
#define DEF_TIMEOUT_MS 30000u
#define DEF_CONNECT_TIMEOUT_MS 10000u
#define DEF_FREE_MAX 64u
#define DEF_SPACING_MS 2000u
#define DEF_PING_MS 60000u
#define DEF_IDLE_CLOSE_MS (15u * 60u * 1000u)
/* Streams we use on a fresh connection before the server's SETTINGS say
 * how many it allows (RFC 9113 asks servers to allow at least 100). */
#define STREAMS_BEFORE_SETTINGS 100u
#define MAX_ORIGINS 64u
#define MAX_REPLAYS 3 /* a request refused more often than this fails */
/* How long an origin that negotiated HTTP/1.1 stays with the HTTP/1.1
 * client before h2 is tried again. */
#define H1_RECHECK_MS (10u * 60u * 1000u)
#define OBUF_SIZE (64u * 1024u) /* per connection: one batch of frames */
#define RBUF_SIZE (64u * 1024u) /* shared: one TLS read */
#define RESP_INLINE 1024u       /* most answers (APNs errors) fit inline */
#define HDR_LINE_MAX 256u       /* == sizeof(channel_request.headers[0]) */
#define URL_MAX sizeof(((struct channel_request *)0)->url)
#define BODY_MAX sizeof(((struct channel_request *)0)->body)
/* path, every header (lower-cased name, NUL, value, NUL), user agent,
 * content-length. */
#define TEXT_MAX (URL_MAX + 2 + CHANNEL_MAX_HEADERS * (HDR_LINE_MAX + 1) + CHANNEL_AUTH_MAX + 32)
#define NV_MAX (4u + CHANNEL_MAX_HEADERS + 3u)
/* Client stream ids are odd and end at 2^31 - 1: stop opening streams on a
 * connection this close to the end and let a new connection take over. */
#define STREAM_ID_HIGH (INT32_MAX - 20000)
#define LOCAL_WINDOW (1 << 20)
#define RESP_HEADER_LIST_MAX 65536u
#define SETTLE_ROUNDS 16
#define HOST_MAX 255u

enum where { W_NONE = 0, W_QUEUE, W_STREAM, W_FREE };
enum conn_state { C_TCP = 0, C_TLS, C_READY };

struct origin;
struct conn;

/* Laid out for the cache: what every request touches (bookkeeping, header
 * fields, the start of each answer buffer) comes first, and the request's
 * text and body share one arena, written front to back, so a typical APNs
 * request touches two pages of the object, not all of it. */
struct h2_req {
    struct h2_req *prev, *next;   /* origin queue, connection's streams, or free list */
    struct h2_req *dprev, *dnext; /* deadline list, while not finished */
    struct h2_req *cnext;         /* completion FIFO */
    h2_t *h;
    struct origin *o;
    struct conn *c; /* while on a stream */
    enum where where;
    bool in_deadline;
    bool finished;  /* the outcome is set; done pending or called */
    bool pending;   /* in the completion FIFO */
    bool hdrs_sent; /* HEADERS serialized by nghttp2: may have reached the server */
    bool answered;  /* a :status came back: the server processed the stream */
    bool hdrs_done; /* the final header block is complete (later ones are trailers) */
    bool require_h2;
    uint8_t replays;
    int32_t stream_id;
    http_done_cb done;
    void *ctx;
    uint64_t start_ms, deadline_ms;

    const char *const *capture;
    uint8_t caplen[HTTP_CAPTURE_MAX];
    unsigned ncapture;

    /* what came back (bookkeeping) */
    int error;
    int status;
    int version;
    char *rbuf; /* rinline or heap */
    size_t rlen, rcap;
    struct http_header caps[HTTP_CAPTURE_MAX];
    unsigned ncaps;

    /* what goes out */
    size_t nnv;
    unsigned nuser; /* caller's headers: nva[4 .. 4 + nuser) */
    char method[sizeof(((struct channel_request *)0)->method)];
    const char *body; /* in arena, after the text */
    size_t body_len, body_off;
    nghttp2_nv nva[NV_MAX];

    /* buffers: only their first bytes are touched by most requests */
    char errbuf[HTTP_ERROR_TEXT_MAX];
    char rinline[RESP_INLINE];
    char capval[HTTP_CAPTURE_MAX][HTTP_CAPTURE_VALUE_MAX + 1];
    char arena[TEXT_MAX + BODY_MAX]; /* :path, header names and values, body */
};

struct conn {
    struct conn *next;  /* origin's list, or the graveyard */
    struct conn *dnext; /* dirty list */
    h2_t *h;
    struct origin *o;
    unsigned id; /* for logs */
    enum conn_state state;
    int fd;
    unsigned events; /* what the loop watches */
    SSL *ssl;
    nghttp2_session *sess;
    bool dead;
    bool dirty;
    bool draining;      /* no new streams */
    bool closing;       /* we sent GOAWAY: close once written */
    bool write_blocked; /* SSL_write wants the socket writable */
    bool read_wants_write;
    bool ping_out;  /* a PING is unanswered */
    bool peer_gone; /* EOF or a TLS error: no close_notify from us */
    bool settings_seen;
    unsigned nstreams; /* open nghttp2 streams of ours, zombies included */
    unsigned cap;      /* streams allowed at once */
    struct h2_req *streams;
    struct addrinfo *ai, *ai_next;
    uint64_t setup_timer, idle_timer;
    uint64_t last_req_ms; /* a stream opened or closed */
    uint64_t last_rx_ms;  /* a frame other than a PING ACK came in */
    uint8_t *obuf;
    size_t olen, ooff;
    const uint8_t *pend; /* a frame from mem_send not yet in obuf */
    size_t pendlen;
};

struct origin {
    struct origin *next;
    h2_t *h;
    char host[HOST_MAX + 1]; /* no brackets */
    char port[6];
    unsigned portnum;
    char authority[HOST_MAX + 10]; /* :authority */
    size_t authority_len;
    bool is_ip;
    bool service;     /* queue or connections changed: look again */
    bool logged_fail; /* connect failures logged once until a success */
    struct conn *conns;
    unsigned nconns;
    struct h2_req *qhead, *qtail;
    unsigned nqueued;
    uint64_t last_open_ms;
    uint64_t h1_until_ms; /* != 0: negotiated HTTP/1.1 last time */
    uint64_t open_timer;
};

struct h2 {
    loop_t *loop;
    SSL_CTX *ssl_ctx;
    BIO_METHOD *bio_meth;
    nghttp2_session_callbacks *cbs;
    nghttp2_option *ngopt;

    struct origin *origins;
    unsigned norigins;
    struct h2_req *free_list;
    unsigned nfree;
    struct h2_req *dl_head, *dl_tail; /* in flight, by deadline */
    uint64_t dl_timer, dl_timer_at;
    struct h2_req *done_head, *done_tail;
    struct conn *dirty;
    struct conn *graveyard;
    uint64_t kick_timer;
    unsigned depth; /* inside a loop callback or settle: settle runs at the end */
    unsigned inflight;
    unsigned conn_seq;
    bool destroying;

    unsigned max_inflight, max_conns, max_streams, free_max;
    uint64_t timeout_ms, connect_timeout_ms, spacing_ms, ping_ms, idle_close_ms;
    char *user_agent;
    size_t ua_len;
    h2_fallback_fn fallback;
    void *fallback_arg;
    struct http_stats st;

    struct channel_request scratch; /* a request rebuilt for the fallback */
    uint8_t rbuf[RBUF_SIZE];
};

static void settle(h2_t *h, bool flush);
static void conn_kill(struct conn *c, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void req_fail(struct h2_req *r, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static uint64_t now_ms(h2_t *h)
{
    return loop_now_ms(h->loop);
}

/* Every loop callback runs between enter and leave; leaving the outermost
 * one settles: completions and queued work. Writes wait for the kick timer,
 * which the loop runs after every fd callback of this wake-up: with several
 * connections busy, each is written once per wake-up, not once per
 * callback. */
static void enter(h2_t *h)
{
    h->depth++;
}

static void leave(h2_t *h)
{
    if (--h->depth == 0) {
        settle(h, false);
    }
}

static void on_kick(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    h2_t *h = arg;
    h->kick_timer = 0;
    settle(h, true);
}

/* Settle and write on this loop turn, after the fd callbacks. */
static void kick(h2_t *h)
{
    if (!h->kick_timer && !h->destroying) {
        h->kick_timer = loop_timer_add(h->loop, 0, on_kick, h);
        if (!h->kick_timer) {
            LOG_ERROR(MOD, "cannot arm a timer: requests wait for the next event");
        }
    }
}

/* --- request objects -------------------------------------------------- */

static void req_free(struct h2_req *r)
{
    if (r->rbuf && r->rbuf != r->rinline) {
        free(r->rbuf);
    }
    free(r);
}

static struct h2_req *req_get(h2_t *h)
{
    struct h2_req *r = h->free_list;
    if (r) {
        h->free_list = r->next;
        h->nfree--;
    } else {
        r = malloc(sizeof(*r));
        if (!r) {
            return NULL;
        }
        r->rbuf = r->rinline;
        r->rcap = sizeof(r->rinline);
    }
    /* Reset the bookkeeping only; the big buffers are overwritten as used. */
    r->prev = r->next = r->dprev = r->dnext = r->cnext = NULL;
    r->h = h;
    r->o = NULL;
    r->c = NULL;
    r->where = W_NONE;
    r->in_deadline = r->finished = r->pending = false;
    r->hdrs_sent = r->answered = r->hdrs_done = false;
    r->replays = 0;
    r->stream_id = 0;
    r->error = 0;
    r->status = 0;
    r->version = 0;
    r->rlen = 0;
    r->ncaps = 0;
    r->errbuf[0] = '\0';
    r->body_off = 0;
    return r;
}

/* Back to the pool. Only for a request in no list and no longer needed by
 * nghttp2 (where == W_NONE, not pending). */
static void req_release(struct h2_req *r)
{
    h2_t *h = r->h;
    if (r->rbuf != r->rinline) {
        /* Large answers are rare: do not pin 64 KiB per pooled object. */
        free(r->rbuf);
        r->rbuf = r->rinline;
        r->rcap = sizeof(r->rinline);
    }
    if (h->nfree >= h->free_max || h->destroying) {
        req_free(r);
        return;
    }
    r->where = W_FREE;
    r->next = h->free_list;
    h->free_list = r;
    h->nfree++;
}

/* --- deadlines ---------------------------------------------------------- */

static void on_deadline(loop_t *loop, uint64_t id, void *arg);

static void dl_arm(h2_t *h)
{
    if (!h->dl_head || h->destroying) {
        return;
    }
    uint64_t at = h->dl_head->deadline_ms;
    if (h->dl_timer && h->dl_timer_at <= at) {
        return; /* fires early enough; it re-arms for the rest */
    }
    if (h->dl_timer) {
        loop_timer_cancel(h->loop, h->dl_timer);
    }
    uint64_t now = clock_mono_ms();
    h->dl_timer = loop_timer_add(h->loop, at > now ? at - now : 0, on_deadline, h);
    h->dl_timer_at = at;
    if (!h->dl_timer) {
        LOG_ERROR(MOD, "cannot arm the request timeout timer");
    }
}

/* Insert by deadline. Requests with the same timeout arrive in deadline
 * order, so the scan from the tail stops at once. */
static void dl_insert(h2_t *h, struct h2_req *r)
{
    struct h2_req *p = h->dl_tail;
    while (p && p->deadline_ms > r->deadline_ms) {
        p = p->dprev;
    }
    r->dprev = p;
    r->dnext = p ? p->dnext : h->dl_head;
    if (r->dnext) {
        r->dnext->dprev = r;
    } else {
        h->dl_tail = r;
    }
    if (p) {
        p->dnext = r;
    } else {
        h->dl_head = r;
    }
    r->in_deadline = true;
    dl_arm(h);
}

static void dl_unlink(h2_t *h, struct h2_req *r)
{
    if (!r->in_deadline) {
        return;
    }
    if (r->dprev) {
        r->dprev->dnext = r->dnext;
    } else {
        h->dl_head = r->dnext;
    }
    if (r->dnext) {
        r->dnext->dprev = r->dprev;
    } else {
        h->dl_tail = r->dprev;
    }
    r->dprev = r->dnext = NULL;
    r->in_deadline = false;
}

static bool origin_has_ready(const struct origin *o)
{
    for (const struct conn *c = o->conns; c; c = c->next) {
        if (c->state == C_READY) {
            return true;
        }
    }
    return false;
}

static void on_deadline(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    h2_t *h = arg;
    h->dl_timer = 0;
    enter(h);
    uint64_t now = clock_mono_ms();
    while (h->dl_head && h->dl_head->deadline_ms <= now) {
        struct h2_req *r = h->dl_head;
        uint64_t took = now - r->start_ms;
        if (r->where == W_QUEUE && !origin_has_ready(r->o)) {
            req_fail(r, -ETIMEDOUT, "request timed out after %" PRIu64 " ms (connecting to %s)",
                     took, r->o->authority);
        } else {
            req_fail(r, -ETIMEDOUT, "request timed out after %" PRIu64 " ms", took);
        }
    }
    dl_arm(h);
    leave(h);
}

/* --- queues --------------------------------------------------------------- */

static void queue_unlink(struct origin *o, struct h2_req *r)
{
    if (r->prev) {
        r->prev->next = r->next;
    } else {
        o->qhead = r->next;
    }
    if (r->next) {
        r->next->prev = r->prev;
    } else {
        o->qtail = r->prev;
    }
    r->prev = r->next = NULL;
    r->where = W_NONE;
    o->nqueued--;
}

static void queue_push(struct origin *o, struct h2_req *r, bool front)
{
    if (front) {
        r->prev = NULL;
        r->next = o->qhead;
        if (o->qhead) {
            o->qhead->prev = r;
        } else {
            o->qtail = r;
        }
        o->qhead = r;
    } else {
        r->next = NULL;
        r->prev = o->qtail;
        if (o->qtail) {
            o->qtail->next = r;
        } else {
            o->qhead = r;
        }
        o->qtail = r;
    }
    r->where = W_QUEUE;
    o->nqueued++;
    o->service = true;
}

static void stream_link(struct conn *c, struct h2_req *r)
{
    r->prev = NULL;
    r->next = c->streams;
    if (c->streams) {
        c->streams->prev = r;
    }
    c->streams = r;
    r->c = c;
    r->where = W_STREAM;
    c->nstreams++;
}

static void stream_unlink(struct conn *c, struct h2_req *r)
{
    if (r->prev) {
        r->prev->next = r->next;
    } else {
        c->streams = r->next;
    }
    if (r->next) {
        r->next->prev = r->prev;
    }
    r->prev = r->next = NULL;
    r->c = NULL;
    r->where = W_NONE;
    c->nstreams--;
}

static void conn_dirty(struct conn *c)
{
    if (!c->dirty && !c->dead) {
        c->dirty = true;
        c->dnext = c->h->dirty;
        c->h->dirty = c;
    }
}

/* --- completion ---------------------------------------------------------- */

/* The outcome in r is final: stop its clock, take it off the queue, reset
 * its stream if that is still open, and queue the done call. */
static void req_complete(struct h2_req *r)
{
    h2_t *h = r->h;
    if (r->finished) {
        return;
    }
    r->finished = true;
    dl_unlink(h, r);
    if (r->where == W_QUEUE) {
        queue_unlink(r->o, r);
    } else if (r->where == W_STREAM && r->c && !r->c->dead) {
        /* Still open (a normal close unlinks before completing): tell the
         * server we are no longer interested. The object stays with the
         * stream until nghttp2 closes it. */
        if (nghttp2_submit_rst_stream(r->c->sess, NGHTTP2_FLAG_NONE, r->stream_id,
                                      NGHTTP2_CANCEL) == 0) {
            conn_dirty(r->c);
        }
    }
    r->pending = true;
    r->cnext = NULL;
    if (h->done_tail) {
        h->done_tail->cnext = r;
    } else {
        h->done_head = r;
    }
    h->done_tail = r;
}

static void req_fail(struct h2_req *r, int err, const char *fmt, ...)
{
    if (r->finished) {
        return;
    }
    r->error = err;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->errbuf, sizeof(r->errbuf), fmt, ap);
    va_end(ap);
    req_complete(r);
}

static void run_completions(h2_t *h)
{
    struct h2_req *r;
    while ((r = h->done_head) != NULL) {
        h->done_head = r->cnext;
        if (!h->done_head) {
            h->done_tail = NULL;
        }
        r->cnext = NULL;
        r->pending = false;

        struct http_response resp;
        memset(&resp, 0, sizeof(resp));
        resp.error = r->error;
        if (r->error == 0) {
            r->errbuf[0] = '\0';
        }
        resp.error_text = r->errbuf;
        resp.status = r->status;
        resp.version = r->version;
        r->rbuf[r->rlen] = '\0';
        resp.body = r->rbuf;
        resp.body_len = r->rlen;
        resp.headers = r->caps;
        resp.nheaders = r->ncaps;
        uint64_t now = now_ms(h);
        resp.elapsed_ms = now > r->start_ms ? now - r->start_ms : 0;
        h->inflight--;
        r->done(r->ctx, &resp);
        if (r->where == W_NONE) {
            req_release(r);
        } /* else: still on its (reset) stream; released when it closes */
    }
}

/* Forget any partial answer and queue r again (at the front: it waited
 * longest). Used for streams the server did not process. */
static void req_replay(struct h2_req *r, const char *why)
{
    h2_t *h = r->h;
    if (r->replays >= MAX_REPLAYS) {
        req_fail(r, TDG_EHTTP, "not processed by %s after %u attempts (%s)", r->o->authority,
                 (unsigned)r->replays + 1, why);
        return;
    }
    r->replays++;
    h->st.replayed++;
    r->status = 0;
    r->version = 0;
    r->rlen = 0;
    r->ncaps = 0;
    r->answered = r->hdrs_sent = r->hdrs_done = false;
    r->body_off = 0;
    r->stream_id = 0;
    queue_push(r->o, r, true);
}

/* Rebuild r as a channel_request and give it to the HTTP/1.1 client. */
static void req_handover(struct h2_req *r)
{
    h2_t *h = r->h;
    struct channel_request *q = &h->scratch;
    const nghttp2_nv *nv = r->nva;
    snprintf(q->method, sizeof(q->method), "%.*s", (int)nv[0].valuelen, (const char *)nv[0].value);
    snprintf(q->url, sizeof(q->url), "https://%.*s%.*s", (int)nv[2].valuelen,
             (const char *)nv[2].value, (int)nv[3].valuelen, (const char *)nv[3].value);
    q->nheaders = 0;
    q->authorization[0] = '\0';
    for (unsigned i = 0; i < r->nuser; i++) {
        const nghttp2_nv *x = &nv[4 + i];
        if (x->namelen == 13 && memcmp(x->name, "authorization", 13) == 0 &&
            x->valuelen < sizeof(q->authorization)) {
            memcpy(q->authorization, x->value, x->valuelen);
            q->authorization[x->valuelen] = '\0';
            continue;
        }
        snprintf(q->headers[q->nheaders++], sizeof(q->headers[0]), "%.*s: %.*s", (int)x->namelen,
                 (const char *)x->name, (int)x->valuelen, (const char *)x->value);
    }
    memcpy(q->body, r->body, r->body_len);
    q->body_len = r->body_len;
    uint64_t now = clock_mono_ms();
    struct http_req_opts ro = {
        .require_h2 = false,
        .timeout_ms = r->deadline_ms > now ? r->deadline_ms - now : 1,
        .capture = r->capture,
    };
    if (r->where == W_QUEUE) {
        queue_unlink(r->o, r);
    }
    int rc = h->fallback(h->fallback_arg, q, &ro, r->done, r->ctx);
    if (rc < 0) {
        req_fail(r, rc, "HTTP/1.1 fallback for %s failed: %s", r->o->authority, tdg_strerror(rc));
        return;
    }
    /* The HTTP/1.1 client owns the done call now. */
    dl_unlink(h, r);
    h->inflight--;
    req_release(r);
}

/* --- TLS: a socket BIO that never raises SIGPIPE ---------------------- */

static int bio_write(BIO *b, const char *buf, int len)
{
    int fd = (int)(intptr_t)BIO_get_data(b);
    BIO_clear_retry_flags(b);
    ssize_t n = send(fd, buf, (size_t)len, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            BIO_set_retry_write(b);
        }
        return -1;
    }
    return (int)n;
}

static int bio_read(BIO *b, char *buf, int len)
{
    int fd = (int)(intptr_t)BIO_get_data(b);
    BIO_clear_retry_flags(b);
    ssize_t n = recv(fd, buf, (size_t)len, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            BIO_set_retry_read(b);
        }
        return -1;
    }
    return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static int bio_destroy(BIO *b)
{
    (void)b;
    return 1; /* the fd belongs to the connection */
}

/* --- connections -------------------------------------------------------- */

static void watch(struct conn *c, unsigned events)
{
    if (c->fd < 0 || c->events == events) {
        return;
    }
    int rc = loop_fd_mod(c->h->loop, c->fd, events);
    if (rc < 0) {
        conn_kill(c, rc, "cannot watch the connection to %s: %s", c->o->authority,
                  tdg_strerror(rc));
        return;
    }
    c->events = events;
}

static bool conn_usable(const struct conn *c)
{
    return !c->dead && c->state == C_READY && !c->draining;
}

static int map_errno(int e)
{
    switch (e) {
    case ECONNREFUSED:
        return -ECONNREFUSED;
    case ENETUNREACH:
    case EHOSTUNREACH:
    case EADDRNOTAVAIL:
    case EAFNOSUPPORT:
        return -EHOSTUNREACH;
    case ETIMEDOUT:
        return -ETIMEDOUT;
    case ENOMEM:
    case ENOBUFS:
        return -ENOMEM;
    default:
        return -ECONNRESET;
    }
}

/* Fail what is queued for o: a connection attempt failed and no other
 * connection is there to serve the queue. */
static void origin_fail_queue(struct origin *o, int err, const char *text)
{
    while (o->qhead) {
        req_fail(o->qhead, err, "%s", text);
    }
}

/* The connection is gone: requests on it fail (or go again when they never
 * left), its origin looks at its queue again. err == 0: a clean close of a
 * connection without streams. The struct itself is freed in settle, so
 * callers up the stack may still test c->dead. */
static void conn_kill(struct conn *c, int err, const char *fmt, ...)
{
    if (c->dead) {
        return;
    }
    h2_t *h = c->h;
    struct origin *o = c->o;
    char text[HTTP_ERROR_TEXT_MAX] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);
    }
    bool was_ready = c->state == C_READY;
    c->dead = true;

    /* off the origin's list */
    for (struct conn **pp = &o->conns; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    o->nconns--;
    o->service = true;

    if (c->setup_timer) {
        loop_timer_cancel(h->loop, c->setup_timer);
        c->setup_timer = 0;
    }
    if (c->idle_timer) {
        loop_timer_cancel(h->loop, c->idle_timer);
        c->idle_timer = 0;
    }
    if (c->ssl) {
        if (err == 0 && c->state == C_READY && !c->peer_gone) {
            SSL_shutdown(c->ssl); /* close_notify, best effort, non-blocking */
        }
        SSL_free(c->ssl); /* frees the BIO too */
        c->ssl = NULL;
        ERR_clear_error();
    }
    if (c->fd >= 0) {
        loop_fd_del(h->loop, c->fd);
        close(c->fd);
        c->fd = -1;
    }

    int ferr = err ? err : -ECONNRESET;
    const char *ftext = text[0] ? text : "connection closed";
    while (c->streams) {
        struct h2_req *r = c->streams;
        stream_unlink(c, r);
        if (r->finished) {
            if (!r->pending) {
                req_release(r);
            }
        } else if (!r->hdrs_sent) {
            req_replay(r, "connection closed before the request was sent");
        } else {
            req_fail(r, ferr, "%s", ftext);
        }
    }

    if (!was_ready && err != 0) {
        h->st.connect_failures++;
        if (!o->logged_fail) {
            LOG_WARN(MOD, "cannot connect to %s: %s", o->authority, ftext);
            o->logged_fail = true;
        }
        /* Nobody else will serve the queue: fail it with this reason. */
        if (o->nconns == 0) {
            origin_fail_queue(o, ferr, ftext);
        }
    } else if (err != 0) {
        LOG_INFO(MOD, "connection %u to %s closed: %s", c->id, o->authority, ftext);
    } else {
        LOG_DEBUG(MOD, "connection %u to %s closed", c->id, o->authority);
    }
    c->next = h->graveyard;
    h->graveyard = c;
}

static void conn_free(struct conn *c)
{
    if (c->sess) {
        nghttp2_session_del(c->sess);
    }
    if (c->ai) {
        freeaddrinfo(c->ai);
    }
    free(c->obuf);
    free(c);
}

/* Write what nghttp2 has for c: frames are gathered in obuf and written in
 * large TLS writes; on EAGAIN the rest waits for the socket. */
static void conn_flush(struct conn *c)
{
    if (c->dead || c->state != C_READY) {
        return;
    }
    for (;;) {
        while (c->olen < OBUF_SIZE) {
            if (!c->pend) {
                const uint8_t *p = NULL;
                ssize_t n = nghttp2_session_mem_send(c->sess, &p);
                if (n < 0) {
                    conn_kill(c, TDG_EHTTP, "HTTP/2 error: %s", nghttp2_strerror((int)n));
                    return;
                }
                if (n == 0) {
                    break;
                }
                c->pend = p;
                c->pendlen = (size_t)n;
            }
            if (c->pendlen > OBUF_SIZE - c->olen) {
                break;
            }
            memcpy(c->obuf + c->olen, c->pend, c->pendlen);
            c->olen += c->pendlen;
            c->pend = NULL;
            c->pendlen = 0;
        }
        const uint8_t *wp;
        size_t wl;
        bool direct = false;
        if (c->olen > c->ooff) {
            wp = c->obuf + c->ooff;
            wl = c->olen - c->ooff;
        } else if (c->pend) {
            /* A frame larger than obuf: write it from nghttp2's buffer. */
            wp = c->pend;
            wl = c->pendlen;
            direct = true;
        } else {
            break;
        }
        ERR_clear_error();
        int n = SSL_write(c->ssl, wp, wl > INT_MAX ? INT_MAX : (int)wl);
        if (n <= 0) {
            int e = SSL_get_error(c->ssl, n);
            if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
                c->write_blocked = true;
                watch(c, e == SSL_ERROR_WANT_WRITE ? LOOP_READ | LOOP_WRITE : LOOP_READ);
                return;
            }
            int se = errno;
            conn_kill(c, e == SSL_ERROR_SYSCALL ? map_errno(se) : -ECONNRESET,
                      "write to %s failed: %s", c->o->authority,
                      e == SSL_ERROR_SYSCALL && se ? strerror(se) : "TLS error");
            return;
        }
        if (direct) {
            c->pend += n;
            c->pendlen -= (size_t)n;
            if (c->pendlen == 0) {
                c->pend = NULL;
            }
        } else {
            c->ooff += (size_t)n;
            if (c->ooff == c->olen) {
                c->ooff = c->olen = 0;
            }
        }
    }
    c->write_blocked = false;
    watch(c, c->read_wants_write ? LOOP_READ | LOOP_WRITE : LOOP_READ);
    if (c->dead) {
        return;
    }
    /* Nothing left to say and nothing to wait for: close. */
    bool session_over = !nghttp2_session_want_read(c->sess) && !nghttp2_session_want_write(c->sess);
    if ((c->draining && c->nstreams == 0) || session_over) {
        if (c->nstreams > 0) {
            conn_kill(c, TDG_EHTTP, "HTTP/2 session with %s ended", c->o->authority);
        } else {
            conn_kill(c, 0, NULL);
        }
    }
}

static void flush_dirty(h2_t *h)
{
    while (h->dirty) {
        struct conn *c = h->dirty;
        h->dirty = c->dnext;
        c->dnext = NULL;
        c->dirty = false;
        conn_flush(c);
    }
}

/* Read and feed nghttp2 until the socket is drained. */
static void conn_read(struct conn *c)
{
    h2_t *h = c->h;
    c->read_wants_write = false;
    for (;;) {
        ERR_clear_error();
        int n = SSL_read(c->ssl, h->rbuf, (int)sizeof(h->rbuf));
        if (n > 0) {
            ssize_t rv = nghttp2_session_mem_recv(c->sess, h->rbuf, (size_t)n);
            if (rv < 0) {
                conn_kill(c, TDG_EHTTP, "HTTP/2 error from %s: %s", c->o->authority,
                          nghttp2_strerror((int)rv));
                return;
            }
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ) {
            break;
        }
        if (e == SSL_ERROR_WANT_WRITE) {
            c->read_wants_write = true;
            watch(c, LOOP_READ | LOOP_WRITE);
            break;
        }
        int se = errno;
        c->peer_gone = true;
        if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && se == 0) ||
            (e == SSL_ERROR_SSL &&
             ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING)) {
            conn_kill(c, c->nstreams ? -ECONNRESET : 0, "connection closed by %s", c->o->authority);
        } else if (e == SSL_ERROR_SYSCALL) {
            conn_kill(c, map_errno(se), "read from %s failed: %s", c->o->authority, strerror(se));
        } else {
            char buf[160];
            ERR_error_string_n(ERR_peek_error(), buf, sizeof(buf));
            conn_kill(c, -ECONNRESET, "TLS error from %s: %s", c->o->authority, buf);
        }
        return;
    }
    conn_dirty(c); /* acks, window updates, or just the chance to close */
}

static void on_idle(loop_t *loop, uint64_t id, void *arg);

static void idle_arm(struct conn *c, uint64_t delay)
{
    if (!c->idle_timer && !c->dead) {
        c->idle_timer = loop_timer_add(c->h->loop, delay, on_idle, c);
    }
}

/* Liveness and idleness, one lazy timer per connection. Nothing heard
 * from the server for ping_ms (busy or not): PING; still no answer at the
 * next tick: the connection is dead (a server that stopped reading would
 * otherwise hold every stream of it). No requests for idle_close_ms:
 * GOAWAY and close. */
static void on_idle(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    struct conn *c = arg;
    h2_t *h = c->h;
    c->idle_timer = 0;
    enter(h);
    uint64_t now = clock_mono_ms();
    uint64_t next = h->ping_ms;
    uint64_t ping_at = c->last_rx_ms + h->ping_ms;
    uint64_t close_at = c->last_req_ms + h->idle_close_ms;
    if (c->ping_out) {
        conn_kill(c, -ETIMEDOUT, "no answer to PING from %s in %" PRIu64 " ms", c->o->authority,
                  h->ping_ms);
    } else if (c->nstreams == 0 && !c->draining && now >= close_at) {
        LOG_DEBUG(MOD, "connection %u to %s idle for %" PRIu64 " ms: closing", c->id,
                  c->o->authority, now - c->last_req_ms);
        nghttp2_session_terminate_session(c->sess, NGHTTP2_NO_ERROR);
        c->draining = c->closing = true;
        conn_dirty(c);
    } else if (now >= ping_at) {
        if (nghttp2_submit_ping(c->sess, NGHTTP2_FLAG_NONE, NULL) == 0) {
            c->ping_out = true;
            h->st.pings_sent++;
            conn_dirty(c);
        }
    } else {
        next = ping_at - now;
    }
    if (!c->ping_out && c->nstreams == 0 && !c->draining && close_at > now &&
        close_at - now < next) {
        next = close_at - now;
    }
    if (!c->dead) {
        idle_arm(c, next);
    }
    leave(h);
}

static void on_setup_timeout(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    struct conn *c = arg;
    h2_t *h = c->h;
    c->setup_timer = 0;
    enter(h);
    conn_kill(c, -ETIMEDOUT, "connection to %s timed out after %" PRIu64 " ms (%s)",
              c->o->authority, h->connect_timeout_ms,
              c->state == C_TCP ? "TCP connect" : "TLS handshake");
    leave(h);
}

static int session_start(struct conn *c)
{
    h2_t *h = c->h;
    int rv = nghttp2_session_client_new2(&c->sess, h->cbs, c, h->ngopt);
    if (rv != 0) {
        return -ENOMEM;
    }
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, LOCAL_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, RESP_HEADER_LIST_MAX},
    };
    rv = nghttp2_submit_settings(c->sess, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0]));
    if (rv == 0) {
        rv = nghttp2_session_set_local_window_size(c->sess, NGHTTP2_FLAG_NONE, 0, LOCAL_WINDOW);
    }
    return rv == 0 ? 0 : -ENOMEM;
}

/* The server did not choose h2: requests that allow HTTP/1.1 go to the
 * fallback client, the others fail with -EPROTO. */
static void conn_not_h2(struct conn *c, const unsigned char *alpn, unsigned alen)
{
    h2_t *h = c->h;
    struct origin *o = c->o;
    char proto[32];
    if (alen == 0) {
        snprintf(proto, sizeof(proto), "no ALPN protocol");
    } else {
        snprintf(proto, sizeof(proto), "ALPN %.*s", (int)(alen > 16 ? 16 : alen),
                 (const char *)alpn);
    }
    if (h->fallback) {
        o->h1_until_ms = now_ms(h) + H1_RECHECK_MS;
    }
    LOG_INFO(MOD, "%s does not speak HTTP/2 (%s)%s", o->authority, proto,
             h->fallback ? ": HTTP/1.1 for requests that allow it" : "");
    struct h2_req *r = o->qhead;
    while (r) {
        struct h2_req *next = r->next;
        if (r->require_h2 || !h->fallback) {
            r->version = 11;
            req_fail(r, -EPROTO, "server at %s answered HTTP/1.1 (%s); HTTP/2 required",
                     o->authority, proto);
        } else {
            req_handover(r);
        }
        r = next;
    }
    conn_kill(c, 0, NULL); /* not a failure: the queue is handled */
}

static void conn_handshake(struct conn *c)
{
    h2_t *h = c->h;
    ERR_clear_error();
    int rv = SSL_do_handshake(c->ssl);
    if (rv == 1) {
        const unsigned char *alpn = NULL;
        unsigned alen = 0;
        SSL_get0_alpn_selected(c->ssl, &alpn, &alen);
        if (alen != 2 || memcmp(alpn, "h2", 2) != 0) {
            conn_not_h2(c, alpn, alen);
            return;
        }
        if (session_start(c) < 0) {
            conn_kill(c, -ENOMEM, "cannot start an HTTP/2 session");
            return;
        }
        if (c->setup_timer) {
            loop_timer_cancel(h->loop, c->setup_timer);
            c->setup_timer = 0;
        }
        c->state = C_READY;
        c->last_req_ms = c->last_rx_ms = clock_mono_ms();
        h->st.connects++;
        if (c->o->logged_fail) {
            LOG_INFO(MOD, "connected to %s again", c->o->authority);
        }
        c->o->logged_fail = false;
        LOG_DEBUG(MOD, "connection %u to %s ready (%s)", c->id, c->o->authority,
                  SSL_get_version(c->ssl));
        c->o->service = true;
        watch(c, LOOP_READ);
        conn_dirty(c); /* preface and SETTINGS */
        idle_arm(c, h->ping_ms);
        /* The handshake's last read may have pulled the server's first
         * frames into OpenSSL's buffer (read-ahead): epoll will not say so. */
        if (!c->dead) {
            conn_read(c);
        }
        return;
    }
    int e = SSL_get_error(c->ssl, rv);
    if (e == SSL_ERROR_WANT_READ) {
        watch(c, LOOP_READ);
        return;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        watch(c, LOOP_WRITE);
        return;
    }
    int se = errno;
    long vr = SSL_get_verify_result(c->ssl);
    if (vr != X509_V_OK) {
        conn_kill(c, TDG_EHTTP, "TLS: certificate of %s not trusted: %s", c->o->authority,
                  X509_verify_cert_error_string(vr));
    } else if (ERR_peek_error() != 0) {
        char buf[160];
        ERR_error_string_n(ERR_peek_error(), buf, sizeof(buf));
        conn_kill(c, TDG_EHTTP, "TLS handshake with %s failed: %s", c->o->authority, buf);
    } else if (e == SSL_ERROR_SYSCALL && se != 0) {
        conn_kill(c, map_errno(se), "TLS handshake with %s failed: %s", c->o->authority,
                  strerror(se));
    } else {
        conn_kill(c, -ECONNRESET, "connection closed by %s during the TLS handshake",
                  c->o->authority);
    }
}

static void conn_connect_next(struct conn *c, int last_err);

static void conn_tls_start(struct conn *c)
{
    h2_t *h = c->h;
    struct origin *o = c->o;
    freeaddrinfo(c->ai);
    c->ai = c->ai_next = NULL;
    c->ssl = SSL_new(h->ssl_ctx);
    BIO *b = c->ssl ? BIO_new(h->bio_meth) : NULL;
    if (!b) {
        conn_kill(c, -ENOMEM, "cannot set up TLS");
        return;
    }
    BIO_set_data(b, (void *)(intptr_t)c->fd);
    SSL_set_bio(c->ssl, b, b);
    int ok = 1;
    if (o->is_ip) {
        ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), o->host);
    } else {
        /* SNI, and the name the certificate must carry. */
        SSL_set_hostflags(c->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        ok = SSL_set_tlsext_host_name(c->ssl, o->host) == 1 && SSL_set1_host(c->ssl, o->host) == 1;
    }
    if (!ok) {
        conn_kill(c, TDG_EHTTP, "cannot set up TLS for %s", o->authority);
        return;
    }
    SSL_set_connect_state(c->ssl);
    c->state = C_TLS;
    conn_handshake(c);
}

static void conn_tcp_done(struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) {
        err = errno;
    }
    if (err == EINPROGRESS) {
        return; /* spurious wake-up */
    }
    if (err != 0) {
        loop_fd_del(c->h->loop, c->fd);
        close(c->fd);
        c->fd = -1;
        c->events = 0;
        conn_connect_next(c, -err);
        return;
    }
    conn_tls_start(c);
}

static void on_conn_fd(loop_t *loop, int fd, unsigned events, void *arg)
{
    (void)loop;
    (void)fd;
    struct conn *c = arg;
    h2_t *h = c->h;
    enter(h);
    switch (c->state) {
    case C_TCP:
        conn_tcp_done(c);
        break;
    case C_TLS:
        conn_handshake(c);
        break;
    case C_READY:
        if ((events & (LOOP_READ | LOOP_ERROR)) || (c->read_wants_write && (events & LOOP_WRITE))) {
            conn_read(c);
        }
        if (!c->dead && (events & LOOP_WRITE)) {
            conn_dirty(c);
        }
        break;
    }
    leave(h);
}

/* Try the next resolved address. last_err: why the previous one failed. */
static void conn_connect_next(struct conn *c, int last_err)
{
    h2_t *h = c->h;
    while (c->ai_next) {
        struct addrinfo *ai = c->ai_next;
        c->ai_next = ai->ai_next;
        int fd =
            socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            last_err = -errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
            last_err = -errno;
            close(fd);
            continue;
        }
        int rc = loop_fd_add(h->loop, fd, LOOP_WRITE, on_conn_fd, c);
        if (rc < 0) {
            close(fd);
            last_err = rc;
            continue;
        }
        c->fd = fd;
        c->events = LOOP_WRITE;
        return;
    }
    int e = last_err < 0 ? -last_err : ECONNREFUSED;
    conn_kill(c, map_errno(e), "cannot connect to %s: %s", c->o->authority, strerror(e));
}

static void conn_open(struct origin *o)
{
    h2_t *h = o->h;
    struct conn *c = calloc(1, sizeof(*c));
    uint8_t *obuf = c ? malloc(OBUF_SIZE) : NULL;
    if (!obuf) {
        free(c);
        origin_fail_queue(o, -ENOMEM, "out of memory");
        return;
    }
    c->obuf = obuf;
    c->h = h;
    c->o = o;
    c->fd = -1;
    c->id = ++h->conn_seq;
    c->state = C_TCP;
    c->cap = h->max_streams < STREAMS_BEFORE_SETTINGS ? h->max_streams : STREAMS_BEFORE_SETTINGS;
    c->next = o->conns;
    o->conns = c;
    o->nconns++;
    o->last_open_ms = now_ms(h);
    c->setup_timer = loop_timer_add(h->loop, h->connect_timeout_ms, on_setup_timeout, c);
    if (!c->setup_timer) {
        conn_kill(c, -ENOMEM, "cannot arm the connect timer");
        return;
    }
    LOG_DEBUG(MOD, "connection %u to %s: connecting", c->id, o->authority);
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (o->is_ip ? AI_NUMERICHOST : 0);
    /* Blocking for a host name (see the top of this file). */
    int rv = getaddrinfo(o->host, o->port, &hints, &c->ai);
    if (rv != 0) {
        c->ai = NULL;
        conn_kill(c, rv == EAI_MEMORY ? -ENOMEM : -EHOSTUNREACH, "cannot resolve %s: %s", o->host,
                  gai_strerror(rv));
        return;
    }
    c->ai_next = c->ai;
    conn_connect_next(c, 0);
}

/* --- nghttp2 callbacks (record only; nothing here calls done) ------------ */

static struct h2_req *stream_req(nghttp2_session *s, int32_t id)
{
    return nghttp2_session_get_stream_user_data(s, id);
}

static ssize_t read_body(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *user)
{
    (void)s;
    (void)id;
    (void)user;
    struct h2_req *r = src->ptr;
    size_t n = r->body_len - r->body_off;
    if (n > len) {
        n = len;
    }
    memcpy(buf, r->body + r->body_off, n);
    r->body_off += n;
    if (r->body_off == r->body_len) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    }
    return (ssize_t)n;
}

static void capture(struct h2_req *r, const uint8_t *name, size_t nlen, const uint8_t *value,
                    size_t vlen)
{
    for (unsigned i = 0; i < r->ncapture; i++) {
        if (r->caplen[i] != nlen || strncasecmp(r->capture[i], (const char *)name, nlen) != 0) {
            continue;
        }
        if (r->ncaps >= HTTP_CAPTURE_MAX) {
            return;
        }
        while (vlen > 0 && (*value == ' ' || *value == '\t')) {
            value++;
            vlen--;
        }
        while (vlen > 0 && (value[vlen - 1] == ' ' || value[vlen - 1] == '\t')) {
            vlen--;
        }
        if (vlen > HTTP_CAPTURE_VALUE_MAX) {
            vlen = HTTP_CAPTURE_VALUE_MAX;
        }
        char *dst = r->capval[r->ncaps];
        memcpy(dst, value, vlen);
        dst[vlen] = '\0';
        r->caps[r->ncaps].name = r->capture[i];
        r->caps[r->ncaps].value = dst;
        r->ncaps++;
        return;
    }
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *user)
{
    (void)flags;
    struct conn *c = user;
    if (c->dead || f->hd.type != NGHTTP2_HEADERS) {
        return 0;
    }
    struct h2_req *r = stream_req(s, f->hd.stream_id);
    if (!r || r->finished || r->hdrs_done) {
        return 0; /* unknown, given up, or trailers */
    }
    if (nlen == 7 && memcmp(name, ":status", 7) == 0) {
        int st = 0;
        for (size_t i = 0; i < vlen && i < 3; i++) {
            st = st * 10 + (value[i] - '0');
        }
        r->status = st;
        r->version = 20;
        r->answered = true;
        r->ncaps = 0; /* a new header block (after 1xx): forget the earlier one */
        return 0;
    }
    if (r->ncapture && name[0] != ':') {
        capture(r, name, nlen, value, vlen);
    }
    return 0;
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                   void *user)
{
    (void)flags;
    struct conn *c = user;
    if (c->dead) {
        return 0;
    }
    struct h2_req *r = stream_req(s, id);
    if (!r || r->finished) {
        return 0;
    }
    if (len > HTTP_BODY_MAX || r->rlen + len > HTTP_BODY_MAX) {
        req_fail(r, TDG_ETOOBIG, "response body over %u bytes", (unsigned)HTTP_BODY_MAX);
        return 0;
    }
    if (r->rlen + len + 1 > r->rcap) {
        size_t cap = r->rcap * 2;
        while (cap < r->rlen + len + 1) {
            cap *= 2;
        }
        if (cap > HTTP_BODY_MAX + 1) {
            cap = HTTP_BODY_MAX + 1;
        }
        char *nb = r->rbuf == r->rinline ? malloc(cap) : realloc(r->rbuf, cap);
        if (!nb) {
            req_fail(r, -ENOMEM, "out of memory for the response body");
            return 0;
        }
        if (r->rbuf == r->rinline) {
            memcpy(nb, r->rinline, r->rlen);
        }
        r->rbuf = nb;
        r->rcap = cap;
    }
    memcpy(r->rbuf + r->rlen, data, len);
    r->rlen += len;
    return 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *user)
{
    struct conn *c = user;
    h2_t *h = c->h;
    if (c->dead) {
        return 0;
    }
    if (f->hd.type != NGHTTP2_PING || !(f->hd.flags & NGHTTP2_FLAG_ACK)) {
        c->last_rx_ms = now_ms(h); /* alive; an answered PING is not activity */
    }
    switch (f->hd.type) {
    case NGHTTP2_HEADERS: {
        struct h2_req *r = stream_req(s, f->hd.stream_id);
        if (r && (f->hd.flags & NGHTTP2_FLAG_END_HEADERS) && r->status >= 200) {
            r->hdrs_done = true;
        }
        break;
    }
    case NGHTTP2_SETTINGS:
        if (!(f->hd.flags & NGHTTP2_FLAG_ACK)) {
            uint32_t peer =
                nghttp2_session_get_remote_settings(s, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
            c->cap = peer < h->max_streams ? peer : h->max_streams;
            if (!c->settings_seen) {
                LOG_DEBUG(MOD, "connection %u to %s: server allows %" PRIu32 " streams, using %u",
                          c->id, c->o->authority, peer, c->cap);
            }
            c->settings_seen = true;
            c->o->service = true;
        }
        break;
    case NGHTTP2_GOAWAY: {
        h->st.goaways++;
        c->draining = true;
        c->o->service = true;
        uint32_t code = f->goaway.error_code;
        int dl = (int)(f->goaway.opaque_data_len > 120 ? 120 : f->goaway.opaque_data_len);
        if (code == NGHTTP2_NO_ERROR) {
            LOG_INFO(MOD, "GOAWAY from %s on connection %u: last_stream=%d %.*s", c->o->authority,
                     c->id, f->goaway.last_stream_id, dl, (const char *)f->goaway.opaque_data);
        } else {
            LOG_WARN(MOD, "GOAWAY from %s on connection %u: %s last_stream=%d %.*s",
                     c->o->authority, c->id, nghttp2_http2_strerror(code), f->goaway.last_stream_id,
                     dl, (const char *)f->goaway.opaque_data);
        }
        break;
    }
    case NGHTTP2_PING:
        if (f->hd.flags & NGHTTP2_FLAG_ACK) {
            c->ping_out = false;
            h->st.pings_acked++;
        }
        break;
    default:
        break;
    }
    return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *user)
{
    struct conn *c = user;
    if (c->dead) {
        return 0;
    }
    struct h2_req *r = stream_req(s, id);
    if (!r || r->c != c) {
        return 0;
    }
    stream_unlink(c, r);
    c->last_req_ms = now_ms(c->h);
    c->o->service = true;
    if (c->draining) {
        conn_dirty(c); /* the last stream may close the connection */
    }
    if (r->finished) {
        if (!r->pending) {
            req_release(r); /* a reset stream of an answered request */
        }
        return 0;
    }
    if (code == NGHTTP2_REFUSED_STREAM && !r->answered) {
        /* Above a GOAWAY's last_stream_id, refused, or never sent: the
         * server did not process it (RFC 9113 8.7). */
        req_replay(r, "refused");
        return 0;
    }
    if (code != NGHTTP2_NO_ERROR) {
        req_fail(r, -ECONNRESET, "stream %d to %s closed: %s", id, c->o->authority,
                 nghttp2_http2_strerror(code));
        return 0;
    }
    if (r->status < 200) {
        req_fail(r, -ECONNRESET, "stream %d to %s closed without an answer", id, c->o->authority);
        return 0;
    }
    r->error = 0;
    req_complete(r);
    return 0;
}

static int before_frame_send(nghttp2_session *s, const nghttp2_frame *f, void *user)
{
    struct conn *c = user;
    if (!c->dead && f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
        struct h2_req *r = stream_req(s, f->hd.stream_id);
        if (r) {
            r->hdrs_sent = true; /* from here on it may reach the server */
        }
    }
    return 0;
}

static int on_frame_send(nghttp2_session *s, const nghttp2_frame *f, void *user)
{
    (void)s;
    struct conn *c = user;
    if (f->hd.type == NGHTTP2_RST_STREAM) {
        c->h->st.resets_sent++;
    }
    return 0;
}

/* --- dispatch ----------------------------------------------------------- */

/* The usable connection with the most free streams, or NULL. */
static struct conn *origin_pick(struct origin *o)
{
    struct conn *best = NULL;
    unsigned best_free = 0;
    for (struct conn *c = o->conns; c; c = c->next) {
        if (!conn_usable(c) || c->nstreams >= c->cap) {
            continue;
        }
        unsigned fr = c->cap - c->nstreams;
        if (fr > best_free) {
            best = c;
            best_free = fr;
        }
    }
    return best;
}

/* Put r on a stream of c. 0, or < 0 when c cannot take it (r untouched). */
static int stream_submit(struct conn *c, struct h2_req *r)
{
    nghttp2_data_provider dp;
    dp.source.ptr = r;
    dp.read_callback = read_body;
    int32_t id = nghttp2_submit_request(c->sess, NULL, r->nva, r->nnv, r->body_len ? &dp : NULL, r);
    if (id < 0) {
        return (int)id;
    }
    r->stream_id = id;
    stream_link(c, r);
    c->last_req_ms = now_ms(c->h);
    if (id >= STREAM_ID_HIGH) {
        /* Stream ids run out at 2^31: a new connection takes over. */
        LOG_INFO(MOD, "connection %u to %s: stream ids nearly used up, draining", c->id,
                 c->o->authority);
        c->draining = true;
        c->o->service = true;
    }
    conn_dirty(c);
    return 0;
}

static void origin_dispatch(struct origin *o)
{
    while (o->qhead) {
        struct conn *c = origin_pick(o);
        if (!c) {
            return;
        }
        struct h2_req *r = o->qhead;
        queue_unlink(o, r);
        int rc = stream_submit(c, r);
        if (rc == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE || rc == NGHTTP2_ERR_INVALID_STATE ||
            rc == NGHTTP2_ERR_START_STREAM_NOT_ALLOWED) {
            c->draining = true; /* this connection takes no more */
            queue_push(o, r, true);
            conn_dirty(c);
        } else if (rc < 0) {
            req_fail(r, rc == NGHTTP2_ERR_NOMEM ? -ENOMEM : TDG_EHTTP, "cannot send: %s",
                     nghttp2_strerror(rc));
        }
    }
}

static void on_open_timer(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    struct origin *o = arg;
    o->open_timer = 0;
    enter(o->h);
    o->service = true;
    leave(o->h);
}

/* Requests are waiting and no connection has a free stream: open another
 * if the rules allow (one set-up at a time, max_host_connections usable
 * ones, spacing while one is usable). */
static void origin_maybe_open(struct origin *o)
{
    h2_t *h = o->h;
    unsigned usable = 0, setting_up = 0;
    for (struct conn *c = o->conns; c; c = c->next) {
        if (c->dead) {
            continue;
        }
        if (c->state != C_READY) {
            setting_up++;
        } else if (!c->draining) {
            usable++;
        }
    }
    if (setting_up > 0 || usable >= h->max_conns || o->nconns >= 2 * h->max_conns) {
        return; /* a closing connection's end sets o->service again */
    }
    if (usable > 0) {
        uint64_t now = now_ms(h);
        uint64_t at = o->last_open_ms + h->spacing_ms;
        if (now < at) {
            if (!o->open_timer) {
                o->open_timer = loop_timer_add(h->loop, at - now, on_open_timer, o);
            }
            return;
        }
    }
    conn_open(o);
}

static void service_origins(h2_t *h)
{
    for (struct origin *o = h->origins; o; o = o->next) {
        if (!o->service) {
            continue;
        }
        o->service = false;
        origin_dispatch(o);
        if (o->qhead) {
            origin_maybe_open(o);
        }
    }
}

static bool any_service(const h2_t *h)
{
    for (const struct origin *o = h->origins; o; o = o->next) {
        if (o->service) {
            return true;
        }
    }
    return false;
}

/* End of a loop callback: done callbacks, queued requests onto streams,
 * new connections, writes; again while one step made work for another. */
static void settle(h2_t *h, bool flush)
{
    h->depth++; /* done callbacks that start requests must not kick */
    for (int i = 0; i < SETTLE_ROUNDS; i++) {
        run_completions(h);
        service_origins(h);
        if (flush) {
            flush_dirty(h); /* may kill connections: more completions */
        }
        if (!h->done_head && (!flush || !h->dirty) && !any_service(h)) {
            break;
        }
    }
    /* Dead connections may still sit in the dirty list (rounds ran out). */
    for (struct conn **pp = &h->dirty; *pp;) {
        if ((*pp)->dead) {
            *pp = (*pp)->dnext;
        } else {
            pp = &(*pp)->dnext;
        }
    }
    while (h->graveyard) {
        struct conn *c = h->graveyard;
        h->graveyard = c->next;
        conn_free(c);
    }
    h->depth--;
    if (h->done_head || h->dirty || any_service(h)) {
        kick(h);
    }
}

/* --- requests ------------------------------------------------------------ */

struct target {
    const char *host;
    size_t hostlen;
    bool bracketed;
    unsigned port;
    const char *path; /* from '/' or '?' */
    size_t pathlen;
};

static bool host_char_ok(char ch, bool v6)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '.' || ch == '_' || (v6 && (ch == ':' || ch == '%'));
}

/* The path, query and fragment of a URL (to its NUL): the length before
 * '#' in *pathlen; false when that part holds a space or a control byte.
 * Eight bytes a step: this runs for every request, on both threads. */
static bool url_path_ok(const char *path, size_t *pathlen)
{
    size_t n = strlen(path);
    const char *hash = memchr(path, '#', n);
    if (hash) {
        n = (size_t)(hash - path);
    }
    *pathlen = n;
    const uint64_t ones = UINT64_MAX / 255; /* 0x0101..01 */
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x, y;
        memcpy(&x, path + i, 8); /* no alignment assumed; byte order does not matter */
        y = x ^ (ones * 0x7f);
        /* nonzero iff some byte < 0x21, or some byte == 0x7f */
        if ((((x - ones * 0x21) & ~x) | ((y - ones) & ~y)) & (ones * 0x80)) {
            break; /* the bytes from here are checked one by one */
        }
    }
    for (; i < n; i++) {
        unsigned char ch = (unsigned char)path[i];
        if (ch <= 0x20 || ch == 0x7f) {
            return false; /* a URL carries no spaces or controls */
        }
    }
    return true;
}

/* https://host[:port][/path][?query][#fragment] -> t. H2_NOT_MINE for
 * other schemes and user info, -EINVAL for what no server could take. */
static int parse_url(const char *url, struct target *t)
{
    if (strncasecmp(url, "https://", 8) != 0) {
        return H2_NOT_MINE;
    }
    const char *a = url + 8;
    size_t alen = strcspn(a, "/?#");
    if (memchr(a, '@', alen)) {
        return H2_NOT_MINE;
    }
    const char *port = NULL;
    size_t portlen = 0;
    memset(t, 0, sizeof(*t));
    if (alen > 0 && a[0] == '[') {
        const char *close = memchr(a, ']', alen);
        if (!close) {
            return -EINVAL;
        }
        t->host = a + 1;
        t->hostlen = (size_t)(close - a - 1);
        t->bracketed = true;
        if (close + 1 < a + alen) {
            if (close[1] != ':') {
                return -EINVAL;
            }
            port = close + 2;
            portlen = (size_t)(a + alen - port);
        }
    } else {
        const char *colon = memchr(a, ':', alen);
        t->host = a;
        t->hostlen = colon ? (size_t)(colon - a) : alen;
        if (colon) {
            port = colon + 1;
            portlen = (size_t)(a + alen - port);
        }
    }
    if (t->hostlen == 0 || t->hostlen > HOST_MAX) {
        return -EINVAL;
    }
    for (size_t i = 0; i < t->hostlen; i++) {
        if (!host_char_ok(t->host[i], t->bracketed)) {
            return -EINVAL;
        }
    }
    t->port = 443;
    if (port) {
        if (portlen == 0 || portlen > 5) {
            return -EINVAL;
        }
        unsigned p = 0;
        for (size_t i = 0; i < portlen; i++) {
            if (port[i] < '0' || port[i] > '9') {
                return -EINVAL;
            }
            p = p * 10 + (unsigned)(port[i] - '0');
        }
        if (p == 0 || p > 65535) {
            return -EINVAL;
        }
        t->port = p;
    }
    t->path = a + alen;
    return url_path_ok(t->path, &t->pathlen) ? 0 : -EINVAL;
}

static void origin_free(struct origin *o)
{
    if (o->open_timer) {
        loop_timer_cancel(o->h->loop, o->open_timer);
    }
    free(o);
}

static struct origin *origin_get(h2_t *h, const struct target *t, int *err)
{
    for (struct origin *o = h->origins; o; o = o->next) {
        if (o->portnum == t->port && strlen(o->host) == t->hostlen &&
            strncasecmp(o->host, t->host, t->hostlen) == 0) {
            return o;
        }
    }
    if (h->norigins >= MAX_ORIGINS) {
        /* Forget one that has nothing going on. */
        for (struct origin **pp = &h->origins; *pp; pp = &(*pp)->next) {
            struct origin *o = *pp;
            if (o->nconns == 0 && !o->qhead && !o->service) {
                *pp = o->next;
                origin_free(o);
                h->norigins--;
                break;
            }
        }
        if (h->norigins >= MAX_ORIGINS) {
            *err = -EBUSY;
            return NULL;
        }
    }
    struct origin *o = calloc(1, sizeof(*o));
    if (!o) {
        *err = -ENOMEM;
        return NULL;
    }
    o->h = h;
    memcpy(o->host, t->host, t->hostlen);
    o->host[t->hostlen] = '\0';
    o->portnum = t->port;
    snprintf(o->port, sizeof(o->port), "%u", t->port);
    unsigned char addr[sizeof(struct in6_addr)];
    o->is_ip = inet_pton(AF_INET, o->host, addr) == 1 || inet_pton(AF_INET6, o->host, addr) == 1;
    const char *lb = t->bracketed ? "[" : "", *rb = t->bracketed ? "]" : "";
    if (t->port == 443) {
        snprintf(o->authority, sizeof(o->authority), "%s%s%s", lb, o->host, rb);
    } else {
        snprintf(o->authority, sizeof(o->authority), "%s%s%s:%u", lb, o->host, rb, t->port);
    }
    o->authority_len = strlen(o->authority);
    o->next = h->origins;
    h->origins = o;
    h->norigins++;
    return o;
}

static void nv_set(nghttp2_nv *nv, const char *name, size_t nlen, const char *value, size_t vlen)
{
    nv->name = (uint8_t *)(uintptr_t)name;
    nv->namelen = nlen;
    nv->value = (uint8_t *)(uintptr_t)value;
    nv->valuelen = vlen;
    /* Our buffers outlive the stream: nghttp2 need not copy them. */
    nv->flags = NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE;
}

/* name (nlen bytes, lower case) is the literal want. */
#define NAME_IS(name, nlen, want)                                                                  \
    ((nlen) == sizeof(want) - 1 && memcmp((name), (want), sizeof(want) - 1) == 0)

/* Headers that do not exist in HTTP/2 (RFC 9113 8.2.2), and two that the
 * request line covers: dropped. */
static bool hop_by_hop(const char *name, size_t nlen)
{
    switch (name[0]) {
    case 'c':
        return NAME_IS(name, nlen, "connection");
    case 'e':
        return NAME_IS(name, nlen, "expect");
    case 'h':
        return NAME_IS(name, nlen, "host");
    case 'k':
        return NAME_IS(name, nlen, "keep-alive");
    case 'p':
        return NAME_IS(name, nlen, "proxy-connection");
    case 't':
        return NAME_IS(name, nlen, "transfer-encoding") || NAME_IS(name, nlen, "te");
    case 'u':
        return NAME_IS(name, nlen, "upgrade");
    default:
        return false;
    }
}

/* Decimal digits of v into buf (at least 21 bytes), NUL-terminated; returns
 * the length. */
static size_t format_size(char *buf, size_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    for (size_t i = 0; i < n; i++) {
        buf[i] = tmp[n - 1 - i];
    }
    buf[n] = '\0';
    return n;
}

/* Copy req into r as HTTP/2 header fields. -EINVAL if it cannot be one. */
static int req_fill(h2_t *h, struct h2_req *r, const struct origin *o, const struct target *t,
                    const struct channel_request *req)
{
    char *p = r->arena;
    char *end = r->arena + TEXT_MAX; /* the body gets the rest */
    size_t n = 0;

    /* :path: the path, "/" for none, "/" + query for a bare query */
    char *path = p;
    if (t->pathlen == 0 || t->path[0] != '/') {
        *p++ = '/';
    }
    memcpy(p, t->path, t->pathlen);
    p += t->pathlen;
    size_t pathlen = (size_t)(p - path);
    *p++ = '\0';

    /* Everything nghttp2 reads is ours: the caller may reuse req at once. */
    size_t mlen = strlen(req->method);
    memcpy(r->method, req->method, mlen + 1);
    nv_set(&r->nva[n++], ":method", 7, r->method, mlen);
    nv_set(&r->nva[n++], ":scheme", 7, "https", 5);
    nv_set(&r->nva[n++], ":authority", 10, o->authority, o->authority_len);
    nv_set(&r->nva[n++], ":path", 5, path, pathlen);

    bool have_ua = false, have_cl = false;
    r->nuser = 0;
    for (unsigned i = 0; i < req->nheaders; i++) {
        const char *line = req->headers[i];
        const char *colon = strchr(line, ':');
        size_t nlen = (size_t)(colon - line);
        while (nlen > 0 && (line[nlen - 1] == ' ' || line[nlen - 1] == '\t')) {
            nlen--;
        }
        const char *v = colon + 1;
        while (*v == ' ' || *v == '\t') {
            v++;
        }
        size_t vlen = strlen(v);
        while (vlen > 0 && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t')) {
            vlen--;
        }
        if (nlen == 0 || (size_t)(end - p) < nlen + vlen + 2) {
            return -EINVAL;
        }
        char *name = p;
        for (size_t k = 0; k < nlen; k++) {
            char ch = line[k];
            if (ch == ' ' || ch == '\t') {
                return -EINVAL;
            }
            name[k] = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
        }
        name[nlen] = '\0';
        /* "Name:" with no value removes a header (curl's convention); the
         * connection-specific ones do not exist in HTTP/2. */
        bool skip = vlen == 0 || hop_by_hop(name, nlen);
        if (NAME_IS(name, nlen, "user-agent")) {
            have_ua = true;
        }
        if (skip) {
            continue;
        }
        if (NAME_IS(name, nlen, "content-length")) {
            have_cl = true;
        }
        p += nlen + 1;
        char *val = p;
        memcpy(val, v, vlen);
        val[vlen] = '\0';
        p += vlen + 1;
        nv_set(&r->nva[n++], name, nlen, val, vlen);
        r->nuser++;
    }
    if (req->authorization[0]) {
        /* a user header like the others (a handover to HTTP/1.1 copies it
         * back to the authorization field) */
        size_t alen = strlen(req->authorization);
        if ((size_t)(end - p) < alen + 1) {
            return -EINVAL;
        }
        memcpy(p, req->authorization, alen + 1);
        nv_set(&r->nva[n++], "authorization", 13, p, alen);
        p += alen + 1;
        r->nuser++;
    }
    if (!have_ua) {
        nv_set(&r->nva[n++], "user-agent", 10, h->user_agent, h->ua_len);
    }
    if (!have_cl && strcmp(req->method, "GET") != 0) {
        if (end - p < 24) {
            return -EINVAL;
        }
        size_t cl = format_size(p, req->body_len);
        nv_set(&r->nva[n++], "content-length", 14, p, cl);
        p += cl + 1;
    }
    r->nnv = n;
    /* right after the text: bounded, as p <= arena + TEXT_MAX */
    memcpy(p, req->body, req->body_len);
    r->body = p;
    r->body_len = req->body_len;
    return 0;
}

int h2_check(struct h2_check_memo *memo, const struct channel_request *req,
             const struct http_req_opts *ropts)
{
    const char *url = req->url;
    size_t pathlen;
    /* strncmp first: it stops at url's NUL, so url[memo->len] is read only
     * when url holds at least memo->len bytes (origin holds no NUL). */
    if (memo && memo->len > 0 && strncmp(url, memo->origin, memo->len) == 0 &&
        url[memo->len] == '/') {
        /* Same bytes up to the '/' that ends the authority: parse_url would
         * find the same scheme, host and port; only the path is new. */
        if (!url_path_ok(url + memo->len, &pathlen)) {
            return -EINVAL;
        }
    } else {
        struct target t;
        int rc = parse_url(url, &t);
        if (rc != 0) {
            return rc;
        }
        size_t olen = (size_t)(t.path - url);
        if (memo && t.path[0] == '/' && olen < sizeof(memo->origin)) {
            memcpy(memo->origin, url, olen);
            memo->len = olen;
        }
    }
    if (ropts && ropts->capture) {
        for (unsigned i = 0; ropts->capture[i]; i++) {
            if (i >= HTTP_CAPTURE_MAX || strlen(ropts->capture[i]) > 255) {
                return -EINVAL;
            }
        }
    }
    /* req_fill's header rules: a name, trimmed, is not empty and holds no
     * blank (http.c checked the colon and CR/LF) */
    for (unsigned i = 0; i < req->nheaders; i++) {
        const char *line = req->headers[i];
        size_t nlen = strcspn(line, ":");
        while (nlen > 0 && (line[nlen - 1] == ' ' || line[nlen - 1] == '\t')) {
            nlen--;
        }
        if (nlen == 0 || memchr(line, ' ', nlen) || memchr(line, '\t', nlen)) {
            return -EINVAL;
        }
    }
    return 0;
}

int h2_request(h2_t *h, const struct channel_request *req, const struct http_req_opts *ropts,
               http_done_cb done, void *ctx)
{
    if (h->destroying) {
        return TDG_ECLOSED;
    }
    struct target t;
    int rc = parse_url(req->url, &t);
    if (rc != 0) {
        return rc;
    }
    bool need_h2 = ropts && ropts->require_h2;
    struct origin *o = origin_get(h, &t, &rc);
    if (!o) {
        return rc;
    }
    if (!need_h2 && h->fallback && o->h1_until_ms) {
        if (now_ms(h) < o->h1_until_ms) {
            return H2_NOT_MINE;
        }
        o->h1_until_ms = 0; /* time to ask again */
    }
    unsigned ncapture = 0;
    if (ropts && ropts->capture) {
        while (ropts->capture[ncapture]) {
            if (ncapture >= HTTP_CAPTURE_MAX || strlen(ropts->capture[ncapture]) > 255) {
                return -EINVAL;
            }
            ncapture++;
        }
    }
    struct h2_req *r = req_get(h);
    if (!r) {
        return -ENOMEM;
    }
    rc = req_fill(h, r, o, &t, req);
    if (rc < 0) {
        req_release(r);
        return rc;
    }
    r->o = o;
    r->done = done;
    r->ctx = ctx;
    r->require_h2 = need_h2;
    r->capture = ncapture ? ropts->capture : NULL;
    r->ncapture = ncapture;
    for (unsigned i = 0; i < ncapture; i++) {
        r->caplen[i] = (uint8_t)strlen(ropts->capture[i]);
    }
    uint64_t timeout = ropts && ropts->timeout_ms ? ropts->timeout_ms : h->timeout_ms;
    r->start_ms = now_ms(h);
    r->deadline_ms = r->start_ms + timeout;
    dl_insert(h, r);
    queue_push(o, r, false);
    h->inflight++;
    h->st.requests++;
    /* Straight onto a stream when one is free; written at the next flush. */
    origin_dispatch(o);
    if (h->depth == 0) {
        kick(h);
    }
    return 0;
}

/* --- lifecycle ------------------------------------------------------------ */

static void ssl_reason(char *buf, size_t len)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    snprintf(buf, len, "%s", r ? r : "unknown OpenSSL error");
    ERR_clear_error();
}

static int pem_password(char *buf, int size, int rwflag, void *u)
{
    (void)rwflag;
    const char *pw = u ? u : "";
    size_t n = strlen(pw);
    if (size <= 0 || n >= (size_t)size) {
        return 0;
    }
    memcpy(buf, pw, n);
    return (int)n;
}

/* Put the client certificate into ctx: PEM when the file holds a PEM
 * certificate, else PKCS#12. 0, or TDG_ECONFIG with err set. */
static int load_client_cert(SSL_CTX *ctx, const char *cert, const char *key, const char *pw,
                            char *err, size_t errlen)
{
    char why[160];
    pw = pw ? pw : "";
    BIO *b = BIO_new_file(cert, "rb");
    if (!b) {
        snprintf(err, errlen, "%s: %s", cert, strerror(errno ? errno : ENOENT));
        ERR_clear_error();
        return TDG_ECONFIG;
    }
    X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
    int rc = TDG_ECONFIG;
    if (x) {
        /* PEM: the chain from the file, the key from key_file or the file */
        X509_free(x);
        BIO_free(b);
        ERR_clear_error();
        SSL_CTX_set_default_passwd_cb(ctx, pem_password);
        SSL_CTX_set_default_passwd_cb_userdata(ctx, (void *)pw);
        const char *kf = key && *key ? key : cert;
        if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
            ssl_reason(why, sizeof(why));
            snprintf(err, errlen, "%s: %s", cert, why);
        } else if (SSL_CTX_use_PrivateKey_file(ctx, kf, SSL_FILETYPE_PEM) != 1) {
            if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
                ERR_clear_error();
                snprintf(err, errlen, "%s: private key does not match the certificate", kf);
                SSL_CTX_set_default_passwd_cb(ctx, NULL);
                SSL_CTX_set_default_passwd_cb_userdata(ctx, NULL);
                return TDG_ECONFIG;
            }
            ssl_reason(why, sizeof(why));
            snprintf(err, errlen, "%s: no usable private key (%s)%s", kf, why,
                     kf == cert ? "; set the key file" : "");
        } else if (SSL_CTX_check_private_key(ctx) != 1) {
            ERR_clear_error();
            snprintf(err, errlen, "%s: private key does not match the certificate", kf);
        } else {
            rc = 0;
        }
        SSL_CTX_set_default_passwd_cb(ctx, NULL);
        SSL_CTX_set_default_passwd_cb_userdata(ctx, NULL);
        return rc;
    }
    ERR_clear_error();
    (void)BIO_reset(b);
    PKCS12 *p12 = d2i_PKCS12_bio(b, NULL);
    BIO_free(b);
    if (!p12) {
        ERR_clear_error();
        snprintf(err, errlen, "%s: neither a PEM certificate nor a PKCS#12 file", cert);
        return TDG_ECONFIG;
    }
    EVP_PKEY *pkey = NULL;
    STACK_OF(X509) *chain = NULL;
    if (!PKCS12_verify_mac(p12, pw, -1) && !(!*pw && PKCS12_verify_mac(p12, NULL, 0))) {
        ERR_clear_error();
        snprintf(err, errlen, "%s: wrong password for the PKCS#12 file%s", cert,
                 *pw ? "" : " (none given)");
    } else if (!PKCS12_parse(p12, pw, &pkey, &x, &chain)) {
        ssl_reason(why, sizeof(why));
        snprintf(err, errlen, "%s: cannot read the PKCS#12 file: %s", cert, why);
    } else if (!x || !pkey) {
        snprintf(err, errlen, "%s: the PKCS#12 file lacks a %s", cert, x ? "private key" : "certificate");
    } else if (SSL_CTX_use_certificate(ctx, x) != 1 || SSL_CTX_use_PrivateKey(ctx, pkey) != 1) {
        ssl_reason(why, sizeof(why));
        snprintf(err, errlen, "%s: %s", cert, why);
    } else if (SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "%s: private key does not match the certificate", cert);
    } else {
        rc = 0;
        for (int i = 0; chain && i < sk_X509_num(chain); i++) {
            if (SSL_CTX_add1_chain_cert(ctx, sk_X509_value(chain, i)) != 1) {
                ssl_reason(why, sizeof(why));
                snprintf(err, errlen, "%s: chain certificate: %s", cert, why);
                rc = TDG_ECONFIG;
                break;
            }
        }
    }
    X509_free(x);
    EVP_PKEY_free(pkey);
    sk_X509_pop_free(chain, X509_free);
    PKCS12_free(p12);
    return rc;
}

int http_client_cert_check(const char *cert, const char *key, const char *password, char *err,
                           size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int rc = load_client_cert(ctx, cert, key, password, err, errlen);
    SSL_CTX_free(ctx);
    return rc;
}

static int setup_tls(h2_t *h, const char *ca_file)
{
    h->ssl_ctx = SSL_CTX_new(TLS_client_method());
    if (!h->ssl_ctx) {
        return -ENOMEM;
    }
    SSL_CTX *x = h->ssl_ctx;
    SSL_CTX_set_min_proto_version(x, TLS1_2_VERSION);
    SSL_CTX_set_options(x, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    /* Partial writes and a moving buffer: flush writes obuf + offset and may
     * append to obuf between retries. */
    SSL_CTX_set_mode(x, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(x, 1);
    SSL_CTX_set_verify(x, SSL_VERIFY_PEER, NULL);
    if (ca_file && *ca_file) {
        if (SSL_CTX_load_verify_locations(x, ca_file, NULL) != 1) {
            char buf[160];
            ERR_error_string_n(ERR_peek_last_error(), buf, sizeof(buf));
            ERR_clear_error();
            LOG_ERROR(MOD, "cannot load CA file %s: %s", ca_file, buf);
            return TDG_EHTTP;
        }
    } else if (SSL_CTX_set_default_verify_paths(x) != 1) {
        ERR_clear_error();
        LOG_ERROR(MOD, "cannot load the system CA certificates");
        return TDG_EHTTP;
    }
    static const unsigned char alpn[] = "\x02h2\x08http/1.1";
    if (SSL_CTX_set_alpn_protos(x, alpn, sizeof(alpn) - 1) != 0) {
        return -ENOMEM;
    }
    h->bio_meth = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "tidings-socket");
    if (!h->bio_meth || !BIO_meth_set_write(h->bio_meth, bio_write) ||
        !BIO_meth_set_read(h->bio_meth, bio_read) || !BIO_meth_set_ctrl(h->bio_meth, bio_ctrl) ||
        !BIO_meth_set_create(h->bio_meth, bio_create) ||
        !BIO_meth_set_destroy(h->bio_meth, bio_destroy)) {
        return -ENOMEM;
    }
    return 0;
}

static int setup_nghttp2(h2_t *h)
{
    if (nghttp2_session_callbacks_new(&h->cbs) != 0 || nghttp2_option_new(&h->ngopt) != 0) {
        return -ENOMEM;
    }
    nghttp2_session_callbacks *cb = h->cbs;
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_before_frame_send_callback(cb, before_frame_send);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    /* A client keeps no closed streams (they only serve server-side
     * priorities) and assumes 100 streams until the server's SETTINGS. */
    nghttp2_option_set_no_closed_streams(h->ngopt, 1);
    nghttp2_option_set_peer_max_concurrent_streams(h->ngopt, STREAMS_BEFORE_SETTINGS);
    return 0;
}

int h2_create(loop_t *loop, const struct h2_opts *opts, h2_t **out)
{
    *out = NULL;
    struct http_opts o;
    memset(&o, 0, sizeof(o));
    if (opts && opts->http) {
        o = *opts->http;
    }
    h2_t *h = calloc(1, sizeof(*h));
    if (!h) {
        return -ENOMEM;
    }
    h->loop = loop;
    h->max_inflight = o.max_inflight ? o.max_inflight : DEF_MAX_INFLIGHT;
    h->max_conns =
        o.max_host_connections > 0 ? (unsigned)o.max_host_connections : DEF_HOST_CONNECTIONS;
    if (h->max_conns > MAX_HOST_CONNECTIONS) {
        h->max_conns = MAX_HOST_CONNECTIONS;
    }
    h->max_streams =
        o.max_concurrent_streams > 0 ? (unsigned)o.max_concurrent_streams : DEF_STREAMS;
    if (h->max_streams > MAX_STREAMS) {
        h->max_streams = MAX_STREAMS;
    }
    h->free_max = o.free_max ? o.free_max : DEF_FREE_MAX;
    h->timeout_ms = o.timeout_ms ? o.timeout_ms : DEF_TIMEOUT_MS;
    h->connect_timeout_ms = o.connect_timeout_ms ? o.connect_timeout_ms : DEF_CONNECT_TIMEOUT_MS;
    h->spacing_ms = o.connection_spacing_ms ? o.connection_spacing_ms : DEF_SPACING_MS;
    h->ping_ms = o.ping_interval_ms ? o.ping_interval_ms : DEF_PING_MS;
    h->idle_close_ms = o.idle_close_ms ? o.idle_close_ms : DEF_IDLE_CLOSE_MS;
    h->user_agent = strdup(o.user_agent ? o.user_agent : "tidings/0.1");
    if (opts) {
        h->fallback = opts->fallback;
        h->fallback_arg = opts->fallback_arg;
    }
    int rc = h->user_agent ? 0 : -ENOMEM;
    if (rc == 0) {
        h->ua_len = strlen(h->user_agent);
        rc = setup_nghttp2(h);
    }
    if (rc == 0) {
        rc = setup_tls(h, o.ca_file);
    }
    if (rc == 0 && o.client_cert && *o.client_cert) {
        char why[CONFIG_ERR_MAX];
        rc = load_client_cert(h->ssl_ctx, o.client_cert, o.client_key, o.client_password, why,
                              sizeof(why));
        if (rc < 0) {
            LOG_ERROR(MOD, "client certificate: %s", why);
            rc = TDG_EHTTP;
        }
    }
    if (rc < 0) {
        h2_destroy(h);
        return rc;
    }
    *out = h;
    return 0;
}

/* Free a request whatever list it is on (destroy only). */
static void destroy_conn(h2_t *h, struct conn *c)
{
    while (c->streams) {
        struct h2_req *r = c->streams;
        stream_unlink(c, r);
        if (!r->pending) {
            req_free(r); /* pending ones are freed with the completion FIFO */
        }
    }
    if (!c->dead) {
        if (c->state == C_READY && c->sess && c->ssl) {
            /* Tell the server, best effort: one non-blocking write. */
            nghttp2_session_terminate_session(c->sess, NGHTTP2_NO_ERROR);
            c->olen = c->ooff = 0;
            c->pend = NULL;
            const uint8_t *p;
            ssize_t n;
            while ((n = nghttp2_session_mem_send(c->sess, &p)) > 0 &&
                   (size_t)n <= OBUF_SIZE - c->olen) {
                memcpy(c->obuf + c->olen, p, (size_t)n);
                c->olen += (size_t)n;
            }
            if (c->olen > 0) {
                ERR_clear_error();
                SSL_write(c->ssl, c->obuf, (int)c->olen);
            }
            SSL_shutdown(c->ssl);
        }
        if (c->setup_timer) {
            loop_timer_cancel(h->loop, c->setup_timer);
        }
        if (c->idle_timer) {
            loop_timer_cancel(h->loop, c->idle_timer);
        }
        if (c->ssl) {
            SSL_free(c->ssl);
        }
        ERR_clear_error();
        if (c->fd >= 0) {
            loop_fd_del(h->loop, c->fd);
            close(c->fd);
        }
    }
    conn_free(c);
}

void h2_destroy(h2_t *h)
{
    if (!h) {
        return;
    }
    h->destroying = true;
    while (h->origins) {
        struct origin *o = h->origins;
        h->origins = o->next;
        while (o->conns) {
            struct conn *c = o->conns;
            o->conns = c->next;
            destroy_conn(h, c);
        }
        while (o->qhead) {
            struct h2_req *r = o->qhead;
            queue_unlink(o, r);
            req_free(r);
        }
        origin_free(o);
    }
    while (h->graveyard) {
        struct conn *c = h->graveyard;
        h->graveyard = c->next;
        destroy_conn(h, c);
    }
    while (h->done_head) {
        struct h2_req *r = h->done_head;
        h->done_head = r->cnext;
        req_free(r);
    }
    while (h->free_list) {
        struct h2_req *r = h->free_list;
        h->free_list = r->next;
        req_free(r);
    }
    if (h->kick_timer) {
        loop_timer_cancel(h->loop, h->kick_timer);
    }
    if (h->dl_timer) {
        loop_timer_cancel(h->loop, h->dl_timer);
    }
    if (h->cbs) {
        nghttp2_session_callbacks_del(h->cbs);
    }
    if (h->ngopt) {
        nghttp2_option_del(h->ngopt);
    }
    if (h->ssl_ctx) {
        SSL_CTX_free(h->ssl_ctx);
    }
    if (h->bio_meth) {
        BIO_meth_free(h->bio_meth);
    }
    free(h->user_agent);
    free(h);
}

unsigned h2_inflight(const h2_t *h)
{
    return h->inflight;
}

void h2_get_stats(const h2_t *h, struct http_stats *out)
{
    *out = h->st;
    out->connections = 0;
    out->queued = 0;
    for (const struct origin *o = h->origins; o; o = o->next) {
        out->connections += o->nconns;
        out->queued += o->nqueued;
    }
}
