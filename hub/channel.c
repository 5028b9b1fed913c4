/* channel.c - what every channel shares (see channel.h). */
#include "channel.h"

#include <errno.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <dirent.h>
#include <stdlib.h>

#include "error.h"
#include "http.h"
#include "log.h"
#include "tz.h"

const char *channel_result_name(enum channel_result r)
{
    switch (r) {
    case CHANNEL_OK:
        return "ok";
    case CHANNEL_RETRY:
        return "retry";
    case CHANNEL_DROP:
        return "drop";
    }
    return "unknown";
}

int channel_add_header(struct channel_request *req, const char *fmt, ...)
{
    if (req->nheaders >= CHANNEL_MAX_HEADERS) {
        return -ENOSPC;
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(req->headers[req->nheaders], sizeof(req->headers[0]), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(req->headers[0])) {
        return -ENOSPC;
    }
    req->nheaders++;
    return 0;
}

int channel_add_header_str(struct channel_request *req, const char *prefix, const char *value)
{
    if (req->nheaders >= CHANNEL_MAX_HEADERS) {
        return -ENOSPC;
    }
    char *h = req->headers[req->nheaders];
    size_t cap = sizeof(req->headers[0]);
    size_t pn = strnlen(prefix, cap);
    size_t vn = strnlen(value, cap);
    if (pn + vn >= cap) {
        return -ENOSPC;
    }
    memcpy(h, prefix, pn);
    memcpy(h + pn, value, vn);
    h[pn + vn] = '\0';
    req->nheaders++;
    return 0;
}

int channel_add_header_int(struct channel_request *req, const char *prefix, int64_t v)
{
    char d[PROTO_I64_BUF];
    return channel_add_header_str(req, prefix, proto_i64_str(v, d));
}

void channel_request_reset(struct channel_request *req)
{
    req->nheaders = 0;
    req->authorization[0] = '\0';
    req->body_len = 0;
    req->body[0] = '\0';
    req->url[0] = '\0';
}

bool channel_header_value_ok(const char *v, size_t max)
{
    size_t n = 0;
    for (; v[n]; n++) {
        unsigned char c = (unsigned char)v[n];
        if (c < 0x20 || c == 0x7f || n >= max) {
            return false;
        }
    }
    return n > 0;
}

bool channel_https_url_ok(const char *u)
{
    return strncmp(u, "https://", 8) == 0 && u[8] != '\0' && channel_header_value_ok(u, 255);
}

void channel_trim_slash(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == '/') {
        s[--n] = '\0';
    }
}

int channel_drop(struct channel_outcome *out, const char *reason, int device_action, int err)
{
    out->result = CHANNEL_DROP;
    snprintf(out->reason, sizeof(out->reason), "%s", reason);
    out->device_action = device_action;
    return err;
}

/* --- Retry-After ------------------------------------------------------- */

static int month_index(const char *p)
{
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    for (int i = 0; i < 12; i++) {
        if (strncmp(p, months + 3 * i, 3) == 0) {
            return i + 1;
        }
    }
    return 0;
}

/* Reads exactly n digits at *p. */
static bool digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9') {
            return false;
        }
        v = v * 10 + (c - '0');
    }
    *p += n;
    *out = v;
    return true;
}

static bool lit(const char **p, const char *s)
{
    size_t n = strlen(s);
    if (strncmp(*p, s, n) != 0) {
        return false;
    }
    *p += n;
    return true;
}

static bool hms(const char **p, int *h, int *mi, int *s)
{
    return digits(p, 2, h) && lit(p, ":") && digits(p, 2, mi) && lit(p, ":") && digits(p, 2, s) &&
           *h < 24 && *mi < 60 && *s < 61;
}

