/*
 * test_email_format.c - the email channel's pure parts: the RFC 5322
 * message against golden files (fixed clock), header-injection refusals,
 * address checks, RFC 2047 subjects and quoted-printable bodies decoded
 * back to the original text, line limits, the SMTP result -> outcome table,
 * and config checks in init.
 *
 * Golden files live in tests/golden/email/<name>.txt: "MAIL FROM:<a>",
 * "RCPT TO:<b>", a blank line, then the message with each CRLF written as
 * LF (every line break in the message is checked to be CRLF first, so the
 * files stay readable and diffable). A dropped delivery renders as
 * "DROP <reason>". Run with TIDINGS_UPDATE_GOLDEN=1 to rewrite them after a
 * deliberate change, then review the diff.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <cmocka.h>

#include <mbedtls/base64.h>

#include "config.h"
#include "email.h"
#include "error.h"

#ifndef GOLDEN_DIR
#error "GOLDEN_DIR must point at tests/golden/email"
#endif

#define T0_MS INT64_C(1700000000123) /* Tue, 14 Nov 2023 22:13:20 +0000 */
#define TO "alice@example.org"
#define DOOR "T\xc3\xbcr offen \xe2\x80\x94 \xf0\x9f\x9a\xaa" /* "Tür offen — 🚪" */

/* --- fixtures ------------------------------------------------------------- */

static void set(struct email_config *c, const char *k, const char *v)
{
    char err[CONFIG_ERR_MAX];
    const struct channel_ops *ops = &email_channel;
    int rc = config_set(ops->config, ops->config_n, c, k, v, err, sizeof(err));
    if (rc != 0) {
        fail_msg("config %s: %s", k, err);
    }
}

static void config_base(struct email_config *c)
{
    char err[CONFIG_ERR_MAX];
    const struct channel_ops *ops = &email_channel;
    assert_int_equal(ops->config_size, sizeof(*c));
    assert_int_equal(config_defaults(ops->config, ops->config_n, c, err, sizeof(err)), 0);
    set(c, "email.smtp_url", "smtp://mail.example.com:587");
    set(c, "email.username", "hub");
    set(c, "email.password", "not-a-secret");
    set(c, "email.from", "Tidings Alerts <alerts@example.com>");
}

static void *open_channel(const struct email_config *c)
{
    struct channel_env env = {.loop = NULL, .http = NULL}; /* format only */
    void *st = NULL;
    char err[256] = "";
    int rc = email_channel.init(&env, c, &st, err, sizeof(err));
    if (rc != 0) {
        fail_msg("init: %s: %s", tdg_strerror(rc), err);
    }
    return st;
}

static void *open_with_from(const char *from)
{
    struct email_config c;
    config_base(&c);
    set(&c, "email.from", from);
    return open_channel(&c);
}

static int init_error(const struct email_config *c, char *err, size_t len)
{
    struct channel_env env = {.loop = NULL, .http = NULL};
    void *st = NULL;
    err[0] = '\0';
    int rc = email_channel.init(&env, c, &st, err, len);
    if (rc == 0) {
        email_channel.destroy(st);
    }
    return rc;
}

static int group_setup(void **state)
{
    struct email_config c;
    config_base(&c);
    *state = open_channel(&c);
    return 0;
}

static int group_teardown(void **state)
{
    email_channel.destroy(*state);
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
    f->dev.platform = "email";
    f->dev.token = TO;
    f->d.attempt_id = 9;
    f->d.n = &f->n;
    f->d.dev = &f->dev;
    f->d.now_ms = T0_MS;
}

static struct email_message msg;

static int run(void *st, struct fixture *f, struct channel_outcome *o)
{
    return email_format_message(st, &f->d, &msg, o);
}

/* --- message checks ------------------------------------------------------------ */

/* Every line ends in CRLF, no bare CR/LF, 7-bit only; header lines <= 78
 * (<= 76 when they carry an encoded word), body lines <= 76. */
