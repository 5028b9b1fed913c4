/* Apple's reason table and the script parser; see apns_rules.h. */
#include "apns_rules.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define APNS_RULE_LINE_MAX 1024

/* Apple's "Handling notification responses from APNs", status by status. */
static const struct {
    int status;
    const char *reason;
} apns_reason_table[] = {
    {400, "BadCollapseId"},
    {400, "BadDeviceToken"},
    {400, "BadExpirationDate"},
    {400, "BadMessageId"},
    {400, "BadPriority"},
    {400, "BadTopic"},
    {400, "DeviceTokenNotForTopic"},
    {400, "DuplicateHeaders"},
    {400, "IdleTimeout"},
    {400, "InvalidPushType"},
    {400, "MissingDeviceToken"},
    {400, "MissingTopic"},
    {400, "PayloadEmpty"},
    {400, "TopicDisallowed"},
    {403, "BadCertificate"},
    {403, "BadCertificateEnvironment"},
    {403, "ExpiredProviderToken"},
    {403, "Forbidden"},
    {403, "InvalidProviderToken"},
    {403, "MissingProviderToken"},
    {404, "BadPath"},
    {405, "MethodNotAllowed"},
    {410, "ExpiredToken"},
    {410, "Unregistered"},
    {413, "PayloadTooLarge"},
    {429, "TooManyProviderTokenUpdates"},
    {429, "TooManyRequests"},
    {500, "InternalServerError"},
    {503, "ServiceUnavailable"},
    {503, "Shutdown"},
};

bool apns_reason_valid(int status, const char *reason)
{
    size_t i;

    for (i = 0; i < sizeof(apns_reason_table) / sizeof(apns_reason_table[0]); i++) {
        if (apns_reason_table[i].status == status &&
            strcmp(apns_reason_table[i].reason, reason) == 0) {
            return true;
        }
    }
    return false;
}

/* Any reason in the table, whatever its status (for GOAWAY debug data). */
static bool reason_known(const char *reason)
{
    size_t i;

    for (i = 0; i < sizeof(apns_reason_table) / sizeof(apns_reason_table[0]); i++) {
        if (strcmp(apns_reason_table[i].reason, reason) == 0) {
            return true;
        }
    }
    return false;
}

const char *apns_default_reason(int status)
{
    switch (status) {
    case 400:
        return "BadDeviceToken";
    case 403:
        return "Forbidden";
    case 404:
        return "BadPath";
    case 405:
        return "MethodNotAllowed";
    case 410:
        return "Unregistered";
    case 413:
        return "PayloadTooLarge";
    case 429:
        return "TooManyRequests";
    case 500:
        return "InternalServerError";
    case 503:
        return "ServiceUnavailable";
    default:
        return "";
    }
}

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

bool apns_token_valid(const char *s, size_t n)
{
    size_t i;

    if (n < APNS_TOKEN_MIN_HEX || n > APNS_TOKEN_MAX_HEX) {
        return false;
    }
    for (i = 0; i < n; i++) {
        if (!is_hex(s[i])) {
            return false;
        }
    }
    return true;
}

static char lower_ascii(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

/* Parses a whole decimal integer in [min, max]; no sign, no junk. */
static int parse_int(const char *s, int64_t min, int64_t max, int64_t *out)
{
    char *end;
    long long v;

    if (*s < '0' || *s > '9') {
        return -1;
    }
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max) {
        return -1;
    }
    *out = v;
    return 0;
}

/*
 * Splits line in place at blanks into at most max words.
 * Returns the word count, or -1 when there are more than max.
 */
static int split_words(char *line, char **words, int max)
{
    int n = 0;
    char *p = line;

    for (;;) {
        while (*p == ' ' || *p == '\t') {
            p++;
        }
        if (*p == '\0') {
            return n;
        }
        if (n == max) {
            return -1;
        }
        words[n++] = p;
        while (*p != '\0' && *p != ' ' && *p != '\t') {
            p++;
        }
        if (*p != '\0') {
            *p++ = '\0';
        }
    }
}

