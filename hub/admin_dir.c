/* admin_dir.c - admin commands on the directory and preferences: users,
 * devices, agents' bindings, preferences, and the dry run of `send`
 * (see admin.h, docs/tidingsctl.md). */
#include "admin_int.h"

#include "error.h"
#include "log.h"
#include "policy.h"
#include "proto.h"
#include "tz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LIST_MAX 10000
#define EXPORT_NOTIFICATIONS 100
#define DRY_RUN_MEMBERS 50

int admin_send_dry_run(struct admin_call *c, const struct notification *n);

static void user_json(cJSON *o, const struct store_user *u)
{
    admin_add_str(o, "id", u->id);
    admin_add_str(o, "tz", u->tz);
    admin_add_str(o, "locale", u->locale);
    admin_add_str(o, "phone", u->phone);
    admin_add_str(o, "email", u->email);
    admin_add_time(o, "created", u->created_ms);
    admin_add_time(o, "updated", u->updated_ms);
}

/* Read tz/locale/phone/email into u; *mask gets the fields given. */
static int user_fields(struct admin_call *c, struct store_user *u, unsigned *mask)
{
    static const struct {
        const char *key;
        unsigned bit;
        size_t off, size;
    } f[] = {
        {"tz", STORE_USER_TZ, offsetof(struct store_user, tz), sizeof(u->tz)},
        {"locale", STORE_USER_LOCALE, offsetof(struct store_user, locale), sizeof(u->locale)},
        {"phone", STORE_USER_PHONE, offsetof(struct store_user, phone), sizeof(u->phone)},
        {"email", STORE_USER_EMAIL, offsetof(struct store_user, email), sizeof(u->email)},
    };
    *mask = 0;
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->req, f[i].key);
        if (!v) {
            continue;
        }
        if (!cJSON_IsString(v)) {
            return admin_fail(c, "wrong_type", f[i].key, "%s must be a string", f[i].key);
        }
        if (strlen(v->valuestring) >= f[i].size) {
            return admin_fail(c, "too_long", f[i].key, "%s: %zu bytes max", f[i].key,
                              f[i].size - 1);
        }
        snprintf((char *)u + f[i].off, f[i].size, "%s", v->valuestring);
        *mask |= f[i].bit;
    }
    const char *field = NULL;
    if (store_user_check(u, *mask, &field) < 0) {
        const char *what = !field                        ? "invalid"
                           : strcmp(field, "tz") == 0    ? "not a known IANA time zone"
                           : strcmp(field, "phone") == 0 ? "not an E.164 number (+ and 8-15 digits)"
                           : strcmp(field, "email") == 0 ? "not an email address"
                           : strcmp(field, "locale") == 0 ? "not a BCP 47 tag"
                                                          : "not a valid user id";
        return admin_fail(c, "bad_value", field ? field : "", "%s: %s", field ? field : "user",
                          what);
    }
    /* A well-formed name is not enough: the zone must exist here, or every
     * quiet hour of this user would silently fall back to UTC. */
    tz_t *tz = NULL;
    if ((*mask & STORE_USER_TZ) && tz_load(u->tz, &tz) < 0) {
        return admin_fail(c, "bad_value", "tz", "tz: no time zone '%s' in the system's tz database",
                          u->tz);
    }
    tz_free(tz);
    return 0;
}

static int answer_user(struct admin_call *c, const char *id)
{
    struct store_user u;
    int rc = store_user_get(c->store, id, &u);
    if (rc < 0) {
        return admin_fail_store(c, rc, "user", "user");
    }
    if (rc == 0) {
        return admin_fail(c, "not_found", "user", "no user %s", id);
    }
    cJSON *o = cJSON_AddObjectToObject(c->out, "user");
    if (!o) {
        return admin_fail(c, "storage", "", "out of memory");
    }
    user_json(o, &u);
    return 0;
}

static int put_user(struct admin_call *c, bool create)
{
    const char *id;
    if (admin_user(c, "user", true, &id) < 0) {
        return -1;
    }
    struct store_user u = {0};
    snprintf(u.id, sizeof(u.id), "%s", id);
    unsigned mask;
    if (user_fields(c, &u, &mask) < 0) {
        return -1;
    }
    int exists = store_user_exists(c->store, id);
    if (exists < 0) {
        return admin_fail_store(c, exists, "user", "user");
    }
    if (create && exists) {
        return admin_fail(c, "exists", "user", "user %s exists (use user set)", id);
    }
    if (!create && !exists) {
        return admin_fail(c, "not_found", "user", "no user %s", id);
    }
    if (!create && !mask) {
        return admin_fail(c, "missing_field", "tz",
                          "give at least one of tz, locale, phone, email");
    }
    int rc = store_user_put(c->store, &u, mask, c->now_ms);
    if (rc < 0) {
        return admin_fail_store(c, rc, "user", "user");
    }
    c->changed = true; /* a time zone is part of the agents' snapshots */
    c->changed_user = id;
    return answer_user(c, id);
}

int admin_user_add(struct admin_call *c)
{
    return put_user(c, true);
}

int admin_user_set(struct admin_call *c)
{
    return put_user(c, false);
}

struct count_ctx {
    int64_t n;
};

static void count_device(void *arg, const struct store_device_info *d)
{
    (void)d;
    ((struct count_ctx *)arg)->n++;
}

int admin_user_show(struct admin_call *c)
{
    const char *id;
    if (admin_user(c, "user", true, &id) < 0 || answer_user(c, id) < 0) {
        return -1;
    }
    struct count_ctx cc = {0};
    int rc = store_device_list(c->store, id, count_device, &cc);
    if (rc < 0) {
        return admin_fail_store(c, rc, "user", "devices");
    }
    admin_add_int(cJSON_GetObjectItemCaseSensitive(c->out, "user"), "devices", cc.n);
    return 0;
}

