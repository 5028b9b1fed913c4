/* FCM's error table and the fake-fcm script parser; see fcm_rules.h. */
#include "fcm_rules.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* FCM v1 ErrorCode enum with the HTTP status Google sends it with
 * (firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode). */
static const struct {
    int status;
    const char *error;
    const char *message; /* what Google's answers say */
} fcm_error_table[] = {
    {400, "INVALID_ARGUMENT", "Request contains an invalid argument."},
    {401, "THIRD_PARTY_AUTH_ERROR", "Auth error from APNS or Web Push Service"},
    {403, "SENDER_ID_MISMATCH", "SenderId mismatch"},
    {404, "UNREGISTERED", "Requested entity was not found."},
    {429, "QUOTA_EXCEEDED",
     "Quota exceeded for quota metric 'Send requests' and limit 'Send requests per minute'"},
    {500, "INTERNAL", "Internal error encountered."},
    {503, "UNAVAILABLE", "The service is currently unavailable."},
};

const char *fcm_rpc_status(int s)
{
    switch (s) {
    case 400:
        return "INVALID_ARGUMENT";
    case 401:
        return "UNAUTHENTICATED";
    case 403:
        return "PERMISSION_DENIED";
    case 404:
        return "NOT_FOUND";
    case 409:
        return "ALREADY_EXISTS";
    case 429:
        return "RESOURCE_EXHAUSTED";
    case 500:
        return "INTERNAL";
    case 501:
        return "NOT_IMPLEMENTED";
    case 503:
        return "UNAVAILABLE";
    case 504:
        return "DEADLINE_EXCEEDED";
    default:
        return "";
    }
}

const char *fcm_default_error(int s)
{
    size_t i;

    for (i = 0; i < sizeof(fcm_error_table) / sizeof(fcm_error_table[0]); i++) {
        if (fcm_error_table[i].status == s) {
            return fcm_error_table[i].error;
        }
    }
    return "";
}

bool fcm_error_valid(int s, const char *e)
{
    size_t i;

    if (strcmp(e, "UNSPECIFIED_ERROR") == 0) {
        return s >= 400;
    }
    for (i = 0; i < sizeof(fcm_error_table) / sizeof(fcm_error_table[0]); i++) {
        if (fcm_error_table[i].status == s && strcmp(fcm_error_table[i].error, e) == 0) {
            return true;
        }
    }
    return false;
}

const char *fcm_default_message(const char *e, int s)
{
    size_t i;

    for (i = 0; i < sizeof(fcm_error_table) / sizeof(fcm_error_table[0]); i++) {
        if (strcmp(fcm_error_table[i].error, e) == 0) {
            return fcm_error_table[i].message;
        }
    }
    switch (s) {
    case 401:
        return "Request had invalid authentication credentials. Expected OAuth 2 access token, "
               "login cookie or other valid authentication credential. See "
               "https://developers.google.com/identity/sign-in/web/devconsole-project.";
    case 403:
        return "The caller does not have permission";
    case 404:
        return "Requested entity was not found.";
    case 429:
        return "Resource has been exhausted (e.g. check quota).";
    case 500:
        return "Internal error encountered.";
    case 503:
        return "The service is currently unavailable.";
    default:
        return "Request contains an invalid argument.";
    }
}

bool fcm_reg_token_valid(const char *s, size_t n)
{
    size_t i;

    if (n == 0 || n > FCM_REG_TOKEN_MAX) {
        return false;
    }
    for (i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == ':' || c == '.' || c == '+' || c == '/' || c == '=')) {
            return false;
        }
    }
    return true;
}

/* OAuth error names: lowercase words with '_' (invalid_grant, server_error). */
static bool oauth_error_valid(const char *e)
{
    size_t i;

    for (i = 0; e[i]; i++) {
        if (!((e[i] >= 'a' && e[i] <= 'z') || e[i] == '_') || i >= FCM_ERROR_MAX - 1) {
            return false;
        }
    }
    return i > 0;
}

static const char *oauth_default_error(int s)
{
    switch (s) {
    case 400:
        return "invalid_grant";
    case 401:
        return "invalid_client";
    case 403:
        return "access_denied";
    case 429:
        return "rate_limit_exceeded";
    case 503:
        return "temporarily_unavailable";
    default:
        return "server_error";
    }
}

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

