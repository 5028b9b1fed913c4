/*
 * proto.c - the notification: reason tables, strict JSON intake, field
 * validation, serialization and ids.
 *
 * Validation runs in a fixed order so the one reported rejection is
 * predictable: size, UTF-8, JSON syntax, top-level type, duplicate keys,
 * string hygiene (\u0000, non-finite numbers), then each known field in
 * table order (id, to, category, priority, title, body, data, channels, ttl,
 * deliver_at/tz, collapse_key, template, vars, locale), then "no content",
 * then the serialized size. Nothing is applied before all checks passed.
 */
#include "proto.h"
#include "proto_internal.h"

#include "error.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- reason, priority and channel tables ------------------------------ */

struct reason_row {
    const char *code;
    const char *msg;
};

static const struct reason_row reasons[] = {
#define PROTO_X_ROW(e, code, msg) {code, msg},
    PROTO_REASON_TABLE(PROTO_X_ROW)
#undef PROTO_X_ROW
};

const char *proto_reason_code(enum proto_reason r)
{
    if ((int)r < 0 || (int)r >= PROTO_REASON_COUNT) {
        return "unknown";
    }
    return reasons[r].code;
}

const char *proto_reason_message(enum proto_reason r)
{
    if ((int)r < 0 || (int)r >= PROTO_REASON_COUNT) {
        return "unknown reason";
    }
    return reasons[r].msg;
}

bool proto_reason_from_code(const char *code, enum proto_reason *out)
{
    if (!code) {
        return false;
    }
    for (int i = 0; i < PROTO_REASON_COUNT; i++) {
        if (strcmp(reasons[i].code, code) == 0) {
            if (out) {
                *out = (enum proto_reason)i;
            }
            return true;
        }
    }
    return false;
}

static const char *const priority_names[] = {"low", "normal", "high", "critical"};
#define N_PRIORITIES (sizeof(priority_names) / sizeof(priority_names[0]))

const char *proto_priority_name(enum proto_priority p)
{
    if ((unsigned)p >= N_PRIORITIES) {
        return "unknown";
    }
    return priority_names[p];
}

struct channel_row {
    const char *name;
    enum proto_channel bit;
};

static const struct channel_row channel_rows[] = {
    {"push", PROTO_CH_PUSH},       {"sms", PROTO_CH_SMS},     {"email", PROTO_CH_EMAIL},
    {"desktop", PROTO_CH_DESKTOP}, {"local", PROTO_CH_LOCAL},
};
#define N_CHANNELS (sizeof(channel_rows) / sizeof(channel_rows[0]))

const char *proto_channel_name(enum proto_channel c)
{
    for (size_t i = 0; i < N_CHANNELS; i++) {
        if (channel_rows[i].bit == c) {
            return channel_rows[i].name;
        }
    }
    return "unknown";
}

/* --- errors ----------------------------------------------------------- */

void proto_copy_trunc(char *dst, size_t dstlen, const char *src)
{
    size_t n;

    if (!dst || dstlen == 0) {
        return;
    }
    if (!src) {
        dst[0] = '\0';
        return;
    }
    n = strnlen(src, dstlen);
    if (n >= dstlen) {
        n = dstlen - 1;
        /* Step back over continuation bytes so no character is cut in two. */
        while (n > 0 && ((unsigned char)src[n] & 0xC0u) == 0x80u) {
            n--;
        }
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Cut an incomplete UTF-8 character off the end of s (left there by a
 * bounded snprintf), so error fields and details stay valid text. */
static void trim_partial_utf8(char *s)
{
    size_t n = strlen(s), p, want;
    unsigned char lead;

    if (n == 0) {
        return;
    }
    p = n - 1;
    while (p > 0 && ((unsigned char)s[p] & 0xC0u) == 0x80u && n - p < 4) {
        p--;
    }
    lead = (unsigned char)s[p];
    if (lead < 0x80) {
        return;
    }
    want = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    if (n - p < want) {
        s[p] = '\0';
    }
}

void proto_err_set(struct proto_error *err, enum proto_reason r, const char *field, const char *fmt,
                   ...)
{
    va_list ap;

    if (!err) {
        return;
    }
    err->reason = r;
    proto_copy_trunc(err->field, sizeof(err->field), field ? field : "");
    trim_partial_utf8(err->field);
    err->detail[0] = '\0';
    if (fmt) {
        va_start(ap, fmt);
        vsnprintf(err->detail, sizeof(err->detail), fmt, ap);
        va_end(ap);
        trim_partial_utf8(err->detail);
    }
}

/* --- UTF-8 ------------------------------------------------------------ */

bool proto_utf8_valid(const unsigned char *s, size_t len, size_t *bad_off)
{
    size_t i = 0;

    while (i < len) {
        unsigned char c = s[i];
        size_t need;
        unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the 2nd byte */

        /* Mostly ASCII: a word at a time. */
        if (len - i >= 8 && !proto_word_non_ascii(s + i)) {
            i += 8;
            continue;
        }
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) {
                lo = 0xA0; /* below is an overlong 2-byte value */
            } else if (c == 0xED) {
                hi = 0x9F; /* above are UTF-16 surrogates */
            }
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) {
                lo = 0x90; /* overlong */
            } else if (c == 0xF4) {
                hi = 0x8F; /* above U+10FFFF */
            }
        } else {
            /* 0x80..0xC1 (stray continuation, overlong lead), 0xF5..0xFF */
            if (bad_off) {
                *bad_off = i;
            }
            return false;
        }
        if (len - i <= need || s[i + 1] < lo || s[i + 1] > hi) {
            if (bad_off) {
                *bad_off = i;
            }
            return false;
        }
        for (size_t k = 2; k <= need; k++) {
            if ((s[i + k] & 0xC0u) != 0x80u) {
                if (bad_off) {
                    *bad_off = i;
                }
                return false;
            }
        }
        i += need + 1;
    }
    return true;
}

/* --- strict JSON syntax ----------------------------------------------- */

/*
 * cJSON is lenient: it accepts "01", "1.", raw control characters in strings
 * and any byte <= 0x20 as whitespace, silently truncates at "\u0000" and
 * reads "\uZZZZ" as U+0000. This scanner enforces RFC 8259 before cJSON runs,
 * so every producer's JSON library agrees with us on what is valid, and so a
 * cJSON failure after a clean scan can only mean out of memory.
 */
