/*
 * test_jwt.c - base64url vectors (RFC 4648, RFC 7515), ES256 provider tokens
 * verified with mbedtls after turning R||S back into numbers and into DER,
 * RS256 assertions, and the error paths.
 *
 * Keys are generated when the test runs (mbedtls; Apple-style PKCS#8 through
 * the openssl CLI when it is installed). Nothing secret lives in the repo.
 */
#include <errno.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include <mbedtls/config.h>

#include <mbedtls/asn1write.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/rsa.h>
#include <mbedtls/sha256.h>

#include "error.h"
#include "jwt.h"

static char tmpdir[256];
static mbedtls_entropy_context entropy;
static mbedtls_ctr_drbg_context drbg;

/* --- helpers ---------------------------------------------------------- */

static void path_in_tmp(char *out, size_t len, const char *name)
{
    int n = snprintf(out, len, "%s/%s", tmpdir, name);
    assert_true(n > 0 && (size_t)n < len);
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* Generate a key of the given kind with mbedtls and write it as PEM. */
static void gen_key_pem(const char *path, mbedtls_pk_type_t type, int curve_or_bits)
{
    mbedtls_pk_context pk;
    mbedtls_pk_init(&pk);
    assert_int_equal(mbedtls_pk_setup(&pk, mbedtls_pk_info_from_type(type)), 0);
    if (type == MBEDTLS_PK_ECKEY) {
        assert_int_equal(mbedtls_ecp_gen_key((mbedtls_ecp_group_id)curve_or_bits, mbedtls_pk_ec(pk),
                                             mbedtls_ctr_drbg_random, &drbg),
                         0);
    } else {
        assert_int_equal(mbedtls_rsa_gen_key(mbedtls_pk_rsa(pk), mbedtls_ctr_drbg_random, &drbg,
                                             (unsigned)curve_or_bits, 65537),
                         0);
    }
    unsigned char pem[8192];
    assert_int_equal(mbedtls_pk_write_key_pem(&pk, pem, sizeof(pem)), 0);
    write_file(path, pem, strlen((char *)pem));
    mbedtls_pk_free(&pk);
}

static void load_pk(mbedtls_pk_context *pk, const char *path)
{
    mbedtls_pk_init(pk);
    assert_int_equal(mbedtls_pk_parse_keyfile(pk, path, NULL), 0);
}

struct parts {
    char header[512];
    char claims[1200];
    unsigned char sig[600];
    int siglen;
    size_t signed_len; /* length of "header.claims" in the token */
};

static void split_token(const char *tok, struct parts *p)
{
    const char *d1 = strchr(tok, '.');
    assert_non_null(d1);
    const char *d2 = strchr(d1 + 1, '.');
    assert_non_null(d2);
    assert_null(strchr(d2 + 1, '.'));
    int n = jwt_b64url_decode(tok, (size_t)(d1 - tok), p->header, sizeof(p->header) - 1);
    assert_true(n > 0);
    p->header[n] = '\0';
    n = jwt_b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), p->claims, sizeof(p->claims) - 1);
    assert_true(n > 0);
    p->claims[n] = '\0';
    p->siglen = jwt_b64url_decode(d2 + 1, strlen(d2 + 1), p->sig, sizeof(p->sig));
    assert_true(p->siglen > 0);
    p->signed_len = (size_t)(d2 - tok);
    /* No padding and only the URL-safe alphabet anywhere. */
    assert_null(strpbrk(tok, "=+/ \n"));
}

/* Verify an ES256 JWT two ways: r and s as numbers (ecdsa_verify), and R||S
 * converted to the DER SEQUENCE { INTEGER r, INTEGER s } that pk_verify
 * takes. Returns 0 when both accept, nonzero otherwise. */
