/* metrics.c - metric registry and Prometheus text rendering (see metrics.h). */
#include "metrics.h"

#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_MAX_LEN 96
#define LABELS_MAX_LEN 512
#define HOOKS_MAX 16

const double metrics_hist_bounds[METRICS_HIST_BUCKETS] = {
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
};

struct series {
    struct metric m; /* first: the pointer handed out */
    struct series *next;
    char labels[]; /* 'k="v",k2="v2"' (escaped), "" for none */
};

struct family {
    struct family *next;
    enum metric_type type;
    char name[NAME_MAX_LEN];
    char *help;
    struct series *head, *tail;
};

struct metrics {
    struct family *fams, *fams_tail;
    size_t nseries;
    bool limit_logged;
    struct {
        metrics_collect_cb cb;
        void *arg;
    } hooks[HOOKS_MAX];
    size_t nhooks;
};

metrics_t *metrics_create(void)
{
    return calloc(1, sizeof(struct metrics));
}

void metrics_destroy(metrics_t *m)
{
    if (!m) {
        return;
    }
    while (m->fams) {
        struct family *f = m->fams;
        m->fams = f->next;
        while (f->head) {
            struct series *s = f->head;
            f->head = s->next;
            free(s);
        }
        free(f->help);
        free(f);
    }
    free(m);
}

static bool name_ok(const char *n)
{
    size_t len = strlen(n);
    if (len == 0 || len >= NAME_MAX_LEN) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        char c = n[i];
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        if (!alpha && !(i > 0 && c >= '0' && c <= '9')) {
            return false;
        }
    }
    return true;
}

/* Append v escaped for a label value (\\, \" and \n) to buf at *pos. */
static bool put_escaped(char *buf, size_t cap, size_t *pos, const char *v)
{
    for (const char *p = v; *p; p++) {
        const char *rep = NULL;
        char one[2] = {*p, '\0'};
        if (*p == '\\') {
            rep = "\\\\";
        } else if (*p == '"') {
            rep = "\\\"";
        } else if (*p == '\n') {
            rep = "\\n";
        } else {
            rep = one;
        }
        size_t l = strlen(rep);
        if (*pos + l >= cap) {
            return false;
        }
        memcpy(buf + *pos, rep, l);
        *pos += l;
    }
    buf[*pos] = '\0';
    return true;
}

static bool format_labels(char *buf, size_t cap, const char *const *keys, const char *const *values,
                          size_t n)
{
    size_t pos = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        if (!name_ok(keys[i])) {
            return false;
        }
        int w = snprintf(buf + pos, cap - pos, "%s%s=\"", i ? "," : "", keys[i]);
        if (w < 0 || (size_t)w >= cap - pos) {
            return false;
        }
        pos += (size_t)w;
        if (!put_escaped(buf, cap, &pos, values[i] ? values[i] : "") || pos + 1 >= cap) {
            return false;
        }
        buf[pos++] = '"';
        buf[pos] = '\0';
    }
    return true;
}

static struct metric *get_series(metrics_t *m, enum metric_type t, const char *name,
                                 const char *help, const char *labels)
{
    if (!name_ok(name)) {
        LOG_ERROR("metrics", "bad metric name '%s'", name);
        return NULL;
    }
    struct family *f = m->fams;
    while (f && strcmp(f->name, name) != 0) {
        f = f->next;
    }
    if (f && f->type != t) {
        LOG_ERROR("metrics", "%s: created before with another type", name);
        return NULL;
    }
    if (f) {
        for (struct series *s = f->head; s; s = s->next) {
            if (strcmp(s->labels, labels) == 0) {
                return &s->m;
            }
        }
    }
    if (m->nseries >= METRICS_MAX_SERIES) {
        if (!m->limit_logged) {
            LOG_WARN("metrics", "series limit %d reached; %s{%s} and later ones not kept",
                     METRICS_MAX_SERIES, name, labels);
            m->limit_logged = true;
        }
        return NULL;
    }
    if (!f) {
        f = calloc(1, sizeof(*f));
        if (!f) {
            return NULL;
        }
        snprintf(f->name, sizeof(f->name), "%s", name);
        f->help = strdup(help ? help : "");
        if (!f->help) {
            free(f);
            return NULL;
        }
        f->type = t;
        if (m->fams_tail) {
            m->fams_tail->next = f;
        } else {
            m->fams = f;
        }
        m->fams_tail = f;
    }
    size_t ll = strlen(labels);
    struct series *s = calloc(1, sizeof(*s) + ll + 1);
    if (!s) {
        return NULL;
    }
    memcpy(s->labels, labels, ll + 1);
    if (f->tail) {
        f->tail->next = s;
    } else {
        f->head = s;
    }
    f->tail = s;
    m->nseries++;
    return &s->m;
}

