/*
 * Unit tests of fake-apns's pure parts: the allocation-free JSON check and
 * string writer, base64url, and the answer-script parser. The server as a
 * whole is covered by test_fake_apns.sh.
 */
#include "apns_rules.h"
#include "fcm_rules.h"
#include "b64url.h"
#include "jsonlite.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int check(const char *s)
{
    return jsonlite_check_apns_payload(s, strlen(s));
}

static void test_json_accepts(void **state)
{
    (void)state;
    assert_int_equal(check("{\"aps\":{}}"), JSONLITE_OK);
    assert_int_equal(check(" \r\n\t{ \"aps\" : { \"alert\" : \"hi\" } }\n"), JSONLITE_OK);
    assert_int_equal(check("{\"a\":[1,-0.5e+3,true,false,null,\"\\u00e9\\n\"],\"aps\":{\"b\":{}}}"),
                     JSONLITE_OK);
    assert_int_equal(check("{\"aps\":{\"alert\":\"caf\xc3\xa9 \xf0\x9f\x94\x94\"}}"), JSONLITE_OK);
    /* The last "aps" wins, as in most parsers. */
    assert_int_equal(check("{\"aps\":1,\"aps\":{}}"), JSONLITE_OK);
}

static void test_json_no_aps(void **state)
{
    (void)state;
    assert_int_equal(check("{\"x\":1}"), JSONLITE_NO_APS);
    assert_int_equal(check("{\"aps\":\"hi\"}"), JSONLITE_NO_APS);
    assert_int_equal(check("{\"aps\":[]}"), JSONLITE_NO_APS);
    assert_int_equal(check("[{\"aps\":{}}]"), JSONLITE_NO_APS);
    assert_int_equal(check("\"aps\""), JSONLITE_NO_APS);
    assert_int_equal(check("{\"x\":{\"aps\":{}}}"), JSONLITE_NO_APS);
    assert_int_equal(check("{\"a\\u0070s\":{}}"), JSONLITE_NO_APS); /* escaped keys not decoded */
}

static void test_json_rejects(void **state)
{
    static const char *const bad[] = {
        "",
        "{",
        "{\"aps\":{}",
        "{\"aps\":{}} x",
        "{\"aps\":{}}{}",
        "{\"aps\":{},}",
        "{aps:{}}",
        "{\"aps\":{\"a\":01}}",
        "{\"aps\":{\"a\":1.}}",
        "{\"aps\":{\"a\":-}}",
        "{\"aps\":{\"a\":tru}}",
        "{\"aps\":{\"a\":\"\\x\"}}",
        "{\"aps\":{\"a\":\"\\u12G4\"}}",
        "{\"aps\":{\"a\":\"tab\there\"}}",
        "{\"aps\":{\"a\":\"\xc3\"}}",             /* truncated UTF-8 */
        "{\"aps\":{\"a\":\"\xc0\xaf\"}}",         /* overlong */
        "{\"aps\":{\"a\":\"\xed\xa0\x80\"}}",     /* surrogate */
        "{\"aps\":{\"a\":\"\xf4\x90\x80\x80\"}}", /* above U+10FFFF */
        "{\"aps\":{\"a\":[1,2,]}}",
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (check(bad[i]) != JSONLITE_NOT_JSON) {
            fail_msg("accepted: %s", bad[i]);
        }
    }
    /* A NUL inside the length is not JSON either. */
    assert_int_equal(jsonlite_check_apns_payload("{\"aps\":{}}\0", 11), JSONLITE_NOT_JSON);
}

static void test_json_depth(void **state)
{
    char buf[512];
    int i;
    size_t n = 0;

    (void)state;
    /* {"aps":{}} plus 62 nested arrays = depth 64: fine; one more is not. */
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, "{\"aps\":{},\"x\":");
    for (i = 0; i < 62; i++) {
        buf[n++] = '[';
    }
    for (i = 0; i < 62; i++) {
        buf[n++] = ']';
    }
    buf[n++] = '}';
    assert_int_equal(jsonlite_check_apns_payload(buf, n), JSONLITE_OK);
    n = 0;
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, "{\"aps\":{},\"x\":");
    for (i = 0; i < 64; i++) {
        buf[n++] = '[';
    }
    for (i = 0; i < 64; i++) {
        buf[n++] = ']';
    }
    buf[n++] = '}';
    assert_int_equal(jsonlite_check_apns_payload(buf, n), JSONLITE_NOT_JSON);
}

static void put_and_compare(const char *in, size_t n, const char *want)
{
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);

    assert_non_null(f);
    jsonlite_put_string(f, in, n);
    fclose(f);
    assert_string_equal(out, want);
    free(out);
}

static void test_json_put_string(void **state)
{
    (void)state;
    put_and_compare("plain", 5, "\"plain\"");
    put_and_compare("q\"b\\s/", 6, "\"q\\\"b\\\\s/\"");
    put_and_compare("a\nb\r\tc\x01", 7, "\"a\\nb\\r\\tc\\u0001\"");
    put_and_compare("caf\xc3\xa9", 5, "\"caf\xc3\xa9\"");
    put_and_compare("x\xff"
                    "y\xc3",
                    4, "\"x\\ufffdy\\ufffd\"");
    put_and_compare("a\0b", 3, "\"a\\u0000b\"");
}

