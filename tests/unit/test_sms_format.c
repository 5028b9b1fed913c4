/*
 * test_sms_format.c - the SMS channel's pure parts: format against golden
 * files, E.164 checks, GSM-7 / UCS-2 segment counts, form encoding,
 * truncation, the answer -> outcome table, and config checks in init.
 *
 * Golden files live in tests/golden/sms/<name>.txt: the request line, the
 * headers (the Basic credentials replaced by <masked>), a blank line, the
 * form body exactly as sent, and a last line "# <outcome reason>" with the
 * encoding and segment count. A dropped delivery renders as
 * "DROP <reason> <action>". Run with TIDINGS_UPDATE_GOLDEN=1 to rewrite them
 * after a deliberate change, then review the diff.
 *
 * The account SID and token here are made-up constants, not credentials.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <mbedtls/base64.h>

#include "config.h"
#include "error.h"
#include "sms.h"

#ifndef GOLDEN_DIR
#error "GOLDEN_DIR must point at tests/golden/sms"
#endif

#define T0_MS INT64_C(1700000000000)
#define SID "AC0123456789abcdef0123456789abcdef"
#define TOKEN "not-a-secret-test-token"
#define FROM "+15005550006"
#define TO "+4915112345678"

/* --- fixtures ------------------------------------------------------------- */

static void set(struct sms_config *c, const char *k, const char *v)
{
    char err[CONFIG_ERR_MAX];
    const struct channel_ops *ops = &sms_channel;
    int rc = config_set(ops->config, ops->config_n, c, k, v, err, sizeof(err));
    if (rc != 0) {
        fail_msg("config %s: %s", k, err);
    }
}

static void config_base(struct sms_config *c)
{
    char err[CONFIG_ERR_MAX];
    const struct channel_ops *ops = &sms_channel;
    assert_int_equal(ops->config_size, sizeof(*c));
    assert_int_equal(config_defaults(ops->config, ops->config_n, c, err, sizeof(err)), 0);
    set(c, "sms.account_sid", SID);
    set(c, "sms.auth_token", TOKEN);
    set(c, "sms.from", FROM);
}

static void *open_channel(const struct sms_config *c)
{
    struct channel_env env = {.loop = NULL, .http = NULL}; /* format only */
    void *st = NULL;
    char err[256] = "";
    int rc = sms_channel.init(&env, c, &st, err, sizeof(err));
    if (rc != 0) {
        fail_msg("init: %s: %s", tdg_strerror(rc), err);
    }
    return st;
}

static int init_error(const struct sms_config *c, char *err, size_t len)
{
    struct channel_env env = {.loop = NULL, .http = NULL};
    void *st = NULL;
    err[0] = '\0';
    int rc = sms_channel.init(&env, c, &st, err, len);
    if (rc == 0) {
        sms_channel.destroy(st);
    }
    assert_null(rc == 0 ? NULL : st);
    return rc;
}

static int group_setup(void **state)
{
    struct sms_config c;
    config_base(&c);
    *state = open_channel(&c);
    return 0;
}

static int group_teardown(void **state)
{
    sms_channel.destroy(*state);
    return 0;
}

struct fixture {
    struct notification n;
    struct channel_device dev;
    struct channel_delivery d;
};

static void fixture_init(struct fixture *f, const char *title, const char *body)
{
    memset(f, 0, sizeof(*f));
    f->n.id = "01HF6Y1M6Z8Q3R4S5T6V7W8X9Y";
    f->n.to = "user:alice";
    f->n.to_kind = PROTO_TO_USER;
    f->n.to_id = "alice";
    f->n.priority = PROTO_PRIO_NORMAL;
    f->n.channels = PROTO_CH_ALL;
    f->n.title = title;
    f->n.body = body;
    f->dev.user_id = "alice";
    f->dev.platform = "sms";
    f->dev.token = TO;
    f->d.attempt_id = 7;
    f->d.n = &f->n;
    f->d.dev = &f->dev;
    f->d.now_ms = T0_MS;
}

/* --- rendering and golden compare ------------------------------------------- */

static const char *action_name(int a)
{
    switch (a) {
    case CHANNEL_DEVICE_DISABLE:
        return "disable";
    case CHANNEL_DEVICE_FLAG:
        return "flag";
    default:
        return "none";
    }
}

static void render(int rc, const struct channel_request *req, const struct channel_outcome *o,
                   char *buf, size_t len)
{
    size_t off = 0;
#define PUT(...)                                                                                   \
    do {                                                                                           \
        int n_ = snprintf(buf + off, len - off, __VA_ARGS__);                                      \
        assert_true(n_ >= 0 && (size_t)n_ < len - off);                                            \
        off += (size_t)n_;                                                                         \
    } while (0)
    if (rc < 0) {
        PUT("DROP %s %s\n", o->reason, action_name(o->device_action));
        return;
    }
    PUT("%s %s\n", req->method, req->url);
    for (unsigned i = 0; i < req->nheaders; i++) {
        if (strncmp(req->headers[i], "authorization: Basic ", 21) == 0) {
            PUT("authorization: Basic <masked>\n");
        } else {
            PUT("%s\n", req->headers[i]);
        }
    }
    PUT("\n%.*s\n# %s\n", (int)req->body_len, req->body, o->reason);
#undef PUT
}

static void check_golden(const char *name, const char *got)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s.txt", GOLDEN_DIR, name);
    const char *upd = getenv("TIDINGS_UPDATE_GOLDEN");
    if (upd && strcmp(upd, "1") == 0) {
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        fputs(got, f);
        fclose(f);
        return;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        fail_msg("missing golden file %s (run with TIDINGS_UPDATE_GOLDEN=1)", path);
    }
    static char want[32768];
    size_t n = fread(want, 1, sizeof(want) - 1, f);
    fclose(f);
    want[n] = '\0';
    if (strcmp(want, got) != 0) {
        fail_msg("%s differs.\n--- want\n%s--- got\n%s", path, want, got);
    }
}