struct list_ctx {
    cJSON *arr;
    int64_t n, max;
};

static void list_user(void *arg, const struct store_user *u)
{
    struct list_ctx *l = arg;
    if (l->n++ >= l->max) {
        return;
    }
    cJSON *o = cJSON_CreateObject();
    if (o) {
        user_json(o, u);
        cJSON_AddItemToArray(l->arr, o);
    }
}

int admin_user_list(struct admin_call *c)
{
    int64_t limit;
    if (admin_int(c, "limit", 1, LIST_MAX, 100, &limit) < 0) {
        return -1;
    }
    struct list_ctx l = {.arr = cJSON_AddArrayToObject(c->out, "items"), .max = limit};
    if (!l.arr) {
        return admin_fail(c, "storage", "", "out of memory");
    }
    int rc = store_user_list(c->store, list_user, &l);
    if (rc < 0) {
        return admin_fail_store(c, rc, "", "users");
    }
    admin_add_int(c->out, "total", l.n);
    return 0;
}

int admin_user_remove(struct admin_call *c)
{
    const char *id;
    if (admin_user(c, "user", true, &id) < 0) {
        return -1;
    }
    int rc = store_user_exists(c->store, id);
    if (rc < 0) {
        return admin_fail_store(c, rc, "user", "user");
    }
    if (rc == 0) {
        return admin_fail(c, "not_found", "user", "no user %s", id);
    }
    int64_t erased = 0;
    /* Preferences (through store_pref_set: it bumps the policy revision),
     * then everything else that names them: directory, decisions, caps,
     * timers, provider answers, notification bodies (store.h). One
     * savepoint: all or nothing. */
    if ((rc = store_pref_set(c->store, id, NULL, 0, c->now_ms, NULL)) < 0 ||
        (rc = store_admin_forget_user(c->store, id, c->now_ms, &erased)) < 0) {
        return admin_fail_store(c, rc, "user", "remove user");
    }
    /* The audit trail names no one: the point was to forget them. */
    char detail[80];
    snprintf(detail, sizeof(detail), "a user removed; %lld notification(s) redacted",
             (long long)erased);
    if ((rc = store_admin_audit(c->store, c->now_ms, "user/remove", "", detail, c->client)) < 0) {
        return admin_fail_store(c, rc, "", "audit");
    }
    admin_add_int(c->out, "notifications_redacted", erased);
    c->changed = true;
    c->changed_user = NULL; /* bindings may have named them: refresh every snapshot */
    return 0;
}

static void device_json(cJSON *o, const struct store_device_info *d)
{
    admin_add_int(o, "id", d->id);
    admin_add_str(o, "user", d->user_id);
    admin_add_str(o, "platform", d->platform);
    admin_add_str(o, "token", d->token);
    admin_add_str(o, "app", d->app);
    admin_add_str(o, "environment", d->environment);
    admin_add_str(o, "state", d->state);
    admin_add_str(o, "reason", d->state_reason);
    admin_add_time(o, "state_since", d->state_ms);
    admin_add_time(o, "registered", d->registered_ms);
    admin_add_time(o, "last_active", d->last_active_ms);
}

static void list_device(void *arg, const struct store_device_info *d)
{
    struct list_ctx *l = arg;
    cJSON *o = cJSON_CreateObject();
    if (o) {
        device_json(o, d);
        cJSON_AddItemToArray(l->arr, o);
    }
}

static void list_name(void *arg, const char *name)
{
    struct list_ctx *l = arg;
    cJSON_AddItemToArray(l->arr, cJSON_CreateString(name));
}

static void binding_json(void *arg, const struct store_binding *b)
{
    struct list_ctx *l = arg;
    cJSON *o = cJSON_CreateObject();
    if (o) {
        admin_add_str(o, "agent", b->agent);
        admin_add_str(o, "subject", b->subject);
        admin_add_str(o, "category", b->category);
        admin_add_time(o, "created", b->created_ms);
        cJSON_AddItemToArray(l->arr, o);
    }
}

/* Only the bindings naming one subject. */
struct subject_filter {
    struct list_ctx l;
    const char *subject;
};

static void binding_of_subject(void *arg, const struct store_binding *b)
{
    struct subject_filter *f = arg;
    if (strcmp(b->subject, f->subject) == 0) {
        binding_json(&f->l, b);
    }
}

struct export_rows {
    cJSON *arr;
};

static void export_row(void *arg, const struct store_admin_row *r)
{
    struct export_rows *e = arg;
    cJSON *o = cJSON_CreateObject();
    if (!o) {
        return;
    }
    admin_add_str(o, "id", r->id);
    admin_add_str(o, "state", r->state);
    admin_add_str(o, "reason", r->reason);
    admin_add_time(o, "received", r->received_ms);
    cJSON *body = cJSON_Parse(r->body);
    if (body) {
        cJSON_AddItemToObject(o, "notification", body);
    }
    cJSON_AddItemToArray(e->arr, o);
}

