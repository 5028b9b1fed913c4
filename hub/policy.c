/*
 * policy.c - the hub's preference rules (see policy.h, docs/hub-policy.md).
 *
 * A parsed document is plain arrays; nothing of the JSON tree is kept. The
 * quiet-hours arithmetic is the agent's (agent/policy.c): agent and hub must
 * answer the same for the same preferences, and the snapshot they share
 * carries only what both understand.
 */
#include "policy.h"

#include "error.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pol_category {
    char name[PROTO_CATEGORY_MAX + 1];
    bool opt_out;
    unsigned channels_off; /* PROTO_CH_* bits */
    bool has_cap;
    int64_t cap_max, cap_window_ms;
};

struct policy_prefs {
    bool opt_out;
    struct pol_category *cats; /* categories and caps share entries */
    size_t ncats;
    bool quiet;
    int quiet_start, quiet_end; /* minutes after local midnight */
    bool quiet_drop;
    struct policy_step steps[POLICY_FALLBACK_MAX];
    size_t nsteps;
};

/* --- parsing ------------------------------------------------------------ */

static int fail(struct policy_error *err, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct policy_error *err, const char *field, const char *fmt, ...)
{
    if (err) {
        snprintf(err->field, sizeof(err->field), "%s", field);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->detail, sizeof(err->detail), fmt, ap);
        va_end(ap);
    }
    return TDG_EINVAL_INPUT;
}

/* out = a + b + c (any may be NULL), cut to fit a policy_error field. */
static void path_cat(char *out, const char *a, const char *b, const char *c)
{
    const size_t cap = sizeof(((struct policy_error *)0)->field);
    const char *parts[3] = {a, b, c};
    size_t o = 0;
    for (int i = 0; i < 3; i++) {
        for (const char *p = parts[i]; p && *p && o + 1 < cap; p++) {
            out[o++] = *p;
        }
    }
    out[o] = '\0';
}

static const char *json_type(const cJSON *j)
{
    if (cJSON_IsObject(j)) {
        return "object";
    }
    if (cJSON_IsArray(j)) {
        return "array";
    }
    if (cJSON_IsString(j)) {
        return "string";
    }
    if (cJSON_IsNumber(j)) {
        return "number";
    }
    if (cJSON_IsBool(j)) {
        return "boolean";
    }
    return "null";
}

static const char *dup_key(const cJSON *obj)
{
    for (const cJSON *a = obj->child; a; a = a->next) {
        for (const cJSON *b = a->next; b; b = b->next) {
            if (strcmp(a->string, b->string) == 0) {
                return a->string;
            }
        }
    }
    return NULL;
}

/* Refuse members not in `known` (NULL-terminated): a misspelt key must not
 * quietly mean "no preference". */
static int check_keys(const cJSON *obj, const char *path, const char *const *known,
                      struct policy_error *err)
{
    const char *dup = dup_key(obj);
    if (dup) {
        char field[sizeof(err->field)];
        path_cat(field, path, *path ? "." : "", dup);
        return fail(err, field, "given twice");
    }
    for (const cJSON *c = obj->child; c; c = c->next) {
        bool ok = false;
        for (const char *const *k = known; *k; k++) {
            ok = ok || strcmp(*k, c->string) == 0;
        }
        if (!ok) {
            char field[sizeof(err->field)];
            path_cat(field, path, *path ? "." : "", c->string);
            return fail(err, field, "unknown field");
        }
    }
    return 0;
}

static bool category_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > PROTO_CATEGORY_MAX) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok =
            (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
        if (!ok) {
            return false;
        }
    }
    return true;
}

static unsigned channel_bit(const char *s)
{
    static const unsigned bits[] = {PROTO_CH_PUSH, PROTO_CH_SMS, PROTO_CH_EMAIL, PROTO_CH_DESKTOP,
                                    PROTO_CH_LOCAL};
    for (size_t i = 0; i < sizeof(bits) / sizeof(bits[0]); i++) {
        if (strcmp(s, proto_channel_name((enum proto_channel)bits[i])) == 0) {
            return bits[i];
        }
    }
    return 0;
}

