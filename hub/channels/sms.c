/*
 * sms.c - the SMS channel: format (pure), a per-sender token bucket, send
 * over hub/http, map Twilio's answers.
 *
 * Per delivery: format checks the number (E.164), builds the text and its
 * segment count, and the form body To=..&From=..&Body=..[&ValidityPeriod=..]
 * [&StatusCallback=..] for POST {api_url}/2010-04-01/Accounts/{sid}/
 * Messages.json with Basic auth. send then waits for a token (1 per message,
 * sms.rate per second) in a FIFO, posts it, and maps the answer: 201 -> ok
 * (provider_id = the message SID), Twilio's error codes -> drop or retry.
 * Nothing here blocks; everything runs on the hub's loop.
 */
#include "sms.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <mbedtls/base64.h>

#include "error.h"
#include "http.h"
#include "log.h"

#define MOD "sms"

#define OFF(f) offsetof(struct sms_config, f), sizeof(((struct sms_config *)0)->f)

static const struct config_entry sms_config_table[] = {
    {"sms.api_url", CONFIG_STRING, "https://api.twilio.com", OFF(api_url),
     "Messages API base URL (Twilio or a compatible provider)", NULL, 0, 0},
    {"sms.account_sid", CONFIG_STRING, "", OFF(account_sid),
     "Account SID (AC...): the Basic auth user and part of the URL", NULL, 0, 0},
    {"sms.auth_token", CONFIG_STRING, "", OFF(auth_token),
     "Auth token (Basic auth password); prefer sms.auth_token_file", NULL, 0, 0},
    {"sms.auth_token_file", CONFIG_STRING, "", OFF(auth_token_file),
     "File holding the auth token (first line)", NULL, 0, 0},
    {"sms.from", CONFIG_STRING, "", OFF(from),
     "Sender number in E.164 (+15005550006); or set sms.messaging_service_sid", NULL, 0, 0},
    {"sms.messaging_service_sid", CONFIG_STRING, "", OFF(messaging_service_sid),
     "Messaging Service SID (MG...) to send through instead of (or with) sms.from", NULL, 0, 0},
    {"sms.status_callback_url", CONFIG_STRING, "", OFF(status_callback_url),
     "URL the provider posts delivery status to (StatusCallback); empty = none", NULL, 0, 0},
    {"sms.inbound_url", CONFIG_STRING, "", OFF(inbound_url),
     "The incoming-message webhook URL as set at the provider (it signs posts with it); "
     "STOP/START replies posted there opt a number out and in; empty = none", NULL, 0, 0},
        {"sms.ca_file", CONFIG_STRING, "", OFF(ca_file),
     "CA bundle to verify the API server (empty: system CAs)", NULL, 0, 0},
    {"sms.timeout", CONFIG_DURATION, "10s", OFF(timeout_ms),
     "Whole-request timeout; a timed-out request is retried", NULL, 100, 600000},
    {"sms.rate", CONFIG_INT, "1", OFF(rate),
     "Messages per second from this sender (Twilio long codes: 1)", NULL, 1, 1000},
    {"sms.queue_max", CONFIG_INT, "1000", OFF(queue_max),
     "Sends waiting for the rate limit; beyond, a send is retried later", NULL, 1, 100000},
    {"sms.prefixes", CONFIG_STRING, "", OFF(prefixes),
     "Destination prefixes this sender serves (+1, +44, +4915), longest match wins; required "
     "in a sms.tenants_dir file; in the main config empty = every number no file claims",
     NULL, 0, 0},
    {"sms.tenants_dir", CONFIG_STRING, "", OFF(tenants_dir),
     "Directory of more senders: each *.conf is one account/sender in these sms.* keys, with "
     "sms.prefixes",
     NULL, 0, 0},
    {"sms.status_poll", CONFIG_DURATION, "0", OFF(status_poll_ms),
     "Poll each accepted message's delivery status this often until it is final (for hubs "
     "that cannot take the status callback); 0 = no polling",
     NULL, 0, 86400000},
    {"sms.status_poll_for", CONFIG_DURATION, "2h", OFF(status_poll_for_ms),
     "Stop polling a message whose status is not final after this long", NULL, 1000, 604800000},
    {"sms.status_poll_max", CONFIG_INT, "10000", OFF(status_poll_max),
     "Messages polled at once; beyond, new messages are not polled (counted)", NULL, 1,
     1000000},
};

#define ELLIPSIS "..." /* GSM-7: a U+2026 would force UCS-2 */
#define ELLIPSIS_LEN 3
#define TOKEN_MILLI 1000u /* the bucket counts thousandths of a message */
#define POLL_INFLIGHT_MAX 8 /* status requests in flight per sender */
#define SID_MAX 64

static const char *const capture_headers[] = {"retry-after", NULL};

/* --- UTF-8 ---------------------------------------------------------------- */

/* Decode one code point at s[*i] (n bytes total). Strict: no overlongs, no
 * surrogates, nothing above U+10FFFF. Returns the code point, or -1. */
static long utf8_next(const unsigned char *s, size_t n, size_t *i)
{
    unsigned char c = s[*i];
    long cp;
    size_t need;
    long min;
    if (c < 0x80) {
        (*i)++;
        return c;
    } else if ((c & 0xe0) == 0xc0) {
        cp = c & 0x1f;
        need = 1;
        min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        cp = c & 0x0f;
        need = 2;
        min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
        cp = c & 0x07;
        need = 3;
        min = 0x10000;
    } else {
        return -1;
    }
    if (n - *i <= need) {
        return -1;
    }
    for (size_t k = 1; k <= need; k++) {
        unsigned char cc = s[*i + k];
        if ((cc & 0xc0) != 0x80) {
            return -1;
        }
        cp = (cp << 6) | (cc & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        return -1;
    }
    *i += need + 1;
    return cp;
}

/* --- GSM 03.38 ------------------------------------------------------------ */

/* The default alphabet's characters outside ASCII (ASCII is handled by
 * gsm_cost directly). */
static const unsigned short gsm_basic_non_ascii[] = {
    0x00a1, 0x00a3, 0x00a4, 0x00a5, 0x00a7, 0x00bf, 0x00c4, 0x00c5, 0x00c6, 0x00c7,
    0x00c9, 0x00d1, 0x00d6, 0x00d8, 0x00dc, 0x00df, 0x00e0, 0x00e4, 0x00e5, 0x00e6,
    0x00e8, 0x00e9, 0x00ec, 0x00f1, 0x00f2, 0x00f6, 0x00f8, 0x00f9, 0x00fc, 0x0393,
    0x0394, 0x0398, 0x039b, 0x039e, 0x03a0, 0x03a3, 0x03a6, 0x03a8, 0x03a9,
};

/* Septets cp costs in GSM-7: 1 (default alphabet), 2 (extension table:
 * ESC + code), or 0 when it has no GSM-7 form at all. */
static unsigned gsm_cost(long cp)
{
    if (cp < 0x80) {
        switch (cp) {
        case '\n':
        case '\r':
            return 1;
        case '\f':
        case '^':
        case '{':
        case '}':
        case '\\':
        case '[':
        case '~':
        case ']':
        case '|':
            return 2;
        case '`':
            return 0;
        default:
            return cp >= 0x20 && cp < 0x7f ? 1 : 0;
        }
    }
    if (cp == 0x20ac) { /* € */
        return 2;
    }
    size_t lo = 0, hi = sizeof(gsm_basic_non_ascii) / sizeof(gsm_basic_non_ascii[0]);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (gsm_basic_non_ascii[mid] == cp) {
            return 1;
        }
        if (gsm_basic_non_ascii[mid] < cp) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return 0;
}

static unsigned ucs2_cost(long cp)
{
    return cp > 0xffff ? 2 : 1;
}

/* Is the whole text GSM-7? Assumes valid UTF-8. */
static bool all_gsm(const char *text, size_t len)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < len) {
        long cp = utf8_next(s, len, &i);
        if (cp < 0 || gsm_cost(cp) == 0) {
            return false;
        }
    }
    return true;
}

