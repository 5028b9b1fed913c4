/*
 * test_proto.c - unit tests for proto/: validation (every reason code, every
 * limit at its boundary), UTF-8 and JSON edge cases, round trips, ids,
 * RFC 3339, topics, batches and acks.
 *
 * Inputs are copied into malloc'd buffers of exactly their length, without a
 * NUL, so AddressSanitizer and valgrind catch any read past the end.
 */
#include "proto.h"

#include "error.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

/* --- helpers ---------------------------------------------------------- */

static int parse_len(const char *s, size_t len, struct notification *n, struct proto_error *e)
{
    char *buf = malloc(len ? len : 1);
    int rc;

    assert_non_null(buf);
    memcpy(buf, s, len);
    rc = proto_parse(buf, len, n, e);
    free(buf);
    return rc;
}

static int parse_str(const char *s, struct notification *n, struct proto_error *e)
{
    return parse_len(s, strlen(s), n, e);
}

/* Parse must fail with reason r on field f (NULL: don't care). */
static void reject_len_at(const char *s, size_t len, enum proto_reason r, const char *f, int line)
{
    struct notification n;
    struct proto_error e;
    int rc;

    memset(&e, 0, sizeof(e));
    rc = parse_len(s, len, &n, &e);
    if (rc == 0 || e.reason != r || (f && strcmp(e.field, f) != 0)) {
        print_error("line %d: input %.200s\n  want %s field '%s', got rc %d %s field '%s' (%s)\n",
                    line, s, proto_reason_code(r), f ? f : "*", rc, proto_reason_code(e.reason),
                    e.field, e.detail);
        if (rc == 0) {
            notification_free(&n);
        }
        fail();
    }
    assert_int_equal(rc, r == PROTO_R_TOO_LARGE ? TDG_ETOOBIG : TDG_EINVAL_INPUT);
    assert_null(n.json);
    assert_true(e.detail[0] != '\0');
}
#define REJECT(s, r, f) reject_len_at((s), strlen(s), (r), (f), __LINE__)
#define REJECT_LEN(s, len, r, f) reject_len_at((s), (len), (r), (f), __LINE__)

/* Parse must succeed; the caller frees n. */
static void accept_len_at(const char *s, size_t len, struct notification *n, int line)
{
    struct proto_error e;
    int rc;

    memset(&e, 0, sizeof(e));
    rc = parse_len(s, len, n, &e);
    if (rc != 0) {
        print_error("line %d: input %.200s\n  rejected: rc %d %s field '%s' (%s)\n", line, s, rc,
                    proto_reason_code(e.reason), e.field, e.detail);
        fail();
    }
    assert_non_null(n->json);
}
#define ACCEPT(s, n) accept_len_at((s), strlen(s), (n), __LINE__)

static void accept_free_at(const char *s, int line)
{
    struct notification n;

    accept_len_at(s, strlen(s), &n, line);
    notification_free(&n);
}
#define OK(s) accept_free_at((s), __LINE__)

/* A run of n copies of c, NUL-terminated (malloc'd). */
static char *rep(char c, size_t n)
{
    char *s = malloc(n + 1);

    assert_non_null(s);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* Printf into a malloc'd string. */
static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...)
{
    va_list ap;
    int n;
    char *s;

    va_start(ap, f);
    n = vsnprintf(NULL, 0, f, ap);
    va_end(ap);
    assert_true(n >= 0);
    s = malloc((size_t)n + 1);
    assert_non_null(s);
    va_start(ap, f);
    vsnprintf(s, (size_t)n + 1, f, ap);
    va_end(ap);
    return s;
}

/* {"to":"local","body":"<pad>"} of exactly total bytes; tail is appended
 * inside the body after the padding. */
static char *sized(size_t total, const char *tail)
{
    static const char pre[] = "{\"to\":\"local\",\"body\":\"";
    static const char post[] = "\"}";
    size_t fixed = strlen(pre) + strlen(tail) + strlen(post);
    char *pad, *s;

    assert_true(total >= fixed);
    pad = rep('x', total - fixed);
    s = fmt("%s%s%s%s", pre, pad, tail, post);
    free(pad);
    assert_int_equal(strlen(s), total);
    return s;
}

/* --- reason tables ---------------------------------------------------- */

static void test_reason_tables(void **state)
{
    (void)state;
    for (int i = 0; i < PROTO_REASON_COUNT; i++) {
        enum proto_reason r;
        const char *code = proto_reason_code((enum proto_reason)i);
        assert_non_null(code);
        assert_string_not_equal(code, "unknown");
        assert_non_null(proto_reason_message((enum proto_reason)i));
        assert_true(proto_reason_from_code(code, &r));
        assert_int_equal(r, i);
    }
    assert_string_equal(proto_reason_code(PROTO_OK), "ok");
    assert_string_equal(proto_reason_code(PROTO_R_TOO_LONG), "too_long");
    assert_string_equal(proto_reason_code(PROTO_R_BAD_VERSION), "bad_version");
    assert_string_equal(proto_reason_code((enum proto_reason)PROTO_REASON_COUNT), "unknown");
    assert_string_equal(proto_reason_code((enum proto_reason)(-1)), "unknown");
    assert_non_null(proto_reason_message((enum proto_reason)999));
    assert_false(proto_reason_from_code("no_such_code", NULL));
    assert_false(proto_reason_from_code(NULL, NULL));

    assert_string_equal(proto_priority_name(PROTO_PRIO_LOW), "low");
    assert_string_equal(proto_priority_name(PROTO_PRIO_CRITICAL), "critical");
    assert_string_equal(proto_priority_name((enum proto_priority)9), "unknown");
    assert_string_equal(proto_channel_name(PROTO_CH_PUSH), "push");
    assert_string_equal(proto_channel_name(PROTO_CH_LOCAL), "local");
    assert_string_equal(proto_channel_name((enum proto_channel)0x20), "unknown");
}

/* --- accepted notifications ------------------------------------------- */

static void test_minimal(void **state)
{
    struct notification n;

    (void)state;
    ACCEPT("{\"to\":\"user:alice\",\"title\":\"hi\"}", &n);
    assert_null(n.id);
    assert_string_equal(n.to, "user:alice");
    assert_int_equal(n.to_kind, PROTO_TO_USER);
    assert_string_equal(n.to_id, "alice");
    assert_null(n.category);
    assert_int_equal(n.priority, PROTO_PRIO_NORMAL);
    assert_string_equal(n.title, "hi");
    assert_null(n.body);
    assert_null(n.data);
    assert_int_equal(n.channels, PROTO_CH_ALL);
    assert_int_equal(n.ttl_s, 0);
    assert_false(n.has_deliver_at);
    assert_null(n.collapse_key);
    assert_null(n.template_name);
    assert_null(n.locale);
    assert_null(n.vars);
    notification_free(&n);
    notification_free(&n); /* harmless twice */
}

static void test_all_fields(void **state)
{
    struct notification n;

    (void)state;
    ACCEPT(" {\n \"id\":\"ord-42:a.b_c\", \"to\":\"group:ops.team\", \"category\":\"security\",\n"
           "  \"priority\":\"critical\", \"title\":\"Door\", \"body\":\"Front door open\",\n"
           "  \"data\":{\"door\":\"front\",\"n\":3,\"armed\":true},\n"
           "  \"channels\":[\"push\",\"sms\",\"desktop\"], \"ttl\":3600,\n"
           "  \"deliver_at\":\"2026-11-22T08:00:00+01:00\", \"collapse_key\":\"door-front\",\n"
           "  \"template\":\"door.open\", \"vars\":{\"who\":\"x\"}, \"locale\":\"de-CH\" }\r\n",
           &n);
    assert_string_equal(n.id, "ord-42:a.b_c");
    assert_int_equal(n.to_kind, PROTO_TO_GROUP);
    assert_string_equal(n.to_id, "ops.team");
    assert_string_equal(n.category, "security");
    assert_int_equal(n.priority, PROTO_PRIO_CRITICAL);
    assert_string_equal(n.title, "Door");
    assert_string_equal(n.body, "Front door open");
    assert_non_null(n.data);
    assert_int_equal(cJSON_GetArraySize(n.data), 3);
    assert_int_equal(n.channels, PROTO_CH_PUSH | PROTO_CH_SMS | PROTO_CH_DESKTOP);
    assert_int_equal(n.ttl_s, 3600);
    assert_true(n.has_deliver_at);
    assert_false(n.deliver_at_user_tz);
    assert_true(n.deliver_at_ms == INT64_C(1795330800000)); /* 2026-11-22T07:00:00Z */
    assert_string_equal(n.collapse_key, "door-front");
    assert_string_equal(n.template_name, "door.open");
    assert_non_null(n.vars);
    assert_string_equal(n.locale, "de-CH");
    notification_free(&n);

    ACCEPT("{\"to\":\"local\",\"body\":\"b\",\"title\":\"\"}", &n);
    assert_int_equal(n.to_kind, PROTO_TO_LOCAL);
    assert_string_equal(n.to_id, "");
    assert_null(n.title); /* "" counts as absent */
    assert_string_equal(n.body, "b");
    notification_free(&n);

    /* A byte order mark is ignored (RFC 8259 allows it). */
    OK("\xEF\xBB\xBF{\"to\":\"local\",\"title\":\"t\"}");
}

/* --- size ------------------------------------------------------------- */

static void test_size_limit(void **state)
{
    struct notification n;
    char *s;

    (void)state;
    s = sized(PROTO_MAX_WIRE, "");
    ACCEPT(s, &n);
    notification_free(&n);
    free(s);

    s = sized(PROTO_MAX_WIRE + 1, "");
    REJECT(s, PROTO_R_TOO_LARGE, "");
    free(s);

    /* The size check comes first: a huge garbage buffer is too_large. */
    s = rep('\xff', 10000);
    REJECT(s, PROTO_R_TOO_LARGE, "");
    free(s);

    /* Within 4096 on the wire but larger once cJSON prints the numbers. */
    {
        size_t cap = 4000, len;
        char *buf = malloc(cap + 64);
        assert_non_null(buf);
        len = (size_t)snprintf(buf, cap, "{\"to\":\"local\",\"title\":\"t\",\"x\":[");
        while (len + 6 < cap) {
            memcpy(buf + len, "1e14,", 5);
            len += 5;
        }
        memcpy(buf + len, "1]}", 3);
        len += 3;
        REJECT_LEN(buf, len, PROTO_R_TOO_LARGE, "");
        free(buf);
    }
    /* A few such numbers are fine. */
    OK("{\"to\":\"local\",\"title\":\"t\",\"x\":[1e14,1e14]}");
}

/* --- UTF-8 ------------------------------------------------------------ */

static void test_utf8(void **state)
{
    static const char *const bad[] = {
        "\xC0\x80",         /* overlong NUL */
        "\xC1\xBF",         /* overlong */
        "\xE0\x80\x80",     /* overlong 3-byte */
        "\xE0\x9F\xBF",     /* overlong 3-byte, top */
        "\xF0\x80\x80\x80", /* overlong 4-byte */
        "\xED\xA0\x80",     /* surrogate U+D800 */
        "\xED\xBF\xBF",     /* surrogate U+DFFF */
        "\xF4\x90\x80\x80", /* U+110000 */
        "\xF5\x80\x80\x80", /* lead byte beyond F4 */
        "\xE2\x82",         /* truncated euro sign */
        "\xF0\x9F\x98",     /* truncated emoji */
        "\xC3",             /* truncated 2-byte */
        "\x80",             /* stray continuation */
        "a\xBF",            /* stray continuation after ASCII */
        "\xFF",
        "\xFE",
        "\xE2\x28\xA1", /* bad continuation */
    };
    struct notification n;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *s = fmt("{\"to\":\"local\",\"title\":\"%s\"}", bad[i]);
        REJECT(s, PROTO_R_BAD_UTF8, "");
        free(s);
    }
    /* Also outside strings, and in keys. */
    REJECT("{\"to\":\"local\",\"title\":\"t\"}\xC3", PROTO_R_BAD_UTF8, "");
    REJECT("{\"t\xC3\":1,\"to\":\"local\",\"title\":\"t\"}", PROTO_R_BAD_UTF8, "");

    /* Valid 2-, 3- and 4-byte characters, and the extremes. */
    ACCEPT("{\"to\":\"local\",\"title\":\"\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \xEF\xBF\xBF "
           "\xF4\x8F\xBF\xBF \xED\x9F\xBF \xEE\x80\x80\"}",
           &n);
    assert_string_equal(n.title, "\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \xEF\xBF\xBF "
                                 "\xF4\x8F\xBF\xBF \xED\x9F\xBF \xEE\x80\x80");
    notification_free(&n);

    /* \u escapes decode to UTF-8, surrogate pairs included. */
    ACCEPT("{\"to\":\"local\",\"title\":\"\\u00e9\\uD83D\\uDE00\"}", &n);
    assert_string_equal(n.title, "\xC3\xA9\xF0\x9F\x98\x80");
    notification_free(&n);

    /* An emoji ending exactly at byte 4096, then one byte over. */
    {
        char *s = sized(PROTO_MAX_WIRE, "\xF0\x9F\x98\x80");
        ACCEPT(s, &n);
        notification_free(&n);
        /* cut inside the emoji: the last 2 bytes of it and "}" missing */
        REJECT_LEN(s, PROTO_MAX_WIRE - 4, PROTO_R_BAD_UTF8, "");
        free(s);
        s = sized(PROTO_MAX_WIRE + 1, "\xF0\x9F\x98\x80");
        REJECT(s, PROTO_R_TOO_LARGE, "");
        free(s);
    }
}

