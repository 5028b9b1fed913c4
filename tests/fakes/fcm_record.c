/* fake-fcm's JSON-lines request log; see fcm_record.h. */
#include "fcm_record.h"

#include "jsonlite.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

struct fcm_record {
    FILE *f;
    uint64_t seq;
};

fcm_record *fcm_record_open(const char *path, char *err, size_t errlen)
{
    fcm_record *r = calloc(1, sizeof(*r));

    if (r == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->f = fopen(path, "a");
    if (r->f == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        free(r);
        return NULL;
    }
    return r;
}

static bool bytes_eq(fcm_bytes a, fcm_bytes b)
{
    return a.n == b.n && memcmp(a.p, b.p, a.n) == 0;
}

/* Headers as one object; a name sent twice keeps its first value (HTTP/2
 * and our HTTP/1.1 parser both deliver names in lowercase). */
static void put_headers(FILE *f, const fcm_record_header *h, size_t n)
{
    size_t i, j;
    bool first = true;

    putc('{', f);
    for (i = 0; i < n; i++) {
        bool seen = false;
        for (j = 0; j < i && !seen; j++) {
            seen = bytes_eq(h[j].name, h[i].name);
        }
        if (seen) {
            continue;
        }
        if (!first) {
            putc(',', f);
        }
        first = false;
        jsonlite_put_string(f, h[i].name.p, h[i].name.n);
        putc(':', f);
        if (h[i].name.n == 13 && memcmp(h[i].name.p, "authorization", 13) == 0) {
            fputs("\"Bearer <redacted>\"", f);
        } else {
            jsonlite_put_string(f, h[i].value.p, h[i].value.n);
        }
    }
    putc('}', f);
}

/* The body as a JSON string, with the value of an "assertion=" form field
 * replaced by <redacted>. */
static void put_body(FILE *f, fcm_bytes b)
{
    static const char key[] = "assertion=";
    const size_t kl = sizeof(key) - 1;
    size_t i;

    for (i = 0; i + kl <= b.n; i++) {
        if ((i == 0 || b.p[i - 1] == '&') && memcmp(b.p + i, key, kl) == 0) {
            size_t end = i + kl;
            size_t total;
            char *copy;
            while (end < b.n && b.p[end] != '&') {
                end++;
            }
            total = (i + kl) + 10 + (b.n - end);
            copy = malloc(total);
            if (copy == NULL) {
                fputs("\"<redacted>\"", f);
                return;
            }
            memcpy(copy, b.p, i + kl);
            memcpy(copy + i + kl, "<redacted>", 10);
            memcpy(copy + i + kl + 10, b.p + end, b.n - end);
            jsonlite_put_string(f, copy, total);
            free(copy);
            return;
        }
    }
    jsonlite_put_string(f, b.p, b.n);
}

static void put_cstr(FILE *f, const char *s)
{
    jsonlite_put_string(f, s ? s : "", s ? strlen(s) : 0);
}

int fcm_record_write(fcm_record *r, const fcm_record_entry *e)
{
    FILE *f = r->f;
    struct timespec ts;
    int64_t ms;

    clock_gettime(CLOCK_REALTIME, &ts);
    ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    r->seq++;
    fprintf(f,
            "{\"seq\":%" PRIu64 ",\"ts_ms\":%" PRId64 ",\"conn\":%" PRIu64 ",\"stream\":%" PRId64
            ",\"proto\":",
            r->seq, ms, e->conn, e->stream);
    put_cstr(f, e->proto);
    fputs(",\"method\":", f);
    jsonlite_put_string(f, e->method.p, e->method.n);
    fputs(",\"path\":", f);
    jsonlite_put_string(f, e->path.p, e->path.n);
    fputs(",\"endpoint\":", f);
    put_cstr(f, e->endpoint);
    fputs(",\"device_token\":", f);
    jsonlite_put_string(f, e->device_token.p, e->device_token.n);
    fputs(",\"headers\":", f);
    put_headers(f, e->headers, e->nheaders);
    fputs(",\"body\":", f);
    put_body(f, e->body);
    fputs(",\"claims\":", f);
    jsonlite_put_string(f, e->claims.p, e->claims.n);
    fputs(",\"auth\":", f);
    put_cstr(f, e->auth);
    fprintf(f, ",\"status\":%d,\"error\":", e->status);
    put_cstr(f, e->error);
    fputs(",\"name\":", f);
    put_cstr(f, e->name);
    fputs(",\"action\":", f);
    put_cstr(f, e->action);
    fputs("}\n", f);
    if (fflush(f) != 0) {
        return -errno;
    }
    return 0;
}

int fcm_record_close(fcm_record *r)
{
    int rc = 0;

    if (r == NULL) {
        return 0;
    }
    if (fclose(r->f) != 0) {
        rc = -errno;
    }
    free(r);
    return rc;
}
