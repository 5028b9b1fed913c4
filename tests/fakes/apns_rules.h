/*
 * apns_rules — Apple's status/reason table and the fake's answer script.
 *
 * A script is a text file, one rule a line, '#' starts a comment:
 *
 *   token <hex|*> status <code> [reason <R>] [timestamp <ms>] [retry-after <s>]
 *                 [delay <ms>] [times <N>]
 *   token <hex|*> delay <ms> [times <N>]          200 after a delay
 *   token <hex|*> goaway [reason <R>] [times <N>] GOAWAY, last-stream-id = this - 2
 *   token <hex|*> drop [times <N>]                close the TCP connection, no answer
 *   token <hex|*> [status <code> ...] cut <headers|body|reset|goaway> [times <N>]
 *                 start the answer (status 200 unless given), then break it
 *                 off (fake_cut.h)
 *
 * Rules apply to requests that passed validation; the first rule that
 * matches and is not spent decides. "times N" spends a rule after N
 * matches. See docs/fakes.md.
 */
#ifndef TIDINGS_FAKES_APNS_RULES_H
#define TIDINGS_FAKES_APNS_RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fake_cut.h"

#define APNS_TOKEN_MIN_HEX 64
#define APNS_TOKEN_MAX_HEX 200
#define APNS_RULES_MAX 4096
#define APNS_REASON_MAX 40

enum apns_rule_action {
    APNS_ACT_REPLY,  /* answer status (200 included), possibly after a delay */
    APNS_ACT_GOAWAY, /* GOAWAY so this and later streams go unanswered */
    APNS_ACT_DROP    /* close the connection without a word */
};

typedef struct apns_rule {
    char token[APNS_TOKEN_MAX_HEX + 1]; /* lowercase hex; empty means '*' */
    enum apns_rule_action action;
    int status;                   /* APNS_ACT_REPLY: 200, or a status from Apple's table */
    char reason[APNS_REASON_MAX]; /* "" for 200; for GOAWAY, optional debug-data reason */
    int64_t timestamp_ms;         /* 410 only; -1 means "now" */
    int64_t retry_after_s;        /* -1 means no retry-after header */
    int64_t delay_ms;             /* 0 means at once */
    enum fake_cut cut;            /* APNS_ACT_REPLY: break the answer off this way */
    int64_t times_left;           /* -1 means unlimited */
    int line;                     /* where it came from, for messages */
} apns_rule;

typedef struct apns_rules {
    apns_rule *v;
    size_t n;
} apns_rules;

/*
 * Parses the script at path into out (which is overwritten, not freed).
 * Returns 0, or -1 with "path:line: reason" (or "path: reason") in err.
 */
int apns_rules_load(const char *path, apns_rules *out, char *err, size_t errlen);

/* Frees the rules; out is left empty. */
void apns_rules_free(apns_rules *r);

/*
 * First rule that matches token[0..len) (hex compared without regard to
 * case) and is not spent; its times_left is counted down. NULL when none.
 */
const apns_rule *apns_rules_match(apns_rules *r, const char *token, size_t len);

/* True when reason is in Apple's table for status. */
bool apns_reason_valid(int status, const char *reason);

/* The reason used for a scripted status given without one. */
const char *apns_default_reason(int status);

/* True for a device token: APNS_TOKEN_MIN_HEX..APNS_TOKEN_MAX_HEX hex digits. */
bool apns_token_valid(const char *s, size_t n);

#endif