/* --- JSON syntax ------------------------------------------------------ */

/* Strings are scanned a word at a time past their first 8 bytes: every
 * offending byte is still found at its exact offset, wherever it falls. */
static void test_scan_positions(void **state)
{
    (void)state;
    static const char pre[] = "{\"to\":\"local\",\"title\":\"";
    static const struct {
        const char *bad;
        const char *why;
    } cases[] = {
        {"\x01", "control character in string"},
        {"\x1f", "control character in string"},
        {"\n", "control character in string"},
        {"\\x", "bad escape"},
        {"\\u12G4", "bad \\u escape"},
        {"\\udc00", "lone low surrogate"},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        for (size_t at = 0; at < 40; at++) {
            char doc[256], want[96];
            size_t k = 0;
            memcpy(doc, pre, sizeof(pre) - 1);
            k = sizeof(pre) - 1;
            memset(doc + k, 'a', at);
            k += at;
            size_t bl = strlen(cases[c].bad);
            memcpy(doc + k, cases[c].bad, bl);
            k += bl;
            memset(doc + k, 'b', 20);
            k += 20;
            memcpy(doc + k, "\"}", 3);
            struct notification n;
            struct proto_error e;
            memset(&e, 0, sizeof(e));
            assert_int_not_equal(proto_parse(doc, strlen(doc), &n, &e), 0);
            assert_int_equal(e.reason, PROTO_R_MALFORMED_JSON);
            snprintf(want, sizeof(want), "%s at byte %zu", cases[c].why, sizeof(pre) - 1 + at);
            assert_string_equal(e.detail, want);
        }
    }
    /* And escapes anywhere are taken (the text around them is plain). */
    for (size_t at = 0; at < 40; at++) {
        char doc[256];
        snprintf(doc, sizeof(doc), "%s%.*s\\\"\\u00e9%.*s\"}", pre, (int)at,
                 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", (int)(39 - at),
                 "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb");
        struct notification n;
        struct proto_error e;
        assert_int_equal(proto_parse(doc, strlen(doc), &n, &e), 0);
        assert_int_equal(strlen(n.title), 39 + 1 + 2);
        notification_free(&n);
    }
}

static void test_malformed_json(void **state)
{
    static const char *const bad[] = {
        "",
        "   ",
        "{",
        "{\"to\":\"local\"",
        "{\"to\":\"local\",\"title\":\"t\"",
        "{\"to\":\"local\",\"title\":\"t",
        "{\"to\":\"local\",\"title\":\"t\"} x",
        "{\"to\":\"local\",\"title\":\"t\"}}",
        "{\"to\":\"local\",\"title\":\"t\"}{}",
        "{\"to\":\"local\",\"title\":\"t\",}",
        "{\"to\":\"local\" \"title\":\"t\"}",
        "{\"to\" \"local\"}",
        "{'to':'local'}",
        "{to:\"local\"}",
        "{\"to\":\"local\",\"title\":\"t\",\"n\":01}",
        "{\"to\":\"local\",\"title\":\"t\",\"n\":1.}",
        "{\"to\":\"local\",\"title\":\"t\",\"n\":.5}",
        "{\"to\":\"local\",\"title\":\"t\",\"n\":+1}",
        "{\"to\":\"local\",\"title\":\"t\",\"n\":1e}",
        "{\"to\":\"local\",\"title\":\"t\",\"n\":-}",
        "{\"to\":\"local\",\"title\":\"t\",\"n\":NaN}",
        "{\"to\":\"local\",\"title\":\"t\",\"n\":Infinity}",
        "{\"to\":\"local\",\"title\":\"t\",\"n\":tru}",
        "{\"to\":\"local\",\"title\":\"t\",\"n\":nul}",
        "{\"to\":\"local\",\"title\":\"t\",\"n\":[1,]}",
        "{\"to\":\"local\",\"title\":\"t\",\"n\":[1 2]}",
        "{\"to\":\"local\",\"title\":\"a\tb\"}",    /* raw tab in a string */
        "{\"to\":\"local\",\"title\":\"a\nb\"}",    /* raw newline */
        "{\"to\":\"local\",\"title\":\"\\q\"}",     /* bad escape */
        "{\"to\":\"local\",\"title\":\"\\u12G4\"}", /* bad hex */
        "{\"to\":\"local\",\"title\":\"\\u12\"}",   /* short \u */
        "{\"to\":\"local\",\"title\":\"\\uD800\"}", /* lone high surrogate */
        "{\"to\":\"local\",\"title\":\"\\uDC00\"}", /* lone low surrogate */
        "{\"to\":\"local\",\"title\":\"\\uD800\\u0041\"}",
        "{\"to\":\"local\",\"title\":\"t\\\"}",   /* escaped closing quote */
        "\x01{\"to\":\"local\",\"title\":\"t\"}", /* control char as whitespace */
        "{\"to\":\"local\",\"title\":\"t\"}\x0b",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        REJECT(bad[i], PROTO_R_MALFORMED_JSON, "");
    }
    /* A NUL byte inside the buffer is not JSON either. */
    REJECT_LEN("{\"to\":\"local\",\"title\":\"t\"}\0", 27, PROTO_R_MALFORMED_JSON, "");
    REJECT_LEN("{\"to\":\"lo\0al\",\"title\":\"t\"}", 26, PROTO_R_MALFORMED_JSON, "");
    /* Whitespace around is fine. */
    OK(" \t\r\n{\"to\":\"local\",\"title\":\"t\"} \t\r\n");
    OK("{\"to\":\"local\",\"title\":\"t\",\"n\":[-0,0.5,1e5,1E+5,-1.5e-3,123]}");

    /* Nesting: 64 levels in total accepted, 65 rejected. */
    {
        char *open = rep('[', 62), *close = rep(']', 62);
        char *s = fmt("{\"to\":\"local\",\"title\":\"t\",\"x\":{\"y\":%s%s}}", open, close);
        OK(s);
        free(s);
        free(open);
        free(close);
        open = rep('[', 63);
        close = rep(']', 63);
        s = fmt("{\"to\":\"local\",\"title\":\"t\",\"x\":{\"y\":%s%s}}", open, close);
        REJECT(s, PROTO_R_MALFORMED_JSON, "");
        free(s);
        free(open);
        free(close);
        /* and a hostile 4 KB of '[' does not recurse */
        open = rep('[', PROTO_MAX_WIRE);
        REJECT(open, PROTO_R_MALFORMED_JSON, "");
        free(open);
    }
}

static void test_not_object(void **state)
{
    (void)state;
    REJECT("[]", PROTO_R_NOT_OBJECT, "");
    REJECT("[{\"to\":\"local\",\"title\":\"t\"}]", PROTO_R_NOT_OBJECT, "");
    REJECT("\"to\"", PROTO_R_NOT_OBJECT, "");
    REJECT("42", PROTO_R_NOT_OBJECT, "");
    REJECT("-1.5e3", PROTO_R_NOT_OBJECT, "");
    REJECT("null", PROTO_R_NOT_OBJECT, "");
    REJECT("true", PROTO_R_NOT_OBJECT, "");
}

static void test_duplicate_key(void **state)
{
    (void)state;
    REJECT("{\"to\":\"local\",\"title\":\"a\",\"title\":\"b\"}", PROTO_R_DUPLICATE_KEY, "title");
    REJECT("{\"x\":1,\"to\":\"local\",\"title\":\"a\",\"x\":{}}", PROTO_R_DUPLICATE_KEY, "x");
    /* Keys are case-sensitive: "Title" is another (unknown) field. */
    OK("{\"to\":\"local\",\"title\":\"a\",\"Title\":\"b\"}");
    /* The same key in different objects is fine. */
    OK("{\"to\":\"local\",\"title\":\"a\",\"x\":{\"title\":1}}");
    /* Many keys (the sorted path). */
    {
        char *s = fmt("{\"to\":\"local\",\"title\":\"t\",\"k0\":0,\"k1\":1,\"k2\":2,\"k3\":3,"
                      "\"k4\":4,\"k5\":5,\"k6\":6,\"k7\":7,\"k8\":8,\"k9\":9,\"ka\":0,\"kb\":0,"
                      "\"kc\":0,\"kd\":0,\"ke\":0,\"kf\":0,\"kg\":0,\"k5\":0}");
        REJECT(s, PROTO_R_DUPLICATE_KEY, "k5");
        free(s);
        s = fmt("{\"to\":\"local\",\"title\":\"t\",\"k0\":0,\"k1\":1,\"k2\":2,\"k3\":3,"
                "\"k4\":4,\"k5\":5,\"k6\":6,\"k7\":7,\"k8\":8,\"k9\":9,\"ka\":0,\"kb\":0,"
                "\"kc\":0,\"kd\":0,\"ke\":0,\"kf\":0,\"kg\":0,\"kh\":0}");
        OK(s);
        free(s);
    }
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"data\":{\"a\":1,\"a\":2}}", PROTO_R_DUPLICATE_KEY,
           "data.a");
    /* Two keys given twice: the one whose first use comes first is named,
     * known fields and unknown ones alike (up to 16 members). */
    REJECT("{\"x\":1,\"to\":\"local\",\"title\":\"a\",\"title\":\"b\",\"x\":2}",
           PROTO_R_DUPLICATE_KEY, "x");
    REJECT("{\"title\":\"a\",\"x\":1,\"x\":2,\"to\":\"local\",\"title\":\"b\"}",
           PROTO_R_DUPLICATE_KEY, "title");
    REJECT("{\"y\":1,\"to\":\"local\",\"x\":1,\"title\":\"a\",\"x\":2,\"y\":3}",
           PROTO_R_DUPLICATE_KEY, "y");
    REJECT("{\"to\":\"local\",\"ttl\":1,\"tz\":\"user\",\"title\":\"a\",\"tz\":\"user\",\"ttl\":2}",
           PROTO_R_DUPLICATE_KEY, "ttl");
    /* Several unknown keys, all different: accepted. */
    OK("{\"to\":\"local\",\"title\":\"a\",\"x\":1,\"y\":2,\"z\":3,\"t\":4,\"tit\":5}");
    /* More than 16 members: the smallest key given twice (sorted). */
    {
        char *s = fmt("{\"to\":\"local\",\"title\":\"t\",\"k0\":0,\"k1\":1,\"k2\":2,\"k3\":3,"
                      "\"k4\":4,\"k5\":5,\"k6\":6,\"k7\":7,\"k8\":8,\"k9\":9,\"ka\":0,\"kb\":0,"
                      "\"kc\":0,\"kd\":0,\"to\":\"local\",\"kf\":0,\"kg\":0,\"k5\":0}");
        REJECT(s, PROTO_R_DUPLICATE_KEY, "k5");
        free(s);
    }
}

/* The field lookup of validate finds duplicate keys in one pass over the
 * members; what it reports must be what proto_check_dup_keys reports (the
 * order of the checks is pinned by test_duplicate_key and test_order).
 * Every object of 2..6 members over a small key alphabet (known fields,
 * prefixes of them, unknown keys), as a tree handed to proto_from_json. */
static void test_duplicate_key_exhaustive(void **state)
{
    (void)state;
    static const char *const keys[] = {"to", "title", "t", "x", "tz", "ttl", "titles"};
    enum { K = sizeof(keys) / sizeof(keys[0]) };
    unsigned long checked = 0;
    for (int len = 2; len <= 6; len++) {
        unsigned long total = 1;
        for (int i = 0; i < len; i++) {
            total *= K;
        }
        for (unsigned long code = 0; code < total; code++) {
            cJSON *o = cJSON_CreateObject();
            assert_non_null(o);
            unsigned long c = code;
            for (int i = 0; i < len; i++, c /= K) {
                const char *k = keys[c % K];
                cJSON *v = strcmp(k, "to") == 0      ? cJSON_CreateString("local")
                           : strcmp(k, "title") == 0 ? cJSON_CreateString("a")
                           : strcmp(k, "tz") == 0    ? cJSON_CreateString("user")
                                                     : cJSON_CreateNumber(1);
                assert_non_null(v);
                cJSON_AddItemToObject(o, k, v);
            }
            char text[512];
            assert_true(cJSON_PrintPreallocated(o, text, (int)sizeof(text), 0));
            /* The rule for up to 16 members: the first key that comes again. */
            const char *want = NULL;
            for (const cJSON *x = o->child; x && !want; x = x->next) {
                for (const cJSON *y = x->next; y; y = y->next) {
                    if (strcmp(x->string, y->string) == 0) {
                        want = x->string;
                        break;
                    }
                }
            }
            char wantbuf[16] = "";
            if (want) {
                snprintf(wantbuf, sizeof(wantbuf), "%s", want);
            }
            struct notification n;
            struct proto_error got;
            memset(&got, 0, sizeof(got));
            int rc = proto_from_json(o, &n, &got); /* frees o when it fails */
            if (want) {
                if (rc == 0 || got.reason != PROTO_R_DUPLICATE_KEY ||
                    strcmp(got.field, wantbuf) != 0) {
                    print_error("%s: want duplicate_key '%s', got rc %d %s '%s'\n", text,
                                wantbuf, rc, proto_reason_code(got.reason), got.field);
                    fail();
                }
            } else if (rc != 0) {
                assert_int_not_equal(got.reason, PROTO_R_DUPLICATE_KEY);
            }
            if (rc == 0) {
                notification_free(&n);
            }
            checked++;
        }
    }
    assert_true(checked > 100000);
}

