/*
 * policy.c - the hub's preference rules (see policy.h, docs/hub-policy.md).
 *
 * A parsed document is plain arrays; nothing of the JSON tree is kept. The
 * fields the agent's snapshot shares, the rules both apply and the
 * quiet-hours arithmetic are proto/prefs.c, linked by agent and hub: they
 * must answer the same for the same preferences, and the snapshot carries
 * only what both understand. Here: caps, the channel order and fallback,
 * the planner, and the snapshot's user object.
 */
#include "policy.h"

#include "error.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pol_category {
    struct prefs_category pc; /* opt_out, channels_off: as the agent's */
    bool has_cap;
    int64_t cap_max, cap_window_ms;
};

struct policy_prefs {
    bool opt_out;
    struct pol_category *cats; /* categories and caps share entries */
    size_t ncats;
    struct prefs_quiet quiet;
    struct policy_step steps[POLICY_FALLBACK_MAX];
    size_t nsteps;
};

/* --- parsing ------------------------------------------------------------ */

/* The fields the agent's snapshot shares (opt_out, categories, quiet_hours)
 * are parsed by proto/prefs.c, strictly: unknown fields are refused. */

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

static struct pol_category *cat_get(policy_prefs_t *p, const char *name)
{
    for (size_t i = 0; i < p->ncats; i++) {
        if (strcmp(p->cats[i].pc.name, name) == 0) {
            return &p->cats[i];
        }
    }
    struct pol_category *c = &p->cats[p->ncats++];
    snprintf(c->pc.name, sizeof(c->pc.name), "%s", name);
    return c;
}

static int parse_cap(const cJSON *c, policy_prefs_t *p, struct policy_error *err)
{
    char path[sizeof(err->field)];
    prefs_path(path, "caps.", c->string, NULL);
    if (!prefs_category_valid(c->string)) {
        return prefs_fail(err, path, "category must be 1..%d of [a-z0-9_.-]", PROTO_CATEGORY_MAX);
    }
    if (!cJSON_IsObject(c)) {
        return prefs_fail(err, path, "must be an object {\"max\":N,\"window\":\"1d\"}, got %s",
                          proto_json_type(c));
    }
    static const char *const known[] = {"max", "window", NULL};
    int rc = prefs_check_keys(c, path, known, err);
    if (rc < 0) {
        return rc;
    }
    char field[sizeof(err->field)];
    const cJSON *max = cJSON_GetObjectItemCaseSensitive(c, "max");
    prefs_path(field, path, ".max", NULL);
    if (!max) {
        return prefs_fail(err, field, "missing");
    }
    if (!cJSON_IsNumber(max) || !(max->valuedouble >= 0 && max->valuedouble <= POLICY_CAP_MAX) ||
        (double)(int64_t)max->valuedouble != max->valuedouble) {
        return prefs_fail(err, field, "must be an integer 0..%d", POLICY_CAP_MAX);
    }
    const cJSON *win = cJSON_GetObjectItemCaseSensitive(c, "window");
    prefs_path(field, path, ".window", NULL);
    if (!win) {
        return prefs_fail(err, field, "missing");
    }
    int64_t wms = 0;
    if (!cJSON_IsString(win) || policy_parse_duration(win->valuestring, &wms) < 0 || wms <= 0 ||
        wms > POLICY_WINDOW_MAX_MS) {
        return prefs_fail(err, field, "must be a duration like \"1h\" or \"1d\", 1s..30d");
    }
    struct pol_category *cat = cat_get(p, c->string);
    cat->has_cap = true;
    cat->cap_max = (int64_t)max->valuedouble;
    cat->cap_window_ms = wms;
    return 0;
}

