/*
 * h2server - the TLS + HTTP/2 server core the C fakes (fake-apns, fake-fcm)
 * share: listener, signals (SIGTERM/SIGINT stop, SIGHUP reloads), one epoll
 * loop, non-blocking OpenSSL connections, an nghttp2 server session per
 * connection driven through mem_recv/mem_send with bounded output, an
 * optional HTTP/1.1 mode the fake parses itself, a timer heap for delayed
 * answers, and scripted answers that are broken off (fake_cut.h).
 *
 * What a fake brings: its SSL_CTX (h2s_tls_ctx_new + its ALPN choice), its
 * nghttp2 callbacks (user_data is the connection), its connection struct
 * with h2s_conn as the first member (hooks.conn_size), and the hooks below.
 * Requests, checks, answers and the record stay in the fake.
 *
 * Single-threaded. A connection is never freed inside a callback: h2s_conn_kill
 * marks it, the loop frees it at the end of its turn (hooks.conn_free first).
 */
#ifndef TIDINGS_FAKES_H2SERVER_H
#define TIDINGS_FAKES_H2SERVER_H

#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "fake_cut.h"

#define H2S_MAX_CONNS 1024                /* more are closed at accept (logged once) */
#define H2S_OUT_HIGH (256 * 1024)         /* stop reading while this much output waits */
#define H2S_OUT_MAX (8 * 1024 * 1024)     /* hard ceiling of a connection's output */
#define H2S_READ_BUF (16 * 1024)

enum h2s_proto { H2S_NONE = 0, H2S_H2, H2S_H1 };

typedef struct h2s_server h2s_server;
typedef struct h2s_conn h2s_conn;

/* What epoll's data.ptr points at (internal, but embedded in h2s_conn). */
typedef struct h2s_ev {
    int kind;
    void *owner;
} h2s_ev;

/* A delayed answer, embedded in the fake's request object. */
typedef struct h2s_timer {
    int64_t due_ms; /* CLOCK_MONOTONIC ms */
    int idx;        /* -1 when not queued */
} h2s_timer;

/* One connection. The fake's own struct starts with it. */
struct h2s_conn {
    h2s_ev ev;
    h2s_server *srv;
    h2s_conn *next; /* all live connections */
    h2s_conn *prev;
    h2s_conn *next_dead;
    int fd;
    SSL *ssl;
    enum h2s_proto proto; /* H2S_NONE until the TLS handshake is done */
    nghttp2_session *h2;  /* H2S_H2 only */
    uint64_t id;          /* 1, 2, ... in accept order */
    uint32_t events;      /* what epoll watches now */
    bool dead;
    bool drop;       /* the fake dropped it: close without a word, nothing more read */
    bool goaway;     /* the fake sent GOAWAY: answer nothing above goaway_last */
    bool peer_gone;
    bool ssl_want_write;
    bool cut_close;  /* a cut answer is out: close (no close_notify) once written */
    bool cut_goaway; /* a "cut goaway" terminated the session */
    int32_t goaway_last;
    uint8_t *out;
    size_t out_off;
    size_t out_len;
    size_t out_cap;
};

typedef struct h2s_hooks {
    /* A connection was accepted (TLS not done yet); set up the fake's part. */
    void (*conn_open)(h2s_conn *c);
    /* The connection goes: free the fake's part (its requests: cancel their
     * timers). The nghttp2 session is already deleted; no callbacks come. */
    void (*conn_free)(h2s_conn *c);
    /* The handshake chose no "h2": 0 to speak HTTP/1.1 (proto H2S_H1, bytes
     * go to h1_feed), -1 to close. NULL: h2 only. */
    int (*h1_start)(h2s_conn *c);
    /* HTTP/1.1 bytes from TLS. -1: drop the connection now. */
    int (*h1_feed)(h2s_conn *c, const uint8_t *d, size_t n);
    /* HTTP/1.1: nothing more to do once the output is written (close). */
    bool (*h1_done)(h2s_conn *c);
    /* HTTP/2 after a GOAWAY: true while a stream <= goaway_last is unanswered. */
    bool (*goaway_pending)(h2s_conn *c);
    /* A timer is due (already out of the heap). */
    void (*timer)(h2s_server *s, h2s_timer *t);
    /* Before any bytes go to a socket (e.g. flush the record); may be NULL. */
    void (*before_write)(h2s_server *s);
    /* At the end of every loop turn, before dead connections are closed;
     * may be NULL. */
    void (*end_of_turn)(h2s_server *s);
    /* SIGHUP; may be NULL. */
    void (*reload)(h2s_server *s);
} h2s_hooks;

