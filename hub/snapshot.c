/* snapshot.c - the agents' preference snapshots (see snapshot.h). */
#include "snapshot.h"

#include "error.h"
#include "log.h"
#include "policy.h"
#include "proto.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct agent_entry {
    char id[PROTO_AGENT_MAX + 1];
    bool published; /* since the last connect */
};

#define SNAPSHOT_PENDING_MAX 32 /* changed users remembered; beyond: every agent */

struct snapshot {
    store_t *store;
    struct agent_entry *agents;
    size_t n;
    bool full_logged;
    /* Changes waiting for the commit (snapshot_changed -> _prepare -> _flush). */
    char (*pending)[STORE_USER_ID_MAX + 1];
    size_t npending;
    bool pending_all; /* a NULL user, or more than SNAPSHOT_PENDING_MAX */
    bool bumped;      /* the revision bump is in the open transaction */
};

snapshot_t *snapshot_create(store_t *store)
{
    snapshot_t *sn = calloc(1, sizeof(*sn));
    if (!sn) {
        return NULL;
    }
    sn->agents = calloc(SNAPSHOT_AGENTS_MAX, sizeof(*sn->agents));
    sn->pending = calloc(SNAPSHOT_PENDING_MAX, sizeof(*sn->pending));
    if (!sn->agents || !sn->pending) {
        free(sn->agents);
        free(sn->pending);
        free(sn);
        return NULL;
    }
    sn->store = store;
    return sn;
}

void snapshot_destroy(snapshot_t *sn)
{
    if (sn) {
        free(sn->agents);
        free(sn->pending);
        free(sn);
    }
}

/* Growable output with a hard ceiling. */
struct out {
    char *buf;
    size_t len, cap;
    int err;
};

static void out_add(struct out *o, const char *s, size_t l)
{
    if (o->err) {
        return;
    }
    if (o->len + l + 1 > SNAPSHOT_BYTES_MAX) {
        o->err = TDG_ETOOBIG;
        return;
    }
    if (o->len + l + 1 > o->cap) {
        size_t cap = o->cap ? o->cap : 4096;
        while (cap < o->len + l + 1) {
            cap *= 2;
        }
        char *b = realloc(o->buf, cap);
        if (!b) {
            o->err = -ENOMEM;
            return;
        }
        o->buf = b;
        o->cap = cap;
    }
    memcpy(o->buf + o->len, s, l);
    o->len += l;
    o->buf[o->len] = '\0';
}

struct names {
    char (*ids)[STORE_USER_ID_MAX + 1];
    size_t n;
    bool over;
};

/* The agent's rule for user ids in a snapshot (docs/policy.md): 1..122 of
 * [A-Za-z0-9._@+-]. The directory also allows ':'; such a user is left
 * out of snapshots (one bad id would make the agent refuse them all). */
static bool agent_user_id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > POLICY_USER_ID_MAX) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '@' || c == '+' || c == '-')) {
            return false;
        }
    }
    return true;
}

static void add_name(void *arg, const char *name)
{
    struct names *u = arg;
    if (!agent_user_id_ok(name)) {
        LOG_WARN("snapshot", "user '%s' left out of agent snapshots: agents take ids of "
                             "[A-Za-z0-9._@+-] only", name);
        return;
    }
    if (u->n >= SNAPSHOT_USERS_MAX) {
        u->over = true;
        return;
    }
    snprintf(u->ids[u->n++], sizeof(u->ids[0]), "%s", name);
}

int snapshot_build(store_t *store, const char *agent, int64_t version, char **out, size_t *len)
{
    *out = NULL;
    struct names u = {.ids = calloc(SNAPSHOT_USERS_MAX, sizeof(*u.ids))};
    char *pref = malloc(STORE_PREF_MAX + 1);
    char *obj = malloc(STORE_PREF_MAX + 256);
    if (!u.ids || !pref || !obj) {
        free(u.ids);
        free(pref);
        free(obj);
        return -ENOMEM;
    }
    int rc = store_agent_users(store, agent, add_name, &u);
    struct out o = {0};
    if (rc >= 0) {
        if (u.over) {
            LOG_WARN("snapshot", "agent %s: more than %d users bound; the snapshot holds the "
                                 "first %d",
                     agent, SNAPSHOT_USERS_MAX, SNAPSHOT_USERS_MAX);
        }
        char head[64];
        int hl = snprintf(head, sizeof(head), "{\"v\":1,\"version\":%lld,\"users\":{",
                          (long long)version);
        out_add(&o, head, (size_t)hl);
        for (size_t i = 0; i < u.n && !o.err; i++) {
            char tz[TZ_NAME_MAX + 1];
            int f = store_pref_load(store, u.ids[i], pref, STORE_PREF_MAX + 1, tz, sizeof(tz));
            if (f <= 0) {
                continue; /* removed meanwhile, or a store error (logged) */
            }
            policy_prefs_t *p = NULL;
            struct policy_error e;
            if (pref[0] && policy_prefs_parse(pref, strlen(pref), &p, &e) < 0) {
                LOG_WARN("snapshot", "user %s: stored preferences refused (%s: %s)", u.ids[i],
                         e.field, e.detail);
            }
            size_t ol = 0;
            int r = policy_snapshot_user(p, tz, obj, STORE_PREF_MAX + 256, &ol);
            policy_prefs_free(p);
            if (r < 0) {
                o.err = r;
                break;
            }
            /* ids are [A-Za-z0-9._:-]: nothing to escape. */
            out_add(&o, i ? ",\"" : "\"", i ? 2 : 1);
            out_add(&o, u.ids[i], strlen(u.ids[i]));
            out_add(&o, "\":", 2);
            out_add(&o, obj, ol);
        }
        out_add(&o, "}}", 2);
        rc = o.err;
    }
    free(u.ids);
    free(pref);
    free(obj);
    if (rc < 0) {
        free(o.buf);
        return rc;
    }
    *out = o.buf;
    *len = o.len;
    return 0;
}

