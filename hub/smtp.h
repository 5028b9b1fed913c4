/*
 * smtp.h - an SMTP submission client for the email channel, with results
 * delivered on the Tidings event loop.
 *
 * One client talks to one server (smtp_opts.url) with one set of
 * credentials. TLS is always required: smtp:// URLs must upgrade with
 * STARTTLS (a server that does not offer it fails the transfer, nothing is
 * ever sent in plaintext), smtps:// URLs speak TLS from the first byte.
 * Each message is one transfer (EHLO, STARTTLS, AUTH, MAIL FROM, RCPT TO,
 * DATA); an idle connection is reused for the next message after a success
 * (never after a failure), so a burst pays the TLS handshake and AUTH once
 * per connection.
 *
 * The transfers run on max_active worker threads (one connection each),
 * not on the loop: libcurl waits for the reply to the end of the message
 * with a blocking read, whatever interface drives it (see smtp.c). The
 * loop only ever sees completions, through an eventfd. Up to queue_max
 * messages wait in FIFO order for a free worker (their timeout starts when
 * they run); beyond that smtp_send answers -EBUSY.
 *
 * Contract of smtp_send: when it returns 0, done(ctx, result) is called
 * exactly once, later, on the loop thread (never from inside smtp_send).
 * When it returns an error, done is never called. smtp_destroy aborts
 * everything without calling done; it may wait up to about a second for a
 * worker inside a transfer to notice.
 *
 * Every function must be called on the loop's thread. A done callback may
 * call smtp_send, but must not call smtp_destroy.
 */
#ifndef TIDINGS_SMTP_H
#define TIDINGS_SMTP_H

#include <stddef.h>
#include <stdint.h>

#include "loop.h"

typedef struct smtp smtp_t;

#define SMTP_ADDR_MAX 254  /* RFC 5321 path limit (without <>) */
#define SMTP_REPLY_MAX 256 /* last reply line kept; longer is truncated */
#define SMTP_MESSAGE_MAX (1024 * 1024)

enum smtp_auth { SMTP_AUTH_AUTO = 0, SMTP_AUTH_PLAIN, SMTP_AUTH_LOGIN };

struct smtp_opts {
    const char *url;      /* smtp://host[:port] (STARTTLS) or smtps://host[:port]. Copied. */
    const char *helo;     /* name sent in EHLO; NULL/"" = "localhost". Copied. */
    const char *username; /* NULL/"" = no AUTH. Copied (wiped on destroy). */
    const char *password; /* Copied (wiped on destroy). */
    enum smtp_auth auth;  /* SASL mechanism; AUTO lets curl pick the best offered */
    const char *ca_file;  /* PEM bundle to verify the server; NULL/"" = system CAs. Copied. */
    uint64_t timeout_ms;  /* whole transfer; 0 = 60 s */
    uint64_t connect_timeout_ms; /* TCP + TLS handshake; 0 = 10 s */
    unsigned max_active;         /* transfers (connections) at once; 0 = 2 */
    unsigned queue_max;          /* transfers waiting beyond max_active; 0 = 1024 */
};

/* Why a transfer failed, coarsely: the channel maps these to retry/drop. */
enum smtp_fail {
    SMTP_FAIL_NONE = 0, /* accepted: code is 250 */
    SMTP_FAIL_CONNECT,  /* no TCP connection (refused, unreachable, name not found) */
    SMTP_FAIL_TIMEOUT,  /* timeout_ms or connect_timeout_ms passed */
    SMTP_FAIL_TLS,      /* STARTTLS not offered or refused, handshake or verification failed */
    SMTP_FAIL_AUTH,     /* AUTH refused (code: 535, 454, ...) */
    SMTP_FAIL_REPLY,    /* MAIL, RCPT or DATA refused: code is the 4xx/5xx reply */
    SMTP_FAIL_LOST,     /* connection lost or unreadable reply mid-transaction */
};

/*
 * Outcome of one transfer. Pointers are valid only during the done callback.
 */
struct smtp_result {
    int error; /* 0, or -ECONNREFUSED, -EHOSTUNREACH, -ETIMEDOUT, -EPROTO (TLS),
                  -EACCES (AUTH), TDG_EHTTP (refused reply), -ECONNRESET, -ENOMEM */
    enum smtp_fail fail;
    int code;               /* last SMTP reply code received; 0 = none */
    const char *reply;      /* that reply's last line, CR/LF stripped ("" = none) */
    const char *error_text; /* curl's message ("" on success) */
    uint64_t elapsed_ms;    /* from start (not enqueue) to completion */
};

typedef void (*smtp_done_cb)(void *ctx, const struct smtp_result *r);

/* Create a client on loop. 0 and *out, -EINVAL for a URL that is not
 * smtp:// or smtps:// (or has CR/LF), -ENOMEM, or TDG_EHTTP if libcurl
 * cannot be set up or lacks SMTP or TLS. */
int smtp_create(loop_t *loop, const struct smtp_opts *opts, smtp_t **out);

/* Abort everything (no callbacks), close connections, free. NULL is fine.
 * Must not be called from inside a done callback. */
void smtp_destroy(smtp_t *s);

/*
 * Send one message (msg: len bytes, CRLF line endings, no dot-stuffing:
 * curl does that) from mail_from to rcpt_to (bare addresses, no <>). All are
 * copied. Returns 0 (done will be called once), -EBUSY when queue_max
 * transfers already wait, -EINVAL for an address with CR/LF/<>/spaces or
 * over SMTP_ADDR_MAX, TDG_ETOOBIG for len > SMTP_MESSAGE_MAX, -ENOMEM.
 */
int smtp_send(smtp_t *s, const char *mail_from, const char *rcpt_to, const char *msg, size_t len,
              smtp_done_cb done, void *ctx);

/* Transfers running / waiting now. */
unsigned smtp_active(const smtp_t *s);
unsigned smtp_queued(const smtp_t *s);

/* "none", "connect", "timeout", "tls", "auth", "reply", "lost". */
const char *smtp_fail_name(enum smtp_fail f);

#endif
