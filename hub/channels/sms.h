/*
 * sms.h - SMS channel over a Twilio-compatible Messages API (HTTPS, form
 * posts, Basic auth).
 *
 * A sender is one account (sms.account_sid + its auth token) and one
 * sender id (sms.from, an E.164 number, or sms.messaging_service_sid).
 * Several senders in one hub (channel.h, "several credentials"): the main
 * config is one; each *.conf in sms.tenants_dir is another in the same
 * sms.* keys, with sms.prefixes naming the destinations it serves ("+1,
 * +44"). The longest matching prefix wins; the main sender with no
 * sms.prefixes takes every number no other claims, otherwise such a number
 * is dropped "NoSenderForNumber: +<first digits>".
 *
 * Delivery status: with sms.status_poll set, every accepted message is
 * polled (GET .../Messages/{SID}.json) until a final status (delivered,
 * undelivered, failed, canceled, read) or sms.status_poll_for, and each
 * change is reported to channel_env.status with Twilio's ErrorCode.
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
    char inbound_url[256];          /* sms.inbound_url: the incoming-message webhook URL */
    char ca_file[512];              /* sms.ca_file */
    uint64_t timeout_ms;            /* sms.timeout */
    int64_t rate;                   /* sms.rate: messages per second for this sender */
    int64_t queue_max;              /* sms.queue_max: sends waiting for the rate limit */
    char prefixes[256];             /* sms.prefixes: destinations this sender serves */
    char tenants_dir[512];          /* sms.tenants_dir: more senders, one *.conf each */
    uint64_t status_poll_ms;        /* sms.status_poll: poll interval; 0 = no polling */
    uint64_t status_poll_for_ms;    /* sms.status_poll_for: give up on a message after */
    int64_t status_poll_max;        /* sms.status_poll_max: messages watched at once */
};

#define SMS_PREFIXES_MAX 32 /* destination prefixes per sender */

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
 * retry_after: the header value or NULL (seconds or an HTTP-date, measured
 * from now_ms, Unix ms).
 */
void sms_map_answer(int status, const char *body, size_t body_len, const char *retry_after,
                    int64_t now_ms, struct channel_outcome *out);

struct sms_stats {
    uint64_t sent, ok, retry, drop;
    uint64_t polls;          /* status requests made */
    uint64_t polled_final;   /* messages whose final status was seen */
    uint64_t poll_gave_up;   /* messages given up (status_poll_for, or status_poll_max full) */
    unsigned watching;       /* messages being polled now */
    uint64_t rate_waits; /* sends that waited for the token bucket */
    uint64_t queue_full; /* sends refused (retry) because the wait queue was full */
    unsigned queued;     /* waiting now */
};
/* Counters of the main sender. */
void sms_get_stats(void *state, struct sms_stats *out);
/* Counters of sender i (0 = main config, then the files in name order).
 * 0, or -ENOENT beyond the last. */
int sms_get_tenant_stats(void *state, unsigned i, struct sms_stats *out);

/*
 * Go on polling a message that a previous run of the hub was watching (the
 * records channel_env.watch kept): sid, sent by the sender of `account` in
 * this channel or its linked backup (sms_link_backup), until until_ms (Unix
 * ms); last_status: the status already recorded ("" or NULL for none; the
 * same status is not reported again). The first poll is due at once.
 * 0; -ENOENT no sender with that account (the record is stale); -ENOTSUP
 * polling is off for it; -ETIMEDOUT until_ms has passed; -ENOSPC
 * sms.status_poll_max reached; TDG_EINVAL_INPUT not a SID.
 */
int sms_watch_resume(void *state, const char *account, const char *sid, int64_t until_ms,
                     const char *last_status);

/*
 * The dispatch layer's backup provider (sms.backup.*) is a second SMS
 * channel instance: link it to the primary so that status callbacks and
 * incoming messages signed with the backup's credentials are accepted
 * (sms_status_callback / sms_inbound on the primary look at both) and
 * sms_watch_resume finds its senders. Both states must be sms_channel's;
 * backup may be NULL (unlinks). The backup must outlive the primary's use.
 */
void sms_link_backup(void *primary, void *backup);

/*
 * A Twilio message resource (GET .../Messages/{SID}.json) -> its status and
 * error code (0 when null). 0, or TDG_EINVAL_INPUT when the body has no
 * status. final is set for delivered, undelivered, failed, canceled, read.
 */
int sms_parse_status(const char *body, size_t len, char *status, size_t cap, int *error_code,
                     bool *final);

/* --- what the provider posts back (sms_hook.c) ------------------------------
 *
 * Delivery status callbacks (the StatusCallback URL) and incoming messages
 * (the number's webhook) are form posts signed with X-Twilio-Signature:
 * base64(HMAC-SHA1(auth token, the exact URL the provider posted to, then
 * every parameter's name and value, sorted by name)). */

#define SMS_FORM_MAX 48      /* parameters in one post (Twilio sends ~20) */
#define SMS_FORM_BUF 8192    /* their decoded names and values */

struct sms_form {
    unsigned n;
    const char *name[SMS_FORM_MAX], *value[SMS_FORM_MAX]; /* into buf */
    char buf[SMS_FORM_BUF];
};

/* Parse an application/x-www-form-urlencoded body. 0, -E2BIG (more than
 * SMS_FORM_MAX parameters) or -EINVAL (a bad %-escape, or over SMS_FORM_BUF). */
int sms_form_parse(const char *body, size_t len, struct sms_form *f);
/* The first value of name, or NULL. */
const char *sms_form_get(const struct sms_form *f, const char *name);
/* X-Twilio-Signature of url + f under auth_token into out (>= 29 bytes). */
int sms_signature(const char *auth_token, const char *url, const struct sms_form *f, char *out,
                  size_t cap);
/* Does signature match (compared in constant time)? */
bool sms_signature_valid(const char *auth_token, const char *url, const struct sms_form *f,
                         const char *signature);

enum sms_keyword { SMS_KEYWORD_NONE = 0, SMS_KEYWORD_OPT_OUT, SMS_KEYWORD_OPT_IN };
/* An incoming message that is only an opt-out word (STOP, STOPALL,
 * UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPTOUT) or opt-in word (START,
 * YES, UNSTOP), any case, blanks and a final '.'/'!' ignored. */
enum sms_keyword sms_keyword(const char *text);

/*
 * A status callback post (body, and the X-Twilio-Signature header or NULL)
 * for the channel in state: checked against the sender of its AccountSid
 * and that sender's sms.status_callback_url, then MessageSid, MessageStatus
 * and ErrorCode go to channel_env.status (idempotent there). Returns the
 * HTTP status to answer: 200 recorded, 403 signature missing or wrong (or
 * no sender with that account / callback URL), 400 fields missing; why says
 * what was wrong.
 */
int sms_status_callback(void *state, const char *body, size_t len, const char *signature,
                        char *why, size_t cap);

/*
 * An incoming message post, checked like a status callback against the
 * sender's sms.inbound_url. 200 with *from (E.164) and *kw set (NONE for an
 * ordinary reply), 403, or 400.
 */
int sms_inbound(void *state, const char *body, size_t len, const char *signature, char *from,
                size_t from_cap, enum sms_keyword *kw, char *why, size_t cap);

#endif
