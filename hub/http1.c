/*
 * http1.c - HTTP/1.1 on the loop: curl multi socket API.
 *
 * The fallback behind hub/http.h for what the HTTP/2 client (h2.c) does not
 * take: http:// URLs, URLs with user info, and https origins whose server
 * does not negotiate h2 (an HTTP/1.1-only SMS API). Same contracts as
 * http.h (done exactly once, later, never inside http1_request; destroy
 * calls nothing). HTTP/2 is never asked for here: h2.c owns that protocol.
 *
 * How curl meets the loop:
 *   - CURLMOPT_SOCKETFUNCTION tells us which fds to watch for what; we keep
 *     one loop fd watch per socket (a struct sockwatch assigned to the
 *     socket with curl_multi_assign) and hand readiness back through
 *     curl_multi_socket_action(fd).
 *   - CURLMOPT_TIMERFUNCTION asks for one timer; we keep at most one loop
 *     timer and call curl_multi_socket_action(CURL_SOCKET_TIMEOUT) when it
 *     fires. A timeout of 0 becomes a 0 ms loop timer: curl forbids calling
 *     socket_action from inside its own callbacks.
 *   - After every socket_action, finished transfers are collected with
 *     curl_multi_info_read and their done callbacks run (outside curl).
 *
 * Each request lives in a slot that owns a reusable easy handle and every
 * byte curl reads from while sending (header list nodes, header text, body),
 * so the caller's channel_request can be reused at once and no per-request
 * curl_slist allocations happen. Finished slots go back to a free list of at
 * most free_max; the rest are freed.
 *
 * curl return codes are mapped to negative errors here and nowhere else.
 */
#include "http1.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "error.h"
#include "log.h"

#define MOD "http1"

#define DEF_MAX_INFLIGHT 1024u
#define DEF_HOST_CONNECTIONS 2L
#define DEF_TIMEOUT_MS 30000u
#define DEF_CONNECT_TIMEOUT_MS 10000u
#define DEF_FREE_MAX 64u
#define RESP_INLINE 1024 /* most provider answers (APNs errors) fit inline */
#define HDR_LINE_MAX 256 /* == sizeof(channel_request.headers[0]) */

struct sockwatch {
    curl_socket_t fd;
    unsigned events;
    struct sockwatch *prev, *next;
};

struct slot {
    struct slot *prev, *next; /* live list, or free list (next only) */
    http1_t *h;
    CURL *easy;
    http_done_cb done;
    void *ctx;
    uint64_t start_ms;

    /* request options */
    bool require_h2;
    const char *const *capture;
    unsigned ncapture;

    /* what curl reads while sending */
    struct curl_slist hdr_nodes[CHANNEL_MAX_HEADERS + 2];
    char auth_text[CHANNEL_AUTH_MAX + 16]; /* "authorization: " + value */
    char hdr_text[CHANNEL_MAX_HEADERS][HDR_LINE_MAX];
    char body[sizeof(((struct channel_request *)0)->body)];

    /* the answer */
    int status;
    int version;
    bool bad_version;
    bool too_big;
    char *rbuf; /* rinline or heap */
    size_t rlen, rcap;
    char rinline[RESP_INLINE];
    struct http_header caps[HTTP_CAPTURE_MAX];
    char capval[HTTP_CAPTURE_MAX][HTTP_CAPTURE_VALUE_MAX + 1];
    unsigned ncaps;
    char errbuf[CURL_ERROR_SIZE];
};

struct http1 {
    loop_t *loop;
    CURLM *multi;
    uint64_t timer_id;
    bool destroying;

    struct slot *live; /* in flight, doubly linked */
    struct slot *free_list;
    unsigned inflight, nfree;
    struct sockwatch *socks;

    unsigned max_inflight, free_max;
    uint64_t timeout_ms, connect_timeout_ms;
    char *ca_file;
    char *user_agent;
};

static const char expect_off[] = "Expect:"; /* never wait for 100-continue */

/* curl_global_init is not reentrant in every curl; clients are created on
 * the HTTP client threads (one per hub/http.c client), so the count and the
 * calls are serialised here. */
static pthread_mutex_t global_mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned global_refs;

