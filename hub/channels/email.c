/*
 * email.c - the email channel: an RFC 5322 message (pure), sent with
 * hub/smtp (STARTTLS required, AUTH), SMTP replies mapped to outcomes.
 *
 * Why quoted-printable and not 8bit: curl cannot declare BODY=8BITMIME or
 * SMTPUTF8 per message, and 8-bit data without that declaration breaks RFC
 * 6152 (some relays bounce or mangle it). Quoted-printable is 7-bit clean
 * through any server, keeps mostly-ASCII text readable in the raw message,
 * and bounds every line (76 characters), so long notification bodies never
 * hit SMTP's 998-octet line limit. The cost is size for non-Latin text (up to
 * 3x), which EMAIL_MESSAGE_MAX allows for.
 *
 * Why B encoded-words for the subject: the length of a B word is exact to
 * compute (4 characters per 3 bytes), so folding at 76 characters per line
 * never splits a UTF-8 character (RFC 2047 section 5 forbids that), and every
 * byte of the title is encoded, so nothing in it can be read as header
 * syntax. ASCII titles that fit on a line, or fold at spaces, go unencoded.
 */
#include "email.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "log.h"

#define MOD "email"

#define OFF(f) offsetof(struct email_config, f), sizeof(((struct email_config *)0)->f)

static const char *const auth_choices[] = {"auto", "plain", "login", NULL};

static const struct config_entry email_config_table[] = {
    {"email.smtp_url", CONFIG_STRING, "", OFF(smtp_url),
     "Submission server: smtp://host:587 (STARTTLS, required) or smtps://host:465", NULL, 0, 0},
    {"email.username", CONFIG_STRING, "", OFF(username), "SMTP AUTH login (empty: no AUTH)", NULL,
     0, 0},
    {"email.password", CONFIG_STRING, "", OFF(password),
     "SMTP AUTH password; prefer email.password_file", NULL, 0, 0},
    {"email.password_file", CONFIG_STRING, "", OFF(password_file),
     "File holding the SMTP password (first line)", NULL, 0, 0},
    {"email.from", CONFIG_STRING, "", OFF(from),
     "Sender: alerts@example.com or Tidings Alerts <alerts@example.com>", NULL, 0, 0},
    {"email.helo", CONFIG_STRING, "", OFF(helo),
     "Name sent in EHLO (empty: the domain of email.from)", NULL, 0, 0},
    {"email.ca_file", CONFIG_STRING, "", OFF(ca_file),
     "CA bundle to verify the SMTP server (empty: system CAs)", NULL, 0, 0},
    {"email.auth", CONFIG_ENUM, "auto", OFF(auth),
     "SASL mechanism: auto (the best the server offers), plain or login", auth_choices, 0, 0},
    {"email.timeout", CONFIG_DURATION, "30s", OFF(timeout_ms),
     "Whole-transfer timeout; a timed-out transfer is retried", NULL, 100, 600000},
    {"email.connections", CONFIG_INT, "2", OFF(connections),
     "SMTP connections at once (one message each; idle ones are reused)", NULL, 1, 64},
    {"email.queue_max", CONFIG_INT, "1000", OFF(queue_max),
     "Messages waiting for a connection; beyond, a send is retried later", NULL, 1, 100000},
};

#define LINE_MAX_ENC 76 /* RFC 2047: lines with encoded-words; RFC 2045: QP lines */
#define LINE_SOFT 78    /* RFC 5322 2.1.1 recommendation for other header lines */
#define SUBJECT_FALLBACK_CHARS 60

/* --- bounded writer ------------------------------------------------------- */

struct wbuf {
    char *p;
    size_t cap, len;
    size_t col;    /* characters since the last CRLF */
    bool overflow; /* sticky */
};

static void wput(struct wbuf *w, const char *s, size_t n)
{
    if (w->overflow || n >= w->cap - w->len) {
        w->overflow = true;
        return;
    }
    memcpy(w->p + w->len, s, n);
    w->len += n;
    w->p[w->len] = '\0';
    for (size_t i = 0; i < n; i++) {
        w->col = s[i] == '\n' ? 0 : w->col + 1;
    }
}

static void wputs(struct wbuf *w, const char *s)
{
    wput(w, s, strlen(s));
}

