/*
 * jsonlite — the two JSON jobs fake-apns does on every request, without
 * allocating: checking a notification payload and writing a JSON string.
 *
 * A full parser (cJSON) would allocate a node per value on every request;
 * at 50,000 requests/s that is the malloc storm the fake must avoid.
 */
#ifndef TIDINGS_FAKES_JSONLITE_H
#define TIDINGS_FAKES_JSONLITE_H

#include <stddef.h>
#include <stdio.h>

enum {
    JSONLITE_OK = 0,
    JSONLITE_NOT_JSON = -1, /* not one complete RFC 8259 JSON text */
    JSONLITE_NO_APS = -2    /* JSON, but not an object with an "aps" object member */
};

/*
 * Checks that buf[0..n) is exactly one JSON text (surrounding whitespace
 * allowed), valid UTF-8 in strings, nesting at most 64 deep, whose top
 * level is an object holding a member "aps" (spelled without escapes)
 * whose value is an object.
 * Returns JSONLITE_OK, JSONLITE_NOT_JSON or JSONLITE_NO_APS.
 */
int jsonlite_check_apns_payload(const char *buf, size_t n);

/*
 * Writes s[0..n) to f as a quoted JSON string. Quotes, backslashes and
 * control characters are escaped; bytes that are not valid UTF-8 become
 * U+FFFD so the output line is always valid JSON, whatever arrived.
 */
void jsonlite_put_string(FILE *f, const char *s, size_t n);

#endif
