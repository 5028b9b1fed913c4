/* test_pii.c - the PII keyring: sealing, tampering, key ids, rotation, key
 * file errors (file:line) and the mode check. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "error.h"
#include "pii.h"

#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64], keyfile[128];

#define K1S "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
#define K2S "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f"
static const char K1[] = K1S;
static const char K2[] = K2S;
static const char L1[] = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf";

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/tidings-pii-XXXXXX");
    if (!mkdtemp(dir)) {
        return -1;
    }
    snprintf(keyfile, sizeof(keyfile), "%s/pii.keys", dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char p[160];
    unlink(keyfile);
    snprintf(p, sizeof(p), "%s.new", keyfile);
    unlink(p);
    rmdir(dir);
    return 0;
}

static void write_file(const char *content, mode_t mode)
{
    unlink(keyfile);
    int fd = open(keyfile, O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    close(fd);
    assert_int_equal(chmod(keyfile, mode), 0);
}

static bool contains(const unsigned char *hay, size_t n, const char *needle, size_t m)
{
    for (size_t i = 0; m && i + m <= n; i++) {
        if (memcmp(hay + i, needle, m) == 0) {
            return true;
        }
    }
    return false;
}

static pii_t *load_ok(void)
{
    pii_t *k = NULL;
    char err[512] = "";
    int rc = pii_load(keyfile, &k, err, sizeof(err));
    if (rc != 0) {
        fail_msg("pii_load: %s", err);
    }
    return k;
}

/* Load must fail; err must contain want. */
static void load_fails(const char *want, int want_rc)
{
    pii_t *k = NULL;
    char err[512] = "";
    int rc = pii_load(keyfile, &k, err, sizeof(err));
    assert_int_equal(rc, want_rc);
    assert_null(k);
    if (!strstr(err, want)) {
        fail_msg("error '%s' does not contain '%s'", err, want);
    }
}

static void test_round_trip(void **state)
{
    (void)state;
    char content[512];
    snprintf(content, sizeof(content), "# test\nlookup %s\n\nkey k1 %s\n", L1, K1);
    write_file(content, 0600);
    pii_t *k = load_ok();
    assert_string_equal(pii_current_id(k), "k1");
    const char *values[] = {"+4915112345678", "alice@example.com", "", "x"};
    for (size_t i = 0; i < 4; i++) {
        unsigned char sealed[256];
        size_t slen = 0;
        size_t len = strlen(values[i]);
        assert_int_equal(pii_seal(k, "ctx", values[i], len, sealed, sizeof(sealed), &slen), 0);
        assert_int_equal(slen, len + 2 + 2 + PII_NONCE_LEN + PII_TAG_LEN);
        /* The plaintext does not appear in the sealed bytes. */
        if (len > 1) {
            assert_false(contains(sealed, slen, values[i], len));
        }
        char out[256];
        size_t olen = 0;
        assert_int_equal(pii_open(k, "ctx", sealed, slen, out, sizeof(out), &olen), 0);
        assert_int_equal(olen, len);
        assert_string_equal(out, values[i]);
        char kid[PII_KEY_ID_MAX + 1];
        assert_int_equal(pii_sealed_key_id(sealed, slen, kid, sizeof(kid)), 0);
        assert_string_equal(kid, "k1");
        assert_true(pii_is_current(k, sealed, slen));
    }
    /* Two seals of one value differ (random nonce). */
    unsigned char a[64], b[64];
    size_t al, bl;
    assert_int_equal(pii_seal(k, "c", "same", 4, a, sizeof(a), &al), 0);
    assert_int_equal(pii_seal(k, "c", "same", 4, b, sizeof(b), &bl), 0);
    assert_int_equal(al, bl);
    assert_memory_not_equal(a, b, al);
    /* Too small buffers. */
    assert_int_equal(pii_seal(k, "c", "same", 4, a, 10, &al), -ENOSPC);
    char small[4];
    assert_int_equal(pii_open(k, "c", b, bl, small, sizeof(small), NULL), -ENOSPC);
    pii_destroy(k);
}

