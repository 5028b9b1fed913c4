/*
 * http.c - the hub's HTTP client: checks a request once, then hands it to
 * the HTTP/2 client (h2.c: https://, nghttp2 + OpenSSL) or, for what that
 * one does not take, to the HTTP/1.1 client (http1.c: libcurl).
 *
 * The HTTP/1.1 client is created on first use only: a client that talks to
 * APNs or FCM never sets up curl. The in-flight bound covers both: a
 * request moved from h2 to HTTP/1.1 (an origin that negotiated http/1.1)
 * keeps its place, so the HTTP/1.1 client gets the same bound and never
 * refuses one.
 *
 * Threads. By default h2 and http1 run on a worker thread with a private
 * loop (the provider I/O: TLS, nghttp2, the sockets: 15-20 % of the hub's
 * CPU at full rate), and the caller's loop only checks, copies and hands
 * over. With http_opts.same_thread they run on the caller's loop instead and
 * http_request calls h2_request directly.
 *
 *   caller thread (the loop given to http_create)     worker thread (wloop)
 *   http_request: check, copy into an hmsg, append
 *     to `batch`; arm a 0 ms flush timer, or flush
 *     now when FLUSH_BATCH wait
 *   flush: batch -> toq (under mu), eventfd ---------> on_req_wake: toq -> h2_request / http1
 *                                                      w_done: answer copied into the hmsg,
 *                                                        appended to `wdone`
 *   on_done_wake: doneq -> done(ctx, resp) <--------- before sleep: stats snapshot,
 *                                                        wdone -> doneq (under mu), eventfd
 *
 * Each side takes the lock once per batch and writes the other's eventfd
 * only when the queue it appends to was empty (a non-empty one is either
 * signalled already or about to be taken whole). Requests made in one
 * iteration (also from before-sleep hooks: the hub starts its sends after
 * its commit) leave in batches of FLUSH_BATCH, the rest from the 0 ms
 * timer, as h2's own "kick" batched writes before. Both queues are bounded
 * by max_inflight: a request is counted from http_request until its done.
 *
 * Ownership: an hmsg is allocated and freed on the caller's thread and sits
 * on the caller-only `all` list from http_request until its done has run.
 * Between hand-over and completion the worker owns its request and answer
 * fields; `next` belongs to whichever queue holds it. So http_destroy, once
 * the worker is joined (it destroys h2 and http1 on its own thread, without
 * callbacks), frees whatever is on `all`, wherever it was. The in-flight
 * count (and with it -EBUSY) and `requests` are kept on the caller's side;
 * the other counters come from the snapshot the worker publishes before
 * each sleep.
 */
#include "http.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "error.h"
#include "h2.h"
#include "http1.h"
#include "log.h"

#define MOD "http"

#define DEF_MAX_INFLIGHT 1024u
#define HDR_LINE_MAX 256 /* == sizeof(channel_request.headers[0]) */
#define METHOD_MAX sizeof(((struct channel_request *)0)->method)
#define RESP_INLINE 160u /* most answers (APNs: no body, an apns-id) fit */
/* Hand a batch over at once when it is this long, rather than at the end of
 * the loop iteration (the 0 ms timer runs only after the next wake-up's fd
 * callbacks: ~8 ms per request at full rate, measured) */
#define FLUSH_BATCH 32u

/* One request and, later, its answer: crosses between the threads. */
struct hmsg {
    struct hmsg *next;          /* batch, toq, wdone or doneq */
    struct hmsg *aprev, *anext; /* the caller's `all` list */
    http_t *h;
    http_done_cb done;
    void *ctx;
    uint64_t start_ms; /* the caller's loop clock at http_request */

    /* the request (capture is the caller's array: valid until done, by
     * http.h's contract) */
    const char *const *capture;
    uint64_t timeout_ms;
    bool require_h2;
    char method[METHOD_MAX];
    unsigned nheaders;
    size_t body_len;

    /* the answer, filled on the worker */
    int error, status, version;
    unsigned ncaps;
    struct http_header caps[HTTP_CAPTURE_MAX];
    char *rbuf;       /* body NUL, error text NUL, captured values: rinline or heap */
    size_t rbody_len; /* body bytes at rbuf */
    const char *rtext;
    char rinline[RESP_INLINE];

    /* url NUL, each header NUL, authorization NUL, body (body_len bytes) */
    char data[];
};

