/*
 * fcm_check — fake-fcm's check of a v1 send request body, in the order and
 * with the messages Google's answers use:
 *
 *   {"validate_only":bool?, "message":{"token"|"topic"|"condition": exactly one,
 *     "notification":{"title","body","image": strings},
 *     "data":{string: string, no reserved keys},
 *     "android":{"priority":"NORMAL"|"HIGH", "ttl":"<seconds>[.frac]s",
 *                "collapse_key":string, ...}, "apns":{..}, "webpush":{..}, ...}}
 *
 * Unknown field names are refused (as the real API does), data values must
 * be strings, and notification text + data keys and values must stay within
 * FCM_CHECK_PAYLOAD_MAX bytes.
 */
#ifndef TIDINGS_FAKES_FCM_CHECK_H
#define TIDINGS_FAKES_FCM_CHECK_H

#include <stdbool.h>
#include <stddef.h>

#include "fcm_rules.h"

#define FCM_CHECK_PAYLOAD_MAX 4096
#define FCM_CHECK_TTL_MAX_S 2419200 /* four weeks */

typedef struct fcm_check_result {
    int status;                    /* 200 when the message is fine */
    char error[FCM_ERROR_MAX];     /* FcmError errorCode; "" for a bare rpc error */
    char message[FCM_MESSAGE_MAX]; /* google.rpc.Status message */
    char field[64];                /* a BadRequest field violation; "" = none */
    bool validate_only;
} fcm_check_result;

/*
 * Checks body[0..len) and fills r. The registration token, when the message
 * has one that is valid, is copied to tok (cap bytes, NUL-terminated; ""
 * otherwise) so scripts can match it. Returns r->status (200 or 400).
 */
int fcm_check_message(const char *body, size_t len, fcm_check_result *r, char *tok, size_t cap);

#endif