static void check_wire(const struct email_message *m)
{
    const char *p = m->data;
    const char *end = m->data + m->len;
    bool in_head = true;
    assert_true(m->len >= 2 && end[-2] == '\r' && end[-1] == '\n');
    while (p < end) {
        const char *cr = memchr(p, '\r', (size_t)(end - p));
        assert_non_null(cr);
        assert_true(cr + 1 < end && cr[1] == '\n');
        size_t len = (size_t)(cr - p);
        assert_null(memchr(p, '\n', len));
        for (size_t i = 0; i < len; i++) {
            assert_true((unsigned char)p[i] < 0x80);
        }
        if (len == 0 && in_head) {
            in_head = false;
        } else if (in_head) {
            size_t max = 78;
            for (size_t i = 0; i + 1 < len; i++) {
                max = p[i] == '=' && p[i + 1] == '?' ? 76 : max;
            }
            if (len > max) {
                fail_msg("header line of %zu characters: %.*s", len, (int)len, p);
            }
        } else if (len > 76) {
            fail_msg("body line of %zu characters: %.*s", len, (int)len, p);
        }
        p = cr + 2;
    }
    assert_false(in_head);
}

/* The value of header name, unfolded (CRLF before WSP removed). */
static void header_value(const struct email_message *m, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    const char *p = m->data;
    while (strncmp(p, "\r\n", 2) != 0) {
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            p += nl + 1;
            while (*p == ' ') {
                p++;
            }
            size_t o = 0;
            while (!(p[0] == '\r' && p[1] == '\n' && p[2] != ' ' && p[2] != '\t')) {
                if (p[0] == '\r' && p[1] == '\n') {
                    p += 2;
                    continue;
                }
                assert_true(o + 1 < cap);
                out[o++] = *p++;
            }
            out[o] = '\0';
            return;
        }
        p = strstr(p, "\r\n") + 2;
        assert_true(p > m->data + 1);
    }
    fail_msg("no %s header", name);
}

/* Decode RFC 2047 B words (whitespace between adjacent words dropped). */
static void decode_words(const char *in, char *out, size_t cap)
{
    size_t o = 0;
    const char *p = in;
    bool last_word = false;
    while (*p) {
        if (strncmp(p, "=?UTF-8?B?", 10) == 0) {
            const char *e = strstr(p + 10, "?=");
            assert_non_null(e);
            size_t n = 0;
            assert_int_equal(mbedtls_base64_decode((unsigned char *)out + o, cap - o - 1, &n,
                                                   (const unsigned char *)p + 10,
                                                   (size_t)(e - p - 10)),
                             0);
            o += n;
            p = e + 2;
            last_word = true;
            continue;
        }
        if (last_word && *p == ' ') {
            const char *q = p;
            while (*q == ' ') {
                q++;
            }
            if (strncmp(q, "=?", 2) == 0) {
                p = q;
                continue;
            }
        }
        last_word = false;
        assert_true(o + 1 < cap);
        out[o++] = *p++;
    }
    out[o] = '\0';
}

/* Decode the quoted-printable body back to text with LF line breaks. */
static void decode_body(const struct email_message *m, char *out, size_t cap)
{
    const char *p = strstr(m->data, "\r\n\r\n");
    assert_non_null(p);
    p += 4;
    const char *end = m->data + m->len;
    size_t o = 0;
    while (p < end) {
        assert_true(o + 1 < cap);
        if (p[0] == '=' && p + 2 < end && p[1] == '\r' && p[2] == '\n') {
            p += 3; /* soft break */
        } else if (p[0] == '=') {
            char hex[3] = {p[1], p[2], 0};
            out[o++] = (char)strtol(hex, NULL, 16);
            p += 3;
        } else if (p[0] == '\r' && p + 1 < end && p[1] == '\n') {
            out[o++] = '\n';
            p += 2;
        } else {
            out[o++] = *p++;
        }
    }
    /* the message's final line break is not part of the text */
    if (o > 0 && out[o - 1] == '\n') {
        o--;
    }
    out[o] = '\0';
}

