/*
 * jwt.h - base64url and JSON Web Token signing (ES256 for APNs provider
 * tokens, RS256 for Google service-account assertions), on mbedtls 2.28.
 *
 * A jwt_signer owns one private key and a CTR-DRBG seeded from the system
 * entropy source. ES256 signatures are deterministic (RFC 6979, the DRBG only
 * blinds the computation) and are emitted as the raw 64-byte R||S that JWS
 * requires (RFC 7518 3.4), not as DER. RS256 is RSASSA-PKCS1-v1_5 with
 * SHA-256.
 *
 * Not thread-safe: a signer is used from one thread (the hub's loop). Key
 * material is zeroized when the signer is destroyed.
 */
#ifndef TIDINGS_JWT_H
#define TIDINGS_JWT_H

#include <stddef.h>
#include <stdint.h>

/* Encoded length of n bytes in base64url without padding (no NUL). */
#define JWT_B64URL_LEN(n) (((n) / 3) * 4 + (((n) % 3) ? ((n) % 3) + 1 : 0))

/* Longest token the jwt_* functions produce, NUL included. Covers a 4096-bit
 * RSA signature (683 chars) and claims up to JWT_CLAIMS_MAX bytes. */
#define JWT_CLAIMS_MAX 1024
#define JWT_TOKEN_MAX 2400

/* Longest key id / issuer accepted by jwt_es256 (Apple's are 10 chars). */
#define JWT_ID_MAX 64

/*
 * Encode n bytes of in as base64url without padding (RFC 4648 section 5,
 * RFC 7515 appendix C) into out, NUL-terminated. Returns the length written
 * (excluding the NUL), or -ENOSPC if out (outlen bytes) is too small.
 */
int jwt_b64url_encode(const void *in, size_t n, char *out, size_t outlen);

/*
 * Decode base64url (padding '=' accepted but not required; no whitespace)
 * from in (n chars) into out. Returns the decoded length, -EINVAL on a bad
 * character or impossible length, or -ENOSPC if out is too small.
 */
int jwt_b64url_decode(const char *in, size_t n, void *out, size_t outlen);

typedef struct jwt_signer jwt_signer;

enum jwt_alg { JWT_ES256 = 1, JWT_RS256 };

/*
 * Load a private key from a PEM or DER file (PKCS#8 "BEGIN PRIVATE KEY" as in
 * Apple's AuthKey_<KEYID>.p8, SEC1 "BEGIN EC PRIVATE KEY", or PKCS#1 "BEGIN RSA
 * PRIVATE KEY"). The key must be EC P-256 (-> ES256) or RSA >= 2048 bits
 * (-> RS256). Returns 0 with *out set, -errno when the file cannot be read,
 * TDG_ECRYPTO for a key that cannot be parsed or is of the wrong kind, or
 * -ENOMEM. err (may be NULL) receives a one-line reason that never contains
 * key material.
 */
int jwt_signer_create_file(const char *path, jwt_signer **out, char *err, size_t errlen);

/*
 * Same from a key held in memory (e.g. the "private_key" field of a Google
 * service-account JSON file). pem need not be NUL-terminated; len bytes, at
 * most 16 KiB.
 */
int jwt_signer_create_pem(const char *pem, size_t len, jwt_signer **out, char *err, size_t errlen);

/* Free the signer (NULL is fine). Key material is zeroized. */
void jwt_signer_destroy(jwt_signer *s);

/* The algorithm the signer's key implies. */
enum jwt_alg jwt_signer_alg(const jwt_signer *s);

/*
 * Sign "b64url(header).b64url(claims)" with the signer's algorithm and write
 * the compact JWT (NUL-terminated) to out. header and claims are JSON texts
 * used verbatim (the caller is responsible for them being valid JSON; each at
 * most JWT_CLAIMS_MAX bytes). Returns the token length, -ENOSPC if out is too
 * small, -EINVAL for oversized input, or TDG_ECRYPTO.
 */
int jwt_sign(jwt_signer *s, const char *header, size_t header_len, const char *claims,
             size_t claims_len, char *out, size_t outlen);

/*
 * APNs provider token: header {"alg":"ES256","kid":key_id}, claims
 * {"iss":team_id,"iat":iat_s}. key_id and team_id must be 1..JWT_ID_MAX
 * characters of [A-Za-z0-9._-] (so no JSON escaping is ever needed); the
 * signer must be ES256. Returns the token length, -EINVAL, -ENOSPC or
 * TDG_ECRYPTO.
 */
int jwt_es256_provider_token(jwt_signer *s, const char *key_id, const char *team_id, int64_t iat_s,
                             char *out, size_t outlen);

/*
 * RS256 assertion: header {"alg":"RS256","typ":"JWT"} and the caller's claims
 * JSON (verbatim). The signer must be RS256. Same returns as jwt_sign.
 */
int jwt_rs256(jwt_signer *s, const char *claims, size_t claims_len, char *out, size_t outlen);

#endif
