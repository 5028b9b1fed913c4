/* config.c - typed "key = value" configuration (see config.h). */
#include "config.h"

#include "error.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define CONFIG_LINE_MAX 4096
#define CONFIG_MAX_ENTRIES 256 /* per table; bounds the "seen" bitmap */

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return TDG_ECONFIG;
}

/* Parse a non-negative decimal integer with an optional suffix from units[]
 * (matched case-sensitively, longest listed first). */
struct unit {
    const char *suffix;
    uint64_t mult;
};

static int parse_scaled(const char *s, const struct unit *units, uint64_t bare_mult,
                        uint64_t *out)
{
    const char *p = s;
    if (!isdigit((unsigned char)*p)) {
        return -EINVAL;
    }
    uint64_t v = 0;
    while (isdigit((unsigned char)*p)) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10) {
            return -ERANGE;
        }
        v = v * 10 + d;
        p++;
    }
    uint64_t mult = bare_mult;
    if (*p) {
        mult = 0;
        for (const struct unit *u = units; u->suffix; u++) {
            if (strcmp(p, u->suffix) == 0) {
                mult = u->mult;
                break;
            }
        }
        if (!mult) {
            return -EINVAL;
        }
    }
    if (v && mult > UINT64_MAX / v) {
        return -ERANGE;
    }
    *out = v * mult;
    return 0;
}

int config_parse_size(const char *s, uint64_t *out)
{
    static const struct unit units[] = {
        {"K", 1024ull}, {"M", 1024ull * 1024}, {"G", 1024ull * 1024 * 1024},
        {"k", 1024ull}, {"B", 1}, {NULL, 0},
    };
    return parse_scaled(s, units, 1, out);
}

int config_parse_duration(const char *s, uint64_t *out_ms)
{
    static const struct unit units[] = {
        {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}, {NULL, 0},
    };
    return parse_scaled(s, units, 1000, out_ms);
}

static int parse_int(const char *s, int64_t *out)
{
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end) {
        return -EINVAL;
    }
    if (errno == ERANGE) {
        return -ERANGE;
    }
    *out = (int64_t)v;
    return 0;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -EINVAL;
}

static bool bounded(const struct config_entry *e)
{
    return e->min != 0 || e->max != 0;
}

/* Store value (text) into base per entry e. On error writes the reason. */
static int apply(const struct config_entry *e, void *base, const char *value, char *why,
                 size_t whylen)
{
    char *dst = (char *)base + e->offset;
    switch (e->type) {
    case CONFIG_STRING: {
        size_t n = strlen(value);
        if (n >= e->size) {
            snprintf(why, whylen, "value too long (%zu bytes, at most %zu)", n, e->size - 1);
            return -EINVAL;
        }
        memcpy(dst, value, n + 1);
        return 0;
    }
    case CONFIG_INT: {
        int64_t v;
        if (parse_int(value, &v) < 0) {
            snprintf(why, whylen, "'%s' is not an integer", value);
            return -EINVAL;
        }
        if (bounded(e) && (v < e->min || v > e->max)) {
            snprintf(why, whylen, "%" PRId64 " out of range [%" PRId64 ", %" PRId64 "]", v,
                     e->min, e->max);
            return -ERANGE;
        }
        memcpy(dst, &v, sizeof(v));
        return 0;
    }
    case CONFIG_BOOL: {
        bool v;
        if (parse_bool(value, &v) < 0) {
            snprintf(why, whylen, "'%s' is not a boolean (true/false)", value);
            return -EINVAL;
        }
        memcpy(dst, &v, sizeof(v));
        return 0;
    }
    case CONFIG_SIZE:
    case CONFIG_DURATION: {
        uint64_t v;
        bool size = e->type == CONFIG_SIZE;
        int rc = size ? config_parse_size(value, &v) : config_parse_duration(value, &v);
        if (rc < 0) {
            snprintf(why, whylen, "'%s' is not a %s", value,
                     size ? "size (e.g. 512, 64K, 16M, 1G)" : "duration (e.g. 250ms, 30s, 5m, 2h)");
            return rc;
        }
        if (bounded(e) && (v < (uint64_t)e->min || v > (uint64_t)e->max)) {
            snprintf(why, whylen, "'%s' out of range [%" PRId64 "%s, %" PRId64 "%s]", value,
                     size ? e->min : e->min / 1000, size ? "" : "s",
                     size ? e->max : e->max / 1000, size ? "" : "s");
            return -ERANGE;
        }
        memcpy(dst, &v, sizeof(v));
        return 0;
    }
    case CONFIG_ENUM: {
        for (int i = 0; e->choices && e->choices[i]; i++) {
            if (strcmp(value, e->choices[i]) == 0) {
                memcpy(dst, &i, sizeof(i));
                return 0;
            }
        }
        size_t off = (size_t)snprintf(why, whylen, "'%s' is not one of:", value);
        for (int i = 0; e->choices && e->choices[i] && off < whylen; i++) {
            off += (size_t)snprintf(why + off, whylen - off, " %s", e->choices[i]);
        }
        return -EINVAL;
    }
    }
    snprintf(why, whylen, "bad entry type");
    return -EINVAL;
}

