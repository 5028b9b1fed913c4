/*
 * prefs.c - the preference fields and rules the agent and the hub share
 * (see prefs.h, docs/policy.md).
 */
#include "prefs.h"

#include "error.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* --- parsing ------------------------------------------------------------ */

int prefs_fail(struct policy_error *err, const char *field, const char *fmt, ...)
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

/* A loop rather than snprintf: field paths are bounded by construction
 * (users.<122>.categories.<32>.channels_off[NN] < 192) and this keeps the
 * compiler's truncation analysis quiet without casts. */
void prefs_path(char *out, const char *a, const char *b, const char *c)
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

const char *prefs_dup_key(const cJSON *obj)
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

int prefs_check_keys(const cJSON *obj, const char *path, const char *const *known,
                     struct policy_error *err)
{
    const char *dup = prefs_dup_key(obj);
    if (dup && !known) {
        return prefs_fail(err, path, "key '%s' given twice", dup);
    }
    char field[sizeof(err->field)];
    if (dup) {
        prefs_path(field, path, *path ? "." : "", dup);
        return prefs_fail(err, field, "given twice");
    }
    for (const cJSON *c = known ? obj->child : NULL; c; c = c->next) {
        bool ok = false;
        for (const char *const *k = known; *k; k++) {
            ok = ok || strcmp(*k, c->string) == 0;
        }
        if (!ok) {
            prefs_path(field, path, *path ? "." : "", c->string);
            return prefs_fail(err, field, "unknown field");
        }
    }
    return 0;
}

int prefs_get_bool(const cJSON *parent, const char *key, const char *path, bool *out,
                   struct policy_error *err)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(parent, key);
    if (!j) {
        return 0; /* absent: keep the default */
    }
    char field[sizeof(err->field)];
    prefs_path(field, path, *path ? "." : "", key);
    if (!cJSON_IsBool(j)) {
        return prefs_fail(err, field, "must be true or false, got %s", proto_json_type(j));
    }
    *out = cJSON_IsTrue(j);
    return 0;
}

bool prefs_category_valid(const char *s)
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

unsigned prefs_channel_bit(const char *s)
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

int prefs_parse_hhmm(const char *s, int *minutes)
{
    if (strlen(s) != 5 || s[2] != ':') {
        return TDG_EINVAL_INPUT;
    }
    for (int i = 0; i < 5; i++) {
        if (i != 2 && (s[i] < '0' || s[i] > '9')) {
            return TDG_EINVAL_INPUT;
        }
    }
    int h = (s[0] - '0') * 10 + (s[1] - '0');
    int m = (s[3] - '0') * 10 + (s[4] - '0');
    if (h > 23 || m > 59) {
        return TDG_EINVAL_INPUT;
    }
    *minutes = h * 60 + m;
    return 0;
}

int prefs_parse_category(const cJSON *c, const char *path, bool strict, struct prefs_category *out,
                         struct policy_error *err)
{
    if (!prefs_category_valid(c->string)) {
        return prefs_fail(err, path, "category must be 1..%d of [a-z0-9_.-]", PROTO_CATEGORY_MAX);
    }
    if (!cJSON_IsObject(c)) {
        return prefs_fail(err, path, "must be an object, got %s", proto_json_type(c));
    }
    static const char *const known[] = {"opt_out", "channels_off", NULL};
    int rc = prefs_check_keys(c, path, strict ? known : NULL, err);
    if (rc < 0) {
        return rc;
    }
    snprintf(out->name, sizeof(out->name), "%s", c->string);
    if ((rc = prefs_get_bool(c, "opt_out", path, &out->opt_out, err)) < 0) {
        return rc;
    }
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(c, "channels_off");
    if (!off) {
        return 0;
    }
    char field[sizeof(err->field)];
    prefs_path(field, path, ".channels_off", NULL);
    if (!cJSON_IsArray(off)) {
        return prefs_fail(err, field, "must be an array, got %s", proto_json_type(off));
    }
    int i = 0;
    for (const cJSON *e = off->child; e; e = e->next, i++) {
        char ef[sizeof(err->field)];
        char idx[16];
        snprintf(idx, sizeof(idx), "[%d]", i);
        prefs_path(ef, field, idx, NULL);
        if (!cJSON_IsString(e)) {
            return prefs_fail(err, ef, "must be a string, got %s", proto_json_type(e));
        }
        unsigned bit = prefs_channel_bit(e->valuestring);
        if (!bit) {
            return prefs_fail(err, ef, "unknown channel (push, sms, email, desktop, local)");
        }
        if (out->channels_off & bit) {
            return prefs_fail(err, ef, "channel given twice");
        }
        out->channels_off |= bit;
    }
    return 0;
}

