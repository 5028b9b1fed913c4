/* The JSON-lines request log; see apns_record.h. */
#include "apns_record.h"

#include "jsonlite.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define APNS_RECORD_BUF (1024 * 1024)

struct apns_record {
    FILE *f;
    char *buf;
    uint64_t seq;
    bool dirty;
};

apns_record *apns_record_open(const char *path, char *err, size_t errlen)
{
    apns_record *r = calloc(1, sizeof(*r));

    if (r == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->buf = malloc(APNS_RECORD_BUF);
    r->f = fopen(path, "a");
    if (r->f == NULL || r->buf == NULL) {
        snprintf(err, errlen, "%s: %s", path, r->f == NULL ? strerror(errno) : "out of memory");
        if (r->f != NULL) {
            fclose(r->f);
        }
        free(r->buf);
        free(r);
        return NULL;
    }
    setvbuf(r->f, r->buf, _IOFBF, APNS_RECORD_BUF);
    return r;
}

static bool bytes_eq(apns_bytes a, apns_bytes b)
{
    return a.n == b.n && memcmp(a.p, b.p, a.n) == 0;
}

static void put_headers(FILE *f, const apns_record_header *h, size_t n)
{
    size_t i;
    size_t j;
    bool first = true;

    putc_unlocked('{', f);
    for (i = 0; i < n; i++) {
        bool seen = false;
        bool redact = h[i].name.n == 13 && memcmp(h[i].name.p, "authorization", 13) == 0;

        for (j = 0; j < i && !seen; j++) {
            seen = bytes_eq(h[j].name, h[i].name);
        }
        if (seen) {
            continue;
        }
        if (!first) {
            putc_unlocked(',', f);
        }
        first = false;
        jsonlite_put_string(f, h[i].name.p, h[i].name.n);
        putc_unlocked(':', f);
        if (redact) {
            fputs("\"bearer <redacted>\"", f);
            continue;
        }
        {
            bool repeated = false;
            for (j = i + 1; j < n && !repeated; j++) {
                repeated = bytes_eq(h[j].name, h[i].name);
            }
            if (!repeated) {
                jsonlite_put_string(f, h[i].value.p, h[i].value.n);
                continue;
            }
        }
        {
            /* Rare path (a DuplicateHeaders request): the values are joined
             * into one string. Bounded: all values fit in one request's
             * header arena. */
            size_t total = 0;
            char *joined;
            size_t off = 0;
            for (j = i; j < n; j++) {
                if (bytes_eq(h[j].name, h[i].name)) {
                    total += h[j].value.n + 2;
                }
            }
            joined = malloc(total);
            if (joined == NULL) {
                fputs("\"\"", f);
                continue;
            }
            for (j = i; j < n; j++) {
                if (bytes_eq(h[j].name, h[i].name)) {
                    if (off > 0) {
                        memcpy(joined + off, ", ", 2);
                        off += 2;
                    }
                    memcpy(joined + off, h[j].value.p, h[j].value.n);
                    off += h[j].value.n;
                }
            }
            jsonlite_put_string(f, joined, off);
            free(joined);
        }
    }
    putc_unlocked('}', f);
}

void apns_record_write(apns_record *r, const apns_record_entry *e)
{
    FILE *f = r->f;
    struct timespec ts;
    int64_t ms;

    clock_gettime(CLOCK_REALTIME, &ts);
    ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    r->seq++;
    fprintf(f,
            "{\"seq\":%" PRIu64 ",\"ts_ms\":%" PRId64 ",\"conn\":%" PRIu64 ",\"stream\":%d,"
            "\"method\":",
            r->seq, ms, e->conn, (int)e->stream);
    jsonlite_put_string(f, e->method.p, e->method.n);
    fputs(",\"path\":", f);
    jsonlite_put_string(f, e->path.p, e->path.n);
    fputs(",\"token\":", f);
    jsonlite_put_string(f, e->token.p, e->token.n);
    fputs(",\"headers\":", f);
    put_headers(f, e->headers, e->nheaders);
    fputs(",\"body\":", f);
    jsonlite_put_string(f, e->body.p, e->body.n);
    fprintf(f, ",\"jwt\":\"%s\",\"team\":", e->jwt);
    jsonlite_put_string(f, e->team ? e->team : "", e->team ? strlen(e->team) : 0);
    fprintf(f, ",\"cert\":\"%s\",\"cert_uid\":", e->cert ? e->cert : "");
    jsonlite_put_string(f, e->cert_uid ? e->cert_uid : "", e->cert_uid ? strlen(e->cert_uid) : 0);
    fprintf(f,
            ",\"status\":%d,\"reason\":\"%s\",\"apns_id\":\"%s\","
            "\"action\":\"%s\"}\n",
            e->status, e->reason, e->apns_id, e->action);
    r->dirty = true;
}

int apns_record_flush(apns_record *r)
{
    if (!r->dirty) {
        return 0;
    }
    r->dirty = false;
    if (fflush(r->f) != 0) {
        return -errno;
    }
    return 0;
}

int apns_record_close(apns_record *r)
{
    int rc = 0;

    if (r == NULL) {
        return 0;
    }
    if (fclose(r->f) != 0) {
        rc = -errno;
    }
    free(r->buf);
    free(r);
    return rc;
}
