/* json_print.c - compact JSON text of a cJSON tree, byte for byte what
 * cJSON_PrintUnformatted writes, without its costs on the hot path.
 *
 * Why: the hub prints every accepted notification (intake stores and checks
 * the compact text) and the custom data of every push payload. cJSON prints
 * each number with the format "%1.15g", reads it back with sscanf and, when it
 * does not round-trip, prints again with "%1.17g": ~3,000 instructions per
 * number, most of a notification's printing. Integers - nearly every number
 * Tidings sees (ttl, priorities, timestamps, counters) - are printed here
 * with plain integer formatting, which gives the same characters; anything
 * else goes through the same formatting steps as cJSON (snprintf here). The output must stay
 * identical because sizes are checked on it (PROTO_MAX_WIRE applies to the
 * text cJSON would write: proto.h) and tests compare payload bytes with
 * golden files; tests/unit/test_json_print.c compares the two printers on
 * generated trees. */
#include "proto.h"
#include "proto_internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>


const unsigned char proto_json_special[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    ['"'] = 1, ['\\'] = 1,
};

/* The escape of c (proto_json_special[c]) at e, as cJSON writes it: 2 or 6 bytes. */
static size_t put_escape(char *e, unsigned char c)
{
    static const char hex[] = "0123456789abcdef";
    e[0] = '\\';
    switch (c) {
    case '"': e[1] = '"'; return 2;
    case '\\': e[1] = '\\'; return 2;
    case '\b': e[1] = 'b'; return 2;
    case '\f': e[1] = 'f'; return 2;
    case '\n': e[1] = 'n'; return 2;
    case '\r': e[1] = 'r'; return 2;
    case '\t': e[1] = 't'; return 2;
    default:
        e[1] = 'u';
        e[2] = '0';
        e[3] = '0';
        e[4] = hex[c >> 4];
        e[5] = hex[c & 15];
        return 6;
    }
}

/* The n bytes at s (no NUL among them), escaped, without quotes. */
static void put_run(struct proto_jw *w, const char *s, size_t n)
{
    size_t run = 0, i = 0;
    while (i < n) {
        /* Most text needs no escape: skip it a word at a time. */
        if (n - i >= 8 && !proto_word_special(s + i)) {
            i += 8;
            continue;
        }
        unsigned char c = (unsigned char)s[i++];
        if (!proto_json_special[c]) {
            continue;
        }
        proto_jw_raw(w, s + run, i - 1 - run);
        run = i;
        char e[6];
        proto_jw_raw(w, e, put_escape(e, c));
    }
    proto_jw_raw(w, s + run, n - run);
}

/* Bytes written straight into the buffer before the rest of a string is
 * measured: most strings (keys, ids, names) end within them, so they cost
 * neither a strnlen nor a memcpy call. */
#define JW_HEAD 16

void proto_jw_str(struct proto_jw *w, const char *s, size_t max)
{
    size_t i = 0;
    if (!s) {
        max = 0;
    } else if (w->len < w->cap && w->cap - w->len > 6 * JW_HEAD + 2) {
        /* Room for the quotes and the worst case of the head (every byte a
         * 6-byte escape) before the NUL's place: written without checks. */
        char *o = w->p + w->len, *o0 = o;
        size_t head = max < JW_HEAD ? max : JW_HEAD;
        *o++ = '"';
        for (; i < head; i++) {
            unsigned char c = (unsigned char)s[i];
            if (!proto_json_special[c]) {
                *o++ = (char)c;
            } else if (c == '\0') {
                break;
            } else {
                o += put_escape(o, c);
            }
        }
        if (i == max || s[i] == '\0') {
            *o++ = '"';
            w->len += (size_t)(o - o0);
            return;
        }
        w->len += (size_t)(o - o0);
        put_run(w, s + i, strnlen(s + i, max - i));
        proto_jw_raw(w, "\"", 1);
        return;
    }
    proto_jw_raw(w, "\"", 1);
    if (max) {
        put_run(w, s, strnlen(s, max));
    }
    proto_jw_raw(w, "\"", 1);
}

const char *proto_i64_str(int64_t v, char buf[PROTO_I64_BUF])
{
    size_t i = PROTO_I64_BUF - 1;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    buf[i] = '\0';
    do {
        buf[--i] = (char)('0' + (int)(u % 10));
        u /= 10;
    } while (u);
    if (v < 0) {
        buf[--i] = '-';
    }
    return buf + i;
}

void proto_jw_int(struct proto_jw *w, int64_t v)
{
    char d[PROTO_I64_BUF];
    const char *p = proto_i64_str(v, d);
    proto_jw_raw(w, p, (size_t)(d + sizeof(d) - 1 - p));
}

bool proto_jw_end(struct proto_jw *w)
{
    if (w->cap > 0) {
        w->p[w->len < w->cap ? w->len : w->cap - 1] = '\0';
    }
    return w->len < w->cap;
}

/* cJSON's compare_double: equal within the precision of the larger. */
static bool same_double(double a, double b)
{
    double maxv = fabs(a) > fabs(b) ? fabs(a) : fabs(b);
    return fabs(a - b) <= maxv * 2.220446049250313e-16; /* DBL_EPSILON */
}

