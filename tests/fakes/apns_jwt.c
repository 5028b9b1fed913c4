/* ES256 provider-token verification with OpenSSL; see apns_jwt.h. */
#include "apns_jwt.h"

#include "b64url.h"

#include <cjson/cJSON.h>
#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define APNS_JWT_MAX_ID 64
#define APNS_JWT_MAX_PART 1024 /* decoded header or claims */

typedef struct apns_key {
    char key_id[APNS_JWT_MAX_ID + 1];
    char team_id[APNS_JWT_MAX_ID + 1];
    EVP_PKEY *pkey;
    /* --strict-token-refresh state: the token in force and when it came. */
    char current[APNS_JWT_MAX_TOKEN];
    size_t current_len;
    int64_t current_since_s;
} apns_key;

struct apns_keyring {
    apns_key keys[APNS_JWT_MAX_KEYS];
    int n;
};

apns_keyring *apns_keyring_create(void)
{
    return calloc(1, sizeof(apns_keyring));
}

void apns_keyring_destroy(apns_keyring *kr)
{
    int i;

    if (kr == NULL) {
        return;
    }
    for (i = 0; i < kr->n; i++) {
        EVP_PKEY_free(kr->keys[i].pkey);
    }
    free(kr);
}

int apns_keyring_count(const apns_keyring *kr)
{
    return kr->n;
}

static bool id_ok(const char *s)
{
    size_t n = strlen(s);
    size_t i;

    if (n == 0 || n > APNS_JWT_MAX_ID) {
        return false;
    }
    for (i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-')) {
            return false;
        }
    }
    return true;
}

/* Reads a public key, or the public half of a private key, from a PEM file. */
static EVP_PKEY *read_ec_key(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    EVP_PKEY *pk;
    char group[32];
    size_t glen = 0;

    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    pk = PEM_read_PUBKEY(f, NULL, NULL, NULL);
    if (pk == NULL) {
        rewind(f);
        pk = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    }
    fclose(f);
    if (pk == NULL) {
        snprintf(err, errlen, "%s: not a PEM public key or PKCS#8 private key", path);
        return NULL;
    }
    if (!EVP_PKEY_is_a(pk, "EC") ||
        EVP_PKEY_get_utf8_string_param(pk, "group", group, sizeof(group), &glen) != 1 ||
        (strcmp(group, "prime256v1") != 0 && strcmp(group, "P-256") != 0)) {
        snprintf(err, errlen, "%s: not an EC P-256 key (APNs keys are ES256)", path);
        EVP_PKEY_free(pk);
        return NULL;
    }
    return pk;
}

int apns_keyring_add(apns_keyring *kr, const char *path, const char *key_id, const char *team_id,
                     char *err, size_t errlen)
{
    apns_key *k;
    int i;

    err[0] = '\0';
    if (kr->n >= APNS_JWT_MAX_KEYS) {
        snprintf(err, errlen, "at most %d auth keys", APNS_JWT_MAX_KEYS);
        return -1;
    }
    if (!id_ok(key_id)) {
        snprintf(err, errlen, "key id '%s' is not 1..64 of [A-Za-z0-9._-]", key_id);
        return -1;
    }
    if (!id_ok(team_id)) {
        snprintf(err, errlen, "team id '%s' is not 1..64 of [A-Za-z0-9._-]", team_id);
        return -1;
    }
    for (i = 0; i < kr->n; i++) {
        if (strcmp(kr->keys[i].key_id, key_id) == 0) {
            snprintf(err, errlen, "key id '%s' given twice", key_id);
            return -1;
        }
    }
    k = &kr->keys[kr->n];
    memset(k, 0, sizeof(*k));
    k->pkey = read_ec_key(path, err, errlen);
    if (k->pkey == NULL) {
        return -1;
    }
    /* Lengths were checked by id_ok, so these copies cannot truncate. */
    snprintf(k->key_id, sizeof(k->key_id), "%s", key_id);
    snprintf(k->team_id, sizeof(k->team_id), "%s", team_id);
    kr->n++;
    return 0;
}

/* Decodes one base64url part and parses it as a JSON object; NULL if not. */
static cJSON *decode_json_part(const char *s, size_t n)
{
    uint8_t buf[APNS_JWT_MAX_PART];
    int len = b64url_decode(s, n, buf, sizeof(buf));
    cJSON *j;

    if (len <= 0) {
        return NULL;
    }
    j = cJSON_ParseWithLength((const char *)buf, (size_t)len);
    if (j != NULL && !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

/* True when sig64 (raw R||S) is a valid ES256 signature of msg by pk. */
static bool es256_verify(EVP_PKEY *pk, const uint8_t sig64[64], const char *msg, size_t len)
{
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig64, 32, NULL);
    BIGNUM *s = BN_bin2bn(sig64 + 32, 32, NULL);
    unsigned char der[80];
    unsigned char *p = der;
    EVP_MD_CTX *md = NULL;
    int dlen;
    bool ok = false;

    if (sig == NULL || r == NULL || s == NULL) {
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(sig);
        return false;
    }
    ECDSA_SIG_set0(sig, r, s); /* sig owns r and s from here */
    /* DER of two 32-byte integers is at most 72 bytes; i2d is told nothing
     * of der's size, so check the length it would write first. */
    dlen = i2d_ECDSA_SIG(sig, NULL);
    if (dlen > 0 && (size_t)dlen <= sizeof(der)) {
        dlen = i2d_ECDSA_SIG(sig, &p);
        md = EVP_MD_CTX_new();
        if (md != NULL && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pk) == 1 &&
            EVP_DigestVerify(md, der, (size_t)dlen, (const unsigned char *)msg, len) == 1) {
            ok = true;
        }
    }
    EVP_MD_CTX_free(md);
    ECDSA_SIG_free(sig);
    return ok;
}