static struct channel_request req;

static int run(void *st, struct fixture *f, struct channel_outcome *o)
{
    return sms_channel.format(st, &f->d, &req, o);
}

static void golden_case(void *st, struct fixture *f, const char *name)
{
    struct channel_outcome o;
    int rc = run(st, f, &o);
    static char text[32768];
    render(rc, &req, &o, text, sizeof(text));
    check_golden(name, text);
}

/* Form-decode the value of name in req.body into out. */
static void form_value(const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    const char *p = req.body;
    const char *end = req.body + req.body_len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        if ((size_t)(stop - p) > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
            size_t o = 0;
            for (const char *q = p + nl + 1; q < stop; q++) {
                assert_true(o + 1 < cap);
                if (*q == '+') {
                    out[o++] = ' ';
                } else if (*q == '%') {
                    assert_true(q + 2 < stop);
                    char hex[3] = {q[1], q[2], 0};
                    out[o++] = (char)strtol(hex, NULL, 16);
                    q += 2;
                } else {
                    out[o++] = *q;
                }
            }
            out[o] = '\0';
            return;
        }
        p = stop + 1;
    }
    fail_msg("no %s in %.*s", name, (int)req.body_len, req.body);
}

static bool has_param(const char *name)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "&%s=", name);
    size_t nl = strlen(name);
    return strstr(req.body, pat) != NULL ||
           (strncmp(req.body, name, nl) == 0 && req.body[nl] == '=');
}

/* --- golden cases --------------------------------------------------------------- */

static void test_golden_basic(void **state)
{
    struct fixture f;
    fixture_init(&f, "Door open", "Front door opened at 08:15");
    golden_case(*state, &f, "basic");
}

static void test_golden_unicode(void **state)
{
    struct fixture f;
    /* "Tür offen — 🚪": the em dash is not GSM-7, so the whole text is UCS-2 */
    fixture_init(&f, "T\xc3\xbcr offen \xe2\x80\x94 \xf0\x9f\x9a\xaa",
                 "Haust\xc3\xbcr seit 08:15 offen & unbewacht (100%)");
    golden_case(*state, &f, "unicode");
}

static void test_golden_ttl(void **state)
{
    struct fixture f;
    fixture_init(&f, NULL, "Code 123456 expires soon");
    f.n.ttl_s = 600;
    golden_case(*state, &f, "ttl");
}

static void test_golden_ttl_clamped(void **state)
{
    struct fixture f;
    fixture_init(&f, "Weekly report", NULL);
    f.n.ttl_s = 7 * 86400; /* Twilio allows at most 36000 s */
    golden_case(*state, &f, "ttl_clamped");
}

static void test_golden_gsm_extension(void **state)
{
    struct fixture f;
    fixture_init(&f, "Price {EUR}", "Total: 12,50 \xe2\x82\xac [paid] ~ok | a^b \\ done");
    golden_case(*state, &f, "gsm_extension");
}

static void test_golden_service_callback(void **state)
{
    (void)state;
    struct sms_config c;
    config_base(&c);
    set(&c, "sms.from", "");
    set(&c, "sms.messaging_service_sid", "MG0123456789abcdef0123456789abcdef");
    set(&c, "sms.status_callback_url", "https://hub.example.com/sms/status?x=1&y=2");
    set(&c, "sms.api_url", "https://sms.example.net/");
    void *st = open_channel(&c);
    struct fixture f;
    fixture_init(&f, "Alarm", "Smoke in the kitchen");
    f.n.ttl_s = 1;
    golden_case(st, &f, "service_callback");
    sms_channel.destroy(st);
}

static void test_golden_invalid_number(void **state)
{
    struct fixture f;
    fixture_init(&f, "Hi", "there");
    f.dev.token = "004915112345678";
    golden_case(*state, &f, "invalid_number");
}

/* --- E.164 ------------------------------------------------------------------------ */

static void test_e164(void **state)
{
    (void)state;
    static const char *const good[] = {"+4915112345678", "+12025550123", "+12345678",
                                       "+123456789012345", "+861012345678"};
    static const char *const bad[] = {
        NULL,
        "",
        "+",
        "4915112345678",
        "+04915112345678",
        "+1234567",
        "+1234567890123456",
        "+49 151 12345678",
        "+49-151-12345678",
        "++4915112345678",
        "+4915112345678\n",
        "+49151123a5678",
        "tel:+4915112345678",
        " +4915112345678",
        "+\xef\xbc\x94\xef\xbc\x99\xef\xbc\x91\xef\xbc\x95\xef\xbc\x91\xef\xbc\x91\xef\xbc\x92\xef"
        "\xbc\x93",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        if (!sms_e164_valid(good[i])) {
            fail_msg("%s should be valid", good[i]);
        }
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (sms_e164_valid(bad[i])) {
            fail_msg("'%s' should be invalid", bad[i] ? bad[i] : "(null)");
        }
    }
}

static void test_format_drops_invalid_numbers(void **state)
{
    static const char *const bad[] = {"", "+1234567", "+49 15112345678", "4915112345678",
                                      "+0123456789"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct fixture f;
        fixture_init(&f, "Hi", "there");
        f.dev.token = bad[i];
        struct channel_outcome o;
        assert_true(run(*state, &f, &o) < 0);
        assert_int_equal(o.result, CHANNEL_DROP);
        assert_string_equal(o.reason, "invalid_number");
        assert_int_equal(o.device_action, CHANNEL_DEVICE_NONE);
    }
    struct fixture f;
    fixture_init(&f, "Hi", "there");
    f.dev.token = NULL;
    struct channel_outcome o;
    assert_true(run(*state, &f, &o) < 0);
    assert_string_equal(o.reason, "invalid_number");
}

/* --- segments -------------------------------------------------------------------------- */

static char *repeat(const char *unit, unsigned n)
{
    size_t ul = strlen(unit);
    char *s = malloc(ul * n + 1);
    assert_non_null(s);
    for (unsigned i = 0; i < n; i++) {
        memcpy(s + i * ul, unit, ul);
    }
    s[ul * n] = '\0';
    return s;
}

