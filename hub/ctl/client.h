/*
 * client.h - tidingsctl's MQTT 5 request/response client (libmosquitto).
 *
 * A session connects to the broker with the admin's credentials, subscribes
 * to its own reply topic tidings/v1/admin/reply/<client id>, and sends each
 * request to tidings/v1/admin/request/<command> with the Response Topic and
 * a fresh Correlation Data; the answer with that correlation data is the
 * reply. Everything is bounded by one deadline per call: nothing blocks
 * past it (a poll() loop over libmosquitto's socket; no thread).
 */
#ifndef TIDINGS_CTL_CLIENT_H
#define TIDINGS_CTL_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

/* Exit codes of tidingsctl (docs/tidingsctl.md). */
enum ctl_exit {
    CTL_OK = 0,
    CTL_REFUSED = 1,        /* the hub answered with an error */
    CTL_USAGE = 2,          /* bad command line or config */
    CTL_NO_ANSWER = 3,      /* cannot connect, or no hub answered in time */
    CTL_NOT_AUTHORIZED = 4, /* the broker refused the credentials or the topic */
};

struct ctl_conn {
    const char *host;
    int port;
    const char *username, *password;         /* NULL/"": none */
    const char *cafile, *certfile, *keyfile; /* cafile non-empty: TLS */
    bool insecure;                           /* TLS without hostname check */
    int timeout_ms;                          /* per request, connecting included */
};

typedef struct ctl_session ctl_session_t;

/* Connect and subscribe. 0 and *out, or a ctl_exit code with err set. */
int ctl_connect(const struct ctl_conn *c, ctl_session_t **out, char *err, size_t errlen);

/* Send one request (payload: JSON text) and wait for its answer. 0 and
 * *reply (malloc'd, NUL-terminated), or a ctl_exit code with err set. */
int ctl_request(ctl_session_t *s, const char *command, const char *payload, char **reply, char *err,
                size_t errlen);

void ctl_close(ctl_session_t *s);

#endif