static int parse_fallback(const cJSON *f, policy_prefs_t *p, struct policy_error *err)
{
    if (!cJSON_IsArray(f)) {
        return prefs_fail(err, "fallback",
                          "must be an array of {\"channel\":..,\"after\":..}, got %s",
                          proto_json_type(f));
    }
    int n = cJSON_GetArraySize(f);
    if (n < 1 || n > POLICY_FALLBACK_MAX) {
        return prefs_fail(err, "fallback", "1..%d steps, got %d", POLICY_FALLBACK_MAX, n);
    }
    int i = 0;
    unsigned seen = 0;
    for (const cJSON *e = f->child; e; e = e->next, i++) {
        char path[sizeof(err->field)], field[sizeof(err->field)];
        char idx[16];
        snprintf(idx, sizeof(idx), "[%d]", i);
        prefs_path(path, "fallback", idx, NULL);
        if (!cJSON_IsObject(e)) {
            return prefs_fail(err, path, "must be an object, got %s", proto_json_type(e));
        }
        static const char *const known[] = {"channel", "after", NULL};
        int rc = prefs_check_keys(e, path, known, err);
        if (rc < 0) {
            return rc;
        }
        const cJSON *ch = cJSON_GetObjectItemCaseSensitive(e, "channel");
        prefs_path(field, path, ".channel", NULL);
        if (!ch) {
            return prefs_fail(err, field, "missing");
        }
        unsigned bit = cJSON_IsString(ch) ? prefs_channel_bit(ch->valuestring) : 0;
        if (bit != PROTO_CH_PUSH && bit != PROTO_CH_SMS && bit != PROTO_CH_EMAIL) {
            return prefs_fail(err, field,
                              "must be \"push\", \"sms\" or \"email\" (channels the hub "
                              "delivers)");
        }
        if (seen & bit) {
            return prefs_fail(err, field, "channel given twice");
        }
        seen |= bit;
        const cJSON *after = cJSON_GetObjectItemCaseSensitive(e, "after");
        prefs_path(field, path, ".after", NULL);
        int64_t ams = 0;
        if (after) {
            if (!cJSON_IsString(after) || policy_parse_duration(after->valuestring, &ams) < 0 ||
                ams > POLICY_AFTER_MAX_MS) {
                return prefs_fail(err, field, "must be a duration like \"10m\", 0s..7d");
            }
        } else if (i > 0) {
            return prefs_fail(err, field, "missing (time since the first attempt, e.g. \"10m\")");
        }
        if (i == 0 && ams != 0) {
            return prefs_fail(err, field, "the first step starts at once (leave after out)");
        }
        if (i > 0 && ams < p->steps[i - 1].after_ms) {
            return prefs_fail(err, field,
                              "must not be earlier than the step before (counted from "
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
        return prefs_fail(err, "", "preferences must be a JSON object, got %s",
                          proto_json_type(root));
    }
    const cJSON *tzj = cJSON_GetObjectItemCaseSensitive(root, "tz");
    if (tzj) {
        return prefs_fail(err, "tz",
                          "the time zone belongs to the user (directory), not to the "
                          "preferences");
    }
    static const char *const known[] = {"opt_out", "categories", "quiet_hours", "caps",
                                        "fallback", NULL};
    int rc = prefs_check_keys(root, "", known, err);
    if (rc < 0) {
        return rc;
    }
    if ((rc = prefs_get_bool(root, "opt_out", "", &p->opt_out, err)) < 0) {
        return rc;
    }
    const cJSON *cats = cJSON_GetObjectItemCaseSensitive(root, "categories");
    const cJSON *caps = cJSON_GetObjectItemCaseSensitive(root, "caps");
    if (cats && !cJSON_IsObject(cats)) {
        return prefs_fail(err, "categories", "must be an object, got %s", proto_json_type(cats));
    }
    if (caps && !cJSON_IsObject(caps)) {
        return prefs_fail(err, "caps", "must be an object, got %s", proto_json_type(caps));
    }
    int ncat = cats ? cJSON_GetArraySize(cats) : 0;
    int ncap = caps ? cJSON_GetArraySize(caps) : 0;
    if (ncat > POLICY_CATEGORIES_MAX) {
        return prefs_fail(err, "categories", "%d categories max, got %d", POLICY_CATEGORIES_MAX,
                          ncat);
    }
    if (ncap > POLICY_CATEGORIES_MAX) {
        return prefs_fail(err, "caps", "%d caps max, got %d", POLICY_CATEGORIES_MAX, ncap);
    }
    const char *dup;
    if (cats && (dup = prefs_dup_key(cats))) {
        char field[sizeof(err->field)];
        prefs_path(field, "categories.", dup, NULL);
        return prefs_fail(err, field, "category given twice");
    }
    if (caps && (dup = prefs_dup_key(caps))) {
        char field[sizeof(err->field)];
        prefs_path(field, "caps.", dup, NULL);
        return prefs_fail(err, field, "category given twice");
    }
    if (ncat + ncap > 0) {
        p->cats = calloc((size_t)(ncat + ncap), sizeof(*p->cats));
        if (!p->cats) {
            return -ENOMEM;
        }
    }
    for (const cJSON *c = cats ? cats->child : NULL; c; c = c->next) {
        char path[sizeof(err->field)];
        prefs_path(path, "categories.", c->string, NULL);
        if ((rc = prefs_parse_category(c, path, true, &cat_get(p, c->string)->pc, err)) < 0) {
            return rc;
        }
    }
    for (const cJSON *c = caps ? caps->child : NULL; c; c = c->next) {
        if ((rc = parse_cap(c, p, err)) < 0) {
            return rc;
        }
    }
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(root, "quiet_hours");
    if (q && (rc = prefs_parse_quiet(q, "quiet_hours", true, &p->quiet, err)) < 0) {
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
        prefs_fail(err, "", "preferences are %zu bytes, %d max", len, POLICY_PREFS_MAX);
        return TDG_ETOOBIG;
    }
    cJSON *root = NULL;
    int rc = prefs_json_parse(buf, len, &root, err);
    if (rc < 0) {
        return rc;
    }
    policy_prefs_t *p = calloc(1, sizeof(*p));
    if (!p) {
        cJSON_Delete(root);
        return -ENOMEM;
    }
    rc = parse_tree(root, p, err);
    cJSON_Delete(root);
    if (rc < 0) {
        policy_prefs_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

/* --- deciding ----------------------------------------------------------- */

static const struct pol_category *cat_find(const policy_prefs_t *p, const char *name)
{
    if (!p || !name) {
        return NULL;
    }
    for (size_t i = 0; i < p->ncats; i++) {
        if (strcmp(p->cats[i].pc.name, name) == 0) {
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
    if (!p) {
        memset(d, 0, sizeof(*d));
        prefs_set_rule(d, POLICY_ALLOW, "no_preference", NULL);
        return 0;
    }
    const struct pol_category *c = cat_find(p, n->category); /* exact match only */
    prefs_decide(p->opt_out, c ? &c->pc : NULL, &p->quiet, tz, n, channel, now_ms, d);
    /* A cap counts what was let through; a critical notification inside
     * quiet hours is counted and capped like any other. */
    if (d->action == POLICY_ALLOW && c && c->has_cap && cap_count >= c->cap_max) {
        d->critical_bypass = false;
        prefs_set_rule(d, POLICY_SUPPRESS, "cap", c->pc.name);
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
            with += p->cats[i].pc.opt_out || p->cats[i].pc.channels_off;
        }
        cJSON *cats = with && ok ? cJSON_AddObjectToObject(u, "categories") : NULL;
        ok = ok && (with == 0 || cats);
        for (size_t i = 0; ok && cats && i < p->ncats; i++) {
            ok = prefs_category_to_json(&p->cats[i].pc, cats) == 0; /* a cap alone: hub-only */
        }
        ok = ok && prefs_quiet_to_json(&p->quiet, u) == 0;
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
    return prefs_deliver_at(n, tz);
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