int64_t channel_parse_http_date(const char *v)
{
    if (!v) {
        return -1;
    }
    const char *p = v;
    int d = 0, mon = 0, y = 0, h = 0, mi = 0, s = 0;
    const char *comma = strchr(v, ',');
    if (comma && comma - v == 3) {
        /* IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT */
        p = comma + 1;
        if (!lit(&p, " ") || !digits(&p, 2, &d) || !lit(&p, " ") || !(mon = month_index(p))) {
            return -1;
        }
        p += 3;
        if (!lit(&p, " ") || !digits(&p, 4, &y) || !lit(&p, " ") || !hms(&p, &h, &mi, &s) ||
            !lit(&p, " GMT") || *p) {
            return -1;
        }
    } else if (comma) {
        /* RFC 850: Sunday, 06-Nov-94 08:49:37 GMT */
        p = comma + 1;
        if (!lit(&p, " ") || !digits(&p, 2, &d) || !lit(&p, "-") || !(mon = month_index(p))) {
            return -1;
        }
        p += 3;
        if (!lit(&p, "-") || !digits(&p, 2, &y) || !lit(&p, " ") || !hms(&p, &h, &mi, &s) ||
            !lit(&p, " GMT") || *p) {
            return -1;
        }
        y += y < 70 ? 2000 : 1900;
    } else {
        /* asctime: Sun Nov  6 08:49:37 1994 */
        if (strlen(p) < 4 || p[3] != ' ') {
            return -1;
        }
        p += 4;
        if (!(mon = month_index(p))) {
            return -1;
        }
        p += 3;
        if (!lit(&p, " ")) {
            return -1;
        }
        if (*p == ' ') {
            p++;
            if (!digits(&p, 1, &d)) {
                return -1;
            }
        } else if (!digits(&p, 2, &d)) {
            return -1;
        }
        if (!lit(&p, " ") || !hms(&p, &h, &mi, &s) || !lit(&p, " ") || !digits(&p, 4, &y) || *p) {
            return -1;
        }
    }
    if (d < 1 || d > tz_days_in_month(y, mon)) {
        return -1;
    }
    return tz_days_from_civil(y, mon, d) * 86400 + h * 3600 + mi * 60 + s;
}

uint64_t channel_retry_after_ms(const char *v, int64_t now_ms)
{
    if (!v || !*v) {
        return 0;
    }
    if (*v >= '0' && *v <= '9') {
        uint64_t sec = 0;
        const char *p = v;
        for (; *p >= '0' && *p <= '9'; p++) {
            sec = sec * 10 + (uint64_t)(*p - '0');
            if (sec > CHANNEL_RETRY_AFTER_MAX_S) {
                sec = CHANNEL_RETRY_AFTER_MAX_S; /* also keeps the sum from overflowing */
            }
        }
        return *p ? 0 : sec * 1000;
    }
    int64_t at = channel_parse_http_date(v);
    if (at < 0) {
        return 0;
    }
    int64_t delta = at * 1000 - now_ms;
    if (delta <= 0) {
        return 0;
    }
    return delta > (int64_t)CHANNEL_RETRY_AFTER_MAX_S * 1000
               ? (uint64_t)CHANNEL_RETRY_AFTER_MAX_S * 1000
               : (uint64_t)delta;
}

void channel_retry(struct channel_outcome *out, uint64_t after_ms, const char *fmt, ...)
{
    memset(out, 0, sizeof(*out));
    out->result = CHANNEL_RETRY;
    out->retry_after_ms = after_ms;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->reason, sizeof(out->reason), fmt, ap);
    va_end(ap);
}

void channel_no_answer(struct channel_outcome *out, const struct http_response *resp)
{
    channel_retry(out, 0, "%s",
                  resp->error_text && resp->error_text[0] ? resp->error_text
                                                          : tdg_strerror(resp->error));
    out->status = resp->status;
}

int64_t channel_wall_clock(void *arg)
{
    (void)arg;
    return clock_wall_ms();
}

/* --- calls in flight ----------------------------------------------------------- */

void channel_calls_init(struct channel_calls *cs, loop_t *loop, uint64_t *sent, uint64_t *ok,
                        uint64_t *retry, uint64_t *drop, void (*release)(struct channel_call *c))
{
    *cs = (struct channel_calls){
        .loop = loop, .sent = sent, .ok = ok, .retry = retry, .drop = drop, .release = release};
}

void channel_call_init(struct channel_calls *cs, struct channel_call *c, channel_done_cb done,
                       void *ctx)
{
    c->owner = cs;
    c->done = done;
    c->ctx = ctx;
}

void channel_call_link(struct channel_call *c)
{
    struct channel_calls *cs = c->owner;
    c->next = cs->head;
    c->prev = NULL;
    if (cs->head) {
        cs->head->prev = c;
    }
    cs->head = c;
    (*cs->sent)++;
}