static void wputf(struct wbuf *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void wputf(struct wbuf *w, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        w->overflow = true;
        return;
    }
    wput(w, tmp, (size_t)n);
}

/* --- text checks ------------------------------------------------------------ */

static bool has_crlf(const char *s)
{
    return strpbrk(s, "\r\n") != NULL;
}

static bool utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t need;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            need = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            need = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            need = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (n - i <= need) {
            return false;
        }
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xc0) != 0x80) {
                return false;
            }
            cp = (cp << 6) | (s[i + k] & 0x3fu);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
            return false;
        }
        i += need + 1;
    }
    return true;
}

/* atext of RFC 5322 3.2.3 */
static bool is_atext(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

int email_address_valid(const char *a)
{
    if (!a) {
        return 0;
    }
    size_t n = strlen(a);
    const char *at = strchr(a, '@');
    if (n < 3 || n > EMAIL_ADDR_MAX || !at || strchr(at + 1, '@')) {
        return 0;
    }
    size_t local = (size_t)(at - a);
    if (local == 0 || local > EMAIL_LOCAL_MAX || a[0] == '.' || at[-1] == '.') {
        return 0;
    }
    for (size_t i = 0; i < local; i++) {
        unsigned char c = (unsigned char)a[i];
        if (c == '.') {
            if (a[i + 1] == '.') {
                return 0;
            }
        } else if (!is_atext(c)) {
            return 0;
        }
    }
    /* domain: labels of letters, digits and hyphens, 1..63 each */
    const char *d = at + 1;
    size_t label = 0;
    for (const char *p = d;; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '.' || c == '\0') {
            if (label == 0 || p[-1] == '-' || *(p - label) == '-') {
                return 0;
            }
            if (c == '\0') {
                break;
            }
            label = 0;
            continue;
        }
        bool ok =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
        if (!ok || ++label > 63) {
            return 0;
        }
    }
    return 1;
}

/* --- header pieces ------------------------------------------------------------- */

/* "Tue, 14 Nov 2023 22:13:20 +0000" (RFC 5322 3.3), in UTC, locale-free. */
static void put_date(struct wbuf *w, int64_t now_ms)
{
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t t = (time_t)(now_ms / 1000);
    struct tm tm;
    if (!gmtime_r(&t, &tm) || tm.tm_wday < 0 || tm.tm_wday > 6 || tm.tm_mon < 0 || tm.tm_mon > 11) {
        t = 0;
        gmtime_r(&t, &tm);
    }
    wputf(w, "Date: %s, %d %s %04d %02d:%02d:%02d +0000\r\n", days[tm.tm_wday], tm.tm_mday,
          months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

static void put_b64(struct wbuf *w, const unsigned char *s, size_t n)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16;
        if (i + 1 < n) {
            v |= (uint32_t)s[i + 1] << 8;
        }
        if (i + 2 < n) {
            v |= s[i + 2];
        }
        char q[4] = {tbl[(v >> 18) & 63], tbl[(v >> 12) & 63], i + 1 < n ? tbl[(v >> 6) & 63] : '=',
                     i + 2 < n ? tbl[v & 63] : '='};
        wput(w, q, 4);
    }
}

/*
 * UTF-8 text as RFC 2047 B encoded-words, each line (with the words and the
 * folding space) at most 76 characters; the first word starts at the
 * writer's current column. Words end on UTF-8 character boundaries.
 */
static void put_encoded_words(struct wbuf *w, const char *text, size_t n)
{
    static const char pre[] = "=?UTF-8?B?", post[] = "?=";
    const size_t overhead = sizeof(pre) - 1 + sizeof(post) - 1;
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    bool first = true;
    do {
        if (!first) {
            wputs(w, "\r\n ");
        }
        size_t room = LINE_MAX_ENC > w->col + overhead ? LINE_MAX_ENC - w->col - overhead : 0;
        size_t max = room / 4 * 3;
        if (max < 4) {
            /* not even one 4-byte character fits after a long header name */
            if (first) {
                wputs(w, "\r\n ");
                first = false;
                continue;
            }
            w->overflow = true;
            return;
        }
        size_t k = n - i < max ? n - i : max;
        while (k > 0 && i + k < n && (s[i + k] & 0xc0) == 0x80) {
            k--; /* back off to the start of a character */
        }
        wputs(w, pre);
        put_b64(w, s + i, k);
        wputs(w, post);
        i += k;
        first = false;
    } while (i < n && !w->overflow);
}

