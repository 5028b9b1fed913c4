/* Allocation-free JSON checking and string output; see jsonlite.h. */
#include "jsonlite.h"

#include <stdbool.h>
#include <string.h>

#define JSONLITE_MAX_DEPTH 64

typedef struct jcur {
    const unsigned char *p;
    const unsigned char *end;
} jcur;

static void jl_ws(jcur *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) {
        c->p++;
    }
}

/*
 * Length of the valid UTF-8 sequence at p (1..4), or 0 if the bytes there
 * are not one (overlong forms, surrogates and values above U+10FFFF are
 * rejected, as RFC 3629 requires).
 */
static size_t jl_utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned char b0 = p[0];
    size_t len;
    unsigned char lo = 0x80;
    unsigned char hi = 0xBF;
    size_t i;

    if (b0 < 0x80) {
        return 1;
    }
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        len = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        len = 3;
        if (b0 == 0xE0) {
            lo = 0xA0;
        } else if (b0 == 0xED) {
            hi = 0x9F;
        }
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        len = 4;
        if (b0 == 0xF0) {
            lo = 0x90;
        } else if (b0 == 0xF4) {
            hi = 0x8F;
        }
    } else {
        return 0;
    }
    if ((size_t)(end - p) < len) {
        return 0;
    }
    if (p[1] < lo || p[1] > hi) {
        return 0;
    }
    for (i = 2; i < len; i++) {
        if (p[i] < 0x80 || p[i] > 0xBF) {
            return 0;
        }
    }
    return len;
}

static bool jl_hex4(jcur *c)
{
    int i;

    if (c->end - c->p < 4) {
        return false;
    }
    for (i = 0; i < 4; i++) {
        unsigned char h = c->p[i];
        if (!((h >= '0' && h <= '9') || (h >= 'a' && h <= 'f') || (h >= 'A' && h <= 'F'))) {
            return false;
        }
    }
    c->p += 4;
    return true;
}

/*
 * Consumes a string starting at the opening quote. On success sets
 * *raw and *raw_len to the bytes between the quotes and *escaped to whether
 * any escape occurred (so callers can compare keys without decoding).
 */
static bool jl_string(jcur *c, const unsigned char **raw, size_t *raw_len, bool *escaped)
{
    const unsigned char *start;

    if (c->p >= c->end || *c->p != '"') {
        return false;
    }
    c->p++;
    start = c->p;
    *escaped = false;
    while (c->p < c->end) {
        unsigned char ch = *c->p;
        if (ch == '"') {
            *raw = start;
            *raw_len = (size_t)(c->p - start);
            c->p++;
            return true;
        }
        if (ch < 0x20) {
            return false;
        }
        if (ch == '\\') {
            *escaped = true;
            c->p++;
            if (c->p >= c->end) {
                return false;
            }
            ch = *c->p++;
            if (ch == 'u') {
                if (!jl_hex4(c)) {
                    return false;
                }
            } else if (!strchr("\"\\/bfnrt", ch) || ch == '\0') {
                return false;
            }
            continue;
        }
        {
            size_t l = jl_utf8_len(c->p, c->end);
            if (l == 0) {
                return false;
            }
            c->p += l;
        }
    }
    return false;
}

static bool jl_digits(jcur *c)
{
    const unsigned char *s = c->p;

    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        c->p++;
    }
    return c->p > s;
}

static bool jl_number(jcur *c)
{
    if (c->p < c->end && *c->p == '-') {
        c->p++;
    }
    if (c->p < c->end && *c->p == '0') {
        c->p++;
    } else if (!jl_digits(c)) {
        return false;
    }
    if (c->p < c->end && *c->p == '.') {
        c->p++;
        if (!jl_digits(c)) {
            return false;
        }
    }
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
        c->p++;
        if (c->p < c->end && (*c->p == '+' || *c->p == '-')) {
            c->p++;
        }
        if (!jl_digits(c)) {
            return false;
        }
    }
    return true;
}

static bool jl_literal(jcur *c, const char *lit)
{
    size_t n = strlen(lit);

    if ((size_t)(c->end - c->p) < n || memcmp(c->p, lit, n) != 0) {
        return false;
    }
    c->p += n;
    return true;
}

static bool jl_value(jcur *c, int depth);

/*
 * Consumes an object. When aps_is_object is not NULL it is set to whether
 * a member named "aps" had an object value (the last such member counts,
 * as in most parsers).
 */