struct http {
    loop_t *loop;          /* the caller's */
    struct http_opts opts; /* strings point at the copies below */
    char *ca_file;
    char *user_agent;
    unsigned max_inflight;
    bool threaded;
    struct h2_check_memo check_memo; /* the caller's thread: enqueue's h2_check */

    /* The clients, on wloop (the worker's loop, or the caller's when not
     * threaded): touched only by the thread that runs wloop. */
    loop_t *wloop;
    h2_t *h2;
    http1_t *h1; /* created on first use */
    uint64_t h1_requests;
    bool h1_failed; /* could not be created: logged once */
    uint64_t requests; /* not threaded: counted here */

    /* Threaded, caller's thread only. */
    unsigned inflight;
    struct hmsg *all;
    struct hmsg *bhead, *btail; /* accepted, not handed over yet */
    unsigned nbatch;
    uint64_t flush_timer;
    int done_efd; /* worker -> caller: doneq is not empty */

    /* Threaded, shared: under mu. */
    pthread_mutex_t mu;
    bool mu_ok;
    struct hmsg *qhead, *qtail; /* toq: to the worker */
    unsigned handed;            /* put on toq and not yet counted in snap */
    struct hmsg *dhead, *dtail; /* doneq: answered, to the caller */
    struct http_stats snap;     /* the worker's counters at its last sleep */
    bool stop;

    /* Threaded, worker only. */
    int req_efd; /* caller -> worker: toq is not empty, or stop */
    pthread_t thread;
    bool thread_ok;
    struct hmsg *whead, *wtail; /* answered since the last hand-back */
    unsigned taken;             /* taken off toq since the last snapshot */
    struct channel_request scratch;
};

/* --- the clients (on wloop's thread) --------------------------------------- */

/* Create the HTTP/1.1 client if needed. 0 or a negative error. */
static int h1_ensure(http_t *h)
{
    if (h->h1) {
        return 0;
    }
    int rc = http1_create(h->wloop, &h->opts, &h->h1);
    if (rc < 0 && !h->h1_failed) {
        LOG_ERROR(MOD, "cannot create the HTTP/1.1 client: %s", tdg_strerror(rc));
        h->h1_failed = true;
    }
    return rc;
}

/* h2's hand-over of a request to an origin that negotiated HTTP/1.1. */
static int to_http1(void *arg, const struct channel_request *req, const struct http_req_opts *ro,
                    http_done_cb done, void *ctx)
{
    http_t *h = arg;
    int rc = h1_ensure(h);
    if (rc == 0) {
        rc = http1_request(h->h1, req, ro, done, ctx);
    }
    if (rc == 0) {
        h->h1_requests++;
    }
    return rc;
}

/* h2 first, HTTP/1.1 for what h2 does not take. 0 or a negative error. */
static int start(http_t *h, const struct channel_request *req, const struct http_req_opts *ro,
                 http_done_cb done, void *ctx)
{
    int rc = h2_request(h->h2, req, ro, done, ctx);
    if (rc == H2_NOT_MINE) {
        rc = to_http1(h, req, ro, done, ctx);
    }
    return rc;
}

/* The clients' counters (requests: left to the caller). */
static void clients_stats(const http_t *h, struct http_stats *out)
{
    h2_get_stats(h->h2, out);
    out->h1_requests = h->h1_requests;
}

/* --- hand-over helpers ------------------------------------------------------- */

static void efd_signal(int fd)
{
    uint64_t one = 1;
    /* Can only fail with EAGAIN (counter full): then it is signalled. */
    ssize_t w = write(fd, &one, sizeof(one));
    (void)w;
}

static void efd_drain(int fd)
{
    uint64_t v;
    ssize_t r = read(fd, &v, sizeof(v));
    (void)r;
}

static void list_push(struct hmsg **head, struct hmsg **tail, struct hmsg *m)
{
    m->next = NULL;
    if (*tail) {
        (*tail)->next = m;
    } else {
        *head = m;
    }
    *tail = m;
}

/* --- the worker ------------------------------------------------------------------ */

/* h2/http1's done on the worker: copy the answer into the hmsg (resp is
 * valid only now) and queue it for the caller. */