/* Printable ASCII without "=?" (which a reader could take for an encoded
 * word)? */
static bool plain_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c > 0x7e || (c == '=' && i + 1 < n && s[i + 1] == '?')) {
            return false;
        }
    }
    return true;
}

/* Unstructured text (Subject): unencoded when it is plain ASCII and fits,
 * folded at single spaces when needed; else encoded-words. */
static void put_unstructured(struct wbuf *w, const char *s, size_t n)
{
    if (n == 0) {
        return;
    }
    if (plain_ascii(s, n) && s[0] != ' ' && s[n - 1] != ' ' && !memmem(s, n, "  ", 2)) {
        if (w->col + n <= LINE_SOFT) {
            wput(w, s, n);
            return;
        }
        /* Fold before a space when the next word would pass the line. */
        bool fits = true;
        size_t col = w->col, i = 0;
        while (i < n && fits) {
            size_t j = i + (i > 0 ? 1 : 0);
            while (j < n && s[j] != ' ') {
                j++;
            }
            size_t tok = j - i;
            if (col + tok > LINE_SOFT) {
                col = 0; /* folded: the token's space starts the new line */
            }
            fits = col + tok <= LINE_SOFT;
            col += tok;
            i = j;
        }
        if (fits) {
            i = 0;
            while (i < n) {
                size_t j = i + (i > 0 ? 1 : 0);
                while (j < n && s[j] != ' ') {
                    j++;
                }
                if (w->col + (j - i) > LINE_SOFT) {
                    wputs(w, "\r\n");
                }
                wput(w, s + i, j - i);
                i = j;
            }
            return;
        }
    }
    put_encoded_words(w, s, n);
}

/* A display name as a phrase: atoms, a quoted-string, or encoded-words. */
static void put_phrase(struct wbuf *w, const char *s)
{
    size_t n = strlen(s);
    bool atoms = n > 0, ascii = true;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        atoms = atoms && (is_atext(c) || (c == ' ' && i > 0 && i + 1 < n && s[i + 1] != ' '));
        ascii = ascii && c >= 0x20 && c <= 0x7e;
    }
    if (ascii && strstr(s, "=?") == NULL) {
        if (atoms) {
            wput(w, s, n);
            return;
        }
        wputs(w, "\"");
        for (size_t i = 0; i < n; i++) {
            if (s[i] == '"' || s[i] == '\\') {
                wputs(w, "\\");
            }
            wput(w, s + i, 1);
        }
        wputs(w, "\"");
        return;
    }
    put_encoded_words(w, s, n);
}

/* Message-ID left part from a notification id ([A-Za-z0-9._:-]): ':' (not
 * atext) becomes '=', and a '.' that would make an empty dot-atom part
 * (doubled or last) becomes '~'; neither '=' nor '~' can occur in an id, so
 * distinct ids stay distinct. */
static void put_msgid_left(struct wbuf *w, const char *id)
{
    for (size_t i = 0; id[i]; i++) {
        char c = id[i];
        if (c == ':') {
            c = '=';
        } else if (c == '.' && (id[i + 1] == '.' || id[i + 1] == '\0')) {
            c = '~';
        } else if (!is_atext((unsigned char)c) && c != '.') {
            c = '_';
        }
        wput(w, &c, 1);
    }
}

/* --- body ---------------------------------------------------------------------------- */

/*
 * Quoted-printable (RFC 2045 6.7) of UTF-8 text, line breaks (LF, CRLF or
 * CR) turned into CRLF hard breaks. Encoded lines are at most 76 characters
 * including the soft-break '='; "=XX" triples are never split; a space or
 * tab at the end of a line is encoded so transports cannot strip it.
 */