static int parse_hhmm(const char *s, int *minutes)
{
    if (strlen(s) != 5 || s[2] != ':') {
        return -1;
    }
    for (int i = 0; i < 5; i++) {
        if (i != 2 && (s[i] < '0' || s[i] > '9')) {
            return -1;
        }
    }
    int h = (s[0] - '0') * 10 + (s[1] - '0');
    int m = (s[3] - '0') * 10 + (s[4] - '0');
    if (h > 23 || m > 59) {
        return -1;
    }
    *minutes = h * 60 + m;
    return 0;
}

int policy_parse_duration(const char *s, int64_t *ms)
{
    if (!s || !*s) {
        return TDG_EINVAL_INPUT;
    }
    int64_t v = 0;
    const char *p = s;
    while (*p >= '0' && *p <= '9') {
        if (v > 1000000000) {
            return TDG_EINVAL_INPUT;
        }
        v = v * 10 + (*p - '0');
        p++;
    }
    if (p == s || p[0] == '\0' || p[1] != '\0') {
        return TDG_EINVAL_INPUT;
    }
    int64_t unit;
    switch (*p) {
    case 's':
        unit = 1000;
        break;
    case 'm':
        unit = 60000;
        break;
    case 'h':
        unit = 3600000;
        break;
    case 'd':
        unit = 86400000;
        break;
    default:
        return TDG_EINVAL_INPUT;
    }
    *ms = v * unit; /* v <= 1e10, unit <= 8.64e7: no overflow */
    return 0;
}

static int get_bool(const cJSON *parent, const char *key, const char *path, bool *out,
                    struct policy_error *err)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(parent, key);
    if (!j) {
        return 0;
    }
    char field[sizeof(err->field)];
    path_cat(field, path, *path ? "." : "", key);
    if (!cJSON_IsBool(j)) {
        return fail(err, field, "must be true or false, got %s", json_type(j));
    }
    *out = cJSON_IsTrue(j);
    return 0;
}

static struct pol_category *cat_get(policy_prefs_t *p, const char *name)
{
    for (size_t i = 0; i < p->ncats; i++) {
        if (strcmp(p->cats[i].name, name) == 0) {
            return &p->cats[i];
        }
    }
    struct pol_category *c = &p->cats[p->ncats++];
    snprintf(c->name, sizeof(c->name), "%s", name);
    return c;
}

static int parse_category(const cJSON *c, policy_prefs_t *p, struct policy_error *err)
{
    char path[sizeof(err->field)];
    path_cat(path, "categories.", c->string, NULL);
    if (!category_valid(c->string)) {
        return fail(err, path, "category must be 1..%d of [a-z0-9_.-]", PROTO_CATEGORY_MAX);
    }
    if (!cJSON_IsObject(c)) {
        return fail(err, path, "must be an object, got %s", json_type(c));
    }
    static const char *const known[] = {"opt_out", "channels_off", NULL};
    int rc = check_keys(c, path, known, err);
    if (rc < 0) {
        return rc;
    }
    struct pol_category *out = cat_get(p, c->string);
    if ((rc = get_bool(c, "opt_out", path, &out->opt_out, err)) < 0) {
        return rc;
    }
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(c, "channels_off");
    if (off) {
        char field[sizeof(err->field)];
        path_cat(field, path, ".channels_off", NULL);
        if (!cJSON_IsArray(off)) {
            return fail(err, field, "must be an array, got %s", json_type(off));
        }
        int i = 0;
        for (const cJSON *e = off->child; e; e = e->next, i++) {
            char ef[sizeof(err->field)];
            char idx[16];
            snprintf(idx, sizeof(idx), "[%d]", i);
            path_cat(ef, field, idx, NULL);
            if (!cJSON_IsString(e)) {
                return fail(err, ef, "must be a string, got %s", json_type(e));
            }
            unsigned bit = channel_bit(e->valuestring);
            if (!bit) {
                return fail(err, ef, "unknown channel (push, sms, email, desktop, local)");
            }
            if (out->channels_off & bit) {
                return fail(err, ef, "channel given twice");
            }
            out->channels_off |= bit;
        }
    }
    return 0;
}