/* --- golden ------------------------------------------------------------------------ */

static void render(int rc, const struct email_message *m, const struct channel_outcome *o,
                   char *buf, size_t len)
{
    if (rc < 0) {
        snprintf(buf, len, "DROP %s\n", o->reason);
        return;
    }
    check_wire(m);
    int n = snprintf(buf, len, "MAIL FROM:<%s>\nRCPT TO:<%s>\n\n", m->mail_from, m->rcpt_to);
    assert_true(n > 0 && (size_t)n < len);
    size_t off = (size_t)n;
    for (size_t i = 0; i < m->len; i++) {
        if (m->data[i] == '\r') {
            continue; /* check_wire proved it is followed by LF */
        }
        assert_true(off + 1 < len);
        buf[off++] = m->data[i];
    }
    buf[off] = '\0';
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
    static char want[65536];
    size_t n = fread(want, 1, sizeof(want) - 1, f);
    fclose(f);
    want[n] = '\0';
    if (strcmp(want, got) != 0) {
        fail_msg("%s differs.\n--- want\n%s--- got\n%s", path, want, got);
    }
}

static void golden_case(void *st, struct fixture *f, const char *name)
{
    struct channel_outcome o;
    int rc = run(st, f, &o);
    static char text[65536];
    render(rc, &msg, &o, text, sizeof(text));
    check_golden(name, text);
}

static void test_golden_utf8_subject(void **state)
{
    struct fixture f;
    fixture_init(&f, DOOR,
                 "Die Haust\xc3\xbcr ist seit 08:15 offen.\nBitte pr\xc3\xbc"
                 "fen.");
    f.n.category = "security";
    golden_case(*state, &f, "utf8_subject");
}

static void test_golden_ascii(void **state)
{
    struct fixture f;
    fixture_init(&f, "Door open", "Front door opened at 08:15");
    golden_case(*state, &f, "ascii");
}

static void test_golden_long_subjects(void **state)
{
    struct fixture f;
    fixture_init(&f,
                 "Weekly report: 14 orders shipped, 3 returns pending, 2 invoices overdue, "
                 "and one customer asked about the delivery window for next week",
                 "See the dashboard.");
    golden_case(*state, &f, "long_ascii_subject");
    fixture_init(&f,
                 "\xe6\x82\xa8\xe7\x9a\x84\xe8\xae\xa2\xe5\x8d\x95\xe5\xb7\xb2\xe5\x8f\x91"
                 "\xe8\xb4\xa7\xef\xbc\x9a\xe8\xaf\xb7\xe5\x9c\xa8\xe4\xb8\x89\xe5\xa4\xa9"
                 "\xe5\x86\x85\xe7\xad\xbe\xe6\x94\xb6\xe5\x8c\x85\xe8\xa3\xb9 \xf0\x9f\x93"
                 "\xa6\xf0\x9f\x93\xa6\xf0\x9f\x93\xa6 \xe2\x80\x94 "
                 "Caf\xc3\xa9 M\xc3\xbcller \xc3\x98resund \xe2\x82\xac 12,50",
                 "ok");
    golden_case(*state, &f, "long_utf8_subject");
}

static void test_golden_body_only(void **state)
{
    struct fixture f;
    fixture_init(&f, NULL,
                 "Backup finished on nas-01 after 3 h 12 min; 1.2 TB written, no errors "
                 "reported.\nNext run: Sunday 02:00.");
    golden_case(*state, &f, "body_only");
}