/* Splits line in place at blanks into at most max words; the word after
 * "message" and everything up to the end of the line stay one word.
 * Returns the count, or -1 when there are more than max. */
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
        if (n >= 2 && strcmp(words[n - 2], "message") == 0) {
            char *end = p + strlen(p);
            while (end > p && (end[-1] == ' ' || end[-1] == '\t')) {
                *--end = '\0';
            }
            return n;
        }
        while (*p != '\0' && *p != ' ' && *p != '\t') {
            p++;
        }
        if (*p != '\0') {
            *p++ = '\0';
        }
    }
}

static int parse_rule(char **w, int nw, fcm_rule *r, char *msg, size_t msglen)
{
    bool has_status = false, has_delay = false, has_error = false, has_ra = false;
    bool has_msg = false;
    int i;
    bool oauth;

    memset(r, 0, sizeof(*r));
    r->action = FCM_ACT_REPLY;
    r->status = 200;
    r->retry_after_s = -1;
    r->times_left = -1;

    if (nw >= 1 && strcmp(w[0], "oauth") == 0) {
        r->target = FCM_RULE_OAUTH;
        i = 1;
    } else if (nw >= 2 && strcmp(w[0], "token") == 0) {
        r->target = FCM_RULE_SEND;
        if (strcmp(w[1], "*") != 0) {
            if (!fcm_reg_token_valid(w[1], strlen(w[1]))) {
                snprintf(msg, msglen,
                         "token must be '*' or a registration token "
                         "([A-Za-z0-9_:.+/=-])");
                return -1;
            }
            r->token = strdup(w[1]);
            if (r->token == NULL) {
                snprintf(msg, msglen, "out of memory");
                return -1;
            }
        }
        i = 2;
    } else {
        snprintf(msg, msglen, "a rule starts with 'token <regtoken|*>' or 'oauth'");
        return -1;
    }
    oauth = r->target == FCM_RULE_OAUTH;
    for (; i < nw; i++) {
        const char *kw = w[i];
        bool needs_value = strcmp(kw, "goaway") != 0 && strcmp(kw, "drop") != 0;
        const char *val = NULL;
        int j;

        for (j = oauth ? 1 : 2; j < i; j++) {
            if (strcmp(w[j], kw) == 0) {
                snprintf(msg, msglen, "'%s' given twice", kw);
                goto fail;
            }
        }
        if (needs_value) {
            if (i + 1 >= nw) {
                snprintf(msg, msglen, "'%s' needs a value", kw);
                goto fail;
            }
            val = w[++i];
        }
        if (strcmp(kw, "status") == 0) {
            int64_t v;
            bool known = false;
            if (parse_int(val, 200, 599, &v) == 0) {
                known = v == 200 || (oauth ? v >= 400 : fcm_rpc_status((int)v)[0] != '\0');
            }
            if (!known) {
                snprintf(msg, msglen, "status '%s' is not 200 or a status %s answers", val,
                         oauth ? "the token endpoint" : "FCM");
                goto fail;
            }
            r->status = (int)v;
            has_status = true;
        } else if (strcmp(kw, "error") == 0) {
            if (strlen(val) >= sizeof(r->error)) {
                snprintf(msg, msglen, "error '%s' is too long", val);
                goto fail;
            }
            snprintf(r->error, sizeof(r->error), "%s", val);
            has_error = true;
        } else if (strcmp(kw, "message") == 0) {
            if (strlen(val) >= sizeof(r->message) || strchr(val, '"') || strchr(val, '\\')) {
                snprintf(msg, msglen, "message is longer than %d bytes or has '\"' or '\\'",
                         FCM_MESSAGE_MAX - 1);
                goto fail;
            }
            snprintf(r->message, sizeof(r->message), "%s", val);
            has_msg = true;
        } else if (strcmp(kw, "retry-after") == 0 || strcmp(kw, "retry-after-date") == 0) {
            if (has_ra || oauth || parse_int(val, 0, 86400 * 365, &r->retry_after_s) != 0) {
                snprintf(msg, msglen, "%s '%s' is not seconds (once, send rules only)", kw, val);
                goto fail;
            }
            r->retry_after_date = strcmp(kw, "retry-after-date") == 0;
            has_ra = true;
        } else if (strcmp(kw, "delay") == 0) {
            if (parse_int(val, 0, 3600 * 1000, &r->delay_ms) != 0) {
                snprintf(msg, msglen, "delay '%s' is not 0..3600000 ms", val);
                goto fail;
            }
            has_delay = true;
        } else if (strcmp(kw, "times") == 0) {
            if (parse_int(val, 1, INT64_MAX, &r->times_left) != 0) {
                snprintf(msg, msglen, "times '%s' is not a count >= 1", val);
                goto fail;
            }
        } else if (strcmp(kw, "cut") == 0) {
            r->cut = fake_cut_parse(val);
            if (r->cut == FAKE_CUT_NONE) {
                snprintf(msg, msglen, "cut '%s' is not headers, body, reset or goaway", val);
                goto fail;
            }
        } else if (strcmp(kw, "goaway") == 0 || strcmp(kw, "drop") == 0) {
            if (r->action != FCM_ACT_REPLY) {
                snprintf(msg, msglen, "one of goaway and drop, once");
                goto fail;
            }
            r->action = strcmp(kw, "goaway") == 0 ? FCM_ACT_GOAWAY : FCM_ACT_DROP;
        } else {
            snprintf(msg, msglen, "unknown word '%s'", kw);
            goto fail;
        }
    }

    if (r->action != FCM_ACT_REPLY) {
        if (has_status || has_delay || has_error || has_ra || has_msg ||
            r->cut != FAKE_CUT_NONE) {
            snprintf(msg, msglen, "%s takes only 'times'",
                     r->action == FCM_ACT_GOAWAY ? "goaway" : "drop");
            goto fail;
        }
        return 0;
    }
    if (!has_status && !has_delay && r->cut == FAKE_CUT_NONE) {
        snprintf(msg, msglen, "a rule needs 'status', 'delay', 'cut', 'goaway' or 'drop'");
        goto fail;
    }
    if (r->status == 200) {
        if (has_error || has_msg) {
            snprintf(msg, msglen, "status 200 takes no error or message");
            goto fail;
        }
        return 0;
    }
    if (oauth) {
        if (!has_error) {
            snprintf(r->error, sizeof(r->error), "%s", oauth_default_error(r->status));
        } else if (!oauth_error_valid(r->error)) {
            snprintf(msg, msglen, "oauth error '%s' is not a word of [a-z_]", r->error);
            goto fail;
        }
        return 0;
    }
    if (!has_error) {
        snprintf(r->error, sizeof(r->error), "%s", fcm_default_error(r->status));
    } else if (strcmp(r->error, "none") == 0) {
        r->error[0] = '\0'; /* a bare google.rpc.Status, no FcmError detail */
    } else if (!fcm_error_valid(r->status, r->error)) {
        snprintf(msg, msglen, "error '%s' does not go with status %d in FCM's table", r->error,
                 r->status);
        goto fail;
    }
    return 0;
fail:
    free(r->token);
    r->token = NULL;
    return -1;
}

