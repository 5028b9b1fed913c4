/*
 * fcm_auth — fake-fcm's side of Google OAuth2 for service accounts:
 * checking the RS256 JWT assertion a client posts to the token endpoint,
 * and issuing and checking the access tokens it trades it for.
 *
 * The assertion is base64url(header) "." base64url(claims) "." base64url(sig)
 * with header {"alg":"RS256",...} (a "kid", when present, must be the key's
 * private_key_id), claims {"iss":client_email,"scope":"...firebase.messaging",
 * "aud":<token endpoint URL>,"iat":N,"exp":N+3600} and sig an RSASSA-PKCS1
 * v1.5 / SHA-256 signature by the service account's key.
 *
 * Access tokens are "ya29.fake.<seq>.<32 hex>"; the fake remembers the last
 * FCM_AUTH_TOKENS it issued with their server-side expiry.
 */
#ifndef TIDINGS_FAKES_FCM_AUTH_H
#define TIDINGS_FAKES_FCM_AUTH_H

#include <stddef.h>
#include <stdint.h>

#define FCM_AUTH_TOKENS 4096         /* access tokens remembered */
#define FCM_AUTH_ASSERTION_MAX 4096  /* longer assertions are refused unread */
#define FCM_AUTH_MAX_LIFETIME_S 3600 /* exp - iat at most this */
#define FCM_AUTH_SKEW_S 60           /* iat may be this far in the future */
#define FCM_AUTH_TOKEN_LEN 64        /* room for one access token, NUL included */

typedef struct fcm_auth fcm_auth;

enum fcm_token_verdict { FCM_TOK_OK = 0, FCM_TOK_MISSING, FCM_TOK_INVALID, FCM_TOK_EXPIRED };

/* Returns an empty authority, or NULL when out of memory. */
fcm_auth *fcm_auth_create(void);

/* Frees it. NULL is allowed. */
void fcm_auth_destroy(fcm_auth *a);

/*
 * Loads a service-account JSON key (as Google's console gives it): the
 * public half of private_key, client_email, project_id, private_key_id.
 * Returns 0, or -1 with a message in err.
 */
int fcm_auth_load_account(fcm_auth *a, const char *path, char *err, size_t errlen);

/*
 * Alternative: an RSA public key (or private key) PEM and the client_email
 * it belongs to. Returns 0, or -1 with a message in err.
 */
int fcm_auth_load_pub(fcm_auth *a, const char *path, const char *client_email, char *err,
                      size_t errlen);

/* The key's project_id ("" when loaded from a PEM), and client_email. */
const char *fcm_auth_project(const fcm_auth *a);
const char *fcm_auth_client_email(const fcm_auth *a);

/*
 * Checks an assertion against the key, the expected audience (aud must equal
 * it) and the time now_s. Returns 0, or -1 with the OAuth error name
 * ("invalid_grant", "invalid_scope") in oerr and Google's description in
 * desc. The decoded claims JSON, when the structure allowed decoding, is
 * copied to claims (NUL-terminated, possibly truncated).
 */
int fcm_auth_check_assertion(const fcm_auth *a, const char *jwt, size_t len, const char *aud,
                             int64_t now_s, char *oerr, size_t oerrlen, char *desc, size_t desclen,
                             char *claims, size_t claimslen);

/* Issues a new access token valid for ttl_ms from now_ms into out
 * (FCM_AUTH_TOKEN_LEN bytes). The oldest remembered token is forgotten. */
void fcm_auth_issue(fcm_auth *a, int64_t now_ms, int64_t ttl_ms, char out[FCM_AUTH_TOKEN_LEN]);

/* The verdict for an access token (tok[0..len), no "Bearer "). */
enum fcm_token_verdict fcm_auth_check_token(const fcm_auth *a, const char *tok, size_t len,
                                            int64_t now_ms);

/* Tokens issued so far. */
uint64_t fcm_auth_issued(const fcm_auth *a);

/* "ok", "missing", "invalid", "expired". */
const char *fcm_token_verdict_name(enum fcm_token_verdict v);

#endif