static void test_golden_qp_edges(void **state)
{
    struct fixture f;
    fixture_init(&f, "QP edges",
                 "trailing spaces   \n"
                 "tab at end\t\n"
                 "a=b and =?not a word?=\n"
                 ".leading dot\n"
                 ".\n"
                 "From the start of a line\n"
                 "a long line of text that goes on and on well past the seventy-six "
                 "character limit of quoted-printable and then some more\n"
                 "\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc"
                 "\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc"
                 "\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\n"
                 "crlf\r\nlone cr\rend");
    golden_case(*state, &f, "qp_edges");
}

static void test_golden_display_names(void **state)
{
    (void)state;
    struct fixture f;
    fixture_init(&f, "Hello", "World");
    void *st = open_with_from("T\xc3\xbcrw\xc3\xa4"
                              "chter \xe2\x9c\x93 <alerts@example.com>");
    golden_case(st, &f, "from_utf8_name");
    email_channel.destroy(st);
    st = open_with_from("\"Tidings, Inc.\" <alerts@example.com>");
    golden_case(st, &f, "from_quoted_name");
    email_channel.destroy(st);
    st = open_with_from("alerts@example.com");
    golden_case(st, &f, "from_bare");
    email_channel.destroy(st);
}

static void test_golden_message_id_mapping(void **state)
{
    struct fixture f;
    fixture_init(&f, "Id", "mapping");
    f.n.id = "agent-7:evt..42.";
    golden_case(*state, &f, "message_id");
}

/* --- header injection ----------------------------------------------------------------- */

static void test_header_injection(void **state)
{
    static const char *const titles[] = {
        "Hello\r\nBcc: victim@example.net", "Hello\nBcc: victim@example.net",
        "Hello\rBcc: victim@example.net",   "\r\n",
        "Subject line\r\n\r\nfake body",    "T\xc3\xbcr\nX-Evil: 1",
    };
    for (size_t i = 0; i < sizeof(titles) / sizeof(titles[0]); i++) {
        struct fixture f;
        fixture_init(&f, titles[i], "body");
        struct channel_outcome o;
        assert_true(run(*state, &f, &o) < 0);
        assert_int_equal(o.result, CHANNEL_DROP);
        assert_string_equal(o.reason, "header_injection");
        assert_int_equal(msg.len, 0);
    }
    static const char *const tokens[] = {
        "alice@example.org\r\nBcc: victim@example.net",
        "alice@example.org\n",
        "alice@example.org\rRCPT TO:<x@y.z>",
    };
    for (size_t i = 0; i < sizeof(tokens) / sizeof(tokens[0]); i++) {
        struct fixture f;
        fixture_init(&f, "Hi", "body");
        f.dev.token = tokens[i];
        struct channel_outcome o;
        assert_true(run(*state, &f, &o) < 0);
        assert_string_equal(o.reason, "header_injection");
    }
    /* a body may have any line breaks: it is the body */
    struct fixture f;
    fixture_init(&f, "Fine", "line\r\nBcc: not-a-header@example.net\r\n");
    struct channel_outcome o;
    assert_int_equal(run(*state, &f, &o), 0);
    char v[256];
    header_value(&msg, "Subject", v, sizeof(v));
    assert_string_equal(v, "Fine");
    size_t head = (size_t)(strstr(msg.data, "\r\n\r\n") - msg.data);
    char *bcc = strstr(msg.data, "\r\nBcc:");
    assert_true(bcc == NULL || (size_t)(bcc - msg.data) >= head); /* only in the body */

    /* the sender is config: CR/LF there refuses to start */
    struct email_config c;
    char err[256];
    config_base(&c);
    set(&c, "email.from", "Evil\r\nBcc: x@example.net <alerts@example.com>");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG);
    assert_non_null(strstr(err, "header_injection"));
    config_base(&c);
    set(&c, "email.from", "alerts@example.com\n");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG);
    config_base(&c);
    set(&c, "email.from", "Bell\x07 <alerts@example.com>");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG);
}

/* --- addresses --------------------------------------------------------------------------- */

