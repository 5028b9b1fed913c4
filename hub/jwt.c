/*
 * jwt.c - base64url and ES256/RS256 JWT signing on mbedtls 2.28.
 *
 * mbedtls return codes never leave this file: they become TDG_ECRYPTO (or
 * -errno / -ENOMEM), with mbedtls' own text in the caller's err buffer.
 */
#include "jwt.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/config.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/rsa.h>
#include <mbedtls/sha256.h>

#include "error.h"

#define ES256_SIG_LEN 64
#define ES256_COORD_LEN 32
#define RSA_MIN_BITS 2048
#define RSA_MAX_BYTES 512 /* 4096-bit keys; the signature buffer below is this big */
#define PEM_MAX (16 * 1024)

struct jwt_signer {
    mbedtls_pk_context pk;
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    enum jwt_alg alg;
};

/* --- base64url ------------------------------------------------------- */

static const char b64url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

int jwt_b64url_encode(const void *in, size_t n, char *out, size_t outlen)
{
    const unsigned char *p = in;
    /* n / 3 * 4 cannot overflow for any n that fits in memory twice over,
     * but check the ceiling against outlen before writing anything. */
    if (n > (SIZE_MAX / 4) * 3 - 3) {
        return -ENOSPC;
    }
    size_t need = JWT_B64URL_LEN(n);
    if (outlen < need + 1 || need > (size_t)INT32_MAX) {
        return -ENOSPC;
    }
    size_t o = 0;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = ((uint32_t)p[i] << 16) | ((uint32_t)p[i + 1] << 8) | p[i + 2];
        out[o++] = b64url_alphabet[(v >> 18) & 63];
        out[o++] = b64url_alphabet[(v >> 12) & 63];
        out[o++] = b64url_alphabet[(v >> 6) & 63];
        out[o++] = b64url_alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = b64url_alphabet[(v >> 18) & 63];
        out[o++] = b64url_alphabet[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = ((uint32_t)p[i] << 16) | ((uint32_t)p[i + 1] << 8);
        out[o++] = b64url_alphabet[(v >> 18) & 63];
        out[o++] = b64url_alphabet[(v >> 12) & 63];
        out[o++] = b64url_alphabet[(v >> 6) & 63];
    }
    out[o] = '\0';
    return (int)o;
}

static int b64url_value(char c)
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    if (c == '-') {
        return 62;
    }
    if (c == '_') {
        return 63;
    }
    return -1;
}

int jwt_b64url_decode(const char *in, size_t n, void *out, size_t outlen)
{
    unsigned char *o = out;
    /* Trailing padding is tolerated (some producers add it); at most two. */
    size_t pad = 0;
    while (n > 0 && in[n - 1] == '=' && pad < 2) {
        n--;
        pad++;
    }
    if (n % 4 == 1 || (pad > 0 && (n + pad) % 4 != 0)) {
        return -EINVAL;
    }
    size_t need = (n / 4) * 3 + ((n % 4) ? (n % 4) - 1 : 0);
    if (need > (size_t)INT32_MAX) {
        return -EINVAL;
    }
    if (need > outlen) {
        return -ENOSPC;
    }
    size_t w = 0;
    uint32_t acc = 0;
    unsigned bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_value(in[i]);
        if (v < 0) {
            return -EINVAL;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            o[w++] = (unsigned char)((acc >> bits) & 0xff);
        }
    }
    /* Leftover bits must be zero: only one encoding of a value is valid
     * (RFC 4648 3.5), which keeps signature comparisons honest. */
    if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) {
        return -EINVAL;
    }
    return (int)w;
}

/* --- signer ---------------------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *what, int mbed_rc)
{
    if (!err || errlen == 0) {
        return;
    }
    if (mbed_rc != 0) {
        char text[160];
        mbedtls_strerror(mbed_rc, text, sizeof(text));
        snprintf(err, errlen, "%s: %s (-0x%04x)", what, text, (unsigned)-mbed_rc);
    } else {
        snprintf(err, errlen, "%s", what);
    }
}

static jwt_signer *signer_new(char *err, size_t errlen, int *rc)
{
    jwt_signer *s = calloc(1, sizeof(*s));
    if (!s) {
        set_err(err, errlen, "out of memory", 0);
        *rc = -ENOMEM;
        return NULL;
    }
    mbedtls_pk_init(&s->pk);
    mbedtls_entropy_init(&s->entropy);
    mbedtls_ctr_drbg_init(&s->drbg);
    static const unsigned char pers[] = "tidings-jwt";
    int mrc =
        mbedtls_ctr_drbg_seed(&s->drbg, mbedtls_entropy_func, &s->entropy, pers, sizeof(pers) - 1);
    if (mrc != 0) {
        set_err(err, errlen, "cannot seed the random generator", mrc);
        jwt_signer_destroy(s);
        *rc = TDG_ECRYPTO;
        return NULL;
    }
    *rc = 0;
    return s;
}

/* Decide the algorithm from the parsed key; reject anything else. */
static int signer_classify(jwt_signer *s, char *err, size_t errlen)
{
    mbedtls_pk_type_t t = mbedtls_pk_get_type(&s->pk);
    if (t == MBEDTLS_PK_ECKEY || t == MBEDTLS_PK_ECDSA) {
        const mbedtls_ecp_keypair *kp = mbedtls_pk_ec(s->pk);
        if (kp->grp.id != MBEDTLS_ECP_DP_SECP256R1) {
            set_err(err, errlen, "EC key is not on curve P-256 (ES256 needs P-256)", 0);
            return TDG_ECRYPTO;
        }
        s->alg = JWT_ES256;
        return 0;
    }
    if (t == MBEDTLS_PK_RSA) {
        size_t bits = mbedtls_pk_get_bitlen(&s->pk);
        if (bits < RSA_MIN_BITS || mbedtls_pk_get_len(&s->pk) > RSA_MAX_BYTES) {
            set_err(err, errlen, "RSA key must be 2048..4096 bits", 0);
            return TDG_ECRYPTO;
        }
        s->alg = JWT_RS256;
        return 0;
    }
    set_err(err, errlen, "key is neither EC P-256 nor RSA", 0);
    return TDG_ECRYPTO;
}