static void expect_info(const char *text, enum sms_encoding enc, unsigned units, unsigned segs)
{
    struct sms_text_info info;
    assert_int_equal(sms_text_info(text, strlen(text), &info), 0);
    if (info.encoding != enc || info.units != units || info.segments != segs) {
        fail_msg("'%.40s...': got enc=%d units=%u segments=%u, want enc=%d units=%u segments=%u",
                 text, info.encoding, info.units, info.segments, enc, units, segs);
    }
}

static void expect_info_rep(const char *unit, unsigned n, enum sms_encoding enc, unsigned units,
                            unsigned segs)
{
    char *s = repeat(unit, n);
    expect_info(s, enc, units, segs);
    free(s);
}

static void test_segments_gsm7(void **state)
{
    (void)state;
    expect_info("", SMS_GSM7, 0, 0);
    expect_info_rep("a", 1, SMS_GSM7, 1, 1);
    expect_info_rep("a", 160, SMS_GSM7, 160, 1);
    expect_info_rep("a", 161, SMS_GSM7, 161, 2);
    expect_info_rep("a", 306, SMS_GSM7, 306, 2);
    expect_info_rep("a", 307, SMS_GSM7, 307, 3);
    /* extension characters cost 2 septets */
    expect_info_rep("\xe2\x82\xac", 80, SMS_GSM7, 160, 1); /* 80 x € */
    expect_info_rep("\xe2\x82\xac", 81, SMS_GSM7, 162, 2);
    expect_info_rep("[", 80, SMS_GSM7, 160, 1);
    expect_info_rep("{", 81, SMS_GSM7, 162, 2);
    /* the whole default alphabet is 1 septet a character */
    expect_info("@\xc2\xa3$\xc2\xa5\xc3\xa8\xc3\xa9\xc3\xb9\xc3\xac\xc3\xb2\xc3\x87\n\xc3\x98"
                "\xc3\xb8\r\xc3\x85\xc3\xa5\xce\x94_\xce\xa6\xce\x93\xce\x9b\xce\xa9\xce\xa0"
                "\xce\xa8\xce\xa3\xce\x98\xce\x9e\xc3\x86\xc3\xa6\xc3\x9f\xc3\x89 !\"#\xc2\xa4"
                "%&'()*+,-./0123456789:;<=>?\xc2\xa1"
                "ABCDEFGHIJKLMNOPQRSTUVWXYZ\xc3\x84\xc3\x96\xc3\x91\xc3\x9c\xc2\xa7\xc2\xbf"
                "abcdefghijklmnopqrstuvwxyz\xc3\xa4\xc3\xb6\xc3\xb1\xc3\xbc\xc3\xa0",
                SMS_GSM7, 127, 1);
    /* and the extension table 2 */
    expect_info("\f^{}\\[~]|\xe2\x82\xac", SMS_GSM7, 20, 1);
    /* 159 + € = 161 septets: two segments */
    char *s = repeat("a", 159);
    char buf[400];
    snprintf(buf, sizeof(buf), "%s\xe2\x82\xac", s);
    expect_info(buf, SMS_GSM7, 161, 2);
    free(s);
    /* an ESC pair never straddles two segments: 152 + € + 152 = 306 septets,
     * but € cannot take septets 153-154 of segment one, so three segments */
    s = repeat("a", 152);
    static char big[1024];
    snprintf(big, sizeof(big), "%s\xe2\x82\xac%s", s, s);
    expect_info(big, SMS_GSM7, 306, 3);
    free(s);
}

static void test_segments_ucs2(void **state)
{
    (void)state;
    expect_info_rep("\xd0\xb6", 70, SMS_UCS2, 70, 1); /* ж */
    expect_info_rep("\xd0\xb6", 71, SMS_UCS2, 71, 2);
    expect_info_rep("\xd0\xb6", 134, SMS_UCS2, 134, 2);
    expect_info_rep("\xd0\xb6", 135, SMS_UCS2, 135, 3);
    /* one character outside GSM-7 turns the whole text into UCS-2 */
    char *s = repeat("a", 69);
    char buf[400];
    snprintf(buf, sizeof(buf), "%s`", s);
    expect_info(buf, SMS_UCS2, 70, 1);
    snprintf(buf, sizeof(buf), "%s\tb", s);
    expect_info(buf, SMS_UCS2, 71, 2);
    free(s);
    /* emoji: a surrogate pair, 2 units */
    expect_info("\xf0\x9f\x9a\xaa", SMS_UCS2, 2, 1);
    expect_info_rep("\xf0\x9f\x9a\xaa", 35, SMS_UCS2, 70, 1);
    expect_info_rep("\xf0\x9f\x9a\xaa", 36, SMS_UCS2, 72, 2);
    expect_info("T\xc3\xbcr offen \xe2\x80\x94 \xf0\x9f\x9a\xaa", SMS_UCS2, 14, 1);
    /* a surrogate pair never straddles two segments: 66 + 🚪 + 66 = 134 */
    s = repeat("\xd0\xb6", 66);
    static char big[1024];
    snprintf(big, sizeof(big), "%s\xf0\x9f\x9a\xaa%s", s, s);
    expect_info(big, SMS_UCS2, 134, 3);
    free(s);
}

static void test_segments_bad_utf8(void **state)
{
    (void)state;
    static const char *const bad[] = {"\xc3",     "\xc3\x28",         "\xe2\x82", "\xed\xa0\x80",
                                      "\xc0\xaf", "\xf4\x90\x80\x80", "\xff"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct sms_text_info info;
        assert_int_equal(sms_text_info(bad[i], strlen(bad[i]), &info), TDG_EINVAL_INPUT);
    }
}