struct json_scan {
    const unsigned char *s;
    size_t len, pos;
    size_t nul_escapes; /* "\u0000" escapes seen inside strings */
    const char *why;    /* first syntax error */
};

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static void scan_ws(struct json_scan *js)
{
    while (js->pos < js->len) {
        unsigned char c = js->s[js->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            break;
        }
        js->pos++;
    }
}

static bool scan_hex4(const struct json_scan *js, size_t at, unsigned *out)
{
    unsigned v = 0;

    if (at > js->len || js->len - at < 4) {
        return false;
    }
    for (size_t i = 0; i < 4; i++) {
        unsigned char c = js->s[at + i];
        v <<= 4;
        if (c >= '0' && c <= '9') {
            v |= (unsigned)(c - '0');
        } else if (c >= 'a' && c <= 'f') {
            v |= (unsigned)(c - 'a' + 10);
        } else if (c >= 'A' && c <= 'F') {
            v |= (unsigned)(c - 'A' + 10);
        } else {
            return false;
        }
    }
    *out = v;
    return true;
}

/* At an opening quote; leaves pos past the closing quote. */
static bool scan_string(struct json_scan *js)
{
    size_t i = js->pos + 1;

    while (i < js->len) {
        unsigned char c = 0;
        unsigned cp, lo;

        /* Plain text (no quote, backslash or control byte): byte by byte
         * for up to 8 bytes (most strings end there), then a word at a
         * time while it lasts. */
        size_t stop = js->len - i > 8 ? i + 8 : js->len;
        while (i < stop && !proto_json_special[c = js->s[i]]) {
            i++;
        }
        if (i == stop) {
            while (js->len - i >= 8 && !proto_word_special(js->s + i)) {
                i += 8;
            }
            continue;
        }
        if (c == '"') {
            js->pos = i + 1;
            return true;
        }
        if (c < 0x20) {
            js->why = "control character in string";
            js->pos = i;
            return false;
        }
        /* A backslash. */
        if (i + 1 >= js->len) {
            break;
        }
        switch (js->s[i + 1]) {
        case '"':
        case '\\':
        case '/':
        case 'b':
        case 'f':
        case 'n':
        case 'r':
        case 't':
            i += 2;
            break;
        case 'u':
            if (!scan_hex4(js, i + 2, &cp)) {
                js->why = "bad \\u escape";
                js->pos = i;
                return false;
            }
            i += 6;
            if (cp == 0) {
                js->nul_escapes++;
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                js->why = "lone low surrogate";
                js->pos = i - 6;
                return false;
            } else if (cp >= 0xD800 && cp <= 0xDBFF) {
                /* cJSON rejects an unpaired high surrogate: so do we. */
                if (i + 1 >= js->len || js->s[i] != '\\' || js->s[i + 1] != 'u' ||
                    !scan_hex4(js, i + 2, &lo) || lo < 0xDC00 || lo > 0xDFFF) {
                    js->why = "unpaired surrogate";
                    js->pos = i - 6;
                    return false;
                }
                i += 6;
            }
            break;
        default:
            js->why = "bad escape";
            js->pos = i;
            return false;
        }
    }
    js->why = "unterminated string";
    js->pos = js->len;
    return false;
}

static bool scan_number(struct json_scan *js)
{
    size_t i = js->pos;
    const unsigned char *s = js->s;

    if (i < js->len && s[i] == '-') {
        i++;
    }
    if (i < js->len && s[i] == '0') {
        i++;
        if (i < js->len && is_digit(s[i])) {
            js->why = "leading zero in number";
            js->pos = i;
            return false;
        }
    } else if (i < js->len && s[i] >= '1' && s[i] <= '9') {
        while (i < js->len && is_digit(s[i])) {
            i++;
        }
    } else {
        goto bad;
    }
    if (i < js->len && s[i] == '.') {
        i++;
        if (i >= js->len || !is_digit(s[i])) {
            goto bad;
        }
        while (i < js->len && is_digit(s[i])) {
            i++;
        }
    }
    if (i < js->len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < js->len && (s[i] == '+' || s[i] == '-')) {
            i++;
        }
        if (i >= js->len || !is_digit(s[i])) {
            goto bad;
        }
        while (i < js->len && is_digit(s[i])) {
            i++;
        }
    }
    js->pos = i;
    return true;
bad:
    js->why = "bad number";
    js->pos = i;
    return false;
}

static bool scan_literal(struct json_scan *js, const char *lit)
{
    size_t n = strlen(lit);

    if (js->len - js->pos < n || memcmp(js->s + js->pos, lit, n) != 0) {
        js->why = "unexpected character";
        return false;
    }
    js->pos += n;
    return true;
}

/* A scalar value, or false for '{' / '[' which the caller handles. */
static bool scan_scalar(struct json_scan *js)
{
    unsigned char c;

    if (js->pos >= js->len) {
        js->why = "unexpected end";
        return false;
    }
    c = js->s[js->pos];
    switch (c) {
    case '"':
        return scan_string(js);
    case 't':
        return scan_literal(js, "true");
    case 'f':
        return scan_literal(js, "false");
    case 'n':
        return scan_literal(js, "null");
    default:
        if (c == '-' || is_digit(c)) {
            return scan_number(js);
        }
        js->why = "unexpected character";
        return false;
    }
}

/* At a key (after '{' or ','): key, ':' and whitespace up to the value. */
static bool scan_key(struct json_scan *js)
{
    scan_ws(js);
    if (js->pos >= js->len || js->s[js->pos] != '"') {
        js->why = "expected a string key";
        return false;
    }
    if (!scan_string(js)) {
        return false;
    }
    scan_ws(js);
    if (js->pos >= js->len || js->s[js->pos] != ':') {
        js->why = "expected ':'";
        return false;
    }
    js->pos++;
    scan_ws(js);
    return true;
}

/* Iterative so a hostile "[[[[..." cannot recurse: one bit per open level
 * (1 = object, 0 = array). */
