/* Assertion checks and access tokens for fake-fcm; see fcm_auth.h. */
#include "fcm_auth.h"

#include "b64url.h"

#include <cjson/cJSON.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define SA_FILE_MAX (64 * 1024)
#define SIG_MAX 1024 /* RSA 8192 */
#define PART_MAX 2048

struct issued {
    uint64_t seq; /* 0: empty slot */
    int64_t expires_ms;
    char tok[FCM_AUTH_TOKEN_LEN];
};

struct fcm_auth {
    EVP_PKEY *key;
    char client_email[256];
    char project[128];
    char key_id[128];
    uint64_t seq;
    struct issued *tokens; /* FCM_AUTH_TOKENS slots, indexed by seq */
};

fcm_auth *fcm_auth_create(void)
{
    fcm_auth *a = calloc(1, sizeof(*a));

    if (a == NULL) {
        return NULL;
    }
    a->tokens = calloc(FCM_AUTH_TOKENS, sizeof(*a->tokens));
    if (a->tokens == NULL) {
        free(a);
        return NULL;
    }
    return a;
}

void fcm_auth_destroy(fcm_auth *a)
{
    if (a == NULL) {
        return;
    }
    EVP_PKEY_free(a->key);
    free(a->tokens);
    free(a);
}

/* An RSA key of at least 2048 bits, as Google issues. */
static int take_key(fcm_auth *a, EVP_PKEY *k, char *err, size_t errlen)
{
    if (k == NULL) {
        snprintf(err, errlen, "not a PEM key");
        return -1;
    }
    if (EVP_PKEY_get_base_id(k) != EVP_PKEY_RSA || EVP_PKEY_get_bits(k) < 2048) {
        snprintf(err, errlen, "not an RSA key of 2048 bits or more");
        EVP_PKEY_free(k);
        return -1;
    }
    EVP_PKEY_free(a->key);
    a->key = k;
    return 0;
}

static bool email_ok(const char *e)
{
    return e[0] != '\0' && strchr(e, '@') != NULL && strlen(e) < 256;
}

int fcm_auth_load_account(fcm_auth *a, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    size_t n;
    cJSON *j;
    const cJSON *pk, *email, *proj, *kid, *type;
    BIO *bio;
    int rc = -1;
    char why[128];

    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    buf = malloc(SA_FILE_MAX + 1);
    n = buf != NULL ? fread(buf, 1, SA_FILE_MAX + 1, f) : 0;
    fclose(f);
    if (buf == NULL || n > SA_FILE_MAX) {
        snprintf(err, errlen, "%s: %s", path, buf == NULL ? "out of memory" : "over 64 KiB");
        free(buf);
        return -1;
    }
    j = cJSON_ParseWithLength(buf, n);
    free(buf);
    type = cJSON_GetObjectItemCaseSensitive(j, "type");
    pk = cJSON_GetObjectItemCaseSensitive(j, "private_key");
    email = cJSON_GetObjectItemCaseSensitive(j, "client_email");
    proj = cJSON_GetObjectItemCaseSensitive(j, "project_id");
    kid = cJSON_GetObjectItemCaseSensitive(j, "private_key_id");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "service_account") != 0 ||
        !cJSON_IsString(pk) || !cJSON_IsString(email) || !email_ok(email->valuestring)) {
        snprintf(err, errlen, "%s: not a service-account key (type, private_key, client_email)",
                 path);
        goto out;
    }
    bio = BIO_new_mem_buf(pk->valuestring, -1);
    if (bio == NULL) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    if (take_key(a, PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL), why, sizeof(why)) != 0) {
        snprintf(err, errlen, "%s: private_key: %s", path, why);
        BIO_free(bio);
        ERR_clear_error();
        goto out;
    }
    BIO_free(bio);
    snprintf(a->client_email, sizeof(a->client_email), "%s", email->valuestring);
    if (cJSON_IsString(proj)) {
        snprintf(a->project, sizeof(a->project), "%s", proj->valuestring);
    }
    if (cJSON_IsString(kid)) {
        snprintf(a->key_id, sizeof(a->key_id), "%s", kid->valuestring);
    }
    rc = 0;
out:
    cJSON_Delete(j);
    return rc;
}

int fcm_auth_load_pub(fcm_auth *a, const char *path, const char *client_email, char *err,
                      size_t errlen)
{
    FILE *f;
    EVP_PKEY *k;
    char why[128];

    if (!email_ok(client_email)) {
        snprintf(err, errlen, "client email '%s' is not an address", client_email);
        return -1;
    }
    f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    k = PEM_read_PUBKEY(f, NULL, NULL, NULL);
    if (k == NULL) {
        ERR_clear_error();
        rewind(f);
        k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    }
    fclose(f);
    ERR_clear_error();
    if (take_key(a, k, why, sizeof(why)) != 0) {
        snprintf(err, errlen, "%s: %s", path, why);
        return -1;
    }
    snprintf(a->client_email, sizeof(a->client_email), "%s", client_email);
    return 0;
}