enum apns_jwt_verdict apns_jwt_verify(const apns_keyring *kr, const char *tok, size_t len,
                                      int *key_index, int64_t *iat)
{
    const char *dot1;
    const char *dot2;
    uint8_t sig[64];
    cJSON *hdr = NULL;
    cJSON *claims = NULL;
    const cJSON *alg;
    const cJSON *kid;
    const cJSON *iss;
    const cJSON *jiat;
    const apns_key *key = NULL;
    enum apns_jwt_verdict v = APNS_JWT_INVALID;
    int i;

    if (len == 0 || len > APNS_JWT_MAX_TOKEN) {
        return APNS_JWT_INVALID;
    }
    dot1 = memchr(tok, '.', len);
    if (dot1 == NULL) {
        return APNS_JWT_INVALID;
    }
    dot2 = memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - tok));
    if (dot2 == NULL || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - tok)) != NULL) {
        return APNS_JWT_INVALID;
    }
    if (b64url_decode(dot2 + 1, len - (size_t)(dot2 + 1 - tok), sig, sizeof(sig)) != 64) {
        return APNS_JWT_INVALID;
    }
    hdr = decode_json_part(tok, (size_t)(dot1 - tok));
    claims = decode_json_part(dot1 + 1, (size_t)(dot2 - dot1 - 1));
    if (hdr == NULL || claims == NULL) {
        goto out;
    }
    alg = cJSON_GetObjectItemCaseSensitive(hdr, "alg");
    kid = cJSON_GetObjectItemCaseSensitive(hdr, "kid");
    if (!cJSON_IsString(alg) || strcmp(alg->valuestring, "ES256") != 0 || !cJSON_IsString(kid)) {
        goto out;
    }
    for (i = 0; i < kr->n; i++) {
        if (strcmp(kr->keys[i].key_id, kid->valuestring) == 0) {
            key = &kr->keys[i];
            break;
        }
    }
    if (key == NULL) {
        goto out;
    }
    iss = cJSON_GetObjectItemCaseSensitive(claims, "iss");
    jiat = cJSON_GetObjectItemCaseSensitive(claims, "iat");
    if (!cJSON_IsString(iss) || strcmp(iss->valuestring, key->team_id) != 0 ||
        !cJSON_IsNumber(jiat) || jiat->valuedouble != floor(jiat->valuedouble) ||
        jiat->valuedouble < 0 || jiat->valuedouble > 1e15) {
        goto out;
    }
    if (!es256_verify(key->pkey, sig, tok, (size_t)(dot2 - tok))) {
        goto out;
    }
    *key_index = i;
    *iat = (int64_t)jiat->valuedouble;
    v = APNS_JWT_OK;
out:
    cJSON_Delete(hdr);
    cJSON_Delete(claims);
    return v;
}

enum apns_jwt_verdict apns_jwt_check_time(int64_t iat, int64_t now_s)
{
    if (now_s - iat > APNS_JWT_MAX_AGE_S || iat - now_s > APNS_JWT_MAX_SKEW_S) {
        return APNS_JWT_EXPIRED;
    }
    return APNS_JWT_OK;
}

int apns_keyring_note_token(apns_keyring *kr, int key_index, const char *tok, size_t len,
                            int64_t now_s)
{
    apns_key *k = &kr->keys[key_index];

    if (len > sizeof(k->current)) {
        return -1;
    }
    if (k->current_len == len && memcmp(k->current, tok, len) == 0) {
        return 0;
    }
    if (k->current_len != 0 && now_s - k->current_since_s < APNS_JWT_REFRESH_MIN_S) {
        return -1;
    }
    memcpy(k->current, tok, len);
    k->current_len = len;
    k->current_since_s = now_s;
    return 0;
}

const char *apns_jwt_verdict_name(enum apns_jwt_verdict v)
{
    switch (v) {
    case APNS_JWT_OK:
        return "ok";
    case APNS_JWT_MISSING:
        return "missing";
    case APNS_JWT_INVALID:
        return "invalid";
    case APNS_JWT_EXPIRED:
        return "expired";
    }
    return "invalid";
}