static bool scan_json(struct json_scan *js, int max_depth)
{
    unsigned char stack[(PROTO_MAX_DEPTH + 2 + 7) / 8] = {0};
    int depth = 0;

    if (max_depth > PROTO_MAX_DEPTH + 2) {
        max_depth = PROTO_MAX_DEPTH + 2;
    }
    scan_ws(js);
    for (;;) {
        /* Expecting a value. */
        if (js->pos < js->len && (js->s[js->pos] == '{' || js->s[js->pos] == '[')) {
            bool obj = js->s[js->pos] == '{';
            if (depth >= max_depth) {
                js->why = "nested too deeply";
                return false;
            }
            if (obj) {
                stack[depth / 8] = (unsigned char)(stack[depth / 8] | (1u << (depth % 8)));
            } else {
                stack[depth / 8] = (unsigned char)(stack[depth / 8] & ~(1u << (depth % 8)));
            }
            depth++;
            js->pos++;
            scan_ws(js);
            if (js->pos < js->len && js->s[js->pos] == (obj ? '}' : ']')) {
                js->pos++;
                depth--;
                /* fall through to "after a value" */
            } else if (obj) {
                if (!scan_key(js)) {
                    return false;
                }
                continue;
            } else {
                continue;
            }
        } else if (!scan_scalar(js)) {
            return false;
        }
        /* After a value: close containers or move to the next member. */
        for (;;) {
            bool obj;

            scan_ws(js);
            if (depth == 0) {
                if (js->pos != js->len) {
                    js->why = "trailing characters";
                    return false;
                }
                return true;
            }
            obj = (stack[(depth - 1) / 8] >> ((depth - 1) % 8)) & 1u;
            if (js->pos >= js->len) {
                js->why = "unexpected end";
                return false;
            }
            if (js->s[js->pos] == ',') {
                js->pos++;
                if (obj) {
                    if (!scan_key(js)) {
                        return false;
                    }
                } else {
                    scan_ws(js);
                }
                break;
            }
            if (js->s[js->pos] == (obj ? '}' : ']')) {
                js->pos++;
                depth--;
                continue;
            }
            js->why = obj ? "expected ',' or '}'" : "expected ',' or ']'";
            return false;
        }
    }
}

/* Copy of buf with every "\u0000" inside a string replaced by the sentinel
 * byte. Only called when the scan found some; buf is valid JSON then. */
static char *replace_nul_escapes(const char *buf, size_t len, size_t *out_len)
{
    char *out = malloc(len);
    size_t o = 0;
    bool in_str = false;

    if (!out) {
        return NULL;
    }
    for (size_t i = 0; i < len; i++) {
        char c = buf[i];
        if (!in_str) {
            in_str = c == '"';
            out[o++] = c;
            continue;
        }
        if (c == '"') {
            in_str = false;
            out[o++] = c;
        } else if (c == '\\') {
            if (buf[i + 1] == 'u' && memcmp(buf + i + 2, "0000", 4) == 0) {
                out[o++] = (char)PROTO_NUL_SENTINEL;
                i += 5;
            } else {
                /* any escape: copy both bytes so "\\" or "\"" is not misread */
                out[o++] = c;
                out[o++] = buf[++i];
            }
        } else {
            out[o++] = c;
        }
    }
    *out_len = o;
    return out;
}

int proto_json_parse(const char *buf, size_t len, int max_depth, cJSON **out,
                     struct proto_error *err)
{
    struct json_scan js = {.s = (const unsigned char *)buf, .len = len};
    size_t bad = 0, plen = len;
    const char *p = buf;
    char *copy = NULL;
    const char *end = NULL;
    cJSON *root;

    *out = NULL;
    if (!buf && len > 0) {
        proto_err_set(err, PROTO_R_MALFORMED_JSON, NULL, "no input");
        return TDG_EINVAL_INPUT;
    }
    if (!proto_utf8_valid(js.s, len, &bad)) {
        proto_err_set(err, PROTO_R_BAD_UTF8, NULL, "invalid UTF-8 at byte %zu", bad);
        return TDG_EINVAL_INPUT;
    }
    /* RFC 8259 lets a parser ignore a byte order mark; cJSON only skips one
     * in inputs longer than 4 bytes, so we drop it before cJSON sees it. */
    if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0) {
        js.s += 3;
        js.len -= 3;
        p += 3;
        plen -= 3;
    }
    if (js.len == 0) {
        proto_err_set(err, PROTO_R_MALFORMED_JSON, NULL, "empty input");
        return TDG_EINVAL_INPUT;
    }
    if (!scan_json(&js, max_depth)) {
        proto_err_set(err, PROTO_R_MALFORMED_JSON, NULL, "%s at byte %zu", js.why,
                      js.pos + (size_t)(p - buf));
        return TDG_EINVAL_INPUT;
    }
    if (js.nul_escapes > 0) {
        copy = replace_nul_escapes(p, plen, &plen);
        if (!copy) {
            return -ENOMEM;
        }
        p = copy;
    }
    root = cJSON_ParseWithLengthOpts(p, plen, &end, 0);
    free(copy);
    if (!root) {
        /* The scan accepted the text, so cJSON failed to allocate. */
        return -ENOMEM;
    }
    *out = root;
    return 0;
}

/* --- duplicate keys --------------------------------------------------- */

static int cmp_key_ptr(const void *a, const void *b)
{
    const cJSON *const *x = a;
    const cJSON *const *y = b;
    return strcmp((*x)->string, (*y)->string);
}

static int dup_found(const char *prefix, const char *key, struct proto_error *err)
{
    char field[sizeof(err->field)];

    snprintf(field, sizeof(field), "%s%s", prefix, key);
    proto_err_set(err, PROTO_R_DUPLICATE_KEY, field, "key given twice");
    return TDG_EINVAL_INPUT;
}

int proto_check_dup_keys(const cJSON *obj, const char *prefix, struct proto_error *err)
{
    const cJSON *a, *b;
    size_t n = 0, i;
    const cJSON **v;
    int rc = 0;

    for (a = obj->child; a; a = a->next) {
        if (!a->string) {
            proto_err_set(err, PROTO_R_MALFORMED_JSON, prefix, "object member without a key");
            return TDG_EINVAL_INPUT;
        }
        n++;
    }
    /* Small objects (every real notification): pairwise is fastest. Large
     * ones (a hostile 4 KB of keys) sort, so the cost stays n log n. */
    if (n <= 16) {
        for (a = obj->child; a; a = a->next) {
            for (b = a->next; b; b = b->next) {
                if (strcmp(a->string, b->string) == 0) {
                    return dup_found(prefix, a->string, err);
                }
            }
        }
        return 0;
    }
    v = malloc(n * sizeof(*v));
    if (!v) {
        return -ENOMEM;
    }
    for (i = 0, a = obj->child; a; a = a->next) {
        v[i++] = a;
    }
    qsort(v, n, sizeof(*v), cmp_key_ptr);
    for (i = 1; i < n; i++) {
        if (strcmp(v[i - 1]->string, v[i]->string) == 0) {
            rc = dup_found(prefix, v[i]->string, err);
            break;
        }
    }
    free(v);
    return rc;
}

