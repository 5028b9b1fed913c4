/*
 * apns_jwt — verifies APNs provider authentication tokens (ES256 JWTs).
 *
 * A token is base64url(header) "." base64url(claims) "." base64url(sig)
 * with header {"alg":"ES256","kid":KEYID}, claims {"iss":TEAMID,"iat":SECS}
 * and sig the raw 64-byte R||S of an ECDSA P-256 / SHA-256 signature over
 * the first two parts. The keyring holds one public key per (key id,
 * team id) pair, so one fake can stand in for several Apple teams.
 *
 * Signature checking and the time check are separate on purpose: callers
 * cache the expensive signature verdict per connection and redo the cheap
 * time check on every request, because a cached token ages.
 */
#ifndef TIDINGS_FAKES_APNS_JWT_H
#define TIDINGS_FAKES_APNS_JWT_H

#include <stddef.h>
#include <stdint.h>

#define APNS_JWT_MAX_KEYS 16
#define APNS_JWT_MAX_TOKEN 1024 /* longer tokens are rejected unread */
#define APNS_JWT_MAX_AGE_S 3600
#define APNS_JWT_MAX_SKEW_S 60
#define APNS_JWT_REFRESH_MIN_S 1200 /* Apple: update no more than once every 20 min */

enum apns_jwt_verdict { APNS_JWT_OK = 0, APNS_JWT_MISSING, APNS_JWT_INVALID, APNS_JWT_EXPIRED };

typedef struct apns_keyring apns_keyring;

/* Returns an empty keyring, or NULL when out of memory. */
apns_keyring *apns_keyring_create(void);

/* Frees the keyring and its keys. NULL is allowed. */
void apns_keyring_destroy(apns_keyring *kr);

/*
 * Adds the EC P-256 key in the PEM file at path (a public key, or a
 * PKCS#8 private key such as Apple's AuthKey_*.p8, whose public half is
 * used) under key_id and team_id. Ids are 1..64 characters of
 * [A-Za-z0-9._-]; a key id may appear once.
 * Returns 0, or -1 with a message in err (always NUL-terminated).
 */
int apns_keyring_add(apns_keyring *kr, const char *path, const char *key_id, const char *team_id,
                     char *err, size_t errlen);

/* Number of keys held. */
int apns_keyring_count(const apns_keyring *kr);

/*
 * Checks structure, alg, kid, iss and the signature of tok[0..len).
 * The time is not checked. On APNS_JWT_OK sets *key_index and *iat.
 * Returns APNS_JWT_OK or APNS_JWT_INVALID. Allocates only transiently.
 */
enum apns_jwt_verdict apns_jwt_verify(const apns_keyring *kr, const char *tok, size_t len,
                                      int *key_index, int64_t *iat);

/*
 * The time check for a token whose signature verified: EXPIRED when iat
 * is more than APNS_JWT_MAX_AGE_S in the past or more than
 * APNS_JWT_MAX_SKEW_S in the future, else OK.
 */
enum apns_jwt_verdict apns_jwt_check_time(int64_t iat, int64_t now_s);

/*
 * Apple's token refresh rule, for --strict-token-refresh: the first token
 * seen for a key is accepted; a different token for the same key is
 * accepted only APNS_JWT_REFRESH_MIN_S after the previous one was.
 * Returns 0 when tok may be used, -1 when it is a refresh too soon.
 * The keyring keeps its own copy of the current token per key.
 */
int apns_keyring_note_token(apns_keyring *kr, int key_index, const char *tok, size_t len,
                            int64_t now_s);

/* Name of a verdict as the record spells it: "ok", "missing", ... */
const char *apns_jwt_verdict_name(enum apns_jwt_verdict v);

#endif