static void call_unlink(struct channel_calls *cs, struct channel_call *c)
{
    if (c->prev) {
        c->prev->next = c->next;
    } else {
        cs->head = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
}

static void call_release(struct channel_calls *cs, struct channel_call *c)
{
    if (cs->release) {
        cs->release(c);
    } else {
        free(c);
    }
}

void channel_call_finish(struct channel_call *c, const struct channel_outcome *o)
{
    struct channel_calls *cs = c->owner;
    call_unlink(cs, c);
    switch (o->result) {
    case CHANNEL_OK:
        (*cs->ok)++;
        break;
    case CHANNEL_RETRY:
        (*cs->retry)++;
        break;
    case CHANNEL_DROP:
        (*cs->drop)++;
        break;
    }
    channel_done_cb done = c->done;
    void *ctx = c->ctx;
    call_release(cs, c);
    done(ctx, o);
}

static void on_call_deferred(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    struct channel_call *c = arg;
    c->timer_id = 0;
    struct channel_outcome o = c->deferred;
    channel_call_finish(c, &o);
}

int channel_call_defer(struct channel_call *c, const struct channel_outcome *o)
{
    c->deferred = *o;
    c->timer_id = loop_timer_add(c->owner->loop, 0, on_call_deferred, c);
    if (!c->timer_id) {
        return -ENOMEM;
    }
    channel_call_link(c);
    return 0;
}

void channel_calls_abort(struct channel_calls *cs)
{
    while (cs->head) {
        struct channel_call *c = cs->head;
        cs->head = c->next;
        if (c->timer_id) {
            loop_timer_cancel(cs->loop, c->timer_id);
        }
        call_release(cs, c);
    }
}

/* --- several credentials in one channel ------------------------------------------ */

#define TENANT_PATH_MAX 768

/* A delivery no tenant serves: reported from a 0 ms timer (done never runs
 * inside send). */
struct set_deferred {
    struct set_deferred *prev, *next;
    struct channel_set *set;
    uint64_t timer_id;
    channel_done_cb done;
    void *ctx;
    struct channel_outcome outcome;
};

struct channel_set {
    const struct channel_tenant_ops *t;
    loop_t *loop;
    unsigned n;
    void *state[CHANNEL_TENANTS_MAX];
    char *name[CHANNEL_TENANTS_MAX];
    uint64_t selected[CHANNEL_TENANTS_MAX];
    uint64_t unserved;
    struct set_deferred *deferred;
    bool logged_unserved;
    void *peer; /* channel_set_link_peer; not owned */
};

int channel_split_list(char *buf, const char **items, unsigned max)
{
    unsigned n = 0;
    char *p = buf;
    while (*p == ' ' || *p == '\t') {
        p++;
    }
    if (!*p) {
        return 0;
    }
    for (;;) {
        char *end = strchr(p, ',');
        char *stop = end ? end : p + strlen(p);
        char *a = p, *b = stop;
        while (a < b && (*a == ' ' || *a == '\t')) {
            a++;
        }
        while (b > a && (b[-1] == ' ' || b[-1] == '\t')) {
            b--;
        }
        if (a == b) {
            return -EINVAL;
        }
        if (n >= max) {
            return -E2BIG;
        }
        *b = '\0';
        items[n++] = a;
        if (!end) {
            break;
        }
        p = end + 1;
    }
    return (int)n;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The "*.conf" files of dir, sorted, as heap paths. Count or negative error. */
static int list_tenant_files(const char *dir, char **paths, unsigned max, char *err,
                             size_t errlen, const char *key)
{
    DIR *d = opendir(dir);
    if (!d) {
        int e = -errno;
        snprintf(err, errlen, "%s: %s: %s", key, dir, strerror(-e));
        return TDG_ECONFIG;
    }
    unsigned n = 0;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (de->d_name[0] == '.' || len < 6 || strcmp(de->d_name + len - 5, ".conf") != 0) {
            continue;
        }
        if (n >= max) {
            snprintf(err, errlen, "%s: %s: more than %u credential files", key, dir, max);
            rc = TDG_ECONFIG;
            break;
        }
        char *path = malloc(TENANT_PATH_MAX);
        if (!path) {
            rc = -ENOMEM;
            break;
        }
        if ((size_t)snprintf(path, TENANT_PATH_MAX, "%s/%s", dir, de->d_name) >= TENANT_PATH_MAX) {
            free(path);
            snprintf(err, errlen, "%s: %s/%s: path too long", key, dir, de->d_name);
            rc = TDG_ECONFIG;
            break;
        }
        paths[n++] = path;
    }
    closedir(d);
    if (rc < 0) {
        while (n > 0) {
            free(paths[--n]);
        }
        return rc;
    }
    qsort(paths, n, sizeof(paths[0]), cmp_str);
    return (int)n;
}

static int set_add(struct channel_set *set, const struct channel_env *env, const void *config,
                   const char *name, char *err, size_t errlen)
{
    char cerr[CONFIG_ERR_MAX] = "";
    set->name[set->n] = strdup(name);
    if (!set->name[set->n]) {
        snprintf(err, errlen, "%s: out of memory", set->t->name);
        return -ENOMEM;
    }
    void *st = NULL;
    int rc = set->t->init(env, config, &st, cerr, sizeof(cerr));
    if (rc < 0) {
        if (set->n == 0) {
            snprintf(err, errlen, "%s", cerr);
        } else {
            snprintf(err, errlen, "%s: %s", name, cerr);
        }
        free(set->name[set->n]);
        set->name[set->n] = NULL;
        return rc;
    }
    set->state[set->n++] = st;
    return 0;
}

int channel_set_create(const struct channel_tenant_ops *t, const struct channel_env *env,
                       const void *config, channel_set **out, char *err, size_t errlen)
{
    *out = NULL;
    struct channel_set *set = calloc(1, sizeof(*set));
    if (!set) {
        snprintf(err, errlen, "%s: out of memory", t->name);
        return -ENOMEM;
    }
    set->t = t;
    set->loop = env ? env->loop : NULL;
    int rc = set_add(set, env, config, "main config", err, errlen);
    const char *dir = (const char *)config + t->tenants_dir_offset;
    char *paths[CHANNEL_TENANTS_MAX - 1];
    int np = 0;
    if (rc == 0 && dir[0]) {
        np = list_tenant_files(dir, paths, CHANNEL_TENANTS_MAX - 1, err, errlen,
                               t->tenants_dir_key);
        rc = np < 0 ? np : 0;
        np = np < 0 ? 0 : np;
    }
    void *blob = rc == 0 && np > 0 ? malloc(t->config_size) : NULL;
    if (np > 0 && !blob && rc == 0) {
        rc = -ENOMEM;
        snprintf(err, errlen, "%s: out of memory", t->name);
    }
    for (int i = 0; rc == 0 && i < np; i++) {
        memset(blob, 0, t->config_size);
        rc = config_defaults(t->config, t->config_n, blob, err, errlen);
        if (rc == 0) {
            rc = config_load(t->config, t->config_n, blob, paths[i], err, errlen);
            if (rc < 0 && rc != TDG_ECONFIG) {
                snprintf(err, errlen, "%s: %s: %s", t->tenants_dir_key, paths[i],
                         tdg_strerror(rc));
            }
        }
        if (rc == 0 && ((const char *)blob + t->tenants_dir_offset)[0]) {
            snprintf(err, errlen, "%s: %s: only the main config may name a directory of credentials",
                     paths[i], t->tenants_dir_key);
            rc = TDG_ECONFIG;
        }
        if (rc == 0) {
            rc = set_add(set, env, blob, paths[i], err, errlen);
        }
    }
    free(blob);
    for (int i = 0; i < np; i++) {
        free(paths[i]);
    }
    if (rc == 0 && t->check) {
        rc = t->check(set->state, (const char *const *)set->name, set->n, err, errlen);
    }
    if (rc < 0) {
        channel_set_destroy(set);
        return rc;
    }
    if (set->n > 1) {
        LOG_INFO(t->name, "%u credentials (main config + %u from %s)", set->n, set->n - 1, dir);
    }
    *out = set;
    return 0;
}

int channel_set_format(void *state, const struct channel_delivery *d, struct channel_request *req,
                       struct channel_outcome *outcome)
{
    struct channel_set *set = state;
    int i = set->t->select(set->state, set->n, d, outcome);
    if (i < 0) {
        channel_request_reset(req);
        return TDG_ECONFIG;
    }
    return set->t->format(set->state[i], d, req, outcome);
}

static void set_deferred_unlink(struct channel_set *set, struct set_deferred *c)
{
    if (c->prev) {
        c->prev->next = c->next;
    } else {
        set->deferred = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
}

static void on_set_deferred(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    struct set_deferred *c = arg;
    set_deferred_unlink(c->set, c);
    struct channel_outcome o = c->outcome;
    channel_done_cb done = c->done;
    void *ctx = c->ctx;
    free(c);
    done(ctx, &o);
}

int channel_set_send(void *state, const struct channel_delivery *d, channel_done_cb done,
                     void *ctx)
{
    struct channel_set *set = state;
    struct channel_outcome o;
    int i = set->t->select(set->state, set->n, d, &o);
    if (i >= 0) {
        int rc = set->t->send(set->state[i], d, done, ctx);
        if (rc == 0) {
            set->selected[i]++;
        }
        return rc;
    }
    if (!set->loop) {
        return -ENOTCONN; /* created without a loop: format only */
    }
    struct set_deferred *c = calloc(1, sizeof(*c));
    if (!c) {
        return -ENOMEM;
    }
    c->set = set;
    c->done = done;
    c->ctx = ctx;
    c->outcome = o;
    c->timer_id = loop_timer_add(set->loop, 0, on_set_deferred, c);
    if (!c->timer_id) {
        free(c);
        return -ENOMEM;
    }
    c->next = set->deferred;
    if (set->deferred) {
        set->deferred->prev = c;
    }
    set->deferred = c;
    set->unserved++;
    if (!set->logged_unserved) {
        LOG_WARN(set->t->name, "a delivery no credential serves: %s (logged once)", o.reason);
        set->logged_unserved = true;
    }
    return 0;
}

void channel_set_destroy(void *state)
{
    struct channel_set *set = state;
    if (!set) {
        return;
    }
    while (set->deferred) {
        struct set_deferred *c = set->deferred;
        set->deferred = c->next;
        loop_timer_cancel(set->loop, c->timer_id);
        free(c);
    }
    for (unsigned i = 0; i < set->n; i++) {
        set->t->destroy(set->state[i]);
        free(set->name[i]);
    }
    free(set);
}

int channel_no_tenant(struct channel_outcome *out, const char *fmt, ...)
{
    memset(out, 0, sizeof(*out));
    out->result = CHANNEL_DROP;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->reason, sizeof(out->reason), fmt, ap);
    va_end(ap);
    return -1;
}

int channel_check_claims(void *const *t, const char *const *names, unsigned i,
                         channel_claims_fn claims, const char *key, char *err, size_t errlen)
{
    unsigned na = 0;
    const char *const *a = claims(t[i], &na);
    for (unsigned k = 0; k < na; k++) {
        for (unsigned j = 0; j <= i; j++) {
            unsigned nb = 0;
            const char *const *b = claims(t[j], &nb);
            unsigned lim = j == i ? k : nb;
            for (unsigned m = 0; m < lim; m++) {
                if (strcmp(a[k], b[m]) == 0) {
                    snprintf(err, errlen, "%s: %s: %.64s is already served by %s", names[i], key,
                             a[k], names[j]);
                    return TDG_ECONFIG;
                }
            }
        }
    }
    return 0;
}

void channel_set_link_peer(void *state, void *peer)
{
    ((struct channel_set *)state)->peer = peer;
}

void *channel_set_peer(const void *state)
{
    return state ? ((const struct channel_set *)state)->peer : NULL;
}

unsigned channel_set_count(const void *state)
{
    return ((const struct channel_set *)state)->n;
}

void *channel_set_tenant(const void *state, unsigned i)
{
    const struct channel_set *set = state;
    return i < set->n ? set->state[i] : NULL;
}

const char *channel_set_name(const void *state, unsigned i)
{
    const struct channel_set *set = state;
    return i < set->n ? set->name[i] : NULL;
}

uint64_t channel_set_selected(const void *state, unsigned i)
{
    const struct channel_set *set = state;
    return i < set->n ? set->selected[i] : 0;
}

uint64_t channel_set_unserved(const void *state)
{
    return ((const struct channel_set *)state)->unserved;
}

/* Read the first line of path into buf: cut at the first CR or LF (raw),
 * else with trailing blanks and line ending trimmed. 0, -errno, -ENODATA or
 * -ENOSPC. */
static int read_secret(const char *path, char *buf, size_t cap, bool raw)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        return -errno;
    }
    char line[512];
    char *got = fgets(line, sizeof(line), f);
    fclose(f);
    if (!got) {
        return -ENODATA;
    }
    size_t n = raw ? strcspn(line, "\r\n") : strlen(line);
    if (!raw) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ' ||
                         line[n - 1] == '\t')) {
            n--;
        }
    }
    if (n >= cap) {
        explicit_bzero(line, sizeof(line));
        return -ENOSPC;
    }
    memcpy(buf, line, n);
    buf[n] = '\0';
    explicit_bzero(line, sizeof(line));
    return 0;
}

int channel_read_secret(const char *path, char *buf, size_t cap)
{
    return read_secret(path, buf, cap, false);
}

int channel_read_secret_line(const char *path, char *buf, size_t cap)
{
    return read_secret(path, buf, cap, true);
}