static void test_format_reason_carries_segments(void **state)
{
    struct fixture f;
    char *body = repeat("a", 200);
    fixture_init(&f, "Title", body); /* 5 + 1 + 200 = 206 septets */
    struct channel_outcome o;
    assert_int_equal(run(*state, &f, &o), 0);
    assert_string_equal(o.reason, "gsm7 segments=2");
    free(body);
    fixture_init(&f, NULL, "\xf0\x9f\x9a\xaa");
    assert_int_equal(run(*state, &f, &o), 0);
    assert_string_equal(o.reason, "ucs2 segments=1");
}

/* --- text, encoding, truncation ------------------------------------------------------------ */

static void test_form_encode(void **state)
{
    (void)state;
    char out[128];
    const char *in = "a b+c&d=e/\xc3\xbc\n*-._~%";
    int n = sms_form_encode(in, strlen(in), out, sizeof(out));
    assert_string_equal(out, "a+b%2Bc%26d%3De%2F%C3%BC%0A*-._%7E%25");
    assert_int_equal(n, (int)strlen(out));
    assert_int_equal(sms_form_encode("abc", 3, out, 4), 3);
    assert_int_equal(sms_form_encode("abc", 3, out, 3), -ENOSPC);
    assert_int_equal(sms_form_encode("\xc3\xbc", 2, out, 6), -ENOSPC);
    assert_int_equal(sms_form_encode("\xc3\xbc", 2, out, 7), 6);
}

static void test_text_roundtrip(void **state)
{
    struct fixture f;
    fixture_init(&f, "A&B=C", "line 1\nline 2 +49 100%");
    struct channel_outcome o;
    assert_int_equal(run(*state, &f, &o), 0);
    char v[256];
    form_value("Body", v, sizeof(v));
    assert_string_equal(v, "A&B=C\nline 1\nline 2 +49 100%");
    form_value("To", v, sizeof(v));
    assert_string_equal(v, TO);
    form_value("From", v, sizeof(v));
    assert_string_equal(v, FROM);
    assert_false(has_param("ValidityPeriod"));
    assert_false(has_param("StatusCallback"));
    assert_false(has_param("MessagingServiceSid"));

    /* only a title, only a body: no stray line break */
    fixture_init(&f, "Only title", NULL);
    assert_int_equal(run(*state, &f, &o), 0);
    form_value("Body", v, sizeof(v));
    assert_string_equal(v, "Only title");
    fixture_init(&f, NULL, "Only body");
    assert_int_equal(run(*state, &f, &o), 0);
    form_value("Body", v, sizeof(v));
    assert_string_equal(v, "Only body");
}

static void test_no_content_and_bad_utf8(void **state)
{
    struct fixture f;
    struct channel_outcome o;
    fixture_init(&f, NULL, NULL);
    assert_true(run(*state, &f, &o) < 0);
    assert_string_equal(o.reason, "no_content");
    fixture_init(&f, "ok", "bad \xc3(");
    assert_true(run(*state, &f, &o) < 0);
    assert_string_equal(o.reason, "bad_utf8");
}

static void test_truncate_long_gsm(void **state)
{
    struct fixture f;
    char *body = repeat("abcdefghij", 200); /* 2000 characters */
    fixture_init(&f, NULL, body);
    struct channel_outcome o;
    assert_int_equal(run(*state, &f, &o), 0);
    static char v[8192];
    form_value("Body", v, sizeof(v));
    assert_int_equal(strlen(v), SMS_BODY_MAX_CHARS);
    assert_memory_equal(v, body, SMS_BODY_MAX_CHARS - 3);
    assert_string_equal(v + SMS_BODY_MAX_CHARS - 3, "...");
    assert_string_equal(o.reason, "gsm7 segments=11 truncated");
    free(body);
}

static void test_truncate_to_buffer(void **state)
{
    /* 1300 CJK characters: under 1600 characters, but 3 bytes each and 9
     * once form-encoded, so the request buffer is the limit. The cut must
     * fall between characters. */
    struct fixture f;
    char *body = repeat("\xe4\xb8\xad", 1300);
    fixture_init(&f, NULL, body);
    struct channel_outcome o;
    assert_int_equal(run(*state, &f, &o), 0);
    assert_true(req.body_len < sizeof(req.body));
    static char v[8192];
    form_value("Body", v, sizeof(v));
    size_t n = strlen(v);
    assert_true(n > 3 && n < strlen(body));
    assert_string_equal(v + n - 3, "...");
    assert_int_equal((n - 3) % 3, 0);
    assert_memory_equal(v, body, n - 3);
    struct sms_text_info info;
    assert_int_equal(sms_text_info(v, n, &info), 0);
    char want[64];
    snprintf(want, sizeof(want), "ucs2 segments=%u truncated", info.segments);
    assert_string_equal(o.reason, want);
    free(body);
}

static void test_validity_period(void **state)
{
    static const struct {
        int64_t ttl;
        const char *want;
    } cases[] = {{1, "1"}, {59, "59"}, {36000, "36000"}, {36001, "36000"}, {2419200, "36000"}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct fixture f;
        fixture_init(&f, "t", "b");
        f.n.ttl_s = cases[i].ttl;
        struct channel_outcome o;
        assert_int_equal(run(*state, &f, &o), 0);
        char v[32];
        form_value("ValidityPeriod", v, sizeof(v));
        assert_string_equal(v, cases[i].want);
    }
}

static void test_basic_auth_header(void **state)
{
    struct fixture f;
    fixture_init(&f, "t", "b");
    struct channel_outcome o;
    assert_int_equal(run(*state, &f, &o), 0);
    const char *h = NULL;
    for (unsigned i = 0; i < req.nheaders; i++) {
        if (strncmp(req.headers[i], "authorization: Basic ", 21) == 0) {
            h = req.headers[i] + 21;
        }
    }
    assert_non_null(h);
    unsigned char dec[256];
    size_t n = 0;
    assert_int_equal(
        mbedtls_base64_decode(dec, sizeof(dec) - 1, &n, (const unsigned char *)h, strlen(h)), 0);
    dec[n] = '\0';
    assert_string_equal((char *)dec, SID ":" TOKEN);
    assert_string_equal(req.method, "POST");
    assert_string_equal(req.url,
                        "https://api.twilio.com/2010-04-01/Accounts/" SID "/Messages.json");
}