/* 0, or TDG_EHTTP when curl cannot be initialised. */
static int global_ref(void)
{
    int rc = 0;
    pthread_mutex_lock(&global_mu);
    if (global_refs == 0 && curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        rc = TDG_EHTTP;
    } else {
        global_refs++;
    }
    pthread_mutex_unlock(&global_mu);
    return rc;
}

static void global_unref(void)
{
    pthread_mutex_lock(&global_mu);
    if (global_refs > 0 && --global_refs == 0) {
        curl_global_cleanup();
    }
    pthread_mutex_unlock(&global_mu);
}

/* --- errors ---------------------------------------------------------- */

static int map_curl_code(CURLcode c)
{
    switch (c) {
    case CURLE_OK:
        return 0;
    case CURLE_OPERATION_TIMEDOUT:
        return -ETIMEDOUT;
    case CURLE_COULDNT_CONNECT:
        return -ECONNREFUSED;
    case CURLE_COULDNT_RESOLVE_HOST:
        return -EHOSTUNREACH;
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2_STREAM:
        return -ECONNRESET;
    case CURLE_OUT_OF_MEMORY:
        return -ENOMEM;
    /* CURLE_HTTP2 (framing errors, GOAWAY before our stream) lands here:
     * -EPROTO is kept for "not HTTP/2" so callers can tell misconfiguration
     * from a connection that went away. */
    default:
        return TDG_EHTTP;
    }
}

/* --- loop glue ------------------------------------------------------- */

static void drain(http1_t *h);

static void on_fd(loop_t *loop, int fd, unsigned events, void *arg)
{
    (void)loop;
    http1_t *h = arg;
    int flags = 0;
    if (events & LOOP_READ) {
        flags |= CURL_CSELECT_IN;
    }
    if (events & LOOP_WRITE) {
        flags |= CURL_CSELECT_OUT;
    }
    if (events & LOOP_ERROR) {
        flags |= CURL_CSELECT_ERR;
    }
    int running = 0;
    curl_multi_socket_action(h->multi, fd, flags, &running);
    drain(h);
}

static void on_timer(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    http1_t *h = arg;
    h->timer_id = 0;
    int running = 0;
    curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    drain(h);
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    http1_t *h = userp;
    if (h->timer_id) {
        loop_timer_cancel(h->loop, h->timer_id);
        h->timer_id = 0;
    }
    if (timeout_ms < 0 || h->destroying) {
        return 0;
    }
    h->timer_id = loop_timer_add(h->loop, (uint64_t)timeout_ms, on_timer, h);
    /* -1 makes curl fail the transfers instead of hanging without a timer. */
    return h->timer_id ? 0 : -1;
}

static void sock_unlink(http1_t *h, struct sockwatch *w)
{
    if (w->prev) {
        w->prev->next = w->next;
    } else {
        h->socks = w->next;
    }
    if (w->next) {
        w->next->prev = w->prev;
    }
}

static int on_curl_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)easy;
    http1_t *h = userp;
    struct sockwatch *w = socketp;

    if (what == CURL_POLL_REMOVE) {
        if (w) {
            loop_fd_del(h->loop, (int)s);
            sock_unlink(h, w);
            free(w);
            curl_multi_assign(h->multi, s, NULL);
        }
        return 0;
    }
    unsigned ev = 0;
    if (what & CURL_POLL_IN) {
        ev |= LOOP_READ;
    }
    if (what & CURL_POLL_OUT) {
        ev |= LOOP_WRITE;
    }
    if (!w) {
        w = calloc(1, sizeof(*w));
        if (!w) {
            return -1;
        }
        int rc = loop_fd_add(h->loop, (int)s, ev, on_fd, h);
        if (rc == -EEXIST) {
            /* A closed fd whose number curl reused before telling us about
             * the close: the old watch is stale, replace it. */
            loop_fd_del(h->loop, (int)s);
            rc = loop_fd_add(h->loop, (int)s, ev, on_fd, h);
        }
        if (rc < 0) {
            LOG_ERROR(MOD, "cannot watch fd=%d: %s", (int)s, tdg_strerror(rc));
            free(w);
            return -1;
        }
        w->fd = s;
        w->events = ev;
        w->next = h->socks;
        if (h->socks) {
            h->socks->prev = w;
        }
        h->socks = w;
        curl_multi_assign(h->multi, s, w);
        return 0;
    }
    if (w->events != ev) {
        int rc = loop_fd_mod(h->loop, (int)s, ev);
        if (rc < 0) {
            LOG_ERROR(MOD, "cannot change watch on fd=%d: %s", (int)s, tdg_strerror(rc));
            return -1;
        }
        w->events = ev;
    }
    return 0;
}

