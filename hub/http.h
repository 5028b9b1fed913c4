/*
 * http.h - the hub's HTTP client on the Tidings event loop.
 *
 * https:// requests go over HTTP/2 on libnghttp2 + OpenSSL (hub/h2.c):
 * non-blocking TCP and TLS (ALPN h2, SNI, certificate and host name
 * verification), requests to one origin multiplexed as streams over at most
 * max_host_connections connections that honour the server's
 * SETTINGS_MAX_CONCURRENT_STREAMS; requests wait in a queue for a free
 * stream. An origin that does not negotiate h2 gets HTTP/1.1 over libcurl
 * (hub/http1.c) for requests that allow it (require_h2 false); so do
 * http:// URLs. Nothing blocks except the host name lookup (getaddrinfo),
 * done once per new connection and skipped for IP literals.
 *
 * Threads: by default each client runs those two on a worker thread of its
 * own, with a private loop; http_request checks and copies the request on
 * the caller's thread and hands it over, and the answers come back to the
 * caller's loop (see http.c). http_opts.same_thread runs everything on the
 * caller's loop instead. Either way the caller sees the same contract:
 *
 * Contract of http_request: when it returns 0, done(ctx, response) is called
 * exactly once, later, from the caller's loop, on its thread (never from
 * inside http_request). When it returns an error, done is never called.
 * Every error that depends only on the request (-EINVAL) is returned here,
 * not through done. http_destroy aborts every in-flight request without
 * calling its done.
 *
 * Every function must be called on the thread of the loop given to
 * http_create (http_client_cert_check: any thread). A done callback may
 * start new requests, but must not call http_destroy.
 */
#ifndef TIDINGS_HTTP_H
#define TIDINGS_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "channel.h"
#include "loop.h"

typedef struct http http_t;

#define HTTP_BODY_MAX (64 * 1024)  /* response bodies beyond this are an error */
#define HTTP_CAPTURE_MAX 8         /* headers captured per request */
#define HTTP_CAPTURE_VALUE_MAX 255 /* longer captured values are truncated */
#define HTTP_ERROR_TEXT_MAX 256    /* error_text, NUL included (== CURL_ERROR_SIZE) */

struct http_opts {
    unsigned max_inflight;       /* requests in flight at once; beyond: -EBUSY. 0 = 1024 */
    long max_host_connections;   /* connections per host; 0 = 2 */
    long max_concurrent_streams; /* streams per HTTP/2 connection we ask for; 0 = 100 */
    const char *ca_file;         /* PEM bundle to verify servers; NULL/"" = system CAs. Copied. */
    uint64_t timeout_ms;         /* default whole-request timeout; 0 = 30 s */
    uint64_t connect_timeout_ms; /* TCP + TLS handshake; 0 = 10 s */
    unsigned free_max;           /* idle request objects kept for reuse; 0 = 64 */
    const char *user_agent;      /* NULL = "tidings/<version>". Copied. */
    /* HTTP/2 only (added with the nghttp2 client; 0 = the default): */
    uint64_t connection_spacing_ms; /* a further connection to an origin is opened only when
                                       every usable one is at its stream limit, and at most
                                       this often; 0 = 2 s */
    uint64_t ping_interval_ms;      /* PING a connection after this long without a frame from
                                       the server, idle or busy; no answer within the same
                                       time: closed, its requests fail; 0 = 60 s */
    uint64_t idle_close_ms;         /* close a connection without requests for this long;
                                       0 = 15 min */
    /* TLS client certificate (APNs certificate auth), HTTP/2 connections
     * only; loaded once in http_create, nothing kept but OpenSSL's copy: */
    const char *client_cert;     /* PEM (certificate chain, usually with its key) or
                                    PKCS#12 file; NULL/"" = none */
    const char *client_key;      /* PEM key when client_cert holds none; NULL/"" = in cert */
    const char *client_password; /* PKCS#12 / encrypted PEM key password; NULL/"" = none */
    /* false (the default): the HTTP/2 and HTTP/1.1 clients run on a worker
     * thread with its own loop; true: on the caller's loop, no thread. */
    bool same_thread;
};

/*
 * Load a client certificate the way http_create will, into a throwaway
 * context, so a caller can refuse a bad one at start with a clear reason:
 * "wrong password for PKCS#12 file x", "x: private key does not match the
 * certificate", "x: neither PEM nor PKCS#12". 0, or TDG_ECONFIG with err set.
 */
int http_client_cert_check(const char *cert, const char *key, const char *password, char *err,
                           size_t errlen);

