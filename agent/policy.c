/*
 * policy.c - preference snapshots: parse, persist, decide (see policy.h).
 *
 * A parsed snapshot is plain arrays: users sorted by id (binary search in
 * policy_decide), each with at most POLICY_CATEGORIES_MAX categories and a
 * handle on its time zone from the tz cache. Nothing of the JSON tree is
 * kept.
 */
#include "policy.h"

#include "error.h"
#include "log.h"
#include "tz.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pol_category {
    char name[PROTO_CATEGORY_MAX + 1];
    bool opt_out;
    unsigned channels_off; /* PROTO_CH_* bits */
};

struct pol_user {
    char id[POLICY_USER_ID_MAX + 1];
    bool opt_out;
    char tz_name[TZ_NAME_MAX + 1];
    tz_t *tz; /* NULL: zone not on this box, quiet hours in UTC */
    struct pol_category *cats;
    size_t ncats;
    bool quiet;
    int quiet_start, quiet_end; /* minutes after local midnight */
    bool quiet_drop;
};

struct policy_snapshot {
    int64_t version;
    struct pol_user *users;
    size_t nusers;
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

/* out = a + b + c (any may be NULL), cut to fit a policy_error field. A
 * loop rather than snprintf: field paths are bounded by construction
 * (users.<122>.categories.<32>.channels_off[NN] < 192) and this keeps the
 * compiler's truncation analysis quiet without casts. */
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

/* A duplicate key makes a snapshot ambiguous: refuse it. Objects checked
 * here have at most a few dozen members (users are checked after sorting). */
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

static size_t count_members(const cJSON *obj)
{
    size_t n = 0;
    for (const cJSON *c = obj->child; c; c = c->next) {
        n++;
    }
    return n;
}

static bool user_id_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > POLICY_USER_ID_MAX) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '@' || c == '+' || c == '-';
        if (!ok) {
            return false;
        }
    }
    return true;
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

/* "HH:MM", 00:00..23:59, exactly five characters. */
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

static int get_bool(const cJSON *parent, const char *key, const char *path, bool *out,
                    struct policy_error *err)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(parent, key);
    if (!j) {
        return 0; /* absent: keep the default */
    }
    char field[sizeof(err->field)];
    path_cat(field, path, ".", key);
    if (!cJSON_IsBool(j)) {
        return fail(err, field, "must be true or false, got %s", json_type(j));
    }
    *out = cJSON_IsTrue(j);
    return 0;
}

