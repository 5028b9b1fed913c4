/*
 * b64url — base64url (RFC 4648 section 5) without padding, as JWTs use it.
 *
 * Shared by fake-apns (decoding tokens) and jwt-es256 (encoding them).
 * Neither function allocates; both are bounded by the caller's buffer.
 */
#ifndef TIDINGS_FAKES_B64URL_H
#define TIDINGS_FAKES_B64URL_H

#include <stddef.h>
#include <stdint.h>

/*
 * Encodes n bytes of in as unpadded base64url into out, NUL-terminated.
 * Returns the length written (without the NUL), or -1 if cap is too small
 * (cap must be at least (n * 4 + 2) / 3 + 1).
 */
int b64url_encode(const uint8_t *in, size_t n, char *out, size_t cap);

/*
 * Decodes n characters of unpadded base64url into out.
 * Rejects '=' padding, characters outside the base64url alphabet, a length
 * that no byte string encodes to (n % 4 == 1), and non-zero trailing bits,
 * so each byte string has exactly one accepted spelling.
 * Returns the decoded length, or -1 on bad input or when cap is too small.
 */
int b64url_decode(const char *in, size_t n, uint8_t *out, size_t cap);

#endif