struct http_req_opts {
    bool require_h2;     /* a response over anything but HTTP/2 fails with -EPROTO */
    uint64_t timeout_ms; /* 0 = the client's default */
    /* Response headers to capture, case-insensitive, NULL-terminated (at most
     * HTTP_CAPTURE_MAX names; the array must stay valid until done). */
    const char *const *capture;
};

struct http_header {
    const char *name;  /* as named in http_req_opts.capture */
    const char *value; /* trimmed; truncated at HTTP_CAPTURE_VALUE_MAX */
};

/*
 * What came back. All pointers are valid only during the done callback.
 * A transport failure (no complete answer) has error < 0 and error_text set;
 * status may still be set if the failure came after the status line (e.g.
 * an oversized body).
 */
struct http_response {
    int error;              /* 0, or -ETIMEDOUT (request or connect timeout),
                               -ECONNREFUSED, -EHOSTUNREACH (also: name not resolved),
                               -ECONNRESET (connection or stream lost after the request
                               may have been sent), -EPROTO (only: not HTTP/2 when
                               required), TDG_ETOOBIG (body over HTTP_BODY_MAX), -ENOMEM,
                               TDG_EHTTP (anything else: TLS and certificate errors,
                               HTTP/2 framing, refused by the server again and again) */
    const char *error_text; /* what happened, for logs ("" when error == 0) */
    int status;             /* HTTP status; 0 when none was received */
    int version;            /* 10, 11, 20, 30; 0 when unknown */
    const char *body;       /* NUL-terminated for convenience; body_len bytes */
    size_t body_len;
    const struct http_header *headers; /* captured headers that were present */
    unsigned nheaders;
    uint64_t elapsed_ms; /* from http_request to completion */
};

typedef void (*http_done_cb)(void *ctx, const struct http_response *resp);

/* Create a client on loop. opts may be NULL (all defaults). Returns 0 and
 * *out, -ENOMEM, TDG_EHTTP if TLS cannot be set up (e.g. ca_file cannot
 * be read: logged with the reason), or -errno when the worker thread or its
 * loop cannot be started. */
int http_create(loop_t *loop, const struct http_opts *opts, http_t **out);

/* Abort everything in flight (no callbacks), stop and join the worker
 * thread, and free. NULL is fine. Must not be called from inside a done
 * callback. */
void http_destroy(http_t *h);

/*
 * Start req (method, url, "name: value" headers, body). Everything in req is
 * copied: it may be reused as soon as this returns. ropts may be NULL.
 * Returns 0 (done will be called once), -EBUSY when max_inflight requests
 * are already in flight, -EINVAL for a malformed request (a header without
 * ':' or with CR/LF, an unsupported method, an https URL no server could
 * take), -ENOMEM, or TDG_EHTTP. With the worker thread, what can only fail
 * later (too many origins, out of memory there) comes back through done
 * with that error.
 */
int http_request(http_t *h, const struct channel_request *req, const struct http_req_opts *ropts,
                 http_done_cb done, void *ctx);

/* Value of captured header name (case-insensitive), or NULL. */
const char *http_response_header(const struct http_response *r, const char *name);

/* Requests in flight now: accepted, done not yet called. */
unsigned http_inflight(const http_t *h);

/* Counters since http_create, for tests, benchmarks and status pages. */
struct http_stats {
    uint64_t requests;         /* accepted by http_request */
    uint64_t h1_requests;      /* of which went over HTTP/1.1 (libcurl) */
    uint64_t connects;         /* HTTP/2 connections that reached TLS + ALPN h2 */
    uint64_t connect_failures; /* connection attempts that failed or timed out */
    uint64_t goaways;          /* GOAWAY frames received */
    uint64_t replayed;         /* requests sent again on another connection: refused
                                  (REFUSED_STREAM, above a GOAWAY's last stream id) or
                                  never written before their connection closed */
    uint64_t resets_sent;      /* RST_STREAM sent (timeouts, oversized bodies); never
                                  for a stream that finished normally */
    uint64_t pings_sent, pings_acked;
    unsigned connections; /* HTTP/2 connections open now (any state) */
    unsigned queued;      /* requests waiting for a stream now (with the worker
                             thread: also those not yet handed to it) */
};
/* With the worker thread, every counter but requests is the snapshot it
 * published before it last went to sleep: up to date by the time the done
 * callbacks of what it did run. */
void http_get_stats(const http_t *h, struct http_stats *out);

#endif