static void test_tamper(void **state)
{
    (void)state;
    char content[512];
    snprintf(content, sizeof(content), "lookup %s\nkey k1 %s\n", L1, K1);
    write_file(content, 0600);
    pii_t *k = load_ok();
    unsigned char sealed[128];
    size_t slen;
    assert_int_equal(pii_seal(k, "devices.token/sms/alice", "+4915112345678", 14, sealed,
                              sizeof(sealed), &slen),
                     0);
    char out[64];
    /* Every single flipped bit after the header is detected. */
    for (size_t i = 4; i < slen; i++) {
        for (int bit = 0; bit < 8; bit += 3) {
            sealed[i] ^= (unsigned char)(1u << bit);
            assert_int_equal(pii_open(k, "devices.token/sms/alice", sealed, slen, out,
                                      sizeof(out), NULL),
                             TDG_ECRYPTO);
            sealed[i] ^= (unsigned char)(1u << bit);
        }
    }
    /* Another context (another user's row) does not open it. */
    assert_int_equal(
        pii_open(k, "devices.token/sms/bob", sealed, slen, out, sizeof(out), NULL), TDG_ECRYPTO);
    /* Truncated, or not a sealed value at all. */
    assert_int_equal(pii_open(k, "devices.token/sms/alice", sealed, 10, out, sizeof(out), NULL),
                     TDG_EINVAL_INPUT);
    unsigned char bad = sealed[0];
    sealed[0] = 0x7f;
    assert_int_equal(
        pii_open(k, "devices.token/sms/alice", sealed, slen, out, sizeof(out), NULL),
        TDG_EINVAL_INPUT);
    sealed[0] = bad;
    assert_int_equal(
        pii_open(k, "devices.token/sms/alice", sealed, slen, out, sizeof(out), NULL), 0);
    assert_string_equal(out, "+4915112345678");
    pii_destroy(k);
}

static void test_wrong_key_id(void **state)
{
    (void)state;
    char content[512];
    snprintf(content, sizeof(content), "lookup %s\nkey k1 %s\n", L1, K1);
    write_file(content, 0600);
    pii_t *k = load_ok();
    unsigned char sealed[128];
    size_t slen;
    assert_int_equal(pii_seal(k, "c", "secret", 6, sealed, sizeof(sealed), &slen), 0);
    pii_destroy(k);

    /* A key file without k1: the value names a key that is not there. */
    snprintf(content, sizeof(content), "lookup %s\nkey k2 %s\n", L1, K2);
    write_file(content, 0600);
    k = load_ok();
    char out[64];
    assert_int_equal(pii_open(k, "c", sealed, slen, out, sizeof(out), NULL), TDG_ENOTFOUND);
    assert_false(pii_is_current(k, sealed, slen));
    pii_destroy(k);

    /* The same id with other key bytes: the tag does not verify. */
    snprintf(content, sizeof(content), "lookup %s\nkey k1 %s\n", L1, K2);
    write_file(content, 0600);
    k = load_ok();
    assert_int_equal(pii_open(k, "c", sealed, slen, out, sizeof(out), NULL), TDG_ECRYPTO);
    pii_destroy(k);
}