static void publish(snapshot_t *sn, mqtt_t *mqtt, struct agent_entry *a)
{
    int64_t rev = 0;
    if (store_policy_revision(sn->store, &rev) < 0) {
        return;
    }
    char *json = NULL;
    size_t len = 0;
    int rc = snapshot_build(sn->store, a->id, rev, &json, &len);
    if (rc < 0) {
        LOG_ERROR("snapshot", "agent %s: cannot build the policy snapshot: %s", a->id,
                  tdg_strerror(rc));
        return;
    }
    char topic[160];
    if (proto_topic(topic, sizeof(topic), PROTO_TOPIC_POLICY, a->id) == 0 &&
        mqtt_publish(mqtt, topic, json, len, 1, true, 0, NULL, NULL) == 0) {
        a->published = true;
        LOG_INFO("snapshot", "agent %s: policy snapshot version=%lld published (%zu bytes)",
                 a->id, (long long)rev, len);
    }
    free(json);
}

static struct agent_entry *agent_get(snapshot_t *sn, const char *agent)
{
    if (!proto_agent_id_valid(agent)) {
        return NULL; /* "*" bindings: no agent of that name */
    }
    for (size_t i = 0; i < sn->n; i++) {
        if (strcmp(sn->agents[i].id, agent) == 0) {
            return &sn->agents[i];
        }
    }
    if (sn->n >= SNAPSHOT_AGENTS_MAX) {
        if (!sn->full_logged) {
            LOG_WARN("snapshot", "more than %d agents: later ones get snapshots only when "
                                 "their status is seen", SNAPSHOT_AGENTS_MAX);
            sn->full_logged = true;
        }
        return NULL;
    }
    struct agent_entry *a = &sn->agents[sn->n++];
    snprintf(a->id, sizeof(a->id), "%s", agent);
    a->published = false;
    return a;
}

static void add_bound(void *arg, const struct store_binding *b)
{
    agent_get(arg, b->agent);
}

static void learn_bound(snapshot_t *sn)
{
    int rc = store_binding_list(sn->store, NULL, add_bound, sn);
    if (rc < 0) {
        LOG_ERROR("snapshot", "cannot list bindings: %s", tdg_strerror(rc));
    }
}

void snapshot_publish_all(snapshot_t *sn, mqtt_t *mqtt)
{
    learn_bound(sn);
    for (size_t i = 0; i < sn->n; i++) {
        sn->agents[i].published = false;
    }
    for (size_t i = 0; i < sn->n; i++) {
        publish(sn, mqtt, &sn->agents[i]);
    }
}

void snapshot_agent_seen(snapshot_t *sn, mqtt_t *mqtt, const char *agent)
{
    struct agent_entry *a = agent_get(sn, agent);
    if (a && !a->published) {
        publish(sn, mqtt, a);
    } else if (!a && proto_agent_id_valid(agent)) {
        struct agent_entry tmp = {0};
        snprintf(tmp.id, sizeof(tmp.id), "%s", agent);
        publish(sn, mqtt, &tmp);
    }
}

struct has_pending {
    const snapshot_t *sn;
    bool found;
};

/* store_agent_users callback: is this user one of the changed ones? */
static void check_pending(void *arg, const char *name)
{
    struct has_pending *h = arg;
    for (size_t k = 0; k < h->sn->npending && !h->found; k++) {
        h->found = strcmp(h->sn->pending[k], name) == 0;
    }
}

void snapshot_changed(snapshot_t *sn, const char *user_id)
{
    if (!user_id || sn->npending >= SNAPSHOT_PENDING_MAX) {
        sn->pending_all = true;
        return;
    }
    for (size_t i = 0; i < sn->npending; i++) {
        if (strcmp(sn->pending[i], user_id) == 0) {
            return;
        }
    }
    snprintf(sn->pending[sn->npending++], sizeof(sn->pending[0]), "%s", user_id);
}

bool snapshot_pending(const snapshot_t *sn)
{
    return sn->pending_all || sn->npending > 0;
}

void snapshot_prepare(snapshot_t *sn)
{
    if (!snapshot_pending(sn) || sn->bumped) {
        return;
    }
    int64_t rev;
    int rc = store_policy_revision_bump(sn->store, &rev);
    if (rc < 0) {
        LOG_ERROR("snapshot", "cannot bump the policy revision: %s", tdg_strerror(rc));
        return;
    }
    sn->bumped = true;
}

void snapshot_flush(snapshot_t *sn, mqtt_t *mqtt, bool committed)
{
    if (!sn->bumped) {
        return;
    }
    sn->bumped = false;
    if (!committed) {
        return; /* the bump was rolled back: bumped again before the next commit */
    }
    learn_bound(sn);
    for (size_t i = 0; i < sn->n; i++) {
        struct has_pending h = {sn, sn->pending_all};
        if (!h.found && store_agent_users(sn->store, sn->agents[i].id, check_pending, &h) < 0) {
            continue;
        }
        if (h.found) {
            publish(sn, mqtt, &sn->agents[i]);
        }
    }
    sn->npending = 0;
    sn->pending_all = false;
}
