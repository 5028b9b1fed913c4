/*
 * sms_hook.c - what the SMS provider posts back to the hub: delivery status
 * callbacks (StatusCallback) and incoming messages (STOP / START replies),
 * both form posts signed with X-Twilio-Signature. See sms.h.
 *
 * The parsing and the signature check are pure; the handlers look up the
 * sender by the AccountSid the post names (its auth token signs the post)
 * and report a status through that sender's channel_env.status sink.
 */
#include "sms.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <mbedtls/base64.h>
#include <mbedtls/md.h>

#include "error.h"

static int hexval(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* Decode n bytes of one form component into out ('+' is a space). Returns
 * the length, or -1 for a bad escape or no room. */
static int form_decode(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '+') {
            c = ' ';
        } else if (c == '%') {
            if (i + 2 >= n) {
                return -1; /* "%4" at the end */
            }
            int h = hexval(s[i + 1]), l = hexval(s[i + 2]);
            if (h < 0 || l < 0) {
                return -1;
            }
            c = (char)(h << 4 | l);
            i += 2;
        }
        if (o + 1 >= cap) {
            return -1;
        }
        out[o++] = c;
    }
    out[o] = '\0';
    return (int)o;
}

int sms_form_parse(const char *body, size_t len, struct sms_form *f)
{
    memset(f, 0, sizeof(*f));
    size_t used = 0;
    size_t i = 0;
    while (i < len) {
        size_t end = i;
        while (end < len && body[end] != '&') {
            end++;
        }
        if (end > i) {
            size_t eq = i;
            while (eq < end && body[eq] != '=') {
                eq++;
            }
            if (f->n >= SMS_FORM_MAX) {
                return -E2BIG;
            }
            char *name = f->buf + used;
            int nl = form_decode(body + i, eq - i, name, sizeof(f->buf) - used);
            if (nl < 0) {
                return -EINVAL;
            }
            used += (size_t)nl + 1;
            char *value = f->buf + used;
            size_t vs = eq < end ? eq + 1 : end;
            int vl = form_decode(body + vs, end - vs, value, sizeof(f->buf) - used);
            if (vl < 0) {
                return -EINVAL;
            }
            used += (size_t)vl + 1;
            f->name[f->n] = name;
            f->value[f->n] = value;
            f->n++;
        }
        i = end + 1;
    }
    return 0;
}

const char *sms_form_get(const struct sms_form *f, const char *name)
{
    for (unsigned i = 0; i < f->n; i++) {
        if (strcmp(f->name[i], name) == 0) {
            return f->value[i];
        }
    }
    return NULL;
}

int sms_signature(const char *auth_token, const char *url, const struct sms_form *f, char *out,
                  size_t cap)
{
    unsigned order[SMS_FORM_MAX];
    for (unsigned i = 0; i < f->n; i++) {
        order[i] = i;
    }
    /* Sorted by name (then value); an insertion sort: at most SMS_FORM_MAX
     * items, and qsort would need the form in a global. */
    for (unsigned i = 1; i < f->n; i++) {
        unsigned v = order[i];
        unsigned j = i;
        while (j > 0) {
            int c = strcmp(f->name[order[j - 1]], f->name[v]);
            if (c < 0 || (c == 0 && strcmp(f->value[order[j - 1]], f->value[v]) <= 0)) {
                break;
            }
            order[j] = order[j - 1];
            j--;
        }
        order[j] = v;
    }
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA1);
    mbedtls_md_context_t ctx;
    mbedtls_md_init(&ctx);
    unsigned char mac[20];
    int rc = md ? mbedtls_md_setup(&ctx, md, 1) : -1;
    rc = rc ? rc
            : mbedtls_md_hmac_starts(&ctx, (const unsigned char *)auth_token, strlen(auth_token));
    rc = rc ? rc : mbedtls_md_hmac_update(&ctx, (const unsigned char *)url, strlen(url));
    for (unsigned k = 0; rc == 0 && k < f->n; k++) {
        unsigned i = order[k];
        rc = mbedtls_md_hmac_update(&ctx, (const unsigned char *)f->name[i], strlen(f->name[i]));
        rc = rc ? rc
                : mbedtls_md_hmac_update(&ctx, (const unsigned char *)f->value[i],
                                         strlen(f->value[i]));
    }
    rc = rc ? rc : mbedtls_md_hmac_finish(&ctx, mac);
    mbedtls_md_free(&ctx);
    if (rc != 0) {
        return TDG_ECRYPTO;
    }
    size_t olen = 0;
    if (mbedtls_base64_encode((unsigned char *)out, cap, &olen, mac, sizeof(mac)) != 0) {
        return -ENOSPC;
    }
    return 0;
}

bool sms_signature_valid(const char *auth_token, const char *url, const struct sms_form *f,
                         const char *signature)
{
    char want[64];
    if (!signature || !auth_token || !*auth_token ||
        sms_signature(auth_token, url, f, want, sizeof(want)) < 0) {
        return false;
    }
    size_t n = strlen(want);
    if (strlen(signature) != n) {
        return false;
    }
    unsigned char diff = 0; /* constant time over the length */
    for (size_t i = 0; i < n; i++) {
        diff |= (unsigned char)(want[i] ^ signature[i]);
    }
    return diff == 0;
}

enum sms_keyword sms_keyword(const char *text)
{
    static const char *const out[] = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL",
                                      "END",  "QUIT",    "REVOKE",      "OPTOUT"};
    static const char *const in[] = {"START", "YES", "UNSTOP"};
    if (!text) {
        return SMS_KEYWORD_NONE;
    }
    while (isspace((unsigned char)*text)) {
        text++;
    }
    size_t n = strlen(text);
    while (n > 0 && (isspace((unsigned char)text[n - 1]) || text[n - 1] == '.' ||
                     text[n - 1] == '!')) {
        n--;
    }
    for (size_t i = 0; i < sizeof(out) / sizeof(out[0]); i++) {
        if (strlen(out[i]) == n && strncasecmp(text, out[i], n) == 0) {
            return SMS_KEYWORD_OPT_OUT;
        }
    }
    for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
        if (strlen(in[i]) == n && strncasecmp(text, in[i], n) == 0) {
            return SMS_KEYWORD_OPT_IN;
        }
    }
    return SMS_KEYWORD_NONE;
}