static void put_qp(struct wbuf *w, const char *text, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t col = 0;
    for (size_t i = 0; i < n && !w->overflow; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c == '\r' || c == '\n') {
            if (c == '\r' && i + 1 < n && text[i + 1] == '\n') {
                i++;
            }
            wputs(w, "\r\n");
            col = 0;
            continue;
        }
        bool eol = i + 1 == n || text[i + 1] == '\r' || text[i + 1] == '\n';
        char tok[3];
        size_t tl;
        if ((c >= 33 && c <= 126 && c != '=') || ((c == ' ' || c == '\t') && !eol)) {
            tok[0] = (char)c;
            tl = 1;
        } else {
            tok[0] = '=';
            tok[1] = hex[c >> 4];
            tok[2] = hex[c & 15];
            tl = 3;
        }
        /* The last token of a line may use column 76; others leave room for
         * a soft break. */
        size_t limit = eol ? LINE_MAX_ENC : LINE_MAX_ENC - 1;
        if (col + tl > limit) {
            wputs(w, "=\r\n");
            col = 0;
        }
        wput(w, tok, tl);
        col += tl;
    }
    if (n == 0 || (text[n - 1] != '\r' && text[n - 1] != '\n')) {
        wputs(w, "\r\n"); /* the message ends with a line break */
    }
}

/* --- state ----------------------------------------------------------------------------- */

struct email;

struct email_call {
    struct channel_call base; /* first: the shared bookkeeping */
    struct email *e;
};

struct email {
    struct email_config cfg;
    loop_t *loop;
    smtp_t *smtp;

    char from_addr[EMAIL_ADDR_MAX + 1];
    const char *from_domain; /* into from_addr */
    char from_name[sizeof(((struct email_config *)0)->from)];

    struct channel_calls calls;
    struct email_message msg; /* scratch; single-threaded */
    struct email_stats st;
    bool logged_auth, logged_tls;
};

static int drop(struct channel_outcome *out, const char *reason, int err)
{
    out->result = CHANNEL_DROP;
    snprintf(out->reason, sizeof(out->reason), "%s", reason);
    return err;
}

int email_format_message(void *state, const struct channel_delivery *d, struct email_message *m,
                         struct channel_outcome *out)
{
    struct email *e = state;
    const struct notification *n = d->n;
    memset(out, 0, sizeof(*out));
    m->len = 0;
    m->data[0] = '\0';

    const char *to = d->dev ? d->dev->token : NULL;
    if (!to || !*to) {
        return drop(out, "invalid_address", TDG_EINVAL_INPUT);
    }
    /* Injection first: an address or title carrying CR/LF is an attack or a
     * bug upstream, and must be reported as such, not as a bad address. */
    if (has_crlf(to) || (n->title && has_crlf(n->title))) {
        return drop(out, "header_injection", TDG_EINVAL_INPUT);
    }
    if (!email_address_valid(to)) {
        return drop(out, "invalid_address", TDG_EINVAL_INPUT);
    }
    const char *body = n->body ? n->body : n->title;
    if (!body || !*body) {
        return drop(out, "no_content", TDG_EINVAL_INPUT);
    }
    if ((n->title && !utf8_valid((const unsigned char *)n->title, strlen(n->title))) ||
        !utf8_valid((const unsigned char *)body, strlen(body))) {
        return drop(out, "bad_utf8", TDG_EINVAL_INPUT);
    }

    /* Subject: the title; without one, the body's first line, shortened. */
    const char *subj = n->title;
    size_t subj_len = subj ? strlen(subj) : 0;
    bool shortened = false;
    if (!subj) {
        subj = n->body;
        subj_len = strcspn(subj, "\r\n");
        size_t chars = 0, i = 0;
        while (i < subj_len && chars < SUBJECT_FALLBACK_CHARS) {
            i++;
            while (i < subj_len && ((unsigned char)subj[i] & 0xc0) == 0x80) {
                i++;
            }
            chars++;
        }
        shortened = i < subj_len;
        subj_len = i;
    }

    snprintf(m->mail_from, sizeof(m->mail_from), "%s", e->from_addr);
    snprintf(m->rcpt_to, sizeof(m->rcpt_to), "%s", to);