int prefs_parse_quiet(const cJSON *q, const char *path, bool strict, struct prefs_quiet *out,
                      struct policy_error *err)
{
    if (!cJSON_IsObject(q)) {
        return prefs_fail(err, path, "must be an object, got %s", proto_json_type(q));
    }
    static const char *const known[] = {"start", "end", "mode", NULL};
    int rc = prefs_check_keys(q, path, strict ? known : NULL, err);
    if (rc < 0) {
        return rc;
    }
    static const char *const keys[] = {"start", "end"};
    int *dst[] = {&out->start, &out->end};
    char field[sizeof(err->field)];
    for (int i = 0; i < 2; i++) {
        prefs_path(field, path, ".", keys[i]);
        const cJSON *j = cJSON_GetObjectItemCaseSensitive(q, keys[i]);
        if (!j) {
            return prefs_fail(err, field, "missing");
        }
        if (!cJSON_IsString(j)) {
            return prefs_fail(err, field, "must be a string \"HH:MM\", got %s", proto_json_type(j));
        }
        if (prefs_parse_hhmm(j->valuestring, dst[i]) < 0) {
            return prefs_fail(err, field, "must be \"HH:MM\" between 00:00 and 23:59");
        }
    }
    if (out->start == out->end) {
        return prefs_fail(err, path,
                          "start and end are equal: an empty window (leave quiet_hours out)");
    }
    const cJSON *mode = cJSON_GetObjectItemCaseSensitive(q, "mode");
    if (mode) {
        prefs_path(field, path, ".mode", NULL);
        if (!cJSON_IsString(mode)) {
            return prefs_fail(err, field, "must be \"hold\" or \"drop\", got %s",
                              proto_json_type(mode));
        }
        if (strcmp(mode->valuestring, "drop") == 0) {
            out->drop = true;
        } else if (strcmp(mode->valuestring, "hold") != 0) {
            return prefs_fail(err, field, "must be \"hold\" or \"drop\"");
        }
    }
    out->set = true;
    return 0;
}

int prefs_json_parse(const char *buf, size_t len, cJSON **root, struct policy_error *err)
{
    const char *end = NULL;
    cJSON *r = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
    if (!r) {
        return prefs_fail(err, "", "not valid JSON (near byte %zu)",
                          end && end >= buf ? (size_t)(end - buf) : (size_t)0);
    }
    /* cJSON stops after the first value: anything but whitespace after it
     * is an error, not silently ignored. */
    for (const char *p = end; p < buf + len; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(r);
            return prefs_fail(err, "", "trailing data after the JSON object");
        }
    }
    *root = r;
    return 0;
}

int prefs_category_to_json(const struct prefs_category *c, cJSON *cats)
{
    if (!c->opt_out && !c->channels_off) {
        return 0;
    }
    cJSON *co = cJSON_AddObjectToObject(cats, c->name);
    if (!co) {
        return -ENOMEM;
    }
    if (c->opt_out && !cJSON_AddBoolToObject(co, "opt_out", true)) {
        return -ENOMEM;
    }
    if (!c->channels_off) {
        return 0;
    }
    cJSON *arr = cJSON_AddArrayToObject(co, "channels_off");
    if (!arr) {
        return -ENOMEM;
    }
    for (unsigned bit = 1; bit <= PROTO_CH_LOCAL; bit <<= 1) {
        if (c->channels_off & bit) {
            cJSON *s = cJSON_CreateString(proto_channel_name((enum proto_channel)bit));
            if (!s || !cJSON_AddItemToArray(arr, s)) {
                cJSON_Delete(s);
                return -ENOMEM;
            }
        }
    }
    return 0;
}