static void test_addresses(void **state)
{
    static const char *const good[] = {
        "a@b",         "alice@example.org",  "first.last+tag@sub.example.co.uk",
        "x_y-z@a-b.c", "o'brien@example.ie", "{weird}!#$%&*/=?^`|~@example.com",
        "a@localhost",
    };
    static const char *const bad[] = {
        "",
        "@",
        "a@",
        "@b",
        "ab",
        "a@@b",
        "a@b@c",
        "a b@c.d",
        "a@b c.d",
        "<a@b.c>",
        ".a@b.c",
        "a.@b.c",
        "a..b@c.d",
        "a@.b",
        "a@b.",
        "a@b..c",
        "a@-b.c",
        "a@b-.c",
        "a@b_c.d",
        "a(b)@c.d",
        "a\"b@c.d",
        "a,b@c.d",
        "a;b@c.d",
        "a:b@c.d",
        "a@[127.0.0.1]",
        "j\xc3\xb6rg@example.de",
        "a@ex\xc3\xa4mple.de",
        "a\\b@c.d",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        if (!email_address_valid(good[i])) {
            fail_msg("%s should be valid", good[i]);
        }
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (email_address_valid(bad[i])) {
            fail_msg("'%s' should be invalid", bad[i]);
        }
    }
    assert_false(email_address_valid(NULL));
    /* bounds: 64-character local part, 254 in all */
    char a[400];
    memset(a, 'l', 64);
    snprintf(a + 64, sizeof(a) - 64, "@example.com");
    assert_true(email_address_valid(a));
    memset(a, 'l', 65);
    snprintf(a + 65, sizeof(a) - 65, "@example.com");
    assert_false(email_address_valid(a));
    /* "x@" + 63 + "." + 63 + "." + 63 + "." + 60 = 254 characters */
    char l63[64];
    memset(l63, 'd', 63);
    l63[63] = '\0';
    snprintf(a, sizeof(a), "x@%s.%s.%s.%.60s", l63, l63, l63, l63);
    assert_int_equal(strlen(a), 254);
    assert_true(email_address_valid(a));
    snprintf(a, sizeof(a), "xy@%s.%s.%s.%.60s", l63, l63, l63, l63);
    assert_false(email_address_valid(a));       /* 255 */
    snprintf(a, sizeof(a), "x@%s%s", l63, "d"); /* a 64-character label */
    assert_false(email_address_valid(a));

    struct fixture f;
    fixture_init(&f, "Hi", "body");
    f.dev.token = "not an address";
    struct channel_outcome o;
    assert_true(run(*state, &f, &o) < 0);
    assert_string_equal(o.reason, "invalid_address");
    f.dev.token = NULL;
    assert_true(run(*state, &f, &o) < 0);
    assert_string_equal(o.reason, "invalid_address");
}

/* --- round trips ---------------------------------------------------------------------------- */

static void roundtrip(void *st, const char *title, const char *body)
{
    struct fixture f;
    fixture_init(&f, title, body);
    struct channel_outcome o;
    assert_int_equal(run(st, &f, &o), 0);
    check_wire(&msg);
    static char raw[16384], dec[16384];
    header_value(&msg, "Subject", raw, sizeof(raw));
    decode_words(raw, dec, sizeof(dec));
    assert_string_equal(dec, title);
    decode_body(&msg, dec, sizeof(dec));
    /* line breaks come back as LF */
    static char want[16384];
    size_t w = 0;
    for (size_t i = 0; body[i]; i++) {
        if (body[i] == '\r') {
            want[w++] = '\n';
            if (body[i + 1] == '\n') {
                i++;
            }
        } else {
            want[w++] = body[i];
        }
    }
    want[w] = '\0';
    if (w > 0 && want[w - 1] == '\n') {
        want[w - 1] = '\0';
    }
    assert_string_equal(dec, want);
}