int admin_user_export(struct admin_call *c)
{
    const char *id;
    if (admin_user(c, "user", true, &id) < 0 || answer_user(c, id) < 0) {
        return -1;
    }
    struct list_ctx dev = {.arr = cJSON_AddArrayToObject(c->out, "devices")};
    struct list_ctx grp = {.arr = cJSON_AddArrayToObject(c->out, "groups")};
    char subject[STORE_USER_ID_MAX + 8];
    snprintf(subject, sizeof(subject), "user:%s", id);
    struct subject_filter bf = {.l = {.arr = cJSON_AddArrayToObject(c->out, "bindings")},
                                .subject = subject};
    struct export_rows er = {.arr = cJSON_AddArrayToObject(c->out, "notifications")};
    if (!dev.arr || !grp.arr || !bf.l.arr || !er.arr) {
        return admin_fail(c, "storage", "", "out of memory");
    }
    char *prefs = malloc(STORE_PREF_MAX + 1);
    if (!prefs) {
        return admin_fail(c, "storage", "", "out of memory");
    }
    int rc = store_pref_get(c->store, id, prefs, STORE_PREF_MAX + 1);
    if (rc > 0 && prefs[0]) {
        cJSON *p = cJSON_Parse(prefs);
        cJSON_AddItemToObject(c->out, "preferences", p ? p : cJSON_CreateString(prefs));
    } else if (rc >= 0) {
        cJSON_AddNullToObject(c->out, "preferences");
    }
    free(prefs);
    struct store_admin_filter f = {
        .user = id, .changed_after_ms = -1, .limit = EXPORT_NOTIFICATIONS};
    if (rc < 0 || (rc = store_device_list(c->store, id, list_device, &dev)) < 0 ||
        (rc = store_user_groups(c->store, id, list_name, &grp)) < 0 ||
        (rc = store_binding_list(c->store, NULL, binding_of_subject, &bf)) < 0 ||
        (rc = store_admin_log(c->store, &f, export_row, &er)) < 0) {
        return admin_fail_store(c, rc, "user", "export");
    }
    return 0;
}

/* --- devices --------------------------------------------------------------- */

int admin_device_add(struct admin_call *c)
{
    const char *user, *platform, *token, *app, *env;
    if (admin_user(c, "user", true, &user) < 0 ||
        admin_str(c, "platform", true, 16, &platform) < 0 ||
        admin_str(c, "token", true, STORE_TOKEN_MAX, &token) < 0 ||
        admin_str(c, "app", false, 255, &app) < 0 ||
        admin_str(c, "environment", false, 15, &env) < 0) {
        return -1;
    }
    const char *field = NULL;
    if (store_device_check(platform, token, app ? app : "", env ? env : "", &field) < 0) {
        const char *f = field ? field : "platform";
        return admin_fail(c, "bad_value", f, "%s: %s", f,
                          strcmp(f, "platform") == 0      ? "must be ios, android or desktop"
                          : strcmp(f, "environment") == 0 ? "must be production or sandbox"
                          : strcmp(f, "token") == 0       ? "1-255 printable bytes"
                                                          : "invalid");
    }
    int64_t id = 0;
    int rc = store_device_add(c->store, user, platform, token, app ? app : "", env ? env : "",
                              c->now_ms, &id);
    if (rc == TDG_ENOTFOUND) {
        return admin_fail(c, "not_found", "user", "no user %s", user);
    }
    if (rc == TDG_EDEVICE_LIMIT) {
        return admin_fail(c, "over_limit", "user", "user %s already has %d active devices", user,
                          STORE_MAX_DEVICES);
    }
    if (rc < 0) {
        return admin_fail_store(c, rc, "", "device");
    }
    struct store_device_info d;
    if ((rc = store_device_get(c->store, id, &d)) <= 0) {
        return admin_fail_store(c, rc ? rc : TDG_ENOTFOUND, "device", "device");
    }
    cJSON *o = cJSON_AddObjectToObject(c->out, "device");
    if (!o) {
        return admin_fail(c, "storage", "", "out of memory");
    }
    device_json(o, &d);
    return 0;
}

int admin_device_list(struct admin_call *c)
{
    const char *user;
    if (admin_user(c, "user", true, &user) < 0) {
        return -1;
    }
    int rc = store_user_exists(c->store, user);
    if (rc <= 0) {
        return rc < 0 ? admin_fail_store(c, rc, "user", "user")
                      : admin_fail(c, "not_found", "user", "no user %s", user);
    }
    struct list_ctx l = {.arr = cJSON_AddArrayToObject(c->out, "items")};
    if (!l.arr) {
        return admin_fail(c, "storage", "", "out of memory");
    }
    if ((rc = store_device_list(c->store, user, list_device, &l)) < 0) {
        return admin_fail_store(c, rc, "user", "devices");
    }
    return 0;
}

static int device_id(struct admin_call *c, int64_t *id)
{
    if (!cJSON_GetObjectItemCaseSensitive(c->req, "device")) {
        return admin_fail(c, "missing_field", "device",
                          "device is required (an id from device list)");
    }
    return admin_int(c, "device", 1, INT64_MAX, 0, id);
}

int admin_device_remove(struct admin_call *c)
{
    int64_t id;
    if (device_id(c, &id) < 0) {
        return -1;
    }
    int rc = store_device_remove(c->store, id);
    if (rc < 0) {
        return admin_fail_store(c, rc, "device", "device");
    }
    return rc == 0 ? admin_fail(c, "not_found", "device", "no device %lld", (long long)id) : 0;
}

int admin_device_enable(struct admin_call *c)
{
    int64_t id;
    if (device_id(c, &id) < 0) {
        return -1;
    }
    int rc = store_device_enable(c->store, id, c->now_ms);
    if (rc == TDG_EDEVICE_LIMIT) {
        return admin_fail(c, "over_limit", "device", "its user already has %d active devices",
                          STORE_MAX_DEVICES);
    }
    if (rc < 0) {
        return admin_fail_store(c, rc, "device", "device");
    }
    if (rc == 0) {
        return admin_fail(c, "not_found", "device", "no device %lld", (long long)id);
    }
    char target[32];
    snprintf(target, sizeof(target), "device:%lld", (long long)id);
    if ((rc = store_admin_audit(c->store, c->now_ms, "device/enable", target, "", c->client)) < 0) {
        return admin_fail_store(c, rc, "", "audit");
    }
    return 0;
}