static int parse_category(const cJSON *c, const char *upath, struct pol_category *out,
                          struct policy_error *err)
{
    char path[sizeof(err->field)];
    path_cat(path, upath, ".categories.", c->string);
    if (!category_valid(c->string)) {
        return fail(err, path, "category must be 1..%d of [a-z0-9_.-]", PROTO_CATEGORY_MAX);
    }
    if (!cJSON_IsObject(c)) {
        return fail(err, path, "must be an object, got %s", json_type(c));
    }
    const char *dup = dup_key(c);
    if (dup) {
        return fail(err, path, "key '%s' given twice", dup);
    }
    snprintf(out->name, sizeof(out->name), "%s", c->string);
    int rc = get_bool(c, "opt_out", path, &out->opt_out, err);
    if (rc < 0) {
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

static int parse_quiet(const cJSON *q, const char *upath, struct pol_user *u,
                       struct policy_error *err)
{
    char path[sizeof(err->field)];
    path_cat(path, upath, ".quiet_hours", NULL);
    if (!cJSON_IsObject(q)) {
        return fail(err, path, "must be an object, got %s", json_type(q));
    }
    const char *dup = dup_key(q);
    if (dup) {
        return fail(err, path, "key '%s' given twice", dup);
    }
    static const char *const keys[] = {"start", "end"};
    int *dst[] = {&u->quiet_start, &u->quiet_end};
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
    if (u->quiet_start == u->quiet_end) {
        return fail(err, path, "start and end are equal: an empty window (leave quiet_hours out)");
    }
    const cJSON *mode = cJSON_GetObjectItemCaseSensitive(q, "mode");
    if (mode) {
        char field[sizeof(err->field)];
        path_cat(field, path, ".mode", NULL);
        if (!cJSON_IsString(mode)) {
            return fail(err, field, "must be \"hold\" or \"drop\", got %s", json_type(mode));
        }
        if (strcmp(mode->valuestring, "drop") == 0) {
            u->quiet_drop = true;
        } else if (strcmp(mode->valuestring, "hold") != 0) {
            return fail(err, field, "must be \"hold\" or \"drop\"");
        }
    }
    u->quiet = true;
    return 0;
}

/* Users whose zone this box lacks: logged once per parse, not per user. */
struct tz_missing {
    size_t n;
    char first_user[POLICY_USER_ID_MAX + 1];
    char first_zone[TZ_NAME_MAX + 1];
    int first_rc;
};

static int parse_user(const cJSON *j, struct pol_user *u, struct tz_missing *miss,
                      struct policy_error *err)
{
    char path[sizeof(err->field)];
    path_cat(path, "users.", j->string, NULL);
    if (!user_id_valid(j->string)) {
        return fail(err, path, "user id must be 1..%d of [A-Za-z0-9._@+-]", POLICY_USER_ID_MAX);
    }
    if (!cJSON_IsObject(j)) {
        return fail(err, path, "must be an object, got %s", json_type(j));
    }
    const char *dup = dup_key(j);
    if (dup) {
        return fail(err, path, "key '%s' given twice", dup);
    }
    snprintf(u->id, sizeof(u->id), "%s", j->string);
    int rc = get_bool(j, "opt_out", path, &u->opt_out, err);
    if (rc < 0) {
        return rc;
    }
    const cJSON *tzj = cJSON_GetObjectItemCaseSensitive(j, "tz");
    char field[sizeof(err->field)];
    path_cat(field, path, ".tz", NULL);
    if (tzj && !cJSON_IsString(tzj)) {
        return fail(err, field, "must be a string, got %s", json_type(tzj));
    }
    const char *tzname = tzj ? tzj->valuestring : "UTC";
    if (!tz_name_valid(tzname)) {
        return fail(err, field, "not a valid IANA time zone name");
    }
    snprintf(u->tz_name, sizeof(u->tz_name), "%s", tzname);
    rc = tz_load(tzname, &u->tz);
    if (rc == -ENOMEM) {
        return rc;
    }
    if (rc < 0) {
        /* The hub's database may be newer than this box's: keep the rest of
         * the user's preferences and run the quiet hours in UTC. */
        u->tz = NULL;
        if (miss->n++ == 0) {
            snprintf(miss->first_user, sizeof(miss->first_user), "%s", u->id);
            snprintf(miss->first_zone, sizeof(miss->first_zone), "%s", tzname);
            miss->first_rc = rc;
        }
    }
    const cJSON *cats = cJSON_GetObjectItemCaseSensitive(j, "categories");
    if (cats) {
        path_cat(field, path, ".categories", NULL);
        if (!cJSON_IsObject(cats)) {
            return fail(err, field, "must be an object, got %s", json_type(cats));
        }
        size_t n = count_members(cats);
        if (n > POLICY_CATEGORIES_MAX) {
            return fail(err, field, "%d categories max, got %zu", POLICY_CATEGORIES_MAX, n);
        }
        if ((dup = dup_key(cats))) {
            path_cat(field, path, ".categories.", dup);
            return fail(err, field, "category given twice");
        }
        if (n > 0) {
            u->cats = calloc(n, sizeof(*u->cats));
            if (!u->cats) {
                return -ENOMEM;
            }
        }
        for (const cJSON *c = cats->child; c; c = c->next) {
            if ((rc = parse_category(c, path, &u->cats[u->ncats], err)) < 0) {
                return rc;
            }
            u->ncats++;
        }
    }
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(j, "quiet_hours");
    if (q && (rc = parse_quiet(q, path, u, err)) < 0) {
        return rc;
    }
    return 0;
}

static int cmp_user(const void *a, const void *b)
{
    return strcmp(((const struct pol_user *)a)->id, ((const struct pol_user *)b)->id);
}

void policy_snapshot_free(policy_snapshot_t *s)
{
    if (!s) {
        return;
    }
    for (size_t i = 0; i < s->nusers; i++) {
        tz_free(s->users[i].tz);
        free(s->users[i].cats);
    }
    free(s->users);
    free(s);
}

static int parse_tree(const cJSON *root, policy_snapshot_t *s, struct policy_error *err)
{
    if (!cJSON_IsObject(root)) {
        return fail(err, "", "snapshot must be a JSON object, got %s", json_type(root));
    }
    const char *dup = dup_key(root);
    if (dup) {
        return fail(err, dup, "key given twice");
    }
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "v");
    if (!v) {
        return fail(err, "v", "missing (must be 1)");
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != 1.0) {
        return fail(err, "v", "unsupported snapshot format version (must be 1)");
    }
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(root, "version");
    if (!ver) {
        return fail(err, "version", "missing");
    }
    /* An integer exactly representable in a double: 0..2^53. */
    /* Written so that NaN fails too; the cast is safe inside the range, and
     * no libm (floor) is needed, which armhf would have to link. */
    if (!cJSON_IsNumber(ver) ||
        !(ver->valuedouble >= 0 && ver->valuedouble <= 9007199254740992.0) ||
        (double)(int64_t)ver->valuedouble != ver->valuedouble) {
        return fail(err, "version", "must be an integer 0..2^53");
    }
    s->version = (int64_t)ver->valuedouble;
    const cJSON *users = cJSON_GetObjectItemCaseSensitive(root, "users");
    if (!users) {
        return fail(err, "users", "missing (use {} for none)");
    }
    if (!cJSON_IsObject(users)) {
        return fail(err, "users", "must be an object, got %s", json_type(users));
    }
    size_t n = count_members(users);
    if (n > POLICY_USERS_MAX) {
        return fail(err, "users", "%d users max, got %zu", POLICY_USERS_MAX, n);
    }
    if (n > 0) {
        s->users = calloc(n, sizeof(*s->users));
        if (!s->users) {
            return -ENOMEM;
        }
    }
    struct tz_missing miss = {0};
    for (const cJSON *u = users->child; u; u = u->next) {
        int rc = parse_user(u, &s->users[s->nusers], &miss, err);
        s->nusers++; /* counted even on failure so free() sees its parts */
        if (rc < 0) {
            return rc;
        }
    }
    if (miss.n > 0) {
        LOG_WARN("policy",
                 "snapshot version=%lld: %zu user(s) have a time zone this box cannot "
                 "load (first: users.%s.tz '%s': %s); their quiet hours run in UTC",
                 (long long)s->version, miss.n, miss.first_user, miss.first_zone,
                 tdg_strerror(miss.first_rc));
    }
    if (s->nusers > 1) {
        qsort(s->users, s->nusers, sizeof(*s->users), cmp_user); /* NULL when empty */
    }
    for (size_t i = 1; i < s->nusers; i++) {
        if (strcmp(s->users[i - 1].id, s->users[i].id) == 0) {
            char field[sizeof(err->field)];
            path_cat(field, "users.", s->users[i].id, NULL);
            return fail(err, field, "user given twice");
        }
    }
    return 0;
}

int policy_snapshot_parse(const char *buf, size_t len, policy_snapshot_t **out,
                          struct policy_error *err)
{
    if (err) {
        err->field[0] = '\0';
        err->detail[0] = '\0';
    }
    *out = NULL;
    if (len > POLICY_SNAPSHOT_MAX) {
        fail(err, "", "snapshot is %zu bytes, %d max", len, POLICY_SNAPSHOT_MAX);
        return TDG_ETOOBIG;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
    if (!root) {
        return fail(err, "", "not valid JSON (near byte %zu)",
                    end && end >= buf ? (size_t)(end - buf) : (size_t)0);
    }
    /* cJSON stops after the first value: anything but whitespace after it
     * is an error, not silently ignored. */
    for (const char *p = end; p < buf + len; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(root);
            return fail(err, "", "trailing data after the JSON object");
        }
    }
    policy_snapshot_t *s = calloc(1, sizeof(*s));
    if (!s) {
        cJSON_Delete(root);
        return -ENOMEM;
    }
    int rc = parse_tree(root, s, err);
    cJSON_Delete(root);
    if (rc < 0) {
        policy_snapshot_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

int64_t policy_snapshot_version(const policy_snapshot_t *s)
{
    return s ? s->version : -1;
}

size_t policy_snapshot_user_count(const policy_snapshot_t *s)
{
    return s ? s->nusers : 0;
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

static const struct pol_user *find_user(const policy_snapshot_t *s, const char *id)
{
    size_t lo = 0, hi = s->nusers;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(s->users[mid].id, id);
        if (c == 0) {
            return &s->users[mid];
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return NULL;
}

const tz_t *policy_user_tz(const policy_snapshot_t *s, const char *user_id)
{
    const struct pol_user *u = (s && user_id && user_id[0]) ? find_user(s, user_id) : NULL;
    return u ? u->tz : NULL;
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

/* The instant the wall clock of tz shows `minutes` on local day `days`
 * (days from 1970-01-01). Nonexistent times move to the end of the gap,
 * repeated ones take the earlier instant (docs/policy.md). */
static int64_t wall_instant(const tz_t *tz, int64_t days, int minutes)
{
    int64_t y;
    int m, d;
    tz_civil_from_days(days, &y, &m, &d);
    int64_t ms = 0;
    if (tz) {
        if (tz_local_to_utc(tz, y, m, d, minutes / 60, minutes % 60, 0, TZ_EARLIER, &ms, NULL) ==
            0) {
            return ms;
        }
    }
    return (days * 1440 + minutes) * 60000; /* UTC */
}

/* Is now inside u's quiet window? If so, *end_ms is when the window ends.
 * Windows are evaluated as instants: the one starting on the local day
 * before today (it may wrap past midnight into today), today's and
 * tomorrow's (a zone whose clock goes back over midnight). */
static bool in_quiet(const struct pol_user *u, int64_t now_ms, int64_t *end_ms)
{
    int64_t today;
    if (u->tz) {
        struct tz_tm tm;
        tz_utc_to_local(u->tz, now_ms, &tm);
        today = tz_days_from_civil(tm.year, tm.month, tm.day);
    } else {
        today = now_ms / 86400000 - (now_ms % 86400000 < 0 ? 1 : 0); /* floor */
    }
    bool in = false;
    int64_t end = 0;
    bool wraps = u->quiet_start > u->quiet_end;
    for (int64_t day = today - 1; day <= today + 1; day++) {
        int64_t ws = wall_instant(u->tz, day, u->quiet_start);
        int64_t we = wall_instant(u->tz, wraps ? day + 1 : day, u->quiet_end);
        if (ws <= now_ms && now_ms < we) {
            in = true;
            end = we > end ? we : end;
        }
    }
    *end_ms = end;
    return in;
}

int policy_decide(const policy_snapshot_t *s, const struct notification *n, const char *user_id,
                  enum proto_channel channel, int64_t now_ms, struct policy_decision *d)
{
    if (!n || !d) {
        return TDG_EINVAL_INPUT;
    }
    memset(d, 0, sizeof(*d));
    set_rule(d, POLICY_ALLOW, "no_preference", NULL);
    const struct pol_user *u = (s && user_id && user_id[0]) ? find_user(s, user_id) : NULL;
    if (!u) {
        return 0;
    }
    if (u->opt_out) {
        set_rule(d, POLICY_SUPPRESS, "opt_out", NULL);
        return 0;
    }
    if (n->category) {
        for (size_t i = 0; i < u->ncats; i++) {
            const struct pol_category *c = &u->cats[i];
            if (strcmp(c->name, n->category) != 0) {
                continue; /* exact match only: "push" is not "push_marketing" */
            }
            if (c->opt_out) {
                set_rule(d, POLICY_SUPPRESS, "category_opt_out", c->name);
                return 0;
            }
            if (c->channels_off & (unsigned)channel) {
                set_rule(d, POLICY_SUPPRESS, "channel_off", proto_channel_name(channel));
                return 0;
            }
        }
    }
    set_rule(d, POLICY_ALLOW, "allow", NULL);
    int64_t end_ms;
    d->tz_fallback = u->quiet && !u->tz;
    if (u->quiet && in_quiet(u, now_ms, &end_ms)) {
        if (n->priority == PROTO_PRIO_CRITICAL) {
            d->critical_bypass = true;
            set_rule(d, POLICY_ALLOW, "critical_bypass", NULL);
        } else if (u->quiet_drop) {
            set_rule(d, POLICY_DROP, "quiet_hours_drop", NULL);
        } else {
            set_rule(d, POLICY_HOLD, "quiet_hours", NULL);
            d->hold_until_ms = end_ms;
        }
    }
    return 0;
}

/* --- persistence -------------------------------------------------------- */

struct policy_store {
    sqlite3 *db;
    sqlite3_stmt *get, *put;
};

static const struct db_migration migrations[] = {
    {1, "CREATE TABLE policy_snapshot ("
        " id INTEGER PRIMARY KEY CHECK (id = 1),"
        " version INTEGER NOT NULL,"
        " received_ms INTEGER NOT NULL,"
        " json TEXT NOT NULL)"},
};

int policy_store_open(const char *path, enum db_sync sync, policy_store_t **out, char *err,
                      size_t errlen)
{
    policy_store_t *st = calloc(1, sizeof(*st));
    if (!st) {
        return -ENOMEM;
    }
    int rc = db_open(path, sync, migrations, sizeof(migrations) / sizeof(migrations[0]), &st->db,
                     err, errlen);
    if (rc < 0) {
        free(st);
        return rc;
    }
    if ((rc = db_prepare(st->db, "SELECT version, json FROM policy_snapshot WHERE id = 1",
                         &st->get)) < 0 ||
        (rc = db_prepare(st->db,
                         "INSERT OR REPLACE INTO policy_snapshot (id, version, received_ms, json)"
                         " VALUES (1, ?, ?, ?)",
                         &st->put)) < 0) {
        snprintf(err, errlen, "%s: cannot prepare statements", path);
        policy_store_close(st);
        return rc;
    }
    *out = st;
    return 0;
}

void policy_store_close(policy_store_t *st)
{
    if (!st) {
        return;
    }
    sqlite3_finalize(st->get);
    sqlite3_finalize(st->put);
    db_close(st->db);
    free(st);
}

/* Run the get statement; calls back with the stored row if there is one. */
typedef int (*row_fn)(void *arg, int64_t version, const char *json, size_t len);

static int get_stored(policy_store_t *st, row_fn fn, void *arg)
{
    int rc = sqlite3_step(st->get);
    int ret = 0;
    if (rc == SQLITE_ROW) {
        const char *json = (const char *)sqlite3_column_text(st->get, 1);
        size_t len = (size_t)sqlite3_column_bytes(st->get, 1);
        ret = fn(arg, sqlite3_column_int64(st->get, 0), json ? json : "", len);
    } else if (rc != SQLITE_DONE) {
        LOG_ERROR("policy", "reading the stored snapshot: %s", sqlite3_errmsg(st->db));
        ret = db_err(rc) ? db_err(rc) : TDG_EDB;
    }
    sqlite3_reset(st->get);
    return ret;
}

static int load_row(void *arg, int64_t version, const char *json, size_t len)
{
    policy_snapshot_t **out = arg;
    struct policy_error e;
    int rc = policy_snapshot_parse(json, len, out, &e);
    if (rc < 0) {
        LOG_ERROR("policy", "stored snapshot version=%lld no longer parses: %s: %s",
                  (long long)version, e.field, e.detail);
    }
    return rc;
}

int policy_store_load(policy_store_t *st, policy_snapshot_t **out)
{
    *out = NULL;
    return get_stored(st, load_row, out);
}

struct cmp_arg {
    const char *buf;
    size_t len;
    bool same;
    bool have;
    int64_t version;
};

static int cmp_row(void *arg, int64_t version, const char *json, size_t len)
{
    struct cmp_arg *c = arg;
    c->have = true;
    c->version = version;
    c->same = len == c->len && memcmp(json, c->buf, len) == 0;
    return 0;
}

int policy_store_accept(policy_store_t *st, const char *buf, size_t len, int64_t now_ms,
                        policy_snapshot_t **out, bool *changed, struct policy_error *err)
{
    if (changed) {
        *changed = false;
    }
    policy_snapshot_t *s = NULL;
    int rc = policy_snapshot_parse(buf, len, &s, err);
    if (rc < 0) {
        return rc;
    }
    struct cmp_arg c = {.buf = buf, .len = len};
    if ((rc = get_stored(st, cmp_row, &c)) < 0) {
        policy_snapshot_free(s);
        return rc;
    }
    if (!c.same) {
        if (c.have && s->version < c.version) {
            LOG_WARN("policy",
                     "snapshot version went backwards: stored=%lld new=%lld; taking "
                     "the new one (the hub's state was reset?)",
                     (long long)c.version, (long long)s->version);
        }
        sqlite3_bind_int64(st->put, 1, s->version);
        sqlite3_bind_int64(st->put, 2, now_ms);
        sqlite3_bind_text(st->put, 3, buf, (int)len, SQLITE_STATIC);
        int src = sqlite3_step(st->put);
        sqlite3_reset(st->put);
        sqlite3_clear_bindings(st->put);
        if (src != SQLITE_DONE) {
            LOG_ERROR("policy", "storing snapshot version=%lld: %s", (long long)s->version,
                      sqlite3_errmsg(st->db));
            policy_snapshot_free(s);
            return db_err(src) ? db_err(src) : TDG_EDB;
        }
        if (changed) {
            *changed = true;
        }
    }
    *out = s;
    return 0;
}
