/*
 * fcm_rules — FCM's error table and fake-fcm's answer script.
 *
 * A script is a text file, one rule a line, '#' starts a comment:
 *
 *   token <regtoken|*> status <code> [error <ERRORCODE|none>] [retry-after <s>]
 *                      [retry-after-date <s>] [delay <ms>] [times <N>] [message <text...>]
 *   token <regtoken|*> delay <ms> [times <N>]     200 after a delay
 *   token <regtoken|*> goaway [times <N>]         GOAWAY, last-stream-id = this - 2
 *   token <regtoken|*> drop [times <N>]           close the TCP connection, no answer
 *   token <regtoken|*> [status <code> ...] cut <headers|body|reset|goaway> [times <N>]
 *                      start the answer (200 unless given), then break it off
 *   oauth status <code> [error <oauth_error>] [delay <ms>] [times <N>] [message <text...>]
 *   oauth delay <ms> | goaway | drop [times <N>]  the same for the token endpoint
 *
 * "token" rules apply to send requests that passed every check, matched by
 * registration token (exact, case-sensitive); "oauth" rules to token
 * requests whose assertion verified. The first rule that matches and is not
 * spent decides; "times N" spends it after N matches. "message" takes the
 * rest of the line. See docs/fakes.md.
 */
#ifndef TIDINGS_FAKES_FCM_RULES_H
#define TIDINGS_FAKES_FCM_RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fake_cut.h"

#define FCM_RULES_MAX 4096
#define FCM_RULE_LINE_MAX 1024
#define FCM_ERROR_MAX 40
#define FCM_MESSAGE_MAX 256
#define FCM_REG_TOKEN_MAX 4096

enum fcm_rule_target { FCM_RULE_SEND, FCM_RULE_OAUTH };

enum fcm_rule_action {
    FCM_ACT_REPLY,  /* answer status (200 included), possibly after a delay */
    FCM_ACT_GOAWAY, /* HTTP/2 GOAWAY (HTTP/1.1: close after earlier answers) */
    FCM_ACT_DROP    /* close the connection without a word */
};

typedef struct fcm_rule {
    enum fcm_rule_target target;
    char *token; /* FCM_RULE_SEND: the registration token; NULL means '*' */
    enum fcm_rule_action action;
    int status;                    /* 200, or a status in FCM's (or OAuth's) table */
    char error[FCM_ERROR_MAX];     /* FcmError errorCode / OAuth "error"; "" = none */
    char message[FCM_MESSAGE_MAX]; /* "" = the default for the error */
    int64_t retry_after_s;         /* -1 means no retry-after header */
    bool retry_after_date;         /* send it as an HTTP-date now + retry_after_s */
    int64_t delay_ms;              /* 0 means at once */
    enum fake_cut cut;             /* FCM_ACT_REPLY: break the answer off this way */
    int64_t times_left;            /* -1 means unlimited */
    int line;
} fcm_rule;

typedef struct fcm_rules {
    fcm_rule *v;
    size_t n;
} fcm_rules;

/*
 * Parses the script at path into out (overwritten, not freed).
 * Returns 0, or -1 with "path:line: reason" (or "path: reason") in err.
 */
int fcm_rules_load(const char *path, fcm_rules *out, char *err, size_t errlen);

/* Frees the rules; r is left empty. */
void fcm_rules_free(fcm_rules *r);

/*
 * First rule for target that matches token[0..len) (ignored for OAUTH) and
 * is not spent; its times_left is counted down. NULL when none.
 */
const fcm_rule *fcm_rules_match(fcm_rules *r, enum fcm_rule_target target, const char *token,
                                size_t len);

/* google.rpc.Status "status" for an HTTP status ("NOT_FOUND" for 404), or "". */
const char *fcm_rpc_status(int http_status);

/* The FcmError errorCode FCM pairs with an HTTP status ("UNREGISTERED" for 404), or "". */
const char *fcm_default_error(int http_status);

/* True when error_code is in FCM's table for http_status (UNSPECIFIED_ERROR
 * goes with any error status). */
bool fcm_error_valid(int http_status, const char *error_code);

/* Google's message text for an errorCode (or, with "", for the bare status). */
const char *fcm_default_message(const char *error_code, int http_status);

/* True for a registration token: 1..FCM_REG_TOKEN_MAX of [A-Za-z0-9_:.+/=-]. */
bool fcm_reg_token_valid(const char *s, size_t n);

#endif