/* --- curl data callbacks -------------------------------------------- */

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct slot *sl = userdata;
    size_t n = size * nmemb;
    if (n > HTTP_BODY_MAX || sl->rlen + n > HTTP_BODY_MAX) {
        sl->too_big = true;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (sl->rlen + n + 1 > sl->rcap) {
        size_t cap = sl->rcap * 2;
        while (cap < sl->rlen + n + 1) {
            cap *= 2;
        }
        if (cap > HTTP_BODY_MAX + 1) {
            cap = HTTP_BODY_MAX + 1;
        }
        char *nb = sl->rbuf == sl->rinline ? malloc(cap) : realloc(sl->rbuf, cap);
        if (!nb) {
            return 0;
        }
        if (sl->rbuf == sl->rinline) {
            memcpy(nb, sl->rinline, sl->rlen);
        }
        sl->rbuf = nb;
        sl->rcap = cap;
    }
    memcpy(sl->rbuf + sl->rlen, ptr, n);
    sl->rlen += n;
    return n;
}

/* Parse "HTTP/1.1 200 OK" / "HTTP/2 200". Returns false if it is not one. */
static bool parse_status_line(const char *p, size_t n, int *version, int *status)
{
    if (n < 8 || memcmp(p, "HTTP/", 5) != 0) {
        return false;
    }
    size_t i = 5;
    int major = 0, minor = 0;
    if (i < n && p[i] >= '0' && p[i] <= '9') {
        major = p[i++] - '0';
    } else {
        return false;
    }
    if (i + 1 < n && p[i] == '.' && p[i + 1] >= '0' && p[i + 1] <= '9') {
        minor = p[i + 1] - '0';
        i += 2;
    }
    while (i < n && p[i] == ' ') {
        i++;
    }
    int st = 0;
    unsigned digits = 0;
    while (i < n && p[i] >= '0' && p[i] <= '9' && digits < 3) {
        st = st * 10 + (p[i++] - '0');
        digits++;
    }
    if (digits != 3) {
        return false;
    }
    *version = major * 10 + minor;
    *status = st;
    return true;
}