static void test_roundtrips(void **state)
{
    roundtrip(*state, DOOR, "Die Haust\xc3\xbcr ist offen.");
    roundtrip(*state, "plain", "=?UTF-8?B?Zm9v?= stays text");
    roundtrip(*state, "=?UTF-8?B?Zm9v?=", "a subject that looks encoded is encoded");
    roundtrip(*state, " leading and trailing ", "x");
    roundtrip(*state,
              "two  spaces  inside and long enough to need folding, which would lose "
              "the double spaces",
              "x");
    roundtrip(*state, "tab\tin title", "ends with newline\n");
    static char big[4200];
    size_t n = 0;
    while (n + 4 < 4000) {
        memcpy(big + n, "\xf0\x9f\x9a\xaa", 4);
        n += 4;
    }
    big[n] = '\0';
    roundtrip(*state, big, big); /* 1000 emoji in both: several KiB of words and QP */
    char *allbytes = malloc(3000);
    assert_non_null(allbytes);
    n = 0;
    for (int rep = 0; rep < 20; rep++) {
        for (int c = 1; c < 0x80; c++) {
            allbytes[n++] = (char)c;
        }
    }
    allbytes[n] = '\0';
    roundtrip(*state, "every ASCII byte", allbytes);
    free(allbytes);
}

static void test_message_fields(void **state)
{
    struct fixture f;
    fixture_init(&f, "Hi", "there");
    struct channel_outcome o;
    assert_int_equal(run(*state, &f, &o), 0);
    assert_string_equal(msg.mail_from, "alerts@example.com");
    assert_string_equal(msg.rcpt_to, TO);
    char v[256];
    header_value(&msg, "Date", v, sizeof(v));
    assert_string_equal(v, "Tue, 14 Nov 2023 22:13:20 +0000");
    header_value(&msg, "Message-ID", v, sizeof(v));
    assert_string_equal(v, "<tidings-01HF6Y1M6Z8Q3R4S5T6V7W8X9Y@example.com>");
    header_value(&msg, "To", v, sizeof(v));
    assert_string_equal(v, TO);
    header_value(&msg, "Content-Transfer-Encoding", v, sizeof(v));
    assert_string_equal(v, "quoted-printable");
    /* no id: the attempt makes one */
    f.n.id = NULL;
    assert_int_equal(run(*state, &f, &o), 0);
    header_value(&msg, "Message-ID", v, sizeof(v));
    assert_string_equal(v, "<tidings-a9@example.com>");
    /* leap-year date, single-digit day */
    f.d.now_ms = INT64_C(1709164800000); /* 2024-02-29T00:00:00Z */
    assert_int_equal(run(*state, &f, &o), 0);
    header_value(&msg, "Date", v, sizeof(v));
    assert_string_equal(v, "Thu, 29 Feb 2024 00:00:00 +0000");
    f.d.now_ms = INT64_C(1704157445000); /* 2024-01-02T01:04:05Z */
    assert_int_equal(run(*state, &f, &o), 0);
    header_value(&msg, "Date", v, sizeof(v));
    assert_string_equal(v, "Tue, 2 Jan 2024 01:04:05 +0000");
}

static void test_no_content_bad_utf8(void **state)
{
    struct fixture f;
    struct channel_outcome o;
    fixture_init(&f, NULL, NULL);
    assert_true(run(*state, &f, &o) < 0);
    assert_string_equal(o.reason, "no_content");
    fixture_init(&f, "bad \xff", "x");
    assert_true(run(*state, &f, &o) < 0);
    assert_string_equal(o.reason, "bad_utf8");
    fixture_init(&f, "ok", "bad \xed\xa0\x80");
    assert_true(run(*state, &f, &o) < 0);
    assert_string_equal(o.reason, "bad_utf8");
    /* only a title: it is the body too */
    fixture_init(&f, "Just a title", NULL);
    assert_int_equal(run(*state, &f, &o), 0);
    static char dec[256];
    decode_body(&msg, dec, sizeof(dec));
    assert_string_equal(dec, "Just a title");
}