static void w_done(void *ctx, const struct http_response *resp)
{
    struct hmsg *m = ctx;
    http_t *h = m->h;
    m->error = resp->error;
    m->status = resp->status;
    m->version = resp->version;
    const char *text = resp->error_text ? resp->error_text : "";
    size_t tlen = strlen(text);
    unsigned nh = resp->nheaders <= HTTP_CAPTURE_MAX ? resp->nheaders : HTTP_CAPTURE_MAX;
    size_t vlen[HTTP_CAPTURE_MAX];
    size_t need = resp->body_len + 1 + tlen + 1;
    for (unsigned i = 0; i < nh; i++) {
        vlen[i] = strlen(resp->headers[i].value);
        need += vlen[i] + 1;
    }
    char *b = m->rinline;
    if (need > sizeof(m->rinline)) {
        b = malloc(need); /* freed with the hmsg, on the caller's thread */
    }
    if (!b) {
        /* The answer is lost; the caller still hears of its request. */
        m->error = -ENOMEM;
        m->rbuf = m->rinline;
        m->rinline[0] = '\0';
        m->rbody_len = 0;
        m->rtext = "out of memory for the answer";
        m->ncaps = 0;
    } else {
        m->rbuf = b;
        if (resp->body_len > 0) {
            memcpy(b, resp->body, resp->body_len);
        }
        b[resp->body_len] = '\0';
        m->rbody_len = resp->body_len;
        char *p = b + resp->body_len + 1;
        memcpy(p, text, tlen + 1);
        m->rtext = p;
        p += tlen + 1;
        for (unsigned i = 0; i < nh; i++) {
            memcpy(p, resp->headers[i].value, vlen[i] + 1);
            m->caps[i].name = resp->headers[i].name; /* the caller's capture string */
            m->caps[i].value = p;
            p += vlen[i] + 1;
        }
        m->ncaps = nh;
    }
    list_push(&h->whead, &h->wtail, m);
}

/* Rebuild m's request in the worker's scratch and start it; a request the
 * clients refuse is answered with that error. */
static void w_submit(http_t *h, struct hmsg *m)
{
    struct channel_request *q = &h->scratch;
    memcpy(q->method, m->method, sizeof(q->method));
    const char *p = m->data;
    size_t n = strlen(p) + 1;
    memcpy(q->url, p, n);
    p += n;
    q->nheaders = m->nheaders;
    for (unsigned i = 0; i < m->nheaders; i++) {
        n = strlen(p) + 1;
        memcpy(q->headers[i], p, n);
        p += n;
    }
    n = strlen(p) + 1;
    memcpy(q->authorization, p, n);
    p += n;
    if (m->body_len > 0) {
        memcpy(q->body, p, m->body_len);
    }
    q->body_len = m->body_len;
    struct http_req_opts ro = {
        .require_h2 = m->require_h2, .timeout_ms = m->timeout_ms, .capture = m->capture};
    int rc = start(h, q, &ro, w_done, m);
    if (rc < 0) {
        char text[HTTP_ERROR_TEXT_MAX];
        snprintf(text, sizeof(text), "cannot start the request: %s", tdg_strerror(rc));
        struct http_response r = {.error = rc, .error_text = text, .body = ""};
        w_done(m, &r);
    }
}

/* toq is not empty, or the client is being destroyed. */
static void on_req_wake(loop_t *loop, int fd, unsigned events, void *arg)
{
    (void)events;
    http_t *h = arg;
    efd_drain(fd);
    pthread_mutex_lock(&h->mu);
    struct hmsg *m = h->qhead;
    h->qhead = h->qtail = NULL;
    bool stop = h->stop;
    pthread_mutex_unlock(&h->mu);
    if (stop) {
        loop_stop(loop); /* what was taken is on `all`: freed by http_destroy */
        return;
    }
    while (m) {
        struct hmsg *next = m->next;
        h->taken++;
        w_submit(h, m);
        m = next;
    }
}

/* Before the worker sleeps: publish the counters and hand the answers of
 * this iteration back. */
static void w_before_sleep(loop_t *loop, void *arg)
{
    (void)loop;
    http_t *h = arg;
    struct http_stats st;
    clients_stats(h, &st);
    bool wake = false;
    pthread_mutex_lock(&h->mu);
    h->snap = st;
    h->handed -= h->taken;
    h->taken = 0;
    if (h->whead) {
        wake = h->dhead == NULL;
        if (h->dtail) {
            h->dtail->next = h->whead;
        } else {
            h->dhead = h->whead;
        }
        h->dtail = h->wtail;
    }
    pthread_mutex_unlock(&h->mu);
    h->whead = h->wtail = NULL;
    if (wake) {
        efd_signal(h->done_efd);
    }
}