/* --- preferences ----------------------------------------------------------- */

int admin_pref_show(struct admin_call *c)
{
    const char *user;
    if (admin_user(c, "user", true, &user) < 0) {
        return -1;
    }
    int rc = store_user_exists(c->store, user);
    if (rc <= 0) {
        return rc < 0 ? admin_fail_store(c, rc, "user", "user")
                      : admin_fail(c, "not_found", "user", "no user %s", user);
    }
    char *buf = malloc(STORE_PREF_MAX + 1);
    if (!buf) {
        return admin_fail(c, "storage", "", "out of memory");
    }
    rc = store_pref_get(c->store, user, buf, STORE_PREF_MAX + 1);
    if (rc < 0) {
        free(buf);
        return admin_fail_store(c, rc, "user", "preferences");
    }
    admin_add_str(c->out, "user", user);
    cJSON *p = rc > 0 && buf[0] ? cJSON_Parse(buf) : NULL;
    free(buf);
    if (p) {
        cJSON_AddItemToObject(c->out, "preferences", p);
    } else {
        cJSON_AddNullToObject(c->out, "preferences");
    }
    return 0;
}

int admin_pref_set(struct admin_call *c)
{
    const char *user;
    if (admin_user(c, "user", true, &user) < 0) {
        return -1;
    }
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(c->req, "prefs");
    if (!p) {
        return admin_fail(c, "missing_field", "prefs", "prefs is required ({} clears them)");
    }
    if (!cJSON_IsObject(p) && !cJSON_IsNull(p)) {
        return admin_fail(c, "wrong_type", "prefs", "prefs must be an object");
    }
    char *text = cJSON_IsObject(p) && p->child ? cJSON_PrintUnformatted(p) : NULL;
    if (cJSON_IsObject(p) && p->child && !text) {
        return admin_fail(c, "storage", "", "out of memory");
    }
    struct policy_error perr = {{0}, {0}};
    int rc = store_pref_set(c->store, user, text, text ? strlen(text) : 0, c->now_ms, &perr);
    free(text);
    if (rc == TDG_EINVAL_INPUT) {
        char field[240];
        snprintf(field, sizeof(field), "prefs%s%s", perr.field[0] ? "." : "", perr.field);
        return admin_fail(c, "bad_value", field, "%s: %s", field,
                          perr.detail[0] ? perr.detail : "invalid");
    }
    if (rc == TDG_ETOOBIG) {
        return admin_fail(c, "too_large", "prefs", "prefs: %d bytes max", STORE_PREF_MAX);
    }
    if (rc == TDG_ENOTFOUND) {
        return admin_fail(c, "not_found", "user", "no user %s", user);
    }
    if (rc < 0) {
        return admin_fail_store(c, rc, "prefs", "preferences");
    }
    c->changed = true;
    c->changed_user = user;
    return 0;
}

/* --- agents ---------------------------------------------------------------- */

static const char *binding_what(const char *field)
{
    return !field                          ? "invalid"
           : strcmp(field, "agent") == 0   ? "an agent id (1-64 of A-Z a-z 0-9 . _ -) or *"
           : strcmp(field, "subject") == 0 ? "user:<id>, group:<id> or *"
                                           : "a category (1-32 bytes) or *";
}

/* The ACL lines an agent needs on the central broker (DESIGN.md topics). */
static void agent_acl(cJSON *arr, const char *agent)
{
    static const struct {
        const char *access, *suffix;
    } lines[] = {
        {"write", "up"},  {"readwrite", "status"}, {"read", "ack"},
        {"read", "down"}, {"read", "policy"},      {"read", "receipts"},
    };
    char line[200];
    snprintf(line, sizeof(line), "user %s", agent);
    cJSON_AddItemToArray(arr, cJSON_CreateString(line));
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        snprintf(line, sizeof(line), "topic %s tidings/v1/agents/%s/%s", lines[i].access, agent,
                 lines[i].suffix);
        cJSON_AddItemToArray(arr, cJSON_CreateString(line));
    }
    cJSON_AddItemToArray(arr, cJSON_CreateString("topic read " PROTO_TOPIC_HUBS_STATUS_FILTER));
}

/* An array-of-strings field; NULL when absent. */
static int str_array(struct admin_call *c, const char *key, const cJSON **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->req, key);
    *out = NULL;
    if (!v) {
        return 0;
    }
    if (!cJSON_IsArray(v)) {
        return admin_fail(c, "wrong_type", key, "%s must be an array of strings", key);
    }
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v)
    {
        if (!cJSON_IsString(e) || !e->valuestring[0]) {
            char f[64];
            snprintf(f, sizeof(f), "%s[%d]", key, i);
            return admin_fail(c, "wrong_type", f, "%s must be a non-empty string", f);
        }
        i++;
    }
    if (i > 1000) {
        return admin_fail(c, "too_long", key, "%s: 1000 entries max", key);
    }
    *out = v;
    return 0;
}