int jwt_signer_create_file(const char *path, jwt_signer **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!path || !*path) {
        set_err(err, errlen, "no key file given", 0);
        return -EINVAL;
    }
    int rc;
    jwt_signer *s = signer_new(err, errlen, &rc);
    if (!s) {
        return rc;
    }
    errno = 0;
    int mrc = mbedtls_pk_parse_keyfile(&s->pk, path, NULL);
    int saved = errno;
    if (mrc == MBEDTLS_ERR_PK_FILE_IO_ERROR) {
        /* mbedtls_pk_load_file fails right after fopen/fread, so errno still
         * tells why; fall back to EIO if something cleared it. */
        rc = saved > 0 ? -saved : -EIO;
        if (err && errlen) {
            snprintf(err, errlen, "cannot read key file %s: %s", path, strerror(-rc));
        }
        jwt_signer_destroy(s);
        return rc;
    }
    if (mrc == MBEDTLS_ERR_PK_ALLOC_FAILED) {
        set_err(err, errlen, "out of memory", 0);
        jwt_signer_destroy(s);
        return -ENOMEM;
    }
    if (mrc != 0) {
        char what[300];
        snprintf(what, sizeof(what), "cannot parse key file %s", path);
        set_err(err, errlen, what, mrc);
        jwt_signer_destroy(s);
        return TDG_ECRYPTO;
    }
    rc = signer_classify(s, err, errlen);
    if (rc < 0) {
        jwt_signer_destroy(s);
        return rc;
    }
    *out = s;
    return 0;
}

int jwt_signer_create_pem(const char *pem, size_t len, jwt_signer **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!pem || len == 0 || len > PEM_MAX) {
        set_err(err, errlen, "key text empty or over 16 KiB", 0);
        return -EINVAL;
    }
    int rc;
    jwt_signer *s = signer_new(err, errlen, &rc);
    if (!s) {
        return rc;
    }
    /* mbedtls wants PEM NUL-terminated with the NUL counted in the length. */
    unsigned char *copy = malloc(len + 1);
    if (!copy) {
        set_err(err, errlen, "out of memory", 0);
        jwt_signer_destroy(s);
        return -ENOMEM;
    }
    memcpy(copy, pem, len);
    copy[len] = '\0';
    int mrc = mbedtls_pk_parse_key(&s->pk, copy, len + 1, NULL, 0);
    mbedtls_platform_zeroize(copy, len + 1);
    free(copy);
    if (mrc != 0) {
        set_err(err, errlen, "cannot parse key", mrc);
        jwt_signer_destroy(s);
        return mrc == MBEDTLS_ERR_PK_ALLOC_FAILED ? -ENOMEM : TDG_ECRYPTO;
    }
    rc = signer_classify(s, err, errlen);
    if (rc < 0) {
        jwt_signer_destroy(s);
        return rc;
    }
    *out = s;
    return 0;
}

void jwt_signer_destroy(jwt_signer *s)
{
    if (!s) {
        return;
    }
    /* The *_free functions zeroize their contexts (private key included). */
    mbedtls_pk_free(&s->pk);
    mbedtls_ctr_drbg_free(&s->drbg);
    mbedtls_entropy_free(&s->entropy);
    free(s);
}

enum jwt_alg jwt_signer_alg(const jwt_signer *s)
{
    return s->alg;
}