static void test_ops_format(void **state)
{
    struct fixture f;
    fixture_init(&f, "Hi", "there");
    static struct channel_request req;
    struct channel_outcome o;
    assert_int_equal(email_channel.format(*state, &f.d, &req, &o), 0);
    assert_int_equal(run(*state, &f, &o), 0); /* the same message, into msg */
    assert_string_equal(req.method, "SMTP");
    assert_string_equal(req.url, "smtp://mail.example.com:587");
    assert_int_equal(req.nheaders, 2);
    assert_string_equal(req.headers[0], "mail-from: <alerts@example.com>");
    assert_string_equal(req.headers[1], "rcpt-to: <" TO ">");
    assert_int_equal(req.body_len, msg.len);
    assert_memory_equal(req.body, msg.data, msg.len);
    /* the request's body buffer is smaller than a big message can be */
    static char big[4001];
    memset(big, 0, sizeof(big));
    for (size_t i = 0; i + 2 <= 4000; i += 2) {
        memcpy(big + i, "\xc3\xbc", 2);
    }
    fixture_init(&f, "Big", big);
    assert_int_equal(email_channel.format(*state, &f.d, &req, &o), TDG_ETOOBIG);
    assert_string_equal(o.reason, "too_large");
    /* while the message itself is fine */
    assert_int_equal(run(*state, &f, &o), 0);
    check_wire(&msg);
}

/* --- results ------------------------------------------------------------------------------------
 */

static void result(enum smtp_fail fail, int code, const char *reply, const char *etext,
                   struct channel_outcome *o)
{
    struct smtp_result r = {.error = fail == SMTP_FAIL_NONE ? 0 : -EIO,
                            .fail = fail,
                            .code = code,
                            .reply = reply,
                            .error_text = etext};
    email_map_result(&r, o);
    assert_int_equal(o->status, code);
}

static void test_results(void **state)
{
    (void)state;
    struct channel_outcome o;
    result(SMTP_FAIL_NONE, 250, "250 2.0.0 Ok: queued as 4BQ2Xk1h9Wz", "", &o);
    assert_int_equal(o.result, CHANNEL_OK);
    assert_string_equal(o.provider_id, "4BQ2Xk1h9Wz");
    result(SMTP_FAIL_NONE, 250, "250 OK id=1rJ3kF-0007Xy-2b", "", &o);
    assert_string_equal(o.provider_id, "1rJ3kF-0007Xy-2b");
    result(SMTP_FAIL_NONE, 250, "250 2.0.0 Message accepted", "", &o);
    assert_int_equal(o.result, CHANNEL_OK);
    assert_string_equal(o.provider_id, "");

    result(SMTP_FAIL_REPLY, 550, "550 5.1.1 <bob@example.org>: Recipient address rejected",
           "RCPT failed: 550", &o);
    assert_int_equal(o.result, CHANNEL_DROP);
    /* reasons are stored and logged: the recipient's address is not in it */
    assert_string_equal(o.reason, "550 5.1.1 <[address]>: Recipient address rejected");
    result(SMTP_FAIL_REPLY, 550, "550 user bob.smith+x@mail.example.org unknown; see RFC 5321",
           "", &o);
    assert_string_equal(o.reason, "550 user [address] unknown; see RFC 5321");
    result(SMTP_FAIL_REPLY, 553, "553 5.1.3 Mailbox name not allowed", "", &o);
    assert_int_equal(o.result, CHANNEL_DROP);
    result(SMTP_FAIL_REPLY, 552, "", "", &o);
    assert_int_equal(o.result, CHANNEL_DROP);
    assert_string_equal(o.reason, "SMTP 552");
    result(SMTP_FAIL_REPLY, 451, "451 4.7.1 Greylisted, try again later", "", &o);
    assert_int_equal(o.result, CHANNEL_RETRY);
    assert_string_equal(o.reason, "451 4.7.1 Greylisted, try again later");
    result(SMTP_FAIL_REPLY, 421, "421 4.3.2 Service shutting down", "", &o);
    assert_int_equal(o.result, CHANNEL_RETRY);

    result(SMTP_FAIL_AUTH, 535, "535 5.7.8 Authentication credentials invalid", "Login denied", &o);
    assert_int_equal(o.result, CHANNEL_DROP);
    assert_string_equal(o.reason, "auth_failed: 535 5.7.8 Authentication credentials invalid");
    result(SMTP_FAIL_AUTH, 454, "454 4.7.0 Temporary authentication failure", "", &o);
    assert_int_equal(o.result, CHANNEL_RETRY);

    result(SMTP_FAIL_TLS, 0, "", "SSL certificate problem: unable to get local issuer", &o);
    assert_int_equal(o.result, CHANNEL_DROP);
    assert_string_equal(o.reason,
                        "tls_failed: SSL certificate problem: unable to get local issuer");

    result(SMTP_FAIL_CONNECT, 0, "", "Failed to connect", &o);
    assert_int_equal(o.result, CHANNEL_RETRY);
    result(SMTP_FAIL_TIMEOUT, 250, "250 2.1.5 Ok", "Operation timed out", &o);
    assert_int_equal(o.result, CHANNEL_RETRY);
    assert_string_equal(o.reason, "timeout: Operation timed out");
    result(SMTP_FAIL_LOST, 354, "354 End data", "Connection reset", &o);
    assert_int_equal(o.result, CHANNEL_RETRY);
}