/* --- answers --------------------------------------------------------------------------------- */

static void answer(int status, const char *body, const char *retry_after, struct channel_outcome *o)
{
    /* 2023-11-14T22:13:20Z, so HTTP-dates below are a known distance away */
    sms_map_answer(status, body, body ? strlen(body) : 0, retry_after, INT64_C(1700000000000), o);
    assert_int_equal(o->status, status);
}

static const char *twilio_err(int code, int status, const char *msg)
{
    static char buf[512];
    snprintf(buf, sizeof(buf),
             "{\"code\": %d, \"message\": \"%s\", \"more_info\": "
             "\"https://www.twilio.com/docs/errors/%d\", \"status\": %d}",
             code, msg, code, status);
    return buf;
}

static void test_answers(void **state)
{
    (void)state;
    struct channel_outcome o;

    answer(201, "{\"sid\": \"SM0123456789abcdef0123456789abcdef\", \"status\": \"queued\"}", NULL,
           &o);
    assert_int_equal(o.result, CHANNEL_OK);
    assert_string_equal(o.provider_id, "SM0123456789abcdef0123456789abcdef");

    answer(400, twilio_err(21211, 400, "The 'To' number 123 is not a valid phone number."), NULL,
           &o);
    assert_int_equal(o.result, CHANNEL_DROP);
    assert_string_equal(o.reason, "invalid_number:21211");
    assert_int_equal(o.device_action, CHANNEL_DEVICE_NONE);

    /* another 4xx keeps the provider's text, but never a phone number in
     * it (reasons are stored and logged); short codes stay */
    answer(400, twilio_err(21408, 400, "Region of the 'To' number: +49 151-2345 6789. not on"),
           NULL, &o);
    assert_int_equal(o.result, CHANNEL_DROP);
    assert_string_equal(o.reason, "twilio:21408 Region of the 'To' number: [number]. not on");
    assert_null(strstr(o.reason, "2345"));
    answer(400, twilio_err(21606, 400, "The From phone number +15005550001 is not valid"), NULL,
           &o);
    assert_string_equal(o.reason, "twilio:21606 The From phone number [number] is not valid");

    answer(400, twilio_err(21614, 400, "'To' number is not a valid mobile number"), NULL, &o);
    assert_int_equal(o.result, CHANNEL_DROP);
    assert_string_equal(o.reason, "not_mobile:21614");

    answer(400, twilio_err(21610, 400, "Attempt to send to unsubscribed recipient"), NULL, &o);
    assert_int_equal(o.result, CHANNEL_DROP);
    assert_string_equal(o.reason, "opted_out:21610");
    assert_int_equal(o.device_action, CHANNEL_DEVICE_DISABLE);

    answer(401, twilio_err(20003, 401, "Authenticate"), NULL, &o);
    assert_int_equal(o.result, CHANNEL_DROP);
    assert_string_equal(o.reason, "auth_failed:20003");
    answer(401, "", NULL, &o);
    assert_int_equal(o.result, CHANNEL_DROP);
    assert_string_equal(o.reason, "auth_failed:20003");

    answer(429, twilio_err(20429, 429, "Too Many Requests"), "7", &o);
    assert_int_equal(o.result, CHANNEL_RETRY);
    assert_int_equal(o.retry_after_ms, 7000);
    assert_string_equal(o.reason, "rate_limited:20429");
    answer(429, "not json", NULL, &o);
    assert_int_equal(o.result, CHANNEL_RETRY);
    assert_int_equal(o.retry_after_ms, 0);
    answer(429, "", "Wed, 21 Oct 2015 07:28:00 GMT", &o); /* a date in the past: backoff */
    assert_int_equal(o.retry_after_ms, 0);
    answer(429, "", "Tue, 14 Nov 2023 22:14:20 GMT", &o); /* an HTTP-date a minute ahead */
    assert_int_equal(o.retry_after_ms, 60000);
    answer(503, "", "Fri, 01 Mar 2024 00:00:00 GMT", &o); /* months ahead: clamped */
    assert_int_equal(o.retry_after_ms, 86400u * 1000u);
    answer(503, "", "Tue, 14 Nov 2023 22:14:20 +0000", &o); /* not an HTTP-date */
    assert_int_equal(o.retry_after_ms, 0);
    answer(429, "", "99999999", &o);
    assert_int_equal(o.retry_after_ms, 86400u * 1000u);

    answer(400, twilio_err(21611, 400, "queue full"), NULL, &o);
    assert_int_equal(o.result, CHANNEL_RETRY);
    assert_string_equal(o.reason, "rate_limited:21611");

    answer(500, twilio_err(20500, 500, "Internal Server Error"), NULL, &o);
    assert_int_equal(o.result, CHANNEL_RETRY);
    assert_string_equal(o.reason, "server_error:20500");
    answer(503, "<html>busy</html>", "3", &o);
    assert_int_equal(o.result, CHANNEL_RETRY);
    assert_int_equal(o.retry_after_ms, 3000);
    assert_string_equal(o.reason, "server_error:503");

    answer(400, twilio_err(21408, 400, "Permission to send an SMS has not been enabled"), NULL, &o);
    assert_int_equal(o.result, CHANNEL_DROP);
    assert_string_equal(o.reason, "twilio:21408 Permission to send an SMS has not been enabled");
    answer(404, twilio_err(20404, 404, "The requested resource /x was not found"), NULL, &o);
    assert_int_equal(o.result, CHANNEL_DROP);
    answer(413, "", NULL, &o);
    assert_int_equal(o.result, CHANNEL_DROP);
    assert_string_equal(o.reason, "HTTP 413");
    answer(302, "", NULL, &o);
    assert_int_equal(o.result, CHANNEL_RETRY);
}

/* --- init
 * ------------------------------------------------------------------------------------------ */