static void test_b64url(void **state)
{
    const uint8_t in[] = {0xfb, 0xff, 0x00, 0x10, 0x83, 0x7e, 0x3f, 0xbf, 0x01, 0x02};
    char enc[32];
    uint8_t dec[16];
    size_t n;

    (void)state;
    for (n = 0; n <= sizeof(in); n++) {
        int el = b64url_encode(in, n, enc, sizeof(enc));
        assert_int_equal(el, (int)((n * 4 + 2) / 3));
        assert_null(strpbrk(enc, "+/="));
        assert_int_equal(b64url_decode(enc, (size_t)el, dec, sizeof(dec)), (int)n);
        assert_memory_equal(dec, in, n);
    }
    assert_int_equal(b64url_encode(in, 3, enc, 4), -1); /* no room for the NUL */
    assert_int_equal(b64url_decode("-_8", 3, dec, sizeof(dec)), 2);
    assert_int_equal(b64url_decode("QQ==", 4, dec, sizeof(dec)), -1); /* padding */
    assert_int_equal(b64url_decode("Q", 1, dec, sizeof(dec)), -1);    /* impossible length */
    assert_int_equal(b64url_decode("QR", 2, dec, sizeof(dec)), -1);   /* trailing bits */
    assert_int_equal(b64url_decode("Q+", 2, dec, sizeof(dec)), -1);   /* '+' is not base64url */
    assert_int_equal(b64url_decode("QUJD", 4, dec, 2), -1);           /* no room */
}