typedef struct h2s_config {
    const char *name;      /* "fake-apns": log prefix and "<name> listening on" */
    const char *listen;    /* HOST:PORT or [V6]:PORT */
    const char *port_file; /* NULL: none */
    bool verbose;          /* log per-connection TLS and HTTP/2 errors */
    SSL_CTX *ctx;          /* the caller's; it frees it after h2s_destroy */
    nghttp2_session_callbacks *cbs; /* the caller's; user_data is the h2s_conn */
    uint32_t max_concurrent_streams;
    uint32_t max_header_list;
    int32_t local_window;  /* connection window to announce; 0: nghttp2's default */
    size_t out_initial;    /* first output buffer of a connection */
    size_t max_timers;     /* timers queued at once, at most */
    size_t conn_size;      /* sizeof the fake's connection struct (>= sizeof(h2s_conn)) */
    h2s_hooks hooks;
    void *user;            /* h2s_user() */
} h2s_config;

/*
 * Listens, sets up signals and epoll, prints the ready line and writes the
 * port file. Returns 0 with *out, 1 (system failure) or 2 (bad --listen or
 * --port-file) after logging why; *out is then NULL.
 */
int h2s_create(const h2s_config *cfg, h2s_server **out);

/* Runs until SIGTERM/SIGINT or h2s_stop. 0, or -1 when epoll fails. */
int h2s_run(h2s_server *s);

/* Closes every connection (one polite close_notify each) and frees. */
void h2s_destroy(h2s_server *s);

void h2s_stop(h2s_server *s);
void *h2s_user(const h2s_server *s);
uint64_t h2s_connections(const h2s_server *s); /* accepted so far */
bool h2s_verbose(const h2s_server *s);

/* Does what can be done on c now: handshake, read, write, close. */
void h2s_conn_pump(h2s_conn *c);
/* Marks c dead (freed at the end of the loop turn; no close_notify). */
void h2s_conn_kill(h2s_conn *c);
/* Appends to c's output (HTTP/1.1). 0, or -1 over H2S_OUT_MAX / no memory. */
int h2s_out_append(h2s_conn *c, const uint8_t *d, size_t n);

/* Queues t at due_ms (monotonic); the heap holds at most max_timers. */
void h2s_timer_add(h2s_server *s, h2s_timer *t, int64_t due_ms);
/* Takes t out of the heap; nothing when it is not queued. */
void h2s_timer_cancel(h2s_server *s, h2s_timer *t);

/*
 * An nghttp2 data source read for an answer that is broken off (fake_cut.h):
 * resp[0..resp_len) is the whole body, *resp_off how much went. The first
 * half of the body for FAKE_CUT_BODY, then NGHTTP2_ERR_DEFERRED (no
 * END_STREAM) and the connection closes once the output is written;
 * RST_STREAM INTERNAL_ERROR for RESET; GOAWAY INTERNAL_ERROR
 * (last-stream-id = this stream) for GOAWAY.
 */
ssize_t h2s_cut_read(h2s_conn *c, nghttp2_session *h2, int32_t stream_id, enum fake_cut cut,
                     const char *resp, size_t resp_len, size_t *resp_off, uint8_t *buf,
                     size_t length);

/*
 * A server context with what both fakes want: TLS 1.2+, no compression or
 * renegotiation, partial writes, no session tickets, unexpected EOF not an
 * error; cert (chain) and key loaded. NULL after logging "--cert ..." or
 * "--key ..." with OpenSSL's reason.
 */
SSL_CTX *h2s_tls_ctx_new(const char *name, const char *cert, const char *key);

int64_t h2s_now_mono_ms(void);
int64_t h2s_now_real_ms(void);

#endif