const char *fcm_auth_project(const fcm_auth *a)
{
    return a->project;
}

const char *fcm_auth_client_email(const fcm_auth *a)
{
    return a->client_email;
}

static int verify_rs256(EVP_PKEY *key, const char *data, size_t dlen, const uint8_t *sig,
                        size_t slen)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = 0;

    if (md != NULL && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key) == 1) {
        ok = EVP_DigestVerify(md, sig, slen, (const unsigned char *)data, dlen) == 1;
    }
    EVP_MD_CTX_free(md);
    ERR_clear_error();
    return ok ? 0 : -1;
}

/* Decodes one base64url part into a NUL-terminated buffer. */
static int decode_part(const char *p, size_t n, char *out, size_t cap)
{
    int l = b64url_decode(p, n, (uint8_t *)out, cap - 1);

    if (l < 0) {
        return -1;
    }
    out[l] = '\0';
    return l;
}

static bool scope_ok(const char *s)
{
    /* A space-separated list; FCM sends need firebase.messaging (or the
     * broader cloud-platform). */
    static const char *const ok[] = {"https://www.googleapis.com/auth/firebase.messaging",
                                     "https://www.googleapis.com/auth/cloud-platform"};
    size_t i;

    while (*s) {
        const char *e = strchr(s, ' ');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
            if (strlen(ok[i]) == n && memcmp(ok[i], s, n) == 0) {
                return true;
            }
        }
        s += n;
        while (*s == ' ') {
            s++;
        }
    }
    return false;
}

static int fail(char *oerr, size_t oerrlen, const char *e, char *desc, size_t desclen,
                const char *d)
{
    snprintf(oerr, oerrlen, "%s", e);
    snprintf(desc, desclen, "%s", d);
    return -1;
}

#define BAD_TIME                                                                                   \
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "             \
    "timeframe. Check your iat and exp values in the JWT claim."

int fcm_auth_check_assertion(const fcm_auth *a, const char *jwt, size_t len, const char *aud,
                             int64_t now_s, char *oerr, size_t oerrlen, char *desc, size_t desclen,
                             char *claims, size_t claimslen)
{
    const char *d1, *d2;
    char hdr[PART_MAX], cl[PART_MAX];
    uint8_t sig[SIG_MAX];
    int sl;
    cJSON *h = NULL, *c = NULL;
    const cJSON *alg, *kid, *iss, *scope, *jaud, *iat, *exp;
    int rc = -1;
    char buf[512];

    if (claimslen > 0) {
        claims[0] = '\0';
    }
    if (len == 0 || len > FCM_AUTH_ASSERTION_MAX) {
        return fail(oerr, oerrlen, "invalid_grant", desc, desclen, "Invalid JWT Signature.");
    }
    d1 = memchr(jwt, '.', len);
    d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - jwt)) : NULL;
    if (d2 == NULL || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - jwt)) != NULL ||
        decode_part(jwt, (size_t)(d1 - jwt), hdr, sizeof(hdr)) < 0 ||
        decode_part(d1 + 1, (size_t)(d2 - d1 - 1), cl, sizeof(cl)) < 0) {
        return fail(oerr, oerrlen, "invalid_grant", desc, desclen,
                    "Invalid JWT: not a compact JWS (three base64url parts)");
    }
    if (claimslen > 0) {
        snprintf(claims, claimslen, "%s", cl);
    }
    sl = b64url_decode(d2 + 1, len - (size_t)(d2 + 1 - jwt), sig, sizeof(sig));
    h = cJSON_Parse(hdr);
    c = cJSON_Parse(cl);
    alg = cJSON_GetObjectItemCaseSensitive(h, "alg");
    kid = cJSON_GetObjectItemCaseSensitive(h, "kid");
    if (!cJSON_IsObject(h) || !cJSON_IsObject(c) || !cJSON_IsString(alg) ||
        strcmp(alg->valuestring, "RS256") != 0) {
        fail(oerr, oerrlen, "invalid_grant", desc, desclen,
             "Invalid JWT: header must be JSON with alg RS256");
        goto out;
    }
    if (sl <= 0 || verify_rs256(a->key, jwt, (size_t)(d2 - jwt), sig, (size_t)sl) != 0) {
        fail(oerr, oerrlen, "invalid_grant", desc, desclen, "Invalid JWT Signature.");
        goto out;
    }
    if (kid != NULL &&
        (!cJSON_IsString(kid) || (a->key_id[0] && strcmp(kid->valuestring, a->key_id) != 0))) {
        fail(oerr, oerrlen, "invalid_grant", desc, desclen, "Invalid JWT Signature.");
        goto out;
    }
    iss = cJSON_GetObjectItemCaseSensitive(c, "iss");
    scope = cJSON_GetObjectItemCaseSensitive(c, "scope");
    jaud = cJSON_GetObjectItemCaseSensitive(c, "aud");
    iat = cJSON_GetObjectItemCaseSensitive(c, "iat");
    exp = cJSON_GetObjectItemCaseSensitive(c, "exp");
    if (!cJSON_IsString(iss) || strcmp(iss->valuestring, a->client_email) != 0) {
        fail(oerr, oerrlen, "invalid_grant", desc, desclen, "Invalid grant: account not found");
        goto out;
    }
    if (!cJSON_IsString(jaud) || strcmp(jaud->valuestring, aud) != 0) {
        snprintf(buf, sizeof(buf), "Invalid JWT: Failed audience check. The right audience is %s",
                 aud);
        fail(oerr, oerrlen, "invalid_grant", desc, desclen, buf);
        goto out;
    }
    if (!cJSON_IsNumber(iat) || !cJSON_IsNumber(exp) || exp->valuedouble < iat->valuedouble ||
        exp->valuedouble - iat->valuedouble > FCM_AUTH_MAX_LIFETIME_S ||
        exp->valuedouble <= (double)now_s || iat->valuedouble > (double)(now_s + FCM_AUTH_SKEW_S)) {
        fail(oerr, oerrlen, "invalid_grant", desc, desclen, BAD_TIME);
        goto out;
    }
    if (!cJSON_IsString(scope) || !scope_ok(scope->valuestring)) {
        fail(oerr, oerrlen, "invalid_scope", desc, desclen,
             "Invalid OAuth scope or ID token audience provided.");
        goto out;
    }
    rc = 0;