static void test_init_errors(void **state)
{
    (void)state;
    struct sms_config c;
    char err[256];

    config_base(&c);
    set(&c, "sms.api_url", "http://api.twilio.com");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG);
    assert_non_null(strstr(err, "https"));

    config_base(&c);
    set(&c, "sms.account_sid", "");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG);
    config_base(&c);
    set(&c, "sms.account_sid", "AC/../x");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG);

    config_base(&c);
    set(&c, "sms.auth_token", "");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG);

    config_base(&c);
    set(&c, "sms.auth_token_file", "/nonexistent/token");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG); /* both set */
    set(&c, "sms.auth_token", "");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG); /* unreadable */
    assert_non_null(strstr(err, "auth_token_file"));

    config_base(&c);
    set(&c, "sms.from", "15005550006");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG);
    config_base(&c);
    set(&c, "sms.from", "");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG);

    config_base(&c);
    set(&c, "sms.status_callback_url", "ftp://x");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG);
}

static void test_init_token_file(void **state)
{
    char path[] = "/tmp/tidings-smstok-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char line[] = TOKEN "\n";
    assert_int_equal(write(fd, line, sizeof(line) - 1), (ssize_t)(sizeof(line) - 1));
    close(fd);
    struct sms_config c;
    config_base(&c);
    set(&c, "sms.auth_token", "");
    set(&c, "sms.auth_token_file", path);
    void *st = open_channel(&c);
    unlink(path);
    struct fixture f;
    fixture_init(&f, "t", "b");
    struct channel_outcome o;
    assert_int_equal(sms_channel.format(st, &f.d, &req, &o), 0);
    sms_channel.destroy(st);
    char from_file[256];
    snprintf(from_file, sizeof(from_file), "%s", req.headers[0]);
    /* the token from the file (newline trimmed) gives the inline token's header */
    assert_int_equal(run(*state, &f, &o), 0);
    assert_string_equal(from_file, req.headers[0]);
}


/* --- several senders: selection by destination prefix ------------------------------- */

static char tdir[256];

static void write_tenant(const char *name, const char *text)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/%s", tdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void tenants_dir_fresh(void)
{
    snprintf(tdir, sizeof(tdir), "/tmp/test_sms_tenants.XXXXXX");
    assert_non_null(mkdtemp(tdir));
}

static void tenants_dir_remove(void)
{
    static const char *const names[] = {"uk.conf", "us.conf", "ignored.txt", "a.conf", "b.conf"};
    char path[400];
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", tdir, names[i]);
        unlink(path);
    }
    assert_int_equal(rmdir(tdir), 0);
}

static void test_golden_tenant_selection(void **state)
{
    (void)state;
    tenants_dir_fresh();
    write_tenant("uk.conf", "sms.account_sid = " SID "\nsms.auth_token = " TOKEN
                            "\nsms.from = +447700900123\nsms.prefixes = +44, +1242\n");
    write_tenant("us.conf", "sms.account_sid = " SID "\nsms.auth_token = " TOKEN
                            "\nsms.messaging_service_sid = MG0123456789abcdef0123456789abcdef\n"
                            "sms.prefixes = +1\n");
    write_tenant("ignored.txt", "not a credential\n");
    struct sms_config c;
    config_base(&c);
    set(&c, "sms.tenants_dir", tdir);
    void *st = open_channel(&c);
    struct fixture f;
    char text[32768], all[4 * 32768];
    size_t off = 0;
    /* +44 -> uk.conf, +1 -> us.conf, +1242 (Bahamas) -> the longer prefix
     * (uk.conf's, over us.conf's +1), +49 -> the main sender (no
     * sms.prefixes: the rest) */
    const char *const numbers[] = {"+447700900456", "+15551230000", "+12425550000",
                                   "+4915112345678"};
    for (size_t i = 0; i < sizeof(numbers) / sizeof(numbers[0]); i++) {
        fixture_init(&f, "Door open", NULL);
        f.dev.token = numbers[i];
        struct channel_outcome o;
        int rc = run(st, &f, &o);
        render(rc, &req, &o, text, sizeof(text));
        off += (size_t)snprintf(all + off, sizeof(all) - off, "## %s\n%s", numbers[i], text);
    }
    check_golden("tenant_selection", all);
    sms_channel.destroy(st);

    /* The main sender with prefixes of its own: a number nobody serves is
     * dropped with the reason, and only the country code is stored. */
    set(&c, "sms.prefixes", "+49");
    st = open_channel(&c);
    fixture_init(&f, "Door open", NULL);
    f.dev.token = "+33612345678";
    struct channel_outcome o;
    assert_true(run(st, &f, &o) < 0);
    assert_int_equal(o.result, CHANNEL_DROP);
    assert_string_equal(o.reason, "NoSenderForNumber: +336...");
    sms_channel.destroy(st);
    tenants_dir_remove();
}