/* Parses one non-empty rule line; returns 0 or -1 with msg set. */
static int parse_rule(char **w, int nw, apns_rule *r, char *msg, size_t msglen)
{
    bool has_status = false;
    bool has_delay = false;
    bool has_reason = false;
    bool has_ts = false;
    bool has_ra = false;
    int i;

    memset(r, 0, sizeof(*r));
    r->action = APNS_ACT_REPLY;
    r->status = 200;
    r->timestamp_ms = -1;
    r->retry_after_s = -1;
    r->times_left = -1;

    if (nw < 2 || strcmp(w[0], "token") != 0) {
        snprintf(msg, msglen, "a rule starts with 'token <hex|*>'");
        return -1;
    }
    if (strcmp(w[1], "*") != 0) {
        size_t n = strlen(w[1]);
        size_t k;
        if (!apns_token_valid(w[1], n)) {
            snprintf(msg, msglen, "token must be '*' or %d..%d hex digits", APNS_TOKEN_MIN_HEX,
                     APNS_TOKEN_MAX_HEX);
            return -1;
        }
        for (k = 0; k < n; k++) {
            r->token[k] = lower_ascii(w[1][k]);
        }
        r->token[n] = '\0';
    }
    for (i = 2; i < nw; i++) {
        const char *kw = w[i];
        bool needs_value = strcmp(kw, "goaway") != 0 && strcmp(kw, "drop") != 0;
        const char *val = NULL;
        int64_t v;
        int j;

        for (j = 2; j < i; j++) {
            if (strcmp(w[j], kw) == 0) {
                snprintf(msg, msglen, "'%s' given twice", kw);
                return -1;
            }
        }
        if (needs_value) {
            if (i + 1 >= nw) {
                snprintf(msg, msglen, "'%s' needs a value", kw);
                return -1;
            }
            val = w[++i];
        }
        if (strcmp(kw, "status") == 0) {
            if (has_status || parse_int(val, 200, 599, &v) != 0 ||
                (v != 200 && apns_default_reason((int)v)[0] == '\0')) {
                snprintf(msg, msglen, "status '%s' is not 200 or a status APNs answers", val);
                return -1;
            }
            r->status = (int)v;
            has_status = true;
        } else if (strcmp(kw, "reason") == 0) {
            if (has_reason || strlen(val) >= sizeof(r->reason) || !reason_known(val)) {
                snprintf(msg, msglen, "reason '%s' is not one of Apple's reasons", val);
                return -1;
            }
            snprintf(r->reason, sizeof(r->reason), "%s", val);
            has_reason = true;
        } else if (strcmp(kw, "timestamp") == 0) {
            if (has_ts || parse_int(val, 0, INT64_MAX, &r->timestamp_ms) != 0) {
                snprintf(msg, msglen, "timestamp '%s' is not milliseconds since the epoch", val);
                return -1;
            }
            has_ts = true;
        } else if (strcmp(kw, "retry-after") == 0) {
            if (has_ra || parse_int(val, 0, 86400 * 365, &r->retry_after_s) != 0) {
                snprintf(msg, msglen, "retry-after '%s' is not seconds", val);
                return -1;
            }
            has_ra = true;
        } else if (strcmp(kw, "delay") == 0) {
            if (has_delay || parse_int(val, 0, 3600 * 1000, &r->delay_ms) != 0) {
                snprintf(msg, msglen, "delay '%s' is not 0..3600000 ms", val);
                return -1;
            }
            has_delay = true;
        } else if (strcmp(kw, "times") == 0) {
            if (r->times_left >= 0 || parse_int(val, 1, INT64_MAX, &r->times_left) != 0) {
                snprintf(msg, msglen, "times '%s' is not a count >= 1", val);
                return -1;
            }
        } else if (strcmp(kw, "cut") == 0) {
            r->cut = fake_cut_parse(val);
            if (r->cut == FAKE_CUT_NONE) {
                snprintf(msg, msglen, "cut '%s' is not headers, body, reset or goaway", val);
                return -1;
            }
        } else if (strcmp(kw, "goaway") == 0 || strcmp(kw, "drop") == 0) {
            if (r->action != APNS_ACT_REPLY) {
                snprintf(msg, msglen, "one of goaway and drop, once");
                return -1;
            }
            r->action = strcmp(kw, "goaway") == 0 ? APNS_ACT_GOAWAY : APNS_ACT_DROP;
        } else {
            snprintf(msg, msglen, "unknown word '%s'", kw);
            return -1;
        }
    }

    if (r->action != APNS_ACT_REPLY) {
        if (has_status || has_delay || has_ts || has_ra || r->cut != FAKE_CUT_NONE ||
            (has_reason && r->action == APNS_ACT_DROP)) {
            snprintf(msg, msglen, "%s takes only %s'times'",
                     r->action == APNS_ACT_GOAWAY ? "goaway" : "drop",
                     r->action == APNS_ACT_GOAWAY ? "'reason' and " : "");
            return -1;
        }
        return 0;
    }
    if (!has_status && !has_delay && r->cut == FAKE_CUT_NONE) {
        snprintf(msg, msglen, "a rule needs 'status', 'delay', 'cut', 'goaway' or 'drop'");
        return -1;
    }
    if (r->cut == FAKE_CUT_BODY && r->status == 200) {
        snprintf(msg, msglen, "cut body needs a status with a body (APNs' 200 has none)");
        return -1;
    }
    if (r->status == 200) {
        if (has_reason || has_ts) {
            snprintf(msg, msglen, "status 200 takes no reason or timestamp");
            return -1;
        }
        return 0;
    }
    if (!has_reason) {
        snprintf(r->reason, sizeof(r->reason), "%s", apns_default_reason(r->status));
    } else if (!apns_reason_valid(r->status, r->reason)) {
        snprintf(msg, msglen, "reason '%s' does not go with status %d in Apple's table", r->reason,
                 r->status);
        return -1;
    }
    if (has_ts && r->status != 410) {
        snprintf(msg, msglen, "timestamp goes with status 410 only");
        return -1;
    }
    return 0;
}

