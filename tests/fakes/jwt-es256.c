/*
 * jwt-es256 — prints an APNs provider token, for tests.
 *
 *   jwt-es256 KEYFILE KEYID TEAMID [IAT]
 *
 * KEYFILE is an EC P-256 private key in PEM (Apple's AuthKey_*.p8 is
 * PKCS#8). The token is base64url({"alg":"ES256","kid":KEYID}) "."
 * base64url({"iss":TEAMID,"iat":IAT}) "." base64url(R||S), IAT defaulting
 * to now, exactly what Apple expects. Exit 0 and one line on stdout, or
 * exit 2 with a message naming the bad argument.
 */
#include "b64url.h"

#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ID_MAX 64

static int id_ok(const char *s)
{
    size_t n = strlen(s);
    size_t i;

    if (n == 0 || n > ID_MAX) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-')) {
            return 0;
        }
    }
    return 1;
}

/* Signs msg with pk (ES256) and writes the raw 64-byte R||S into out. */
static int sign_es256(EVP_PKEY *pk, const char *msg, size_t len, unsigned char out[64])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char der[128];
    size_t dlen = sizeof(der);
    const unsigned char *p = der;
    ECDSA_SIG *sig = NULL;
    const BIGNUM *r;
    const BIGNUM *s;
    int rc = -1;

    if (md == NULL || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pk) != 1 ||
        EVP_DigestSign(md, NULL, &dlen, (const unsigned char *)msg, len) != 1 ||
        dlen > sizeof(der) ||
        EVP_DigestSign(md, der, &dlen, (const unsigned char *)msg, len) != 1) {
        goto out;
    }
    /* OpenSSL gives DER; JWS wants the two integers as fixed 32-byte halves. */
    sig = d2i_ECDSA_SIG(NULL, &p, (long)dlen);
    if (sig == NULL) {
        goto out;
    }
    ECDSA_SIG_get0(sig, &r, &s);
    if (BN_bn2binpad(r, out, 32) != 32 || BN_bn2binpad(s, out + 32, 32) != 32) {
        goto out;
    }
    rc = 0;
out:
    ECDSA_SIG_free(sig);
    EVP_MD_CTX_free(md);
    return rc;
}

int main(int argc, char **argv)
{
    FILE *f;
    EVP_PKEY *pk;
    char hdr[160];
    char claims[160];
    char input[512];
    char part[256];
    unsigned char sig[64];
    char sig64[96];
    int64_t iat;
    int n;
    int len;

    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: jwt-es256 KEYFILE KEYID TEAMID [IAT]\n");
        return 2;
    }
    if (!id_ok(argv[2])) {
        fprintf(stderr, "jwt-es256: KEYID '%s' is not 1..64 of [A-Za-z0-9._-]\n", argv[2]);
        return 2;
    }
    if (!id_ok(argv[3])) {
        fprintf(stderr, "jwt-es256: TEAMID '%s' is not 1..64 of [A-Za-z0-9._-]\n", argv[3]);
        return 2;
    }
    if (argc == 5) {
        char *end;
        long long v;
        errno = 0;
        v = strtoll(argv[4], &end, 10);
        if (errno != 0 || end == argv[4] || *end != '\0' || v < 0) {
            fprintf(stderr, "jwt-es256: IAT '%s' is not seconds since the epoch\n", argv[4]);
            return 2;
        }
        iat = v;
    } else {
        iat = (int64_t)time(NULL);
    }
    f = fopen(argv[1], "r");
    if (f == NULL) {
        fprintf(stderr, "jwt-es256: KEYFILE %s: %s\n", argv[1], strerror(errno));
        return 2;
    }
    pk = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (pk == NULL || !EVP_PKEY_is_a(pk, "EC")) {
        fprintf(stderr, "jwt-es256: KEYFILE %s: not a PEM EC private key\n", argv[1]);
        EVP_PKEY_free(pk);
        return 2;
    }

    /* Ids were checked above, so they need no JSON escaping. */
    snprintf(hdr, sizeof(hdr), "{\"alg\":\"ES256\",\"kid\":\"%s\"}", argv[2]);
    snprintf(claims, sizeof(claims), "{\"iss\":\"%s\",\"iat\":%" PRId64 "}", argv[3], iat);
    len = b64url_encode((const uint8_t *)hdr, strlen(hdr), part, sizeof(part));
    n = snprintf(input, sizeof(input), "%s.", part);
    len = b64url_encode((const uint8_t *)claims, strlen(claims), part, sizeof(part));
    if (len < 0 || n < 0) {
        EVP_PKEY_free(pk);
        return 1;
    }
    n += snprintf(input + n, sizeof(input) - (size_t)n, "%s", part);
    if (sign_es256(pk, input, (size_t)n, sig) != 0 ||
        b64url_encode(sig, sizeof(sig), sig64, sizeof(sig64)) < 0) {
        fprintf(stderr, "jwt-es256: signing failed (is %s a P-256 key?)\n", argv[1]);
        EVP_PKEY_free(pk);
        return 2;
    }
    printf("%s.%s\n", input, sig64);
    EVP_PKEY_free(pk);
    return 0;
}