static int add_binding(struct admin_call *c, const char *agent, const char *subject,
                       const char *category, const char *subject_field, const char *cat_field)
{
    const char *field = NULL;
    if (store_binding_check(agent, subject, category, &field) < 0) {
        const char *f = !field                           ? "agent"
                        : strcmp(field, "subject") == 0  ? subject_field
                        : strcmp(field, "category") == 0 ? cat_field
                                                         : field;
        return admin_fail(c, "bad_value", f, "%s: %s", f, binding_what(field));
    }
    if (strncmp(subject, "user:", 5) == 0 || strncmp(subject, "group:", 6) == 0) {
        bool user = subject[0] == 'u';
        const char *id = subject + (user ? 5 : 6);
        int rc = user ? store_user_exists(c->store, id) : store_group_exists(c->store, id);
        if (rc < 0) {
            return admin_fail_store(c, rc, subject_field, "subject");
        }
        if (rc == 0) {
            return admin_fail(c, "not_found", subject_field, "no %s %s", user ? "user" : "group",
                              id);
        }
    }
    int rc = store_binding_add(c->store, agent, subject, category, c->now_ms);
    if (rc < 0) {
        return admin_fail_store(c, rc, "agent", "binding");
    }
    char detail[200];
    snprintf(detail, sizeof(detail), "allow %s category %s", subject, category);
    if ((rc = store_admin_audit(c->store, c->now_ms, "agent/allow", agent, detail, c->client)) <
        0) {
        return admin_fail_store(c, rc, "", "audit");
    }
    c->changed = true;
    return 0;
}

int admin_agent_add(struct admin_call *c)
{
    const char *agent;
    const cJSON *users, *groups, *cats;
    if (admin_str(c, "agent", true, PROTO_AGENT_MAX, &agent) < 0 ||
        str_array(c, "users", &users) < 0 || str_array(c, "groups", &groups) < 0 ||
        str_array(c, "categories", &cats) < 0) {
        return -1;
    }
    if (!proto_agent_id_valid(agent)) {
        return admin_fail(c, "bad_value", "agent", "agent: 1-64 of A-Z a-z 0-9 . _ -");
    }
    if (strcmp(agent, "admin") == 0) {
        /* The sender recorded for notifications sent with tidingsctl. */
        return admin_fail(c, "bad_value", "agent",
                          "agent: 'admin' is reserved for tidingsctl send");
    }
    const cJSON *lists[2] = {users, groups};
    const char *names[2] = {"users", "groups"};
    for (int k = 0; k < 2; k++) {
        int i = 0;
        const cJSON *s;
        cJSON_ArrayForEach(s, lists[k])
        {
            char subject[STORE_USER_ID_MAX + 8], sf[40];
            snprintf(subject, sizeof(subject), "%s:%s", k == 0 ? "user" : "group", s->valuestring);
            snprintf(sf, sizeof(sf), "%s[%d]", names[k], i++);
            if (!cats || cJSON_GetArraySize(cats) == 0) {
                if (add_binding(c, agent, subject, "*", sf, "categories") < 0) {
                    return -1;
                }
                continue;
            }
            int j = 0;
            const cJSON *cat;
            cJSON_ArrayForEach(cat, cats)
            {
                char cf[40];
                snprintf(cf, sizeof(cf), "categories[%d]", j++);
                if (add_binding(c, agent, subject, cat->valuestring, sf, cf) < 0) {
                    return -1;
                }
            }
        }
    }
    admin_add_str(c->out, "agent", agent);
    struct list_ctx l = {.arr = cJSON_AddArrayToObject(c->out, "items")};
    cJSON *broker = cJSON_AddObjectToObject(c->out, "broker");
    cJSON *acl = broker ? cJSON_AddArrayToObject(broker, "acl") : NULL;
    if (!l.arr || !acl) {
        return admin_fail(c, "storage", "", "out of memory");
    }
    admin_add_str(broker, "username", agent);
    agent_acl(acl, agent);
    int rc = store_binding_list(c->store, agent, binding_json, &l);
    return rc < 0 ? admin_fail_store(c, rc, "agent", "bindings") : 0;
}

int admin_agent_list(struct admin_call *c)
{
    const char *agent;
    if (admin_str(c, "agent", false, PROTO_AGENT_MAX, &agent) < 0) {
        return -1;
    }
    struct list_ctx l = {.arr = cJSON_AddArrayToObject(c->out, "items")};
    if (!l.arr) {
        return admin_fail(c, "storage", "", "out of memory");
    }
    int rc = store_binding_list(c->store, agent, binding_json, &l);
    return rc < 0 ? admin_fail_store(c, rc, "agent", "bindings") : 0;
}

static int binding_args(struct admin_call *c, const char **agent, const char **subject,
                        const char **category)
{
    if (admin_str(c, "agent", true, PROTO_AGENT_MAX, agent) < 0 ||
        admin_str(c, "subject", true, STORE_USER_ID_MAX + 7, subject) < 0 ||
        admin_str(c, "category", false, PROTO_CATEGORY_MAX, category) < 0) {
        return -1;
    }
    if (!*category) {
        *category = "*";
    }
    return 0;
}

int admin_agent_allow(struct admin_call *c)
{
    const char *agent, *subject, *category;
    if (binding_args(c, &agent, &subject, &category) < 0) {
        return -1;
    }
    return add_binding(c, agent, subject, category, "subject", "category");
}

int admin_agent_revoke(struct admin_call *c)
{
    const char *agent, *subject, *category;
    if (binding_args(c, &agent, &subject, &category) < 0) {
        return -1;
    }
    int rc = store_binding_remove(c->store, agent, subject, category);
    if (rc < 0) {
        return admin_fail_store(c, rc, "agent", "binding");
    }
    if (rc == 0) {
        return admin_fail(c, "not_found", "subject", "agent %s has no binding for %s category %s",
                          agent, subject, category);
    }
    char detail[200];
    snprintf(detail, sizeof(detail), "revoke %s category %s", subject, category);
    if ((rc = store_admin_audit(c->store, c->now_ms, "agent/revoke", agent, detail, c->client)) <
        0) {
        return admin_fail_store(c, rc, "", "audit");
    }
    c->changed = true;
    return 0;
}