    struct wbuf w = {.p = m->data, .cap = sizeof(m->data)};
    put_date(&w, d->now_ms);
    wputs(&w, "From: ");
    if (e->from_name[0]) {
        put_phrase(&w, e->from_name);
        if (w.col + strlen(e->from_addr) + 3 > LINE_SOFT) {
            wputs(&w, "\r\n");
        }
        wputf(&w, " <%s>\r\n", e->from_addr);
    } else {
        wputf(&w, "%s\r\n", e->from_addr);
    }
    wputf(&w, "To: %s\r\n", to);
    wputs(&w, "Subject: ");
    if (shortened) {
        /* "..." inside the same encoding decision as the text */
        char tmp[SUBJECT_FALLBACK_CHARS * 4 + 4];
        memcpy(tmp, subj, subj_len);
        memcpy(tmp + subj_len, "...", 3);
        put_unstructured(&w, tmp, subj_len + 3);
    } else {
        put_unstructured(&w, subj, subj_len);
    }
    wputs(&w, "\r\n");
    wputs(&w, "Message-ID: <tidings-");
    if (n->id && *n->id) {
        put_msgid_left(&w, n->id);
    } else {
        wputf(&w, "a%" PRIu64, d->attempt_id);
    }
    wputf(&w, "@%s>\r\n", e->from_domain);
    wputs(&w, "MIME-Version: 1.0\r\n"
              "Content-Type: text/plain; charset=UTF-8\r\n"
              "Content-Transfer-Encoding: quoted-printable\r\n"
              "Auto-Submitted: auto-generated\r\n"
              "\r\n");
    put_qp(&w, body, strlen(body));
    if (w.overflow) {
        m->len = 0;
        return drop(out, "too_large", TDG_ETOOBIG);
    }
    m->len = w.len;
    return 0;
}

static int email_format(void *state, const struct channel_delivery *d, struct channel_request *req,
                        struct channel_outcome *out)
{
    struct email *e = state;
    channel_request_reset(req);
    int rc = email_format_message(e, d, &e->msg, out);
    if (rc < 0) {
        return rc;
    }
    if (e->msg.len >= sizeof(req->body)) {
        return drop(out, "too_large", TDG_ETOOBIG);
    }
    snprintf(req->url, sizeof(req->url), "%s", e->cfg.smtp_url);
    snprintf(req->method, sizeof(req->method), "SMTP");
    int h0 = snprintf(req->headers[0], sizeof(req->headers[0]), "mail-from: <%.*s>",
                      (int)(sizeof(req->headers[0]) - 14), e->msg.mail_from);
    int h1 = snprintf(req->headers[1], sizeof(req->headers[1]), "rcpt-to: <%.*s>",
                      (int)(sizeof(req->headers[1]) - 12), e->msg.rcpt_to);
    if ((size_t)h0 - 13 != strlen(e->msg.mail_from) || (size_t)h1 - 11 != strlen(e->msg.rcpt_to)) {
        /* a 250-character address does not fit a header slot */
        req->nheaders = 0;
        req->authorization[0] = '\0';
        return drop(out, "too_large", TDG_ETOOBIG);
    }
    req->nheaders = 2;
    memcpy(req->body, e->msg.data, e->msg.len + 1);
    req->body_len = e->msg.len;
    return 0;
}

/* --- results ----------------------------------------------------------------------------- */

/* Queue id from a final reply: Postfix "250 2.0.0 Ok: queued as 4XYZ",
 * Exim "250 OK id=1abc-00-XY". */
static void queue_id(const char *reply, char *out, size_t cap)
{
    out[0] = '\0';
    const char *p = strstr(reply, "queued as ");
    size_t skip = 10;
    if (!p) {
        p = strstr(reply, "id=");
        skip = 3;
    }
    if (!p) {
        return;
    }
    p += skip;
    size_t n = 0;
    while (p[n] && n + 1 < cap &&
           ((p[n] >= 'A' && p[n] <= 'Z') || (p[n] >= 'a' && p[n] <= 'z') ||
            (p[n] >= '0' && p[n] <= '9') || p[n] == '-' || p[n] == '.' || p[n] == '_')) {
        n++;
    }
    memcpy(out, p, n);
    out[n] = '\0';
}

/* Copy a server reply to dst (cap bytes, terminated) with every address in
 * it ("<bob@example.com>", "bob@example.com") replaced by "[address]":
 * reasons are stored and logged, and "550 5.1.1 <bob@...>: no such user"
 * quotes the recipient. */