/* --- string hygiene over the whole tree ------------------------------- */

/*
 * Every string and key anywhere in the tree (unknown fields included) must
 * be valid UTF-8 without U+0000, and every number finite. Parsed input has
 * already passed the raw UTF-8 check; a tree built by a caller has not.
 * "top" is the top-level key the item lives under, for the error's field.
 */
static int check_text(const char *s, const char *top, const char *what, struct proto_error *err)
{
    const char *p = s;
    size_t len, bad = 0;

    /* ASCII (keys, ids, most values) ends here, without strlen and the
     * full check: no byte of it can be invalid or the sentinel. */
    while ((unsigned char)*p - 1u < 0x7Fu) {
        p++;
    }
    if (*p == '\0') {
        return 0;
    }
    len = strlen(s);
    if (!proto_utf8_valid((const unsigned char *)s, len, &bad)) {
        if ((unsigned char)s[bad] == PROTO_NUL_SENTINEL) {
            proto_err_set(err, PROTO_R_BAD_VALUE, top, "%s contains \\u0000", what);
        } else {
            proto_err_set(err, PROTO_R_BAD_UTF8, top, "%s is not valid UTF-8", what);
        }
        return TDG_EINVAL_INPUT;
    }
    return 0;
}

static int check_tree(const cJSON *item, const char *top, int depth, struct proto_error *err)
{
    int rc;

    if (depth > PROTO_MAX_DEPTH) {
        proto_err_set(err, PROTO_R_MALFORMED_JSON, top, "nested deeper than %d levels",
                      PROTO_MAX_DEPTH);
        return TDG_EINVAL_INPUT;
    }
    for (; item; item = item->next) {
        const char *field = top ? top : item->string;

        if (item->string) {
            rc = check_text(item->string, top ? top : "", "key", err);
            if (rc) {
                return rc;
            }
        }
        if (cJSON_IsString(item)) {
            if (!item->valuestring) {
                proto_err_set(err, PROTO_R_WRONG_TYPE, field, "string without a value");
                return TDG_EINVAL_INPUT;
            }
            rc = check_text(item->valuestring, field, "value", err);
            if (rc) {
                return rc;
            }
        } else if (cJSON_IsNumber(item)) {
            if (!isfinite(item->valuedouble)) {
                proto_err_set(err, PROTO_R_OUT_OF_RANGE, field, "number is not finite");
                return TDG_EINVAL_INPUT;
            }
        } else if (cJSON_IsArray(item) || cJSON_IsObject(item)) {
            rc = check_tree(item->child, field, depth + 1, err);
            if (rc) {
                return rc;
            }
        } else if (!cJSON_IsBool(item) && !cJSON_IsNull(item)) {
            /* cJSON_Raw or garbage: cannot be checked, never produced by parsing */
            proto_err_set(err, PROTO_R_WRONG_TYPE, field, "not a JSON value");
            return TDG_EINVAL_INPUT;
        }
    }
    return 0;
}

/* --- field helpers ---------------------------------------------------- */

#define CS_LOWER 1u
#define CS_UPPER 2u
#define CS_DIGIT 4u

/* Is every byte of s in the classes or in extra? ASCII only, locale-free. */
static bool charset_ok(const char *s, unsigned classes, const char *extra)
{
    for (; *s; s++) {
        char c = *s;
        if ((classes & CS_LOWER) && c >= 'a' && c <= 'z') {
            continue;
        }
        if ((classes & CS_UPPER) && c >= 'A' && c <= 'Z') {
            continue;
        }
        if ((classes & CS_DIGIT) && c >= '0' && c <= '9') {
            continue;
        }
        if (c != '\0' && strchr(extra, c)) {
            continue;
        }
        return false;
    }
    return true;
}

const char *proto_json_type(const cJSON *j)
{
    if (cJSON_IsString(j)) {
        return "string";
    }
    if (cJSON_IsNumber(j)) {
        return "number";
    }
    if (cJSON_IsBool(j)) {
        return "boolean";
    }
    if (cJSON_IsNull(j)) {
        return "null";
    }
    if (cJSON_IsArray(j)) {
        return "array";
    }
    if (cJSON_IsObject(j)) {
        return "object";
    }
    return "invalid";
}

static int wrong_type(const cJSON *j, const char *field, const char *want, struct proto_error *err)
{
    proto_err_set(err, PROTO_R_WRONG_TYPE, field, "expected %s, got %s", want, proto_json_type(j));
    return TDG_EINVAL_INPUT;
}

static int too_long(const char *field, size_t max, size_t got, struct proto_error *err)
{
    proto_err_set(err, PROTO_R_TOO_LONG, field, "%zu bytes max, got %zu", max, got);
    return TDG_EINVAL_INPUT;
}

/*
 * An optional string member j (NULL: absent) named key. Returns 0 with *out
 * NULL when absent, 0 with *out set when present, non-empty and at most max
 * bytes (max 0: no limit), or TDG_EINVAL_INPUT (wrong_type, empty,
 * too_long).
 */
static int get_str(const cJSON *j, const char *key, size_t max, const char **out,
                   struct proto_error *err)
{
    *out = NULL;
    if (!j) {
        return 0;
    }
    if (!cJSON_IsString(j)) {
        return wrong_type(j, key, "string", err);
    }
    if (j->valuestring[0] == '\0') {
        proto_err_set(err, PROTO_R_EMPTY, key, "must not be empty");
        return TDG_EINVAL_INPUT;
    }
    if (max && strnlen(j->valuestring, max + 1) > max) {
        return too_long(key, max, strlen(j->valuestring), err);
    }
    *out = j->valuestring;
    return 0;
}

/* get_str plus a character set; bad characters are bad_value. */
static int get_token(const cJSON *j, const char *key, size_t max, unsigned classes,
                     const char *extra, const char *allowed, const char **out,
                     struct proto_error *err)
{
    int rc = get_str(j, key, max, out, err);

    if (rc == 0 && *out && !charset_ok(*out, classes, extra)) {
        *out = NULL;
        proto_err_set(err, PROTO_R_BAD_VALUE, key, "allowed characters: %s", allowed);
        return TDG_EINVAL_INPUT;
    }
    return rc;
}