static int parse_cap(const cJSON *c, policy_prefs_t *p, struct policy_error *err)
{
    char path[sizeof(err->field)];
    path_cat(path, "caps.", c->string, NULL);
    if (!category_valid(c->string)) {
        return fail(err, path, "category must be 1..%d of [a-z0-9_.-]", PROTO_CATEGORY_MAX);
    }
    if (!cJSON_IsObject(c)) {
        return fail(err, path, "must be an object {\"max\":N,\"window\":\"1d\"}, got %s",
                    json_type(c));
    }
    static const char *const known[] = {"max", "window", NULL};
    int rc = check_keys(c, path, known, err);
    if (rc < 0) {
        return rc;
    }
    char field[sizeof(err->field)];
    const cJSON *max = cJSON_GetObjectItemCaseSensitive(c, "max");
    path_cat(field, path, ".max", NULL);
    if (!max) {
        return fail(err, field, "missing");
    }
    if (!cJSON_IsNumber(max) || !(max->valuedouble >= 0 && max->valuedouble <= POLICY_CAP_MAX) ||
        (double)(int64_t)max->valuedouble != max->valuedouble) {
        return fail(err, field, "must be an integer 0..%d", POLICY_CAP_MAX);
    }
    const cJSON *win = cJSON_GetObjectItemCaseSensitive(c, "window");
    path_cat(field, path, ".window", NULL);
    if (!win) {
        return fail(err, field, "missing");
    }
    int64_t wms = 0;
    if (!cJSON_IsString(win) || policy_parse_duration(win->valuestring, &wms) < 0 || wms <= 0 ||
        wms > POLICY_WINDOW_MAX_MS) {
        return fail(err, field, "must be a duration like \"1h\" or \"1d\", 1s..30d");
    }
    struct pol_category *cat = cat_get(p, c->string);
    cat->has_cap = true;
    cat->cap_max = (int64_t)max->valuedouble;
    cat->cap_window_ms = wms;
    return 0;
}

static int parse_quiet(const cJSON *q, policy_prefs_t *p, struct policy_error *err)
{
    const char *path = "quiet_hours";
    if (!cJSON_IsObject(q)) {
        return fail(err, path, "must be an object, got %s", json_type(q));
    }
    static const char *const known[] = {"start", "end", "mode", NULL};
    int rc = check_keys(q, path, known, err);
    if (rc < 0) {
        return rc;
    }
    static const char *const keys[] = {"start", "end"};
    int *dst[] = {&p->quiet_start, &p->quiet_end};
    for (int i = 0; i < 2; i++) {
        char field[sizeof(err->field)];
        path_cat(field, path, ".", keys[i]);
        const cJSON *j = cJSON_GetObjectItemCaseSensitive(q, keys[i]);
        if (!j) {
            return fail(err, field, "missing");
        }
        if (!cJSON_IsString(j)) {
            return fail(err, field, "must be a string \"HH:MM\", got %s", json_type(j));
        }
        if (parse_hhmm(j->valuestring, dst[i]) < 0) {
            return fail(err, field, "must be \"HH:MM\" between 00:00 and 23:59");
        }
    }
    if (p->quiet_start == p->quiet_end) {
        return fail(err, path, "start and end are equal: an empty window (leave quiet_hours out)");
    }
    const cJSON *mode = cJSON_GetObjectItemCaseSensitive(q, "mode");
    if (mode) {
        if (!cJSON_IsString(mode)) {
            return fail(err, "quiet_hours.mode", "must be \"hold\" or \"drop\", got %s",
                        json_type(mode));
        }
        if (strcmp(mode->valuestring, "drop") == 0) {
            p->quiet_drop = true;
        } else if (strcmp(mode->valuestring, "hold") != 0) {
            return fail(err, "quiet_hours.mode", "must be \"hold\" or \"drop\"");
        }
    }
    p->quiet = true;
    return 0;
}

