/*
 * proto_internal.h - helpers shared by the proto/ sources. Not part of the
 * public API: nothing outside proto/ includes this file.
 */
#ifndef TIDINGS_PROTO_INTERNAL_H
#define TIDINGS_PROTO_INTERNAL_H

#include "proto.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

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

/* 1 for the bytes that are special inside a JSON string: below 0x20, '"'
 * and '\\' (json_print.c). */
extern const unsigned char proto_json_special[256];

/* Whether any of the 8 bytes at p is special inside a JSON string: below
 * 0x20, '"' or '\\' (escaped when written, ends or escapes when read). Exact
 * for the 8 bytes as a whole, whatever the byte order (the haszero and
 * hasless tricks of "Bit Twiddling Hacks"); p need not be aligned. For
 * skipping plain text a word at a time. */
static inline bool proto_word_special(const void *p)
{
    const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
    uint64_t w;
    memcpy(&w, p, sizeof(w));
    uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\');
    uint64_t low = (w - ones * 0x20) & ~w; /* a byte < 0x20 */
    uint64_t quote = (q - ones) & ~q;      /* a byte == '"' */
    uint64_t bslash = (b - ones) & ~b;     /* a byte == '\\' */
    return ((low | quote | bslash) & highs) != 0;
}

/* Whether any of the 8 bytes at p is not ASCII (p need not be aligned). */
static inline bool proto_word_non_ascii(const void *p)
{
    uint64_t w;
    memcpy(&w, p, sizeof(w));
    return (w & 0x8080808080808080u) != 0;
}

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