int apns_rules_load(const char *path, apns_rules *out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    char line[APNS_RULE_LINE_MAX + 2];
    apns_rules r = {NULL, 0};
    size_t cap = 0;
    int lineno = 0;

    out->v = NULL;
    out->n = 0;
    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        char *words[32];
        char msg[160];
        char *hash;
        size_t len = strlen(line);
        int nw;

        lineno++;
        if (len > 0 && line[len - 1] == '\n') {
            line[--len] = '\0';
        } else if (!feof(f)) {
            snprintf(err, errlen, "%s:%d: line longer than %d bytes", path, lineno,
                     APNS_RULE_LINE_MAX);
            goto fail;
        }
        if (len > 0 && line[len - 1] == '\r') {
            line[--len] = '\0';
        }
        hash = strchr(line, '#');
        if (hash != NULL) {
            *hash = '\0';
        }
        nw = split_words(line, words, (int)(sizeof(words) / sizeof(words[0])));
        if (nw == 0) {
            continue;
        }
        if (nw < 0) {
            snprintf(err, errlen, "%s:%d: too many words", path, lineno);
            goto fail;
        }
        if (r.n == APNS_RULES_MAX) {
            snprintf(err, errlen, "%s:%d: more than %d rules", path, lineno, APNS_RULES_MAX);
            goto fail;
        }
        if (r.n == cap) {
            size_t ncap = cap == 0 ? 16 : cap * 2;
            apns_rule *nv = realloc(r.v, ncap * sizeof(*nv));
            if (nv == NULL) {
                snprintf(err, errlen, "%s:%d: out of memory", path, lineno);
                goto fail;
            }
            r.v = nv;
            cap = ncap;
        }
        if (parse_rule(words, nw, &r.v[r.n], msg, sizeof(msg)) != 0) {
            snprintf(err, errlen, "%s:%d: %s", path, lineno, msg);
            goto fail;
        }
        r.v[r.n].line = lineno;
        r.n++;
    }
    if (ferror(f)) {
        snprintf(err, errlen, "%s: read error", path);
        goto fail;
    }
    fclose(f);
    *out = r;
    return 0;
fail:
    fclose(f);
    free(r.v);
    return -1;
}

void apns_rules_free(apns_rules *r)
{
    free(r->v);
    r->v = NULL;
    r->n = 0;
}

const apns_rule *apns_rules_match(apns_rules *r, const char *token, size_t len)
{
    size_t i;

    for (i = 0; i < r->n; i++) {
        apns_rule *rule = &r->v[i];
        if (rule->times_left == 0) {
            continue;
        }
        if (rule->token[0] != '\0') {
            size_t k;
            if (strlen(rule->token) != len) {
                continue;
            }
            for (k = 0; k < len && rule->token[k] == lower_ascii(token[k]); k++) {
            }
            if (k != len) {
                continue;
            }
        }
        if (rule->times_left > 0) {
            rule->times_left--;
        }
        return rule;
    }
    return NULL;
}
