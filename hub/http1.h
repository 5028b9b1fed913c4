/*
 * http1.h - HTTP/1.1 requests on libcurl's multi socket API, driven by the
 * loop. Internal to hub/http.c, which sends here what the HTTP/2 client
 * (h2.h) does not take: http:// URLs, URLs with user info, and requests to
 * https origins that did not negotiate h2 when the request allows HTTP/1.1.
 *
 * The contracts are those of http.h (done exactly once, later, never from
 * inside http1_request; http1_destroy aborts without callbacks; -EBUSY at
 * max_inflight; captured headers; HTTP_BODY_MAX). Every function runs on
 * the thread of its loop (hub/http.c's worker thread by default); several
 * clients may live on different threads.
 */
#ifndef TIDINGS_HTTP1_H
#define TIDINGS_HTTP1_H

#include "http.h"

typedef struct http1 http1_t;

/* opts as for http_create (max_concurrent_streams is not used). 0 and *out,
 * -ENOMEM, or TDG_EHTTP when curl cannot be set up. */
int http1_create(loop_t *loop, const struct http_opts *opts, http1_t **out);

/* Abort everything in flight (no callbacks) and free. NULL is fine. */
void http1_destroy(http1_t *h);

/* As http_request. */
int http1_request(http1_t *h, const struct channel_request *req, const struct http_req_opts *ropts,
                  http_done_cb done, void *ctx);

/* Requests in flight now. */
unsigned http1_inflight(const http1_t *h);

#endif