static void test_nul_escape(void **state)
{
    struct notification n;

    (void)state;
    REJECT("{\"to\":\"local\",\"title\":\"a\\u0000b\"}", PROTO_R_BAD_VALUE, "title");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"body\":\"\\u0000\"}", PROTO_R_BAD_VALUE, "body");
    REJECT("{\"to\":\"user:a\\u0000b\",\"title\":\"t\"}", PROTO_R_BAD_VALUE, "to");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"x\":{\"y\":[\"\\u0000\"]}}", PROTO_R_BAD_VALUE,
           "x");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"data\":{\"k\":\"v\\u0000\"}}", PROTO_R_BAD_VALUE,
           "data");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"a\\u0000\":1}", PROTO_R_BAD_VALUE, "");
    /* An escaped backslash followed by "u0000" is ordinary text. */
    ACCEPT("{\"to\":\"local\",\"title\":\"\\\\u0000\"}", &n);
    assert_string_equal(n.title, "\\u0000");
    notification_free(&n);
    /* Other control characters survive as escapes. */
    ACCEPT("{\"to\":\"local\",\"title\":\"a\\u0001\\n\\t\\/\"}", &n);
    assert_string_equal(n.title, "a\x01\n\t/");
    notification_free(&n);
}

/* --- fields ----------------------------------------------------------- */

static void test_id_field(void **state)
{
    char *id64 = rep('a', 64), *id65 = rep('a', 65), *s;
    struct notification n;

    (void)state;
    s = fmt("{\"id\":\"%s\",\"to\":\"local\",\"title\":\"t\"}", id64);
    ACCEPT(s, &n);
    assert_string_equal(n.id, id64);
    notification_free(&n);
    free(s);
    s = fmt("{\"id\":\"%s\",\"to\":\"local\",\"title\":\"t\"}", id65);
    REJECT(s, PROTO_R_TOO_LONG, "id");
    free(s);
    REJECT("{\"id\":\"\",\"to\":\"local\",\"title\":\"t\"}", PROTO_R_EMPTY, "id");
    REJECT("{\"id\":\"a b\",\"to\":\"local\",\"title\":\"t\"}", PROTO_R_BAD_VALUE, "id");
    REJECT("{\"id\":\"a/b\",\"to\":\"local\",\"title\":\"t\"}", PROTO_R_BAD_VALUE, "id");
    REJECT("{\"id\":\"\xC3\xA9\",\"to\":\"local\",\"title\":\"t\"}", PROTO_R_BAD_VALUE, "id");
    REJECT("{\"id\":7,\"to\":\"local\",\"title\":\"t\"}", PROTO_R_WRONG_TYPE, "id");
    OK("{\"id\":\"A-Z.a_z:0-9\",\"to\":\"local\",\"title\":\"t\"}");

    assert_true(proto_id_valid("a"));
    assert_true(proto_id_valid(id64));
    assert_false(proto_id_valid(id65));
    assert_false(proto_id_valid(""));
    assert_false(proto_id_valid(NULL));
    assert_false(proto_id_valid("a+b"));
    free(id64);
    free(id65);
}

static void test_to_field(void **state)
{
    char *x122 = rep('u', PROTO_TO_MAX - 6), *x123 = rep('u', PROTO_TO_MAX - 5), *s;
    struct notification n;

    (void)state;
    REJECT("{\"title\":\"t\"}", PROTO_R_MISSING_FIELD, "to");
    REJECT("{\"to\":5,\"title\":\"t\"}", PROTO_R_WRONG_TYPE, "to");
    REJECT("{\"to\":null,\"title\":\"t\"}", PROTO_R_WRONG_TYPE, "to");
    REJECT("{\"to\":\"\",\"title\":\"t\"}", PROTO_R_EMPTY, "to");
    REJECT("{\"to\":\"user:\",\"title\":\"t\"}", PROTO_R_BAD_RECIPIENT, "to");
    REJECT("{\"to\":\"group:\",\"title\":\"t\"}", PROTO_R_BAD_RECIPIENT, "to");
    REJECT("{\"to\":\"admin:x\",\"title\":\"t\"}", PROTO_R_BAD_RECIPIENT, "to");
    REJECT("{\"to\":\"alice\",\"title\":\"t\"}", PROTO_R_BAD_RECIPIENT, "to");
    REJECT("{\"to\":\"localhost\",\"title\":\"t\"}", PROTO_R_BAD_RECIPIENT, "to");
    REJECT("{\"to\":\"LOCAL\",\"title\":\"t\"}", PROTO_R_BAD_RECIPIENT, "to");
    REJECT("{\"to\":\"User:a\",\"title\":\"t\"}", PROTO_R_BAD_RECIPIENT, "to");
    REJECT("{\"to\":\"user:a b\",\"title\":\"t\"}", PROTO_R_BAD_RECIPIENT, "to");
    REJECT("{\"to\":\"user:a/b\",\"title\":\"t\"}", PROTO_R_BAD_RECIPIENT, "to");
    REJECT("{\"to\":\"user:a:b\",\"title\":\"t\"}", PROTO_R_BAD_RECIPIENT, "to");
    OK("{\"to\":\"user:Alice.B_c+tag@example-1.com\",\"title\":\"t\"}");

    /* The id part: 122 bytes accepted for both kinds, 123 too long. */
    s = fmt("{\"to\":\"group:%s\",\"title\":\"t\"}", x122);
    ACCEPT(s, &n);
    assert_int_equal(strlen(n.to), PROTO_TO_MAX);
    assert_string_equal(n.to_id, x122);
    notification_free(&n);
    free(s);
    s = fmt("{\"to\":\"user:%s\",\"title\":\"t\"}", x122);
    OK(s);
    free(s);
    s = fmt("{\"to\":\"user:%s\",\"title\":\"t\"}", x123);
    REJECT(s, PROTO_R_TOO_LONG, "to");
    free(s);
    s = fmt("{\"to\":\"group:%s\",\"title\":\"t\"}", x123);
    REJECT(s, PROTO_R_TOO_LONG, "to");
    free(s);
    free(x122);
    free(x123);
}

static void test_category_field(void **state)
{
    char *c32 = rep('c', 32), *c33 = rep('c', 33), *s;

    (void)state;
    s = fmt("{\"to\":\"local\",\"title\":\"t\",\"category\":\"%s\"}", c32);
    OK(s);
    free(s);
    s = fmt("{\"to\":\"local\",\"title\":\"t\",\"category\":\"%s\"}", c33);
    REJECT(s, PROTO_R_TOO_LONG, "category");
    free(s);
    OK("{\"to\":\"local\",\"title\":\"t\",\"category\":\"orders.eu_1-x\"}");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"category\":\"\"}", PROTO_R_EMPTY, "category");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"category\":\"Security\"}", PROTO_R_BAD_VALUE,
           "category");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"category\":\"a b\"}", PROTO_R_BAD_VALUE,
           "category");
    free(c32);
    free(c33);
}

static void test_priority_field(void **state)
{
    static const char *const names[] = {"low", "normal", "high", "critical"};
    struct notification n;

    (void)state;
    for (int i = 0; i < 4; i++) {
        char *s = fmt("{\"to\":\"local\",\"title\":\"t\",\"priority\":\"%s\"}", names[i]);
        ACCEPT(s, &n);
        assert_int_equal(n.priority, i);
        assert_string_equal(proto_priority_name(n.priority), names[i]);
        notification_free(&n);
        free(s);
    }
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"priority\":\"urgent\"}", PROTO_R_BAD_VALUE,
           "priority");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"priority\":\"HIGH\"}", PROTO_R_BAD_VALUE,
           "priority");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"priority\":\"\"}", PROTO_R_EMPTY, "priority");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"priority\":2}", PROTO_R_WRONG_TYPE, "priority");
}

static void test_content(void **state)
{
    struct notification n;

    (void)state;
    OK("{\"to\":\"local\",\"title\":\"t\"}");
    OK("{\"to\":\"local\",\"body\":\"b\"}");
    REJECT("{\"to\":\"local\"}", PROTO_R_NO_CONTENT, "");
    REJECT("{\"to\":\"local\",\"title\":\"\",\"body\":\"\"}", PROTO_R_NO_CONTENT, "");
    REJECT("{\"to\":\"local\",\"title\":\"\"}", PROTO_R_NO_CONTENT, "");
    ACCEPT("{\"to\":\"local\",\"template\":\"welcome\"}", &n);
    assert_null(n.title);
    assert_null(n.body);
    assert_string_equal(n.template_name, "welcome");
    notification_free(&n);
    REJECT("{\"to\":\"local\",\"title\":1}", PROTO_R_WRONG_TYPE, "title");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"body\":null}", PROTO_R_WRONG_TYPE, "body");
}

static void test_data_field(void **state)
{
    static const char *const reserved[] = {"aps",          "from",         "notification",
                                           "message_type", "collapse_key", "google.c.a",
                                           "google.",      "gcm.n.e"};
    char *k64 = rep('k', 64), *k65 = rep('k', 65), *s, field[80];
    struct notification n;

    (void)state;
    ACCEPT("{\"to\":\"local\",\"title\":\"t\",\"data\":{\"s\":\"v\",\"n\":1.5,\"b\":false,"
           "\"googlex\":1,\"apsx\":1,\"Aps\":1}}",
           &n);
    assert_int_equal(cJSON_GetArraySize(n.data), 6);
    notification_free(&n);
    OK("{\"to\":\"local\",\"title\":\"t\",\"data\":{}}");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"data\":[]}", PROTO_R_WRONG_TYPE, "data");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"data\":\"x\"}", PROTO_R_WRONG_TYPE, "data");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"data\":{\"k\":{\"a\":1}}}", PROTO_R_WRONG_TYPE,
           "data.k");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"data\":{\"ok\":1,\"k\":[1]}}", PROTO_R_WRONG_TYPE,
           "data.k");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"data\":{\"k\":null}}", PROTO_R_WRONG_TYPE,
           "data.k");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"data\":{\"\":1}}", PROTO_R_EMPTY, "data");
    s = fmt("{\"to\":\"local\",\"title\":\"t\",\"data\":{\"%s\":1}}", k64);
    OK(s);
    free(s);
    s = fmt("{\"to\":\"local\",\"title\":\"t\",\"data\":{\"%s\":1}}", k65);
    snprintf(field, sizeof(field), "data.%s", k65);
    field[47] = '\0'; /* the error's field holds 47 bytes */
    REJECT(s, PROTO_R_TOO_LONG, field);
    free(s);
    for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++) {
        s = fmt("{\"to\":\"local\",\"title\":\"t\",\"data\":{\"%s\":\"x\"}}", reserved[i]);
        snprintf(field, sizeof(field), "data.%s", reserved[i]);
        REJECT(s, PROTO_R_BAD_VALUE, field);
        free(s);
    }
    free(k64);
    free(k65);
}

static void test_channels_field(void **state)
{
    struct notification n;

    (void)state;
    ACCEPT("{\"to\":\"local\",\"title\":\"t\",\"channels\":[\"push\",\"sms\",\"email\","
           "\"desktop\",\"local\"]}",
           &n);
    assert_int_equal(n.channels, PROTO_CH_ALL);
    notification_free(&n);
    ACCEPT("{\"to\":\"local\",\"title\":\"t\",\"channels\":[\"email\"]}", &n);
    assert_int_equal(n.channels, PROTO_CH_EMAIL);
    notification_free(&n);
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"channels\":[]}", PROTO_R_EMPTY, "channels");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"channels\":[\"push\",\"fax\"]}", PROTO_R_BAD_VALUE,
           "channels[1]");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"channels\":[\"Push\"]}", PROTO_R_BAD_VALUE,
           "channels[0]");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"channels\":[\"sms\",\"push\",\"sms\"]}",
           PROTO_R_BAD_VALUE, "channels[2]");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"channels\":[1]}", PROTO_R_WRONG_TYPE,
           "channels[0]");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"channels\":[\"\"]}", PROTO_R_EMPTY, "channels[0]");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"channels\":\"push\"}", PROTO_R_WRONG_TYPE,
           "channels");
}

static void test_ttl_field(void **state)
{
    struct notification n;

    (void)state;
    ACCEPT("{\"to\":\"local\",\"title\":\"t\",\"ttl\":0}", &n);
    assert_int_equal(n.ttl_s, 0);
    notification_free(&n);
    ACCEPT("{\"to\":\"local\",\"title\":\"t\",\"ttl\":2419200}", &n);
    assert_int_equal(n.ttl_s, PROTO_TTL_MAX);
    notification_free(&n);
    ACCEPT("{\"to\":\"local\",\"title\":\"t\",\"ttl\":1e3}", &n);
    assert_int_equal(n.ttl_s, 1000);
    notification_free(&n);
    ACCEPT("{\"to\":\"local\",\"title\":\"t\",\"ttl\":60.0}", &n);
    assert_int_equal(n.ttl_s, 60);
    notification_free(&n);
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"ttl\":2419201}", PROTO_R_OUT_OF_RANGE, "ttl");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"ttl\":-1}", PROTO_R_OUT_OF_RANGE, "ttl");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"ttl\":1e300}", PROTO_R_OUT_OF_RANGE, "ttl");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"ttl\":-1e300}", PROTO_R_OUT_OF_RANGE, "ttl");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"ttl\":1e999}", PROTO_R_OUT_OF_RANGE, "ttl");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"ttl\":1.5}", PROTO_R_WRONG_TYPE, "ttl");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"ttl\":-0.5}", PROTO_R_WRONG_TYPE, "ttl");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"ttl\":\"60\"}", PROTO_R_WRONG_TYPE, "ttl");
    /* Non-finite numbers anywhere would print as null: refused. */
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"x\":[1e400]}", PROTO_R_OUT_OF_RANGE, "x");
}

