/* admin.c - admin API transport and dispatch (see admin.h). */
#include "admin.h"
#include "admin_int.h"

#include "error.h"
#include "log.h"
#include "loop.h"
#include "proto.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The commands; hand-written registration (STYLE rule 4). "fields" lists
 * every request field a command takes: anything else is refused by name. */
static const struct admin_command commands[] = {
    {"ping", "", false, admin_ping},
    {"send", "notification,dry_run", true, admin_send},
    {"status", "id", false, admin_status},
    {"log", "user,category,channel,state,since,until,limit,before,changed_after,cursor", false,
     admin_log},
    {"stats", "window", false, admin_stats},
    {"dlq/list", "state,limit", false, admin_dlq_list},
    {"dlq/retry", "id,all,limit", true, admin_dlq_retry},
    {"user/add", "user,tz,locale,phone,email", true, admin_user_add},
    {"user/set", "user,tz,locale,phone,email", true, admin_user_set},
    {"user/show", "user", false, admin_user_show},
    {"user/list", "limit", false, admin_user_list},
    {"user/remove", "user", true, admin_user_remove},
    {"user/export", "user", false, admin_user_export},
    {"device/add", "user,platform,token,app,environment", true, admin_device_add},
    {"device/list", "user", false, admin_device_list},
    {"device/remove", "device", true, admin_device_remove},
    {"device/enable", "device", true, admin_device_enable},
    {"pref/show", "user", false, admin_pref_show},
    {"pref/set", "user,prefs", true, admin_pref_set},
    {"agent/add", "agent,users,groups,categories", true, admin_agent_add},
    {"agent/list", "agent", false, admin_agent_list},
    {"agent/allow", "agent,subject,category", true, admin_agent_allow},
    {"agent/revoke", "agent,subject,category", true, admin_agent_revoke},
    {"group/add", "group,members", true, admin_group_add},
    {"group/remove", "group", true, admin_group_remove},
    {"group/list", "group,limit", false, admin_group_list},
    {"group/member/add", "group,user", true, admin_group_member_add},
    {"group/member/remove", "group,user", true, admin_group_member_remove},
};
#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

struct pending {
    char topic[192];
    unsigned char corr[128];
    uint16_t corr_len;
    char *payload;
    size_t len;
    bool writes;
    bool changed;
    char changed_user[STORE_USER_ID_MAX + 1];
};

struct admin {
    struct admin_env env;
    struct fanout_route routes[FANOUT_MAX_ROUTES];
    struct pending pending[ADMIN_PENDING_MAX];
    size_t npending;
    bool overflow_logged;
    uint64_t handled, refused;
};

admin_t *admin_create(const struct admin_env *env)
{
    admin_t *a = calloc(1, sizeof(*a));
    if (!a) {
        return NULL;
    }
    a->env = *env;
    size_t n = env->nroutes < FANOUT_MAX_ROUTES ? env->nroutes : FANOUT_MAX_ROUTES;
    if (n) {
        memcpy(a->routes, env->routes, n * sizeof(*a->routes));
    }
    a->env.routes = a->routes;
    a->env.nroutes = n;
    return a;
}

void admin_destroy(admin_t *a)
{
    if (!a) {
        return;
    }
    for (size_t i = 0; i < a->npending; i++) {
        free(a->pending[i].payload);
    }
    free(a);
}

bool admin_is_request(const char *topic)
{
    return strncmp(topic, ADMIN_REQUEST_PREFIX, sizeof(ADMIN_REQUEST_PREFIX) - 1) == 0;
}

size_t admin_pending(const admin_t *a)
{
    return a->npending;
}

/* --- helpers for handlers (admin_int.h) ------------------------------- */

int admin_fail(struct admin_call *c, const char *code, const char *field, const char *fmt, ...)
{
    snprintf(c->code, sizeof(c->code), "%s", code);
    snprintf(c->field, sizeof(c->field), "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->message, sizeof(c->message), fmt, ap);
    va_end(ap);
    return -1;
}

int admin_fail_store(struct admin_call *c, int rc, const char *field, const char *what)
{
    if (rc == TDG_ENOTFOUND) {
        return admin_fail(c, "not_found", field, "%s: not found", what);
    }
    if (rc == TDG_EINVAL_INPUT) {
        return admin_fail(c, "bad_value", field, "%s: invalid", what);
    }
    LOG_WARN("admin", "%s: %s", what, tdg_strerror(rc));
    return admin_fail(c, "storage", "", "%s: %s", what, tdg_strerror(rc));
}

int admin_str(struct admin_call *c, const char *key, bool required, size_t max, const char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->req, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) {
        return required ? admin_fail(c, "missing_field", key, "%s is required", key) : 0;
    }
    if (!cJSON_IsString(v)) {
        return admin_fail(c, "wrong_type", key, "%s must be a string", key);
    }
    size_t len = strlen(v->valuestring);
    if (len == 0 && required) {
        return admin_fail(c, "empty", key, "%s must not be empty", key);
    }
    if (len > max) {
        return admin_fail(c, "too_long", key, "%s: %zu bytes max, got %zu", key, max, len);
    }
    *out = v->valuestring;
    return 0;
}