static void *worker(void *arg)
{
    http_t *h = arg;
    prctl(PR_SET_NAME, "tidings-http", 0, 0, 0);
    int rc = loop_run(h->wloop);
    if (rc < 0) {
        /* Nothing more is answered; the caller's requests wait for their
         * channels' own timeouts. */
        LOG_ERROR(MOD, "HTTP client thread: event loop failed: %s", tdg_strerror(rc));
    }
    /* The clients die on the thread that ran them: no callbacks. */
    h2_destroy(h->h2);
    h->h2 = NULL;
    http1_destroy(h->h1);
    h->h1 = NULL;
    return NULL;
}

/* --- the caller's side ------------------------------------------------------------ */

static void msg_free(struct hmsg *m)
{
    if (m->rbuf && m->rbuf != m->rinline) {
        free(m->rbuf);
    }
    free(m);
}

static void all_unlink(http_t *h, struct hmsg *m)
{
    if (m->aprev) {
        m->aprev->anext = m->anext;
    } else {
        h->all = m->anext;
    }
    if (m->anext) {
        m->anext->aprev = m->aprev;
    }
}

/* Hand the batch to the worker. */
static void flush(http_t *h)
{
    if (!h->bhead) {
        return;
    }
    pthread_mutex_lock(&h->mu);
    bool wake = h->qhead == NULL;
    if (h->qtail) {
        h->qtail->next = h->bhead;
    } else {
        h->qhead = h->bhead;
    }
    h->qtail = h->btail;
    h->handed += h->nbatch;
    pthread_mutex_unlock(&h->mu);
    h->bhead = h->btail = NULL;
    h->nbatch = 0;
    if (wake) {
        efd_signal(h->req_efd);
    }
}

static void on_flush(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    http_t *h = arg;
    h->flush_timer = 0;
    flush(h);
}

/* doneq is not empty: run every answer's done. */
static void on_done_wake(loop_t *loop, int fd, unsigned events, void *arg)
{
    (void)events;
    http_t *h = arg;
    efd_drain(fd);
    pthread_mutex_lock(&h->mu);
    struct hmsg *m = h->dhead;
    h->dhead = h->dtail = NULL;
    pthread_mutex_unlock(&h->mu);
    uint64_t now = loop_now_ms(loop);
    while (m) {
        struct hmsg *next = m->next;
        all_unlink(h, m);
        h->inflight--; /* before done: it may start the next request */
        struct http_response r = {
            .error = m->error,
            .error_text = m->rtext,
            .status = m->status,
            .version = m->version,
            .body = m->rbuf,
            .body_len = m->rbody_len,
            .headers = m->caps,
            .nheaders = m->ncaps,
            .elapsed_ms = now > m->start_ms ? now - m->start_ms : 0,
        };
        m->done(m->ctx, &r);
        msg_free(m);
        m = next;
    }
}

/* Copy the used bytes of req into a new hmsg; NULL for -ENOMEM. */
static struct hmsg *msg_new(http_t *h, const struct channel_request *req,
                            const struct http_req_opts *ropts, http_done_cb done, void *ctx)
{
    size_t ulen = strlen(req->url) + 1;
    size_t hlen[CHANNEL_MAX_HEADERS];
    size_t size = ulen;
    for (unsigned i = 0; i < req->nheaders; i++) {
        hlen[i] = strlen(req->headers[i]) + 1;
        size += hlen[i];
    }
    size_t alen = strlen(req->authorization) + 1; /* checked: NUL-terminated */
    size += alen + req->body_len;
    struct hmsg *m = malloc(sizeof(*m) + size);
    if (!m) {
        return NULL;
    }
    memset(m, 0, offsetof(struct hmsg, rinline));
    m->h = h;
    m->done = done;
    m->ctx = ctx;
    m->start_ms = loop_now_ms(h->loop);
    if (ropts) {
        m->capture = ropts->capture;
        m->timeout_ms = ropts->timeout_ms;
        m->require_h2 = ropts->require_h2;
    }
    memcpy(m->method, req->method, sizeof(m->method));
    m->nheaders = req->nheaders;
    m->body_len = req->body_len;
    char *p = m->data;
    memcpy(p, req->url, ulen);
    p += ulen;
    for (unsigned i = 0; i < req->nheaders; i++) {
        memcpy(p, req->headers[i], hlen[i]);
        p += hlen[i];
    }
    memcpy(p, req->authorization, alen);
    p += alen;
    if (req->body_len > 0) {
        memcpy(p, req->body, req->body_len);
    }
    return m;
}

