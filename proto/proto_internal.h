/*
 * proto_internal.h - helpers shared by the proto/ sources. Not part of the
 * public API: nothing outside proto/ includes this file.
 */
#ifndef TIDINGS_PROTO_INTERNAL_H
#define TIDINGS_PROTO_INTERNAL_H

#include "proto.h"

#include <stdbool.h>
#include <stddef.h>

/*
 * A string escape "\u0000" cannot be represented in a cJSON string (it would
 * silently cut the string short), yet it must be rejected with the field it
 * occurs in, and for batches only in the item it occurs in. proto_json_parse()
 * therefore rewrites each such escape into this single raw byte before cJSON
 * sees the text. 0xFF never occurs in UTF-8, and the raw input has already
 * passed the UTF-8 check, so the byte in a parsed string means exactly
 * "the sender wrote \u0000 here". proto_from_json() rejects it as bad_value.
 */
#define PROTO_NUL_SENTINEL 0xFFu

/* Fill err (which may be NULL) with one rejection. field may be NULL. */
void proto_err_set(struct proto_error *err, enum proto_reason r, const char *field, const char *fmt,
                   ...) __attribute__((format(printf, 4, 5)));

/* Copy src into dst (size dstlen >= 1), truncating at a UTF-8 character
 * boundary so the copy stays valid text. */
void proto_copy_trunc(char *dst, size_t dstlen, const char *src);

/* Strict UTF-8 (Unicode table 3-7: no overlongs, no surrogates, nothing above
 * U+10FFFF, no truncated or stray bytes). On failure *bad_off is the offset of
 * the first byte of the offending sequence. */
bool proto_utf8_valid(const unsigned char *s, size_t len, size_t *bad_off);

/*
 * Parse buf (len bytes, not NUL-terminated) as one strict RFC 8259 JSON text:
 * UTF-8 check, then a syntax check (no trailing garbage, no leading zeros, no
 * raw control characters in strings, nesting at most max_depth), then cJSON.
 * "\u0000" escapes become PROTO_NUL_SENTINEL (see above).
 * Returns 0 with *out owned by the caller, TDG_EINVAL_INPUT with err filled
 * (bad_utf8 or malformed_json), or -ENOMEM.
 */
int proto_json_parse(const char *buf, size_t len, int max_depth, struct cJSON **out,
                     struct proto_error *err);

/* Reject a key given twice among obj's direct members: duplicate_key with
 * field "<prefix><key>". 0, TDG_EINVAL_INPUT or -ENOMEM. */
int proto_check_dup_keys(const struct cJSON *obj, const char *prefix, struct proto_error *err);

#endif