/* --- send --dry-run ---------------------------------------------------------
 * The fanout's planning (fanout.c, plan_user) without its side effects: the
 * same preferences and zone (store_pref_load), the same pure policy_decide
 * per channel class, the same fallback order and endpoint routing. Nothing
 * is recorded, no cap is counted, no timer is set. */

struct dry_ep {
    int64_t id;
    char platform[16];
    const struct fanout_route *route;
    bool restricted, disabled;
};

struct dry_eps {
    const struct admin_call *c;
    const struct notification *n;
    struct dry_ep ep[16];
    unsigned n_ep;
};

static void dry_endpoint(void *arg, const struct store_device *sd)
{
    struct dry_eps *u = arg;
    if (u->n_ep >= sizeof(u->ep) / sizeof(u->ep[0])) {
        return;
    }
    struct dry_ep *e = &u->ep[u->n_ep];
    memset(e, 0, sizeof(*e));
    e->id = sd->id;
    snprintf(e->platform, sizeof(e->platform), "%s", sd->platform ? sd->platform : "");
    for (size_t i = 0; i < u->c->env->nroutes; i++) {
        if (strcmp(u->c->env->routes[i].platform, e->platform) == 0) {
            e->route = &u->c->env->routes[i];
        }
    }
    if (!e->route) {
        return; /* desktop: delivered by agents, not by the hub */
    }
    e->restricted = !(u->n->channels & e->route->proto_class);
    e->disabled = e->route->ops == NULL;
    u->n_ep++;
}

static cJSON *plan_row(cJSON *plan, const char *user, const struct dry_ep *e, const char *cls,
                       unsigned step, const char *action, const char *rule, int64_t when)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) {
        return NULL;
    }
    admin_add_str(o, "user", user);
    if (e) {
        admin_add_int(o, "device", e->id);
        admin_add_str(o, "platform", e->platform);
        admin_add_str(o, "channel", e->route->channel);
    } else {
        cJSON_AddNullToObject(o, "device");
        admin_add_str(o, "platform", "");
        admin_add_str(o, "channel", "");
    }
    admin_add_str(o, "class", cls);
    admin_add_int(o, "step", step);
    admin_add_str(o, "action", action);
    admin_add_str(o, "rule", rule);
    admin_add_time(o, "when", when);
    cJSON_AddItemToArray(plan, o);
    return o;
}

static int dry_user(struct admin_call *c, const struct notification *n, const char *user,
                    cJSON *plan)
{
    char *buf = malloc(STORE_PREF_MAX + 1);
    char tzname[TZ_NAME_MAX + 1] = "UTC";
    if (!buf) {
        return admin_fail(c, "storage", "", "out of memory");
    }
    int rc = store_pref_load(c->store, user, buf, STORE_PREF_MAX + 1, tzname, sizeof(tzname));
    if (rc <= 0) {
        free(buf);
        if (rc == 0) {
            plan_row(plan, user, NULL, "", 0, "none", "no_such_user", 0);
            return 0;
        }
        return admin_fail_store(c, rc, "notification.to", "preferences");
    }
    policy_prefs_t *p = NULL;
    struct policy_error perr;
    if (buf[0] && policy_prefs_parse(buf, strlen(buf), &p, &perr) < 0) {
        p = NULL;
    }
    free(buf);
    tz_t *tz = NULL;
    if (tz_load(tzname, &tz) < 0) {
        tz = NULL;
    }
    int64_t now = c->now_ms;
    int result = 0;
    struct dry_eps eps = {.c = c, .n = n};
    if ((rc = store_user_devices(c->store, user, dry_endpoint, &eps)) < 0) {
        result = admin_fail_store(c, rc, "notification.to", "devices");
        goto out;
    }
    int64_t cap_max = 0, cap_win = 0, cap_count = 0;
    if (policy_cap(p, n->category, &cap_max, &cap_win) &&
        store_cap_count(c->store, user, n->category, now - cap_win, &cap_count) < 0) {
        cap_count = 0;
    }
    /* The classes the fanout would find endpoints for; the endpoints it
     * would leave out are shown as skipped. */
    unsigned classes = 0, rows = 0;
    for (unsigned i = 0; i < eps.n_ep; i++) {
        const struct dry_ep *e = &eps.ep[i];
        if (e->restricted || e->disabled) {
            char rule[64];
            snprintf(rule, sizeof(rule), "%s%s", e->restricted ? "channels_restriction"
                                                               : "channel_not_enabled:",
                     e->restricted ? "" : e->route->channel);
            plan_row(plan, user, e, proto_channel_name((enum proto_channel)e->route->proto_class),
                     0, "skip", rule, 0);
            rows++;
        } else {
            classes |= e->route->proto_class;
        }
    }
    /* The planner's own function (policy_plan, as fanout.c plans): what
     * happens now, then each later fallback step as it would be decided
     * when it comes due (assuming no provider success before). */
    struct policy_plan *pl = malloc(sizeof(*pl));
    if (!pl) {
        result = admin_fail(c, "storage", "", "out of memory");
        goto out;
    }
    policy_plan(p, tz, n, classes, 0, false, 0, now, cap_count, pl);
    if (pl->next == POLICY_PLAN_DELIVER_AT) {
        plan_row(plan, user, NULL, "", 0, "schedule", "deliver_at", pl->at_ms);
        free(pl);
        goto out;
    }
    int64_t at = now;
    for (unsigned round = 0; round <= POLICY_FALLBACK_MAX; round++) {
        for (size_t k = 0; k < pl->n; k++) {
            const struct policy_plan_item *it = &pl->items[k];
            const char *cls = proto_channel_name(it->channel);
            bool later = pl->nsteps && it->step > 0;
            char rule[POLICY_RULE_MAX + 40];
            if (later) {
                snprintf(rule, sizeof(rule), "fallback:%s, then %s", cls, it->d.rule);
            } else {
                snprintf(rule, sizeof(rule), "%s", it->d.rule);
            }
            for (unsigned i = 0; i < eps.n_ep; i++) {
                const struct dry_ep *e = &eps.ep[i];
                if (e->restricted || e->disabled || e->route->proto_class != it->channel) {
                    continue;
                }
                rows++;
                plan_row(plan, user, e, cls, it->step,
                         later && it->d.action == POLICY_ALLOW ? "fallback"
                                                               : policy_action_name(it->d.action),
                         rule,
                         it->d.action == POLICY_HOLD    ? it->d.hold_until_ms
                         : it->d.action == POLICY_ALLOW ? at
                                                        : 0);
            }
        }
        if (pl->next != POLICY_PLAN_FALLBACK) {
            break;
        }
        at = pl->at_ms;
        policy_plan(p, tz, n, classes, pl->step, true, pl->started_ms, at, cap_count, pl);
    }
    free(pl);
    if (rows == 0) {
        plan_row(plan, user, NULL, "", 0, "none", "no_active_endpoint", 0);
    }
out:
    policy_prefs_free(p);
    tz_free(tz);
    return result;
}