int sms_text_info(const char *text, size_t len, struct sms_text_info *out)
{
    memset(out, 0, sizeof(*out));
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    bool gsm = true;
    while (i < len) {
        long cp = utf8_next(s, len, &i);
        if (cp < 0) {
            return TDG_EINVAL_INPUT;
        }
        gsm = gsm && gsm_cost(cp) != 0;
        out->chars++;
    }
    out->encoding = gsm ? SMS_GSM7 : SMS_UCS2;
    unsigned single = gsm ? 160 : 70;
    unsigned multi = gsm ? 153 : 67;
    unsigned segs = 0, cur = 0, total = 0;
    i = 0;
    while (i < len) {
        long cp = utf8_next(s, len, &i);
        unsigned c = gsm ? gsm_cost(cp) : ucs2_cost(cp);
        total += c;
        /* A 2-unit character (ESC pair, surrogate pair) never straddles a
         * segment boundary. */
        if (segs == 0 || cur + c > multi) {
            segs++;
            cur = 0;
        }
        cur += c;
    }
    out->units = total;
    out->segments = total == 0 ? 0 : (total <= single ? 1 : segs);
    return 0;
}

bool sms_e164_valid(const char *s)
{
    if (!s || s[0] != '+' || s[1] < '1' || s[1] > '9') {
        return false;
    }
    size_t n = 0;
    for (const char *p = s + 1; *p; p++) {
        if (*p < '0' || *p > '9' || ++n > 15) {
            return false;
        }
    }
    return n >= 8;
}

/* --- form encoding --------------------------------------------------------- */

static bool form_keep(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '*' ||
           c == '-' || c == '.' || c == '_';
}

static size_t form_len_byte(unsigned char c)
{
    return form_keep(c) || c == ' ' ? 1 : 3;
}

int sms_form_encode(const char *s, size_t len, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        size_t need = form_len_byte(c);
        if (o + need + 1 > cap) {
            return -ENOSPC;
        }
        if (form_keep(c)) {
            out[o++] = (char)c;
        } else if (c == ' ') {
            out[o++] = '+';
        } else {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 0xf];
        }
    }
    if (o + 1 > cap) {
        return -ENOSPC;
    }
    out[o] = '\0';
    return (int)o;
}

/* --- state ------------------------------------------------------------------- */

struct sms;

enum call_state { CALL_DEFERRED, CALL_QUEUED, CALL_INFLIGHT };

/* One send in flight: a deferred outcome, waiting for a token, or posted. */
struct sms_call {
    struct channel_call base; /* first: the shared bookkeeping (its timer: CALL_DEFERRED) */
    struct sms_call *qnext;   /* wait queue */
    struct sms *s;
    enum call_state state;
    char *body;        /* CALL_QUEUED: the form body to post */
    size_t body_len;
    uint64_t attempt; /* the hub's attempt id: logs name it, never the number (PII) */
    char info[CHANNEL_REASON_MAX]; /* "gsm7 segments=1" for the ok outcome */
};

/* A message whose delivery status is polled. */
struct sms_watch {
    struct sms_watch *prev, *next; /* every watch */
    struct sms_watch *qnext;       /* the poll FIFO (not in flight), by due time */
    struct sms *s;
    uint64_t due_ms, until_ms;     /* clock_mono_ms */
    int64_t until_wall_ms;         /* the same deadline, Unix ms (what is recorded) */
    char sid[SID_MAX + 1];
    char last[24];                 /* last status reported */
};

struct sms {
    struct sms_config cfg;
    loop_t *loop;
    http_t *http;
    channel_status_fn status; /* env's delivery status sink */
    void *status_arg;
    channel_watch_fn watch; /* env's durable record of the watched messages */
    void *watch_arg;

    char prefix_buf[sizeof(((struct sms_config *)0)->prefixes)];
    const char *prefixes[SMS_PREFIXES_MAX]; /* into prefix_buf */
    unsigned nprefixes;

    struct sms_watch *watches;
    struct sms_watch *whead, *wtail;
    unsigned nwatch, polls_inflight;
    uint64_t poll_timer;
    char poll_base[512]; /* {api}/2010-04-01/Accounts/{sid}/Messages/ */

    char auth_header[sizeof(((struct channel_request *)0)->headers[0])];
    char url[512];

    /* token bucket, in thousandths of a message, on a fresh monotonic clock
     * (clock_mono_ms, not loop_now_ms: sends made late in a long loop turn
     * would otherwise be credited with time that has not passed) */
    uint64_t tokens, cap;
    uint64_t refill_ms;
    uint64_t pause_until_ms; /* a 429 pauses the sender */
    uint64_t timer_id;       /* wakes the queue when the next token is due */

    struct channel_calls calls;
    struct sms_call *qhead, *qtail;
    unsigned nqueued;

    struct channel_request req; /* scratch; single-threaded */
    char text[2 * PROTO_MAX_WIRE + 2];
    char post[640];

    struct sms_stats st;
    bool logged_auth, logged_config, logged_queue_full, logged_paused;
    bool logged_watch_full, logged_poll;
};

/* --- format ------------------------------------------------------------------- */



/* Append "name=value", preceded by '&' when amp, to buf at *off. */
static int put_param(char *buf, size_t cap, size_t *off, bool amp, const char *name,
                     const char *value)
{
    int n = snprintf(buf + *off, cap - *off, "%s%s=", amp ? "&" : "", name);
    if (n < 0 || (size_t)n >= cap - *off) {
        return -ENOSPC;
    }
    *off += (size_t)n;
    int m = sms_form_encode(value, strlen(value), buf + *off, cap - *off);
    if (m < 0) {
        return m;
    }
    *off += (size_t)m;
    return 0;
}

/* Where to cut text so it fits Twilio's 1600-character limit (counted as
 * the fake and Twilio count: characters for GSM-7, UTF-16 units for UCS-2)
 * and, form-encoded, room bytes. Returns the byte length that fits whole,
 * or, when it does not, the cut before which ELLIPSIS still fits, with
 * *cut = true. */
static size_t fit_text(const char *text, size_t len, size_t room, bool *cut)
{
    const unsigned char *s = (const unsigned char *)text;
    bool gsm = all_gsm(text, len);
    size_t limit_all = SMS_BODY_MAX_CHARS;
    size_t count = 0, enc = 0, i = 0;
    size_t last_fit = 0; /* prefix length that leaves room for the ellipsis */
    *cut = false;
    while (i < len) {
        size_t start = i;
        long cp = utf8_next(s, len, &i);
        size_t c = gsm ? 1 : ucs2_cost(cp);
        size_t e = 0;
        for (size_t k = start; k < i; k++) {
            e += form_len_byte(s[k]);
        }
        if (count + c <= limit_all - ELLIPSIS_LEN && enc + e + ELLIPSIS_LEN <= room) {
            last_fit = i;
        }
        count += c;
        enc += e;
        if (count > limit_all || enc > room) {
            *cut = true;
            return last_fit;
        }
    }
    return len;
}