static void put_number(struct proto_jw *o, double d)
{
    char buf[32];
    int n;
    if (isnan(d) || isinf(d)) {
        proto_jw_raw(o, "null", 4);
        return;
    }
    /* An integer below 1e15 in magnitude: "%1.15g" writes all its digits
     * without an exponent, which is what integer formatting writes. */
    if (d > -1e15 && d < 1e15 && d == (double)(long long)d) {
        if (d == 0 && signbit(d)) {
            proto_jw_raw(o, "-0", 2); /* "%1.15g" of -0.0 */
        } else {
            proto_jw_int(o, (int64_t)d);
        }
        return;
    }
    /* An integer of 16 or 17 digits (e.g. a time in microseconds): what
     * "%1.15g" would write is computed exactly in integers - rounded to 15
     * significant digits, half to even like printf - and kept when it reads
     * back as the same double within cJSON's tolerance; else "%1.17g" writes
     * every digit of the integer. */
    if (d > -1e17 && d < 1e17 && d == (double)(long long)d) {
        long long v = (long long)d;
        unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
        int ndig = u >= 10000000000000000ULL ? 17 : 16;
        unsigned long long p = ndig == 17 ? 100 : 10;
        unsigned long long q = u / p, rem = u % p;
        if (rem > p / 2 || (rem == p / 2 && (q & 1))) {
            q++;
        }
        int exp10 = ndig - 1;
        if (q == 1000000000000000ULL) { /* rounded up to a power of ten */
            q /= 10;
            exp10++;
            p *= 10;
        }
        double r = (double)(q * p);
        if (same_double(v < 0 ? -r : r, d)) {
            char m[24];
            n = snprintf(m, sizeof(m), "%llu", q);
            while (n > 1 && m[n - 1] == '0') {
                n--;
            }
            size_t k = 0;
            if (v < 0) {
                buf[k++] = '-';
            }
            buf[k++] = m[0];
            if (n > 1) {
                buf[k++] = '.';
                memcpy(buf + k, m + 1, (size_t)n - 1);
                k += (size_t)n - 1;
            }
            k += (size_t)snprintf(buf + k, sizeof(buf) - k, "e+%d", exp10);
            proto_jw_raw(o, buf, k);
            return;
        }
        char *e = buf + sizeof(buf), *pp = e;
        do {
            *--pp = (char)('0' + (int)(u % 10));
            u /= 10;
        } while (u);
        if (v < 0) {
            *--pp = '-';
        }
        proto_jw_raw(o, pp, (size_t)(e - pp));
        return;
    }
    /* Everything else exactly as cJSON 1.7: 15 significant digits when they
     * read back as the same double, else 17. */
    n = snprintf(buf, sizeof(buf), "%1.15g", d);
    double back = 0;
    if (n < 0 || sscanf(buf, "%lg", &back) != 1 || !same_double(back, d)) {
        n = snprintf(buf, sizeof(buf), "%1.17g", d);
    }
    if (n < 0 || (size_t)n >= sizeof(buf)) {
        n = (int)sizeof(buf) - 1; /* cannot happen: %.17g fits 32 bytes */
    }
    proto_jw_raw(o, buf, (size_t)n);
}

static bool put_value(struct proto_jw *o, const cJSON *it, int depth)
{
    if (depth > 1000) { /* cJSON's CJSON_NESTING_LIMIT */
        return false;
    }
    switch (it->type & 0xFF) {
    case cJSON_NULL: proto_jw_raw(o, "null", 4); break;
    case cJSON_False: proto_jw_raw(o, "false", 5); break;
    case cJSON_True: proto_jw_raw(o, "true", 4); break;
    case cJSON_Number: put_number(o, it->valuedouble); break;
    case cJSON_String: proto_jw_str(o, it->valuestring, SIZE_MAX); break;
    case cJSON_Raw:
        if (!it->valuestring) {
            return false; /* cJSON refuses it as well */
        }
        proto_jw_raw(o, it->valuestring, strlen(it->valuestring));
        break;
    case cJSON_Array:
        proto_jw_raw(o, "[", 1);
        for (const cJSON *c = it->child; c; c = c->next) {
            if (!put_value(o, c, depth + 1)) {
                return false;
            }
            if (c->next) {
                proto_jw_raw(o, ",", 1);
            }
        }
        proto_jw_raw(o, "]", 1);
        break;
    case cJSON_Object:
        proto_jw_raw(o, "{", 1);
        for (const cJSON *c = it->child; c; c = c->next) {
            proto_jw_str(o, c->string, SIZE_MAX);
            proto_jw_raw(o, ":", 1);
            if (!put_value(o, c, depth + 1)) {
                return false;
            }
            if (c->next) {
                proto_jw_raw(o, ",", 1);
            }
        }
        proto_jw_raw(o, "}", 1);
        break;
    default:
        return false; /* cJSON_Invalid: cJSON prints nothing */
    }
    /* Past the buffer: stop (a long array would only be counted). */
    return o->len < o->cap;
}

long proto_json_print(const struct cJSON *item, char *buf, size_t cap)
{
    if (!item || !buf || cap == 0) {
        return -1;
    }
    struct proto_jw o = {.p = buf, .cap = cap};
    if (!put_value(&o, item, 0) || !proto_jw_end(&o)) {
        buf[0] = '\0';
        return -1;
    }
    return (long)o.len;
}