static int verify_es256(const char *tok, mbedtls_pk_context *pk)
{
    struct parts p;
    split_token(tok, &p);
    if (p.siglen != 64) {
        return -1;
    }
    unsigned char hash[32];
    assert_int_equal(mbedtls_sha256_ret((const unsigned char *)tok, p.signed_len, hash, 0), 0);

    mbedtls_mpi r, s;
    mbedtls_mpi_init(&r);
    mbedtls_mpi_init(&s);
    assert_int_equal(mbedtls_mpi_read_binary(&r, p.sig, 32), 0);
    assert_int_equal(mbedtls_mpi_read_binary(&s, p.sig + 32, 32), 0);
    mbedtls_ecp_keypair *kp = mbedtls_pk_ec(*pk);
    int rc1 = mbedtls_ecdsa_verify(&kp->grp, hash, 32, &kp->Q, &r, &s);

    unsigned char der[80];
    unsigned char *end = der + sizeof(der);
    unsigned char *q = end;
    size_t len = 0;
    int w = mbedtls_asn1_write_mpi(&q, der, &s);
    assert_true(w > 0);
    len += (size_t)w;
    w = mbedtls_asn1_write_mpi(&q, der, &r);
    assert_true(w > 0);
    len += (size_t)w;
    w = mbedtls_asn1_write_len(&q, der, len);
    assert_true(w > 0);
    len += (size_t)w;
    w = mbedtls_asn1_write_tag(&q, der, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE);
    assert_true(w > 0);
    len += (size_t)w;
    int rc2 = mbedtls_pk_verify(pk, MBEDTLS_MD_SHA256, hash, 32, q, len);

    mbedtls_mpi_free(&r);
    mbedtls_mpi_free(&s);
    return rc1 != 0 ? rc1 : rc2;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* rm -rf without a shell: also works for tests run under qemu-user. */
static int rm_tree(const char *path)
{
    return nftw(path, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* --- fixtures --------------------------------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/tidings-jwt-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        return -1;
    }
    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);
    static const unsigned char pers[] = "test_jwt";
    if (mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy, pers, sizeof(pers) - 1)) {
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&entropy);
    return rm_tree(tmpdir) == 0 ? 0 : -1;
}

/* --- base64url -------------------------------------------------------- */

static void test_b64url_rfc4648(void **state)
{
    (void)state;
    /* RFC 4648 section 10, without the padding base64url JWS omits. */
    static const struct {
        const char *in, *out;
    } v[] = {
        {"", ""},           {"f", "Zg"},          {"fo", "Zm8"},          {"foo", "Zm9v"},
        {"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"}, {"foobar", "Zm9vYmFy"},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char out[32];
        size_t n = strlen(v[i].in);
        int len = jwt_b64url_encode(v[i].in, n, out, sizeof(out));
        assert_int_equal(len, (int)strlen(v[i].out));
        assert_int_equal((size_t)len, JWT_B64URL_LEN(n));
        assert_string_equal(out, v[i].out);
        char back[32];
        int m = jwt_b64url_decode(out, (size_t)len, back, sizeof(back));
        assert_int_equal(m, (int)n);
        assert_memory_equal(back, v[i].in, n);
    }
    /* With padding, decode still accepts it. */
    char back[8];
    assert_int_equal(jwt_b64url_decode("Zm8=", 4, back, sizeof(back)), 2);
    assert_memory_equal(back, "fo", 2);
    assert_int_equal(jwt_b64url_decode("Zg==", 4, back, sizeof(back)), 1);
}

static void test_b64url_rfc7515(void **state)
{
    (void)state;
    /* RFC 7515 appendix C: the URL-safe characters. */
    static const unsigned char c[] = {3, 236, 255, 224, 193};
    char out[16];
    assert_int_equal(jwt_b64url_encode(c, sizeof(c), out, sizeof(out)), 7);
    assert_string_equal(out, "A-z_4ME");
    unsigned char back[8];
    assert_int_equal(jwt_b64url_decode("A-z_4ME", 7, back, sizeof(back)), 5);
    assert_memory_equal(back, c, 5);

    /* RFC 7515 appendix A.1: the example JOSE header, CRLF included. */
    static const char hdr[] = "{\"typ\":\"JWT\",\r\n \"alg\":\"HS256\"}";
    char enc[64];
    assert_true(jwt_b64url_encode(hdr, sizeof(hdr) - 1, enc, sizeof(enc)) > 0);
    assert_string_equal(enc, "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9");

    /* A.1's claims set. */
    static const char claims[] =
        "{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}";
    char enc2[128];
    assert_true(jwt_b64url_encode(claims, sizeof(claims) - 1, enc2, sizeof(enc2)) > 0);
    assert_string_equal(enc2, "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFt"
                              "cGxlLmNvbS9pc19yb290Ijp0cnVlfQ");
}