/* URL, method and headers: the same for every message of this channel. */
static int set_envelope(const struct sms *s, struct channel_request *req)
{
    snprintf(req->url, sizeof(req->url), "%s", s->url);
    snprintf(req->method, sizeof(req->method), "POST");
    req->nheaders = 0;
    req->authorization[0] = '\0';
    int rc = 0;
    rc |= channel_add_header(req, "%s", s->auth_header);
    rc |= channel_add_header(req, "content-type: application/x-www-form-urlencoded");
    rc |= channel_add_header(req, "accept: application/json");
    return rc;
}

static int sms_format(void *state, const struct channel_delivery *d, struct channel_request *req,
                      struct channel_outcome *out)
{
    struct sms *s = state;
    const struct notification *n = d->n;
    memset(out, 0, sizeof(*out));
    channel_request_reset(req);

    const char *to = d->dev ? d->dev->token : NULL;
    if (!sms_e164_valid(to)) {
        return channel_drop(out, "invalid_number", CHANNEL_DEVICE_NONE, TDG_EINVAL_INPUT);
    }

    /* The text: title, a line break, body. */
    size_t tl = n->title ? strlen(n->title) : 0;
    size_t bl = n->body ? strlen(n->body) : 0;
    if (tl + bl == 0) {
        return channel_drop(out, "no_content", CHANNEL_DEVICE_NONE, TDG_EINVAL_INPUT);
    }
    size_t len = tl + (tl && bl ? 1 : 0) + bl;
    if (len >= sizeof(s->text)) {
        /* twice the wire limit: only text proto_parse refuses gets here */
        return channel_drop(out, "too_large", CHANNEL_DEVICE_NONE, TDG_ETOOBIG);
    }
    if (tl) {
        memcpy(s->text, n->title, tl);
    }
    if (tl && bl) {
        s->text[tl] = '\n';
    }
    if (bl) {
        memcpy(s->text + len - bl, n->body, bl);
    }
    s->text[len] = '\0';
    struct sms_text_info info;
    if (sms_text_info(s->text, len, &info) < 0) {
        return channel_drop(out, "bad_utf8", CHANNEL_DEVICE_NONE, TDG_EINVAL_INPUT);
    }

    /* The parameters after Body first, so Body knows how much room is left. */
    size_t post = 0;
    s->post[0] = '\0';
    int rc = 0;
    if (n->ttl_s > 0) {
        int64_t vp = n->ttl_s;
        vp = vp < SMS_VALIDITY_MIN_S ? SMS_VALIDITY_MIN_S : vp;
        vp = vp > SMS_VALIDITY_MAX_S ? SMS_VALIDITY_MAX_S : vp;
        char num[24];
        snprintf(num, sizeof(num), "%" PRId64, vp);
        rc = put_param(s->post, sizeof(s->post), &post, true, "ValidityPeriod", num);
    }
    if (rc == 0 && s->cfg.status_callback_url[0]) {
        rc = put_param(s->post, sizeof(s->post), &post, true, "StatusCallback",
                       s->cfg.status_callback_url);
    }

    size_t off = 0;
    char *b = req->body;
    size_t bcap = sizeof(req->body);
    if (rc == 0) {
        rc = put_param(b, bcap, &off, false, "To", to);
    }
    if (rc == 0 && s->cfg.from[0]) {
        rc = put_param(b, bcap, &off, true, "From", s->cfg.from);
    }
    if (rc == 0 && s->cfg.messaging_service_sid[0]) {
        rc = put_param(b, bcap, &off, true, "MessagingServiceSid", s->cfg.messaging_service_sid);
    }
    if (rc == 0) {
        rc = put_param(b, bcap, &off, true, "Body", "");
    }
    if (rc < 0 || off + post + 1 + ELLIPSIS_LEN > bcap) {
        return channel_drop(out, "too_large", CHANNEL_DEVICE_NONE, TDG_ETOOBIG);
    }
    bool cut = false;
    size_t room = bcap - 1 - off - post;
    size_t keep = fit_text(s->text, len, room, &cut);
    if (cut) {
        memcpy(s->text + keep, ELLIPSIS, ELLIPSIS_LEN);
        len = keep + ELLIPSIS_LEN;
        s->text[len] = '\0';
        sms_text_info(s->text, len, &info); /* the encoding may have changed */
    }
    int m = sms_form_encode(s->text, len, b + off, bcap - off);
    if (m < 0 || off + (size_t)m + post >= bcap) {
        return channel_drop(out, "too_large", CHANNEL_DEVICE_NONE, TDG_ETOOBIG);
    }
    off += (size_t)m;
    memcpy(b + off, s->post, post);
    off += post;
    b[off] = '\0';
    req->body_len = off;

    if (set_envelope(s, req) != 0) {
        return channel_drop(out, "too_large", CHANNEL_DEVICE_NONE, TDG_ETOOBIG);
    }
    snprintf(out->reason, sizeof(out->reason), "%s segments=%u%s",
             info.encoding == SMS_GSM7 ? "gsm7" : "ucs2", info.segments, cut ? " truncated" : "");
    return 0;
}

/* --- answers ------------------------------------------------------------------- */

/* Copy src to dst (cap bytes, always terminated) with every phone number
 * in it - 7 or more digits, with an optional "+" and the separators " -()."
 * between digits - replaced by "[number]". Shorter runs (error codes such
 * as 21211) stay. */
static void sms_redact_numbers(char *dst, size_t cap, const char *src)
{
    size_t o = 0;
    if (cap == 0) {
        return;
    }
    for (size_t i = 0; src[i] && o + 1 < cap;) {
        bool start = (src[i] >= '0' && src[i] <= '9') ||
                     (src[i] == '+' && src[i + 1] >= '0' && src[i + 1] <= '9');
        if (!start) {
            dst[o++] = src[i++];
            continue;
        }
        size_t j = src[i] == '+' ? i + 1 : i, end = j;
        unsigned digits = 0;
        while (src[j]) {
            if (src[j] >= '0' && src[j] <= '9') {
                digits++;
                end = ++j;
            } else if (strchr(" -().", src[j]) && src[j + 1] >= '0' && src[j + 1] <= '9') {
                j++;
            } else {
                break;
            }
        }
        if (digits >= 7) {
            static const char mark[] = "[number]";
            for (size_t k = 0; mark[k] && o + 1 < cap; k++) {
                dst[o++] = mark[k];
            }
        } else {
            for (size_t k = i; k < end && o + 1 < cap; k++) {
                dst[o++] = src[k];
            }
        }
        i = end;
    }
    dst[o] = '\0';
}