out:
    cJSON_Delete(h);
    cJSON_Delete(c);
    return rc;
}

void fcm_auth_issue(fcm_auth *a, int64_t now_ms, int64_t ttl_ms, char out[FCM_AUTH_TOKEN_LEN])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t rnd[16];
    char h[33];
    struct issued *slot;
    size_t i;

    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
        for (i = 0; i < sizeof(rnd); i++) {
            rnd[i] = (uint8_t)((uint64_t)now_ms >> (i % 8) ^ (a->seq * 131u + i));
        }
    }
    for (i = 0; i < sizeof(rnd); i++) {
        h[2 * i] = hex[rnd[i] >> 4];
        h[2 * i + 1] = hex[rnd[i] & 15];
    }
    h[32] = '\0';
    a->seq++;
    slot = &a->tokens[a->seq % FCM_AUTH_TOKENS];
    slot->seq = a->seq;
    slot->expires_ms = now_ms + ttl_ms;
    snprintf(slot->tok, sizeof(slot->tok), "ya29.fake.%" PRIu64 ".%s", a->seq, h);
    memcpy(out, slot->tok, FCM_AUTH_TOKEN_LEN);
}

enum fcm_token_verdict fcm_auth_check_token(const fcm_auth *a, const char *tok, size_t len,
                                            int64_t now_ms)
{
    static const char pre[] = "ya29.fake.";
    const size_t pl = sizeof(pre) - 1;
    uint64_t seq = 0;
    size_t i = pl;
    const struct issued *slot;

    if (len <= pl || len >= FCM_AUTH_TOKEN_LEN || memcmp(tok, pre, pl) != 0) {
        return FCM_TOK_INVALID;
    }
    /* The sequence number names the slot: one compare, not a search. */
    for (; i < len && tok[i] >= '0' && tok[i] <= '9' && i < pl + 19; i++) {
        seq = seq * 10 + (uint64_t)(tok[i] - '0');
    }
    if (seq == 0 || i == pl) {
        return FCM_TOK_INVALID;
    }
    slot = &a->tokens[seq % FCM_AUTH_TOKENS];
    if (slot->seq != seq || strlen(slot->tok) != len || memcmp(slot->tok, tok, len) != 0) {
        return FCM_TOK_INVALID;
    }
    return now_ms >= slot->expires_ms ? FCM_TOK_EXPIRED : FCM_TOK_OK;
}

uint64_t fcm_auth_issued(const fcm_auth *a)
{
    return a->seq;
}

const char *fcm_token_verdict_name(enum fcm_token_verdict v)
{
    switch (v) {
    case FCM_TOK_OK:
        return "ok";
    case FCM_TOK_MISSING:
        return "missing";
    case FCM_TOK_INVALID:
        return "invalid";
    case FCM_TOK_EXPIRED:
        return "expired";
    }
    return "invalid";
}