/* Raw R||S, each coordinate left-padded to 32 bytes (RFC 7518 3.4). */
static int sign_es256(jwt_signer *s, const unsigned char hash[32], unsigned char *sig,
                      size_t *siglen)
{
    mbedtls_ecp_keypair *kp = mbedtls_pk_ec(s->pk);
    mbedtls_mpi r, sv;
    mbedtls_mpi_init(&r);
    mbedtls_mpi_init(&sv);
    /* Deterministic nonce (RFC 6979): no dependence on the DRBG for the
     * secret k, which is what leaks keys when a random source is weak. The
     * DRBG only blinds the scalar multiplication. */
    int mrc = mbedtls_ecdsa_sign_det_ext(&kp->grp, &r, &sv, &kp->d, hash, 32, MBEDTLS_MD_SHA256,
                                         mbedtls_ctr_drbg_random, &s->drbg);
    if (mrc == 0) {
        mrc = mbedtls_mpi_write_binary(&r, sig, ES256_COORD_LEN);
    }
    if (mrc == 0) {
        mrc = mbedtls_mpi_write_binary(&sv, sig + ES256_COORD_LEN, ES256_COORD_LEN);
    }
    mbedtls_mpi_free(&r);
    mbedtls_mpi_free(&sv);
    if (mrc != 0) {
        return TDG_ECRYPTO;
    }
    *siglen = ES256_SIG_LEN;
    return 0;
}

static int sign_rs256(jwt_signer *s, const unsigned char hash[32], unsigned char *sig,
                      size_t *siglen)
{
    /* pk_sign writes mbedtls_pk_get_len() bytes; signer_classify bounded it
     * to RSA_MAX_BYTES, the size of sig. RSA keys parsed by mbedtls default to
     * PKCS#1 v1.5 padding, which is what RS256 is. */
    int mrc = mbedtls_pk_sign(&s->pk, MBEDTLS_MD_SHA256, hash, 32, sig, siglen,
                              mbedtls_ctr_drbg_random, &s->drbg);
    return mrc == 0 ? 0 : TDG_ECRYPTO;
}

int jwt_sign(jwt_signer *s, const char *header, size_t header_len, const char *claims,
             size_t claims_len, char *out, size_t outlen)
{
    if (header_len > JWT_CLAIMS_MAX || claims_len > JWT_CLAIMS_MAX) {
        return -EINVAL;
    }
    int h = jwt_b64url_encode(header, header_len, out, outlen);
    if (h < 0) {
        return h;
    }
    size_t o = (size_t)h;
    if (o + 1 >= outlen) {
        return -ENOSPC;
    }
    out[o++] = '.';
    int c = jwt_b64url_encode(claims, claims_len, out + o, outlen - o);
    if (c < 0) {
        return c;
    }
    o += (size_t)c;

    unsigned char hash[32];
    if (mbedtls_sha256_ret((const unsigned char *)out, o, hash, 0) != 0) {
        return TDG_ECRYPTO;
    }
    unsigned char sig[RSA_MAX_BYTES];
    size_t siglen = 0;
    int rc =
        s->alg == JWT_ES256 ? sign_es256(s, hash, sig, &siglen) : sign_rs256(s, hash, sig, &siglen);
    if (rc < 0) {
        return rc;
    }
    if (o + 1 >= outlen) {
        return -ENOSPC;
    }
    out[o++] = '.';
    int g = jwt_b64url_encode(sig, siglen, out + o, outlen - o);
    if (g < 0) {
        return g;
    }
    o += (size_t)g;
    return (int)o;
}

static bool id_valid(const char *id)
{
    size_t n = 0;
    for (const char *p = id; *p; p++, n++) {
        char ch = *p;
        bool ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                  (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-';
        if (!ok || n >= JWT_ID_MAX) {
            return false;
        }
    }
    return n > 0;
}

int jwt_es256_provider_token(jwt_signer *s, const char *key_id, const char *team_id, int64_t iat_s,
                             char *out, size_t outlen)
{
    if (s->alg != JWT_ES256 || !key_id || !team_id || !id_valid(key_id) || !id_valid(team_id) ||
        iat_s < 0) {
        return -EINVAL;
    }
    char header[32 + JWT_ID_MAX];
    char claims[48 + JWT_ID_MAX];
    int hl = snprintf(header, sizeof(header), "{\"alg\":\"ES256\",\"kid\":\"%s\"}", key_id);
    int cl = snprintf(claims, sizeof(claims), "{\"iss\":\"%s\",\"iat\":%lld}", team_id,
                      (long long)iat_s);
    if (hl < 0 || (size_t)hl >= sizeof(header) || cl < 0 || (size_t)cl >= sizeof(claims)) {
        return -EINVAL;
    }
    return jwt_sign(s, header, (size_t)hl, claims, (size_t)cl, out, outlen);
}

int jwt_rs256(jwt_signer *s, const char *claims, size_t claims_len, char *out, size_t outlen)
{
    static const char header[] = "{\"alg\":\"RS256\",\"typ\":\"JWT\"}";
    if (s->alg != JWT_RS256) {
        return -EINVAL;
    }
    return jwt_sign(s, header, sizeof(header) - 1, claims, claims_len, out, outlen);
}
