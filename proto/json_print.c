/* json_print.c - compact JSON text of a cJSON tree, byte for byte what
 * cJSON_PrintUnformatted writes, without its costs on the hot path.
 *
 * Why: the hub prints every accepted notification (intake stores and checks
 * the compact text) and the custom data of every push payload. cJSON prints
 * each number with sprintf("%1.15g"), reads it back with sscanf and, when it
 * does not round-trip, prints again with "%1.17g": ~3,000 instructions per
 * number, most of a notification's printing. Integers - nearly every number
 * Tidings sees (ttl, priorities, timestamps, counters) - are printed here
 * with plain integer formatting, which gives the same characters; anything
 * else goes through the same sprintf steps as cJSON. The output must stay
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
#include <string.h>

struct out {
    char *p;
    size_t cap, len; /* cap: bytes for text, the NUL not counted */
    bool full;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->full || n > o->cap - o->len) {
        o->full = true;
        return;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

static void putc1(struct out *o, char c)
{
    if (o->full || o->len >= o->cap) {
        o->full = true;
        return;
    }
    o->p[o->len++] = c;
}

/* As cJSON's print_string_ptr: " \ and \b \f \n \r \t get their short
 * escapes, other bytes below 0x20 \u00xx (lowercase hex), the rest is
 * copied (UTF-8 included, '/' and 0x7f too). NULL prints "". */
static void put_string(struct out *o, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    putc1(o, '"');
    if (s) {
        const unsigned char *p = (const unsigned char *)s, *run = p;
        for (; *p; p++) {
            unsigned char c = *p;
            if (c >= 0x20 && c != '"' && c != '\\') {
                continue;
            }
            put(o, (const char *)run, (size_t)(p - run));
            run = p + 1;
            char e[6] = {'\\', 0, 0, 0, 0, 0};
            size_t n = 2;
            switch (c) {
            case '"': e[1] = '"'; break;
            case '\\': e[1] = '\\'; break;
            case '\b': e[1] = 'b'; break;
            case '\f': e[1] = 'f'; break;
            case '\n': e[1] = 'n'; break;
            case '\r': e[1] = 'r'; break;
            case '\t': e[1] = 't'; break;
            default:
                e[1] = 'u';
                e[2] = '0';
                e[3] = '0';
                e[4] = hex[c >> 4];
                e[5] = hex[c & 15];
                n = 6;
                break;
            }
            put(o, e, n);
        }
        put(o, (const char *)run, (size_t)(p - run));
    }
    putc1(o, '"');
}

/* cJSON's compare_double: equal within the precision of the larger. */
static bool same_double(double a, double b)
{
    double maxv = fabs(a) > fabs(b) ? fabs(a) : fabs(b);
    return fabs(a - b) <= maxv * 2.220446049250313e-16; /* DBL_EPSILON */
}

static void put_number(struct out *o, double d)
{
    char buf[32];
    int n;
    if (isnan(d) || isinf(d)) {
        put(o, "null", 4);
        return;
    }
    /* An integer below 1e15 in magnitude: "%1.15g" writes all its digits
     * without an exponent, which is what integer formatting writes. */
    if (d > -1e15 && d < 1e15 && d == (double)(long long)d) {
        long long v = (long long)d;
        if (v == 0 && signbit(d)) {
            put(o, "-0", 2); /* "%1.15g" of -0.0 */
            return;
        }
        char *e = buf + sizeof(buf), *p = e;
        unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
        do {
            *--p = (char)('0' + (int)(u % 10));
            u /= 10;
        } while (u);
        if (v < 0) {
            *--p = '-';
        }
        put(o, p, (size_t)(e - p));
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
            put(o, buf, k);
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
        put(o, pp, (size_t)(e - pp));
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
        o->full = true;
        return;
    }
    put(o, buf, (size_t)n);
}

static void put_value(struct out *o, const cJSON *it, int depth)
{
    if (depth > 1000 || o->full) { /* cJSON's CJSON_NESTING_LIMIT */
        o->full = true;
        return;
    }
    switch (it->type & 0xFF) {
    case cJSON_NULL: put(o, "null", 4); break;
    case cJSON_False: put(o, "false", 5); break;
    case cJSON_True: put(o, "true", 4); break;
    case cJSON_Number: put_number(o, it->valuedouble); break;
    case cJSON_String: put_string(o, it->valuestring); break;
    case cJSON_Raw:
        if (!it->valuestring) {
            o->full = true; /* cJSON refuses it as well */
            return;
        }
        put(o, it->valuestring, strlen(it->valuestring));
        break;
    case cJSON_Array:
        putc1(o, '[');
        for (const cJSON *c = it->child; c && !o->full; c = c->next) {
            put_value(o, c, depth + 1);
            if (c->next) {
                putc1(o, ',');
            }
        }
        putc1(o, ']');
        break;
    case cJSON_Object:
        putc1(o, '{');
        for (const cJSON *c = it->child; c && !o->full; c = c->next) {
            put_string(o, c->string);
            putc1(o, ':');
            put_value(o, c, depth + 1);
            if (c->next) {
                putc1(o, ',');
            }
        }
        putc1(o, '}');
        break;
    default:
        o->full = true; /* cJSON_Invalid: cJSON prints nothing */
        break;
    }
}

long proto_json_print(const struct cJSON *item, char *buf, size_t cap)
{
    if (!item || !buf || cap == 0) {
        return -1;
    }
    struct out o = {.p = buf, .cap = cap - 1};
    put_value(&o, item, 0);
    if (o.full) {
        buf[0] = '\0';
        return -1;
    }
    buf[o.len] = '\0';
    return (long)o.len;
}