static int parse_fallback(const cJSON *f, policy_prefs_t *p, struct policy_error *err)
{
    if (!cJSON_IsArray(f)) {
        return fail(err, "fallback", "must be an array of {\"channel\":..,\"after\":..}, got %s",
                    json_type(f));
    }
    int n = cJSON_GetArraySize(f);
    if (n < 1 || n > POLICY_FALLBACK_MAX) {
        return fail(err, "fallback", "1..%d steps, got %d", POLICY_FALLBACK_MAX, n);
    }
    int i = 0;
    unsigned seen = 0;
    for (const cJSON *e = f->child; e; e = e->next, i++) {
        char path[sizeof(err->field)], field[sizeof(err->field)];
        char idx[16];
        snprintf(idx, sizeof(idx), "[%d]", i);
        path_cat(path, "fallback", idx, NULL);
        if (!cJSON_IsObject(e)) {
            return fail(err, path, "must be an object, got %s", json_type(e));
        }
        static const char *const known[] = {"channel", "after", NULL};
        int rc = check_keys(e, path, known, err);
        if (rc < 0) {
            return rc;
        }
        const cJSON *ch = cJSON_GetObjectItemCaseSensitive(e, "channel");
        path_cat(field, path, ".channel", NULL);
        if (!ch) {
            return fail(err, field, "missing");
        }
        unsigned bit = cJSON_IsString(ch) ? channel_bit(ch->valuestring) : 0;
        if (bit != PROTO_CH_PUSH && bit != PROTO_CH_SMS && bit != PROTO_CH_EMAIL) {
            return fail(err, field, "must be \"push\", \"sms\" or \"email\" (channels the hub "
                                    "delivers)");
        }
        if (seen & bit) {
            return fail(err, field, "channel given twice");
        }
        seen |= bit;
        const cJSON *after = cJSON_GetObjectItemCaseSensitive(e, "after");
        path_cat(field, path, ".after", NULL);
        int64_t ams = 0;
        if (after) {
            if (!cJSON_IsString(after) || policy_parse_duration(after->valuestring, &ams) < 0 ||
                ams > POLICY_AFTER_MAX_MS) {
                return fail(err, field, "must be a duration like \"10m\", 0s..7d");
            }
        } else if (i > 0) {
            return fail(err, field, "missing (time since the first attempt, e.g. \"10m\")");
        }
        if (i == 0 && ams != 0) {
            return fail(err, field, "the first step starts at once (leave after out)");
        }
        if (i > 0 && ams < p->steps[i - 1].after_ms) {
            return fail(err, field, "must not be earlier than the step before (counted from "
                                    "the first attempt)");
        }
        p->steps[i].channel = (enum proto_channel)bit;
        p->steps[i].after_ms = ams;
        p->nsteps++;
    }
    return 0;
}

void policy_prefs_free(policy_prefs_t *p)
{
    if (p) {
        free(p->cats);
        free(p);
    }
}

