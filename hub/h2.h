/*
 * h2.h - HTTP/2 client on libnghttp2 and OpenSSL, driven by the loop.
 *
 * Internal to hub/http.c, which owns the public API (http.h) and sends here
 * every https:// request. The contracts are http.h's: done exactly once,
 * later, never from inside h2_request; h2_destroy aborts without callbacks;
 * captured headers into fixed buffers; bodies bounded by HTTP_BODY_MAX.
 * See docs/channels.md ("HTTP client") for the design.
 *
 * Every function runs on the thread of its loop (hub/http.c's worker
 * thread by default), except h2_check and http_client_cert_check (any
 * thread). The nghttp2 sessions never leave that thread.
 */
#ifndef TIDINGS_H2_H
#define TIDINGS_H2_H

#include "http.h"

typedef struct h2 h2_t;

/* A request h2 cannot serve is handed to this function (the HTTP/1.1
 * client). 0: that client now owns the request and calls done exactly once;
 * a negative error: h2 completes the request with that error. */
typedef int (*h2_fallback_fn)(void *arg, const struct channel_request *req,
                              const struct http_req_opts *ropts, http_done_cb done, void *ctx);

struct h2_opts {
    const struct http_opts *http; /* the client's options (NULL: all defaults) */
    h2_fallback_fn fallback;      /* origins that negotiate HTTP/1.1; NULL = none */
    void *fallback_arg;
};

/* h2_request's answer when this request belongs to the HTTP/1.1 client: not
 * an https URL, user info in the URL, or an origin known to refuse h2 and a
 * request that allows HTTP/1.1. Nothing was started. */
#define H2_NOT_MINE 1

/* 0 and *out, -ENOMEM, or TDG_EHTTP (TLS set-up failed; logged). */
int h2_create(loop_t *loop, const struct h2_opts *opts, h2_t **out);

/* Abort everything (no callbacks), close every connection, free. NULL ok. */
void h2_destroy(h2_t *c);

/* Start req (already validated by http.c: method, headers, sizes, URL is
 * NUL-terminated). Everything is copied. 0, H2_NOT_MINE, -EBUSY (too many
 * origins in use), -EINVAL (URL not usable), -ENOMEM. */
int h2_request(h2_t *c, const struct channel_request *req, const struct http_req_opts *ropts,
               http_done_cb done, void *ctx);

/* The scheme and authority ("https://host:port", no path) of the last URL
 * h2_check accepted: a URL with the same bytes and then '/' has the same
 * scheme, host and port, so h2_check only checks its path (the caller's
 * requests all go to a few origins). Zeroed = empty. Owned by one thread. */
struct h2_check_memo {
    size_t len; /* bytes of origin in use; 0 = none */
    char origin[272];
};

/* What h2_request would refuse with -EINVAL whatever its state, checked
 * without touching the client (pure but for memo; any thread): 0 (an https
 * request h2 takes), H2_NOT_MINE (for the HTTP/1.1 client), or -EINVAL (the
 * URL, a capture name over 255 bytes, a header name that is empty or holds a
 * blank). req is already checked as h2_request expects. memo (NULL: none)
 * remembers the last accepted origin; the answer is the same with or
 * without it. */
int h2_check(struct h2_check_memo *memo, const struct channel_request *req,
             const struct http_req_opts *ropts);

/* Requests accepted and not yet completed (or handed over). */
unsigned h2_inflight(const h2_t *c);

/* This client's counters (requests: those h2 accepted; h1_requests: 0). */
void h2_get_stats(const h2_t *c, struct http_stats *out);

#endif