/* Writes text to a temporary script and loads it. */
static int load(const char *text, apns_rules *r, char *err, size_t errlen, char *path,
                size_t pathlen)
{
    int fd;
    FILE *f;

    snprintf(path, pathlen, "/tmp/test_fake_parts.XXXXXX");
    fd = mkstemp(path);
    assert_true(fd >= 0);
    f = fdopen(fd, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    {
        int rc = apns_rules_load(path, r, err, errlen);
        unlink(path);
        return rc;
    }
}

#define T64A "abababababababababababababababababababababababababababababababab"
#define T64B "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd"

static void test_rules_parse_and_match(void **state)
{
    apns_rules r;
    char err[256];
    char path[64];
    const apns_rule *m;

    (void)state;
    assert_int_equal(load("# comment\n"
                          "\n"
                          "token " T64A " status 410 timestamp 17 times 2  # trailing\n"
                          "token * status 429 retry-after 7\r\n"
                          "token " T64B " goaway reason Shutdown times 1\n"
                          "token * drop\n"
                          "token * delay 250\n"
                          "token * cut headers\n"
                          "token * status 410 cut body delay 5 times 1\n"
                          "token * status 200 cut reset\n"
                          "token * status 400 reason BadDeviceToken cut goaway\n",
                          &r, err, sizeof(err), path, sizeof(path)),
                     0);
    assert_int_equal(r.n, 9);
    assert_int_equal(r.v[4].cut, FAKE_CUT_NONE);
    assert_int_equal(r.v[5].action, APNS_ACT_REPLY);
    assert_int_equal(r.v[5].status, 200); /* cut alone: a 200 broken off */
    assert_int_equal(r.v[5].cut, FAKE_CUT_HEADERS);
    assert_int_equal(r.v[6].cut, FAKE_CUT_BODY);
    assert_string_equal(r.v[6].reason, "Unregistered");
    assert_int_equal(r.v[6].delay_ms, 5);
    assert_int_equal(r.v[7].cut, FAKE_CUT_RESET);
    assert_int_equal(r.v[8].cut, FAKE_CUT_GOAWAY);
    assert_string_equal(fake_cut_action(FAKE_CUT_BODY), "cut-body");
    assert_int_equal(r.v[0].line, 3);
    assert_string_equal(r.v[0].reason, "Unregistered"); /* the default for 410 */
    assert_int_equal(r.v[0].timestamp_ms, 17);
    assert_int_equal(r.v[1].retry_after_s, 7);
    assert_string_equal(r.v[1].reason, "TooManyRequests");
    assert_int_equal(r.v[2].action, APNS_ACT_GOAWAY);
    assert_int_equal(r.v[4].status, 200);
    assert_int_equal(r.v[4].delay_ms, 250);

    /* Upper-case hex matches; "times 2" spends the rule. */
    m = apns_rules_match(&r, "ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB",
                         64);
    assert_ptr_equal(m, &r.v[0]);
    assert_ptr_equal(apns_rules_match(&r, T64A, 64), &r.v[0]);
    assert_ptr_equal(apns_rules_match(&r, T64A, 64), &r.v[1]);
    assert_ptr_equal(apns_rules_match(&r, T64B, 64), &r.v[1]); /* '*' comes first */
    apns_rules_free(&r);
    assert_null(r.v);
}

static void test_rules_errors(void **state)
{
    static const struct {
        const char *text;
        const char *msg;
    } cases[] = {
        {"status 200\n", ":1: a rule starts with 'token <hex|*>'"},
        {"\n\ntoken abc status 200\n", ":3: token must be '*' or 64..200 hex digits"},
        {"token * status 404 reason Unregistered\n", ":1: reason 'Unregistered' does not go"},
        {"token * status 418\n", ":1: status '418' is not 200 or a status APNs answers"},
        {"token * status 400 reason Nope\n", ":1: reason 'Nope' is not one of Apple's"},
        {"token * status 429 timestamp 5\n", ":1: timestamp goes with status 410 only"},
        {"token * status 200 reason BadPath\n", ":1: status 200 takes no reason"},
        {"token *\n", ":1: a rule needs 'status', 'delay', 'cut', 'goaway' or 'drop'"},
        {"token * cut sideways\n", ":1: cut 'sideways' is not headers, body, reset or goaway"},
        {"token * cut body\n", ":1: cut body needs a status with a body"},
        {"token * drop cut headers\n", ":1: drop takes only 'times'"},
        {"token * goaway cut reset\n", ":1: goaway takes only 'reason' and 'times'"},
        {"token * cut\n", ":1: 'cut' needs a value"},
        {"token * drop delay 5\n", ":1: drop takes only 'times'"},
        {"token * goaway drop\n", ":1: one of goaway and drop, once"},
        {"token * delay -1\n", ":1: delay '-1' is not 0..3600000 ms"},
        {"token * delay 10 times 0\n", ":1: times '0' is not a count >= 1"},
        {"token * status\n", ":1: 'status' needs a value"},
        {"token * status 200 colour red\n", ":1: unknown word 'colour'"},
        {"token * status 200 status 200\n", ":1: 'status' given twice"},
        {"token * delay 5 times 2 times 3\n", ":1: 'times' given twice"},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        apns_rules r;
        char err[256];
        char path[64];
        assert_int_equal(load(cases[i].text, &r, err, sizeof(err), path, sizeof(path)), -1);
        if (strncmp(err, path, strlen(path)) != 0 || strstr(err, cases[i].msg) == NULL) {
            fail_msg("for %s got '%s', want '%s%s'", cases[i].text, err, path, cases[i].msg);
        }
    }
}

/* fake-fcm's "cut" words: parsed, paired with statuses, errors named. */
static void test_fcm_cut_rules(void **state)
{
    char path[64];
    char err[256];
    fcm_rules r;
    int fd;
    FILE *f;

    (void)state;
    snprintf(path, sizeof(path), "/tmp/test_fake_parts.XXXXXX");
    fd = mkstemp(path);
    assert_true(fd >= 0);
    f = fdopen(fd, "w");
    assert_non_null(f);
    fputs("token * cut headers\n"
          "token a:b status 200 cut body times 1\n"
          "token * status 404 cut reset\n"
          "oauth status 503 cut goaway\n",
          f);
    fclose(f);
    assert_int_equal(fcm_rules_load(path, &r, err, sizeof(err)), 0);
    assert_int_equal(r.n, 4);
    assert_int_equal(r.v[0].cut, FAKE_CUT_HEADERS);
    assert_int_equal(r.v[0].status, 200);
    assert_int_equal(r.v[1].cut, FAKE_CUT_BODY);
    assert_int_equal(r.v[2].cut, FAKE_CUT_RESET);
    assert_string_equal(r.v[2].error, "UNREGISTERED");
    assert_int_equal(r.v[3].cut, FAKE_CUT_GOAWAY);
    fcm_rules_free(&r);

    f = fopen(path, "w");
    assert_non_null(f);
    fputs("token * drop cut body\n", f);
    fclose(f);
    assert_int_equal(fcm_rules_load(path, &r, err, sizeof(err)), -1);
    assert_non_null(strstr(err, ":1: drop takes only 'times'"));
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("token * cut half\n", f);
    fclose(f);
    assert_int_equal(fcm_rules_load(path, &r, err, sizeof(err)), -1);
    assert_non_null(strstr(err, ":1: cut 'half' is not headers, body, reset or goaway"));
    unlink(path);
}

static void test_reason_table(void **state)
{
    (void)state;
    assert_true(apns_reason_valid(410, "ExpiredToken"));
    assert_true(apns_reason_valid(403, "ExpiredProviderToken"));
    assert_true(apns_reason_valid(503, "Shutdown"));
    assert_false(apns_reason_valid(400, "Unregistered"));
    assert_false(apns_reason_valid(200, ""));
    assert_true(apns_token_valid(T64A, 64));
    assert_false(apns_token_valid(T64A, 63));
    assert_false(apns_token_valid("zz" T64A, 66));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_accepts),          cmocka_unit_test(test_json_no_aps),
        cmocka_unit_test(test_json_rejects),          cmocka_unit_test(test_json_depth),
        cmocka_unit_test(test_json_put_string),       cmocka_unit_test(test_b64url),
        cmocka_unit_test(test_rules_parse_and_match), cmocka_unit_test(test_rules_errors),
        cmocka_unit_test(test_reason_table),          cmocka_unit_test(test_fcm_cut_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