bool proto_id_valid(const char *id)
{
    size_t len;

    if (!id) {
        return false;
    }
    len = strnlen(id, PROTO_ID_MAX + 1);
    return len >= 1 && len <= PROTO_ID_MAX &&
           charset_ok(id, CS_LOWER | CS_UPPER | CS_DIGIT, "._:-");
}

/* --- the fields ------------------------------------------------------- */

static int check_to(const cJSON *j, struct notification *n, struct proto_error *err)
{
    const char *s, *x;
    size_t xlen;

    if (!j) {
        proto_err_set(err, PROTO_R_MISSING_FIELD, "to", "required");
        return TDG_EINVAL_INPUT;
    }
    if (!cJSON_IsString(j)) {
        return wrong_type(j, "to", "string", err);
    }
    s = j->valuestring;
    if (s[0] == '\0') {
        proto_err_set(err, PROTO_R_EMPTY, "to", "must not be empty");
        return TDG_EINVAL_INPUT;
    }
    if (strcmp(s, "local") == 0) {
        n->to = s;
        n->to_kind = PROTO_TO_LOCAL;
        n->to_id = "";
        return 0;
    }
    if (strncmp(s, "user:", 5) == 0) {
        n->to_kind = PROTO_TO_USER;
        x = s + 5;
    } else if (strncmp(s, "group:", 6) == 0) {
        n->to_kind = PROTO_TO_GROUP;
        x = s + 6;
    } else {
        proto_err_set(err, PROTO_R_BAD_RECIPIENT, "to", "expected user:<id>, group:<id> or local");
        return TDG_EINVAL_INPUT;
    }
    xlen = strlen(x);
    if (xlen == 0) {
        proto_err_set(err, PROTO_R_BAD_RECIPIENT, "to", "recipient id is empty");
        return TDG_EINVAL_INPUT;
    }
    /* The id part is bounded so "group:" + id fits PROTO_TO_MAX either way. */
    if (xlen > PROTO_TO_MAX - 6) {
        return too_long("to", PROTO_TO_MAX - 6, xlen, err);
    }
    if (!charset_ok(x, CS_LOWER | CS_UPPER | CS_DIGIT, "._@+-")) {
        proto_err_set(err, PROTO_R_BAD_RECIPIENT, "to",
                      "recipient id allows A-Z a-z 0-9 . _ @ + -");
        return TDG_EINVAL_INPUT;
    }
    n->to = s;
    n->to_id = x;
    return 0;
}

static int check_priority(const cJSON *j, struct notification *n, struct proto_error *err)
{
    const char *s;
    int rc = get_str(j, "priority", 0, &s, err);

    n->priority = PROTO_PRIO_NORMAL;
    if (rc || !s) {
        return rc;
    }
    for (size_t i = 0; i < N_PRIORITIES; i++) {
        if (strcmp(s, priority_names[i]) == 0) {
            n->priority = (enum proto_priority)i;
            return 0;
        }
    }
    proto_err_set(err, PROTO_R_BAD_VALUE, "priority", "expected low, normal, high or critical");
    return TDG_EINVAL_INPUT;
}

/* title / body: any string, "" allowed (counts as absent). */
static int check_text_field(const cJSON *j, const char *key, const char **out,
                            struct proto_error *err)
{
    *out = NULL;
    if (!j) {
        return 0;
    }
    if (!cJSON_IsString(j)) {
        return wrong_type(j, key, "string", err);
    }
    if (j->valuestring[0] != '\0') {
        *out = j->valuestring;
    }
    return 0;
}

/* Keys the push providers own: APNs reserves "aps"; FCM rejects data keys
 * "from", "notification", "message_type", "collapse_key" and any starting
 * with "google." or "gcm.". Rejecting them here beats a provider 400 later. */
static bool data_key_reserved(const char *k)
{
    static const char *const exact[] = {"aps", "from", "notification", "message_type",
                                        "collapse_key"};

    for (size_t i = 0; i < sizeof(exact) / sizeof(exact[0]); i++) {
        if (strcmp(k, exact[i]) == 0) {
            return true;
        }
    }
    return strncmp(k, "google.", 7) == 0 || strncmp(k, "gcm.", 4) == 0;
}

/* snprintf(dst, cap, "data.%s", key), cap > 5: the field of an error. */
static void data_field(char *dst, size_t cap, const char *key)
{
    size_t k = strnlen(key, cap - 6);
    memcpy(dst, "data.", 5);
    memcpy(dst + 5, key, k);
    dst[5 + k] = '\0';
}

static int check_data(const cJSON *d, struct notification *n, struct proto_error *err)
{
    char field[sizeof(err->field)];
    int rc;

    n->data = NULL;
    if (!d) {
        return 0;
    }
    if (!cJSON_IsObject(d)) {
        return wrong_type(d, "data", "object", err);
    }
    rc = proto_check_dup_keys(d, "data.", err);
    if (rc) {
        return rc;
    }
    for (const cJSON *kv = d->child; kv; kv = kv->next) {
        size_t klen = strlen(kv->string);

        /* The field ("data.<key>") is only written for an error. */
        if (klen == 0) {
            proto_err_set(err, PROTO_R_EMPTY, "data", "empty key");
            return TDG_EINVAL_INPUT;
        }
        if (klen > PROTO_DATA_KEY_MAX) {
            data_field(field, sizeof(field), kv->string);
            return too_long(field, PROTO_DATA_KEY_MAX, klen, err);
        }
        if (data_key_reserved(kv->string)) {
            data_field(field, sizeof(field), kv->string);
            proto_err_set(err, PROTO_R_BAD_VALUE, field, "key reserved by APNs/FCM");
            return TDG_EINVAL_INPUT;
        }
        if (!cJSON_IsString(kv) && !cJSON_IsNumber(kv) && !cJSON_IsBool(kv)) {
            data_field(field, sizeof(field), kv->string);
            return wrong_type(kv, field, "string, number or boolean", err);
        }
    }
    n->data = d;
    return 0;
}