void sms_map_answer(int status, const char *body, size_t body_len, const char *retry_after,
                    int64_t now_ms, struct channel_outcome *out)
{
    memset(out, 0, sizeof(*out));
    out->status = status;
    cJSON *j = body && body_len > 0 ? cJSON_ParseWithLength(body, body_len) : NULL;

    if (status == 200 || status == 201) {
        out->result = CHANNEL_OK;
        const cJSON *sid = cJSON_GetObjectItemCaseSensitive(j, "sid");
        if (cJSON_IsString(sid)) {
            snprintf(out->provider_id, sizeof(out->provider_id), "%s", sid->valuestring);
        }
        cJSON_Delete(j);
        return;
    }

    long code = 0;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "code");
    if (cJSON_IsNumber(c) && c->valuedouble > 0 && c->valuedouble < 1e9) {
        code = (long)c->valuedouble;
    }
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "message");
    const char *msg = cJSON_IsString(m) ? m->valuestring : "";

    if (code == 21610) {
        /* The recipient texted STOP: permanent until they text START
         * (store_sms_opt re-enables the number then). */
        out->result = CHANNEL_DROP;
        out->device_action = CHANNEL_DEVICE_DISABLE;
        snprintf(out->reason, sizeof(out->reason), "opted_out:21610");
    } else if (code == 21211) {
        out->result = CHANNEL_DROP;
        snprintf(out->reason, sizeof(out->reason), "invalid_number:21211");
    } else if (code == 21614) {
        out->result = CHANNEL_DROP;
        snprintf(out->reason, sizeof(out->reason), "not_mobile:21614");
    } else if (code == 20003 || status == 401) {
        out->result = CHANNEL_DROP;
        snprintf(out->reason, sizeof(out->reason), "auth_failed:%ld", code ? code : 20003L);
    } else if (code == 20429 || status == 429) {
        out->result = CHANNEL_RETRY;
        out->retry_after_ms = channel_retry_after_ms(retry_after, now_ms);
        snprintf(out->reason, sizeof(out->reason), "rate_limited:%ld", code ? code : 20429L);
    } else if (code == 21611 || code == 14107) {
        /* the sender's queue at the provider is full / send rate exceeded */
        out->result = CHANNEL_RETRY;
        out->retry_after_ms = channel_retry_after_ms(retry_after, now_ms);
        snprintf(out->reason, sizeof(out->reason), "rate_limited:%ld", code);
    } else if (status >= 500) {
        out->result = CHANNEL_RETRY;
        out->retry_after_ms = channel_retry_after_ms(retry_after, now_ms);
        snprintf(out->reason, sizeof(out->reason), "server_error:%ld", code ? code : (long)status);
    } else if (status >= 400) {
        out->result = CHANNEL_DROP;
        if (code) {
            /* The provider's text may quote the number ("The 'To' number
             * +1555... is not valid"): reasons are stored and logged. */
            char clean[CHANNEL_REASON_MAX - 32]; /* "twilio:<code> " fits beside it */
            sms_redact_numbers(clean, sizeof(clean), msg);
            snprintf(out->reason, sizeof(out->reason), "twilio:%ld %s", code, clean);
        } else {
            snprintf(out->reason, sizeof(out->reason), "HTTP %d", status);
        }
    } else {
        /* 1xx/3xx/other 2xx: not a Messages API answer; try again later */
        out->result = CHANNEL_RETRY;
        snprintf(out->reason, sizeof(out->reason), "HTTP %d", status);
    }
    cJSON_Delete(j);
}

/* --- token bucket ------------------------------------------------------------------- */

static void bucket_refill(struct sms *s, uint64_t now)
{
    if (now > s->refill_ms) {
        uint64_t add = (now - s->refill_ms) * (uint64_t)s->cfg.rate; /* milli per ms */
        s->tokens = s->tokens + add > s->cap ? s->cap : s->tokens + add;
        s->refill_ms = now;
    }
}

/* ms until a whole token is there (0 = now). */
static uint64_t bucket_wait(struct sms *s, uint64_t now)
{
    bucket_refill(s, now);
    uint64_t wait = 0;
    if (s->tokens < TOKEN_MILLI) {
        uint64_t r = (uint64_t)s->cfg.rate;
        wait = (TOKEN_MILLI - s->tokens + r - 1) / r;
    }
    if (s->pause_until_ms > now && s->pause_until_ms - now > wait) {
        wait = s->pause_until_ms - now;
    }
    return wait;
}

/* --- send ------------------------------------------------------------------------------ */

/* The calls' release: a queued call holds its body. */
static void call_free(struct channel_call *base)
{
    struct sms_call *c = (struct sms_call *)base;
    free(c->body);
    free(c);
}

static void finish(struct sms_call *c, const struct channel_outcome *o)
{
    channel_call_finish(&c->base, o);
}

/* Report o for c from a later loop turn (done must not run inside send). */
static int defer(struct sms_call *c, const struct channel_outcome *o)
{
    c->state = CALL_DEFERRED;
    return channel_call_defer(&c->base, o);
}


/* --- delivery status by polling ------------------------------------------------------ */

static const char *const final_states[] = {"delivered", "undelivered", "failed", "canceled",
                                           "read"};

int sms_parse_status(const char *body, size_t len, char *status, size_t cap, int *error_code,
                     bool *final)
{
    *error_code = 0;
    *final = false;
    if (cap) {
        status[0] = '\0';
    }
    cJSON *j = body && len > 0 ? cJSON_ParseWithLength(body, len) : NULL;
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "status");
    const cJSON *ec = cJSON_GetObjectItemCaseSensitive(j, "error_code");
    int rc = TDG_EINVAL_INPUT;
    if (cJSON_IsString(st) && st->valuestring[0] && strlen(st->valuestring) < cap) {
        snprintf(status, cap, "%s", st->valuestring);
        if (cJSON_IsNumber(ec) && ec->valuedouble > 0 && ec->valuedouble < 1e9) {
            *error_code = (int)ec->valuedouble;
        } else if (cJSON_IsString(ec) && ec->valuestring[0] >= '0' && ec->valuestring[0] <= '9') {
            /* some compatible providers send it as a string */
            *error_code = (int)strtol(ec->valuestring, NULL, 10);
        }
        for (size_t i = 0; i < sizeof(final_states) / sizeof(final_states[0]); i++) {
            *final = *final || strcmp(status, final_states[i]) == 0;
        }
        rc = 0;
    }
    cJSON_Delete(j);
    return rc;
}

/* Stop watching w; forget: the watch ended (final status, 404, gave up),
 * so its durable record goes too (not on destroy: it survives a restart). */
static void watch_free(struct sms *s, struct sms_watch *w, bool forget)
{
    if (forget && s->watch) {
        s->watch(s->watch_arg, "sms", w->sid, s->cfg.account_sid, 0);
    }
    if (w->prev) {
        w->prev->next = w->next;
    } else {
        s->watches = w->next;
    }
    if (w->next) {
        w->next->prev = w->prev;
    }
    s->nwatch--;
    free(w);
}

static void watch_push(struct sms *s, struct sms_watch *w, uint64_t now)
{
    w->due_ms = now + s->cfg.status_poll_ms;
    w->qnext = NULL;
    if (s->wtail) {
        s->wtail->qnext = w;
    } else {
        s->whead = w;
    }
    s->wtail = w;
}

static void poll_arm(struct sms *s, uint64_t now);

static bool sid_valid(const char *sid)
{
    size_t n = strlen(sid);
    bool ok = n > 0 && n <= SID_MAX;
    for (size_t i = 0; ok && i < n; i++) {
        char ch = sid[i];
        ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
    }
    return ok;
}

/* Watch sid until until_wall_ms (Unix ms), first poll after first_ms; last:
 * the status already known ("" for none). 0, -ENOSPC (status_poll_max
 * reached) or -ENOMEM; both counted as given up. */
