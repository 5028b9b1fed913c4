/* The v1 message check of fake-fcm; see fcm_check.h. */
#include "fcm_check.h"

#include <cjson/cJSON.h>

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static const char *const top_fields[] = {"message", "validate_only", NULL};
static const char *const message_fields[] = {
    "name",        "data",  "notification", "android",   "webpush", "apns",
    "fcm_options", "token", "topic",        "condition", NULL};
static const char *const notification_fields[] = {"title", "body", "image", NULL};
static const char *const android_fields[] = {
    "collapse_key", "priority",       "ttl", "restricted_package_name", "data", "notification",
    "fcm_options",  "direct_boot_ok", NULL};

static int bad(fcm_check_result *r, const char *error, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int bad(fcm_check_result *r, const char *error, const char *field, const char *fmt, ...)
{
    va_list ap;

    r->status = 400;
    snprintf(r->error, sizeof(r->error), "%s", error);
    snprintf(r->field, sizeof(r->field), "%s", field);
    va_start(ap, fmt);
    vsnprintf(r->message, sizeof(r->message), fmt, ap);
    va_end(ap);
    return 400;
}

static bool known(const char *name, const char *const *list)
{
    for (; *list; list++) {
        if (strcmp(name, *list) == 0) {
            return true;
        }
    }
    return false;
}

/* The first member of o whose name is not in list, or NULL. */
static const cJSON *unknown_member(const cJSON *o, const char *const *list)
{
    const cJSON *m;

    cJSON_ArrayForEach(m, o)
    {
        if (!m->string || !known(m->string, list)) {
            return m;
        }
    }
    return NULL;
}

/* FCM refuses these data keys ("Invalid data payload key"). */
static bool reserved_key(const char *k)
{
    return strcmp(k, "from") == 0 || strcmp(k, "notification") == 0 ||
           strcmp(k, "message_type") == 0 || strncasecmp(k, "google", 6) == 0 ||
           strncasecmp(k, "gcm", 3) == 0;
}

/* google.protobuf.Duration in JSON: "3.5s", "3600s". */
static bool duration_ok(const char *s, double *secs)
{
    const char *p = s;
    double v = 0;
    int frac = 0;

    if (*p < '0' || *p > '9') {
        return false;
    }
    for (; *p >= '0' && *p <= '9'; p++) {
        v = v * 10 + (*p - '0');
    }
    if (*p == '.') {
        double scale = 0.1;
        for (p++; *p >= '0' && *p <= '9'; p++, frac++) {
            v += (*p - '0') * scale;
            scale /= 10;
        }
        if (frac == 0 || frac > 9) {
            return false;
        }
    }
    *secs = v;
    return p[0] == 's' && p[1] == '\0';
}

static char *print_value(const cJSON *v, char *buf, size_t cap)
{
    if (!cJSON_PrintPreallocated((cJSON *)v, buf, (int)cap, 0)) {
        snprintf(buf, cap, "...");
    }
    return buf;
}

int fcm_check_message(const char *body, size_t len, fcm_check_result *r, char *tok, size_t cap)
{
    cJSON *root = cJSON_ParseWithLength(body, len);
    const cJSON *msg, *m, *target = NULL, *no, *data, *android, *vo;
    size_t payload = 0;
    int ntargets = 0;
    int idx = 0;
    char vbuf[64];

    memset(r, 0, sizeof(*r));
    r->status = 200;
    if (cap > 0) {
        tok[0] = '\0';
    }
    if (!cJSON_IsObject(root)) {
        bad(r, "", "", "Invalid JSON payload received. Unexpected token.");
        goto out;
    }
    if ((m = unknown_member(root, top_fields)) != NULL) {
        bad(r, "", "", "Invalid JSON payload received. Unknown name \"%.64s\": Cannot find field.",
            m->string ? m->string : "");
        goto out;
    }
    vo = cJSON_GetObjectItemCaseSensitive(root, "validate_only");
    if (vo != NULL && !cJSON_IsBool(vo)) {
        bad(r, "", "validate_only", "Invalid value at 'validate_only' (TYPE_BOOL)");
        goto out;
    }
    r->validate_only = cJSON_IsTrue(vo);
    msg = cJSON_GetObjectItemCaseSensitive(root, "message");
    if (!cJSON_IsObject(msg)) {
        bad(r, "INVALID_ARGUMENT", "message", "Request contains an invalid argument.");
        goto out;
    }
    if ((m = unknown_member(msg, message_fields)) != NULL) {
        bad(r, "", "",
            "Invalid JSON payload received. Unknown name \"%.64s\" at 'message': "
            "Cannot find field.",
            m->string ? m->string : "");
        goto out;
    }
    cJSON_ArrayForEach(m, msg)
    {
        if (strcmp(m->string, "token") == 0 || strcmp(m->string, "topic") == 0 ||
            strcmp(m->string, "condition") == 0) {
            ntargets++;
            if (ntargets == 2) {
                bad(r, "", "",
                    "Invalid value at 'message' (oneof), oneof field 'target' is "
                    "already set. Cannot set '%s'",
                    m->string);
                goto out;
            }
            target = m;
        }
    }
    if (target == NULL) {
        bad(r, "INVALID_ARGUMENT", "message", "Recipient of the message is not set.");
        goto out;
    }
    if (!cJSON_IsString(target)) {
        bad(r, "", "", "Invalid value at 'message.%s' (TYPE_STRING)", target->string);
        goto out;
    }
    if (strcmp(target->string, "token") == 0) {
        const char *t = target->valuestring;
        if (!fcm_reg_token_valid(t, strlen(t))) {
            bad(r, "INVALID_ARGUMENT", "message.token",
                "The registration token is not a valid FCM registration token");
            goto out;
        }
        if (cap > 0) {
            snprintf(tok, cap, "%s", t);
        }
    }
    no = cJSON_GetObjectItemCaseSensitive(msg, "notification");
    if (no != NULL) {
        if (!cJSON_IsObject(no)) {
            bad(r, "", "",
                "Invalid value at 'message.notification' (type.googleapis.com/"
                "google.firebase.fcm.v1.Notification)");
            goto out;
        }
        if ((m = unknown_member(no, notification_fields)) != NULL) {
            bad(r, "", "",
                "Invalid JSON payload received. Unknown name \"%.64s\" at "
                "'message.notification': Cannot find field.",
                m->string ? m->string : "");
            goto out;
        }
        cJSON_ArrayForEach(m, no)
        {
            if (!cJSON_IsString(m)) {
                bad(r, "", "", "Invalid value at 'message.notification.%s' (TYPE_STRING), %s",
                    m->string, print_value(m, vbuf, sizeof(vbuf)));
                goto out;
            }
            if (strcmp(m->string, "image") != 0) {
                payload += strlen(m->valuestring);
            }
        }
    }
    data = cJSON_GetObjectItemCaseSensitive(msg, "data");
    if (data != NULL) {
        if (!cJSON_IsObject(data)) {
            bad(r, "", "",
                "Invalid value at 'message.data' (type.googleapis.com/"
                "google.firebase.fcm.v1.Message.DataEntry)");
            goto out;
        }
        cJSON_ArrayForEach(m, data)
        {
            if (!cJSON_IsString(m)) {
                bad(r, "", "", "Invalid value at 'message.data[%d].value' (TYPE_STRING), %s", idx,
                    print_value(m, vbuf, sizeof(vbuf)));
                goto out;
            }
            if (reserved_key(m->string)) {
                bad(r, "INVALID_ARGUMENT", "message.data", "Invalid data payload key: %.64s",
                    m->string);
                goto out;
            }
            payload += strlen(m->string) + strlen(m->valuestring);
            idx++;
        }
    }
    android = cJSON_GetObjectItemCaseSensitive(msg, "android");
    if (android != NULL) {
        const cJSON *prio, *ttl, *ck;
        double secs = 0;
        if (!cJSON_IsObject(android)) {
            bad(r, "", "",
                "Invalid value at 'message.android' (type.googleapis.com/"
                "google.firebase.fcm.v1.AndroidConfig)");
            goto out;
        }
        if ((m = unknown_member(android, android_fields)) != NULL) {
            bad(r, "", "",
                "Invalid JSON payload received. Unknown name \"%.64s\" at "
                "'message.android': Cannot find field.",
                m->string ? m->string : "");
            goto out;
        }
        prio = cJSON_GetObjectItemCaseSensitive(android, "priority");
        if (prio != NULL && (!cJSON_IsString(prio) || (strcmp(prio->valuestring, "NORMAL") != 0 &&
                                                       strcmp(prio->valuestring, "HIGH") != 0))) {
            bad(r, "", "",
                "Invalid value at 'message.android.priority' (type.googleapis.com/"
                "google.firebase.fcm.v1.AndroidMessagePriority), %s",
                print_value(prio, vbuf, sizeof(vbuf)));
            goto out;
        }
        ttl = cJSON_GetObjectItemCaseSensitive(android, "ttl");
        if (ttl != NULL) {
            if (!cJSON_IsString(ttl) || !duration_ok(ttl->valuestring, &secs)) {
                bad(r, "", "",
                    "Invalid value at 'message.android.ttl' (type.googleapis.com/"
                    "google.protobuf.Duration), %s",
                    print_value(ttl, vbuf, sizeof(vbuf)));
                goto out;
            }
            if (secs > FCM_CHECK_TTL_MAX_S) {
                bad(r, "INVALID_ARGUMENT", "message.android.ttl",
                    "The TTL of the message is too long (at most 2419200s).");
                goto out;
            }
        }
        ck = cJSON_GetObjectItemCaseSensitive(android, "collapse_key");
        if (ck != NULL && !cJSON_IsString(ck)) {
            bad(r, "", "", "Invalid value at 'message.android.collapse_key' (TYPE_STRING)");
            goto out;
        }
    }
    if (payload > FCM_CHECK_PAYLOAD_MAX) {
        bad(r, "INVALID_ARGUMENT", "message", "Android message is too big");
        goto out;
    }
out:
    cJSON_Delete(root);
    return r->status;
}