static int check_channels(const cJSON *a, struct notification *n, struct proto_error *err)
{
    char field[sizeof(err->field)];
    unsigned mask = 0;
    int i = 0;

    n->channels = PROTO_CH_ALL;
    if (!a) {
        return 0;
    }
    if (!cJSON_IsArray(a)) {
        return wrong_type(a, "channels", "array", err);
    }
    if (!a->child) {
        proto_err_set(err, PROTO_R_EMPTY, "channels", "at least one channel when given");
        return TDG_EINVAL_INPUT;
    }
    for (const cJSON *c = a->child; c; c = c->next, i++) {
        size_t k;

        /* The field ("channels[<i>]") is only written for an error. */
        if (!cJSON_IsString(c)) {
            snprintf(field, sizeof(field), "channels[%d]", i);
            return wrong_type(c, field, "string", err);
        }
        if (c->valuestring[0] == '\0') {
            snprintf(field, sizeof(field), "channels[%d]", i);
            proto_err_set(err, PROTO_R_EMPTY, field, "must not be empty");
            return TDG_EINVAL_INPUT;
        }
        for (k = 0; k < N_CHANNELS; k++) {
            if (strcmp(c->valuestring, channel_rows[k].name) == 0) {
                break;
            }
        }
        if (k == N_CHANNELS) {
            snprintf(field, sizeof(field), "channels[%d]", i);
            proto_err_set(err, PROTO_R_BAD_VALUE, field,
                          "expected push, sms, email, desktop or local");
            return TDG_EINVAL_INPUT;
        }
        if (mask & (unsigned)channel_rows[k].bit) {
            snprintf(field, sizeof(field), "channels[%d]", i);
            proto_err_set(err, PROTO_R_BAD_VALUE, field, "channel given twice");
            return TDG_EINVAL_INPUT;
        }
        mask |= (unsigned)channel_rows[k].bit;
    }
    n->channels = mask;
    return 0;
}

static int check_ttl(const cJSON *j, struct notification *n, struct proto_error *err)
{
    double v;

    n->ttl_s = 0;
    if (!j) {
        return 0;
    }
    if (!cJSON_IsNumber(j)) {
        return wrong_type(j, "ttl", "integer", err);
    }
    v = j->valuedouble;
    /* Range first in double: casting an out-of-range double is undefined. */
    if (v > -1e15 && v < 1e15 && v != (double)(int64_t)v) {
        return wrong_type(j, "ttl", "integer", err);
    }
    if (!(v >= 0 && v <= (double)PROTO_TTL_MAX)) {
        proto_err_set(err, PROTO_R_OUT_OF_RANGE, "ttl", "0..%d seconds", PROTO_TTL_MAX);
        return TDG_EINVAL_INPUT;
    }
    n->ttl_s = (int64_t)v;
    return 0;
}

static int check_deliver_at(const cJSON *atj, const cJSON *tzj, struct notification *n,
                            struct proto_error *err)
{
    const char *at, *tz;
    int rc;

    n->has_deliver_at = false;
    n->deliver_at_ms = 0;
    n->deliver_at_user_tz = false;
    n->deliver_at_local = NULL;
    rc = get_str(atj, "deliver_at", 0, &at, err);
    if (rc) {
        return rc;
    }
    rc = get_str(tzj, "tz", 0, &tz, err);
    if (rc) {
        return rc;
    }
    if (tz && strcmp(tz, "user") != 0) {
        proto_err_set(err, PROTO_R_BAD_VALUE, "tz", "only \"user\" is supported");
        return TDG_EINVAL_INPUT;
    }
    if (!at) {
        if (tz) {
            proto_err_set(err, PROTO_R_BAD_VALUE, "tz", "tz requires deliver_at");
            return TDG_EINVAL_INPUT;
        }
        return 0;
    }
    if (tz) {
        int64_t wall;
        if (proto_parse_local_time(at, &wall) != 0) {
            proto_err_set(err, PROTO_R_BAD_TIME, "deliver_at",
                          "with tz user: YYYY-MM-DDTHH:MM[:SS], no offset");
            return TDG_EINVAL_INPUT;
        }
        n->deliver_at_user_tz = true;
        n->deliver_at_local = at;
    } else if (proto_parse_rfc3339(at, &n->deliver_at_ms) != 0) {
        proto_err_set(err, PROTO_R_BAD_TIME, "deliver_at",
                      "expected RFC 3339, e.g. 2026-11-22T08:00:00Z or ...+01:00");
        return TDG_EINVAL_INPUT;
    }
    n->has_deliver_at = true;
    return 0;
}

/* "accepted_at" is written by Tidings itself; a malformed one (from an old
 * or foreign sender) is an error like any other time field. */
static int check_accepted_at(const cJSON *j, struct notification *n, struct proto_error *err)
{
    const char *at;
    int rc = get_str(j, "accepted_at", 0, &at, err);

    n->accepted_at_ms = 0;
    if (rc || !at) {
        return rc;
    }
    if (proto_parse_rfc3339(at, &n->accepted_at_ms) != 0) {
        proto_err_set(err, PROTO_R_BAD_TIME, "accepted_at", "expected RFC 3339");
        return TDG_EINVAL_INPUT;
    }
    return 0;
}

static int check_vars(const cJSON *v, struct notification *n, struct proto_error *err)
{
    n->vars = NULL;
    if (!v) {
        return 0;
    }
    if (!cJSON_IsObject(v)) {
        return wrong_type(v, "vars", "object", err);
    }
    n->vars = v;
    return 0;
}

/*
 * Compact serialized length of obj if it is at most limit, else limit + 1.
 * Printed into a stack buffer: cJSON reserves up to 26 bytes per number
 * before writing it, hence the slack. -ENOMEM cannot happen (no allocation).
 */
#define PRINT_SLACK 64
static size_t serialized_len(cJSON *obj, size_t limit)
{
    char buf[PROTO_MAX_WIRE + PRINT_SLACK];

    if (limit > PROTO_MAX_WIRE) {
        limit = PROTO_MAX_WIRE;
    }
    long n = proto_json_print(obj, buf, sizeof(buf)); /* cJSON's bytes, faster */
    if (n < 0) {
        return limit + 1;
    }
    size_t len = (size_t)n;
    return len > limit ? limit + 1 : len;
}

/* Numbers are the only JSON tokens cJSON can print longer than they were
 * written ("1e14" -> "100000000000000", 25 bytes at worst). */
static size_t count_numbers(const cJSON *item)
{
    size_t c = 0;

    for (; item; item = item->next) {
        if (cJSON_IsNumber(item)) {
            c++;
        } else if (cJSON_IsArray(item) || cJSON_IsObject(item)) {
            c += count_numbers(item->child);
        }
    }
    return c;
}

/* The known top-level fields, found in one pass over the object's members
 * (find_fields) instead of one lookup by name per field. */
