/*
 * fcm_record — fake-fcm's request log: one JSON object per line.
 *
 *   {"seq":N,"ts_ms":T,"conn":C,"stream":S,"proto":"h2","method":"POST",
 *    "path":"/v1/projects/p/messages:send","endpoint":"send","device_token":"..",
 *    "headers":{"content-type":"application/json",...},"body":"..","claims":"",
 *    "auth":"ok","status":200,"error":"","name":"projects/p/messages/0:..",
 *    "action":"reply"}
 *
 * Credentials never reach the file: the authorization header is written as
 * "Bearer <redacted>" and a token request's assertion as
 * "assertion=<redacted>" (its decoded claims go to "claims" instead).
 * Each line is flushed as it is written, so a client that has seen an
 * answer always finds its line.
 */
#ifndef TIDINGS_FAKES_FCM_RECORD_H
#define TIDINGS_FAKES_FCM_RECORD_H

#include <stddef.h>
#include <stdint.h>

typedef struct fcm_record fcm_record;

/* A byte string that is not NUL-terminated. */
typedef struct fcm_bytes {
    const char *p;
    size_t n;
} fcm_bytes;

typedef struct fcm_record_header {
    fcm_bytes name;
    fcm_bytes value;
} fcm_record_header;

/* One finished request. Nothing is retained after fcm_record_write(). */
typedef struct fcm_record_entry {
    uint64_t conn;
    int64_t stream;    /* HTTP/2 stream id; HTTP/1.1: request number on the connection */
    const char *proto; /* "h2" or "http/1.1" */
    fcm_bytes method;
    fcm_bytes path;
    const char *endpoint; /* "send", "token" or "other" */
    fcm_bytes device_token;
    const fcm_record_header *headers; /* non-pseudo headers, as received */
    size_t nheaders;
    fcm_bytes body;
    fcm_bytes claims;   /* token requests: the assertion's decoded claims */
    const char *auth;   /* "ok" "missing" "invalid" "expired" */
    int status;         /* 0 when no answer was sent (drop, goaway) */
    const char *error;  /* FcmError errorCode / OAuth error / rpc status; "" */
    const char *name;   /* 200 to a send: the message name; else "" */
    const char *action; /* "reply" "drop" "goaway" */
} fcm_record_entry;

/* Opens path for appending. Returns NULL with a message in err. */
fcm_record *fcm_record_open(const char *path, char *err, size_t errlen);

/* Appends (and flushes) one line for e, numbered from 1. Returns 0 or -errno. */
int fcm_record_write(fcm_record *r, const fcm_record_entry *e);

/* Closes. NULL is allowed. Returns 0 or -errno. */
int fcm_record_close(fcm_record *r);

#endif
