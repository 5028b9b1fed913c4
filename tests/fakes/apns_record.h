/*
 * apns_record — the fake's request log: one JSON object per line.
 *
 *   {"seq":N,"ts_ms":T,"conn":C,"stream":S,"method":"POST","path":"/3/device/..",
 *    "token":"..","headers":{"apns-topic":"..",...},"body":"..","jwt":"ok",
 *    "status":200,"reason":"","apns_id":"..","action":"reply"}
 *
 * Lines are written to a stdio buffer and reach the file at the latest
 * when apns_record_flush() runs; the server flushes before any byte of a
 * response leaves the process, so a client that has seen an answer always
 * finds its line. That batches the write(2)s under load instead of paying
 * one per request.
 */
#ifndef TIDINGS_FAKES_APNS_RECORD_H
#define TIDINGS_FAKES_APNS_RECORD_H

#include <stddef.h>
#include <stdint.h>

typedef struct apns_record apns_record;

/* A byte string that is not NUL-terminated. */
typedef struct apns_bytes {
    const char *p;
    size_t n;
} apns_bytes;

typedef struct apns_record_header {
    apns_bytes name;
    apns_bytes value;
} apns_record_header;

/* One finished request. Nothing is retained after apns_record_write(). */
typedef struct apns_record_entry {
    uint64_t conn;
    int32_t stream;
    apns_bytes method;
    apns_bytes path;
    apns_bytes token;
    const apns_record_header *headers; /* non-pseudo headers, as received */
    size_t nheaders;
    apns_bytes body;
    const char *jwt;    /* "ok" "missing" "invalid" "expired" */
    const char *team;   /* team of the key that signed the token; "" when none */
    const char *cert;   /* client certificate: "ok" "bad" "none"; "" without --client-ca */
    const char *cert_uid; /* its subject UID (bundle id); "" when none */
    int status;         /* 0 when no answer was sent (drop, goaway) */
    const char *reason; /* "" for 200 */
    const char *apns_id;
    const char *action; /* "reply" "drop" "goaway" */
} apns_record_entry;

/*
 * Opens path for appending. Returns NULL with a message in err.
 * The handle owns a 1 MiB stdio buffer.
 */
apns_record *apns_record_open(const char *path, char *err, size_t errlen);

/*
 * Appends one line for e, numbering it with the next sequence number
 * (from 1). The authorization header's value is written as
 * "bearer <redacted>"; headers repeated under one name are joined with
 * ", " so each name appears once in the object.
 */
void apns_record_write(apns_record *r, const apns_record_entry *e);

/* Writes buffered lines to the file if there are any. Returns 0 or -errno. */
int apns_record_flush(apns_record *r);

/* Flushes and closes. NULL is allowed. Returns 0 or -errno. */
int apns_record_close(apns_record *r);

#endif