static void test_deliver_at_field(void **state)
{
    struct notification n;

    (void)state;
    ACCEPT("{\"to\":\"local\",\"title\":\"t\",\"deliver_at\":\"2026-11-21T22:49:47Z\"}", &n);
    assert_true(n.has_deliver_at);
    assert_false(n.deliver_at_user_tz);
    assert_true(n.deliver_at_ms == INT64_C(1795301387000));
    assert_null(n.deliver_at_local);
    notification_free(&n);

    ACCEPT("{\"to\":\"local\",\"title\":\"t\",\"deliver_at\":\"2026-11-22T08:00\","
           "\"tz\":\"user\"}",
           &n);
    assert_true(n.has_deliver_at);
    assert_true(n.deliver_at_user_tz);
    assert_string_equal(n.deliver_at_local, "2026-11-22T08:00");
    notification_free(&n);
    ACCEPT("{\"to\":\"local\",\"title\":\"t\",\"deliver_at\":\"2026-11-22T08:00:30\","
           "\"tz\":\"user\"}",
           &n);
    assert_string_equal(n.deliver_at_local, "2026-11-22T08:00:30");
    notification_free(&n);

    REJECT("{\"to\":\"local\",\"title\":\"t\",\"deliver_at\":\"2026-11-22T08:00:00+01:00\","
           "\"tz\":\"user\"}",
           PROTO_R_BAD_TIME, "deliver_at");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"deliver_at\":\"2026-11-22T08:00:00Z\","
           "\"tz\":\"user\"}",
           PROTO_R_BAD_TIME, "deliver_at");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"deliver_at\":\"2026-02-30T08:00\","
           "\"tz\":\"user\"}",
           PROTO_R_BAD_TIME, "deliver_at");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"deliver_at\":\"2026-11-22T08:00\"}",
           PROTO_R_BAD_TIME, "deliver_at");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"deliver_at\":\"2023-02-29T00:00:00Z\"}",
           PROTO_R_BAD_TIME, "deliver_at");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"deliver_at\":\"2026-13-01T00:00:00Z\"}",
           PROTO_R_BAD_TIME, "deliver_at");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"deliver_at\":\"2026-01-01T25:00:00Z\"}",
           PROTO_R_BAD_TIME, "deliver_at");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"deliver_at\":\"tomorrow\"}", PROTO_R_BAD_TIME,
           "deliver_at");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"deliver_at\":\"2026-11-22T08:00:00Z\","
           "\"tz\":\"Europe/Zurich\"}",
           PROTO_R_BAD_VALUE, "tz");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"tz\":\"user\"}", PROTO_R_BAD_VALUE, "tz");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"deliver_at\":1795301387}", PROTO_R_WRONG_TYPE,
           "deliver_at");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"deliver_at\":\"2026-11-22T08:00\",\"tz\":1}",
           PROTO_R_WRONG_TYPE, "tz");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"deliver_at\":\"\"}", PROTO_R_EMPTY, "deliver_at");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"deliver_at\":\"2026-11-22T08:00\",\"tz\":\"\"}",
           PROTO_R_EMPTY, "tz");
}

static void test_other_fields(void **state)
{
    char *c64 = rep('c', 64), *c65 = rep('c', 65), *l35 = rep('l', 35), *l36 = rep('l', 36);
    char *s;

    (void)state;
    s = fmt("{\"to\":\"local\",\"title\":\"t\",\"collapse_key\":\"%s\"}", c64);
    OK(s);
    free(s);
    s = fmt("{\"to\":\"local\",\"title\":\"t\",\"collapse_key\":\"%s\"}", c65);
    REJECT(s, PROTO_R_TOO_LONG, "collapse_key");
    free(s);
    OK("{\"to\":\"local\",\"title\":\"t\",\"collapse_key\":\"any text \xC3\xA9 / + #\"}");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"collapse_key\":\"\"}", PROTO_R_EMPTY,
           "collapse_key");

    s = fmt("{\"to\":\"local\",\"template\":\"%s\"}", c64);
    OK(s);
    free(s);
    s = fmt("{\"to\":\"local\",\"template\":\"%s\"}", c65);
    REJECT(s, PROTO_R_TOO_LONG, "template");
    free(s);
    REJECT("{\"to\":\"local\",\"template\":\"a/b\"}", PROTO_R_BAD_VALUE, "template");
    REJECT("{\"to\":\"local\",\"template\":\"\"}", PROTO_R_EMPTY, "template");
    OK("{\"to\":\"local\",\"template\":\"T.x_1-2\",\"vars\":{\"a\":{\"deep\":[1]}}}");

    s = fmt("{\"to\":\"local\",\"title\":\"t\",\"locale\":\"%s\"}", l35);
    OK(s);
    free(s);
    s = fmt("{\"to\":\"local\",\"title\":\"t\",\"locale\":\"%s\"}", l36);
    REJECT(s, PROTO_R_TOO_LONG, "locale");
    free(s);
    OK("{\"to\":\"local\",\"title\":\"t\",\"locale\":\"zh-Hant-TW\"}");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"locale\":\"en_US\"}", PROTO_R_BAD_VALUE, "locale");
    REJECT("{\"to\":\"local\",\"title\":\"t\",\"locale\":\"\"}", PROTO_R_EMPTY, "locale");
    free(c64);
    free(c65);
    free(l35);
    free(l36);
}

/* Every known field with a value of the wrong JSON type. */
static void test_wrong_types(void **state)
{
    static const struct {
        const char *member;
        const char *field;
    } cases[] = {
        {"\"id\":1", "id"},
        {"\"id\":null", "id"},
        {"\"category\":true", "category"},
        {"\"priority\":[]", "priority"},
        {"\"title\":{}", "title"},
        {"\"body\":2", "body"},
        {"\"data\":[1]", "data"},
        {"\"data\":null", "data"},
        {"\"channels\":{}", "channels"},
        {"\"channels\":[[\"push\"]]", "channels[0]"},
        {"\"ttl\":\"1\"", "ttl"},
        {"\"ttl\":true", "ttl"},
        {"\"ttl\":null", "ttl"},
        {"\"deliver_at\":{}", "deliver_at"},
        {"\"deliver_at\":\"2026-01-01T00:00\",\"tz\":[]", "tz"},
        {"\"collapse_key\":1", "collapse_key"},
        {"\"template\":1", "template"},
        {"\"vars\":\"x\"", "vars"},
        {"\"vars\":[]", "vars"},
        {"\"locale\":1", "locale"},
    };

    (void)state;
    REJECT("{\"to\":[\"local\"],\"title\":\"t\"}", PROTO_R_WRONG_TYPE, "to");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *s = fmt("{\"to\":\"local\",\"title\":\"t\",%s}", cases[i].member);
        if (strcmp(cases[i].field, "title") == 0) {
            free(s);
            s = fmt("{\"to\":\"local\",\"body\":\"b\",%s}", cases[i].member);
        }
        REJECT(s, PROTO_R_WRONG_TYPE, cases[i].field);
        free(s);
    }
}

/* The first failing check in the documented order wins. */
static void test_check_order(void **state)
{
    (void)state;
    REJECT("{\"to\":\"local\",\"to\":\"x\",\"title\":\"\\u0000\"}", PROTO_R_DUPLICATE_KEY, "to");
    REJECT("{\"id\":\"\",\"to\":\"\"}", PROTO_R_EMPTY, "id");
    REJECT("{\"to\":\"x\",\"category\":\"A\"}", PROTO_R_BAD_RECIPIENT, "to");
    REJECT("{\"to\":\"local\",\"category\":\"A\",\"priority\":\"x\"}", PROTO_R_BAD_VALUE,
           "category");
    REJECT("{\"to\":\"local\",\"ttl\":-1}", PROTO_R_OUT_OF_RANGE, "ttl");
}

/* --- round trip, set_id, from_json ------------------------------------ */

static void test_roundtrip(void **state)
{
    static const char in[] =
        "{\"to\":\"user:bob\",\"title\":\"Caf\\u00e9 \xE2\x82\xAC\",\"body\":\"a\\\"b\\\\c\\n\","
        "\"x-trace\":{\"span\":[1,2.5,{\"deep\":[true,false,null]}],\"s\":\"v\"},"
        "\"future_list\":[\"a\",[],{}],\"n\":-12.25e-3,\"big\":1e20,\"z\":null,"
        "\"data\":{\"k\":\"v\"},\"ttl\":10}";
    struct notification a, b;
    char *out, *out2;
    size_t len = 0, len2 = 0;

    (void)state;
    ACCEPT(in, &a);
    out = proto_serialize(&a, &len);
    assert_non_null(out);
    assert_int_equal(len, strlen(out));
    accept_len_at(out, len, &b, __LINE__);
    assert_true(cJSON_Compare(a.json, b.json, 1));
    assert_non_null(cJSON_GetObjectItemCaseSensitive(b.json, "x-trace"));
    assert_non_null(cJSON_GetObjectItemCaseSensitive(b.json, "future_list"));
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(b.json, "z")));
    assert_string_equal(b.title, "Caf\xC3\xA9 \xE2\x82\xAC");
    assert_string_equal(b.body, "a\"b\\c\n");
    /* Serializing again is stable. */
    out2 = proto_serialize(&b, &len2);
    assert_string_equal(out, out2);
    free(out);
    free(out2);
    notification_free(&a);
    notification_free(&b);
    assert_null(proto_serialize(&a, &len));
}

static void test_set_id(void **state)
{
    struct notification n, m;
    char id[PROTO_GENERATED_ID_LEN + 1];
    char *out, *s, *before;
    size_t len;

    (void)state;
    ACCEPT("{\"to\":\"local\",\"title\":\"t\",\"x\":[1]}", &n);
    assert_null(n.id);
    assert_int_equal(proto_id_new(id), 0);
    assert_int_equal(proto_set_id(&n, id), 0);
    assert_string_equal(n.id, id);
    assert_string_equal(n.title, "t");
    out = proto_serialize(&n, &len);
    assert_non_null(out);
    assert_memory_equal(out, "{\"id\":\"", 7); /* the id goes first */
    accept_len_at(out, len, &m, __LINE__);
    assert_string_equal(m.id, id);
    notification_free(&m);
    free(out);

    /* Replace with a longer, then a shorter id. */
    assert_int_equal(proto_set_id(&n, "a-much-longer-id-than-the-generated-one.0123456789"), 0);
    assert_string_equal(n.id, "a-much-longer-id-than-the-generated-one.0123456789");
    assert_int_equal(proto_set_id(&n, "s"), 0);
    assert_string_equal(n.id, "s");
    assert_int_equal(cJSON_GetArraySize(n.json), 4);

    /* Invalid ids change nothing. */
    assert_int_equal(proto_set_id(&n, ""), TDG_EINVAL_INPUT);
    assert_int_equal(proto_set_id(&n, "a b"), TDG_EINVAL_INPUT);
    assert_int_equal(proto_set_id(&n, NULL), TDG_EINVAL_INPUT);
    assert_string_equal(n.id, "s");
    notification_free(&n);
    assert_int_equal(proto_set_id(&n, "x"), TDG_EINVAL_INPUT);

    /* A full-size notification has no room for an id. */
    s = sized(PROTO_MAX_WIRE, "");
    ACCEPT(s, &n);
    before = proto_serialize(&n, NULL);
    assert_int_equal(proto_set_id(&n, id), TDG_ETOOBIG);
    assert_null(n.id);
    out = proto_serialize(&n, NULL);
    assert_string_equal(before, out);
    free(before);
    free(out);
    notification_free(&n);
    free(s);
    /* ... while one with exactly enough room takes it. */
    s = sized(PROTO_MAX_WIRE - (PROTO_GENERATED_ID_LEN + 8), "");
    ACCEPT(s, &n);
    assert_int_equal(proto_set_id(&n, id), 0);
    out = proto_serialize(&n, &len);
    assert_int_equal(len, PROTO_MAX_WIRE);
    free(out);
    notification_free(&n);
    free(s);
}