static void redact_addresses(char *dst, size_t cap, const char *src)
{
    size_t o = 0;
    if (cap == 0) {
        return;
    }
    for (size_t i = 0; src[i] && o + 1 < cap;) {
        /* a word: up to a space or an angle bracket */
        size_t j = i;
        bool at = false;
        while (src[j] && src[j] != ' ' && src[j] != '<' && src[j] != '>' && src[j] != '\t') {
            at = at || src[j] == '@';
            j++;
        }
        if (j == i) {
            dst[o++] = src[i++];
            continue;
        }
        if (at) {
            static const char mark[] = "[address]";
            for (size_t k = 0; mark[k] && o + 1 < cap; k++) {
                dst[o++] = mark[k];
            }
        } else {
            for (size_t k = i; k < j && o + 1 < cap; k++) {
                dst[o++] = src[k];
            }
        }
        i = j;
    }
    dst[o] = '\0';
}

void email_map_result(const struct smtp_result *r, struct channel_outcome *out)
{
    memset(out, 0, sizeof(*out));
    out->status = r->code;
    const char *reply = r->reply ? r->reply : "";
    const char *etext = r->error_text ? r->error_text : "";
    switch (r->fail) {
    case SMTP_FAIL_NONE:
        out->result = CHANNEL_OK;
        queue_id(reply, out->provider_id, sizeof(out->provider_id));
        return;
    case SMTP_FAIL_REPLY:
        /* 4xx: the server says try later (greylisting, mailbox busy); 5xx:
         * it will never take this (550 no such mailbox, 553 bad address,
         * 552 too big). */
        out->result = r->code >= 400 && r->code < 500 ? CHANNEL_RETRY : CHANNEL_DROP;
        if (reply[0]) {
            redact_addresses(out->reason, sizeof(out->reason), reply);
        } else {
            snprintf(out->reason, sizeof(out->reason), "SMTP %d", r->code);
        }
        return;
    case SMTP_FAIL_AUTH:
        out->result = r->code >= 400 && r->code < 500 ? CHANNEL_RETRY : CHANNEL_DROP;
        snprintf(out->reason, sizeof(out->reason), "auth_failed: %s", reply[0] ? reply : etext);
        return;
    case SMTP_FAIL_TLS:
        out->result = CHANNEL_DROP;
        snprintf(out->reason, sizeof(out->reason), "tls_failed: %s", etext);
        return;
    case SMTP_FAIL_CONNECT:
    case SMTP_FAIL_TIMEOUT:
    case SMTP_FAIL_LOST:
        out->result = CHANNEL_RETRY;
        snprintf(out->reason, sizeof(out->reason), "%s: %s", smtp_fail_name(r->fail), etext);
        return;
    }
    out->result = CHANNEL_RETRY;
    snprintf(out->reason, sizeof(out->reason), "unknown SMTP failure");
}

/* --- send ----------------------------------------------------------------------------------- */

static void on_result(void *ctx, const struct smtp_result *r)
{
    struct email_call *c = ctx;
    struct email *e = c->e;
    struct channel_outcome o;
    email_map_result(r, &o);
    if (r->fail == SMTP_FAIL_NONE) {
        e->logged_auth = false;
        e->logged_tls = false;
    } else if (r->fail == SMTP_FAIL_AUTH && !e->logged_auth) {
        LOG_ERROR(MOD,
                  "the server refused the login (%s): check email.username and "
                  "email.password",
                  o.reason);
        e->logged_auth = true;
    } else if (r->fail == SMTP_FAIL_TLS && !e->logged_tls) {
        LOG_ERROR(MOD,
                  "no TLS with the server (%s): STARTTLS is required; check "
                  "email.smtp_url and email.ca_file",
                  o.reason);
        e->logged_tls = true;
    }
    LOG_DEBUG(MOD, "code=%d result=%s reason=%s id=%s elapsed_ms=%" PRIu64, o.status,
              channel_result_name(o.result), o.reason, o.provider_id, r->elapsed_ms);
    channel_call_finish(&c->base, &o);
}