static int watch_start(struct sms *s, const char *sid, int64_t until_wall_ms, uint64_t first_ms,
                       const char *last)
{
    if (s->nwatch >= (unsigned)s->cfg.status_poll_max) {
        if (!s->logged_watch_full) {
            LOG_WARN(MOD, "status polling full (%u messages): new messages are not polled",
                     s->nwatch);
            s->logged_watch_full = true;
        }
        s->st.poll_gave_up++;
        return -ENOSPC;
    }
    struct sms_watch *w = calloc(1, sizeof(*w));
    if (!w) {
        s->st.poll_gave_up++;
        return -ENOMEM;
    }
    w->s = s;
    snprintf(w->sid, sizeof(w->sid), "%s", sid);
    snprintf(w->last, sizeof(w->last), "%s", last ? last : "");
    uint64_t now = clock_mono_ms();
    int64_t left = until_wall_ms - clock_wall_ms();
    w->until_ms = now + (left > 0 ? (uint64_t)left : 0);
    w->until_wall_ms = until_wall_ms;
    w->next = s->watches;
    if (s->watches) {
        s->watches->prev = w;
    }
    s->watches = w;
    s->nwatch++;
    if (first_ms >= s->cfg.status_poll_ms) {
        watch_push(s, w, now);
    } else {
        /* due now: the front keeps the FIFO ordered by due time */
        w->due_ms = now + first_ms;
        w->qnext = s->whead;
        s->whead = w;
        if (!s->wtail) {
            s->wtail = w;
        }
        if (s->poll_timer) { /* armed for a later head */
            loop_timer_cancel(s->loop, s->poll_timer);
            s->poll_timer = 0;
        }
    }
    poll_arm(s, now);
    return 0;
}

/* Follow sid's status from now on (after a 201), recorded through the
 * env's watch sink so a restarted hub goes on (sms_watch_resume). */
static void watch_add(struct sms *s, const char *sid)
{
    if (!s->cfg.status_poll_ms || !sid[0]) {
        return;
    }
    if (!sid_valid(sid)) {
        LOG_WARN(MOD, "message id '%.32s' is not a SID; its status is not polled", sid);
        return;
    }
    int64_t until = clock_wall_ms() + (int64_t)s->cfg.status_poll_for_ms;
    if (watch_start(s, sid, until, s->cfg.status_poll_ms, "") == 0 && s->watch) {
        s->watch(s->watch_arg, "sms", sid, s->cfg.account_sid, until);
    }
}

int sms_watch_resume(void *state, const char *account, const char *sid, int64_t until_ms,
                     const char *last_status)
{
    if (!account || !sid || !sid_valid(sid)) {
        return TDG_EINVAL_INPUT;
    }
    /* the sender with that account, in this set or its peer (the backup) */
    for (void *set = state; set; set = set == state ? channel_set_peer(state) : NULL) {
        for (unsigned i = 0; i < channel_set_count(set); i++) {
            struct sms *s = channel_set_tenant(set, i);
            if (strcmp(s->cfg.account_sid, account) != 0) {
                continue;
            }
            if (!s->cfg.status_poll_ms || !s->http) {
                return -ENOTSUP;
            }
            if (until_ms <= clock_wall_ms()) {
                return -ETIMEDOUT;
            }
            /* the status may have moved while the hub was down: poll at once */
            return watch_start(s, sid, until_ms, 0, last_status);
        }
    }
    return -ENOENT;
}

static void report_status(struct sms *s, struct sms_watch *w, const char *status, int code)
{
    if (strcmp(w->last, status) == 0) {
        return;
    }
    snprintf(w->last, sizeof(w->last), "%s", status);
    LOG_DEBUG(MOD, "sid=%s status=%s error_code=%d", w->sid, status, code);
    if (s->status) {
        s->status(s->status_arg, "sms", w->sid, status, code);
    }
}

static void poll_pump(struct sms *s);

static void on_poll(void *ctx, const struct http_response *resp)
{
    struct sms_watch *w = ctx;
    struct sms *s = w->s;
    s->polls_inflight--;
    uint64_t now = clock_mono_ms();
    char status[24];
    int code = 0;
    bool final = false;
    if (resp->error == 0 && resp->status == 200 &&
        sms_parse_status(resp->body, resp->body_len, status, sizeof(status), &code, &final) == 0) {
        report_status(s, w, status, code);
        s->logged_poll = false;
    } else if (resp->error == 0 && resp->status == 404) {
        /* the provider forgot the message (deleted, or another account) */
        LOG_WARN(MOD, "sid=%s: status poll answered 404; not polled again", w->sid);
        final = true;
        s->st.poll_gave_up++;
        watch_free(s, w, true);
        poll_pump(s);
        return;
    } else if (!s->logged_poll) {
        LOG_WARN(MOD, "status poll failed (%s); polling goes on",
                 resp->error ? resp->error_text : "unexpected answer");
        s->logged_poll = true;
    }
    if (final) {
        s->st.polled_final++;
        watch_free(s, w, true);
    } else if (now >= w->until_ms) {
        LOG_INFO(MOD, "sid=%s: no final status after %" PRIu64 " s (last: %s); not polled again",
                 w->sid, s->cfg.status_poll_for_ms / 1000, w->last[0] ? w->last : "none");
        s->st.poll_gave_up++;
        watch_free(s, w, true);
    } else {
        watch_push(s, w, now);
    }
    poll_pump(s);
}

/* Start the polls that are due, at most POLL_INFLIGHT_MAX at once. */
static void poll_pump(struct sms *s)
{
    uint64_t now = clock_mono_ms();
    while (s->whead && s->whead->due_ms <= now && s->polls_inflight < POLL_INFLIGHT_MAX) {
        struct sms_watch *w = s->whead;
        s->whead = w->qnext;
        if (!s->whead) {
            s->wtail = NULL;
        }
        struct channel_request *r = &s->req;
        snprintf(r->method, sizeof(r->method), "GET");
        r->nheaders = 0;
        r->authorization[0] = '\0';
        r->body_len = 0;
        r->body[0] = '\0';
        int rc = snprintf(r->url, sizeof(r->url), "%s%s.json", s->poll_base, w->sid) < 0 ? -EINVAL : 0;
        rc |= channel_add_header(r, "%s", s->auth_header);
        rc |= channel_add_header(r, "accept: application/json");
        if (rc == 0) {
            rc = http_request(s->http, r, NULL, on_poll, w);
        }
        if (rc < 0) {
            watch_push(s, w, now); /* busy or out of memory: next round */
            break;
        }
        s->polls_inflight++;
        s->st.polls++;
    }
    poll_arm(s, now);
}

static void on_poll_timer(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    struct sms *s = arg;
    s->poll_timer = 0;
    poll_pump(s);
}

static void poll_arm(struct sms *s, uint64_t now)
{
    if (s->poll_timer || !s->whead || s->polls_inflight >= POLL_INFLIGHT_MAX) {
        return; /* an answer pumps again */
    }
    uint64_t wait = s->whead->due_ms > now ? s->whead->due_ms - now : 0;
    s->poll_timer = loop_timer_add(s->loop, wait, on_poll_timer, s);
}