static bool jl_object(jcur *c, int depth, bool *aps_is_object)
{
    if (depth > JSONLITE_MAX_DEPTH) {
        return false;
    }
    c->p++; /* '{' */
    jl_ws(c);
    if (c->p < c->end && *c->p == '}') {
        c->p++;
        return true;
    }
    for (;;) {
        const unsigned char *key;
        size_t key_len;
        bool escaped;
        bool is_aps;

        jl_ws(c);
        if (!jl_string(c, &key, &key_len, &escaped)) {
            return false;
        }
        is_aps = !escaped && key_len == 3 && memcmp(key, "aps", 3) == 0;
        jl_ws(c);
        if (c->p >= c->end || *c->p != ':') {
            return false;
        }
        c->p++;
        jl_ws(c);
        if (is_aps && aps_is_object != NULL) {
            *aps_is_object = c->p < c->end && *c->p == '{';
        }
        if (!jl_value(c, depth + 1)) {
            return false;
        }
        jl_ws(c);
        if (c->p >= c->end) {
            return false;
        }
        if (*c->p == ',') {
            c->p++;
            continue;
        }
        if (*c->p == '}') {
            c->p++;
            return true;
        }
        return false;
    }
}

static bool jl_array(jcur *c, int depth)
{
    if (depth > JSONLITE_MAX_DEPTH) {
        return false;
    }
    c->p++; /* '[' */
    jl_ws(c);
    if (c->p < c->end && *c->p == ']') {
        c->p++;
        return true;
    }
    for (;;) {
        jl_ws(c);
        if (!jl_value(c, depth + 1)) {
            return false;
        }
        jl_ws(c);
        if (c->p >= c->end) {
            return false;
        }
        if (*c->p == ',') {
            c->p++;
            continue;
        }
        if (*c->p == ']') {
            c->p++;
            return true;
        }
        return false;
    }
}

static bool jl_value(jcur *c, int depth)
{
    const unsigned char *raw;
    size_t raw_len;
    bool escaped;

    if (c->p >= c->end) {
        return false;
    }
    switch (*c->p) {
    case '{':
        return jl_object(c, depth, NULL);
    case '[':
        return jl_array(c, depth);
    case '"':
        return jl_string(c, &raw, &raw_len, &escaped);
    case 't':
        return jl_literal(c, "true");
    case 'f':
        return jl_literal(c, "false");
    case 'n':
        return jl_literal(c, "null");
    default:
        return jl_number(c);
    }
}

int jsonlite_check_apns_payload(const char *buf, size_t n)
{
    jcur c = {(const unsigned char *)buf, (const unsigned char *)buf + n};
    bool aps_is_object = false;
    bool top_is_object;

    jl_ws(&c);
    top_is_object = c.p < c.end && *c.p == '{';
    if (top_is_object) {
        if (!jl_object(&c, 1, &aps_is_object)) {
            return JSONLITE_NOT_JSON;
        }
    } else if (!jl_value(&c, 1)) {
        return JSONLITE_NOT_JSON;
    }
    jl_ws(&c);
    if (c.p != c.end) {
        return JSONLITE_NOT_JSON;
    }
    return top_is_object && aps_is_object ? JSONLITE_OK : JSONLITE_NO_APS;
}

void jsonlite_put_string(FILE *f, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    const unsigned char *end = p + n;
    const unsigned char *run = p;

    putc_unlocked('"', f);
    while (p < end) {
        unsigned char ch = *p;
        size_t l;

        if (ch >= 0x20 && ch != '"' && ch != '\\' && ch < 0x80) {
            p++;
            continue;
        }
        if (ch >= 0x80) {
            l = jl_utf8_len(p, end);
            if (l > 0) {
                p += l;
                continue;
            }
        }
        /* Flush the plain run, then write this byte escaped. */
        fwrite(run, 1, (size_t)(p - run), f);
        if (ch == '"' || ch == '\\') {
            putc_unlocked('\\', f);
            putc_unlocked((int)ch, f);
        } else if (ch == '\n') {
            fputs("\\n", f);
        } else if (ch == '\r') {
            fputs("\\r", f);
        } else if (ch == '\t') {
            fputs("\\t", f);
        } else if (ch < 0x20) {
            fputs("\\u00", f);
            putc_unlocked(hex[ch >> 4], f);
            putc_unlocked(hex[ch & 15], f);
        } else {
            fputs("\\ufffd", f);
        }
        p++;
        run = p;
    }
    fwrite(run, 1, (size_t)(p - run), f);
    putc_unlocked('"', f);
}