static int email_send(void *state, const struct channel_delivery *d, channel_done_cb done,
                      void *ctx)
{
    struct email *e = state;
    if (!e->smtp) {
        return -ENOTCONN; /* created without a loop: format only */
    }
    struct email_call *c = calloc(1, sizeof(*c));
    if (!c) {
        return -ENOMEM;
    }
    channel_call_init(&e->calls, &c->base, done, ctx);
    c->e = e;
    struct channel_outcome o;
    int rc = email_format_message(e, d, &e->msg, &o);
    if (rc < 0) {
        rc = channel_call_defer(&c->base, &o);
    } else {
        rc = smtp_send(e->smtp, e->msg.mail_from, e->msg.rcpt_to, e->msg.data, e->msg.len,
                       on_result, c);
        if (rc == -EBUSY) {
            channel_retry(&o, 0, "busy: %u messages wait for a connection", smtp_queued(e->smtp));
            rc = channel_call_defer(&c->base, &o);
        } else if (rc == 0) {
            channel_call_link(&c->base);
        }
    }
    if (rc < 0) {
        free(c);
        return rc;
    }
    return 0;
}

/* --- lifecycle ---------------------------------------------------------------------------------
 */

static void trim(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t')) {
        s[--n] = '\0';
    }
    size_t k = strspn(s, " \t");
    memmove(s, s + k, n - k + 1);
}

/* Split "Name <addr>" / "\"Name\" <addr>" / "addr". 0 or -EINVAL. */
static int parse_from(struct email *e, const char *from, char *why, size_t whylen)
{
    if (has_crlf(from)) {
        snprintf(why, whylen, "header_injection: CR or LF in email.from");
        return -EINVAL;
    }
    const char *lt = strchr(from, '<');
    if (!lt) {
        if (strlen(from) > EMAIL_ADDR_MAX) {
            snprintf(why, whylen, "address longer than %d", EMAIL_ADDR_MAX);
            return -EINVAL;
        }
        memcpy(e->from_addr, from, strlen(from) + 1);
        trim(e->from_addr);
        e->from_name[0] = '\0';
    } else {
        const char *gt = strchr(lt, '>');
        if (!gt || gt[1] != '\0' || (size_t)(gt - lt - 1) > EMAIL_ADDR_MAX) {
            snprintf(why, whylen, "expected Name <address>");
            return -EINVAL;
        }
        snprintf(e->from_addr, sizeof(e->from_addr), "%.*s", (int)(gt - lt - 1), lt + 1);
        snprintf(e->from_name, sizeof(e->from_name), "%.*s", (int)(lt - from), from);
        trim(e->from_name);
        size_t nl = strlen(e->from_name);
        if (nl >= 2 && e->from_name[0] == '"' && e->from_name[nl - 1] == '"') {
            memmove(e->from_name, e->from_name + 1, nl - 2);
            e->from_name[nl - 2] = '\0';
            if (strpbrk(e->from_name, "\"\\")) {
                snprintf(why, whylen, "quotes or backslashes inside a quoted name");
                return -EINVAL;
            }
        }
        if (!utf8_valid((const unsigned char *)e->from_name, strlen(e->from_name))) {
            snprintf(why, whylen, "display name is not UTF-8");
            return -EINVAL;
        }
        for (const char *p = e->from_name; *p; p++) {
            if ((unsigned char)*p < 0x20 || *p == 0x7f) {
                snprintf(why, whylen, "control character in the display name");
                return -EINVAL;
            }
        }
    }
    if (!email_address_valid(e->from_addr)) {
        snprintf(why, whylen, "'%.200s' is not an address (local@domain)", e->from_addr);
        return -EINVAL;
    }
    e->from_domain = strchr(e->from_addr, '@') + 1;
    return 0;
}

static void email_destroy(void *state)
{
    struct email *e = state;
    if (!e) {
        return;
    }
    smtp_destroy(e->smtp); /* aborts transfers; on_result never runs */
    channel_calls_abort(&e->calls);
    explicit_bzero(e->cfg.password, sizeof(e->cfg.password));
    free(e);
}