int admin_int(struct admin_call *c, const char *key, int64_t min, int64_t max, int64_t def,
              int64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->req, key);
    *out = def;
    if (!v || cJSON_IsNull(v)) {
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int64_t)v->valuedouble) {
        return admin_fail(c, "wrong_type", key, "%s must be an integer", key);
    }
    int64_t x = (int64_t)v->valuedouble;
    if (x < min || x > max) {
        return admin_fail(c, "out_of_range", key, "%s must be within %lld..%lld, got %lld", key,
                          (long long)min, (long long)max, (long long)x);
    }
    *out = x;
    return 0;
}

int admin_bool(struct admin_call *c, const char *key, bool def, bool *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->req, key);
    *out = def;
    if (!v || cJSON_IsNull(v)) {
        return 0;
    }
    if (!cJSON_IsBool(v)) {
        return admin_fail(c, "wrong_type", key, "%s must be true or false", key);
    }
    *out = cJSON_IsTrue(v);
    return 0;
}

int admin_user(struct admin_call *c, const char *key, bool required, const char **out)
{
    if (admin_str(c, key, required, STORE_USER_ID_MAX, out) < 0) {
        return -1;
    }
    if (*out && !proto_id_valid(*out)) {
        return admin_fail(c, "bad_value", key, "%s: 1-64 of A-Z a-z 0-9 . _ : -", key);
    }
    return 0;
}

void admin_add_time(cJSON *o, const char *key, int64_t ms)
{
    if (ms <= 0) {
        cJSON_AddNullToObject(o, key);
        return;
    }
    char buf[40];
    proto_format_rfc3339(ms, buf, sizeof(buf));
    cJSON_AddStringToObject(o, key, buf);
}

void admin_add_str(cJSON *o, const char *key, const char *v)
{
    cJSON_AddStringToObject(o, key, v ? v : "");
}

void admin_add_int(cJSON *o, const char *key, int64_t v)
{
    cJSON_AddNumberToObject(o, key, (double)v);
}

int admin_ping(struct admin_call *c)
{
    admin_add_time(c->out, "time", c->now_ms);
    admin_add_int(c->out, "proto", PROTO_VERSION);
    return 0;
}

/* --- dispatch ---------------------------------------------------------- */

static const struct admin_command *find_command(const char *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++) {
        if (strcmp(commands[i].name, name) == 0) {
            return &commands[i];
        }
    }
    return NULL;
}

/* Is key one of the comma-separated names in list? */
static bool field_known(const char *list, const char *key)
{
    size_t klen = strlen(key);
    const char *p = list;
    while (*p) {
        size_t len = strcspn(p, ",");
        if (len == klen && strncmp(p, key, len) == 0) {
            return true;
        }
        p += len;
        if (*p == ',') {
            p++;
        }
    }
    return false;
}

static char *error_json(const char *code, const char *field, const char *message, size_t *len)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *e = cJSON_CreateObject();
    if (!o || !e) {
        cJSON_Delete(o);
        cJSON_Delete(e);
        return NULL;
    }
    cJSON_AddFalseToObject(o, "ok");
    cJSON_AddStringToObject(e, "code", code);
    cJSON_AddStringToObject(e, "field", field);
    cJSON_AddStringToObject(e, "message", message);
    cJSON_AddItemToObject(o, "error", e);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    *len = s ? strlen(s) : 0;
    return s;
}

