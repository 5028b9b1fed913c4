/*
 * admin_int.h - private to hub/admin*.c: one admin call and the helpers
 * every command handler uses to read its request and answer.
 *
 * A handler reads fields with admin_str/admin_int/admin_bool (each names the
 * field when it refuses it), adds its answer to c->out, and returns 0, or
 * returns admin_fail(...) (-1) with a code, the field and a message. The
 * dispatcher has already refused fields the command does not know.
 */
#ifndef TIDINGS_ADMIN_INT_H
#define TIDINGS_ADMIN_INT_H

#include "admin.h"

#include <cjson/cJSON.h>
#include <stdint.h>

struct admin_call {
    const struct admin_env *env;
    store_t *store;
    const cJSON *req;   /* the request object */
    cJSON *out;         /* the answer: "ok" is added by the dispatcher */
    const char *client; /* the requester's reply-topic tail, for the audit trail */
    int64_t now_ms;
    const char *changed_user; /* set by a handler: call env->changed after commit */
    bool changed;
    char code[32], field[64], message[256];
};

struct admin_command {
    const char *name;   /* request topic suffix: "user/add" */
    const char *fields; /* accepted request fields, comma-separated */
    bool writes;        /* in a savepoint; answered "storage" if the commit fails */
    int (*run)(struct admin_call *c);
};

/* Refuse the request: code ("missing_field", "bad_value", "not_found",
 * ...), the field ("" when not about one), a printf message. Returns -1. */
int admin_fail(struct admin_call *c, const char *code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* A store error as an answer: TDG_ENOTFOUND -> not_found (naming field),
 * TDG_EINVAL_INPUT -> bad_value, else "storage". Returns -1. */
int admin_fail_store(struct admin_call *c, int rc, const char *field, const char *what);

/* A string field of at most max bytes (non-empty). *out NULL when absent and
 * not required. 0 or -1 (answered). */
int admin_str(struct admin_call *c, const char *key, bool required, size_t max, const char **out);
/* An integer field within [min, max]; def when absent. */
int admin_int(struct admin_call *c, const char *key, int64_t min, int64_t max, int64_t def,
              int64_t *out);
int admin_bool(struct admin_call *c, const char *key, bool def, bool *out);
/* A user id field (proto id rules, at most 64 bytes). */
int admin_user(struct admin_call *c, const char *key, bool required, const char **out);

/* Add a number/time/string to an object (NULL strings become ""). */
void admin_add_time(cJSON *o, const char *key, int64_t ms); /* RFC 3339, or null when 0 */
void admin_add_str(cJSON *o, const char *key, const char *v);
void admin_add_int(cJSON *o, const char *key, int64_t v);

/* Handlers, by file. */
int admin_send(struct admin_call *c); /* admin_notify.c */
int admin_status(struct admin_call *c);
int admin_log(struct admin_call *c);
int admin_stats(struct admin_call *c);
int admin_dlq_list(struct admin_call *c);
int admin_dlq_retry(struct admin_call *c);
int admin_ping(struct admin_call *c);

int admin_user_add(struct admin_call *c); /* admin_dir.c */
int admin_user_set(struct admin_call *c);
int admin_user_show(struct admin_call *c);
int admin_user_list(struct admin_call *c);
int admin_user_remove(struct admin_call *c);
int admin_user_export(struct admin_call *c);
int admin_device_add(struct admin_call *c);
int admin_device_list(struct admin_call *c);
int admin_device_remove(struct admin_call *c);
int admin_device_enable(struct admin_call *c);
int admin_pref_show(struct admin_call *c);
int admin_pref_set(struct admin_call *c);
int admin_agent_add(struct admin_call *c);
int admin_agent_list(struct admin_call *c);
int admin_agent_allow(struct admin_call *c);
int admin_agent_revoke(struct admin_call *c);
int admin_group_add(struct admin_call *c);
int admin_group_remove(struct admin_call *c);
int admin_group_list(struct admin_call *c);
int admin_group_member_add(struct admin_call *c);
int admin_group_member_remove(struct admin_call *c);

#endif