static const struct config_entry *find(const struct config_entry *t, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(t[i].key, key) == 0) {
            return &t[i];
        }
    }
    return NULL;
}

int config_defaults(const struct config_entry *t, size_t n, void *base, char *err, size_t errlen)
{
    char why[CONFIG_ERR_MAX];
    for (size_t i = 0; i < n; i++) {
        const char *def = t[i].def;
        if (!def) {
            def = (t[i].type == CONFIG_STRING) ? "" : (t[i].type == CONFIG_BOOL ? "false" : "0");
        }
        if (t[i].type == CONFIG_ENUM && !t[i].def) {
            def = t[i].choices ? t[i].choices[0] : "";
        }
        if (apply(&t[i], base, def, why, sizeof(why)) < 0) {
            return fail(err, errlen, "default of %s: %s", t[i].key, why);
        }
    }
    return 0;
}

int config_set(const struct config_entry *t, size_t n, void *base, const char *key,
               const char *value, char *err, size_t errlen)
{
    const struct config_entry *e = find(t, n, key);
    if (!e) {
        return fail(err, errlen, "%s: unknown key", key);
    }
    char why[CONFIG_ERR_MAX];
    if (apply(e, base, value, why, sizeof(why)) < 0) {
        return fail(err, errlen, "%s: %s", key, why);
    }
    return 0;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t') {
        s++;
    }
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n')) {
        s[--n] = '\0';
    }
    return s;
}

int config_load(const struct config_entry *t, size_t n, void *base, const char *path, char *err,
                size_t errlen)
{
    if (n > CONFIG_MAX_ENTRIES) {
        return fail(err, errlen, "%s: table too large", path);
    }
    FILE *f = fopen(path, "re");
    if (!f) {
        int e = errno;
        fail(err, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    bool seen[CONFIG_MAX_ENTRIES] = {false};
    char line[CONFIG_LINE_MAX + 2];
    unsigned lineno = 0;
    int rc = 0;
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        size_t len = strlen(line);
        if (len > CONFIG_LINE_MAX && line[len - 1] != '\n') {
            rc = fail(err, errlen, "%s:%u: line longer than %d bytes", path, lineno,
                      CONFIG_LINE_MAX);
            break;
        }
        char *s = trim(line);
        if (*s == '\0' || *s == '#') {
            continue;
        }
        char *eq = strchr(s, '=');
        if (!eq) {
            rc = fail(err, errlen, "%s:%u: expected 'key = value'", path, lineno);
            break;
        }
        *eq = '\0';
        char *key = trim(s);
        char *value = trim(eq + 1);
        size_t vlen = strlen(value);
        if (vlen >= 2 && value[0] == '"' && value[vlen - 1] == '"') {
            value[vlen - 1] = '\0';
            value++;
        }
        const struct config_entry *e = find(t, n, key);
        if (!e) {
            rc = fail(err, errlen, "%s:%u: %s: unknown key", path, lineno, key);
            break;
        }
        size_t idx = (size_t)(e - t);
        if (seen[idx]) {
            rc = fail(err, errlen, "%s:%u: %s: given twice", path, lineno, key);
            break;
        }
        seen[idx] = true;
        char why[CONFIG_ERR_MAX];
        if (apply(e, base, value, why, sizeof(why)) < 0) {
            rc = fail(err, errlen, "%s:%u: %s: %s", path, lineno, key, why);
            break;
        }
    }
    if (rc == 0 && ferror(f)) {
        rc = fail(err, errlen, "%s: read error", path);
    }
    fclose(f);
    return rc;
}

void config_print(const struct config_entry *t, size_t n, FILE *out)
{
    for (size_t i = 0; i < n; i++) {
        const struct config_entry *e = &t[i];
        fprintf(out, "# %s\n", e->help ? e->help : "");
        if (e->type == CONFIG_ENUM && e->choices) {
            fprintf(out, "# one of:");
            for (int c = 0; e->choices[c]; c++) {
                fprintf(out, " %s", e->choices[c]);
            }
            fprintf(out, "\n");
        }
        const char *def = e->def ? e->def : "";
        fprintf(out, "#%s = %s\n\n", e->key, def);
    }
}
