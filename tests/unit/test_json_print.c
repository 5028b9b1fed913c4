/* test_json_print.c - proto_json_print writes exactly the bytes of
 * cJSON_PrintUnformatted (sizes are checked on them: proto.h), and never
 * more than the buffer it is given. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

static void same_as_cjson(const cJSON *item)
{
    char *want = cJSON_PrintUnformatted(item);
    assert_non_null(want);
    char got[8192];
    long n = proto_json_print(item, got, sizeof(got));
    if (n < 0 || strcmp(want, got) != 0) {
        fail_msg("cJSON wrote %s, proto_json_print %s", want, n < 0 ? "(nothing)" : got);
    }
    assert_int_equal((size_t)n, strlen(want));
    free(want);
}

static void same_number(double d)
{
    cJSON *n = cJSON_CreateNumber(d);
    assert_non_null(n);
    same_as_cjson(n);
    cJSON_Delete(n);
}

static void test_numbers(void **state)
{
    (void)state;
    static const double edge[] = {0, -0.0, 1, -1, 1.5, 0.1, -0.25, 1e15, 1e15 - 1, -1e15 + 1,
                                  1e16, 1763779200123456.0, 1763779200123450.0,
                                  1700000000000000.0, 123456789012345678.0, 9007199254740993.0,
                                  1e300, -1e-300, 5e-324, 3.14159, 2147483647.0, 2147483648.0,
                                  -2147483649.0, 1e14, 4096.5, 1763779200123.0, NAN, INFINITY,
                                  -INFINITY};
    for (size_t i = 0; i < sizeof(edge) / sizeof(edge[0]); i++) {
        same_number(edge[i]);
    }
    /* Integers of every length, fractions, and powers of two across the
     * exponent range (a fixed seed: the same cases on every run). */
    srand(20261122);
    for (int i = 0; i < 20000; i++) {
        double d;
        switch (i % 4) {
        case 0: {
            long long v = ((long long)rand() << 31 | rand()) % 100000000000000000LL;
            d = (double)(v >> (rand() % 40)) * (rand() % 2 ? 1 : -1);
            break;
        }
        case 1: d = (double)rand() / ((double)rand() + 1); break;
        case 2: d = ldexp((double)rand(), rand() % 200 - 100); break;
        default: d = (double)(rand() % 100000); break;
        }
        same_number(d);
    }
}

/* 16 and 17 digits (times in microseconds): cJSON keeps the 15-digit form
 * only when it reads back within its tolerance, which json_print.c works
 * out in integers - ties, carries to a power of ten, and the range above
 * 2^53 where doubles are spaced 2 and 4 apart. */
static void test_long_integers(void **state)
{
    (void)state;
    static const double edge[] = {1e15, 1e16, 9999999999999999.0, 9999999999999995.0,
                                  1000000000000005.0, 9000000000000001.0, 9007199254740992.0,
                                  9007199254740994.0, 99999999999999990.0, 99999999999999999.0,
                                  12345678901234500.0, 1763779200123450.0, 1763779200123455.0,
                                  1763779200123465.0, -1763779200123450.0, -9000000000000001.0};
    for (size_t i = 0; i < sizeof(edge) / sizeof(edge[0]); i++) {
        same_number(edge[i]);
    }
    srand(7);
    for (int i = 0; i < 50000; i++) {
        unsigned long long u = ((unsigned long long)rand() << 33) ^
                               ((unsigned long long)rand() << 11) ^ (unsigned long long)rand();
        u = 1000000000000000ULL + u % 99000000000000000ULL;
        if (i % 3 == 0) {
            u -= u % 10;
        }
        if (i % 5 == 0) {
            u -= u % 100;
        }
        if (i % 7 == 0) {
            u = u - u % 10 + 5;
        }
        same_number((double)u * (i % 2 ? 1 : -1));
    }
}