/* --- init
 * ------------------------------------------------------------------------------------------ */

static void test_init_errors(void **state)
{
    (void)state;
    struct email_config c;
    char err[256];
    static const char *const urls[] = {"http://mail.example.com", "mail.example.com:587", "smtp:/x",
                                       "", "smtp://a b:25"};
    for (size_t i = 0; i < sizeof(urls) / sizeof(urls[0]); i++) {
        config_base(&c);
        set(&c, "email.smtp_url", urls[i]);
        assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG);
        assert_non_null(strstr(err, "email.smtp_url"));
    }
    config_base(&c);
    set(&c, "email.smtp_url", "smtps://mail.example.com:465");
    assert_int_equal(init_error(&c, err, sizeof(err)), 0);

    config_base(&c);
    set(&c, "email.from", "");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG);
    config_base(&c);
    set(&c, "email.from", "Name <not-an-address>");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG);
    config_base(&c);
    set(&c, "email.from", "Name <a@b.c> trailing");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG);

    config_base(&c);
    set(&c, "email.password", "");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG);
    config_base(&c);
    set(&c, "email.password_file", "/nonexistent/pw");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG); /* both */
    set(&c, "email.password", "");
    assert_int_equal(init_error(&c, err, sizeof(err)), TDG_ECONFIG); /* unreadable */
    assert_non_null(strstr(err, "password_file"));

    /* no AUTH at all is allowed (a relay that trusts the network), TLS still required */
    config_base(&c);
    set(&c, "email.username", "");
    set(&c, "email.password", "");
    assert_int_equal(init_error(&c, err, sizeof(err)), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_utf8_subject),
        cmocka_unit_test(test_golden_ascii),
        cmocka_unit_test(test_golden_long_subjects),
        cmocka_unit_test(test_golden_body_only),
        cmocka_unit_test(test_golden_qp_edges),
        cmocka_unit_test(test_golden_display_names),
        cmocka_unit_test(test_golden_message_id_mapping),
        cmocka_unit_test(test_header_injection),
        cmocka_unit_test(test_addresses),
        cmocka_unit_test(test_roundtrips),
        cmocka_unit_test(test_message_fields),
        cmocka_unit_test(test_no_content_bad_utf8),
        cmocka_unit_test(test_ops_format),
        cmocka_unit_test(test_results),
        cmocka_unit_test(test_init_errors),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