static size_t on_header(char *ptr, size_t size, size_t nitems, void *userdata)
{
    struct slot *sl = userdata;
    size_t n = size * nitems;
    int version, status;
    if (parse_status_line(ptr, n, &version, &status)) {
        /* A new response (after 1xx, or a retry): forget what was captured. */
        sl->version = version;
        sl->status = status;
        sl->ncaps = 0;
        if (sl->require_h2 && version != 20) {
            sl->bad_version = true;
            return 0; /* abort: an h2-only provider must not be spoken to otherwise */
        }
        return n;
    }
    if (sl->ncapture == 0) {
        return n;
    }
    const char *colon = memchr(ptr, ':', n);
    if (!colon) {
        return n;
    }
    size_t nlen = (size_t)(colon - ptr);
    for (unsigned i = 0; i < sl->ncapture; i++) {
        const char *want = sl->capture[i];
        if (strlen(want) != nlen || strncasecmp(want, ptr, nlen) != 0) {
            continue;
        }
        if (sl->ncaps >= HTTP_CAPTURE_MAX) {
            break;
        }
        const char *v = colon + 1;
        const char *end = ptr + n;
        while (v < end && (*v == ' ' || *v == '\t')) {
            v++;
        }
        while (end > v &&
               (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t')) {
            end--;
        }
        size_t vlen = (size_t)(end - v);
        if (vlen > HTTP_CAPTURE_VALUE_MAX) {
            vlen = HTTP_CAPTURE_VALUE_MAX;
        }
        char *dst = sl->capval[sl->ncaps];
        memcpy(dst, v, vlen);
        dst[vlen] = '\0';
        sl->caps[sl->ncaps].name = want;
        sl->caps[sl->ncaps].value = dst;
        sl->ncaps++;
        break;
    }
    return n;
}

/* --- slots ------------------------------------------------------------ */

static void slot_free(struct slot *sl)
{
    if (sl->easy) {
        curl_easy_cleanup(sl->easy);
    }
    if (sl->rbuf && sl->rbuf != sl->rinline) {
        free(sl->rbuf);
    }
    free(sl);
}

static struct slot *slot_get(http1_t *h)
{
    struct slot *sl = h->free_list;
    if (sl) {
        h->free_list = sl->next;
        h->nfree--;
        /* Options persist on an easy handle; start each request clean so
         * nothing (method, body, timeout) leaks from the previous one. The
         * connection cache lives in the multi handle and is kept. */
        curl_easy_reset(sl->easy);
    } else {
        sl = malloc(sizeof(*sl));
        if (!sl) {
            return NULL;
        }
        sl->easy = curl_easy_init();
        if (!sl->easy) {
            free(sl);
            return NULL;
        }
        sl->rbuf = sl->rinline;
        sl->rcap = sizeof(sl->rinline);
        sl->h = h;
    }
    sl->prev = sl->next = NULL;
    return sl;
}

static void slot_put(http1_t *h, struct slot *sl)
{
    /* Give back a body that grew beyond the inline buffer: large answers
     * are rare and should not pin 64 KiB per idle handle. */
    if (sl->rbuf != sl->rinline) {
        free(sl->rbuf);
        sl->rbuf = sl->rinline;
        sl->rcap = sizeof(sl->rinline);
    }
    if (h->nfree >= h->free_max || h->destroying) {
        slot_free(sl);
        return;
    }
    sl->next = h->free_list;
    h->free_list = sl;
    h->nfree++;
}

static void live_unlink(http1_t *h, struct slot *sl)
{
    if (sl->prev) {
        sl->prev->next = sl->next;
    } else {
        h->live = sl->next;
    }
    if (sl->next) {
        sl->next->prev = sl->prev;
    }
    sl->prev = sl->next = NULL;
}

/* --- completion -------------------------------------------------------- */

static void complete(http1_t *h, struct slot *sl, CURLcode code)
{
    curl_multi_remove_handle(h->multi, sl->easy);
    live_unlink(h, sl);
    h->inflight--;

    struct http_response r;
    memset(&r, 0, sizeof(r));
    r.status = sl->status;
    r.version = sl->version;
    long st = 0;
    if (curl_easy_getinfo(sl->easy, CURLINFO_RESPONSE_CODE, &st) == CURLE_OK && st > 0) {
        r.status = (int)st;
    }
    long ver = 0;
    if (curl_easy_getinfo(sl->easy, CURLINFO_HTTP_VERSION, &ver) == CURLE_OK) {
        switch (ver) {
        case CURL_HTTP_VERSION_1_0:
            r.version = 10;
            break;
        case CURL_HTTP_VERSION_1_1:
            r.version = 11;
            break;
        case CURL_HTTP_VERSION_2_0:
            r.version = 20;
            break;
        case CURL_HTTP_VERSION_3:
            r.version = 30;
            break;
        default:
            break;
        }
    }
    if (sl->bad_version) {
        r.error = -EPROTO;
        snprintf(sl->errbuf, sizeof(sl->errbuf), "server answered HTTP/%d.%d; HTTP/2 required",
                 sl->version / 10, sl->version % 10);
    } else if (sl->too_big) {
        r.error = TDG_ETOOBIG;
        snprintf(sl->errbuf, sizeof(sl->errbuf), "response body over %d bytes", HTTP_BODY_MAX);
    } else if (code != CURLE_OK) {
        r.error = map_curl_code(code);
        if (sl->errbuf[0] == '\0') {
            snprintf(sl->errbuf, sizeof(sl->errbuf), "%s", curl_easy_strerror(code));
        }
    } else {
        sl->errbuf[0] = '\0';
    }
    if (r.error == 0 && r.status == 0) {
        r.error = TDG_EHTTP;
        snprintf(sl->errbuf, sizeof(sl->errbuf), "no HTTP status received");
    }
    r.error_text = sl->errbuf;
    sl->rbuf[sl->rlen] = '\0';
    r.body = sl->rbuf;
    r.body_len = sl->rlen;
    r.headers = sl->caps;
    r.nheaders = sl->ncaps;
    uint64_t now = loop_now_ms(h->loop);
    r.elapsed_ms = now > sl->start_ms ? now - sl->start_ms : 0;

    sl->done(sl->ctx, &r);
    slot_put(h, sl);
}

static void drain(http1_t *h)
{
    CURLMsg *msg;
    int left = 0;
    while ((msg = curl_multi_info_read(h->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE) {
            continue;
        }
        void *priv = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
        struct slot *sl = priv;
        if (sl) {
            complete(h, sl, msg->data.result);
        }
    }
}

/* --- public ------------------------------------------------------------ */

int http1_create(loop_t *loop, const struct http_opts *opts, http1_t **out)
{
    *out = NULL;
    struct http_opts o;
    memset(&o, 0, sizeof(o));
    if (opts) {
        o = *opts;
    }
    if (global_ref() < 0) {
        return TDG_EHTTP;
    }
    http1_t *h = calloc(1, sizeof(*h));
    if (!h) {
        global_unref();
        return -ENOMEM;
    }
    h->loop = loop;
    h->max_inflight = o.max_inflight ? o.max_inflight : DEF_MAX_INFLIGHT;
    h->free_max = o.free_max ? o.free_max : DEF_FREE_MAX;
    h->timeout_ms = o.timeout_ms ? o.timeout_ms : DEF_TIMEOUT_MS;
    h->connect_timeout_ms = o.connect_timeout_ms ? o.connect_timeout_ms : DEF_CONNECT_TIMEOUT_MS;
    if (o.ca_file && *o.ca_file) {
        h->ca_file = strdup(o.ca_file);
    }
    h->user_agent = strdup(o.user_agent ? o.user_agent : "tidings/0.1");
    h->multi = curl_multi_init();
    if (!h->multi || !h->user_agent || (o.ca_file && *o.ca_file && !h->ca_file)) {
        http1_destroy(h);
        return -ENOMEM;
    }
    long conns = o.max_host_connections > 0 ? o.max_host_connections : DEF_HOST_CONNECTIONS;
    CURLMcode mc = CURLM_OK;
    mc |= curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    mc |= curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    mc |= curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    mc |= curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    mc |= curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS, conns);
    if (mc != CURLM_OK) {
        LOG_ERROR(MOD, "curl multi setup failed");
        http1_destroy(h);
        return TDG_EHTTP;
    }
    *out = h;
    return 0;
}

void http1_destroy(http1_t *h)
{
    if (!h) {
        return;
    }
    h->destroying = true;
    while (h->live) {
        struct slot *sl = h->live;
        live_unlink(h, sl);
        if (h->multi) {
            curl_multi_remove_handle(h->multi, sl->easy);
        }
        slot_free(sl);
    }
    h->inflight = 0;
    while (h->free_list) {
        struct slot *sl = h->free_list;
        h->free_list = sl->next;
        slot_free(sl);
    }
    if (h->multi) {
        curl_multi_cleanup(h->multi); /* closes connections; may call on_curl_socket */
    }
    /* Whatever curl did not report as removed is still watched. */
    while (h->socks) {
        struct sockwatch *w = h->socks;
        h->socks = w->next;
        loop_fd_del(h->loop, (int)w->fd);
        free(w);
    }
    if (h->timer_id) {
        loop_timer_cancel(h->loop, h->timer_id);
    }
    free(h->ca_file);
    free(h->user_agent);
    free(h);
    global_unref();
}

unsigned http1_inflight(const http1_t *h)
{
    return h->inflight;
}

static bool header_ok(const char *hdr)
{
    const char *colon = strchr(hdr, ':');
    if (!colon || colon == hdr) {
        return false;
    }
    for (const char *p = hdr; *p; p++) {
        if (*p == '\r' || *p == '\n') {
            return false;
        }
    }
    return true;
}

/* Set every option of one request on a clean easy handle. */
static CURLcode setup_easy(http1_t *h, struct slot *sl, const struct channel_request *req,
                           uint64_t timeout_ms)
{
    CURL *e = sl->easy;
    CURLcode c = CURLE_OK;
#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if (c == CURLE_OK) {                                                                       \
            c = curl_easy_setopt(e, opt, val);                                                     \
        }                                                                                          \
    } while (0)
    SET(CURLOPT_PRIVATE, (void *)sl);
    SET(CURLOPT_URL, req->url);