static void on_answer(void *ctx, const struct http_response *resp)
{
    struct sms_call *c = ctx;
    struct sms *s = c->s;
    struct channel_outcome o;

    if (resp->error < 0) {
        /* No complete answer (refused, reset, timeout): the message may or
         * may not have been queued at the provider; retry (at least once). */
        channel_no_answer(&o, resp);
        LOG_DEBUG(MOD, "attempt=%" PRIu64 " transport error: %s", c->attempt, o.reason);
        finish(c, &o);
        return;
    }
    sms_map_answer(resp->status, resp->body, resp->body_len,
                   http_response_header(resp, "retry-after"), clock_wall_ms(), &o);
    if (o.result == CHANNEL_OK) {
        snprintf(o.reason, sizeof(o.reason), "%s", c->info);
        s->logged_auth = false;
        s->logged_config = false;
        watch_add(s, o.provider_id);
    } else if (strncmp(o.reason, "auth_failed", 11) == 0 && !s->logged_auth) {
        LOG_ERROR(MOD,
                  "the provider refused the credentials (%s): check sms.account_sid and "
                  "sms.auth_token",
                  o.reason);
        s->logged_auth = true;
    } else if ((strncmp(o.reason, "twilio:20404", 12) == 0 ||
                strncmp(o.reason, "twilio:21606", 12) == 0 ||
                strncmp(o.reason, "twilio:21603", 12) == 0) &&
               !s->logged_config) {
        LOG_ERROR(MOD,
                  "the provider refused the sender or account (%s): check sms.api_url, "
                  "sms.account_sid, sms.from",
                  o.reason);
        s->logged_config = true;
    }
    if (resp->status == 429 && o.retry_after_ms > 0) {
        /* The account is over its rate: hold every message of this sender,
         * not only this one. */
        uint64_t until = clock_mono_ms() + o.retry_after_ms;
        if (until > s->pause_until_ms) {
            s->pause_until_ms = until;
        }
        if (!s->logged_paused) {
            LOG_WARN(MOD, "rate limited by the provider: sender paused for %" PRIu64 " ms",
                     o.retry_after_ms);
            s->logged_paused = true;
        }
    }
    LOG_DEBUG(MOD, "attempt=%" PRIu64 " status=%d result=%s reason=%s sid=%s", c->attempt,
              o.status, channel_result_name(o.result), o.reason, o.provider_id);
    finish(c, &o);
}

/* Post c->body now. 0 or a negative error from http_request. */
static int post(struct sms *s, struct sms_call *c, const char *body, size_t len)
{
    struct channel_request *r = &s->req;
    if (body != r->body) {
        /* a queued message: the scratch request may hold a dropped format */
        set_envelope(s, r);
        memcpy(r->body, body, len);
    }
    r->body_len = len;
    struct http_req_opts ro = {.capture = capture_headers};
    int rc = http_request(s->http, r, &ro, on_answer, c);
    if (rc == 0) {
        c->state = CALL_INFLIGHT;
    }
    return rc;
}

static void arm(struct sms *s, uint64_t wait);

/* Post queued messages while tokens last. Runs from a timer only. */
static void pump(struct sms *s)
{
    uint64_t now = clock_mono_ms();
    while (s->qhead) {
        uint64_t wait = bucket_wait(s, now);
        if (wait > 0) {
            arm(s, wait);
            return;
        }
        struct sms_call *c = s->qhead;
        s->qhead = c->qnext;
        if (!s->qhead) {
            s->qtail = NULL;
        }
        s->nqueued--;
        s->tokens -= TOKEN_MILLI;
        int rc = post(s, c, c->body, c->body_len);
        free(c->body);
        c->body = NULL;
        if (rc < 0) {
            struct channel_outcome o;
            channel_retry(&o, 0, "cannot post: %s", tdg_strerror(rc));
            finish(c, &o);
        }
    }
    if (s->pause_until_ms <= now) {
        s->logged_paused = false;
    }
}

static void on_token(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    struct sms *s = arg;
    s->timer_id = 0;
    pump(s);
}

static void arm(struct sms *s, uint64_t wait)
{
    if (s->timer_id) {
        return;
    }
    s->timer_id = loop_timer_add(s->loop, wait, on_token, s);
    if (!s->timer_id) {
        LOG_ERROR(MOD, "cannot arm the rate timer (out of memory)");
    }
}

static int sms_send(void *state, const struct channel_delivery *d, channel_done_cb done, void *ctx)
{
    struct sms *s = state;
    if (!s->http) {
        return -ENOTCONN; /* created without a loop: format only */
    }
    struct sms_call *c = calloc(1, sizeof(*c));
    if (!c) {
        return -ENOMEM;
    }
    channel_call_init(&s->calls, &c->base, done, ctx);
    c->s = s;
    c->attempt = d->attempt_id;

    struct channel_outcome o;
    int rc = sms_format(s, d, &s->req, &o);
    if (rc < 0) {
        rc = defer(c, &o);
        if (rc < 0) {
            call_free(&c->base);
        }
        return rc;
    }
    snprintf(c->info, sizeof(c->info), "%s", o.reason);

    uint64_t now = clock_mono_ms();
    if (!s->qhead && bucket_wait(s, now) == 0) {
        s->tokens -= TOKEN_MILLI;
        rc = post(s, c, s->req.body, s->req.body_len);
        if (rc < 0) {
            s->tokens += TOKEN_MILLI;
            call_free(&c->base);
            return rc;
        }
        channel_call_link(&c->base);
        return 0;
    }
    if (s->nqueued >= (unsigned)s->cfg.queue_max) {
        s->st.queue_full++;
        if (!s->logged_queue_full) {
            LOG_WARN(MOD, "rate queue full (queued=%u rate=%" PRId64 "/s): retrying later",
                     s->nqueued, s->cfg.rate);
            s->logged_queue_full = true;
        }
        channel_retry(&o, (uint64_t)s->nqueued * 1000u / (uint64_t)s->cfg.rate,
                      "rate_limited:local");
        rc = defer(c, &o);
        if (rc < 0) {
            call_free(&c->base);
        }
        return rc;
    }
    c->body = malloc(s->req.body_len + 1);
    if (!c->body) {
        call_free(&c->base);
        return -ENOMEM;
    }
    memcpy(c->body, s->req.body, s->req.body_len);
    c->body_len = s->req.body_len;
    c->state = CALL_QUEUED;
    if (s->qtail) {
        s->qtail->qnext = c;
    } else {
        s->qhead = c;
    }
    s->qtail = c;
    s->nqueued++;
    s->st.rate_waits++;
    if (s->nqueued < (unsigned)s->cfg.queue_max / 2) {
        s->logged_queue_full = false;
    }
    channel_call_link(&c->base);
    arm(s, bucket_wait(s, now));
    return 0;
}

/* --- lifecycle ------------------------------------------------------------------------ */

static bool printable(const char *v, size_t max)
{
    size_t n = 0;
    for (; v[n]; n++) {
        unsigned char c = (unsigned char)v[n];
        if (c < 0x21 || c > 0x7e || n >= max) {
            return false;
        }
    }
    return n > 0;
}

static bool alnum_only(const char *v, size_t max)
{
    size_t n = 0;
    for (; v[n]; n++) {
        char c = v[n];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!ok || n >= max) {
            return false;
        }
    }
    return n > 0;
}

static void tenant_destroy(void *state)
{
    struct sms *s = state;
    if (!s) {
        return;
    }
    http_destroy(s->http); /* aborts requests; their on_answer never runs */
    channel_calls_abort(&s->calls);
    if (s->timer_id) {
        loop_timer_cancel(s->loop, s->timer_id);
    }
    if (s->poll_timer) {
        loop_timer_cancel(s->loop, s->poll_timer);
    }
    while (s->watches) {
        watch_free(s, s->watches, false);
    }
    explicit_bzero(s, sizeof(*s)); /* the token and the header made from it */
    free(s);
}