static int parse_tree(const cJSON *root, policy_prefs_t *p, struct policy_error *err)
{
    if (!cJSON_IsObject(root)) {
        return fail(err, "", "preferences must be a JSON object, got %s", json_type(root));
    }
    const cJSON *tzj = cJSON_GetObjectItemCaseSensitive(root, "tz");
    if (tzj) {
        return fail(err, "tz", "the time zone belongs to the user (directory), not to the "
                               "preferences");
    }
    static const char *const known[] = {"opt_out", "categories", "quiet_hours", "caps",
                                        "fallback", NULL};
    int rc = check_keys(root, "", known, err);
    if (rc < 0) {
        return rc;
    }
    if ((rc = get_bool(root, "opt_out", "", &p->opt_out, err)) < 0) {
        return rc;
    }
    const cJSON *cats = cJSON_GetObjectItemCaseSensitive(root, "categories");
    const cJSON *caps = cJSON_GetObjectItemCaseSensitive(root, "caps");
    if (cats && !cJSON_IsObject(cats)) {
        return fail(err, "categories", "must be an object, got %s", json_type(cats));
    }
    if (caps && !cJSON_IsObject(caps)) {
        return fail(err, "caps", "must be an object, got %s", json_type(caps));
    }
    int ncat = cats ? cJSON_GetArraySize(cats) : 0;
    int ncap = caps ? cJSON_GetArraySize(caps) : 0;
    if (ncat > POLICY_CATEGORIES_MAX) {
        return fail(err, "categories", "%d categories max, got %d", POLICY_CATEGORIES_MAX, ncat);
    }
    if (ncap > POLICY_CATEGORIES_MAX) {
        return fail(err, "caps", "%d caps max, got %d", POLICY_CATEGORIES_MAX, ncap);
    }
    const char *dup;
    if (cats && (dup = dup_key(cats))) {
        char field[sizeof(err->field)];
        path_cat(field, "categories.", dup, NULL);
        return fail(err, field, "category given twice");
    }
    if (caps && (dup = dup_key(caps))) {
        char field[sizeof(err->field)];
        path_cat(field, "caps.", dup, NULL);
        return fail(err, field, "category given twice");
    }
    if (ncat + ncap > 0) {
        p->cats = calloc((size_t)(ncat + ncap), sizeof(*p->cats));
        if (!p->cats) {
            return -ENOMEM;
        }
    }
    for (const cJSON *c = cats ? cats->child : NULL; c; c = c->next) {
        if ((rc = parse_category(c, p, err)) < 0) {
            return rc;
        }
    }
    for (const cJSON *c = caps ? caps->child : NULL; c; c = c->next) {
        if ((rc = parse_cap(c, p, err)) < 0) {
            return rc;
        }
    }
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(root, "quiet_hours");
    if (q && (rc = parse_quiet(q, p, err)) < 0) {
        return rc;
    }
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, "fallback");
    if (f && (rc = parse_fallback(f, p, err)) < 0) {
        return rc;
    }
    return 0;
}

