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
 */
#include "http.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "error.h"
#include "h2.h"
#include "http1.h"
#include "log.h"

#define MOD "http"

#define DEF_MAX_INFLIGHT 1024u
#define HDR_LINE_MAX 256 /* == sizeof(channel_request.headers[0]) */

struct http {
    loop_t *loop;
    struct http_opts opts; /* strings point at the copies below */
    char *ca_file;
    char *user_agent;
    unsigned max_inflight;
    h2_t *h2;
    http1_t *h1; /* created on first use */
    uint64_t requests, h1_requests;
    bool h1_failed; /* could not be created: logged once */
};

/* Create the HTTP/1.1 client if needed. 0 or a negative error. */
static int h1_ensure(http_t *h)
{
    if (h->h1) {
        return 0;
    }
    int rc = http1_create(h->loop, &h->opts, &h->h1);
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

int http_create(loop_t *loop, const struct http_opts *opts, http_t **out)
{
    *out = NULL;
    http_t *h = calloc(1, sizeof(*h));
    if (!h) {
        return -ENOMEM;
    }
    h->loop = loop;
    if (opts) {
        h->opts = *opts;
    }
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
    if (rc == 0) {
        struct h2_opts ho = {.http = &h->opts, .fallback = to_http1, .fallback_arg = h};
        rc = h2_create(loop, &ho, &h->h2);
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
    h2_destroy(h->h2);
    http1_destroy(h->h1);
    free(h->ca_file);
    free(h->user_agent);
    free(h);
}

unsigned http_inflight(const http_t *h)
{
    return h2_inflight(h->h2) + (h->h1 ? http1_inflight(h->h1) : 0);
}

void http_get_stats(const http_t *h, struct http_stats *out)
{
    h2_get_stats(h->h2, out);
    out->requests = h->requests;
    out->h1_requests = h->h1_requests;
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
    if (req->authorization[0] &&
        (memchr(req->authorization, '\0', sizeof(req->authorization)) == NULL ||
         strpbrk(req->authorization, "\r\n") != NULL)) {
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
    int rc = h2_request(h->h2, req, ropts, done, ctx);
    if (rc == H2_NOT_MINE) {
        rc = to_http1(h, req, ropts, done, ctx);
    }
    if (rc == 0) {
        h->requests++;
    }
    return rc;
}