static int tenant_init(const struct channel_env *env, const void *config, void **state, char *err,
                       size_t errlen)
{
    const struct sms_config *cfg = config;
    *state = NULL;
    struct sms *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "sms: out of memory");
        return -ENOMEM;
    }
    s->cfg = *cfg;
    channel_trim_slash(s->cfg.api_url);
    s->loop = env ? env->loop : NULL;
    channel_calls_init(&s->calls, s->loop, &s->st.sent, &s->st.ok, &s->st.retry, &s->st.drop,
                       call_free);
    s->status = env ? env->status : NULL;
    s->status_arg = env ? env->status_arg : NULL;
    s->watch = env ? env->watch : NULL;
    s->watch_arg = env ? env->watch_arg : NULL;

    int rc = TDG_ECONFIG;
    if (strncmp(s->cfg.api_url, "https://", 8) != 0 || !printable(s->cfg.api_url + 8, 240)) {
        /* the auth token travels in every request: never in plaintext */
        snprintf(err, errlen, "sms.api_url: must be an https:// URL");
        goto fail;
    }
    if (!alnum_only(s->cfg.account_sid, 64)) {
        snprintf(err, errlen, "sms.account_sid: required, letters and digits only (AC...)");
        goto fail;
    }
    if (s->cfg.auth_token[0] && s->cfg.auth_token_file[0]) {
        snprintf(err, errlen, "sms.auth_token and sms.auth_token_file: set one, not both");
        goto fail;
    }
    if (s->cfg.auth_token_file[0]) {
        int r = channel_read_secret(s->cfg.auth_token_file, s->cfg.auth_token, sizeof(s->cfg.auth_token));
        if (r < 0) {
            snprintf(err, errlen, "sms.auth_token_file: %s: %s", s->cfg.auth_token_file,
                     tdg_strerror(r));
            goto fail;
        }
    }
    if (!printable(s->cfg.auth_token, sizeof(s->cfg.auth_token) - 1)) {
        snprintf(err, errlen, "sms.auth_token (or _file): required, printable ASCII");
        goto fail;
    }
    if (!s->cfg.from[0] && !s->cfg.messaging_service_sid[0]) {
        snprintf(err, errlen, "sms.from or sms.messaging_service_sid is required");
        goto fail;
    }
    if (s->cfg.from[0] && !sms_e164_valid(s->cfg.from)) {
        snprintf(err, errlen, "sms.from: '%s' is not an E.164 number (+ and 8..15 digits)",
                 s->cfg.from);
        goto fail;
    }
    if (s->cfg.messaging_service_sid[0] && !alnum_only(s->cfg.messaging_service_sid, 64)) {
        snprintf(err, errlen, "sms.messaging_service_sid: letters and digits only (MG...)");
        goto fail;
    }
    if (s->cfg.status_callback_url[0] &&
        ((strncmp(s->cfg.status_callback_url, "https://", 8) != 0 &&
          strncmp(s->cfg.status_callback_url, "http://", 7) != 0) ||
         !printable(s->cfg.status_callback_url, 255))) {
        snprintf(err, errlen, "sms.status_callback_url: must be an http(s):// URL");
        goto fail;
    }
    if (s->cfg.inbound_url[0] && ((strncmp(s->cfg.inbound_url, "https://", 8) != 0 &&
                                   strncmp(s->cfg.inbound_url, "http://", 7) != 0) ||
                                  !printable(s->cfg.inbound_url, 255))) {
        snprintf(err, errlen, "sms.inbound_url: must be an http(s):// URL");
        goto fail;
    }
    if (s->cfg.rate < 1 || s->cfg.queue_max < 1) {
        snprintf(err, errlen, "sms.rate and sms.queue_max must be >= 1");
        goto fail;
    }
    snprintf(s->prefix_buf, sizeof(s->prefix_buf), "%s", s->cfg.prefixes);
    int np = channel_split_list(s->prefix_buf, s->prefixes, SMS_PREFIXES_MAX);
    if (np < 0) {
        snprintf(err, errlen, "sms.prefixes: %s",
                 np == -E2BIG ? "more than 32 prefixes" : "an empty item in the list");
        goto fail;
    }
    s->nprefixes = (unsigned)np;
    for (unsigned i = 0; i < s->nprefixes; i++) {
        const char *p = s->prefixes[i];
        bool ok = p[0] == '+' && p[1] && strlen(p) <= SMS_E164_MAX;
        for (size_t k = 1; ok && p[k]; k++) {
            ok = p[k] >= '0' && p[k] <= '9';
        }
        if (!ok) {
            snprintf(err, errlen, "sms.prefixes: '%.20s' is not + and 1..15 digits", p);
            goto fail;
        }
    }
    if (snprintf(s->poll_base, sizeof(s->poll_base), "%s/2010-04-01/Accounts/%s/Messages/",
                 s->cfg.api_url, s->cfg.account_sid) >= (int)sizeof(s->poll_base) - SID_MAX - 6) {
        snprintf(err, errlen, "sms.api_url: too long");
        goto fail;
    }

    int n = snprintf(s->url, sizeof(s->url), "%s/2010-04-01/Accounts/%s/Messages.json",
                     s->cfg.api_url, s->cfg.account_sid);
    if (n < 0 || (size_t)n >= sizeof(s->url)) {
        snprintf(err, errlen, "sms.api_url: too long");
        goto fail;
    }
    /* Basic auth, computed once: "authorization: Basic base64(sid:token)". */
    char cred[sizeof(s->cfg.account_sid) + sizeof(s->cfg.auth_token) + 1];
    int cl = snprintf(cred, sizeof(cred), "%s:%s", s->cfg.account_sid, s->cfg.auth_token);
    static const char prefix[] = "authorization: Basic ";
    size_t olen = 0;
    if (cl < 0 || (size_t)cl >= sizeof(cred) ||
        mbedtls_base64_encode((unsigned char *)s->auth_header + sizeof(prefix) - 1,
                              sizeof(s->auth_header) - sizeof(prefix) + 1, &olen,
                              (const unsigned char *)cred, (size_t)cl) != 0) {
        explicit_bzero(cred, sizeof(cred));
        snprintf(err, errlen, "sms.account_sid + sms.auth_token: too long for a header");
        goto fail;
    }
    explicit_bzero(cred, sizeof(cred));
    memcpy(s->auth_header, prefix, sizeof(prefix) - 1);

    s->cap = (uint64_t)s->cfg.rate * TOKEN_MILLI; /* one second's worth */
    s->tokens = s->cap;

    if (s->loop) {
        struct http_opts ho = {
            .max_inflight = 1024,
            .max_host_connections = 4,
            .ca_file = s->cfg.ca_file,
            .timeout_ms = s->cfg.timeout_ms,
            .free_max = 16,
            .user_agent = "tidings-hub",
        };
        rc = http_create(s->loop, &ho, &s->http);
        if (rc < 0) {
            snprintf(err, errlen, "sms: cannot create HTTP client: %s", tdg_strerror(rc));
            goto fail;
        }
        s->refill_ms = clock_mono_ms();
    }
    LOG_INFO(MOD, "ready url=%s account=%.6s... sender=%s rate=%" PRId64 "/s", s->cfg.api_url,
             s->cfg.account_sid, s->cfg.from[0] ? s->cfg.from : s->cfg.messaging_service_sid,
             s->cfg.rate);
    *state = s;
    return 0;