static int email_init(const struct channel_env *env, const void *config, void **state, char *err,
                      size_t errlen)
{
    const struct email_config *cfg = config;
    *state = NULL;
    struct email *e = calloc(1, sizeof(*e));
    if (!e) {
        snprintf(err, errlen, "email: out of memory");
        return -ENOMEM;
    }
    e->cfg = *cfg;
    e->loop = env ? env->loop : NULL;
    channel_calls_init(&e->calls, e->loop, &e->st.sent, &e->st.ok, &e->st.retry, &e->st.drop, NULL);
    int rc = TDG_ECONFIG;
    char why[CONFIG_ERR_MAX];

    if ((strncmp(e->cfg.smtp_url, "smtp://", 7) != 0 &&
         strncmp(e->cfg.smtp_url, "smtps://", 8) != 0) ||
        has_crlf(e->cfg.smtp_url) || strchr(e->cfg.smtp_url, ' ')) {
        snprintf(err, errlen,
                 "email.smtp_url: must be smtp://host:port (STARTTLS is then "
                 "required) or smtps://host:port");
        goto fail;
    }
    if (!e->cfg.from[0] || parse_from(e, e->cfg.from, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "email.from: %s", e->cfg.from[0] ? why : "required");
        goto fail;
    }
    if (e->cfg.password[0] && e->cfg.password_file[0]) {
        snprintf(err, errlen, "email.password and email.password_file: set one, not both");
        goto fail;
    }
    if (e->cfg.password_file[0]) {
        int r = channel_read_secret_line(e->cfg.password_file, e->cfg.password,
                                         sizeof(e->cfg.password));
        if (r < 0) {
            snprintf(err, errlen, "email.password_file: %s: %s", e->cfg.password_file,
                     tdg_strerror(r));
            goto fail;
        }
    }
    if (e->cfg.username[0] && !e->cfg.password[0]) {
        snprintf(err, errlen, "email.username is set: email.password or _file is required");
        goto fail;
    }
    if (has_crlf(e->cfg.username) || has_crlf(e->cfg.password) || has_crlf(e->cfg.helo) ||
        strchr(e->cfg.helo, '/') || strchr(e->cfg.helo, ' ')) {
        snprintf(err, errlen,
                 "email.username, email.password, email.helo: no CR, LF "
                 "(helo: no '/' or spaces)");
        goto fail;
    }
    if (e->cfg.connections < 1 || e->cfg.queue_max < 1) {
        snprintf(err, errlen, "email.connections and email.queue_max must be >= 1");
        goto fail;
    }
    if (e->loop) {
        struct smtp_opts so = {
            .url = e->cfg.smtp_url,
            .helo = e->cfg.helo[0] ? e->cfg.helo : e->from_domain,
            .username = e->cfg.username,
            .password = e->cfg.password,
            .auth = e->cfg.auth == 1   ? SMTP_AUTH_PLAIN
                    : e->cfg.auth == 2 ? SMTP_AUTH_LOGIN
                                       : SMTP_AUTH_AUTO,
            .ca_file = e->cfg.ca_file,
            .timeout_ms = e->cfg.timeout_ms,
            .max_active = (unsigned)e->cfg.connections,
            .queue_max = (unsigned)e->cfg.queue_max,
        };
        rc = smtp_create(e->loop, &so, &e->smtp);
        if (rc < 0) {
            snprintf(err, errlen, "email: cannot create SMTP client: %s", tdg_strerror(rc));
            if (rc == -EINVAL) {
                rc = TDG_ECONFIG;
            }
            goto fail;
        }
    }
    /* The client keeps its own copy; this one is no longer needed. */
    explicit_bzero(e->cfg.password, sizeof(e->cfg.password));
    LOG_INFO(MOD, "ready url=%s from=%s auth=%s connections=%" PRId64, e->cfg.smtp_url,
             e->from_addr, e->cfg.username[0] ? auth_choices[e->cfg.auth] : "none",
             e->cfg.connections);
    *state = e;
    return 0;
fail:
    email_destroy(e);
    return rc;
}

void email_get_stats(void *state, struct email_stats *out)
{
    const struct email *e = state;
    *out = e->st;
}

const struct channel_ops email_channel = {
    .name = "email",
    .config = email_config_table,
    .config_n = sizeof(email_config_table) / sizeof(email_config_table[0]),
    .config_size = sizeof(struct email_config),
    .init = email_init,
    .format = email_format,
    .send = email_send,
    .destroy = email_destroy,
};