int policy_prefs_parse(const char *buf, size_t len, policy_prefs_t **out,
                       struct policy_error *err)
{
    if (err) {
        err->field[0] = '\0';
        err->detail[0] = '\0';
    }
    *out = NULL;
    if (len > POLICY_PREFS_MAX) {
        fail(err, "", "preferences are %zu bytes, %d max", len, POLICY_PREFS_MAX);
        return TDG_ETOOBIG;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
    if (!root) {
        return fail(err, "", "not valid JSON (near byte %zu)",
                    end && end >= buf ? (size_t)(end - buf) : (size_t)0);
    }
    for (const char *q = end; q < buf + len; q++) {
        if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r') {
            cJSON_Delete(root);
            return fail(err, "", "trailing data after the JSON object");
        }
    }
    policy_prefs_t *p = calloc(1, sizeof(*p));
    if (!p) {
        cJSON_Delete(root);
        return -ENOMEM;
    }
    int rc = parse_tree(root, p, err);
    cJSON_Delete(root);
    if (rc < 0) {
        policy_prefs_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

/* --- deciding ----------------------------------------------------------- */

const char *policy_action_name(enum policy_action a)
{
    switch (a) {
    case POLICY_ALLOW:
        return "allow";
    case POLICY_SUPPRESS:
        return "suppress";
    case POLICY_HOLD:
        return "hold";
    case POLICY_DROP:
        return "drop";
    }
    return "unknown";
}

static void set_rule(struct policy_decision *d, enum policy_action a, const char *rule,
                     const char *arg)
{
    d->action = a;
    if (arg) {
        snprintf(d->rule, sizeof(d->rule), "%s:%s", rule, arg);
    } else {
        snprintf(d->rule, sizeof(d->rule), "%s", rule);
    }
}

/* The instant the wall clock of tz shows `minutes` on local day `days`.
 * Gaps move to their end, overlaps take the earlier instant (as the agent). */
static int64_t wall_instant(const tz_t *tz, int64_t days, int minutes)
{
    int64_t y;
    int m, d;
    tz_civil_from_days(days, &y, &m, &d);
    int64_t ms = 0;
    if (tz && tz_local_to_utc(tz, y, m, d, minutes / 60, minutes % 60, 0, TZ_EARLIER, &ms,
                              NULL) == 0) {
        return ms;
    }
    return (days * 1440 + minutes) * 60000;
}

/* Inside the quiet window? The windows starting yesterday, today and
 * tomorrow (local days) are checked as instants; *end_ms is the end of the
 * window now is in. */
static bool in_quiet(const policy_prefs_t *p, const tz_t *tz, int64_t now_ms, int64_t *end_ms)
{
    int64_t today;
    if (tz) {
        struct tz_tm tm;
        tz_utc_to_local(tz, now_ms, &tm);
        today = tz_days_from_civil(tm.year, tm.month, tm.day);
    } else {
        today = now_ms / 86400000 - (now_ms % 86400000 < 0 ? 1 : 0);
    }
    bool in = false;
    int64_t end = 0;
    bool wraps = p->quiet_start > p->quiet_end;
    for (int64_t day = today - 1; day <= today + 1; day++) {
        int64_t ws = wall_instant(tz, day, p->quiet_start);
        int64_t we = wall_instant(tz, wraps ? day + 1 : day, p->quiet_end);
        if (ws <= now_ms && now_ms < we) {
            in = true;
            end = we > end ? we : end;
        }
    }
    *end_ms = end;
    return in;
}

static const struct pol_category *cat_find(const policy_prefs_t *p, const char *name)
{
    if (!p || !name) {
        return NULL;
    }
    for (size_t i = 0; i < p->ncats; i++) {
        if (strcmp(p->cats[i].name, name) == 0) {
            return &p->cats[i];
        }
    }
    return NULL;
}

bool policy_cap(const policy_prefs_t *p, const char *category, int64_t *max, int64_t *window_ms)
{
    const struct pol_category *c = cat_find(p, category);
    if (!c || !c->has_cap) {
        return false;
    }
    *max = c->cap_max;
    *window_ms = c->cap_window_ms;
    return true;
}

int policy_decide(const policy_prefs_t *p, const tz_t *tz, const struct notification *n,
                  enum proto_channel channel, int64_t now_ms, int64_t cap_count,
                  struct policy_decision *d)
{
    if (!n || !d) {
        return TDG_EINVAL_INPUT;
    }
    memset(d, 0, sizeof(*d));
    set_rule(d, POLICY_ALLOW, "no_preference", NULL);
    if (!p) {
        return 0;
    }
    if (p->opt_out) {
        set_rule(d, POLICY_SUPPRESS, "opt_out", NULL);
        return 0;
    }
    const struct pol_category *c = cat_find(p, n->category); /* exact match only */
    if (c && c->opt_out) {
        set_rule(d, POLICY_SUPPRESS, "category_opt_out", c->name);
        return 0;
    }
    if (c && (c->channels_off & (unsigned)channel)) {
        set_rule(d, POLICY_SUPPRESS, "channel_off", proto_channel_name(channel));
        return 0;
    }
    set_rule(d, POLICY_ALLOW, "allow", NULL);
    int64_t end_ms;
    d->tz_fallback = p->quiet && !tz;
    if (p->quiet && in_quiet(p, tz, now_ms, &end_ms)) {
        if (n->priority == PROTO_PRIO_CRITICAL) {
            d->critical_bypass = true;
            set_rule(d, POLICY_ALLOW, "critical_bypass", NULL);
        } else if (p->quiet_drop) {
            set_rule(d, POLICY_DROP, "quiet_hours_drop", NULL);
            return 0;
        } else {
            set_rule(d, POLICY_HOLD, "quiet_hours", NULL);
            d->hold_until_ms = end_ms;
            return 0;
        }
    }
    /* A cap counts what was let through; a critical notification inside
     * quiet hours is counted and capped like any other. */
    if (c && c->has_cap && cap_count >= c->cap_max) {
        d->critical_bypass = false;
        set_rule(d, POLICY_SUPPRESS, "cap", c->name);
    }
    return 0;
}

size_t policy_fallback(const policy_prefs_t *p, struct policy_step steps[POLICY_FALLBACK_MAX])
{
    if (!p) {
        return 0;
    }
    memcpy(steps, p->steps, p->nsteps * sizeof(*steps));
    return p->nsteps;
}

/* --- snapshot ----------------------------------------------------------- */

int policy_snapshot_user(const policy_prefs_t *p, const char *tz_name, char *out, size_t cap,
                         size_t *len)
{
    cJSON *u = cJSON_CreateObject();
    if (!u) {
        return -ENOMEM;
    }
    bool ok = cJSON_AddStringToObject(u, "tz", tz_name && *tz_name ? tz_name : "UTC") != NULL;
    if (p && ok) {
        ok = cJSON_AddBoolToObject(u, "opt_out", p->opt_out) != NULL;
        size_t with = 0;
        for (size_t i = 0; i < p->ncats; i++) {
            with += p->cats[i].opt_out || p->cats[i].channels_off;
        }
        cJSON *cats = with && ok ? cJSON_AddObjectToObject(u, "categories") : NULL;
        ok = ok && (with == 0 || cats);
        for (size_t i = 0; ok && cats && i < p->ncats; i++) {
            const struct pol_category *c = &p->cats[i];
            if (!c->opt_out && !c->channels_off) {
                continue; /* a cap alone: hub-only */
            }
            cJSON *co = cJSON_AddObjectToObject(cats, c->name);
            ok = co != NULL;
            if (ok && c->opt_out) {
                ok = cJSON_AddBoolToObject(co, "opt_out", true) != NULL;
            }
            if (ok && c->channels_off) {
                cJSON *arr = cJSON_AddArrayToObject(co, "channels_off");
                ok = arr != NULL;
                for (unsigned bit = 1; ok && bit <= PROTO_CH_LOCAL; bit <<= 1) {
                    if (c->channels_off & bit) {
                        cJSON *s = cJSON_CreateString(proto_channel_name((enum proto_channel)bit));
                        ok = s && cJSON_AddItemToArray(arr, s);
                    }
                }
            }
        }
        if (ok && p->quiet) {
            cJSON *q = cJSON_AddObjectToObject(u, "quiet_hours");
            char hm[2][16];
            snprintf(hm[0], sizeof(hm[0]), "%02d:%02d", p->quiet_start / 60, p->quiet_start % 60);
            snprintf(hm[1], sizeof(hm[1]), "%02d:%02d", p->quiet_end / 60, p->quiet_end % 60);
            ok = q && cJSON_AddStringToObject(q, "start", hm[0]) &&
                 cJSON_AddStringToObject(q, "end", hm[1]) &&
                 cJSON_AddStringToObject(q, "mode", p->quiet_drop ? "drop" : "hold");
        }
    }
    char *s = ok ? cJSON_PrintUnformatted(u) : NULL;
    cJSON_Delete(u);
    if (!s) {
        return -ENOMEM;
    }
    size_t l = strlen(s);
    if (*len + l + 1 > cap) {
        free(s);
        return -ENOSPC;
    }
    memcpy(out + *len, s, l + 1);
    *len += l;
    free(s);
    return 0;
}

int64_t policy_deliver_at(const struct notification *n, const tz_t *tz)
{
    if (!n->has_deliver_at) {
        return 0;
    }
    if (!n->deliver_at_user_tz) {
        return n->deliver_at_ms;
    }
    int64_t wall;
    if (!n->deliver_at_local || proto_parse_local_time(n->deliver_at_local, &wall) < 0) {
        return 0;
    }
    if (!tz) {
        return wall;
    }
    int64_t days = wall / 86400000 - (wall % 86400000 < 0 ? 1 : 0);
    int64_t msd = wall - days * 86400000;
    int64_t y;
    int m, d;
    tz_civil_from_days(days, &y, &m, &d);
    int64_t utc;
    if (tz_local_to_utc(tz, y, m, d, (int)(msd / 3600000), (int)(msd / 60000 % 60),
                        (int)(msd / 1000 % 60), TZ_EARLIER, &utc, NULL) < 0) {
        return wall;
    }
    return utc;
}

int policy_plan(const policy_prefs_t *p, const tz_t *tz, const struct notification *n,
                unsigned classes, unsigned step, bool resumed, int64_t started_ms, int64_t now_ms,
                int64_t cap_count, struct policy_plan *out)
{
    if (!n || !out) {
        return TDG_EINVAL_INPUT;
    }
    memset(out, 0, sizeof(*out));
    out->started_ms = started_ms > 0 ? started_ms : now_ms;
    if (!resumed && n->has_deliver_at) {
        int64_t at = policy_deliver_at(n, tz);
        if (at > now_ms) {
            out->next = POLICY_PLAN_DELIVER_AT;
            out->at_ms = at;
            return 0;
        }
    }
    struct policy_step *steps = out->steps;
    size_t nsteps = out->nsteps = policy_fallback(p, steps);
    out->first_step = step;
    const unsigned all = PROTO_CH_PUSH | PROTO_CH_SMS | PROTO_CH_EMAIL;
    for (; nsteps == 0 || step < nsteps; step++) {
        /* The classes of this step: every class at once without an order. */
        unsigned want = nsteps ? (unsigned)steps[step].channel : all;
        out->visited++;
        unsigned allowed = 0;
        bool held = false;
        int64_t hold_until = 0;
        for (unsigned bit = PROTO_CH_PUSH; bit <= PROTO_CH_EMAIL; bit <<= 1) {
            if (!(want & bit) || !(classes & bit) || out->n >= POLICY_PLAN_ITEMS) {
                continue;
            }
            struct policy_plan_item *it = &out->items[out->n++];
            it->step = step;
            it->channel = (enum proto_channel)bit;
            policy_decide(p, tz, n, (enum proto_channel)bit, now_ms, cap_count, &it->d);
            switch (it->d.action) {
            case POLICY_ALLOW:
                allowed++;
                break;
            case POLICY_HOLD:
                held = true;
                hold_until = it->d.hold_until_ms;
                break;
            case POLICY_DROP:
                out->drop = true;
                break;
            case POLICY_SUPPRESS:
                out->suppress = true;
                break;
            }
        }
        out->allowed += allowed;
        if (held && allowed == 0) {
            out->next = POLICY_PLAN_HOLD;
            out->at_ms = hold_until;
            out->step = step;
            return 0;
        }
        if (nsteps == 0) {
            return 0;
        }
        if (allowed > 0) {
            if (step + 1 < nsteps) {
                int64_t due = out->started_ms + steps[step + 1].after_ms;
                out->next = POLICY_PLAN_FALLBACK;
                out->at_ms = due > now_ms ? due : now_ms;
                out->step = step + 1;
            }
            return 0;
        }
        /* Nothing to send on this step (no endpoint, or suppressed): the
         * next step starts at once rather than after its delay. */
    }
    return 0;
}