static void test_rotation(void **state)
{
    (void)state;
    char err[512];
    assert_int_equal(pii_generate(keyfile, err, sizeof(err)), 0);
    struct stat st;
    assert_int_equal(stat(keyfile, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(pii_generate(keyfile, err, sizeof(err)), -EEXIST);

    pii_t *k = load_ok();
    assert_string_equal(pii_current_id(k), "k1");
    unsigned char old[128];
    size_t oldlen;
    assert_int_equal(pii_seal(k, "c", "alice@example.com", 17, old, sizeof(old), &oldlen), 0);
    unsigned char h1[PII_HASH_LEN];
    pii_hash(k, "email", "alice@example.com", h1);
    pii_destroy(k);

    char id[PII_KEY_ID_MAX + 1];
    assert_int_equal(pii_add_key(keyfile, id, sizeof(id), err, sizeof(err)), 0);
    assert_string_equal(id, "k2");
    assert_int_equal(stat(keyfile, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    k = load_ok();
    assert_string_equal(pii_current_id(k), "k2");
    /* The old value still opens (its key id names k1) but is not current. */
    char out[64];
    assert_int_equal(pii_open(k, "c", old, oldlen, out, sizeof(out), NULL), 0);
    assert_string_equal(out, "alice@example.com");
    assert_false(pii_is_current(k, old, oldlen));
    /* New values use k2. */
    unsigned char neu[128];
    size_t neulen;
    assert_int_equal(pii_seal(k, "c", "alice@example.com", 17, neu, sizeof(neu), &neulen), 0);
    char kid[PII_KEY_ID_MAX + 1];
    assert_int_equal(pii_sealed_key_id(neu, neulen, kid, sizeof(kid)), 0);
    assert_string_equal(kid, "k2");
    assert_true(pii_is_current(k, neu, neulen));
    /* The lookup key does not rotate with the data keys. */
    unsigned char h2[PII_HASH_LEN];
    pii_hash(k, "email", "alice@example.com", h2);
    assert_memory_equal(h1, h2, PII_HASH_LEN);
    /* ... and depends on domain and value. */
    pii_hash(k, "sms", "alice@example.com", h2);
    assert_memory_not_equal(h1, h2, PII_HASH_LEN);
    char tag[PII_LOG_TAG_LEN + 1];
    pii_log_tag(k, "email", "alice@example.com", tag);
    assert_int_equal(strlen(tag), PII_LOG_TAG_LEN);
    pii_destroy(k);
    assert_int_equal(pii_add_key(keyfile, id, sizeof(id), err, sizeof(err)), 0);
    assert_string_equal(id, "k3");
}

static void test_lookup_key(void **state)
{
    (void)state;
    char content[512];
    /* Without a lookup line: derived from the first key, stable when keys
     * are added after it. */
    snprintf(content, sizeof(content), "key k1 %s\n", K1);
    write_file(content, 0600);
    pii_t *k = load_ok();
    unsigned char a[PII_HASH_LEN], b[PII_HASH_LEN];
    pii_hash(k, "sms", "+15005550006", a);
    pii_destroy(k);
    snprintf(content, sizeof(content), "key k1 %s\nkey k2 %s\n", K1, K2);
    write_file(content, 0600);
    k = load_ok();
    pii_hash(k, "sms", "+15005550006", b);
    assert_memory_equal(a, b, PII_HASH_LEN);
    pii_destroy(k);
    /* A lookup line gives another key. */
    snprintf(content, sizeof(content), "lookup %s\nkey k1 %s\n", L1, K1);
    write_file(content, 0600);
    k = load_ok();
    pii_hash(k, "sms", "+15005550006", b);
    assert_memory_not_equal(a, b, PII_HASH_LEN);
    pii_destroy(k);
}

static void test_bad_files(void **state)
{
    (void)state;
    char want[256];
    struct {
        const char *content;
        int line;
        const char *msg;
    } cases[] = {
        {"key k1 " K1S "\nkey k1 " K2S "\n", 2, "given twice"},
        {"# c\n\nkey k1 abcd\n", 3, "64 hex digits"},
        {"key k1 " K1S "\nfrobnicate 1\n", 2, "unknown entry"},
        {"key k/1 " K1S "\n", 1, "key id"},
        {"lookup 12\nkey k1 " K1S "\n", 1, "lookup secret"},
        {"lookup " K1S "\nlookup " K2S "\n", 2, "second lookup"},
        {"key k1 " K1S " extra\n", 1, "expected 'key <id>"},
        {"# only a comment\n", 1, "no 'key"},
        {"key k1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1Z\n", 1,
         "64 hex digits"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        write_file(cases[i].content, 0600);
        snprintf(want, sizeof(want), "%s:%d: ", keyfile, cases[i].line);
        load_fails(want, TDG_ECONFIG);
        load_fails(cases[i].msg, TDG_ECONFIG);
    }
    /* Missing file: -ENOENT with the path. */
    unlink(keyfile);
    load_fails(keyfile, -ENOENT);
}

static void test_mode(void **state)
{
    (void)state;
    char c[512];
    snprintf(c, sizeof(c), "key k1 %s\n", K1);
    const mode_t bad[] = {0644, 0640, 0604, 0660, 0601};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_file(c, bad[i]);
        load_fails(keyfile, TDG_ECONFIG);
        load_fails("chmod 600", TDG_ECONFIG);
    }
    write_file(c, 0400);
    pii_destroy(load_ok());
    write_file(c, 0600);
    pii_destroy(load_ok());
    /* A directory is not a key file. */
    pii_t *k = NULL;
    char err[512];
    assert_int_equal(pii_load(dir, &k, err, sizeof(err)), TDG_ECONFIG);
    assert_non_null(strstr(err, "not a regular file"));
    /* pii_add_key refuses a file with a bad mode and leaves it unchanged. */
    write_file(c, 0644);
    char id[PII_KEY_ID_MAX + 1];
    assert_int_equal(pii_add_key(keyfile, id, sizeof(id), err, sizeof(err)), TDG_ECONFIG);
    struct stat st;
    assert_int_equal(stat(keyfile, &st), 0);
    assert_int_equal((size_t)st.st_size, strlen(c));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tamper, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_key_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lookup_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mode, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