int fcm_rules_load(const char *path, fcm_rules *out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    char line[FCM_RULE_LINE_MAX + 2];
    fcm_rules r = {NULL, 0};
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
        char msg[200];
        char *hash;
        size_t len = strlen(line);
        int nw;

        lineno++;
        if (len > 0 && line[len - 1] == '\n') {
            line[--len] = '\0';
        } else if (!feof(f)) {
            snprintf(err, errlen, "%s:%d: line longer than %d bytes", path, lineno,
                     FCM_RULE_LINE_MAX);
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
        if (r.n == FCM_RULES_MAX) {
            snprintf(err, errlen, "%s:%d: more than %d rules", path, lineno, FCM_RULES_MAX);
            goto fail;
        }
        if (r.n == cap) {
            size_t ncap = cap == 0 ? 16 : cap * 2;
            fcm_rule *nv = realloc(r.v, ncap * sizeof(*nv));
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
    fcm_rules_free(&r);
    return -1;
}

void fcm_rules_free(fcm_rules *r)
{
    size_t i;

    for (i = 0; i < r->n; i++) {
        free(r->v[i].token);
    }
    free(r->v);
    r->v = NULL;
    r->n = 0;
}

const fcm_rule *fcm_rules_match(fcm_rules *r, enum fcm_rule_target target, const char *token,
                                size_t len)
{
    size_t i;

    for (i = 0; i < r->n; i++) {
        fcm_rule *rule = &r->v[i];
        if (rule->target != target || rule->times_left == 0) {
            continue;
        }
        if (target == FCM_RULE_SEND && rule->token != NULL &&
            (strlen(rule->token) != len || memcmp(rule->token, token, len) != 0)) {
            continue;
        }
        if (rule->times_left > 0) {
            rule->times_left--;
        }
        return rule;
    }
    return NULL;
}
