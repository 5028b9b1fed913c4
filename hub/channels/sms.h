/*
 * sms.h - SMS channel over a Twilio-compatible Messages API (HTTPS, form
 * posts, Basic auth).
 *
 * One channel instance is one account (sms.account_sid + its auth token)
 * and one sender (sms.from, an E.164 number, or sms.messaging_service_sid).
 * Messages leave at most sms.rate per second (a token bucket holding one
 * second's worth); the rest wait in a bounded FIFO on the loop. A 429 /
 * 20429 pauses the whole sender for its Retry-After.
 *
 * The recipient's number is channel_device.token, in E.164 ("+4915112345678")
 * until the directory carries a phone number per user. A number that is not
 * E.164 is dropped as "invalid_number" before anything is sent.
 *
 * The text is title + "\n" + body (either alone when the other is absent),
 * cut to Twilio's 1600 characters (and to what fits the request buffer)
 * with "..." when longer. format records the encoding and segment count in
 * outcome->reason ("gsm7 segments=2", "ucs2 segments=1 truncated"), and a
 * successful send carries it on in its ok outcome.
 *
 * See docs/channels.md for the field -> form parameter table and the answer
 * -> outcome table.
 */
#ifndef TIDINGS_SMS_H
#define TIDINGS_SMS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "channel.h"

#define SMS_BODY_MAX_CHARS 1600 /* Twilio: longer bodies fail with 21617 */
#define SMS_VALIDITY_MIN_S 1    /* Twilio's ValidityPeriod range */
#define SMS_VALIDITY_MAX_S 36000
#define SMS_E164_MAX 16 /* "+" and at most 15 digits */

/* Filled by config_defaults/config_load from sms_channel.config. */
struct sms_config {
    char api_url[256];              /* sms.api_url */
    char account_sid[65];           /* sms.account_sid */
    char auth_token[129];           /* sms.auth_token (prefer auth_token_file) */
    char auth_token_file[512];      /* sms.auth_token_file */
    char from[SMS_E164_MAX + 1];    /* sms.from: E.164 sender */
    char messaging_service_sid[65]; /* sms.messaging_service_sid: MG... */
    char status_callback_url[256];  /* sms.status_callback_url: optional */
    char ca_file[512];              /* sms.ca_file */
    uint64_t timeout_ms;            /* sms.timeout */
    int64_t rate;                   /* sms.rate: messages per second for this sender */
    int64_t queue_max;              /* sms.queue_max: sends waiting for the rate limit */
};

extern const struct channel_ops sms_channel;

/* --- pure helpers, exposed for tests ---------------------------------- */

enum sms_encoding { SMS_GSM7 = 0, SMS_UCS2 };

struct sms_text_info {
    enum sms_encoding encoding;
    unsigned chars;    /* Unicode code points */
    unsigned units;    /* GSM-7 septets (extension characters count 2) or UTF-16 units */
    unsigned segments; /* 0 for empty text */
};

/*
 * Encoding and segment count of UTF-8 text as carriers count them: GSM-7
 * when every character is in the GSM 03.38 default alphabet or its
 * extension table (| ^ € { } [ ] ~ \ and form feed, 2 septets each), else
 * UCS-2 (UTF-16: a character outside the BMP counts 2 units). One segment
 * holds 160 septets / 70 units; a concatenated message 153 / 67 per segment,
 * and a 2-unit character is never split across two segments.
 * 0, or TDG_EINVAL_INPUT if text is not valid UTF-8.
 */
int sms_text_info(const char *text, size_t len, struct sms_text_info *out);

/* "+" then 8..15 digits, the first not 0. */
bool sms_e164_valid(const char *s);

/*
 * application/x-www-form-urlencoded encoding of len bytes of s into out
 * (WHATWG rules: [A-Za-z0-9*-._] kept, space as '+', every other byte as
 * %XX). Returns the encoded length (out NUL-terminated), or -ENOSPC if
 * out (cap bytes with the NUL) is too small.
 */
int sms_form_encode(const char *s, size_t len, char *out, size_t cap);

/*
 * Pure mapping of one Messages API answer to an outcome. body: the JSON
 * (the created message on 201, {"code":..,"message":..} on errors);
 * retry_after: the header value or NULL.
 */
void sms_map_answer(int status, const char *body, size_t body_len, const char *retry_after,
                    struct channel_outcome *out);

struct sms_stats {
    uint64_t sent, ok, retry, drop;
    uint64_t rate_waits; /* sends that waited for the token bucket */
    uint64_t queue_full; /* sends refused (retry) because the wait queue was full */
    unsigned queued;     /* waiting now */
};
void sms_get_stats(void *state, struct sms_stats *out);

#endif