fail:
    tenant_destroy(s);
    return rc;
}

/* --- several senders -------------------------------------------------------------- */

/* Length of the longest of s's prefixes that starts num; 0 for none. */
static size_t prefix_match(const struct sms *s, const char *num)
{
    size_t best = 0;
    for (unsigned i = 0; i < s->nprefixes; i++) {
        size_t n = strlen(s->prefixes[i]);
        if (n > best && strncmp(num, s->prefixes[i], n) == 0) {
            best = n;
        }
    }
    return best;
}

static int sms_select(void *const *t, unsigned n, const struct channel_delivery *d,
                      struct channel_outcome *out)
{
    const struct sms *main = t[0];
    const char *to = d->dev ? d->dev->token : NULL;
    if ((n == 1 && main->nprefixes == 0) || !sms_e164_valid(to)) {
        return 0; /* format decides (invalid_number) */
    }
    int best = -1;
    size_t best_len = 0;
    for (unsigned i = 0; i < n; i++) {
        size_t m = prefix_match(t[i], to);
        if (m > best_len) {
            best_len = m;
            best = (int)i;
        }
    }
    if (best >= 0) {
        return best;
    }
    if (main->nprefixes == 0) {
        return 0;
    }
    /* the country code, not the whole number: reasons are stored */
    return channel_no_tenant(out, "NoSenderForNumber: %.4s...", to);
}

static const char *const *prefixes_of(const void *tenant, unsigned *n)
{
    const struct sms *s = tenant;
    *n = s->nprefixes;
    return s->prefixes;
}

static int sms_check(void *const *t, const char *const *names, unsigned n, char *err,
                     size_t errlen)
{
    for (unsigned i = 0; i < n; i++) {
        const struct sms *a = t[i];
        if (i > 0 && a->nprefixes == 0) {
            snprintf(err, errlen, "%s: sms.prefixes: required in a sender file (the "
                     "destinations this sender serves)", names[i]);
            return TDG_ECONFIG;
        }
        int rc = channel_check_claims(t, names, i, prefixes_of, "sms.prefixes", err, errlen);
        if (rc < 0) {
            return rc;
        }
    }
    return 0;
}

static const struct channel_tenant_ops sms_tenant_ops = {
    CHANNEL_TENANT_MEMBERS("sms", sms_config_table, struct sms_config),
    .init = tenant_init,
    .format = sms_format,
    .send = sms_send,
    .destroy = tenant_destroy,
    .select = sms_select,
    .check = sms_check,
};

static int sms_init(const struct channel_env *env, const void *config, void **state, char *err,
                    size_t errlen)
{
    return channel_set_create(&sms_tenant_ops, env, config, (channel_set **)state, err, errlen);
}

void sms_get_stats(void *state, struct sms_stats *out)
{
    sms_get_tenant_stats(state, 0, out);
}

int sms_get_tenant_stats(void *state, unsigned i, struct sms_stats *out)
{
    const struct sms *s = channel_set_tenant(state, i);
    if (!s) {
        return -ENOENT;
    }
    *out = s->st;
    out->queued = s->nqueued;
    out->watching = s->nwatch;
    return 0;
}

const struct channel_ops sms_channel = {
    CHANNEL_CONFIG_MEMBERS("sms", sms_config_table, struct sms_config),
    .init = sms_init,
    CHANNEL_SET_MEMBERS,
};

/* --- what the provider posts back ------------------------------------------------- */

/* Parse body and find the sender (with account AccountSid) whose url_of(s)
 * signed it. 200 and *out, or 400/403 with why set. */
static int hook_sender(void *state, const char *body, size_t len, const char *signature,
                       bool inbound, struct sms_form *f, struct sms **out, char *why, size_t cap)
{
    if (sms_form_parse(body, len, f) < 0) {
        snprintf(why, cap, "body is not a form");
        return 400;
    }
    const char *account = sms_form_get(f, "AccountSid");
    if (!account || !*account) {
        snprintf(why, cap, "AccountSid missing");
        return 400;
    }
    if (!signature || !*signature) {
        snprintf(why, cap, "X-Twilio-Signature missing");
        return 403;
    }
    bool known = false;
    /* The senders of this set, then of its peer (the dispatch layer's backup
     * provider): a message the backup sent is reported signed with the
     * backup's auth token, under the backup's account. */
    for (void *set = state; set; set = set == state ? channel_set_peer(state) : NULL) {
        for (unsigned i = 0; i < channel_set_count(set); i++) {
            struct sms *s = channel_set_tenant(set, i);
            const char *url = inbound ? s->cfg.inbound_url : s->cfg.status_callback_url;
            if (strcmp(s->cfg.account_sid, account) != 0 || !url[0]) {
                continue;
            }
            known = true;
            if (sms_signature_valid(s->cfg.auth_token, url, f, signature)) {
                *out = s;
                return 200;
            }
        }
    }
    snprintf(why, cap, "%s", known ? "X-Twilio-Signature does not match"
                                   : inbound ? "no sender of this account has sms.inbound_url"
                                             : "no sender of this account has a status callback");
    return 403;
}

int sms_status_callback(void *state, const char *body, size_t len, const char *signature,
                        char *why, size_t cap)
{
    struct sms_form *f = malloc(sizeof(*f));
    if (!f) {
        snprintf(why, cap, "out of memory");
        return 503;
    }
    struct sms *s = NULL;
    int rc = hook_sender(state, body, len, signature, false, f, &s, why, cap);
    if (rc == 200) {
        const char *sid = sms_form_get(f, "MessageSid");
        const char *status = sms_form_get(f, "MessageStatus");
        const char *code = sms_form_get(f, "ErrorCode");
        if (!sid || !*sid || !status || !*status) {
            snprintf(why, cap, "MessageSid or MessageStatus missing");
            rc = 400;
        } else {
            int ec = code ? (int)strtol(code, NULL, 10) : 0;
            LOG_DEBUG(MOD, "status callback sid=%s status=%s error_code=%d", sid, status, ec);
            if (s->status) {
                s->status(s->status_arg, "sms", sid, status, ec);
            }
            why[0] = '\0';
        }
    }
    free(f);
    return rc;
}

int sms_inbound(void *state, const char *body, size_t len, const char *signature, char *from,
                size_t from_cap, enum sms_keyword *kw, char *why, size_t cap)
{
    *kw = SMS_KEYWORD_NONE;
    struct sms_form *f = malloc(sizeof(*f));
    if (!f) {
        snprintf(why, cap, "out of memory");
        return 503;
    }
    struct sms *s = NULL;
    int rc = hook_sender(state, body, len, signature, true, f, &s, why, cap);
    if (rc == 200) {
        const char *num = sms_form_get(f, "From");
        if (!num || !sms_e164_valid(num) || strlen(num) >= from_cap) {
            snprintf(why, cap, "From missing or not E.164");
            rc = 400;
        } else {
            snprintf(from, from_cap, "%s", num);
            *kw = sms_keyword(sms_form_get(f, "Body"));
            why[0] = '\0';
        }
    }
    free(f);
    return rc;
}

void sms_link_backup(void *primary, void *backup)
{
    channel_set_link_peer(primary, backup);
}