static void test_from_json(void **state)
{
    struct notification n;
    struct proto_error e;
    cJSON *o;

    (void)state;
    o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "to", "user:carol");
    cJSON_AddStringToObject(o, "body", "b");
    cJSON_AddStringToObject(o, "unknown", "kept");
    assert_int_equal(proto_from_json(o, &n, &e), 0);
    assert_ptr_equal(n.json, o);
    assert_string_equal(n.to_id, "carol");
    notification_free(&n);

    /* Ownership on failure: freed (ASan / valgrind would see a leak). */
    o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "to", "nobody");
    cJSON_AddStringToObject(o, "body", "b");
    assert_int_equal(proto_from_json(o, &n, &e), TDG_EINVAL_INPUT);
    assert_int_equal(e.reason, PROTO_R_BAD_RECIPIENT);
    assert_null(n.json);

    /* A borrowed element of another tree is refused and left alone. */
    o = cJSON_Parse("[{\"to\":\"local\",\"body\":\"b\"},1]");
    assert_int_equal(proto_from_json(o->child, &n, &e), TDG_EINVAL_INPUT);
    assert_int_equal(e.reason, PROTO_R_NOT_OBJECT);
    assert_int_equal(cJSON_GetArraySize(o), 2);
    cJSON_Delete(o);

    assert_int_equal(proto_from_json(NULL, &n, &e), TDG_EINVAL_INPUT);
    assert_int_equal(e.reason, PROTO_R_NOT_OBJECT);
    assert_int_equal(proto_from_json(cJSON_CreateArray(), &n, &e), TDG_EINVAL_INPUT);
    assert_int_equal(e.reason, PROTO_R_NOT_OBJECT);

    /* A hand-built tree is held to the same text rules. */
    o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "to", "local");
    cJSON_AddStringToObject(o, "body", "bad \xC0\x80");
    assert_int_equal(proto_from_json(o, &n, &e), TDG_EINVAL_INPUT);
    assert_int_equal(e.reason, PROTO_R_BAD_UTF8);
    assert_string_equal(e.field, "body");

    o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "to", "local");
    cJSON_AddStringToObject(o, "body", "b");
    cJSON_AddNumberToObject(o, "x", HUGE_VAL);
    assert_int_equal(proto_from_json(o, &n, &e), TDG_EINVAL_INPUT);
    assert_int_equal(e.reason, PROTO_R_OUT_OF_RANGE);

    o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "to", "local");
    cJSON_AddStringToObject(o, "to", "local");
    cJSON_AddStringToObject(o, "body", "b");
    assert_int_equal(proto_from_json(o, &n, &e), TDG_EINVAL_INPUT);
    assert_int_equal(e.reason, PROTO_R_DUPLICATE_KEY);

    /* Too deep for a hand-built tree too. */
    o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "to", "local");
    cJSON_AddStringToObject(o, "body", "b");
    {
        cJSON *cur = cJSON_AddArrayToObject(o, "deep");
        for (int i = 0; i < PROTO_MAX_DEPTH; i++) {
            cJSON *next = cJSON_CreateArray();
            cJSON_AddItemToArray(cur, next);
            cur = next;
        }
    }
    assert_int_equal(proto_from_json(o, &n, &e), TDG_EINVAL_INPUT);
    assert_int_equal(e.reason, PROTO_R_MALFORMED_JSON);
}

/* --- ids -------------------------------------------------------------- */

#define N_IDS 100000

static void check_id_shape(const char *id)
{
    assert_int_equal(strlen(id), PROTO_GENERATED_ID_LEN);
    assert_true(id[0] >= '0' && id[0] <= '7'); /* 48-bit time in 50 bits */
    for (size_t i = 0; i < PROTO_GENERATED_ID_LEN; i++) {
        assert_non_null(strchr("0123456789ABCDEFGHJKMNPQRSTVWXYZ", id[i]));
    }
    assert_true(proto_id_valid(id));
}

static int64_t id_time_ms(const char *id)
{
    static const char alpha[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    int64_t v = 0;

    for (int i = 0; i < 10; i++) {
        v = v * 32 + (int64_t)(strchr(alpha, id[i]) - alpha);
    }
    return v;
}

static void test_ids(void **state)
{
    char(*ids)[PROTO_GENERATED_ID_LEN + 1] = malloc(N_IDS * sizeof(*ids));
    struct timespec ts;
    int64_t before, after;

    (void)state;
    assert_non_null(ids);
    clock_gettime(CLOCK_REALTIME, &ts);
    before = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    for (int i = 0; i < N_IDS; i++) {
        assert_int_equal(proto_id_new(ids[i]), 0);
    }
    clock_gettime(CLOCK_REALTIME, &ts);
    after = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    for (int i = 0; i < N_IDS; i++) {
        check_id_shape(ids[i]);
        /* strictly increasing, hence unique */
        if (i > 0 && strcmp(ids[i - 1], ids[i]) >= 0) {
            print_error("ids %d and %d out of order: %s %s\n", i - 1, i, ids[i - 1], ids[i]);
            fail();
        }
    }
    /* The time part is the wall clock (it may run ahead only if more than
     * 2^80 ids were made in one millisecond). */
    assert_true(id_time_ms(ids[0]) >= before);
    assert_true(id_time_ms(ids[N_IDS - 1]) <= after);
    assert_int_equal(proto_id_new(NULL), -EINVAL);
    free(ids);
}

#define N_THREADS 4
#define N_PER_THREAD 5000

struct id_thread {
    char ids[N_PER_THREAD][PROTO_GENERATED_ID_LEN + 1];
    int rc;
};

static void *id_thread_main(void *arg)
{
    struct id_thread *t = arg;

    for (int i = 0; i < N_PER_THREAD && t->rc == 0; i++) {
        t->rc = proto_id_new(t->ids[i]);
        if (t->rc == 0 && i > 0 && strcmp(t->ids[i - 1], t->ids[i]) >= 0) {
            t->rc = -1;
        }
    }
    return NULL;
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void test_ids_threads(void **state)
{
    struct id_thread *t = calloc(N_THREADS, sizeof(*t));
    pthread_t th[N_THREADS];
    char(*all)[PROTO_GENERATED_ID_LEN + 1] = malloc(N_THREADS * N_PER_THREAD * sizeof(*all));

    (void)state;
    assert_non_null(t);
    assert_non_null(all);
    for (int i = 0; i < N_THREADS; i++) {
        assert_int_equal(pthread_create(&th[i], NULL, id_thread_main, &t[i]), 0);
    }
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(t[i].rc, 0);
        memcpy(all[i * N_PER_THREAD], t[i].ids, sizeof(t[i].ids));
    }
    qsort(all, N_THREADS * N_PER_THREAD, sizeof(*all), cmp_id);
    for (int i = 1; i < N_THREADS * N_PER_THREAD; i++) {
        assert_true(strcmp(all[i - 1], all[i]) < 0);
    }
    free(all);
    free(t);
}

/* --- time ------------------------------------------------------------- */

static int64_t rfc(const char *s)
{
    int64_t ms = -1;

    if (proto_parse_rfc3339(s, &ms) != 0) {
        print_error("rejected: %s\n", s);
        fail();
    }
    return ms;
}

static void test_rfc3339(void **state)
{
    static const char *const bad[] = {
        "",
        "garbage",
        "2026-11-21",
        "2026-11-21T22:49",
        "2026-11-21T22:49:47",      /* no offset */
        "2026-11-21 22:49:47Z",     /* space instead of T */
        "2026-11-21T22:49:47+0100", /* offset without colon */
        "2026-11-21T22:49:47+01",
        "2026-11-21T22:49:47+24:00",
        "2026-11-21T22:49:47+01:60",
        "2026-11-21T22:49:47.Z", /* empty fraction */
        "2026-11-21T22:49:47ZZ",
        "2026-11-21T22:49:47Z ",
        "2026-1-21T22:49:47Z",
        "26-11-21T22:49:47Z",
        "2026-00-10T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-01-00T00:00:00Z",
        "2026-01-32T00:00:00Z",
        "2026-04-31T00:00:00Z",
        "2023-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z", /* not a leap year (century) */
        "2026-01-01T24:00:00Z",
        "2026-01-01T25:00:00Z",
        "2026-01-01T00:60:00Z",
        "2026-01-01T00:00:60Z", /* leap seconds refused */
        "2026-01-01T00:00:0aZ",
        "+2026-01-01T00:00:00Z",
    };
    char buf[32];
    int64_t ms;

    (void)state;
    assert_true(rfc("1970-01-01T00:00:00Z") == 0);
    assert_true(rfc("2026-11-21T22:49:47Z") == INT64_C(1795301387000));
    assert_true(rfc("2026-11-21t22:49:47z") == INT64_C(1795301387000));
    assert_true(rfc("2026-11-22T04:19:47+05:30") == INT64_C(1795301387000));
    assert_true(rfc("2026-11-21T14:49:47-08:00") == INT64_C(1795301387000));
    assert_true(rfc("2026-11-21T22:49:47-00:00") == INT64_C(1795301387000));
    assert_true(rfc("2026-11-21T22:49:47.1Z") == INT64_C(1795301387100));
    assert_true(rfc("2026-11-21T22:49:47.12Z") == INT64_C(1795301387120));
    assert_true(rfc("2026-11-21T22:49:47.123Z") == INT64_C(1795301387123));
    assert_true(rfc("2026-11-21T22:49:47.123999999Z") == INT64_C(1795301387123));
    assert_true(rfc("2024-02-29T12:00:00Z") == INT64_C(1709208000000));
    assert_true(rfc("2000-02-29T00:00:00Z") == INT64_C(951782400000));
    assert_true(rfc("1969-12-31T23:59:59.999Z") == -1);
    assert_true(rfc("0000-01-01T00:00:00Z") == INT64_C(-62167219200000));
    assert_true(rfc("9999-12-31T23:59:59.999Z") == INT64_C(253402300799999));
    assert_true(rfc("2038-01-19T03:14:08Z") == INT64_C(2147483648000)); /* past 32-bit time_t */
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (proto_parse_rfc3339(bad[i], &ms) != TDG_EINVAL_INPUT) {
            print_error("accepted: '%s'\n", bad[i]);
            fail();
        }
    }
    assert_int_equal(proto_parse_rfc3339(NULL, &ms), TDG_EINVAL_INPUT);

    proto_format_rfc3339(INT64_C(1795301387123), buf, sizeof(buf));
    assert_string_equal(buf, "2026-11-21T22:49:47.123Z");
    proto_format_rfc3339(0, buf, 25);
    assert_string_equal(buf, "1970-01-01T00:00:00.000Z");
    proto_format_rfc3339(-1, buf, sizeof(buf));
    assert_string_equal(buf, "1969-12-31T23:59:59.999Z");
    proto_format_rfc3339(INT64_C(1709208000000), buf, sizeof(buf));
    assert_string_equal(buf, "2024-02-29T12:00:00.000Z");
    proto_format_rfc3339(INT64_MAX, buf, sizeof(buf));
    assert_string_equal(buf, "9999-12-31T23:59:59.999Z");
    proto_format_rfc3339(INT64_MIN, buf, sizeof(buf));
    assert_string_equal(buf, "0000-01-01T00:00:00.000Z");
    proto_format_rfc3339(0, buf, 5);
    assert_string_equal(buf, "1970");
    /* format then parse is the identity, across eras and leap days */
    {
        static const int64_t samples[] = {0,
                                          1,
                                          -86400000,
                                          INT64_C(951825600000),
                                          INT64_C(4102444800000),
                                          INT64_C(-2208988800001),
                                          INT64_C(253402300799999)};
        for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
            proto_format_rfc3339(samples[i], buf, sizeof(buf));
            assert_true(rfc(buf) == samples[i]);
        }
    }
}

static void test_local_time(void **state)
{
    int64_t ms;

    (void)state;
    assert_int_equal(proto_parse_local_time("1970-01-01T00:00:01", &ms), 0);
    assert_true(ms == 1000);
    assert_int_equal(proto_parse_local_time("2026-11-22T08:00", &ms), 0);
    assert_true(ms == INT64_C(1795334400000));
    assert_int_equal(proto_parse_local_time("2024-02-29T23:59:59", &ms), 0);
    assert_int_equal(proto_parse_local_time("2023-02-29T08:00", &ms), TDG_EINVAL_INPUT);
    assert_int_equal(proto_parse_local_time("2026-11-22T08:00Z", &ms), TDG_EINVAL_INPUT);
    assert_int_equal(proto_parse_local_time("2026-11-22T08:00:00.5", &ms), TDG_EINVAL_INPUT);
    assert_int_equal(proto_parse_local_time("2026-11-22T08", &ms), TDG_EINVAL_INPUT);
    assert_int_equal(proto_parse_local_time("2026-11-22T08:00:", &ms), TDG_EINVAL_INPUT);
    assert_int_equal(proto_parse_local_time("2026-11-22", &ms), TDG_EINVAL_INPUT);
}

/* --- topics ----------------------------------------------------------- */

