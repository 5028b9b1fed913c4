/*
 * test_h2_check.c - h2_check (hub/h2.c): the URL and header checks http.c
 * runs on the caller's thread before handing a request to its worker.
 *
 * With a memo, h2_check checks only the path of a URL whose scheme and
 * authority are the bytes of the last accepted one. These tests hold it to
 * the memo-less answer for every URL of a sequence built to defeat it:
 * longer ports, no path, queries, other schemes, controls at every offset
 * of the word-at-a-time path check, fragments.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "h2.h"

static struct channel_request req; /* large: not on the stack */

/* h2_check of url with and without the memo: the same answer. */
static int check_both(struct h2_check_memo *memo, const char *url)
{
    snprintf(req.url, sizeof(req.url), "%s", url);
    int plain = h2_check(NULL, &req, NULL);
    int memoed = h2_check(memo, &req, NULL);
    if (plain != memoed) {
        fail_msg("%s: %d without the memo, %d with it", url, plain, memoed);
    }
    return plain;
}

static void test_memo_same_answers(void **state)
{
    (void)state;
    struct h2_check_memo memo;
    memset(&memo, 0, sizeof(memo));
    const char *base = "https://a.example:8443";
    assert_int_equal(check_both(&memo, "https://a.example:8443/3/device/abc"), 0);
    assert_int_equal(memo.len, strlen(base));
    assert_int_equal(check_both(&memo, "https://a.example:8443/3/device/a b"), -EINVAL);
    assert_int_equal(check_both(&memo, "https://a.example:8443/x#frag ment"), 0);
    assert_int_equal(check_both(&memo, "https://a.example:8443/x\x7f"), -EINVAL);
    assert_int_equal(check_both(&memo, "https://a.example:84431/x"), -EINVAL); /* port */
    assert_int_equal(check_both(&memo, "https://a.example:844/x"), 0);
    assert_int_equal(memo.len, strlen(base) - 1); /* the new origin */
    assert_int_equal(check_both(&memo, "https://a.example:8443/x"), 0);
    assert_int_equal(check_both(&memo, "https://a.example:8443"), 0); /* no path */
    assert_int_equal(check_both(&memo, "https://a.example:8443?q=1"), 0);
    assert_int_equal(check_both(&memo, "https://a.example:8443 /x"), -EINVAL);
    assert_int_equal(check_both(&memo, "https://a.example:8"), 0); /* shorter than the memo */
    assert_int_equal(check_both(&memo, "http://a.example:8443/x"), H2_NOT_MINE);
    assert_int_equal(check_both(&memo, "https://u@a.example:8443/x"), H2_NOT_MINE);
    assert_int_equal(check_both(&memo, "HTTPS://a.example:8443/x"), 0);
    assert_int_equal(check_both(&memo, "https://[::1]:8443/x"), 0);
    assert_int_equal(check_both(&memo, "https://[::1]:8443/x\ty"), -EINVAL);
}

/* A control byte, space or DEL at every offset of paths 1..40 bytes long
 * (the word loop's 8-byte steps and its byte-wise tail), and bytes >= 0x80
 * (UTF-8, allowed) around them. */
static void test_path_bytes_every_offset(void **state)
{
    (void)state;
    static const unsigned char bad[] = {0x01, 0x09, 0x0a, 0x1f, 0x20, 0x7f};
    static const unsigned char good[] = {0x21, 0x7e, 0x80, 0xa0, 0xc3, 0xff};
    struct h2_check_memo memo;
    memset(&memo, 0, sizeof(memo));
    char url[128];
    for (size_t len = 1; len <= 40; len++) {
        for (size_t at = 0; at < len; at++) {
            for (size_t b = 0; b < sizeof(bad); b++) {
                int n = snprintf(url, sizeof(url), "https://h.example/");
                for (size_t i = 0; i < len; i++) {
                    url[n + (int)i] = (char)(i == at ? bad[b] : good[(i + b) % sizeof(good)]);
                }
                url[n + (int)len] = '\0';
                assert_int_equal(check_both(&memo, url), -EINVAL);
                url[n + (int)at] = (char)good[b];
                assert_int_equal(check_both(&memo, url), 0);
                url[n + (int)at] = '#'; /* what follows a fragment mark is not checked */
                assert_int_equal(check_both(&memo, url), 0);
            }
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_memo_same_answers),
        cmocka_unit_test(test_path_bytes_every_offset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