/* Threaded http_request after the checks. */
static int enqueue(http_t *h, const struct channel_request *req, const struct http_req_opts *ropts,
                   http_done_cb done, void *ctx)
{
    /* What h2_request would refuse synchronously is refused here too, so
     * callers keep telling a bad request (drop) from a busy client (retry). */
    int rc = h2_check(&h->check_memo, req, ropts);
    if (rc < 0) {
        return rc;
    }
    struct hmsg *m = msg_new(h, req, ropts, done, ctx);
    if (!m) {
        return -ENOMEM;
    }
    m->aprev = NULL;
    m->anext = h->all;
    if (h->all) {
        h->all->aprev = m;
    }
    h->all = m;
    list_push(&h->bhead, &h->btail, m);
    h->nbatch++;
    h->inflight++;
    h->requests++;
    if (h->nbatch >= FLUSH_BATCH) {
        flush(h); /* a burst (the hub's sends after its commit) leaves as it is made */
    } else if (!h->flush_timer) {
        h->flush_timer = loop_timer_add(h->loop, 0, on_flush, h);
        if (!h->flush_timer) {
            flush(h); /* no timer: hand over now */
        }
    }
    return 0;
}

/* Start the worker: its loop, its eventfd, the caller's eventfd. */
static int threads_start(http_t *h)
{
    h->done_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    h->req_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (h->done_efd < 0 || h->req_efd < 0) {
        return -errno;
    }
    if (pthread_mutex_init(&h->mu, NULL) != 0) {
        return -ENOMEM;
    }
    h->mu_ok = true;
    int rc = loop_fd_add(h->wloop, h->req_efd, LOOP_READ, on_req_wake, h);
    if (rc == 0) {
        rc = loop_before_sleep(h->wloop, w_before_sleep, h);
    }
    if (rc == 0) {
        rc = loop_fd_add(h->loop, h->done_efd, LOOP_READ, on_done_wake, h);
    }
    if (rc < 0) {
        return rc;
    }
    /* Signals stay with the caller's thread (its loop's signalfd). */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int e = pthread_create(&h->thread, NULL, worker, h);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e != 0) {
        return -e;
    }
    h->thread_ok = true;
    return 0;
}

int http_create(loop_t *loop, const struct http_opts *opts, http_t **out)
{
    *out = NULL;
    http_t *h = calloc(1, sizeof(*h));
    if (!h) {
        return -ENOMEM;
    }
    h->loop = loop;
    h->done_efd = h->req_efd = -1;
    if (opts) {
        h->opts = *opts;
    }
    h->threaded = !h->opts.same_thread;
    int rc = 0;
    if (h->opts.ca_file && *h->opts.ca_file) {
        h->ca_file = strdup(h->opts.ca_file);
        rc = h->ca_file ? 0 : -ENOMEM;
    }
    h->opts.ca_file = h->ca_file;
    if (rc == 0 && h->opts.user_agent) {
        h->user_agent = strdup(h->opts.user_agent);
        rc = h->user_agent ? 0 : -ENOMEM;
    }
    h->opts.user_agent = h->user_agent;
    h->max_inflight = h->opts.max_inflight ? h->opts.max_inflight : DEF_MAX_INFLIGHT;
    h->opts.max_inflight = h->max_inflight;
    h->wloop = loop;
    if (rc == 0 && h->threaded) {
        h->wloop = loop_create();
        rc = h->wloop ? 0 : -ENOMEM;
    }
    if (rc == 0) {
        /* Created here, run by the worker from its start on (pthread_create
         * orders the two). */
        struct h2_opts ho = {.http = &h->opts, .fallback = to_http1, .fallback_arg = h};
        rc = h2_create(h->wloop, &ho, &h->h2);
    }
    if (rc == 0 && h->threaded) {
        rc = threads_start(h);
        if (rc < 0) {
            LOG_ERROR(MOD, "cannot start the HTTP client thread: %s", tdg_strerror(rc));
        }
    }
    if (rc < 0) {
        http_destroy(h);
        return rc;
    }
    *out = h;
    return 0;
}