struct members {
    char (*ids)[STORE_USER_ID_MAX + 1];
    size_t n, cap;
};

static void member(void *arg, const char *name)
{
    struct members *m = arg;
    if (m->n < m->cap) {
        snprintf(m->ids[m->n++], sizeof(m->ids[0]), "%s", name);
    }
}

int admin_send_dry_run(struct admin_call *c, const struct notification *n)
{
    cJSON *plan = cJSON_AddArrayToObject(c->out, "plan");
    if (!plan) {
        return admin_fail(c, "storage", "", "out of memory");
    }
    admin_add_str(c->out, "to", n->to);
    cJSON_AddBoolToObject(c->out, "dry_run", true);
    if (n->to_kind == PROTO_TO_USER) {
        return dry_user(c, n, n->to_id, plan);
    }
    struct members m = {.cap = DRY_RUN_MEMBERS};
    m.ids = calloc(m.cap, sizeof(*m.ids));
    if (!m.ids) {
        return admin_fail(c, "storage", "", "out of memory");
    }
    int rc = store_group_members(c->store, n->to_id, member, &m);
    for (size_t i = 0; rc >= 0 && i < m.n; i++) {
        if (dry_user(c, n, m.ids[i], plan) < 0) {
            free(m.ids);
            return -1;
        }
    }
    free(m.ids);
    if (rc < 0) {
        return admin_fail_store(c, rc, "notification.to", "group");
    }
    if (rc > DRY_RUN_MEMBERS) {
        admin_add_int(c->out, "members_not_shown", rc - DRY_RUN_MEMBERS);
    }
    return 0;
}

/* --- groups -----------------------------------------------------------------
 * "to": "group:<id>" reaches every member; a binding to group:<id> lets an
 * agent notify the group and each member (docs/directory.md). Membership
 * changes which users an agent may reach, so every agent's snapshot is
 * refreshed after the commit (changed_user NULL). */

#define GROUP_ID_MAX STORE_USER_ID_MAX

static int group_arg(struct admin_call *c, const char **group)
{
    if (admin_str(c, "group", true, GROUP_ID_MAX, group) < 0) {
        return -1;
    }
    if (!proto_id_valid(*group)) {
        return admin_fail(c, "bad_value", "group", "group: 1-64 of A-Z a-z 0-9 . _ : -");
    }
    return 0;
}

/* The group must exist: 0, or -1 answered not_found naming "group". */
static int group_must_exist(struct admin_call *c, const char *group)
{
    int rc = store_group_exists(c->store, group);
    if (rc < 0) {
        return admin_fail_store(c, rc, "group", "group");
    }
    return rc ? 0 : admin_fail(c, "not_found", "group", "no group %s", group);
}

static int group_audit(struct admin_call *c, const char *command, const char *group,
                       const char *detail)
{
    int rc = store_admin_audit(c->store, c->now_ms, command, group, detail, c->client);
    if (rc < 0) {
        return admin_fail_store(c, rc, "", "audit");
    }
    c->changed = true;
    c->changed_user = NULL;
    return 0;
}

/* {"group": id, "members": [the first GROUP_SHOW_MAX ids], "total": n}
 * into c->out (groups have no size limit; the answer has). */
#define GROUP_SHOW_MAX 1000
static int64_t group_count(store_t *s, const char *group);
static int answer_group(struct admin_call *c, const char *group)
{
    admin_add_str(c->out, "group", group);
    struct list_ctx l = {.arr = cJSON_AddArrayToObject(c->out, "members")};
    if (!l.arr) {
        return admin_fail(c, "storage", "", "out of memory");
    }
    int rc = store_group_members_page(c->store, group, "", GROUP_SHOW_MAX, list_name, &l);
    int64_t total = rc < 0 ? rc : group_count(c->store, group);
    if (total < 0) {
        return admin_fail_store(c, (int)total, "group", "group members");
    }
    admin_add_int(c->out, "total", total);
    return 0;
}