static void test_topics(void **state)
{
    static const struct {
        enum proto_topic_kind kind;
        const char *want;
    } t[] = {
        {PROTO_TOPIC_LOCAL_NOTIFY, "tidings/v1/local/notify"},
        {PROTO_TOPIC_UP, "tidings/v1/agents/gw-1/up"},
        {PROTO_TOPIC_ACK, "tidings/v1/agents/gw-1/ack"},
        {PROTO_TOPIC_DOWN, "tidings/v1/agents/gw-1/down"},
        {PROTO_TOPIC_POLICY, "tidings/v1/agents/gw-1/policy"},
        {PROTO_TOPIC_RECEIPTS, "tidings/v1/agents/gw-1/receipts"},
        {PROTO_TOPIC_STATUS, "tidings/v1/agents/gw-1/status"},
    };
    char buf[160], small[8], agent[PROTO_AGENT_MAX + 1];
    char *a64 = rep('a', 64), *a65 = rep('a', 65);
    size_t need;

    (void)state;
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        assert_int_equal(proto_topic(buf, sizeof(buf), t[i].kind, "gw-1"), 0);
        assert_string_equal(buf, t[i].want);
    }
    assert_int_equal(proto_topic(buf, sizeof(buf), PROTO_TOPIC_LOCAL_NOTIFY, NULL), 0);
    assert_int_equal(proto_topic(buf, sizeof(buf), PROTO_TOPIC_UP, a64), 0);
    assert_int_equal(proto_topic(buf, sizeof(buf), PROTO_TOPIC_UP, a65), -EINVAL);
    assert_int_equal(proto_topic(buf, sizeof(buf), PROTO_TOPIC_UP, ""), -EINVAL);
    assert_int_equal(proto_topic(buf, sizeof(buf), PROTO_TOPIC_UP, NULL), -EINVAL);
    assert_int_equal(proto_topic(buf, sizeof(buf), PROTO_TOPIC_UP, "a/b"), -EINVAL);
    assert_int_equal(proto_topic(buf, sizeof(buf), PROTO_TOPIC_UP, "a+"), -EINVAL);
    assert_int_equal(proto_topic(buf, sizeof(buf), PROTO_TOPIC_UP, "#"), -EINVAL);
    assert_int_equal(proto_topic(buf, sizeof(buf), PROTO_TOPIC_UP, "a b"), -EINVAL);
    assert_int_equal(proto_topic(buf, sizeof(buf), (enum proto_topic_kind)99, "a"), -EINVAL);
    /* ENOSPC exactly at the boundary, and never a truncated topic */
    need = strlen("tidings/v1/agents/gw-1/receipts") + 1;
    assert_int_equal(proto_topic(buf, need, PROTO_TOPIC_RECEIPTS, "gw-1"), 0);
    assert_int_equal(proto_topic(buf, need - 1, PROTO_TOPIC_RECEIPTS, "gw-1"), -ENOSPC);
    assert_string_equal(buf, "");
    assert_int_equal(proto_topic(small, sizeof(small), PROTO_TOPIC_LOCAL_NOTIFY, NULL), -ENOSPC);

    assert_true(proto_agent_id_valid("A.b_c-9"));
    assert_true(proto_agent_id_valid(a64));
    assert_false(proto_agent_id_valid(a65));
    assert_false(proto_agent_id_valid("\xC3\xA9"));

    assert_int_equal(proto_topic_agent("tidings/v1/agents/gw-1/up", "up", agent, sizeof(agent)), 0);
    assert_string_equal(agent, "gw-1");
    assert_int_equal(proto_topic_agent("tidings/v1/agents/gw-1/up", "up", NULL, 0), 0);
    assert_int_equal(proto_topic_agent("tidings/v1/agents/gw-1/ack", "up", agent, sizeof(agent)),
                     -EINVAL);
    assert_int_equal(proto_topic_agent("tidings/v1/agents/gw-1/upx", "up", agent, sizeof(agent)),
                     -EINVAL);
    assert_int_equal(proto_topic_agent("tidings/v1/agents/gw-1/x/up", "up", agent, sizeof(agent)),
                     -EINVAL);
    assert_int_equal(proto_topic_agent("tidings/v1/agents//up", "up", agent, sizeof(agent)),
                     -EINVAL);
    assert_int_equal(proto_topic_agent("tidings/v1/agents/a+b/up", "up", agent, sizeof(agent)),
                     -EINVAL);
    assert_int_equal(proto_topic_agent("tidings/v2/agents/gw-1/up", "up", agent, sizeof(agent)),
                     -EINVAL);
    assert_int_equal(proto_topic_agent("tidings/v1/agents/gw-1", "up", agent, sizeof(agent)),
                     -EINVAL);
    assert_int_equal(
        proto_topic_agent("$share/hub/tidings/v1/agents/gw-1/up", "up", agent, sizeof(agent)),
        -EINVAL);
    assert_int_equal(proto_topic_agent(NULL, "up", agent, sizeof(agent)), -EINVAL);
    assert_int_equal(proto_topic_agent("tidings/v1/agents/gw-1/up", "", agent, sizeof(agent)),
                     -EINVAL);
    snprintf(buf, sizeof(buf), "tidings/v1/agents/%s/up", a64);
    assert_int_equal(proto_topic_agent(buf, "up", agent, sizeof(agent)), 0);
    assert_string_equal(agent, a64);
    snprintf(buf, sizeof(buf), "tidings/v1/agents/%s/up", a65);
    assert_int_equal(proto_topic_agent(buf, "up", agent, sizeof(agent)), -EINVAL);
    assert_int_equal(proto_topic_agent("tidings/v1/agents/gw-1/up", "up", small, 5), 0);
    assert_int_equal(proto_topic_agent("tidings/v1/agents/gw-1/up", "up", small, 4), -ENOSPC);
    free(a64);
    free(a65);
}

/* --- batches ---------------------------------------------------------- */

struct collect {
    int calls;
    int accepted;
    int rejected;
    enum proto_reason last_reason;
    char ids[8][PROTO_ID_MAX + 1];
};

/* What the hub does with each item: validate a copy. */
static void collect_cb(cJSON *item, void *arg)
{
    struct collect *c = arg;
    struct notification n;
    struct proto_error e;

    c->calls++;
    if (proto_from_json(cJSON_Duplicate(item, 1), &n, &e) == 0) {
        if (c->accepted < 8 && n.id) {
            snprintf(c->ids[c->accepted], sizeof(c->ids[0]), "%s", n.id);
        }
        c->accepted++;
        notification_free(&n);
    } else {
        c->rejected++;
        c->last_reason = e.reason;
    }
}

static void test_batch_builder(void **state)
{
    struct proto_batch b;
    struct collect c;
    char agent[PROTO_AGENT_MAX + 1];
    struct proto_error e;
    char *a64 = rep('g', 64), *item, *big;
    size_t before;
    unsigned count;
    int rc;

    (void)state;
    assert_int_equal(proto_batch_init(&b, PROTO_BATCH_MIN_CAP, "a/b"), -EINVAL);
    assert_null(b.buf);
    assert_int_equal(proto_batch_init(&b, PROTO_BATCH_MIN_CAP, NULL), -EINVAL);
    assert_int_equal(proto_batch_init(&b, PROTO_BATCH_MIN_CAP - 1, "gw"), -EINVAL);

    /* Empty batch. */
    assert_int_equal(proto_batch_init(&b, PROTO_BATCH_MIN_CAP, "gw-1"), 0);
    assert_int_equal(proto_batch_finish(&b), 0);
    assert_string_equal(b.buf, "{\"v\":1,\"agent\":\"gw-1\",\"items\":[]}");
    assert_int_equal(b.len, strlen(b.buf));
    proto_batch_free(&b);
    assert_null(b.buf);
    proto_batch_free(&b);

    /* A maximal item always fits an empty batch at the minimum cap, even
     * with the longest agent id. */
    big = sized(PROTO_MAX_WIRE, "");
    assert_int_equal(proto_batch_init(&b, PROTO_BATCH_MIN_CAP, a64), 0);
    assert_int_equal(proto_batch_add(&b, big, strlen(big)), 0);
    assert_int_equal(proto_batch_finish(&b), 0);
    assert_true(b.len <= b.cap);
    memset(&c, 0, sizeof(c));
    assert_int_equal(proto_batch_parse(b.buf, b.len, agent, sizeof(agent), collect_cb, &c, &e), 0);
    assert_string_equal(agent, a64);
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.accepted, 1);
    proto_batch_free(&b);
    free(big);

    /* Fill until full: the refused add leaves the batch as it was, and the
     * batch still closes into a valid envelope. */
    assert_int_equal(proto_batch_init(&b, PROTO_BATCH_MIN_CAP, "gw-1"), 0);
    assert_int_equal(proto_batch_add(&b, "[]", 2), -EINVAL);
    assert_int_equal(proto_batch_add(&b, "{", 1), -EINVAL);
    assert_int_equal(proto_batch_add(&b, "", 0), -EINVAL);
    for (int i = 0;; i++) {
        item = fmt("{\"id\":\"n-%04d\",\"to\":\"local\",\"title\":\"%0200d\"}", i, i);
        before = b.len;
        count = b.count;
        rc = proto_batch_add(&b, item, strlen(item));
        free(item);
        if (rc != 0) {
            assert_int_equal(rc, -ENOSPC);
            assert_int_equal(b.len, before);
            assert_int_equal(b.count, count);
            break;
        }
        assert_true(b.len + 2 <= b.cap);
    }
    assert_true(b.count > 10);
    assert_int_equal(proto_batch_finish(&b), 0);
    assert_true(b.len <= b.cap);
    assert_int_equal(b.buf[b.len], '\0');
    memset(&c, 0, sizeof(c));
    assert_int_equal(proto_batch_parse(b.buf, b.len, agent, sizeof(agent), collect_cb, &c, &e), 0);
    assert_int_equal(c.calls, (int)b.count);
    assert_int_equal(c.accepted, (int)b.count);
    assert_string_equal(c.ids[0], "n-0000");
    assert_string_equal(c.ids[7], "n-0007");

    /* Reset keeps agent and buffer and starts over. */
    assert_int_equal(proto_batch_reset(&b), 0);
    assert_int_equal(b.count, 0);
    assert_int_equal(proto_batch_add(&b, "{\"to\":\"local\",\"title\":\"t\"}", 26), 0);
    assert_int_equal(proto_batch_finish(&b), 0);
    assert_string_equal(
        b.buf, "{\"v\":1,\"agent\":\"gw-1\",\"items\":[{\"to\":\"local\",\"title\":\"t\"}]}");
    proto_batch_free(&b);
    assert_int_equal(proto_batch_reset(&b), -EINVAL);

    /* Exactly at the cap: an item that fills the room to the byte fits. */
    assert_int_equal(proto_batch_init(&b, PROTO_BATCH_MIN_CAP, "gw-1"), 0);
    {
        size_t room = b.cap - b.len - 2;
        char *s1 = sized(room, ""), *s2 = sized(room + 1, "");
        assert_int_equal(proto_batch_add(&b, s2, strlen(s2)), -ENOSPC);
        assert_int_equal(proto_batch_add(&b, s1, strlen(s1)), 0);
        assert_int_equal(proto_batch_finish(&b), 0);
        assert_int_equal(b.len, b.cap);
        assert_int_equal(proto_batch_finish(&b), -ENOSPC); /* twice */
        free(s1);
        free(s2);
    }
    proto_batch_free(&b);
    free(a64);
}

/* proto_item_check on a batch item gives what proto_parse gives on the
 * item's compact text (the hub's intake checks items in place). */
struct item_check_ctx {
    int n;
    int rc[8], prc[8];
    enum proto_reason r[8], pr[8];
};

static void item_check_cb(cJSON *item, void *arg)
{
    struct item_check_ctx *c = arg;
    char json[PROTO_MAX_WIRE + 64];
    size_t len = sizeof(json);
    if (cJSON_PrintPreallocated(item, json, (int)sizeof(json), 0)) {
        len = strlen(json);
    }
    struct notification n, pn;
    struct proto_error e, pe;
    memset(&e, 0, sizeof(e));
    memset(&pe, 0, sizeof(pe));
    c->rc[c->n] = proto_item_check(item, len, &n, &e);
    c->r[c->n] = c->rc[c->n] ? e.reason : PROTO_OK;
    if (c->rc[c->n] == 0) {
        assert_null(n.json);
        assert_non_null(n.to);
        notification_free(&n); /* must leave the borrowed item alone */
    }
    c->prc[c->n] = len <= PROTO_MAX_WIRE ? proto_parse(json, len, &pn, &pe) : TDG_ETOOBIG;
    c->pr[c->n] = c->prc[c->n] ? (len <= PROTO_MAX_WIRE ? pe.reason : PROTO_R_TOO_LARGE) : PROTO_OK;
    if (c->prc[c->n] == 0) {
        notification_free(&pn);
    }
    c->n++;
}

static void test_item_check(void **state)
{
    (void)state;
    static char big[PROTO_MAX_WIRE + 200];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    char *buf = malloc(sizeof(big) + 1024);
    assert_non_null(buf);
    snprintf(buf, sizeof(big) + 1024,
             "{\"v\":1,\"agent\":\"gw1\",\"items\":["
             "{\"id\":\"a1\",\"to\":\"user:alice\",\"title\":\"hi\",\"data\":{\"k\":1e14}},"
             "{\"id\":\"a2\",\"to\":\"user:alice\",\"body\":\"%s\"},"
             "{\"id\":\"a3\",\"to\":\"nobody\",\"title\":\"x\"},"
             "{\"id\":\"a4\",\"to\":\"user:alice\"},"
             "\"not an object\"]}",
             big);
    struct item_check_ctx c = {0};
    struct proto_error e;
    char agent[PROTO_AGENT_MAX + 1];
    assert_int_equal(proto_batch_parse(buf, strlen(buf), agent, sizeof(agent), item_check_cb, &c, &e),
                     0);
    assert_int_equal(c.n, 5);
    assert_int_equal(c.rc[0], 0);
    assert_int_equal(c.rc[1], TDG_ETOOBIG);
    assert_int_equal(c.r[1], PROTO_R_TOO_LARGE);
    for (int i = 0; i < c.n; i++) {
        assert_int_equal(c.rc[i], c.prc[i]);
        assert_int_equal(c.r[i], c.pr[i]);
    }
    free(buf);
}

