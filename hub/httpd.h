/*
 * httpd.h - a small, strict HTTP/1.1 server on the hub's event loop, for
 * GET /metrics and /healthz, and routes other modules register (e.g. a
 * provider's status callback, POST /v1/sms/status).
 *
 * Never blocks the loop: non-blocking sockets, one fd watch per connection,
 * handlers run synchronously on the loop and fill an in-memory response.
 * One request per connection (the answer carries "Connection: close"), which
 * is all a scraper or a webhook needs and keeps the state machine small.
 *
 * Bounds: HTTPD_MAX_CONNS connections (more are closed at accept, logged
 * once), a request head of HTTPD_MAX_HEAD bytes (431 beyond), a body of
 * HTTPD_MAX_BODY bytes (413 beyond; Content-Length only, Transfer-Encoding
 * is answered 501), HTTPD_IDLE_MS for a whole request to arrive and its
 * answer to leave (then the connection is closed). Parsing is strict: CRLF
 * line ends, no obsolete line folding, one Content-Length, a Host header on
 * HTTP/1.1, token characters in method and header names -> else 400.
 */
#ifndef TIDINGS_HTTPD_H
#define TIDINGS_HTTPD_H

#include <stddef.h>

#include "loop.h"

#define HTTPD_MAX_CONNS 32
#define HTTPD_MAX_HEAD 8192
#define HTTPD_MAX_BODY 65536
#define HTTPD_MAX_HEADERS 32
#define HTTPD_MAX_ROUTES 16
#define HTTPD_IDLE_MS 10000
#define HTTPD_MAX_RESPONSE (8u << 20)

typedef struct httpd httpd_t;

struct httpd_header {
    const char *name, *value; /* name as sent; compare case-insensitively */
};

/* A parsed request; every pointer is valid during the handler call only. */
struct httpd_req {
    const char *method;
    const char *path;  /* without the query */
    const char *query; /* after '?', "" when none */
    const struct httpd_header *headers;
    size_t nheaders;
    const char *body; /* NUL-terminated copy; "" when none */
    size_t body_len;
};

/* A header's value (case-insensitive name), or NULL. */
const char *httpd_req_header(const struct httpd_req *req, const char *name);

/* What the handler answers. status defaults to 200, content type to
 * text/plain; the body is appended with httpd_resp_append/printf. */
struct httpd_resp {
    int status;
    char content_type[80];
    char *body;
    size_t len, cap;
    int failed; /* an append ran out of memory or over HTTPD_MAX_RESPONSE: 500 */
};

void httpd_resp_append(struct httpd_resp *r, const char *data, size_t len);
void httpd_resp_printf(struct httpd_resp *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

typedef void (*httpd_handler)(void *arg, const struct httpd_req *req, struct httpd_resp *resp);

/* Listen on "HOST:PORT" ("127.0.0.1:9464", "[::1]:0"; port 0 picks one).
 * 0, or a negative error with err set ("metrics.listen: ..."). */
int httpd_create(loop_t *loop, const char *listen, httpd_t **out, char *err, size_t errlen);
/* Closes the listener and every connection. */
void httpd_destroy(httpd_t *h);

/* The port actually bound. */
int httpd_port(const httpd_t *h);

/* Route method + exact path to cb. 0, -ENOSPC (too many routes), -EEXIST,
 * or -EINVAL (path not starting with '/'). Unknown paths get 404; a known
 * path with another method gets 405 with an Allow header. */
int httpd_route(httpd_t *h, const char *method, const char *path, httpd_handler cb, void *arg);

#endif