int admin_group_add(struct admin_call *c)
{
    const char *group;
    const cJSON *members;
    if (group_arg(c, &group) < 0 || str_array(c, "members", &members) < 0) {
        return -1;
    }
    int rc = store_group_exists(c->store, group);
    if (rc < 0) {
        return admin_fail_store(c, rc, "group", "group");
    }
    if (rc > 0) {
        return admin_fail(c, "exists", "group", "group %s exists (use group member add)", group);
    }
    if ((rc = store_group_add(c->store, group, c->now_ms)) < 0) {
        return admin_fail_store(c, rc, "group", "group");
    }
    int i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, members)
    {
        char f[40];
        snprintf(f, sizeof(f), "members[%d]", i++);
        if (strlen(m->valuestring) > STORE_USER_ID_MAX || !proto_id_valid(m->valuestring)) {
            return admin_fail(c, "bad_value", f, "%s: not a valid user id", f);
        }
        if ((rc = store_user_exists(c->store, m->valuestring)) <= 0) {
            return rc < 0 ? admin_fail_store(c, rc, f, "user")
                          : admin_fail(c, "not_found", f, "no user %s", m->valuestring);
        }
        if ((rc = store_group_member_add(c->store, group, m->valuestring, c->now_ms)) < 0) {
            return admin_fail_store(c, rc, f, "member");
        }
    }
    char detail[64];
    snprintf(detail, sizeof(detail), "group created with %d member(s)", i);
    if (group_audit(c, "group/add", group, detail) < 0) {
        return -1;
    }
    return answer_group(c, group);
}

int admin_group_remove(struct admin_call *c)
{
    const char *group;
    if (group_arg(c, &group) < 0) {
        return -1;
    }
    int rc = store_group_remove(c->store, group);
    if (rc < 0) {
        return admin_fail_store(c, rc, "group", "group");
    }
    if (rc == 0) {
        return admin_fail(c, "not_found", "group", "no group %s", group);
    }
    return group_audit(c, "group/remove", group, "group removed with its bindings");
}

struct group_rows {
    struct admin_call *c;
    cJSON *arr;
    int64_t n, max;
    int err;
};

struct page_count {
    char last[STORE_USER_ID_MAX + 1];
};

static void count_name(void *arg, const char *name)
{
    struct page_count *p = arg;
    snprintf(p->last, sizeof(p->last), "%s", name);
}

/* A group's member count, a page at a time (memory bounded by the page,
 * whatever the group's size). Count or error. */
static int64_t group_count(store_t *s, const char *group)
{
    struct page_count p = {""};
    int64_t total = 0;
    for (;;) {
        int rc = store_group_members_page(s, group, p.last, STORE_GROUP_PAGE_MAX, count_name, &p);
        if (rc < 0) {
            return rc;
        }
        total += rc;
        if (rc < STORE_GROUP_PAGE_MAX) {
            return total;
        }
    }
}

static void group_row(void *arg, const char *name)
{
    struct group_rows *g = arg;
    if (g->err < 0 || g->n++ >= g->max) {
        return;
    }
    cJSON *o = cJSON_CreateObject();
    if (!o) {
        return;
    }
    admin_add_str(o, "id", name);
    int64_t n = group_count(g->c->store, name);
    if (n < 0) {
        g->err = (int)n;
    }
    admin_add_int(o, "members", n < 0 ? 0 : n);
    cJSON_AddItemToArray(g->arr, o);
}

int admin_group_list(struct admin_call *c)
{
    const char *group;
    int64_t limit;
    if (admin_str(c, "group", false, GROUP_ID_MAX, &group) < 0 ||
        admin_int(c, "limit", 1, LIST_MAX, 100, &limit) < 0) {
        return -1;
    }
    if (group) {
        return group_must_exist(c, group) < 0 ? -1 : answer_group(c, group);
    }
    struct group_rows g = {.c = c, .arr = cJSON_AddArrayToObject(c->out, "items"), .max = limit};
    if (!g.arr) {
        return admin_fail(c, "storage", "", "out of memory");
    }
    int rc = store_group_list(c->store, group_row, &g);
    if (rc < 0 || g.err < 0) {
        return admin_fail_store(c, rc < 0 ? rc : g.err, "", "groups");
    }
    admin_add_int(c->out, "total", rc);
    return 0;
}

static int member_args(struct admin_call *c, const char **group, const char **user)
{
    if (group_arg(c, group) < 0 || admin_user(c, "user", true, user) < 0) {
        return -1;
    }
    return group_must_exist(c, *group);
}

int admin_group_member_add(struct admin_call *c)
{
    const char *group, *user;
    if (member_args(c, &group, &user) < 0) {
        return -1;
    }
    int rc = store_user_exists(c->store, user);
    if (rc <= 0) {
        return rc < 0 ? admin_fail_store(c, rc, "user", "user")
                      : admin_fail(c, "not_found", "user", "no user %s", user);
    }
    if ((rc = store_group_member_add(c->store, group, user, c->now_ms)) < 0) {
        return admin_fail_store(c, rc, "user", "member");
    }
    char detail[STORE_USER_ID_MAX + 32];
    snprintf(detail, sizeof(detail), "member user:%s added", user);
    if (group_audit(c, "group/member/add", group, detail) < 0) {
        return -1;
    }
    return answer_group(c, group);
}

int admin_group_member_remove(struct admin_call *c)
{
    const char *group, *user;
    if (member_args(c, &group, &user) < 0) {
        return -1;
    }
    int rc = store_group_member_remove(c->store, group, user);
    if (rc < 0) {
        return admin_fail_store(c, rc, "user", "member");
    }
    if (rc == 0) {
        return admin_fail(c, "not_found", "user", "user %s is not a member of group %s", user,
                          group);
    }
    char detail[STORE_USER_ID_MAX + 32];
    snprintf(detail, sizeof(detail), "member user:%s removed", user);
    if (group_audit(c, "group/member/remove", group, detail) < 0) {
        return -1;
    }
    return answer_group(c, group);
}
