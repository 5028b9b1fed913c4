/* deliver.c - backend registry and the set of enabled backends (see deliver.h). */
#include "deliver.h"

#include "error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const deliver_log_targets[] = {"stderr", "syslog", NULL};

/* Offsets into a bare struct deliver_config: the wrapper puts it at 0. */
struct deliver_config_root {
    struct deliver_config c;
};
const struct config_entry deliver_config_table[] = {
    DELIVER_CONFIG_ENTRIES(struct deliver_config_root, c),
};
const size_t deliver_config_table_len =
    sizeof(deliver_config_table) / sizeof(deliver_config_table[0]);

/* Every backend built in. Order does not matter: deliver.backends decides. */
static const struct deliver_ops *const backends[] = {
#ifdef TIDINGS_DESKTOP_NOTIFY
    &deliver_desktop_ops,
#endif
    &deliver_exec_ops,
    &deliver_log_ops,
};

const char *deliver_status_name(enum deliver_status s)
{
    switch (s) {
    case DELIVER_OK:
        return "ok";
    case DELIVER_RETRY:
        return "retry";
    case DELIVER_FAIL:
        return "fail";
    case DELIVER_UNAVAILABLE:
        return "unavailable";
    }
    return "unknown";
}

const struct deliver_ops *deliver_find(const char *name)
{
    for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++) {
        if (strcmp(backends[i]->name, name) == 0) {
            return backends[i];
        }
    }
    return NULL;
}

struct deliver {
    struct deliver_config cfg;
    struct deliver_env env;
    const struct deliver_ops *ops[DELIVER_BACKENDS_MAX];
    void *state[DELIVER_BACKENDS_MAX];
    size_t n;
};

int deliver_create(loop_t *loop, const struct deliver_config *cfg, deliver_receipt_cb on_receipt,
                   void *receipt_arg, deliver_t **out, char *err, size_t errlen)
{
    const struct deliver_ops *ops[DELIVER_BACKENDS_MAX];
    size_t n = 0;
    /* Split "desktop, exec,log" by hand: no strtok, names are short. */
    const char *p = cfg->backends;
    while (*p) {
        while (*p == ',' || *p == ' ') {
            p++;
        }
        if (!*p) {
            break;
        }
        char name[32];
        size_t len = 0;
        while (p[len] && p[len] != ',' && p[len] != ' ') {
            len++;
        }
        if (len >= sizeof(name)) {
            snprintf(err, errlen, "deliver.backends: name too long at '%s'", p);
            return TDG_ECONFIG;
        }
        memcpy(name, p, len);
        name[len] = '\0';
        p += len;
        const struct deliver_ops *o = deliver_find(name);
        if (!o) {
            if (strcmp(name, "desktop") == 0) {
                snprintf(err, errlen,
                         "deliver.backends: desktop is not built in (TIDINGS_DESKTOP_NOTIFY=OFF)");
            } else {
                snprintf(err, errlen, "deliver.backends: unknown backend '%s' (desktop, exec, log)",
                         name);
            }
            return TDG_ECONFIG;
        }
        for (size_t i = 0; i < n; i++) {
            if (ops[i] == o) {
                snprintf(err, errlen, "deliver.backends: '%s' given twice", name);
                return TDG_ECONFIG;
            }
        }
        if (n == DELIVER_BACKENDS_MAX) {
            snprintf(err, errlen, "deliver.backends: at most %d backends", DELIVER_BACKENDS_MAX);
            return TDG_ECONFIG;
        }
        ops[n++] = o;
    }
    return deliver_create_ops(loop, cfg, ops, n, on_receipt, receipt_arg, out, err, errlen);
}

int deliver_create_ops(loop_t *loop, const struct deliver_config *cfg,
                       const struct deliver_ops *const *ops, size_t n,
                       deliver_receipt_cb on_receipt, void *receipt_arg, deliver_t **out, char *err,
                       size_t errlen)
{
    if (n > DELIVER_BACKENDS_MAX) {
        snprintf(err, errlen, "deliver.backends: at most %d backends", DELIVER_BACKENDS_MAX);
        return TDG_ECONFIG;
    }
    deliver_t *d = calloc(1, sizeof(*d));
    if (!d) {
        return -ENOMEM;
    }
    d->cfg = *cfg;
    d->env = (struct deliver_env){
        .loop = loop, .cfg = &d->cfg, .on_receipt = on_receipt, .receipt_arg = receipt_arg};
    for (size_t i = 0; i < n; i++) {
        int rc = ops[i]->init(&d->env, &d->state[d->n], err, errlen);
        if (rc < 0) {
            deliver_destroy(d);
            return rc;
        }
        d->ops[d->n++] = ops[i];
    }
    *out = d;
    return 0;
}

void deliver_destroy(deliver_t *d)
{
    if (!d) {
        return;
    }
    for (size_t i = d->n; i > 0; i--) {
        d->ops[i - 1]->destroy(d->state[i - 1]);
    }
    free(d);
}

size_t deliver_count(const deliver_t *d)
{
    return d->n;
}

const char *deliver_name(const deliver_t *d, size_t i)
{
    return i < d->n ? d->ops[i]->name : "";
}

unsigned deliver_channel(const deliver_t *d, size_t i)
{
    return i < d->n ? d->ops[i]->channel : 0;
}

int deliver_send(deliver_t *d, size_t i, const struct notification *n, deliver_done_cb done,
                 void *arg)
{
    if (i >= d->n || !n || !done) {
        return -EINVAL;
    }
    return d->ops[i]->deliver(d->state[i], n, done, arg);
}

size_t deliver_escape(char *out, size_t cap, const char *in, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (cap == 0) {
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        char tmp[4];
        size_t n = 0;
        if (c == '"' || c == '\\') {
            tmp[n++] = '\\';
            tmp[n++] = (char)c;
        } else if (c == '\n') {
            tmp[n++] = '\\';
            tmp[n++] = 'n';
        } else if (c == '\t') {
            tmp[n++] = '\\';
            tmp[n++] = 't';
        } else if (c < 0x20 || c == 0x7f) {
            tmp[n++] = '\\';
            tmp[n++] = 'x';
            tmp[n++] = hex[c >> 4];
            tmp[n++] = hex[c & 0xf];
        } else {
            tmp[n++] = (char)c;
        }
        /* Keep room for "..." and the NUL. */
        if (o + n + 4 > cap) {
            size_t keep = cap >= 4 ? cap - 4 : 0;
            o = o < keep ? o : keep;
            /* Do not leave half a UTF-8 sequence before the dots. */
            while (o > 0 && ((unsigned char)out[o - 1] & 0xc0) == 0x80) {
                o--;
            }
            if (o > 0 && ((unsigned char)out[o - 1] & 0xc0) == 0xc0) {
                o--;
            }
            if (cap >= 4) {
                memcpy(out + o, "...", 3);
                o += 3;
            }
            out[o] = '\0';
            return o;
        }
        memcpy(out + o, tmp, n);
        o += n;
    }
    out[o] = '\0';
    return o;
}