static void test_strings_and_nesting(void **state)
{
    (void)state;
    /* Every byte below 0x20, quotes, backslash, '/', DEL, UTF-8. */
    char s[64];
    for (int c = 1; c < 0x20; c++) {
        s[c - 1] = (char)c;
    }
    static const char tail[] = "\"\\/\x7f \xc3\xa9 \xf0\x9f\x98\x80";
    _Static_assert(31 + sizeof(tail) <= sizeof(s), "s holds the tail");
    memcpy(s + 31, tail, sizeof(tail));
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "ctl", s);
    cJSON_AddStringToObject(o, "", "");
    cJSON_AddStringToObject(o, "k\"\n", "v");
    cJSON *a = cJSON_AddArrayToObject(o, "arr");
    cJSON_AddItemToArray(a, cJSON_CreateNull());
    cJSON_AddItemToArray(a, cJSON_CreateTrue());
    cJSON_AddItemToArray(a, cJSON_CreateFalse());
    cJSON_AddItemToArray(a, cJSON_CreateObject());
    cJSON_AddItemToArray(a, cJSON_CreateArray());
    cJSON_AddItemToArray(a, cJSON_CreateNumber(-7));
    cJSON *deep = o;
    for (int i = 0; i < 50; i++) {
        deep = cJSON_AddObjectToObject(deep, "d");
    }
    cJSON_AddNumberToObject(deep, "x", 0.5);
    same_as_cjson(o);
    cJSON_Delete(o);

    /* A parsed notification as an agent sends it. */
    const char *text = "{ \"id\" : \"gw1-00001\", \"to\":\"user:alice\", \"title\":\"Door\","
                       " \"priority\":\"high\", \"ttl\": 3600, \"data\": {\"t_us\": "
                       "1763779200123456, \"temp\": 21.5, \"tags\": [\"a\", \"b\"]}}";
    cJSON *n = cJSON_Parse(text);
    assert_non_null(n);
    same_as_cjson(n);
    cJSON_Delete(n);
}

/* The first 16 bytes of a string are written directly, the rest skipped a
 * word (8 bytes) at a time until a byte needs an escape: every byte value
 * at every position of strings up to 16 bytes and 3 words long, and pairs
 * of them, written as cJSON writes them. */
static void test_escape_positions(void **state)
{
    (void)state;
    char s[48];
    for (int c = 1; c < 256; c++) {
        for (size_t len = 1; len <= 41; len++) {
            for (size_t at = 0; at < len; at++) {
                memset(s, 'a', len);
                s[len] = '\0';
                s[at] = (char)c;
                cJSON *str = cJSON_CreateString(s);
                assert_non_null(str);
                same_as_cjson(str);
                /* A second one further on (a quote, a control character). */
                if (at + 9 < len) {
                    str->valuestring[at + 9] = c % 2 ? '"' : '\n';
                    same_as_cjson(str);
                }
                cJSON_Delete(str);
            }
        }
    }
    /* proto_jw_str with a bound: the first max bytes, escaped. */
    const char *text = "0123456789\"abcdefghij\\klmnop";
    for (size_t max = 0; max <= strlen(text) + 2; max++) {
        char want_s[64];
        snprintf(want_s, sizeof(want_s), "%.*s", (int)max, text);
        cJSON *str = cJSON_CreateString(want_s);
        char *want = cJSON_PrintUnformatted(str);
        char got[128];
        struct proto_jw w = {.p = got, .cap = sizeof(got)};
        proto_jw_str(&w, text, max);
        assert_true(proto_jw_end(&w));
        assert_string_equal(got, want);
        free(want);
        cJSON_Delete(str);
    }
}

static void test_bounds(void **state)
{
    (void)state;
    cJSON *o = cJSON_Parse("{\"a\":[1,2,3],\"b\":\"xyz\\n\"}");
    assert_non_null(o);
    char *want = cJSON_PrintUnformatted(o);
    size_t len = strlen(want);
    char buf[64];
    /* Exactly enough (text + NUL) fits; one byte less does not, and then
     * nothing is written past the buffer and it holds "". */
    assert_int_equal(proto_json_print(o, buf, len + 1), (long)len);
    assert_string_equal(buf, want);
    for (size_t cap = 1; cap <= len; cap++) {
        memset(buf, 'Z', sizeof(buf));
        assert_int_equal(proto_json_print(o, buf, cap), -1);
        assert_string_equal(buf, "");
        for (size_t i = cap; i < sizeof(buf); i++) {
            assert_int_equal(buf[i], 'Z');
        }
    }
    assert_int_equal(proto_json_print(o, buf, 0), -1);
    assert_int_equal(proto_json_print(NULL, buf, sizeof(buf)), -1);
    free(want);
    cJSON_Delete(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_long_integers),
        cmocka_unit_test(test_strings_and_nesting),
        cmocka_unit_test(test_escape_positions),
        cmocka_unit_test(test_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