static void test_tenant_config_errors(void **state)
{
    (void)state;
    char err[CONFIG_ERR_MAX];
    struct sms_config c;
    tenants_dir_fresh();
    config_base(&c);
    set(&c, "sms.tenants_dir", tdir);
    /* a file without prefixes */
    write_tenant("a.conf", "sms.account_sid = " SID "\nsms.auth_token = " TOKEN
                           "\nsms.from = +447700900123\n");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG);
    assert_non_null(strstr(err, "a.conf: sms.prefixes: required"));
    /* a bad key: file:line */
    write_tenant("a.conf", "sms.account_sid = " SID "\nsms.from = +447700900123\n"
                           "sms.prefixes = +44\nsms.nonsense = 1\n");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG);
    assert_non_null(strstr(err, "a.conf:4: sms.nonsense"));
    /* a duplicate key: file:line */
    write_tenant("a.conf", "sms.prefixes = +44\nsms.prefixes = +45\n");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG);
    assert_non_null(strstr(err, "a.conf:2"));
    /* two senders claiming one prefix */
    write_tenant("a.conf", "sms.account_sid = " SID "\nsms.auth_token = " TOKEN
                           "\nsms.from = +447700900123\nsms.prefixes = +44\n");
    write_tenant("b.conf", "sms.account_sid = " SID "\nsms.auth_token = " TOKEN
                           "\nsms.from = +447700900124\nsms.prefixes = +44\n");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG);
    assert_non_null(strstr(err, "b.conf: sms.prefixes: +44 is already served by"));
    /* a nested tenants dir */
    write_tenant("b.conf", "sms.account_sid = " SID "\nsms.auth_token = " TOKEN
                           "\nsms.from = +447700900124\nsms.prefixes = +45\n"
                           "sms.tenants_dir = /tmp\n");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG);
    assert_non_null(strstr(err, "b.conf: sms.tenants_dir: only the main config"));
    /* a bad prefix */
    write_tenant("b.conf", "sms.account_sid = " SID "\nsms.auth_token = " TOKEN
                           "\nsms.from = +447700900124\nsms.prefixes = 45\n");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG);
    assert_non_null(strstr(err, "b.conf: sms.prefixes: '45'"));
    tenants_dir_remove();
    /* a directory that is not there */
    set(&c, "sms.tenants_dir", "/nonexistent/tidings");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG);
    assert_non_null(strstr(err, "sms.tenants_dir: /nonexistent/tidings"));
}

/* --- status and incoming-message posts ---------------------------------------------- */

static void form(const char *body, struct sms_form *f)
{
    assert_int_equal(sms_form_parse(body, strlen(body), f), 0);
}

static void test_form_parse(void **state)
{
    (void)state;
    struct sms_form f;
    form("To=%2B4915112345678&Body=T%C3%BCr+%26+mehr%3D1&Empty=&Flag&A=1&A=2", &f);
    assert_int_equal(f.n, 6);
    assert_string_equal(sms_form_get(&f, "To"), "+4915112345678");
    assert_string_equal(sms_form_get(&f, "Body"), "T\xc3\xbcr & mehr=1");
    assert_string_equal(sms_form_get(&f, "Empty"), "");
    assert_string_equal(sms_form_get(&f, "Flag"), "");
    assert_string_equal(sms_form_get(&f, "A"), "1");
    assert_null(sms_form_get(&f, "Missing"));
    assert_int_equal(sms_form_parse("a=%4", 5, &f), -EINVAL);
    assert_int_equal(sms_form_parse("a=%zz", 5, &f), -EINVAL);
    char many[SMS_FORM_MAX * 4 + 16];
    size_t mlen = 0;
    for (int i = 0; i <= SMS_FORM_MAX; i++) {
        memcpy(many + mlen, "a=1&", 4); /* SMS_FORM_MAX + 1 fields fit the array */
        mlen += 4;
    }
    assert_int_equal(sms_form_parse(many, mlen, &f), -E2BIG);
}