static void test_b64url_bounds_and_errors(void **state)
{
    (void)state;
    char out[8];
    /* "foobar" needs 8 chars + NUL. */
    assert_int_equal(jwt_b64url_encode("foobar", 6, out, 8), -ENOSPC);
    assert_int_equal(jwt_b64url_encode("foobar", 6, out, 0), -ENOSPC);
    unsigned char b[8];
    assert_int_equal(jwt_b64url_decode("Zm9vYmFy", 8, b, 5), -ENOSPC);
    assert_int_equal(jwt_b64url_decode("Zm9v+mFy", 8, b, sizeof(b)), -EINVAL); /* '+' */
    assert_int_equal(jwt_b64url_decode("Zm9v/mFy", 8, b, sizeof(b)), -EINVAL); /* '/' */
    assert_int_equal(jwt_b64url_decode("Zm9vY", 5, b, sizeof(b)), -EINVAL);    /* len%4 == 1 */
    assert_int_equal(jwt_b64url_decode("Zh", 2, b, sizeof(b)), -EINVAL);       /* stray bits */
    assert_int_equal(jwt_b64url_decode("Zg=", 3, b, sizeof(b)), -EINVAL);      /* half padding */
    assert_int_equal(jwt_b64url_decode("", 0, b, sizeof(b)), 0);
    /* All 256 byte values round-trip. */
    unsigned char all[256];
    for (int i = 0; i < 256; i++) {
        all[i] = (unsigned char)i;
    }
    char enc[400];
    int n = jwt_b64url_encode(all, sizeof(all), enc, sizeof(enc));
    assert_int_equal(n, (int)JWT_B64URL_LEN(256));
    unsigned char dec[256];
    assert_int_equal(jwt_b64url_decode(enc, (size_t)n, dec, sizeof(dec)), 256);
    assert_memory_equal(dec, all, 256);
}

/* --- ES256 ------------------------------------------------------------ */

static void check_provider_token(const char *keyfile)
{
    char err[256] = "";
    jwt_signer *s = NULL;
    int rc = jwt_signer_create_file(keyfile, &s, err, sizeof(err));
    if (rc != 0) {
        fail_msg("create: %s (%s)", tdg_strerror(rc), err);
    }
    assert_int_equal(jwt_signer_alg(s), JWT_ES256);

    char tok[JWT_TOKEN_MAX];
    int n = jwt_es256_provider_token(s, "ABC123DEFG", "DEF123GHIJ", 1437179036, tok, sizeof(tok));
    assert_true(n > 0);
    assert_int_equal((size_t)n, strlen(tok));

    struct parts p;
    split_token(tok, &p);
    assert_string_equal(p.header, "{\"alg\":\"ES256\",\"kid\":\"ABC123DEFG\"}");
    assert_string_equal(p.claims, "{\"iss\":\"DEF123GHIJ\",\"iat\":1437179036}");
    assert_int_equal(p.siglen, 64); /* raw R||S, not DER (which would be 70..72) */

    mbedtls_pk_context pk;
    load_pk(&pk, keyfile);
    assert_int_equal(verify_es256(tok, &pk), 0);

    /* Deterministic ECDSA: the same input signs to the same token. */
    char tok2[JWT_TOKEN_MAX];
    assert_int_equal(
        jwt_es256_provider_token(s, "ABC123DEFG", "DEF123GHIJ", 1437179036, tok2, sizeof(tok2)), n);
    assert_string_equal(tok, tok2);

    /* A different iat is a different token, and a tampered one fails. */
    assert_true(jwt_es256_provider_token(s, "ABC123DEFG", "DEF123GHIJ", 1437179037, tok2,
                                         sizeof(tok2)) > 0);
    assert_string_not_equal(tok, tok2);
    assert_int_equal(verify_es256(tok2, &pk), 0);
    char *dot = strchr(tok2, '.');
    dot[3] = dot[3] == 'A' ? 'B' : 'A';
    assert_int_not_equal(verify_es256(tok2, &pk), 0);

    mbedtls_pk_free(&pk);
    jwt_signer_destroy(s);
}