enum field_slot {
    F_ID,
    F_TO,
    F_CATEGORY,
    F_PRIORITY,
    F_TITLE,
    F_BODY,
    F_DATA,
    F_CHANNELS,
    F_TTL,
    F_DELIVER_AT,
    F_TZ,
    F_COLLAPSE_KEY,
    F_ACCEPTED_AT,
    F_TEMPLATE,
    F_VARS,
    F_LOCALE,
    F_COUNT
};

/* The slot of a known key, or -1. */
static int field_slot(const char *k)
{
#define IS(lit) (strcmp(k, lit) == 0)
    switch (k[0]) {
    case 'a':
        return IS("accepted_at") ? F_ACCEPTED_AT : -1;
    case 'b':
        return IS("body") ? F_BODY : -1;
    case 'c':
        return IS("category")       ? F_CATEGORY
               : IS("channels")     ? F_CHANNELS
               : IS("collapse_key") ? F_COLLAPSE_KEY
                                    : -1;
    case 'd':
        return IS("data") ? F_DATA : IS("deliver_at") ? F_DELIVER_AT : -1;
    case 'i':
        return IS("id") ? F_ID : -1;
    case 'l':
        return IS("locale") ? F_LOCALE : -1;
    case 'p':
        return IS("priority") ? F_PRIORITY : -1;
    case 't':
        return IS("to")         ? F_TO
               : IS("title")    ? F_TITLE
               : IS("ttl")      ? F_TTL
               : IS("tz")       ? F_TZ
               : IS("template") ? F_TEMPLATE
                                : -1;
    case 'v':
        return IS("vars") ? F_VARS : -1;
    default:
        return -1;
    }
#undef IS
}

/*
 * Point slot[] at the known members of obj (NULL: absent) and check its
 * keys as proto_check_dup_keys(obj, "") does, with the same error. A key
 * given twice is either a known key seen again or two unknown keys alike:
 * only then (or for a member without a key, from a caller's tree) does
 * proto_check_dup_keys run, to report exactly what it reports.
 */
static int find_fields(const cJSON *obj, const cJSON *slot[F_COUNT], struct proto_error *err)
{
    unsigned unknown = 0;
    bool again = false;

    memset(slot, 0, F_COUNT * sizeof(slot[0]));
    for (const cJSON *m = obj->child; m; m = m->next) {
        if (!m->string) {
            return proto_check_dup_keys(obj, "", err);
        }
        int f = field_slot(m->string);
        if (f < 0) {
            unknown++;
        } else if (slot[f]) {
            again = true;
        } else {
            slot[f] = m;
        }
    }
    if (again || unknown > 1) {
        return proto_check_dup_keys(obj, "", err);
    }
    return 0;
}

/*
 * Validate obj (not freed here). raw_len is the wire size when known (0 when
 * the tree came from a caller), used to skip printing in the common case.
 */
static int validate(cJSON *obj, size_t raw_len, bool exact, struct notification *n,
                    struct proto_error *err)
{
    const cJSON *f[F_COUNT];
    int rc;

    memset(n, 0, sizeof(*n));
    if (!obj || !cJSON_IsObject(obj)) {
        proto_err_set(err, PROTO_R_NOT_OBJECT, NULL, "top level must be a JSON object, got %s",
                      obj ? proto_json_type(obj) : "nothing");
        return TDG_EINVAL_INPUT;
    }
    rc = find_fields(obj, f, err);
    if (rc) {
        return rc;
    }
    rc = check_tree(obj->child, NULL, 1, err);
    if (rc) {
        return rc;
    }

    rc = get_str(f[F_ID], "id", PROTO_ID_MAX, &n->id, err);
    if (rc == 0 && n->id && !proto_id_valid(n->id)) {
        proto_err_set(err, PROTO_R_BAD_VALUE, "id", "allowed characters: A-Z a-z 0-9 . _ : -");
        rc = TDG_EINVAL_INPUT;
    }
    if (rc == 0) {
        rc = check_to(f[F_TO], n, err);
    }
    if (rc == 0) {
        rc = get_token(f[F_CATEGORY], "category", PROTO_CATEGORY_MAX, CS_LOWER | CS_DIGIT, "_.-",
                       "a-z 0-9 _ . -", &n->category, err);
    }
    if (rc == 0) {
        rc = check_priority(f[F_PRIORITY], n, err);
    }
    if (rc == 0) {
        rc = check_text_field(f[F_TITLE], "title", &n->title, err);
    }
    if (rc == 0) {
        rc = check_text_field(f[F_BODY], "body", &n->body, err);
    }
    if (rc == 0) {
        rc = check_data(f[F_DATA], n, err);
    }
    if (rc == 0) {
        rc = check_channels(f[F_CHANNELS], n, err);
    }
    if (rc == 0) {
        rc = check_ttl(f[F_TTL], n, err);
    }
    if (rc == 0) {
        rc = check_deliver_at(f[F_DELIVER_AT], f[F_TZ], n, err);
    }
    if (rc == 0) {
        rc = get_str(f[F_COLLAPSE_KEY], "collapse_key", PROTO_COLLAPSE_MAX, &n->collapse_key, err);
    }
    if (rc == 0) {
        rc = check_accepted_at(f[F_ACCEPTED_AT], n, err);
    }
    if (rc == 0) {
        rc =
            get_token(f[F_TEMPLATE], "template", PROTO_TEMPLATE_MAX, CS_LOWER | CS_UPPER | CS_DIGIT,
                      "._-", "A-Z a-z 0-9 . _ -", &n->template_name, err);
    }
    if (rc == 0) {
        rc = check_vars(f[F_VARS], n, err);
    }
    if (rc == 0) {
        rc = get_token(f[F_LOCALE], "locale", PROTO_LOCALE_MAX, CS_LOWER | CS_UPPER | CS_DIGIT, "-",
                       "A-Z a-z 0-9 -", &n->locale, err);
    }
    if (rc == 0 && !n->title && !n->body && !n->template_name) {
        proto_err_set(err, PROTO_R_NO_CONTENT, NULL, "a non-empty title or body is required");
        rc = TDG_EINVAL_INPUT;
    }
    if (rc == 0) {
        /* Compact output is never longer than the input except for numbers
         * (whitespace goes, escapes shrink or stay), so print only when the
         * numbers could push it over. */
        bool known_small =
            exact || (raw_len > 0 && raw_len + 25 * count_numbers(obj->child) <= PROTO_MAX_WIRE);
        if (exact && raw_len > PROTO_MAX_WIRE) {
            proto_err_set(err, PROTO_R_TOO_LARGE, NULL, "serialized form exceeds %d bytes",
                          PROTO_MAX_WIRE);
            rc = TDG_ETOOBIG;
        } else if (!known_small) {
            size_t slen = serialized_len(obj, PROTO_MAX_WIRE);
            if (slen > PROTO_MAX_WIRE) {
                proto_err_set(err, PROTO_R_TOO_LARGE, NULL, "serialized form exceeds %d bytes",
                              PROTO_MAX_WIRE);
                rc = TDG_ETOOBIG;
            }
        }
    }
    if (rc) {
        memset(n, 0, sizeof(*n));
        return rc;
    }
    n->json = obj;
    return 0;
}

