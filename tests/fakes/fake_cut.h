/*
 * fake_cut.h - the "cut" variants of a scripted answer, shared by the
 * fakes' script parsers (apns_rules, fcm_rules) and the server core
 * (h2server): an answer that starts and is then broken off.
 *
 *   cut headers   the answer's HEADERS (no END_STREAM), then the TCP
 *                 connection is closed (no GOAWAY, no TLS close_notify)
 *   cut body      HEADERS and the first half of the body, then the TCP close
 *   cut reset     HEADERS, then RST_STREAM INTERNAL_ERROR; the connection stays
 *   cut goaway    HEADERS, then GOAWAY INTERNAL_ERROR (last-stream-id = this
 *                 stream) and the connection is closed
 *
 * Over HTTP/1.1 (fake-fcm) reset and goaway close the connection after the
 * head, as headers does. See docs/fakes.md.
 */
#ifndef TIDINGS_FAKES_FAKE_CUT_H
#define TIDINGS_FAKES_FAKE_CUT_H

#include <string.h>

enum fake_cut {
    FAKE_CUT_NONE = 0,
    FAKE_CUT_HEADERS,
    FAKE_CUT_BODY,
    FAKE_CUT_RESET,
    FAKE_CUT_GOAWAY
};

/* The variant named s ("headers", "body", "reset", "goaway"), or
 * FAKE_CUT_NONE for anything else. */
static inline enum fake_cut fake_cut_parse(const char *s)
{
    if (strcmp(s, "headers") == 0) {
        return FAKE_CUT_HEADERS;
    }
    if (strcmp(s, "body") == 0) {
        return FAKE_CUT_BODY;
    }
    if (strcmp(s, "reset") == 0) {
        return FAKE_CUT_RESET;
    }
    if (strcmp(s, "goaway") == 0) {
        return FAKE_CUT_GOAWAY;
    }
    return FAKE_CUT_NONE;
}

/* The record's "action" for an answer cut this way ("reply" for none). */
static inline const char *fake_cut_action(enum fake_cut c)
{
    switch (c) {
    case FAKE_CUT_HEADERS:
        return "cut-headers";
    case FAKE_CUT_BODY:
        return "cut-body";
    case FAKE_CUT_RESET:
        return "cut-reset";
    case FAKE_CUT_GOAWAY:
        return "cut-goaway";
    default:
        return "reply";
    }
}

#endif