int prefs_quiet_to_json(const struct prefs_quiet *q, cJSON *obj)
{
    if (!q->set) {
        return 0;
    }
    cJSON *o = cJSON_AddObjectToObject(obj, "quiet_hours");
    char hm[2][16];
    snprintf(hm[0], sizeof(hm[0]), "%02d:%02d", q->start / 60, q->start % 60);
    snprintf(hm[1], sizeof(hm[1]), "%02d:%02d", q->end / 60, q->end % 60);
    bool ok = o && cJSON_AddStringToObject(o, "start", hm[0]) &&
              cJSON_AddStringToObject(o, "end", hm[1]) &&
              cJSON_AddStringToObject(o, "mode", q->drop ? "drop" : "hold");
    return ok ? 0 : -ENOMEM;
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

void prefs_set_rule(struct policy_decision *d, enum policy_action a, const char *rule,
                    const char *arg)
{
    /* snprintf's "%s:%s" / "%s", without printf: once per notification. */
    size_t cap = sizeof(d->rule) - 1, n = strnlen(rule, cap);
    d->action = a;
    memcpy(d->rule, rule, n);
    if (arg && n < cap) {
        d->rule[n++] = ':';
        size_t an = strnlen(arg, cap - n);
        memcpy(d->rule + n, arg, an);
        n += an;
    }
    d->rule[n] = '\0';
}

/* The instant the wall clock of tz shows `minutes` on local day `days`
 * (days from 1970-01-01). Nonexistent times move to the end of the gap,
 * repeated ones take the earlier instant (docs/policy.md). */
static int64_t wall_instant(const tz_t *tz, int64_t days, int minutes)
{
    int64_t y;
    int m, d;
    tz_civil_from_days(days, &y, &m, &d);
    int64_t ms = 0;
    if (tz &&
        tz_local_to_utc(tz, y, m, d, minutes / 60, minutes % 60, 0, TZ_EARLIER, &ms, NULL) == 0) {
        return ms;
    }
    return (days * 1440 + minutes) * 60000; /* UTC */
}

/* The windows starting on the local day before today (it may wrap past
 * midnight into today), today's and tomorrow's (a zone whose clock goes
 * back over midnight) are checked. */
bool prefs_in_quiet(const struct prefs_quiet *q, const tz_t *tz, int64_t now_ms, int64_t *end_ms)
{
    int64_t today;
    if (tz) {
        struct tz_tm tm;
        tz_utc_to_local(tz, now_ms, &tm);
        today = tz_days_from_civil(tm.year, tm.month, tm.day);
    } else {
        today = now_ms / 86400000 - (now_ms % 86400000 < 0 ? 1 : 0); /* floor */
    }
    bool in = false;
    int64_t end = 0;
    bool wraps = q->start > q->end;
    for (int64_t day = today - 1; day <= today + 1; day++) {
        int64_t ws = wall_instant(tz, day, q->start);
        int64_t we = wall_instant(tz, wraps ? day + 1 : day, q->end);
        if (ws <= now_ms && now_ms < we) {
            in = true;
            end = we > end ? we : end;
        }
    }
    *end_ms = end;
    return in;
}

void prefs_decide(bool opt_out, const struct prefs_category *cat, const struct prefs_quiet *quiet,
                  const tz_t *tz, const struct notification *n, enum proto_channel channel,
                  int64_t now_ms, struct policy_decision *d)
{
    memset(d, 0, sizeof(*d));
    if (opt_out) {
        prefs_set_rule(d, POLICY_SUPPRESS, "opt_out", NULL);
        return;
    }
    if (cat && cat->opt_out) {
        prefs_set_rule(d, POLICY_SUPPRESS, "category_opt_out", cat->name);
        return;
    }
    if (cat && (cat->channels_off & (unsigned)channel)) {
        prefs_set_rule(d, POLICY_SUPPRESS, "channel_off", proto_channel_name(channel));
        return;
    }
    prefs_set_rule(d, POLICY_ALLOW, "allow", NULL);
    bool quiet_set = quiet && quiet->set;
    d->tz_fallback = quiet_set && !tz;
    int64_t end_ms;
    if (!quiet_set || !prefs_in_quiet(quiet, tz, now_ms, &end_ms)) {
        return;
    }
    if (n->priority == PROTO_PRIO_CRITICAL) {
        d->critical_bypass = true;
        prefs_set_rule(d, POLICY_ALLOW, "critical_bypass", NULL);
    } else if (quiet->drop) {
        prefs_set_rule(d, POLICY_DROP, "quiet_hours_drop", NULL);
    } else {
        prefs_set_rule(d, POLICY_HOLD, "quiet_hours", NULL);
        d->hold_until_ms = end_ms;
    }
}

int64_t prefs_deliver_at(const struct notification *n, const tz_t *tz)
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
    int64_t days = wall / 86400000 - (wall % 86400000 < 0 ? 1 : 0); /* floor */
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