/* --- public entry points ---------------------------------------------- */

int proto_parse(const char *buf, size_t len, struct notification *n, struct proto_error *err)
{
    cJSON *obj = NULL;
    int rc;

    memset(n, 0, sizeof(*n));
    if (len > PROTO_MAX_WIRE) {
        proto_err_set(err, PROTO_R_TOO_LARGE, NULL, "%d bytes max, got %zu", PROTO_MAX_WIRE, len);
        return TDG_ETOOBIG;
    }
    rc = proto_json_parse(buf, len, PROTO_MAX_DEPTH, &obj, err);
    if (rc) {
        return rc;
    }
    rc = validate(obj, len, false, n, err);
    if (rc) {
        cJSON_Delete(obj);
    }
    return rc;
}

int proto_from_json(cJSON *obj, struct notification *n, struct proto_error *err)
{
    int rc;

    /* An element still linked into a tree (a borrowed batch item) cannot be
     * owned: cJSON_Delete would take its siblings along. Refuse, untouched. */
    if (obj && (obj->next || obj->prev)) {
        memset(n, 0, sizeof(*n));
        proto_err_set(err, PROTO_R_NOT_OBJECT, NULL,
                      "item is still part of another tree: copy or detach it first");
        return TDG_EINVAL_INPUT;
    }
    rc = validate(obj, 0, false, n, err);

    if (rc) {
        cJSON_Delete(obj);
    }
    return rc;
}

int proto_set_id(struct notification *n, const char *id)
{
    cJSON *old, *item;
    size_t idlen, cur, next;

    if (!n || !n->json || !proto_id_valid(id)) {
        return TDG_EINVAL_INPUT;
    }
    idlen = strlen(id);
    old = cJSON_GetObjectItemCaseSensitive(n->json, "id");
    /* Size check before touching anything, so a failure leaves n as it was.
     * Ids need no escaping, so the growth is exact. */
    cur = serialized_len(n->json, PROTO_MAX_WIRE);
    if (old) {
        next = cur - strlen(old->valuestring) + idlen;
    } else {
        next = cur + idlen + sizeof("\"id\":\"\",") - 1;
    }
    if (cur > PROTO_MAX_WIRE || next > PROTO_MAX_WIRE) {
        return TDG_ETOOBIG;
    }
    if (old) {
        char *s = cJSON_SetValuestring(old, id);
        if (!s) {
            return -ENOMEM;
        }
        n->id = s;
        return 0;
    }
    item = cJSON_CreateString(id);
    if (!item) {
        return -ENOMEM;
    }
    /* Add then move to the front: the id reads first in logs and dumps. */
    if (!cJSON_AddItemToObject(n->json, "id", item)) {
        cJSON_Delete(item);
        return -ENOMEM;
    }
    cJSON_DetachItemViaPointer(n->json, item);
    cJSON_InsertItemInArray(n->json, 0, item);
    n->id = item->valuestring;
    return 0;
}

int proto_set_accepted(struct notification *n, int64_t ms)
{
    char buf[32];
    cJSON *old, *item;
    size_t cur, next, blen;

    if (!n || !n->json) {
        return TDG_EINVAL_INPUT;
    }
    proto_format_rfc3339(ms, buf, sizeof(buf));
    blen = strlen(buf);
    old = cJSON_GetObjectItemCaseSensitive(n->json, "accepted_at");
    cur = serialized_len(n->json, PROTO_MAX_WIRE);
    if (old && cJSON_IsString(old)) {
        next = cur - strlen(old->valuestring) + blen;
    } else {
        next = cur + blen + sizeof("\"accepted_at\":\"\",") - 1;
    }
    if (cur > PROTO_MAX_WIRE || next > PROTO_MAX_WIRE) {
        return TDG_ETOOBIG;
    }
    if (old && cJSON_IsString(old)) {
        if (!cJSON_SetValuestring(old, buf)) {
            return -ENOMEM;
        }
    } else {
        item = cJSON_CreateString(buf);
        if (!item) {
            return -ENOMEM;
        }
        if (old) {
            cJSON_ReplaceItemViaPointer(n->json, old, item);
        } else if (!cJSON_AddItemToObject(n->json, "accepted_at", item)) {
            cJSON_Delete(item);
            return -ENOMEM;
        }
    }
    n->accepted_at_ms = ms;
    return 0;
}

int64_t proto_expires_ms(const struct notification *n, int64_t now_ms)
{
    if (n->ttl_s <= 0) {
        return 0;
    }
    int64_t base = n->accepted_at_ms > 0 ? n->accepted_at_ms : now_ms;
    return base + n->ttl_s * 1000;
}

char *proto_serialize(const struct notification *n, size_t *len)
{
    char *s;

    if (!n || !n->json) {
        return NULL;
    }
    s = cJSON_PrintUnformatted(n->json);
    if (s && len) {
        *len = strlen(s);
    }
    return s;
}

int proto_item_check(cJSON *item, size_t compact_len, struct notification *n,
                     struct proto_error *err)
{
    if (compact_len > PROTO_MAX_WIRE) {
        memset(n, 0, sizeof(*n));
        proto_err_set(err, PROTO_R_TOO_LARGE, NULL, "%d bytes max, got %zu", PROTO_MAX_WIRE,
                      compact_len);
        return TDG_ETOOBIG;
    }
    int rc = validate(item, compact_len, true, n, err);
    n->json = NULL; /* borrowed: never freed through n */
    return rc;
}

void notification_free(struct notification *n)
{
    if (!n) {
        return;
    }
    cJSON_Delete(n->json);
    memset(n, 0, sizeof(*n));
}