static void test_es256_sec1_key(void **state)
{
    (void)state;
    char path[300];
    path_in_tmp(path, sizeof(path), "ec_sec1.pem");
    gen_key_pem(path, MBEDTLS_PK_ECKEY, MBEDTLS_ECP_DP_SECP256R1);
    check_provider_token(path);
}

static void test_es256_pkcs8_key(void **state)
{
    (void)state;
    /* Apple ships AuthKey_<KEYID>.p8: PKCS#8 "BEGIN PRIVATE KEY". mbedtls
     * writes only SEC1 for EC keys, so the openssl CLI makes this one. */
    if (system("command -v openssl >/dev/null 2>&1") != 0) {
        skip();
    }
    char path[300], cmd[700];
    path_in_tmp(path, sizeof(path), "AuthKey_ABC123DEFG.p8");
    snprintf(cmd, sizeof(cmd),
             "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out '%s' 2>/dev/null",
             path);
    assert_int_equal(system(cmd), 0);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[64] = "";
    assert_non_null(fgets(line, sizeof(line), f));
    fclose(f);
    assert_string_equal(line, "-----BEGIN PRIVATE KEY-----\n");
    check_provider_token(path);
}

static void test_es256_from_memory_and_bounds(void **state)
{
    (void)state;
    char path[300];
    path_in_tmp(path, sizeof(path), "ec_mem.pem");
    gen_key_pem(path, MBEDTLS_PK_ECKEY, MBEDTLS_ECP_DP_SECP256R1);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char pem[4096];
    size_t len = fread(pem, 1, sizeof(pem), f);
    fclose(f);
    jwt_signer *s = NULL;
    assert_int_equal(jwt_signer_create_pem(pem, len, &s, NULL, 0), 0);
    assert_int_equal(jwt_signer_alg(s), JWT_ES256);

    char tok[JWT_TOKEN_MAX];
    /* Too small an output buffer. */
    assert_int_equal(jwt_es256_provider_token(s, "K", "T", 1, tok, 100), -ENOSPC);
    /* Ids that would need JSON escaping, or are empty / too long, or bad iat. */
    assert_int_equal(jwt_es256_provider_token(s, "K\"", "T", 1, tok, sizeof(tok)), -EINVAL);
    assert_int_equal(jwt_es256_provider_token(s, "", "T", 1, tok, sizeof(tok)), -EINVAL);
    assert_int_equal(jwt_es256_provider_token(s, "K", "T\\", 1, tok, sizeof(tok)), -EINVAL);
    assert_int_equal(jwt_es256_provider_token(s, "K", "T", -1, tok, sizeof(tok)), -EINVAL);
    char longid[JWT_ID_MAX + 2];
    memset(longid, 'a', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = '\0';
    assert_int_equal(jwt_es256_provider_token(s, longid, "T", 1, tok, sizeof(tok)), -EINVAL);
    longid[JWT_ID_MAX] = '\0';
    assert_true(jwt_es256_provider_token(s, longid, longid, 1, tok, sizeof(tok)) > 0);
    /* ES256 signer cannot make an RS256 assertion. */
    assert_int_equal(jwt_rs256(s, "{}", 2, tok, sizeof(tok)), -EINVAL);
    jwt_signer_destroy(s);
}

/* --- RS256 ------------------------------------------------------------ */

static void test_rs256(void **state)
{
    (void)state;
    char path[300];
    path_in_tmp(path, sizeof(path), "rsa.pem");
    gen_key_pem(path, MBEDTLS_PK_RSA, 2048);

    char err[256] = "";
    jwt_signer *s = NULL;
    assert_int_equal(jwt_signer_create_file(path, &s, err, sizeof(err)), 0);
    assert_int_equal(jwt_signer_alg(s), JWT_RS256);

    static const char claims[] =
        "{\"iss\":\"svc@proj.iam.gserviceaccount.com\",\"scope\":\"https://www.googleapis.com/"
        "auth/firebase.messaging\",\"aud\":\"https://oauth2.googleapis.com/token\","
        "\"iat\":1700000000,\"exp\":1700003600}";
    char tok[JWT_TOKEN_MAX];
    int n = jwt_rs256(s, claims, sizeof(claims) - 1, tok, sizeof(tok));
    assert_true(n > 0);
    struct parts p;
    split_token(tok, &p);
    assert_string_equal(p.header, "{\"alg\":\"RS256\",\"typ\":\"JWT\"}");
    assert_string_equal(p.claims, claims);
    assert_int_equal(p.siglen, 256);

    mbedtls_pk_context pk;
    load_pk(&pk, path);
    unsigned char hash[32];
    assert_int_equal(mbedtls_sha256_ret((const unsigned char *)tok, p.signed_len, hash, 0), 0);
    assert_int_equal(mbedtls_pk_verify(&pk, MBEDTLS_MD_SHA256, hash, 32, p.sig, (size_t)p.siglen),
                     0);
    hash[0] ^= 1;
    assert_int_not_equal(
        mbedtls_pk_verify(&pk, MBEDTLS_MD_SHA256, hash, 32, p.sig, (size_t)p.siglen), 0);
    mbedtls_pk_free(&pk);

    /* RSA signer cannot make an APNs token; oversized claims are refused. */
    assert_int_equal(jwt_es256_provider_token(s, "K", "T", 1, tok, sizeof(tok)), -EINVAL);
    static char big[JWT_CLAIMS_MAX + 2];
    memset(big, 'x', sizeof(big) - 1);
    assert_int_equal(jwt_rs256(s, big, sizeof(big) - 1, tok, sizeof(tok)), -EINVAL);
    jwt_signer_destroy(s);
}

/* --- errors ----------------------------------------------------------- */

static void test_key_errors(void **state)
{
    (void)state;
    char err[256];
    jwt_signer *s = (jwt_signer *)0x1;
    char path[300];

    path_in_tmp(path, sizeof(path), "does-not-exist.p8");
    assert_int_equal(jwt_signer_create_file(path, &s, err, sizeof(err)), -ENOENT);
    assert_null(s);
    assert_non_null(strstr(err, "does-not-exist.p8"));

    path_in_tmp(path, sizeof(path), "garbage.p8");
    write_file(path, "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n", 64);
    assert_int_equal(jwt_signer_create_file(path, &s, err, sizeof(err)), TDG_ECRYPTO);
    assert_null(s);

    /* EC, but P-384: ES256 needs P-256. */
    path_in_tmp(path, sizeof(path), "p384.pem");
    gen_key_pem(path, MBEDTLS_PK_ECKEY, MBEDTLS_ECP_DP_SECP384R1);
    assert_int_equal(jwt_signer_create_file(path, &s, err, sizeof(err)), TDG_ECRYPTO);
    assert_non_null(strstr(err, "P-256"));
    assert_null(s);

    assert_int_equal(jwt_signer_create_file("", &s, err, sizeof(err)), -EINVAL);
    assert_int_equal(jwt_signer_create_pem("x", 0, &s, err, sizeof(err)), -EINVAL);
    assert_int_equal(jwt_signer_create_pem("nonsense", 8, &s, err, sizeof(err)), TDG_ECRYPTO);
    jwt_signer_destroy(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64url_rfc4648),
        cmocka_unit_test(test_b64url_rfc7515),
        cmocka_unit_test(test_b64url_bounds_and_errors),
        cmocka_unit_test(test_es256_sec1_key),
        cmocka_unit_test(test_es256_pkcs8_key),
        cmocka_unit_test(test_es256_from_memory_and_bounds),
        cmocka_unit_test(test_rs256),
        cmocka_unit_test(test_key_errors),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