void http_destroy(http_t *h)
{
    if (!h) {
        return;
    }
    if (h->thread_ok) {
        pthread_mutex_lock(&h->mu);
        h->stop = true;
        pthread_mutex_unlock(&h->mu);
        efd_signal(h->req_efd);
        pthread_join(h->thread, NULL); /* h2 and http1 are gone with it */
    }
    h2_destroy(h->h2); /* not threaded, or the thread never ran */
    http1_destroy(h->h1);
    if (h->flush_timer) {
        loop_timer_cancel(h->loop, h->flush_timer);
    }
    while (h->all) {
        struct hmsg *m = h->all;
        h->all = m->anext;
        msg_free(m);
    }
    if (h->done_efd >= 0) {
        loop_fd_del(h->loop, h->done_efd);
        close(h->done_efd);
    }
    if (h->req_efd >= 0) {
        close(h->req_efd);
    }
    if (h->mu_ok) {
        pthread_mutex_destroy(&h->mu);
    }
    if (h->wloop && h->wloop != h->loop) {
        loop_destroy(h->wloop);
    }
    free(h->ca_file);
    free(h->user_agent);
    free(h);
}

unsigned http_inflight(const http_t *h)
{
    if (h->threaded) {
        return h->inflight;
    }
    return h2_inflight(h->h2) + (h->h1 ? http1_inflight(h->h1) : 0);
}

void http_get_stats(const http_t *h, struct http_stats *out)
{
    if (!h->threaded) {
        clients_stats(h, out);
        out->requests = h->requests;
        return;
    }
    /* The mutex is not const; the counters are only read. */
    http_t *w = (http_t *)(uintptr_t)h;
    pthread_mutex_lock(&w->mu);
    *out = w->snap;
    /* handed over but not yet in the snapshot: waiting like the queued */
    out->queued += w->handed;
    pthread_mutex_unlock(&w->mu);
    out->queued += h->nbatch;
    out->requests = h->requests;
}

const char *http_response_header(const struct http_response *r, const char *name)
{
    for (unsigned i = 0; i < r->nheaders; i++) {
        if (strcasecmp(r->headers[i].name, name) == 0) {
            return r->headers[i].value;
        }
    }
    return NULL;
}

/* "name: value" in one NUL-terminated line of at most HDR_LINE_MAX bytes. */
static bool header_ok(const char *hdr)
{
    const char *nul = memchr(hdr, '\0', HDR_LINE_MAX);
    if (!nul) {
        return false;
    }
    size_t len = (size_t)(nul - hdr);
    const char *colon = memchr(hdr, ':', len);
    /* memchr twice: vectorised, unlike a byte loop (this runs per header
     * per request) */
    return colon && colon != hdr && !memchr(hdr, '\r', len) && !memchr(hdr, '\n', len);
}

int http_request(http_t *h, const struct channel_request *req, const struct http_req_opts *ropts,
                 http_done_cb done, void *ctx)
{
    if (http_inflight(h) >= h->max_inflight) {
        return -EBUSY;
    }
    static const char *const methods[] = {"POST", "GET", "PUT", "DELETE", "PATCH"};
    bool method_ok = false;
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]) && !method_ok; i++) {
        method_ok = strcmp(req->method, methods[i]) == 0;
    }
    if (!method_ok || req->nheaders > CHANNEL_MAX_HEADERS || req->body_len > sizeof(req->body) ||
        req->url[0] == '\0' || memchr(req->url, '\0', sizeof(req->url)) == NULL) {
        return -EINVAL;
    }
    for (unsigned i = 0; i < req->nheaders; i++) {
        if (!header_ok(req->headers[i])) {
            return -EINVAL;
        }
    }
    if (memchr(req->authorization, '\0', sizeof(req->authorization)) == NULL ||
        (req->authorization[0] && strpbrk(req->authorization, "\r\n") != NULL)) {
        return -EINVAL;
    }
    if (ropts && ropts->capture) {
        unsigned n = 0;
        while (ropts->capture[n]) {
            if (++n > HTTP_CAPTURE_MAX) {
                return -EINVAL;
            }
        }
    }
    if (h->threaded) {
        return enqueue(h, req, ropts, done, ctx);
    }
    int rc = start(h, req, ropts, done, ctx);
    if (rc == 0) {
        h->requests++;
    }
    return rc;
}