#if LIBCURL_VERSION_NUM >= 0x075500
    SET(CURLOPT_PROTOCOLS_STR, "https,http");
#endif
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)h->connect_timeout_ms);
    SET(CURLOPT_USERAGENT, h->user_agent);
    if (h->ca_file) {
        SET(CURLOPT_CAINFO, h->ca_file);
    }
    SET(CURLOPT_ERRORBUFFER, sl->errbuf);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, (void *)sl);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, (void *)sl);
    SET(CURLOPT_HTTPHEADER, sl->hdr_nodes);
    if (strcmp(req->method, "GET") == 0) {
        SET(CURLOPT_HTTPGET, 1L);
    } else {
        if (strcmp(req->method, "POST") != 0) {
            SET(CURLOPT_CUSTOMREQUEST, req->method);
        }
        /* POSTFIELDS is not copied: the body lives in the slot. */
        SET(CURLOPT_POSTFIELDSIZE, (long)req->body_len);
        SET(CURLOPT_POSTFIELDS, sl->body);
    }
#undef SET
    return c;
}

int http1_request(http1_t *h, const struct channel_request *req, const struct http_req_opts *ropts,
                  http_done_cb done, void *ctx)
{
    if (h->destroying) {
        return TDG_ECLOSED;
    }
    if (h->inflight >= h->max_inflight) {
        return -EBUSY;
    }
    static const char *const methods[] = {"GET", "POST", "PUT", "DELETE", "PATCH"};
    bool method_ok = false;
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        if (strcmp(req->method, methods[i]) == 0) {
            method_ok = true;
        }
    }
    if (!method_ok || req->nheaders > CHANNEL_MAX_HEADERS || req->body_len > sizeof(req->body) ||
        req->url[0] == '\0' || memchr(req->url, '\0', sizeof(req->url)) == NULL) {
        return -EINVAL;
    }
    for (unsigned i = 0; i < req->nheaders; i++) {
        if (memchr(req->headers[i], '\0', HDR_LINE_MAX) == NULL || !header_ok(req->headers[i])) {
            return -EINVAL;
        }
    }
    unsigned ncapture = 0;
    if (ropts && ropts->capture) {
        while (ropts->capture[ncapture]) {
            ncapture++;
        }
        if (ncapture > HTTP_CAPTURE_MAX) {
            return -EINVAL;
        }
    }

    struct slot *sl = slot_get(h);
    if (!sl) {
        return -ENOMEM;
    }
    sl->done = done;
    sl->ctx = ctx;
    sl->require_h2 = ropts ? ropts->require_h2 : false;
    sl->capture = ncapture ? ropts->capture : NULL;
    sl->ncapture = ncapture;
    sl->status = 0;
    sl->version = 0;
    sl->bad_version = false;
    sl->too_big = false;
    sl->rlen = 0;
    sl->ncaps = 0;
    sl->errbuf[0] = '\0';

    /* Build the header list in place: nodes point at our own copies. */
    unsigned k = 0;
    for (unsigned i = 0; i < req->nheaders; i++, k++) {
        memcpy(sl->hdr_text[i], req->headers[i], strlen(req->headers[i]) + 1);
        sl->hdr_nodes[k].data = sl->hdr_text[i];
        sl->hdr_nodes[k].next = &sl->hdr_nodes[k + 1];
    }
    if (req->authorization[0]) {
        snprintf(sl->auth_text, sizeof(sl->auth_text), "authorization: %s", req->authorization);
        sl->hdr_nodes[k].data = sl->auth_text;
        sl->hdr_nodes[k].next = &sl->hdr_nodes[k + 1];
        k++;
    }
    sl->hdr_nodes[k].data = (char *)expect_off;
    sl->hdr_nodes[k].next = NULL;
    memcpy(sl->body, req->body, req->body_len);

    uint64_t timeout = ropts && ropts->timeout_ms ? ropts->timeout_ms : h->timeout_ms;
    if (setup_easy(h, sl, req, timeout) != CURLE_OK) {
        slot_put(h, sl);
        return TDG_EHTTP;
    }
    sl->start_ms = loop_now_ms(h->loop);
    CURLMcode mc = curl_multi_add_handle(h->multi, sl->easy);
    if (mc != CURLM_OK) {
        slot_put(h, sl);
        return mc == CURLM_OUT_OF_MEMORY ? -ENOMEM : TDG_EHTTP;
    }
    sl->next = h->live;
    if (h->live) {
        h->live->prev = sl;
    }
    h->live = sl;
    h->inflight++;
    return 0;
}