struct metric *metrics_series_kv(metrics_t *m, enum metric_type t, const char *name,
                                 const char *help, const char *const *keys,
                                 const char *const *values, size_t n)
{
    char labels[LABELS_MAX_LEN];
    if (!format_labels(labels, sizeof(labels), keys, values, n)) {
        LOG_ERROR("metrics", "%s: bad or too long labels", name);
        return NULL;
    }
    return get_series(m, t, name, help, labels);
}

struct metric *metrics_series(metrics_t *m, enum metric_type t, const char *name, const char *help,
                              const char *labels)
{
    const char *keys[8], *values[8];
    char copy[LABELS_MAX_LEN];
    size_t n = 0;
    if (labels && *labels) {
        if (strlen(labels) >= sizeof(copy)) {
            return NULL;
        }
        snprintf(copy, sizeof(copy), "%s", labels);
        char *p = copy;
        while (p && *p) {
            if (n == 8) {
                return NULL;
            }
            char *comma = strchr(p, ',');
            if (comma) {
                *comma = '\0';
            }
            char *eq = strchr(p, '=');
            if (!eq) {
                LOG_ERROR("metrics", "%s: label '%s' without '='", name, p);
                return NULL;
            }
            *eq = '\0';
            keys[n] = p;
            values[n] = eq + 1;
            n++;
            p = comma ? comma + 1 : NULL;
        }
    }
    return metrics_series_kv(m, t, name, help, keys, values, n);
}

void metrics_observe(struct metric *h, double ms)
{
    size_t i = 0;
    while (i < METRICS_HIST_BUCKETS && ms > metrics_hist_bounds[i]) {
        i++;
    }
    h->bucket[i]++;
    h->count++;
    h->sum += ms;
}

int metrics_on_collect(metrics_t *m, metrics_collect_cb cb, void *arg)
{
    if (m->nhooks >= HOOKS_MAX) {
        return -ENOSPC;
    }
    m->hooks[m->nhooks].cb = cb;
    m->hooks[m->nhooks].arg = arg;
    m->nhooks++;
    return 0;
}

struct text {
    char *buf;
    size_t len, cap;
    bool failed;
};

static void put(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(struct text *t, const char *fmt, ...)
{
    if (t->failed) {
        return;
    }
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = true;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        if (t->cap >= METRICS_MAX_TEXT) {
            t->failed = true;
            return;
        }
        size_t cap = t->cap * 2 > METRICS_MAX_TEXT ? METRICS_MAX_TEXT : t->cap * 2;
        char *b = realloc(t->buf, cap);
        if (!b) {
            t->failed = true;
            return;
        }
        t->buf = b;
        t->cap = cap;
    }
}

/* Help text on one line: Prometheus escapes \\ and \n in HELP. */
static void put_help(struct text *t, const struct family *f)
{
    put(t, "# HELP %s ", f->name);
    for (const char *p = f->help; *p; p++) {
        if (*p == '\\') {
            put(t, "\\\\");
        } else if (*p == '\n') {
            put(t, "\\n");
        } else {
            put(t, "%c", *p);
        }
    }
    static const char *const tn[] = {"counter", "gauge", "histogram"};
    put(t, "\n# TYPE %s %s\n", f->name, tn[f->type]);
}

char *metrics_render(metrics_t *m, size_t *len)
{
    for (size_t i = 0; i < m->nhooks; i++) {
        m->hooks[i].cb(m->hooks[i].arg);
    }
    struct text t = {.cap = 16384};
    t.buf = malloc(t.cap);
    if (!t.buf) {
        return NULL;
    }
    t.buf[0] = '\0';
    for (const struct family *f = m->fams; f; f = f->next) {
        put_help(&t, f);
        for (const struct series *s = f->head; s; s = s->next) {
            const char *open = s->labels[0] ? "{" : "", *close = s->labels[0] ? "}" : "";
            if (f->type != METRIC_HISTOGRAM) {
                put(&t, "%s%s%s%s %lld\n", f->name, open, s->labels, close, (long long)s->m.v);
                continue;
            }
            const char *sep = s->labels[0] ? "," : "";
            uint64_t cum = 0;
            for (size_t b = 0; b < METRICS_HIST_BUCKETS; b++) {
                cum += s->m.bucket[b];
                put(&t, "%s_bucket{%s%sle=\"%g\"} %llu\n", f->name, s->labels, sep,
                    metrics_hist_bounds[b], (unsigned long long)cum);
            }
            put(&t, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", f->name, s->labels, sep,
                (unsigned long long)s->m.count);
            put(&t, "%s_sum%s%s%s %.3f\n", f->name, open, s->labels, close, s->m.sum);
            put(&t, "%s_count%s%s%s %llu\n", f->name, open, s->labels, close,
                (unsigned long long)s->m.count);
        }
    }
    if (t.failed) {
        free(t.buf);
        return NULL;
    }
    if (len) {
        *len = t.len;
    }
    return t.buf;
}