static void test_batch_parse(void **state)
{
    static const char *const bad[] = {
        "{\"agent\":\"gw\",\"items\":[]}",
        "{\"v\":\"1\",\"agent\":\"gw\",\"items\":[]}",
        "{\"v\":2,\"agent\":\"gw\",\"items\":[]}",
        "{\"v\":1,\"items\":[]}",
        "{\"v\":1,\"agent\":5,\"items\":[]}",
        "{\"v\":1,\"agent\":\"a/b\",\"items\":[]}",
        "{\"v\":1,\"agent\":\"\",\"items\":[]}",
        "{\"v\":1,\"agent\":\"gw\"}",
        "{\"v\":1,\"agent\":\"gw\",\"items\":{}}",
        "{\"v\":1,\"v\":1,\"agent\":\"gw\",\"items\":[]}",
        "[1]",
        "{\"v\":1,\"agent\":\"gw\",\"items\":[{}]",
        "{\"v\":1,\"agent\":\"gw\",\"items\":[{}]} x",
        "",
    };
    static const enum proto_reason why[] = {
        PROTO_R_BAD_VERSION,    PROTO_R_BAD_VERSION,    PROTO_R_BAD_VERSION, PROTO_R_MISSING_FIELD,
        PROTO_R_WRONG_TYPE,     PROTO_R_BAD_VALUE,      PROTO_R_BAD_VALUE,   PROTO_R_MISSING_FIELD,
        PROTO_R_WRONG_TYPE,     PROTO_R_DUPLICATE_KEY,  PROTO_R_NOT_OBJECT,  PROTO_R_MALFORMED_JSON,
        PROTO_R_MALFORMED_JSON, PROTO_R_MALFORMED_JSON,
    };
    static const char good[] = "{\"v\":1,\"agent\":\"gw-2\",\"future\":{\"x\":1},\"items\":["
                               "{\"id\":\"a\",\"to\":\"local\",\"title\":\"t\"},"
                               "{\"id\":\"b\",\"to\":\"nobody\",\"title\":\"t\"},"
                               "{\"id\":\"c\",\"to\":\"local\",\"title\":\"x\\u0000y\"},"
                               "[1],"
                               "{\"id\":\"d\",\"to\":\"local\",\"body\":\"b\"}]}";
    struct collect c;
    struct proto_error e;
    char agent[PROTO_AGENT_MAX + 1], tiny[3];
    char *buf;

    (void)state;
    assert_int_equal(sizeof(bad) / sizeof(bad[0]), sizeof(why) / sizeof(why[0]));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t len = strlen(bad[i]);
        buf = malloc(len + 1);
        memcpy(buf, bad[i], len);
        memset(&c, 0, sizeof(c));
        memset(&e, 0, sizeof(e));
        assert_int_equal(proto_batch_parse(buf, len, agent, sizeof(agent), collect_cb, &c, &e),
                         TDG_EINVAL_INPUT);
        if (e.reason != why[i]) {
            print_error("%s: want %s got %s (%s)\n", bad[i], proto_reason_code(why[i]),
                        proto_reason_code(e.reason), e.detail);
            fail();
        }
        assert_int_equal(c.calls, 0);
        free(buf);
    }

    /* One bad item never rejects the others. */
    memset(&c, 0, sizeof(c));
    assert_int_equal(
        proto_batch_parse(good, strlen(good), agent, sizeof(agent), collect_cb, &c, &e), 0);
    assert_string_equal(agent, "gw-2");
    assert_int_equal(c.calls, 5);
    assert_int_equal(c.accepted, 2);
    assert_int_equal(c.rejected, 3);
    assert_string_equal(c.ids[0], "a");
    assert_string_equal(c.ids[1], "d");

    /* The \u0000 item is rejected as bad_value on its own. */
    memset(&c, 0, sizeof(c));
    {
        static const char one[] =
            "{\"v\":1,\"agent\":\"g\",\"items\":[{\"to\":\"local\",\"title\":\"x\\u0000\"}]}";
        assert_int_equal(proto_batch_parse(one, strlen(one), NULL, 0, collect_cb, &c, &e), 0);
    }
    assert_int_equal(c.rejected, 1);
    assert_int_equal(c.last_reason, PROTO_R_BAD_VALUE);

    /* "v":1.0 is the number 1. */
    {
        static const char v10[] = "{\"v\":1.0,\"agent\":\"g\",\"items\":[]}";
        assert_int_equal(proto_batch_parse(v10, strlen(v10), NULL, 0, NULL, NULL, &e), 0);
    }

    /* agent_out too small; NULL callback is allowed. */
    assert_int_equal(proto_batch_parse(good, strlen(good), tiny, sizeof(tiny), collect_cb, &c, &e),
                     -ENOSPC);
    assert_int_equal(proto_batch_parse(good, strlen(good), NULL, 0, NULL, NULL, &e), 0);
}

/* --- acks ------------------------------------------------------------- */

/* The ack envelope as the cJSON tree proto_acks_serialize used to print. */
static char *acks_via_cjson(const struct proto_ack *acks, size_t n)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddNumberToObject(root, "v", 1);
    cJSON *arr = cJSON_AddArrayToObject(root, "acks");
    for (size_t i = 0; i < n; i++) {
        const struct proto_ack *a = &acks[i];
        char id[sizeof(a->id)], field[sizeof(a->field)];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToArray(arr, o);
        memcpy(id, a->id, sizeof(id));
        id[sizeof(id) - 1] = '\0';
        memcpy(field, a->field, sizeof(field));
        field[sizeof(field) - 1] = '\0';
        cJSON_AddStringToObject(o, "id", id);
        cJSON_AddBoolToObject(o, "ok", a->ok);
        if (a->ok) {
            continue;
        }
        cJSON_AddStringToObject(o, "reason", proto_reason_code(a->reason));
        if (field[0]) {
            cJSON_AddStringToObject(o, "field", field);
        }
    }
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

/* proto_acks_serialize writes the envelope directly: byte for byte what the
 * cJSON tree printed, for ok and rejected items, escaped fields, arrays
 * without a NUL, and envelopes longer than its first guess at the size. */
static void test_acks_bytes(void **state)
{
    (void)state;
    enum { N = 300 };
    struct proto_ack *in = calloc(N, sizeof(*in));
    assert_non_null(in);
    for (size_t i = 0; i < N; i++) {
        struct proto_ack *a = &in[i];
        snprintf(a->id, sizeof(a->id), "gw-%zu", i);
        a->ok = i % 3 == 0;
        a->reason = (enum proto_reason)(1 + i % (PROTO_REASON_COUNT - 1));
        switch (i % 5) {
        case 0:
            break; /* no field */
        case 1:
            snprintf(a->field, sizeof(a->field), "data.\"k\\%zu\"\n\t\x01", i);
            break;
        case 2:
            memset(a->field, '"', sizeof(a->field)); /* no NUL: 47 are printed */
            break;
        case 3:
            memset(a->id, 'i', sizeof(a->id)); /* no NUL in the id either */
            snprintf(a->field, sizeof(a->field), "channels[%zu]", i);
            break;
        default:
            snprintf(a->field, sizeof(a->field), "data.\xc3\xa9t\xc3\xa9");
            break;
        }
    }
    for (size_t n = 0; n <= N; n += (n < 10 ? 1 : 29)) {
        size_t len = 0;
        char *got = proto_acks_serialize(in, n, &len);
        char *want = acks_via_cjson(in, n);
        assert_non_null(got);
        assert_non_null(want);
        assert_string_equal(got, want);
        assert_int_equal(len, strlen(want));
        free(got);
        free(want);
    }
    free(in);
}

static void test_acks(void **state)
{
    struct proto_ack in[4], *out = NULL;
    struct proto_error e;
    size_t n = 0, len = 0;
    char *s;

    (void)state;
    memset(in, 0, sizeof(in));
    snprintf(in[0].id, sizeof(in[0].id), "01J0000000000000000000000A");
    in[0].ok = true;
    snprintf(in[1].id, sizeof(in[1].id), "ord-2");
    in[1].ok = false;
    in[1].reason = PROTO_R_TOO_LONG;
    snprintf(in[1].field, sizeof(in[1].field), "title");
    snprintf(in[2].id, sizeof(in[2].id), "ord-3");
    in[2].ok = false;
    in[2].reason = PROTO_R_NO_CONTENT;
    snprintf(in[3].id, sizeof(in[3].id), "ord-4");
    in[3].ok = false;
    in[3].reason = PROTO_R_BAD_VALUE;
    snprintf(in[3].field, sizeof(in[3].field), "data.\"quoted\"");

    s = proto_acks_serialize(in, 4, &len);
    assert_non_null(s);
    assert_int_equal(len, strlen(s));
    assert_non_null(strstr(s, "{\"id\":\"ord-2\",\"ok\":false,\"reason\":\"too_long\","
                              "\"field\":\"title\"}"));
    assert_non_null(strstr(s, "{\"id\":\"01J0000000000000000000000A\",\"ok\":true}"));
    assert_memory_equal(s, "{\"v\":1,\"acks\":[", 14);
    assert_int_equal(proto_acks_parse(s, len, &out, &n, &e), 0);
    assert_int_equal(n, 4);
    for (size_t i = 0; i < 4; i++) {
        assert_string_equal(out[i].id, in[i].id);
        assert_int_equal(out[i].ok, in[i].ok);
        assert_int_equal(out[i].reason, in[i].ok ? PROTO_OK : in[i].reason);
        assert_string_equal(out[i].field, in[i].field);
    }
    free(out);
    free(s);

    /* Empty. */
    s = proto_acks_serialize(NULL, 0, &len);
    assert_string_equal(s, "{\"v\":1,\"acks\":[]}");
    assert_int_equal(proto_acks_parse(s, len, &out, &n, &e), 0);
    assert_int_equal(n, 0);
    assert_null(out);
    free(s);

    /* Codes from a newer hub map to bad_value; missing reason too. */
    {
        static const char newer[] =
            "{\"v\":1,\"acks\":[{\"id\":\"a\",\"ok\":false,\"reason\":\"from_the_future\","
            "\"field\":\"x\",\"extra\":1},{\"id\":\"b\",\"ok\":false},"
            "{\"id\":\"c\",\"ok\":false,\"reason\":\"unknown_recipient\",\"field\":\"to\"}],"
            "\"more\":true}";
        assert_int_equal(proto_acks_parse(newer, strlen(newer), &out, &n, &e), 0);
        assert_int_equal(n, 3);
        assert_int_equal(out[0].reason, PROTO_R_BAD_VALUE);
        assert_string_equal(out[0].field, "x");
        assert_int_equal(out[1].reason, PROTO_R_BAD_VALUE);
        assert_int_equal(out[2].reason, PROTO_R_UNKNOWN_RECIPIENT);
        free(out);
    }

    /* Bad envelopes. */
    {
        static const char *const bad[] = {
            "{\"v\":2,\"acks\":[]}",
            "{\"acks\":[]}",
            "{\"v\":1}",
            "{\"v\":1,\"acks\":{}}",
            "{\"v\":1,\"acks\":[1]}",
            "{\"v\":1,\"acks\":[{\"ok\":true}]}",
            "{\"v\":1,\"acks\":[{\"id\":\"a\"}]}",
            "{\"v\":1,\"acks\":[{\"id\":\"a b\",\"ok\":true}]}",
            "{\"v\":1,\"acks\":[{\"id\":\"a\",\"ok\":1}]}",
            "{\"v\":1,\"acks\":[{\"id\":5,\"ok\":true}]}",
            "{\"v\":1,\"acks\":[]",
            "[]",
            "{\"v\":1.5,\"acks\":[]}",
        };
        static const enum proto_reason why[] = {
            PROTO_R_BAD_VERSION, PROTO_R_BAD_VERSION,   PROTO_R_MISSING_FIELD,  PROTO_R_WRONG_TYPE,
            PROTO_R_WRONG_TYPE,  PROTO_R_MISSING_FIELD, PROTO_R_MISSING_FIELD,  PROTO_R_BAD_VALUE,
            PROTO_R_WRONG_TYPE,  PROTO_R_WRONG_TYPE,    PROTO_R_MALFORMED_JSON, PROTO_R_NOT_OBJECT,
            PROTO_R_BAD_VERSION,
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            out = (struct proto_ack *)1;
            assert_int_equal(proto_acks_parse(bad[i], strlen(bad[i]), &out, &n, &e),
                             TDG_EINVAL_INPUT);
            assert_null(out);
            assert_int_equal(n, 0);
            if (e.reason != why[i]) {
                print_error("%s: want %s got %s\n", bad[i], proto_reason_code(why[i]),
                            proto_reason_code(e.reason));
                fail();
            }
        }
    }
}

/* --- receipts parsing --------------------------------------------------- */

struct rcpt_seen {
    struct proto_receipt r[8];
    struct proto_error bad[8];
    bool ok[8];
    int n;
};

static void rcpt_cb(void *arg, const struct proto_receipt *r, const struct proto_error *bad)
{
    struct rcpt_seen *s = arg;
    assert_true(s->n < 8);
    assert_true((r == NULL) != (bad == NULL));
    s->ok[s->n] = r != NULL;
    if (r) {
        s->r[s->n] = *r;
    } else {
        s->bad[s->n] = *bad;
    }
    s->n++;
}

