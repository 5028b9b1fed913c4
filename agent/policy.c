/*
 * policy.c - preference snapshots: parse, persist, decide (see policy.h).
 *
 * A parsed snapshot is plain arrays: users sorted by id (binary search in
 * policy_decide), each with at most POLICY_CATEGORIES_MAX categories and a
 * handle on its time zone from the tz cache. Nothing of the JSON tree is
 * kept. The per-user fields and the rules are shared with the hub
 * (proto/prefs.h): this file adds the snapshot around them, the user
 * lookup and the store.
 */
#include "policy.h"

#include "error.h"
#include "log.h"
#include "tz.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pol_user {
    char id[POLICY_USER_ID_MAX + 1];
    bool opt_out;
    char tz_name[TZ_NAME_MAX + 1];
    tz_t *tz; /* NULL: zone not on this box, quiet hours in UTC */
    struct prefs_category *cats;
    size_t ncats;
    struct prefs_quiet quiet;
};

struct policy_snapshot {
    int64_t version;
    struct pol_user *users;
    size_t nusers;
};

/* --- parsing ------------------------------------------------------------ */

/* The field names, types and checks the hub's documents share are in
 * proto/prefs.c; the snapshot reads them leniently (unknown fields are
 * ignored: a newer hub may add some). */

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
    prefs_path(path, "users.", j->string, NULL);
    if (!user_id_valid(j->string)) {
        return prefs_fail(err, path, "user id must be 1..%d of [A-Za-z0-9._@+-]",
                          POLICY_USER_ID_MAX);
    }
    if (!cJSON_IsObject(j)) {
        return prefs_fail(err, path, "must be an object, got %s", proto_json_type(j));
    }
    int rc = prefs_check_keys(j, path, NULL, err);
    if (rc < 0) {
        return rc;
    }
    snprintf(u->id, sizeof(u->id), "%s", j->string);
    if ((rc = prefs_get_bool(j, "opt_out", path, &u->opt_out, err)) < 0) {
        return rc;
    }
    const cJSON *tzj = cJSON_GetObjectItemCaseSensitive(j, "tz");
    char field[sizeof(err->field)];
    prefs_path(field, path, ".tz", NULL);
    if (tzj && !cJSON_IsString(tzj)) {
        return prefs_fail(err, field, "must be a string, got %s", proto_json_type(tzj));
    }
    const char *tzname = tzj ? tzj->valuestring : "UTC";
    if (!tz_name_valid(tzname)) {
        return prefs_fail(err, field, "not a valid IANA time zone name");
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
        prefs_path(field, path, ".categories", NULL);
        if (!cJSON_IsObject(cats)) {
            return prefs_fail(err, field, "must be an object, got %s", proto_json_type(cats));
        }
        size_t n = count_members(cats);
        if (n > POLICY_CATEGORIES_MAX) {
            return prefs_fail(err, field, "%d categories max, got %zu", POLICY_CATEGORIES_MAX, n);
        }
        const char *dup = prefs_dup_key(cats);
        if (dup) {
            prefs_path(field, path, ".categories.", dup);
            return prefs_fail(err, field, "category given twice");
        }
        if (n > 0) {
            u->cats = calloc(n, sizeof(*u->cats));
            if (!u->cats) {
                return -ENOMEM;
            }
        }
        for (const cJSON *c = cats->child; c; c = c->next) {
            char cpath[sizeof(err->field)];
            prefs_path(cpath, path, ".categories.", c->string);
            if ((rc = prefs_parse_category(c, cpath, false, &u->cats[u->ncats], err)) < 0) {
                return rc;
            }
            u->ncats++;
        }
    }
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(j, "quiet_hours");
    if (q) {
        prefs_path(field, path, ".quiet_hours", NULL);
        if ((rc = prefs_parse_quiet(q, field, false, &u->quiet, err)) < 0) {
            return rc;
        }
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
        return prefs_fail(err, "", "snapshot must be a JSON object, got %s", proto_json_type(root));
    }
    const char *dup = prefs_dup_key(root);
    if (dup) {
        return prefs_fail(err, dup, "key given twice");
    }
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "v");
    if (!v) {
        return prefs_fail(err, "v", "missing (must be 1)");
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != 1.0) {
        return prefs_fail(err, "v", "unsupported snapshot format version (must be 1)");
    }
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(root, "version");
    if (!ver) {
        return prefs_fail(err, "version", "missing");
    }
    /* An integer exactly representable in a double: 0..2^53. */
    /* Written so that NaN fails too; the cast is safe inside the range, and
     * no libm (floor) is needed, which armhf would have to link. */
    if (!cJSON_IsNumber(ver) ||
        !(ver->valuedouble >= 0 && ver->valuedouble <= 9007199254740992.0) ||
        (double)(int64_t)ver->valuedouble != ver->valuedouble) {
        return prefs_fail(err, "version", "must be an integer 0..2^53");
    }
    s->version = (int64_t)ver->valuedouble;
    const cJSON *users = cJSON_GetObjectItemCaseSensitive(root, "users");
    if (!users) {
        return prefs_fail(err, "users", "missing (use {} for none)");
    }
    if (!cJSON_IsObject(users)) {
        return prefs_fail(err, "users", "must be an object, got %s", proto_json_type(users));
    }
    size_t n = count_members(users);
    if (n > POLICY_USERS_MAX) {
        return prefs_fail(err, "users", "%d users max, got %zu", POLICY_USERS_MAX, n);
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
            prefs_path(field, "users.", s->users[i].id, NULL);
            return prefs_fail(err, field, "user given twice");
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
        prefs_fail(err, "", "snapshot is %zu bytes, %d max", len, POLICY_SNAPSHOT_MAX);
        return TDG_ETOOBIG;
    }
    cJSON *root = NULL;
    int rc = prefs_json_parse(buf, len, &root, err);
    if (rc < 0) {
        return rc;
    }
    policy_snapshot_t *s = calloc(1, sizeof(*s));
    if (!s) {
        cJSON_Delete(root);
        return -ENOMEM;
    }
    rc = parse_tree(root, s, err);
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

int policy_decide(const policy_snapshot_t *s, const struct notification *n, const char *user_id,
                  enum proto_channel channel, int64_t now_ms, struct policy_decision *d)
{
    if (!n || !d) {
        return TDG_EINVAL_INPUT;
    }
    const struct pol_user *u = (s && user_id && user_id[0]) ? find_user(s, user_id) : NULL;
    if (!u) {
        memset(d, 0, sizeof(*d));
        prefs_set_rule(d, POLICY_ALLOW, "no_preference", NULL);
        return 0;
    }
    const struct prefs_category *cat = NULL;
    for (size_t i = 0; n->category && !cat && i < u->ncats; i++) {
        if (strcmp(u->cats[i].name, n->category) == 0) {
            cat = &u->cats[i]; /* exact match only: "push" is not "push_marketing" */
        }
    }
    prefs_decide(u->opt_out, cat, &u->quiet, u->tz, n, channel, now_ms, d);
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
    /* One row of at most 1 MiB, read at start and written when the hub
     * publishes a new snapshot: a page cache would only keep that megabyte
     * resident (SQLite's default ceiling is 2 MiB). 32 KiB holds the
     * b-tree's top pages; the row's overflow pages come from the OS. */
    if ((rc = db_exec(st->db, "PRAGMA cache_size=-32")) < 0 ||
        (rc = db_prepare(st->db, "SELECT version, json FROM policy_snapshot WHERE id = 1",
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