/* Run the command; returns the answer text (malloc'd) or NULL on ENOMEM. */
static char *run_command(admin_t *a, const struct admin_command *cmd, const char *client,
                         const void *payload, size_t len, struct pending *p, size_t *outlen)
{
    struct admin_call c = {
        .env = &a->env, .store = a->env.store, .client = client, .now_ms = clock_wall_ms()};
    cJSON *req = NULL;
    cJSON *out = cJSON_CreateObject();
    int rc = -1;
    if (!out) {
        return NULL;
    }
    cJSON_AddTrueToObject(out, "ok");
    c.out = out;
    if (len == 0) {
        req = cJSON_CreateObject();
    } else {
        req = cJSON_ParseWithLength(payload, len);
    }
    if (!req) {
        admin_fail(&c, "malformed_json", "", "the request is not valid JSON");
        goto done;
    }
    if (!cJSON_IsObject(req)) {
        admin_fail(&c, "not_object", "", "the request must be a JSON object");
        goto done;
    }
    for (const cJSON *f = req->child; f; f = f->next) {
        if (!f->string || !field_known(cmd->fields, f->string)) {
            admin_fail(&c, "unknown_field", f->string ? f->string : "",
                       "%s takes no field '%s' (fields: %s)", cmd->name, f->string ? f->string : "",
                       cmd->fields[0] ? cmd->fields : "none");
            goto done;
        }
    }
    c.req = req;
    if (cmd->writes) {
        int src = store_admin_begin(c.store);
        if (src < 0) {
            admin_fail_store(&c, src, "", cmd->name);
            goto done;
        }
        rc = cmd->run(&c);
        src = store_admin_end(c.store, rc == 0);
        if (src < 0 && rc == 0) {
            rc = admin_fail_store(&c, src, "", cmd->name);
        }
    } else {
        rc = cmd->run(&c);
    }
done:
    /* changed_user may point into the request: copy it first. */
    p->changed = rc == 0 && c.changed;
    snprintf(p->changed_user, sizeof(p->changed_user), "%s",
             rc == 0 && c.changed_user ? c.changed_user : "");
    cJSON_Delete(req);
    char *text;
    if (rc == 0) {
        text = cJSON_PrintUnformatted(out);
        *outlen = text ? strlen(text) : 0;
    } else {
        a->refused++;
        LOG_INFO("admin", "%s refused: %s field=%s %s", cmd->name, c.code,
                 c.field[0] ? c.field : "-", c.message);
        text = error_json(c.code, c.field, c.message, outlen);
    }
    cJSON_Delete(out);
    return text;
}

void admin_handle(admin_t *a, const struct mqtt_msg *m)
{
    const char *topic = m->topic;
    const void *payload = m->payload;
    size_t len = m->len;
    const char *rtopic = m->response_topic;
    const void *corr = m->corr;
    size_t corr_len = m->corr_len;
    const char *name = topic + sizeof(ADMIN_REQUEST_PREFIX) - 1;
    const size_t plen = sizeof(ADMIN_REPLY_PREFIX) - 1;
    /* Answer only under the reply prefix, on a topic without wildcards. */
    if (!rtopic || strncmp(rtopic, ADMIN_REPLY_PREFIX, plen) != 0 || !rtopic[plen] ||
        strpbrk(rtopic, "+#") || strlen(rtopic) >= sizeof(a->pending[0].topic) ||
        corr_len > sizeof(a->pending[0].corr)) {
        LOG_WARN("admin",
                 "request %s without a usable response topic (%s) or correlation data "
                 "(%u bytes): ignored",
                 name, rtopic ? rtopic : "none", (unsigned)corr_len);
        return;
    }
    if (a->npending >= ADMIN_PENDING_MAX) {
        if (!a->overflow_logged) {
            LOG_WARN("admin",
                     "more than %d admin requests in one iteration: later ones are not "
                     "answered (the client times out)",
                     ADMIN_PENDING_MAX);
            a->overflow_logged = true;
        }
        return;
    }
    struct pending *p = &a->pending[a->npending];
    memset(p, 0, sizeof(*p));
    snprintf(p->topic, sizeof(p->topic), "%s", rtopic);
    if (corr_len) {
        memcpy(p->corr, corr, corr_len);
    }
    p->corr_len = corr_len;
    a->handled++;
    const struct admin_command *cmd = find_command(name);
    if (!cmd) {
        char msg[200];
        snprintf(msg, sizeof(msg), "no admin command '%.64s'", name);
        p->payload = error_json("unknown_command", "command", msg, &p->len);
    } else if (len > ADMIN_REQUEST_MAX) {
        char msg[200];
        snprintf(msg, sizeof(msg), "request of %zu bytes; %d max", len, ADMIN_REQUEST_MAX);
        p->payload = error_json("too_large", "", msg, &p->len);
    } else {
        p->writes = cmd->writes;
        p->payload = run_command(a, cmd, rtopic + plen, payload, len, p, &p->len);
    }
    if (p->payload) {
        a->npending++;
    }
}

void admin_flush(admin_t *a, mqtt_t *mqtt, bool committed)
{
    for (size_t i = 0; i < a->npending; i++) {
        struct pending *p = &a->pending[i];
        if (p->writes && !committed) {
            free(p->payload);
            p->payload =
                error_json("storage", "", "the hub could not commit; nothing was changed", &p->len);
        } else if (p->changed && a->env.changed) {
            a->env.changed(a->env.changed_arg, p->changed_user[0] ? p->changed_user : NULL);
        }
        struct mqtt_pub_props props = {.corr = p->corr, .corr_len = p->corr_len};
        if (p->payload) {
            int rc = mqtt_publish(mqtt, p->topic, p->payload, p->len, 1, false, 0, &props, NULL);
            if (rc < 0) {
                LOG_WARN("admin", "answer to %s not sent: %s", p->topic, tdg_strerror(rc));
            }
        }
        free(p->payload);
        p->payload = NULL;
    }
    a->npending = 0;
    a->overflow_logged = false;
}