static void test_receipts_parse(void **state)
{
    (void)state;
    struct proto_receipt in[2];
    struct proto_error e;
    size_t len;
    memset(in, 0, sizeof(in));
    snprintf(in[0].id, sizeof(in[0].id), "order-7");
    snprintf(in[0].state, sizeof(in[0].state), "delivered");
    in[0].at_ms = 1795310605512;
    in[0].nch = 2;
    snprintf(in[0].ch[0].channel, sizeof(in[0].ch[0].channel), "apns");
    snprintf(in[0].ch[0].result, sizeof(in[0].ch[0].result), "ok");
    in[0].ch[0].status = 200;
    in[0].ch[0].attempts = 1;
    snprintf(in[0].ch[1].channel, sizeof(in[0].ch[1].channel), "sms");
    snprintf(in[0].ch[1].result, sizeof(in[0].ch[1].result), "drop");
    in[0].ch[1].status = 400;
    in[0].ch[1].attempts = 2;
    snprintf(in[0].ch[1].reason, sizeof(in[0].ch[1].reason), "21610 \"opted\" out");
    snprintf(in[1].id, sizeof(in[1].id), "m-1");
    snprintf(in[1].state, sizeof(in[1].state), "suppressed");
    snprintf(in[1].reason, sizeof(in[1].reason), "category_opt_out:marketing");
    in[1].at_ms = 1795310600000;

    /* Round trip through the encoder. */
    char *s = proto_receipts_serialize(in, 2, &len);
    assert_non_null(s);
    struct rcpt_seen seen;
    memset(&seen, 0, sizeof(seen));
    assert_int_equal(proto_receipts_parse(s, len, rcpt_cb, &seen, &e), 0);
    free(s);
    assert_int_equal(seen.n, 2);
    for (int i = 0; i < 2; i++) {
        assert_true(seen.ok[i]);
        assert_string_equal(seen.r[i].id, in[i].id);
        assert_string_equal(seen.r[i].state, in[i].state);
        assert_string_equal(seen.r[i].reason, in[i].reason);
        assert_int_equal(seen.r[i].at_ms, in[i].at_ms);
        assert_int_equal(seen.r[i].nch, in[i].nch);
        for (unsigned c = 0; c < in[i].nch; c++) {
            assert_string_equal(seen.r[i].ch[c].channel, in[i].ch[c].channel);
            assert_string_equal(seen.r[i].ch[c].result, in[i].ch[c].result);
            assert_int_equal(seen.r[i].ch[c].status, in[i].ch[c].status);
            assert_int_equal(seen.r[i].ch[c].attempts, in[i].ch[c].attempts);
            assert_string_equal(seen.r[i].ch[c].reason, in[i].ch[c].reason);
        }
    }

    /* Bad entries are reported with their field; the good ones still count. */
    static const char mixed[] =
        "{\"v\":1,\"receipts\":["
        "{\"id\":\"a\",\"state\":\"delivered\",\"at\":\"2026-11-22T01:00:00Z\",\"new\":1},"
        "{\"id\":\"b\",\"state\":\"lost\",\"at\":\"2026-11-22T01:00:00Z\"},"
        "{\"id\":\"c d\",\"state\":\"failed\",\"at\":\"2026-11-22T01:00:00Z\"},"
        "{\"id\":\"e\",\"state\":\"failed\",\"at\":\"yesterday\"},"
        "{\"id\":\"f\",\"state\":\"failed\",\"at\":\"2026-11-22T01:00:00Z\","
        "\"channels\":[{\"channel\":\"apns\",\"result\":\"ok\",\"status\":1.5}]},"
        "{\"id\":\"g\",\"state\":\"failed\",\"at\":\"2026-11-22T01:00:00Z\","
        "\"channels\":[{\"channel\":\"APNS\",\"result\":\"ok\"}]},"
        "{\"id\":\"h\",\"at\":\"2026-11-22T01:00:00Z\"},"
        "7]}";
    static const char *const field[] = {"", "receipts[1].state", "receipts[2].id",
                                        "receipts[3].at", "receipts[4].channels[0].status",
                                        "receipts[5].channels[0].channel", "receipts[6].state",
                                        "receipts[7]"};
    static const enum proto_reason why[] = {PROTO_OK,           PROTO_R_BAD_VALUE,
                                            PROTO_R_BAD_VALUE,  PROTO_R_BAD_TIME,
                                            PROTO_R_WRONG_TYPE, PROTO_R_BAD_VALUE,
                                            PROTO_R_MISSING_FIELD, PROTO_R_WRONG_TYPE};
    memset(&seen, 0, sizeof(seen));
    assert_int_equal(proto_receipts_parse(mixed, strlen(mixed), rcpt_cb, &seen, &e), 0);
    assert_int_equal(seen.n, 8);
    assert_true(seen.ok[0]);
    assert_string_equal(seen.r[0].id, "a");
    assert_int_equal(seen.r[0].nch, 0);
    for (int i = 1; i < 8; i++) {
        assert_false(seen.ok[i]);
        assert_string_equal(seen.bad[i].field, field[i]);
        assert_int_equal(seen.bad[i].reason, why[i]);
    }

    /* Too many channels; a long reason is cut, not refused. */
    {
        char buf[4096];
        size_t o = (size_t)snprintf(buf, sizeof(buf),
                                    "{\"v\":1,\"receipts\":[{\"id\":\"x\",\"state\":\"failed\","
                                    "\"at\":\"2026-11-22T01:00:00Z\",\"reason\":\"");
        for (int i = 0; i < 300; i++) {
            buf[o++] = 'r';
        }
        o += (size_t)snprintf(buf + o, sizeof(buf) - o, "\",\"channels\":[");
        for (int i = 0; i < PROTO_RECEIPT_MAX_CHANNELS + 1; i++) {
            o += (size_t)snprintf(buf + o, sizeof(buf) - o,
                                  "%s{\"channel\":\"c%d\",\"result\":\"retry\"}", i ? "," : "", i);
        }
        o += (size_t)snprintf(buf + o, sizeof(buf) - o, "]}]}");
        memset(&seen, 0, sizeof(seen));
        assert_int_equal(proto_receipts_parse(buf, o, rcpt_cb, &seen, &e), 0);
        assert_int_equal(seen.n, 1);
        assert_false(seen.ok[0]);
        assert_string_equal(seen.bad[0].field, "receipts[0].channels");
        assert_int_equal(seen.bad[0].reason, PROTO_R_TOO_LONG);
        /* the same with 8 channels: accepted, reason cut at 255 bytes */
        char *cut = strstr(buf, ",{\"channel\":\"c8\"");
        assert_non_null(cut);
        o = (size_t)(cut - buf);
        o += (size_t)snprintf(buf + o, sizeof(buf) - o, "]}]}");
        memset(&seen, 0, sizeof(seen));
        assert_int_equal(proto_receipts_parse(buf, o, rcpt_cb, &seen, &e), 0);
        assert_true(seen.ok[0]);
        assert_int_equal(seen.r[0].nch, PROTO_RECEIPT_MAX_CHANNELS);
        assert_int_equal(strlen(seen.r[0].reason), 255);
    }

    /* Bad envelopes: no callback. */
    static const char *const bad[] = {"{\"v\":2,\"receipts\":[]}", "{\"v\":1}",
                                      "{\"v\":1,\"receipts\":{}}", "[]", "{\"v\":1,"};
    static const enum proto_reason bwhy[] = {PROTO_R_BAD_VERSION, PROTO_R_MISSING_FIELD,
                                             PROTO_R_WRONG_TYPE, PROTO_R_NOT_OBJECT,
                                             PROTO_R_MALFORMED_JSON};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&seen, 0, sizeof(seen));
        assert_int_equal(proto_receipts_parse(bad[i], strlen(bad[i]), rcpt_cb, &seen, &e),
                         TDG_EINVAL_INPUT);
        assert_int_equal(seen.n, 0);
        assert_int_equal(e.reason, bwhy[i]);
    }
}

/* --- errors ----------------------------------------------------------- */

static void test_error_text(void **state)
{
    struct notification n;
    struct proto_error e;
    char *k = rep('k', 65), *s;

    (void)state;
    /* detail follows "N bytes max, got M" */
    s = fmt("{\"to\":\"local\",\"title\":\"t\",\"collapse_key\":\"%s\"}", k);
    assert_int_equal(parse_str(s, &n, &e), TDG_EINVAL_INPUT);
    assert_string_equal(e.detail, "64 bytes max, got 65");
    free(s);
    s = sized(PROTO_MAX_WIRE + 1, "");
    assert_int_equal(parse_str(s, &n, &e), TDG_ETOOBIG);
    assert_string_equal(e.detail, "4096 bytes max, got 4097");
    free(s);
    free(k);
    /* A long non-ASCII key is cut on a character boundary in the field. */
    {
        /* "a" then 30 x U+00E9: 61 bytes; "data.a" + 20.5 characters fill
         * the 47 bytes, the half character is dropped. */
        char key[64] = "a";
        for (int i = 0; i < 30; i++) {
            memcpy(key + 1 + 2 * i, "\xC3\xA9", 3);
        }
        s = fmt("{\"to\":\"local\",\"title\":\"t\",\"data\":{\"%s\":{}}}", key);
        assert_int_equal(parse_str(s, &n, &e), TDG_EINVAL_INPUT);
        assert_int_equal(e.reason, PROTO_R_WRONG_TYPE);
        assert_int_equal(strlen(e.field), 46);
        assert_memory_equal(e.field, "data.a\xC3\xA9", 8);
        free(s);
    }
    /* A NULL err is allowed. */
    assert_int_equal(proto_parse("{}", 2, &n, NULL), TDG_EINVAL_INPUT);
}

/* accepted_at: stamped by Tidings, replaces the sender's, and the ttl counts
 * from it. */
static void test_accepted_at(void **state)
{
    (void)state;
    struct notification n;
    struct proto_error err;
    const char *in = "{\"to\":\"local\",\"title\":\"t\",\"ttl\":60,"
                     "\"accepted_at\":\"2000-01-01T00:00:00Z\"}";
    assert_int_equal(proto_parse(in, strlen(in), &n, &err), 0);
    assert_int_equal(n.accepted_at_ms, 946684800000LL);
    assert_int_equal(proto_set_accepted(&n, 1795302000123LL), 0);
    assert_int_equal(n.accepted_at_ms, 1795302000123LL);
    assert_int_equal(proto_expires_ms(&n, 5), 1795302000123LL + 60000);
    size_t len;
    char *out = proto_serialize(&n, &len);
    assert_non_null(strstr(out, "\"accepted_at\":\"2026-11-21T"));
    assert_null(strstr(out, "2000-01-01"));
    notification_free(&n);
    struct notification m;
    assert_int_equal(proto_parse(out, len, &m, &err), 0);
    assert_int_equal(m.accepted_at_ms, 1795302000123LL);
    notification_free(&m);
    free(out);

    const char *bad = "{\"to\":\"local\",\"title\":\"t\",\"accepted_at\":\"yesterday\"}";
    assert_int_equal(proto_parse(bad, strlen(bad), &n, &err), TDG_EINVAL_INPUT);
    assert_int_equal(err.reason, PROTO_R_BAD_TIME);
    assert_string_equal(err.field, "accepted_at");

    /* no ttl: never expires; not yet accepted: counts from now */
    const char *plain = "{\"to\":\"local\",\"title\":\"t\"}";
    assert_int_equal(proto_parse(plain, strlen(plain), &n, &err), 0);
    assert_int_equal(proto_expires_ms(&n, 1000), 0);
    notification_free(&n);
    const char *ttl = "{\"to\":\"local\",\"title\":\"t\",\"ttl\":2}";
    assert_int_equal(proto_parse(ttl, strlen(ttl), &n, &err), 0);
    assert_int_equal(proto_expires_ms(&n, 1000), 3000);
    notification_free(&n);

    /* no room within 4096 bytes: refused, n unchanged */
    char big[PROTO_MAX_WIRE + 1];
    int head = snprintf(big, sizeof(big), "{\"to\":\"local\",\"title\":\"");
    size_t fill = PROTO_MAX_WIRE - (size_t)head - 2 - 10;
    memset(big + head, 'a', fill);
    snprintf(big + head + fill, sizeof(big) - (size_t)head - fill, "\"}");
    assert_int_equal(proto_parse(big, strlen(big), &n, &err), 0);
    assert_int_equal(proto_set_accepted(&n, 1795302000123LL), TDG_ETOOBIG);
    assert_int_equal(n.accepted_at_ms, 0);
    notification_free(&n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reason_tables),
        cmocka_unit_test(test_minimal),
        cmocka_unit_test(test_all_fields),
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_malformed_json),
        cmocka_unit_test(test_scan_positions),
        cmocka_unit_test(test_not_object),
        cmocka_unit_test(test_duplicate_key),
        cmocka_unit_test(test_duplicate_key_exhaustive),
        cmocka_unit_test(test_nul_escape),
        cmocka_unit_test(test_id_field),
        cmocka_unit_test(test_to_field),
        cmocka_unit_test(test_category_field),
        cmocka_unit_test(test_priority_field),
        cmocka_unit_test(test_content),
        cmocka_unit_test(test_data_field),
        cmocka_unit_test(test_channels_field),
        cmocka_unit_test(test_ttl_field),
        cmocka_unit_test(test_deliver_at_field),
        cmocka_unit_test(test_other_fields),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_check_order),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_set_id),
        cmocka_unit_test(test_from_json),
        cmocka_unit_test(test_ids),
        cmocka_unit_test(test_ids_threads),
        cmocka_unit_test(test_rfc3339),
        cmocka_unit_test(test_local_time),
        cmocka_unit_test(test_topics),
        cmocka_unit_test(test_batch_builder),
        cmocka_unit_test(test_batch_parse),
        cmocka_unit_test(test_item_check),
        cmocka_unit_test(test_acks),
        cmocka_unit_test(test_acks_bytes),
        cmocka_unit_test(test_receipts_parse),
        cmocka_unit_test(test_error_text),
        cmocka_unit_test(test_accepted_at),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