static void test_signature(void **state)
{
    (void)state;
    struct sms_form f;
    char sig[64];
    /* Twilio's documented example (auth token 12345) */
    form("CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1234&From=%2B12349013030&"
         "To=%2B18005551212",
         &f);
    const char *url = "https://mycompany.com/myapp.php?foo=1&bar=2";
    assert_int_equal(sms_signature("12345", url, &f, sig, sizeof(sig)), 0);
    assert_string_equal(sig, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
    assert_true(sms_signature_valid("12345", url, &f, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
    assert_false(sms_signature_valid("12346", url, &f, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
    assert_false(sms_signature_valid("12345", "https://mycompany.com/myapp.php", &f,
                                     "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
    assert_false(sms_signature_valid("12345", url, &f, "0/KCTR6DLpKmkAf8muzZqo1nDgQ"));
    assert_false(sms_signature_valid("12345", url, &f, NULL));
    /* unsorted input, UTF-8 and escapes; the value computed by Python's
     * hmac/hashlib over the same rules */
    form("MessageSid=SMabc&MessageStatus=delivered&AccountSid=AC1&Body=T%C3%BCr+%26+mehr%3D1&"
         "A=z&A2=",
         &f);
    assert_int_equal(sms_signature("tok", "https://hub.example/v1/sms/status", &f, sig,
                                   sizeof(sig)),
                     0);
    assert_string_equal(sig, "BGlpBZA5g0EEZu9tJ88cp8PSAlU=");
}

static void test_keywords(void **state)
{
    (void)state;
    assert_int_equal(sms_keyword("STOP"), SMS_KEYWORD_OPT_OUT);
    assert_int_equal(sms_keyword(" stop. "), SMS_KEYWORD_OPT_OUT);
    assert_int_equal(sms_keyword("Unsubscribe"), SMS_KEYWORD_OPT_OUT);
    assert_int_equal(sms_keyword("START"), SMS_KEYWORD_OPT_IN);
    assert_int_equal(sms_keyword("unstop!"), SMS_KEYWORD_OPT_IN);
    assert_int_equal(sms_keyword("yes"), SMS_KEYWORD_OPT_IN);
    assert_int_equal(sms_keyword("please stop"), SMS_KEYWORD_NONE);
    assert_int_equal(sms_keyword("STOPP"), SMS_KEYWORD_NONE);
    assert_int_equal(sms_keyword(""), SMS_KEYWORD_NONE);
    assert_int_equal(sms_keyword(NULL), SMS_KEYWORD_NONE);
}

static void test_parse_status(void **state)
{
    (void)state;
    char st[24];
    int code = -1;
    bool fin = true;
    const char *q = "{\"sid\":\"SM1\",\"status\":\"queued\",\"error_code\":null}";
    assert_int_equal(sms_parse_status(q, strlen(q), st, sizeof(st), &code, &fin), 0);
    assert_string_equal(st, "queued");
    assert_int_equal(code, 0);
    assert_false(fin);
    const char *u = "{\"status\":\"undelivered\",\"error_code\":30003}";
    assert_int_equal(sms_parse_status(u, strlen(u), st, sizeof(st), &code, &fin), 0);
    assert_string_equal(st, "undelivered");
    assert_int_equal(code, 30003);
    assert_true(fin);
    const char *d = "{\"status\":\"delivered\",\"error_code\":\"0\"}";
    assert_int_equal(sms_parse_status(d, strlen(d), st, sizeof(st), &code, &fin), 0);
    assert_true(fin);
    assert_int_equal(code, 0);
    assert_int_equal(sms_parse_status("{}", 2, st, sizeof(st), &code, &fin), TDG_EINVAL_INPUT);
    assert_int_equal(sms_parse_status("nope", 4, st, sizeof(st), &code, &fin), TDG_EINVAL_INPUT);
}

struct sink {
    int calls;
    char sid[64], status[24];
    int code;
};

static void sink_fn(void *arg, const char *channel, const char *sid, const char *status, int code)
{
    struct sink *k = arg;
    assert_string_equal(channel, "sms");
    k->calls++;
    snprintf(k->sid, sizeof(k->sid), "%s", sid);
    snprintf(k->status, sizeof(k->status), "%s", status);
    k->code = code;
}

static void test_status_callback_and_inbound(void **state)
{
    (void)state;
    struct sms_config c;
    config_base(&c);
    set(&c, "sms.status_callback_url", "https://hub.example/v1/sms/status?x=1");
    set(&c, "sms.inbound_url", "https://hub.example/v1/sms/inbound");
    struct sink k = {0};
    struct channel_env env = {.loop = NULL, .status = sink_fn, .status_arg = &k};
    void *st = NULL;
    char err[256];
    assert_int_equal(sms_channel.init(&env, &c, &st, err, sizeof(err)), 0);

    const char *body = "AccountSid=" SID "&MessageSid=SM0123&MessageStatus=undelivered&"
                       "ErrorCode=30003&To=%2B4915112345678";
    struct sms_form f;
    form(body, &f);
    char sig[64], why[128];
    assert_int_equal(sms_signature(TOKEN, c.status_callback_url, &f, sig, sizeof(sig)), 0);
    assert_int_equal(sms_status_callback(st, body, strlen(body), sig, why, sizeof(why)), 200);
    assert_int_equal(k.calls, 1);
    assert_string_equal(k.sid, "SM0123");
    assert_string_equal(k.status, "undelivered");
    assert_int_equal(k.code, 30003);
    /* a replay is passed on again: the store makes it idempotent */
    assert_int_equal(sms_status_callback(st, body, strlen(body), sig, why, sizeof(why)), 200);
    assert_int_equal(k.calls, 2);
    /* wrong or missing signature, unknown account, missing fields */
    assert_int_equal(sms_status_callback(st, body, strlen(body), "AAAA", why, sizeof(why)), 403);
    assert_string_equal(why, "X-Twilio-Signature does not match");
    assert_int_equal(sms_status_callback(st, body, strlen(body), NULL, why, sizeof(why)), 403);
    const char *other = "AccountSid=ACother&MessageSid=SM1&MessageStatus=sent";
    assert_int_equal(sms_status_callback(st, other, strlen(other), sig, why, sizeof(why)), 403);
    const char *nosid = "AccountSid=" SID "&MessageStatus=sent";
    form(nosid, &f);
    assert_int_equal(sms_signature(TOKEN, c.status_callback_url, &f, sig, sizeof(sig)), 0);
    assert_int_equal(sms_status_callback(st, nosid, strlen(nosid), sig, why, sizeof(why)), 400);
    assert_int_equal(k.calls, 2);

    /* an incoming START */
    const char *in = "AccountSid=" SID "&From=%2B4915112345678&To=%2B15005550006&Body=Start";
    form(in, &f);
    assert_int_equal(sms_signature(TOKEN, c.inbound_url, &f, sig, sizeof(sig)), 0);
    char from[32];
    enum sms_keyword kw;
    assert_int_equal(sms_inbound(st, in, strlen(in), sig, from, sizeof(from), &kw, why,
                                 sizeof(why)),
                     200);
    assert_string_equal(from, "+4915112345678");
    assert_int_equal(kw, SMS_KEYWORD_OPT_IN);
    /* signed for the status URL, posted as inbound: refused */
    assert_int_equal(sms_signature(TOKEN, c.status_callback_url, &f, sig, sizeof(sig)), 0);
    assert_int_equal(sms_inbound(st, in, strlen(in), sig, from, sizeof(from), &kw, why,
                                 sizeof(why)),
                     403);
    sms_channel.destroy(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_basic),
        cmocka_unit_test(test_golden_unicode),
        cmocka_unit_test(test_golden_ttl),
        cmocka_unit_test(test_golden_ttl_clamped),
        cmocka_unit_test(test_golden_gsm_extension),
        cmocka_unit_test(test_golden_service_callback),
        cmocka_unit_test(test_golden_invalid_number),
        cmocka_unit_test(test_e164),
        cmocka_unit_test(test_format_drops_invalid_numbers),
        cmocka_unit_test(test_segments_gsm7),
        cmocka_unit_test(test_segments_ucs2),
        cmocka_unit_test(test_segments_bad_utf8),
        cmocka_unit_test(test_format_reason_carries_segments),
        cmocka_unit_test(test_form_encode),
        cmocka_unit_test(test_text_roundtrip),
        cmocka_unit_test(test_no_content_and_bad_utf8),
        cmocka_unit_test(test_truncate_long_gsm),
        cmocka_unit_test(test_truncate_to_buffer),
        cmocka_unit_test(test_validity_period),
        cmocka_unit_test(test_basic_auth_header),
        cmocka_unit_test(test_answers),
        cmocka_unit_test(test_golden_tenant_selection),
        cmocka_unit_test(test_tenant_config_errors),
        cmocka_unit_test(test_form_parse),
        cmocka_unit_test(test_signature),
        cmocka_unit_test(test_keywords),
        cmocka_unit_test(test_parse_status),
        cmocka_unit_test(test_status_callback_and_inbound),
        cmocka_unit_test(test_init_errors),
        cmocka_unit_test(test_init_token_file),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
